//! Products: the catalogue's one resource, what a client may send for it, and the checks
//! that turn a JSON body into a valid write.
//!
//! Validation reads the body as a JSON value and checks every field, so a client learns about
//! every bad field in one answer, each by name. Text is checked for control characters here,
//! before any database call, so both databases see the same text (PostgreSQL cannot store
//! NUL, SQLite can) and a client gets the same answer from either. This module must never
//! touch the database or the cache.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::FieldError;

/// Longest product name, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 200;
/// Longest description, in characters.
pub(crate) const MAX_DESCRIPTION_CHARS: usize = 4000;
/// Longest category, in characters.
pub(crate) const MAX_CATEGORY_CHARS: usize = 50;
/// Most tags on one product.
pub(crate) const MAX_TAGS: usize = 20;
/// Longest tag, in characters.
pub(crate) const MAX_TAG_CHARS: usize = 40;
/// Highest price accepted, in currency units.
pub(crate) const MAX_PRICE: f64 = 1_000_000.0;
/// Highest stock level accepted.
pub(crate) const MAX_STOCK: i64 = 1_000_000_000;

/// A product as the API returns it (and as it is cached).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": 7, "name": "Oak desk lamp", "description": "Made of oak, for lighting.",
    "price": 49.5, "category": "lighting", "tags": ["oak", "warm"], "stock": 12,
    "created_at": "2026-12-01T09:30:00Z", "updated_at": "2026-12-02T16:05:12.250Z"
}))]
pub(crate) struct Product {
    /// Assigned by the database.
    #[schema(minimum = 1)]
    pub id: i64,
    /// 1 to 200 characters.
    pub name: String,
    /// Up to 4000 characters.
    pub description: String,
    /// In currency units, with at most two decimals (kept exactly as cents).
    pub price: f64,
    /// 1 to 50 characters; lists can be filtered by it.
    pub category: String,
    /// Up to 20 tags of 1 to 40 characters.
    pub tags: Vec<String>,
    /// Units in stock, 0 or more.
    pub stock: i64,
    /// When the product was created.
    pub created_at: DateTime<Utc>,
    /// When the product was last changed.
    pub updated_at: DateTime<Utc>,
}

/// A checked write, with the price in cents as the database keeps it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ProductChanges {
    pub(crate) name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) price_cents: Option<i64>,
    pub(crate) category: Option<String>,
    pub(crate) tags: Option<Vec<String>>,
    pub(crate) stock: Option<i64>,
}

/// Which control characters (Unicode category Cc) a text may hold: none in one-line values
/// (names, categories, tags, query parameters), where they are invisible or break the line;
/// tab and line breaks in free text laid out in lines (descriptions). NUL is refused
/// everywhere: PostgreSQL text cannot hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlChars {
    /// No control character at all.
    Refused,
    /// Only tab, line feed and carriage return.
    LayoutOnly,
}

impl ControlChars {
    /// What is wrong with `text`, as a field error's message; `None` when it is acceptable.
    pub(crate) fn problem(self, text: &str) -> Option<String> {
        let layout = |c: char| self == Self::LayoutOnly && matches!(c, '\t' | '\n' | '\r');
        let found = text.chars().find(|&c| c.is_control() && !layout(c))?;
        let allowed = match self {
            Self::Refused => "",
            Self::LayoutOnly => " other than tab, line feed and carriage return",
        };
        Some(format!(
            "must not contain control characters{allowed}; found U+{:04X}",
            u32::from(found)
        ))
    }
}

/// What a text field accepts: its length as sent, in characters (Unicode scalar values, as
/// JSON Schema's `maxLength` counts them), whether it may be blank, and its control
/// characters. Lengths count the text as sent, not trimmed, so that the rule is exactly
/// what the OpenAPI description says; what is stored is trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TextRule {
    pub(crate) max_chars: usize,
    pub(crate) blank: Blank,
    pub(crate) controls: ControlChars,
}

/// Whether a text may be empty or white space only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blank {
    Allowed,
    Refused,
}

pub(crate) const NAME: TextRule = TextRule {
    max_chars: MAX_NAME_CHARS,
    blank: Blank::Refused,
    controls: ControlChars::Refused,
};
pub(crate) const DESCRIPTION: TextRule = TextRule {
    max_chars: MAX_DESCRIPTION_CHARS,
    blank: Blank::Allowed,
    controls: ControlChars::LayoutOnly,
};
pub(crate) const CATEGORY: TextRule = TextRule {
    max_chars: MAX_CATEGORY_CHARS,
    blank: Blank::Refused,
    controls: ControlChars::Refused,
};
pub(crate) const TAG: TextRule = TextRule {
    max_chars: MAX_TAG_CHARS,
    blank: Blank::Refused,
    controls: ControlChars::Refused,
};

