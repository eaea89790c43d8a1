//! The OpenAPI schemas of what a client sends to the catalogue (write bodies, list query),
//! built from the very rules the checks in [`product`](super::product) and the list route
//! apply, so the description and the checks cannot disagree: a body is valid against its
//! schema exactly when the API accepts it (the contract test holds both to it).
//!
//! This module must never state a rule the checks do not enforce, nor leave out one they do.

use utoipa::openapi::RefOr;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, AnyOfBuilder, ArrayBuilder, KnownFormat, Object,
    ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::api::{DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET};
use super::product::{
    Blank, CATEGORY, ControlChars, DESCRIPTION, MAX_CATEGORY_CHARS, MAX_PRICE, MAX_STOCK, MAX_TAGS,
    NAME, TAG, TextRule, WRITABLE,
};

/// The characters a text may not hold, by [`ControlChars`]: every control character
/// (Unicode category Cc), or all but tab, line feed and carriage return. `\u` escapes read
/// the same in ECMA-262, Python and Rust regular expressions.
fn refused_char(controls: ControlChars) -> &'static str {
    match controls {
        ControlChars::Refused => r"[\u0000-\u001F\u007F-\u009F]",
        ControlChars::LayoutOnly => r"[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]",
    }
}

/// A character that makes a text not blank: neither a control character nor white space
/// (Unicode's White_Space, which trimming removes).
const VISIBLE_CHAR: &str =
    r"[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";

/// A string schema stating a text rule's characters: `not` a refused character anywhere,
/// and, when it may not be blank, one visible character somewhere. Both are unanchored
/// searches: an anchored `^...$` would let Python's `re.search` (which many validators
/// use) accept a trailing line feed, as its `$` matches before one. utoipa has no `not`,
/// so it goes in as a raw field.
fn characters(controls: ControlChars, blank: Blank) -> ObjectBuilder {
    let refused: Extensions = [(
        "not",
        serde_json::json!({ "pattern": refused_char(controls) }),
    )]
    .into_iter()
    .collect();
    let builder = ObjectBuilder::new()
        .schema_type(Type::String)
        .extensions(Some(refused));
    match blank {
        Blank::Allowed => builder,
        Blank::Refused => builder.pattern(Some(VISIBLE_CHAR)),
    }
}

/// A text field's schema.
fn text(rule: TextRule, description: &str) -> ObjectBuilder {
    let min = match rule.blank {
        Blank::Allowed => 0,
        Blank::Refused => 1,
    };
    characters(rule.controls, rule.blank)
        .min_length(Some(min))
        .max_length(Some(rule.max_chars))
        .description(Some(description))
}

pub(crate) fn name() -> Object {
    text(
        NAME,
        "1 to 200 characters, not blank, no control characters; stored trimmed.",
    )
    .examples(["Oak desk lamp"])
    .build()
}

pub(crate) fn description() -> Object {
    text(
        DESCRIPTION,
        "Up to 4000 characters; of the control characters only tab, line feed and carriage return; stored trimmed.",
    )
    .examples(["Made of oak, for lighting."])
    .build()
}

pub(crate) fn category() -> Object {
    text(
        CATEGORY,
        "1 to 50 characters, not blank, no control characters; stored trimmed. Lists filter on it.",
    )
    .examples(["lighting"])
    .build()
}

pub(crate) fn price() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .minimum(Some(0.0))
        .maximum(Some(MAX_PRICE))
        .multiple_of(Some(0.01))
        .description(Some(
            "In currency units, 0 to 1,000,000, with at most two decimals (kept exactly, as cents).",
        ))
        .examples([49.5])
        .build()
}

pub(crate) fn stock() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0.0))
        .maximum(Some(MAX_STOCK as f64))
        .description(Some(
            "Units in stock, 0 to 1,000,000,000. An integer-valued number such as 167.0 counts as 167.",
        ))
        .examples([12])
        .build()
}

pub(crate) fn tags() -> utoipa::openapi::schema::Array {
    ArrayBuilder::new()
        .items(text(
            TAG,
            "1 to 40 characters, not blank, no control characters; stored trimmed.",
        ))
        .max_items(Some(MAX_TAGS))
        .description(Some("Up to 20 tags; duplicates are kept."))
        .examples([serde_json::json!(["oak", "warm"])])
        .build()
}

/// A field a client may send back unchanged from a read, which a write ignores.
fn ignored(description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .read_only(true)
        .description(Some(description))
        .build()
}

pub(crate) fn read_only_id() -> Object {
    ignored("Read-only: assigned by the database. Accepted with any value and ignored.")
}

pub(crate) fn read_only_time() -> Object {
    ignored("Read-only: kept by the database. Accepted with any value and ignored.")
}

