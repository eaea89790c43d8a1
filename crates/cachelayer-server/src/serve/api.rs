//! The product routes: HTTP in, [`Catalogue`](super::catalogue::Catalogue) calls, JSON out.
//!
//! Every read says where it was answered from (`X-Cache`, `Cache-Status`); every bad input is
//! a JSON error naming the field. This module must never reach the database or the cache
//! except through the catalogue.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cachelayer::LoadSource;
use cachelayer::http::CacheTags;
use cachelayer::http::conditional;
use cachelayer::http::status::{CacheStatus, Forward};
use serde::Serialize;
use utoipa::ToSchema;

use super::catalogue::{LIST_TAG, ProductJson, ReadSource, Written};
use super::precondition::Precondition;
use super::product::{Completeness, ControlChars, MAX_CATEGORY_CHARS, Product, parse_changes};
use super::schema::{ListParams, ProductInput, ProductPatch};
use super::state::AppState;
use crate::error::{ApiError, ErrorBody, FieldError, body_within};

/// The `Content-Type` of every JSON answer.
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Page size when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: i64 = 20;
/// Largest page.
pub(crate) const MAX_LIMIT: i64 = 100;
/// Largest offset.
pub(crate) const MAX_OFFSET: i64 = 1_000_000;

/// One page of products.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "items": [{
        "id": 7, "name": "Oak desk lamp", "description": "Made of oak, for lighting.",
        "price": 49.5, "category": "lighting", "tags": ["oak", "warm"], "stock": 12,
        "created_at": "2026-12-01T09:30:00Z", "updated_at": "2026-12-02T16:05:12.250Z"
    }],
    "total": 1, "limit": 20, "offset": 0
}))]
pub(crate) struct ProductPage {
    /// The products on this page, in id order.
    pub items: Vec<Product>,
    /// How many products match the filter, across all pages.
    pub total: i64,
    /// The page size asked for.
    pub limit: i64,
    /// How many matching products come before this page.
    pub offset: i64,
}

/// The values of `X-Cache`, for the description (the header is written by
/// [`CacheStatus`]).
#[derive(ToSchema)]
#[schema(rename_all = "UPPERCASE")]
#[allow(dead_code)] // Describes a header for OpenAPI.
pub(crate) enum XCache {
    /// Answered from the cache.
    Hit,
    /// Answered from the database (or the origin), and stored.
    Miss,
    /// Answered from the cache past its freshness (the store or the database failed, or it
    /// is being refreshed).
    Stale,
    /// Answered around the cache (caching is off, or an invalidation is pending).
    Bypass,
}

/// `X-Cache` and `Cache-Status` (RFC 9211) for a product read.
fn cache_headers(headers: &mut HeaderMap, source: ReadSource) {
    let status = match source {
        ReadSource::Cache(LoadSource::Hit) => CacheStatus::Hit { ttl: None },
        ReadSource::Cache(LoadSource::Stale) => CacheStatus::Stale {
            ttl: None,
            fwd: Some(Forward::Stale),
        },
        ReadSource::Cache(LoadSource::Coalesced) => CacheStatus::Miss {
            fwd: Forward::Miss,
            fwd_status: None,
            stored: false,
            collapsed: true,
        },
        ReadSource::Cache(LoadSource::Bypassed) => CacheStatus::Bypass { detail: None },
        ReadSource::Cache(_) => CacheStatus::Miss {
            fwd: Forward::Miss,
            fwd_status: None,
            stored: true,
            collapsed: false,
        },
        ReadSource::Bypassed(reason) => CacheStatus::Bypass {
            detail: Some(reason),
        },
    };
    // A fresh response: appending `Cache-Status` is the only entry.
    status.write_to(headers);
}

/// The `{id}` of a path: a positive whole number, written plainly (`7`, not `07` or `+7`,
/// so one product has one URL).
fn product_id(raw: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    id_field(raw).map_err(|field| ApiError::validation(vec![field]))
}