impl TextRule {
    /// What is wrong with `text`, as a field error's message; `None` when it is acceptable.
    pub(crate) fn problem(self, text: &str) -> Option<String> {
        // Checked as sent: a control character is refused wherever it is.
        if let Some(problem) = self.controls.problem(text) {
            return Some(problem);
        }
        let chars = text.chars().count();
        if chars > self.max_chars {
            let max = self.max_chars;
            return Some(format!("must be at most {max} characters; it has {chars}"));
        }
        if self.blank == Blank::Refused && text.trim().is_empty() {
            return Some("must not be empty or blank".to_owned());
        }
        None
    }
}

/// Whether every writable field must be present (create, replace) or any may be (patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completeness {
    Full,
    Partial,
}

/// Fields a client may send back unchanged (from a `GET`) but cannot set.
const READ_ONLY: [&str; 3] = ["id", "created_at", "updated_at"];
pub(crate) const WRITABLE: [&str; 6] =
    ["name", "description", "price", "category", "tags", "stock"];

/// Check a request body: every problem, by field, or the changes it asks for.
pub(crate) fn parse_changes(
    body: &[u8],
    completeness: Completeness,
) -> Result<ProductChanges, Vec<FieldError>> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        vec![FieldError::new(
            "body",
            format!("is not valid JSON ({err}); send a JSON object"),
        )]
    })?;
    let Value::Object(object) = value else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    for name in object.keys() {
        if !WRITABLE.contains(&name.as_str()) && !READ_ONLY.contains(&name.as_str()) {
            errors.push(FieldError::new(
                name,
                format!(
                    "is not a product field; the fields are {}",
                    WRITABLE.join(", ")
                ),
            ));
        }
    }
    let texts = number_texts(body);
    let mut fields = Fields {
        object: &object,
        texts: &texts,
        completeness,
        errors: &mut errors,
    };
    let changes = ProductChanges {
        name: fields.text("name", true, NAME),
        description: fields.text("description", false, DESCRIPTION),
        price_cents: fields.price("price"),
        category: fields.text("category", true, CATEGORY),
        tags: fields.tags("tags"),
        stock: fields.stock("stock"),
    };
    if completeness == Completeness::Partial
        && errors.is_empty()
        && changes == ProductChanges::default()
    {
        errors.push(FieldError::new(
            "body",
            format!(
                "names no field to change; send one or more of {}",
                WRITABLE.join(", ")
            ),
        ));
    }
    if errors.is_empty() {
        Ok(changes.with_defaults(completeness))
    } else {
        Err(errors)
    }
}

impl ProductChanges {
    /// A full write sets every field: optional ones take their defaults.
    fn with_defaults(mut self, completeness: Completeness) -> Self {
        if completeness == Completeness::Full {
            self.description.get_or_insert_with(String::new);
            self.tags.get_or_insert_with(Vec::new);
            self.stock.get_or_insert(0);
        }
        self
    }
}

/// The checks of one body, collecting errors as it goes.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    /// Each field's JSON as sent, for numbers judged on their text.
    texts: &'a HashMap<String, Box<RawValue>>,
    completeness: Completeness,
    errors: &'a mut Vec<FieldError>,
}