/// The body of a create or a full replace: every writable field (optional ones take their
/// defaults), the read-only fields of a read allowed back, nothing else.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the body for OpenAPI; `parse_changes` checks it.
#[schema(example = json!({
    "name": "Oak desk lamp", "description": "Made of oak, for lighting.", "price": 49.5,
    "category": "lighting", "tags": ["oak", "warm"], "stock": 12
}))]
pub(crate) struct ProductInput {
    #[schema(schema_with = name)]
    name: String,
    /// Default empty.
    #[schema(schema_with = description)]
    description: Option<String>,
    #[schema(schema_with = price)]
    price: f64,
    #[schema(schema_with = category)]
    category: String,
    /// Default none.
    #[schema(schema_with = tags)]
    tags: Option<Vec<String>>,
    /// Default 0.
    #[schema(schema_with = stock)]
    stock: Option<i64>,
    #[schema(schema_with = read_only_id)]
    id: Option<i64>,
    #[schema(schema_with = read_only_time)]
    created_at: Option<String>,
    #[schema(schema_with = read_only_time)]
    updated_at: Option<String>,
}

/// A write body's object schema closed to other properties; for a patch, also at least
/// one writable field (`minProperties` alone would count the read-only ones).
pub(crate) fn write_body(object: RefOr<Schema>, at_least_one_field: bool) -> RefOr<Schema> {
    let RefOr::T(Schema::Object(mut object)) = object else {
        return object;
    };
    object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
    if !at_least_one_field {
        return Schema::Object(object).into();
    }
    object.min_properties = Some(1);
    let one_of_them = WRITABLE.iter().fold(AnyOfBuilder::new(), |any, field| {
        any.item(ObjectBuilder::new().required(*field))
    });
    let all = AllOfBuilder::new()
        .item(object)
        .item(one_of_them)
        .description(Some(
            "At least one of name, description, price, category, tags, stock.",
        ))
        .build();
    RefOr::T(Schema::AllOf(all))
}

/// The full replace and create body, closed.
pub(crate) fn product_input() -> RefOr<Schema> {
    write_body(ProductInput::schema(), false)
}

/// The body of a partial update, for the description: see [`product_patch`].
pub(crate) struct ProductPatch;

impl PartialSchema for ProductPatch {
    fn schema() -> RefOr<Schema> {
        product_patch()
    }
}

impl ToSchema for ProductPatch {}

/// The body of a partial update: the fields of [`ProductInput`], none required, at least
/// one writable field, none of them `null` (leave a field out to keep its value), the
/// read-only fields of a read allowed back, nothing else.
fn product_patch() -> RefOr<Schema> {
    let RefOr::T(Schema::Object(mut object)) = ProductInput::schema() else {
        return ProductInput::schema();
    };
    object.required.clear();
    object.description = Some(
        "Some writable fields of a product: those left out keep their values; none may be null."
            .to_owned(),
    );
    object.example = None;
    object.examples = vec![serde_json::json!({ "price": 44.0, "stock": 11 })];
    write_body(RefOr::T(Schema::Object(object)), true)
}

/// Query parameters of the product list. Others are refused (422), as are numbers not
/// written plainly (`05`, `+5`), and a parameter given twice.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Describes the query for OpenAPI; the handler parses it by hand.
pub(crate) struct ListParams {
    /// Only products of this category (1 to 50 characters, no control characters; compared
    /// exactly).
    #[param(schema_with = category_filter)]
    category: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(schema_with = limit)]
    limit: Option<i64>,
    /// Products to skip, 0 to 1,000,000 (default 0).
    #[param(schema_with = offset)]
    offset: Option<i64>,
}

fn category_filter() -> Object {
    characters(CATEGORY.controls, Blank::Allowed)
        .min_length(Some(1))
        .max_length(Some(MAX_CATEGORY_CHARS))
        .description(Some(
            "Only products of this category: 1 to 50 characters, no control characters, compared exactly.",
        ))
        .examples(["lighting"])
        .build()
}

fn whole_number(min: i64, max: i64, default: i64, description: &str) -> Object {
    ObjectBuilder::new()
        .description(Some(description))
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(min as f64))
        .maximum(Some(max as f64))
        .default(Some(default.into()))
        .build()
}

fn limit() -> Object {
    whole_number(
        1,
        MAX_LIMIT,
        DEFAULT_LIMIT,
        "Page size, 1 to 100 (default 20).",
    )
}

fn offset() -> Object {
    whole_number(
        0,
        MAX_OFFSET,
        0,
        "Products to skip, 0 to 1,000,000 (default 0).",
    )
}