/// [`product_id`], its refusal as the field error it names: the cause in the message.
fn id_field(raw: Result<Path<String>, PathRejection>) -> Result<i64, FieldError> {
    let refuse = |message: String| FieldError::new("id", message);
    let Ok(Path(raw)) = raw else {
        return Err(refuse("must be a positive whole number".to_owned()));
    };
    if let Some(id) = canonical_number(&raw).filter(|id| *id > 0) {
        return Ok(id);
    }
    let digits = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    let plain = raw.trim_start_matches('0');
    let message = if !digits || plain.is_empty() {
        "must be a positive whole number".to_owned()
    } else if plain.parse::<i64>().is_err() {
        format!("must be at most {}", i64::MAX)
    } else {
        format!("must be written without leading zeros: {plain}")
    };
    Err(refuse(message))
}

/// A whole number written the one way Rust prints it; anything else is `None`.
fn canonical_number(raw: &str) -> Option<i64> {
    raw.parse::<i64>().ok().filter(|n| n.to_string() == raw)
}

fn no_product(id: i64) -> ApiError {
    ApiError::not_found(format!("there is no product {id}"))
}

/// Get one product.
#[utoipa::path(
    get,
    path = "/products/{id}",
    tag = "products",
    params(
        ("id" = i64, Path, minimum = 1, description = "Product id: a positive whole number, written plainly (`7`, not `07`)"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "Entity tags of copies the client holds; `304` when one is current"),
    ),
    responses(
        (status = 200, description = "The product; `X-Cache` says whether the cache answered",
            body = Product, headers(
                ("ETag" = String, description = "Strong entity tag of this JSON"),
                ("X-Cache" = XCache, description = "Where the answer came from"),
                ("Cache-Status" = String, description = "RFC 9211: the cache's part in the answer"))),
        (status = 304, description = "Not modified: the `If-None-Match` names the current tag",
            headers(
                ("ETag" = String, description = "Strong entity tag of the current JSON"),
                ("X-Cache" = XCache, description = "Where the answer came from"),
                ("Cache-Status" = String, description = "RFC 9211: the cache's part in the answer"))),
        (status = 404, description = "No such product (remembered briefly)", body = ErrorBody,
            headers(
                ("X-Cache" = XCache, description = "Where the answer came from"),
                ("Cache-Status" = String, description = "RFC 9211: the cache's part in the answer"))),
        (status = 422, description = "The id is not a positive whole number written plainly", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get_product(
    State(state): State<AppState>,
    raw: Result<Path<String>, PathRejection>,
    // The request itself, not a `HeaderMap` (which the extractor would copy on every hit).
    request: Request,
) -> Result<Response, ApiError> {
    let id = product_id(raw)?;
    let (product, source) = state.catalogue.product(id).await?;
    let mut response = match product {
        Some(product) => product_response(product, request.headers()),
        None => no_product(id).into_response(),
    };
    cache_headers(response.headers_mut(), source);
    Ok(response)
}

/// A product read: its JSON and `ETag`, or `304 Not Modified` when the request's
/// `If-None-Match` names the tag (the client's copy is current).
fn product_response(product: ProductJson, request: &HeaderMap) -> Response {
    let etag = product.etag().clone();
    respond_tagged(StatusCode::OK, etag, product.into_json(), request)
}

/// A write's answer: the product as stored, with the `ETag` a read of it will carry.
fn written(status: StatusCode, product: &Product) -> Response {
    match ProductJson::of(product) {
        Ok(json) => {
            let etag = json.etag().clone();
            respond_tagged(status, etag, json.into_json(), &HeaderMap::new())
        }
        Err(err) => {
            tracing::error!(error = %err, "a product could not be written as JSON");
            ApiError::internal().into_response()
        }
    }
}

/// List products, a page at a time.
#[utoipa::path(
    get,
    path = "/products",
    tag = "products",
    params(
        ListParams,
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "Entity tags of copies the client holds; `304` when one is current"),
    ),
    responses(
        (status = 200, description = "A page of products, cached by the HTTP layer (shared by every instance on one store, dropped by every write)",
            body = ProductPage, headers(
                ("ETag" = String, description = "Strong entity tag of this page"),
                ("X-Cache" = XCache, description = "Where the answer came from"),
                ("Cache-Status" = String, description = "RFC 9211: the cache's part in the answer"),
                ("Age" = Option<i64>, description = "Seconds since the page was stored, on answers from the cache"))),
        (status = 304, description = "Not modified: the `If-None-Match` names the current tag",
            headers(
                ("ETag" = String, description = "Strong entity tag of the current page"),
                ("X-Cache" = XCache, description = "Where the answer came from"),
                ("Cache-Status" = String, description = "RFC 9211: the cache's part in the answer"))),
        (status = 206, description = "The byte ranges a `Range` asks for, of a page the cache holds (one range: that part of the JSON, with `Content-Range`; several: `multipart/byteranges`)",
            content(("application/json"), ("multipart/byteranges"))),
        (status = 416, description = "The `Range` asks for no byte the stored page has (`Content-Range: bytes */length`)"),
        (status = 422, description = "A query parameter is invalid, unknown, given twice, or a number not written plainly", body = ErrorBody),
        (status = 504, description = "`Cache-Control: only-if-cached`, and the cache holds no usable page", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_products(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Query(params) =
        query.map_err(|err| ApiError::field("query", format!("could not be parsed: {err}")))?;
    let (category, limit, offset) = list_params(&params)?;
    let page = state
        .catalogue
        .page(category.as_deref(), limit, offset)
        .await?;
    let page = ProductPage {
        items: page.items,
        total: page.total,
        limit,
        offset,
    };
    let json = serde_json::to_vec(&page).map_err(|err| {
        tracing::error!(error = %err, "a page could not be written as JSON");
        ApiError::internal()
    })?;
    // The page's own tag, on every answer (stored, passed through, or around the cache),
    // and the page's own `304`: the cache in front stores the tag and answers revalidations
    // from it, and a request it passes on is answered here.
    let mut response = tagged_json(StatusCode::OK, Bytes::from(json), request.headers());
    response.extensions_mut().insert(CacheTags::new([LIST_TAG]));
    Ok(response)
}

/// `json` with its strong `ETag`, or `304 Not Modified` (with the tag) when the request's
/// `If-None-Match` names it.
fn tagged_json(status: StatusCode, json: Bytes, request: &HeaderMap) -> Response {
    let etag = conditional::strong_etag(&json);
    respond_tagged(status, etag, json, request)
}

/// A JSON answer with `etag`, or `304` when the request's `If-None-Match` names it.
fn respond_tagged(
    status: StatusCode,
    etag: HeaderValue,
    json: Bytes,
    request: &HeaderMap,
) -> Response {
    let current = etag
        .to_str()
        .is_ok_and(|tag| conditional::if_none_match(request, tag));
    if current {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        status,
        [
            (header::CONTENT_TYPE, APPLICATION_JSON),
            (header::ETAG, etag),
        ],
        json,
    )
        .into_response()
}

/// Checked list parameters: every bad one named. Unknown parameters and numbers not written
/// plainly are refused, so that each page has one URL and one cache entry (a client cannot
/// fill the cache with `?limit=05`, `?limit=005`, `?x=1`, ...). A category with a control
/// character is refused here, as in a body: PostgreSQL would fail on a NUL in the filter.
fn list_params(params: &[(String, String)]) -> Result<(Option<String>, i64, i64), ApiError> {
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let (mut category, mut limit, mut offset) = (None, DEFAULT_LIMIT, 0);
    for (name, value) in params {
        if matches!(name.as_str(), "category" | "limit" | "offset") && !seen.insert(name.as_str()) {
            errors.push(FieldError::new(name, "must be given at most once"));
            continue;
        }
        match name.as_str() {
            "category" => {
                let chars = value.chars().count();
                if let Some(problem) = ControlChars::Refused.problem(value) {
                    errors.push(FieldError::new(name, problem));
                } else if chars == 0 || chars > MAX_CATEGORY_CHARS {
                    errors.push(FieldError::new(
                        name,
                        format!("must be 1 to {MAX_CATEGORY_CHARS} characters"),
                    ));
                }
                category = Some(value.clone());
            }
            "limit" => match canonical_number(value) {
                Some(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => errors.push(FieldError::new(
                    name,
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )),
            },
            "offset" => match canonical_number(value) {
                Some(n) if (0..=MAX_OFFSET).contains(&n) => offset = n,
                _ => errors.push(FieldError::new(
                    name,
                    format!("must be a whole number from 0 to {MAX_OFFSET}"),
                )),
            },
            _ => errors.push(FieldError::new(
                name,
                "is not a parameter of this list; use category, limit and offset",
            )),
        }
    }
    if errors.is_empty() {
        Ok((category, limit, offset))
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Create a product.
#[utoipa::path(
    post,
    path = "/products",
    tag = "products",
    request_body(content = ProductInput, description = "The new product's fields"),
    responses(
        (status = 201, description = "Created; `Location` names it", body = Product, headers(
            ("Location" = String, description = "The new product's path, `/products/{id}`"),
            ("ETag" = String, description = "Strong entity tag a read of it will carry"))),
        (status = 413, description = "The body is larger than the limit (`--max-body-bytes`)", body = ErrorBody),
        (status = 422, description = "Invalid fields, each named", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn create_product(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_within(body, state.max_body_bytes)?;
    let changes = parse_changes(&body, Completeness::Full).map_err(ApiError::validation)?;
    let product = state.catalogue.create(changes).await?;
    let location = format!("/products/{}", product.id);
    let mut response = written(StatusCode::CREATED, &product);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Replace a product's fields.
#[utoipa::path(
    put,
    path = "/products/{id}",
    tag = "products",
    params(
        ("id" = i64, Path, minimum = 1, description = "Product id: a positive whole number, written plainly"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Write only if the product's current `ETag` is one of these (strong comparison), or exists (`*`); else `412`"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "Write only if the product's current `ETag` is none of these, or (`*`) there is no product; else `412`"),
    ),
    request_body(content = ProductInput, description = "Every writable field; those left out take their defaults"),
    responses(
        (status = 200, description = "The product as stored", body = Product, headers(
            ("ETag" = String, description = "Strong entity tag a read of it will carry"))),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 412, description = "`If-Match` / `If-None-Match` does not hold: the product changed, or does not exist; nothing was written", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (`--max-body-bytes`)", body = ErrorBody),
        (status = 422, description = "Invalid id or fields, each named", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn replace_product(
    State(state): State<AppState>,
    raw: Result<Path<String>, PathRejection>,
    request: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    write_product(state, raw, request, body, Completeness::Full).await
}

/// Change some of a product's fields.
#[utoipa::path(
    patch,
    path = "/products/{id}",
    tag = "products",
    params(
        ("id" = i64, Path, minimum = 1, description = "Product id: a positive whole number, written plainly"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Write only if the product's current `ETag` is one of these (strong comparison), or exists (`*`); else `412`"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "Write only if the product's current `ETag` is none of these, or (`*`) there is no product; else `412`"),
    ),
    request_body(content = ProductPatch, description = "The fields to change; those left out keep their values"),
    responses(
        (status = 200, description = "The product as stored", body = Product, headers(
            ("ETag" = String, description = "Strong entity tag a read of it will carry"))),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 412, description = "`If-Match` / `If-None-Match` does not hold: the product changed, or does not exist; nothing was written", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (`--max-body-bytes`)", body = ErrorBody),
        (status = 422, description = "Invalid id or fields, each named", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn patch_product(
    State(state): State<AppState>,
    raw: Result<Path<String>, PathRejection>,
    request: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    write_product(state, raw, request, body, Completeness::Partial).await
}

async fn write_product(
    state: AppState,
    raw: Result<Path<String>, PathRejection>,
    request: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    completeness: Completeness,
) -> Result<Response, ApiError> {
    let body = body_within(body, state.max_body_bytes)?;
    let id = id_field(raw);
    let changes = parse_changes(&body, completeness);
    // Report the id and the fields together when both are wrong.
    let (id, changes) = match (id, changes) {
        (Ok(id), Ok(changes)) => (id, changes),
        (Err(id), Err(mut fields)) => {
            fields.insert(0, id);
            return Err(ApiError::validation(fields));
        }
        (Err(id), _) => return Err(ApiError::validation(vec![id])),
        (_, Err(fields)) => return Err(ApiError::validation(fields)),
    };
    let precondition = Precondition::of(&request);
    match state.catalogue.update(id, changes, precondition).await? {
        Written::Done(product) => Ok(written(StatusCode::OK, &product)),
        Written::NoSuchProduct => Err(no_product(id)),
        Written::PreconditionFailed => Err(ApiError::precondition_failed()),
    }
}

/// Delete a product.
#[utoipa::path(
    delete,
    path = "/products/{id}",
    tag = "products",
    params(
        ("id" = i64, Path, minimum = 1, description = "Product id: a positive whole number, written plainly"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Write only if the product's current `ETag` is one of these (strong comparison), or exists (`*`); else `412`"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "Write only if the product's current `ETag` is none of these, or (`*`) there is no product; else `412`"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 412, description = "`If-Match` / `If-None-Match` does not hold: the product changed, or does not exist; nothing was deleted", body = ErrorBody),
        (status = 422, description = "The id is not a positive whole number written plainly", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn delete_product(
    State(state): State<AppState>,
    raw: Result<Path<String>, PathRejection>,
    request: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id = product_id(raw)?;
    match state
        .catalogue
        .delete(id, Precondition::of(&request))
        .await?
    {
        Written::Done(()) => Ok(StatusCode::NO_CONTENT),
        Written::NoSuchProduct => Err(no_product(id)),
        Written::PreconditionFailed => Err(ApiError::precondition_failed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn list_parameters_default_and_are_checked() {
        assert_eq!(list_params(&[]).expect("valid"), (None, DEFAULT_LIMIT, 0));
        let ok = list_params(&params(&[
            ("category", "garden"),
            ("limit", "5"),
            ("offset", "10"),
        ]));
        assert_eq!(ok.expect("valid"), (Some("garden".to_owned()), 5, 10));
        let bad = list_params(&params(&[
            ("limit", "0"),
            ("offset", "-1"),
            ("category", ""),
        ]));
        let status = bad.expect_err("invalid").status();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn ids_must_be_positive_whole_numbers_written_plainly() {
        let id = |raw: &str| product_id(Ok(Path(raw.to_owned())));
        assert_eq!(id("7").expect("valid"), 7);
        for raw in ["0", "-3", "x", "1.5", "07", "+7", "99999999999999999999"] {
            assert!(id(raw).is_err(), "{raw}");
        }
        // Each refusal names its cause.
        let cause = |raw: &str| {
            id_field(Ok(Path(raw.to_owned())))
                .expect_err("refused")
                .message
        };
        assert_eq!(cause("007"), "must be written without leading zeros: 7");
        assert_eq!(
            cause("99999999999999999999"),
            "must be at most 9223372036854775807"
        );
        assert_eq!(cause("0"), "must be a positive whole number");
        assert_eq!(cause("-3"), "must be a positive whole number");
    }

    #[test]
    fn unknown_or_oddly_written_list_parameters_are_refused() {
        for pairs in [
            &[("x", "1")][..],
            &[("limit", "05")],
            &[("offset", "+1")],
            &[("limit", "1"), ("limit", "2")],
            &[("category", "a\0b")],
            &[("category", "a\tb")],
            &[("limit", "1\0")],
        ] {
            assert!(list_params(&params(pairs)).is_err(), "{pairs:?}");
        }
    }
}