impl<'a> Fields<'a> {
    /// The field's value; `None` when absent (an error if it is required), or `null`.
    fn value(&mut self, name: &str, required: bool) -> Option<&'a Value> {
        match self.object.get(name) {
            None if required && self.completeness == Completeness::Full => {
                self.errors.push(FieldError::new(name, "is required"));
                None
            }
            Some(Value::Null) => {
                // Only a partial update keeps what is left out.
                let message = match self.completeness {
                    Completeness::Partial => {
                        "must not be null; leave the field out to keep its value"
                    }
                    Completeness::Full => "must not be null",
                };
                self.errors.push(FieldError::new(name, message));
                None
            }
            other => other,
        }
    }

    /// The decimals of field `name`'s number as sent (0 when it is not a number).
    fn decimals(&self, name: &str) -> u64 {
        self.texts.get(name).map_or(0, |text| decimals(text.get()))
    }

    fn reject<T>(&mut self, name: &str, message: impl Into<String>) -> Option<T> {
        self.errors.push(FieldError::new(name, message));
        None
    }

    fn text(&mut self, name: &str, required: bool, rule: TextRule) -> Option<String> {
        let value = self.value(name, required)?;
        let Some(text) = value.as_str() else {
            return self.reject(name, "must be a string");
        };
        match rule.problem(text) {
            Some(problem) => self.reject(name, problem),
            None => Some(text.trim().to_owned()),
        }
    }

    fn price(&mut self, name: &str) -> Option<i64> {
        let value = self.value(name, true)?;
        let Some(price) = value.as_f64().filter(|_| value.is_number()) else {
            return self.reject(name, "must be a number");
        };
        if !(0.0..=MAX_PRICE).contains(&price) {
            return self.reject(name, format!("must be between 0 and {MAX_PRICE}"));
        }
        if self.decimals(name) > 2 {
            return self.reject(name, "must have at most two decimals");
        }
        // At most two decimals as sent, and in range: the nearest whole number of cents is
        // the price's.
        Some((price * 100.0).round() as i64)
    }

    fn tags(&mut self, name: &str) -> Option<Vec<String>> {
        let value = self.value(name, false)?;
        let Some(items) = value.as_array() else {
            return self.reject(name, "must be an array of strings");
        };
        if items.len() > MAX_TAGS {
            return self.reject(name, format!("must hold at most {MAX_TAGS} tags"));
        }
        let mut tags = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let Some(tag) = item.as_str() else {
                return self.reject(name, format!("tag {}: must be a string", index + 1));
            };
            if let Some(problem) = TAG.problem(tag) {
                return self.reject(name, format!("tag {}: {problem}", index + 1));
            }
            tags.push(tag.trim().to_owned());
        }
        Some(tags)
    }

    fn stock(&mut self, name: &str) -> Option<i64> {
        let value = self.value(name, false)?;
        // JSON Schema counts 167.0 as an integer, and so do generated clients: so does
        // this. `167.00000000000001` is not one, though it reads as 167.0 in binary.
        let whole = value.as_i64().or_else(|| {
            value
                .as_f64()
                .filter(|n| n.abs() <= MAX_STOCK as f64 && self.decimals(name) == 0)
                .map(|n| n as i64)
        });
        let Some(stock) = whole else {
            return self.reject(name, "must be a whole number");
        };
        if !(0..=MAX_STOCK).contains(&stock) {
            return self.reject(name, format!("must be between 0 and {MAX_STOCK}"));
        }
        Some(stock)
    }
}

/// Each field of a JSON object body as sent (empty when it is not one: the parse of the
/// body as a value says why). A second parse of a write's body, for the numbers' text:
/// serde_json's numbers are binary floats, in which `19.9900000000000001` is `19.99`.
fn number_texts(body: &[u8]) -> HashMap<String, Box<RawValue>> {
    serde_json::from_slice(body).unwrap_or_default()
}

/// How many decimals a JSON number has, exactly, from its text (`19.99`: 2, `1.5e1`: 0,
/// `1000e-3`: 0, `19.9900000000000001`: 16, `1e-400`: 400): as JSON Schema's `multipleOf`
/// sees a number, in decimal, not as the binary fraction it is parsed into.
fn decimals(number: &str) -> u64 {
    let number = number.trim().trim_start_matches('-');
    let (mantissa, exponent) = number.split_once(['e', 'E']).unwrap_or((number, "0"));
    // An exponent past i64 makes a number far out of every range, or far past any
    // number of decimals a rule allows.
    let exponent = exponent
        .parse::<i64>()
        .unwrap_or(match exponent.starts_with('-') {
            true => i64::MIN,
            false => i64::MAX,
        });
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_end_matches('0');
    if significant.trim_start_matches('0').is_empty() {
        return 0;
    }
    let trailing_zeros = (digits.len() - significant.len()) as i128;
    let scale = fraction.len() as i128 - i128::from(exponent) - trailing_zeros;
    u64::try_from(scale.max(0)).unwrap_or(u64::MAX)
}

/// Sample products for an empty database: deterministic, each about 1 KB of JSON.
pub(crate) fn samples(count: u32) -> impl Iterator<Item = ProductChanges> {
    const CATEGORIES: [&str; 8] = [
        "kitchen", "garden", "office", "lighting", "outdoor", "audio", "storage", "textiles",
    ];
    const MATERIALS: [&str; 6] = ["oak", "steel", "linen", "ceramic", "bamboo", "recycled"];
    const WORDS: [&str; 16] = [
        "durable",
        "compact",
        "handmade",
        "modular",
        "quiet",
        "washable",
        "stackable",
        "light",
        "sturdy",
        "weatherproof",
        "adjustable",
        "classic",
        "minimal",
        "warm",
        "bright",
        "soft",
    ];
    let mut rng = fastrand::Rng::with_seed(0x5EED);
    (1..=count).map(move |n| {
        let category = CATEGORIES[rng.usize(..CATEGORIES.len())];
        let material = MATERIALS[rng.usize(..MATERIALS.len())];
        let mut description = format!("Made of {material}, for {category}. ");
        while description.len() < 760 {
            let word = WORDS[rng.usize(..WORDS.len())];
            description.push_str(word);
            description.push_str(if rng.u8(..8) == 0 { ". " } else { " " });
        }
        let tags = (0..rng.usize(3..=5))
            .map(|_| WORDS[rng.usize(..WORDS.len())].to_owned())
            .collect();
        ProductChanges {
            name: Some(format!("{} {material} item {n}", capitalised(category))),
            description: Some(description.trim_end().to_owned()),
            price_cents: Some(rng.i64(199..=49_999)),
            category: Some(category.to_owned()),
            tags: Some(tags),
            stock: Some(rng.i64(0..=500)),
        }
    })
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_of(result: Result<ProductChanges, Vec<FieldError>>) -> Vec<String> {
        result
            .expect_err("rejected")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_full_write_takes_defaults_for_optional_fields() {
        let body = br#"{"name": " Lamp ", "price": 19.99, "category": "lighting"}"#;
        let changes = parse_changes(body, Completeness::Full).expect("valid");
        assert_eq!(changes.name.as_deref(), Some("Lamp"));
        assert_eq!(changes.price_cents, Some(1999));
        assert_eq!(changes.description.as_deref(), Some(""));
        assert_eq!(changes.tags, Some(Vec::new()));
        assert_eq!(changes.stock, Some(0));
    }

    #[test]
    fn every_bad_field_is_named() {
        let body = br#"{"name": "", "price": "cheap", "category": 4, "tags": [1], "stock": -1, "colour": "red"}"#;
        let mut fields = fields_of(parse_changes(body, Completeness::Full));
        fields.sort();
        assert_eq!(
            fields,
            ["category", "colour", "name", "price", "stock", "tags"]
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let fields = fields_of(parse_changes(b"{}", Completeness::Full));
        assert_eq!(fields, ["name", "price", "category"]);
    }

    /// A price is refused for a third decimal however small, never rounded to cents.
    #[test]
    fn prices_with_more_decimals_are_refused_not_rounded() {
        for body in [
            &br#"{"price": 19.9900000000000001}"#[..],
            br#"{"price": 100.000000000000001}"#,
            br#"{"price": 1.0000000000000000000000001e2}"#,
            br#"{"price": 1e-400}"#,
            br#"{"price": 19.990000001}"#,
            br#"{"price": 0.30000000000000004}"#,
            br#"{"price": 5e-324}"#,
            br#"{"price": 1.005}"#,
            br#"{"price": 1234.5e-3}"#,
        ] {
            let fields = fields_of(parse_changes(body, Completeness::Partial));
            assert_eq!(fields, ["price"], "{}", String::from_utf8_lossy(body));
        }
        for (body, cents) in [
            (&br#"{"price": 19.99}"#[..], 1999),
            (br#"{"price": 1.5e1}"#, 1500),
            (br#"{"price": 1E6}"#, 100_000_000),
            (br#"{"price": 12.30}"#, 1230),
            (br#"{"price": 0}"#, 0),
            (br#"{"price": 1000e-3}"#, 100),
            (br#"{"price": 1999e-2}"#, 1999),
            (br#"{"price": -0.0}"#, 0),
        ] {
            let ok = parse_changes(body, Completeness::Partial).expect("valid");
            assert_eq!(ok.price_cents, Some(cents));
        }
    }

    #[test]
    fn prices_keep_two_decimals_exactly() {
        let ok = parse_changes(br#"{"price": 0.1}"#, Completeness::Partial).expect("valid");
        assert_eq!(ok.price_cents, Some(10));
        let fields = fields_of(parse_changes(br#"{"price": 1.005}"#, Completeness::Partial));
        assert_eq!(fields, ["price"]);
        let fields = fields_of(parse_changes(br#"{"price": 1e12}"#, Completeness::Partial));
        assert_eq!(fields, ["price"]);
    }

    #[test]
    fn a_patch_needs_one_field_and_refuses_null() {
        assert_eq!(
            fields_of(parse_changes(b"{}", Completeness::Partial)),
            ["body"]
        );
        let fields = fields_of(parse_changes(br#"{"name": null}"#, Completeness::Partial));
        assert_eq!(fields, ["name"]);
        let ok = parse_changes(br#"{"stock": 3}"#, Completeness::Partial).expect("valid");
        assert_eq!(ok.stock, Some(3));
        assert_eq!(ok.name, None);
    }

    /// An integer-valued number is an integer, as JSON Schema counts it; a fraction is not.
    #[test]
    fn integer_valued_numbers_are_whole_numbers() {
        for body in [
            &br#"{"stock": 167.0}"#[..],
            br#"{"stock": 1.67e2}"#,
            br#"{"stock": 1670e-1}"#,
        ] {
            let ok = parse_changes(body, Completeness::Partial).expect("valid");
            assert_eq!(ok.stock, Some(167));
        }
        for body in [
            &br#"{"stock": 167.00000000000001}"#[..],
            br#"{"stock": 5.0000000000000000001}"#,
            br#"{"stock": 1e-400}"#,
            br#"{"stock": 1.5}"#,
            br#"{"stock": 1e300}"#,
            br#"{"stock": -1.0}"#,
        ] {
            assert_eq!(
                fields_of(parse_changes(body, Completeness::Partial)),
                ["stock"]
            );
        }
    }

    /// `null` is refused with the cause that fits the write: a patch keeps what is left out,
    /// a create or replace does not, so it is not told to leave the field out.
    #[test]
    fn null_is_refused_with_the_writes_own_advice() {
        let message = |body: &[u8], completeness| {
            let errors = parse_changes(body, completeness).expect_err("rejected");
            errors
                .into_iter()
                .find(|e| e.field == "price")
                .expect("price")
                .message
        };
        let body = br#"{"name": "Lamp", "price": null, "category": "lighting"}"#;
        assert_eq!(message(body, Completeness::Full), "must not be null");
        assert_eq!(
            message(br#"{"price": null}"#, Completeness::Partial),
            "must not be null; leave the field out to keep its value"
        );
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused() {
        assert_eq!(fields_of(parse_changes(b"{", Completeness::Full)), ["body"]);
        assert_eq!(
            fields_of(parse_changes(b"[1]", Completeness::Full)),
            ["body"]
        );
    }

    #[test]
    fn control_characters_are_refused_except_layout_in_descriptions() {
        for control in ['\0', '\u{1b}', '\u{7f}', '\u{85}'] {
            for field in ["name", "description", "category"] {
                let body = serde_json::json!({ field: format!("a{control}b") }).to_string();
                let fields = fields_of(parse_changes(body.as_bytes(), Completeness::Partial));
                assert_eq!(fields, [field], "{control:?}");
            }
            let body = serde_json::json!({ "tags": ["ok", format!("{control}")] }).to_string();
            let fields = fields_of(parse_changes(body.as_bytes(), Completeness::Partial));
            assert_eq!(fields, ["tags"], "{control:?}");
        }
        let body = br#"{"name": "Lamp\n", "category": "a\tb", "tags": ["\r"]}"#;
        let mut fields = fields_of(parse_changes(body, Completeness::Partial));
        fields.sort();
        assert_eq!(fields, ["category", "name", "tags"], "before trimming");
        let body = br#"{"description": " one\ttwo\r\nthree\n"}"#;
        let ok = parse_changes(body, Completeness::Partial).expect("valid");
        assert_eq!(ok.description.as_deref(), Some("one\ttwo\r\nthree"));
    }

    #[test]
    fn control_character_messages_name_the_character() {
        let refused = ControlChars::Refused.problem("a\0b").expect("refused");
        assert!(refused.ends_with("found U+0000"), "{refused}");
        assert_eq!(ControlChars::LayoutOnly.problem("a\tb\r\n"), None);
        assert!(ControlChars::Refused.problem("a\tb").is_some());
        assert_eq!(
            ControlChars::Refused.problem("caf\u{e9} \u{2028}"),
            None,
            "not Cc"
        );
    }

    #[test]
    fn read_only_fields_sent_back_are_ignored() {
        let body = br#"{"id": 3, "created_at": "x", "updated_at": "y", "stock": 1}"#;
        let ok = parse_changes(body, Completeness::Partial).expect("valid");
        assert_eq!(ok.stock, Some(1));
    }

    #[test]
    fn samples_are_about_one_kilobyte_and_deterministic() {
        let first: Vec<_> = samples(50).collect();
        assert_eq!(first, samples(50).collect::<Vec<_>>());
        for sample in first {
            let product = Product {
                id: 1000,
                name: sample.name.unwrap_or_default(),
                description: sample.description.unwrap_or_default(),
                price: 12.5,
                category: sample.category.unwrap_or_default(),
                tags: sample.tags.unwrap_or_default(),
                stock: 10,
                created_at: Utc::now(),
                updated_at: Utc::now(),
            };
            let bytes = serde_json::to_vec(&product).expect("json").len();
            assert!((900..=1200).contains(&bytes), "{bytes} bytes");
        }
    }
}
