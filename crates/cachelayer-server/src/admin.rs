//! Admin routes: `POST /admin/invalidate`, for operators who changed data behind the
//! service's back (a migration, a manual fix) and need the cache to forget it. Both
//! commands serve it: `serve` beside its API, `proxy` on its admin listener.
//!
//! The answer says what was removed, not what was asked: how many keys held an entry and
//! how many URLs a stored response, and each name that held nothing, spelled as the cache
//! looked it up (a URL's host as keys hold it, so a purge naming another spelling of the
//! host shows).
//!
//! The routes exist only when an admin token is configured, and every request must carry it
//! as `Authorization: Bearer <token>`, compared in constant time. This module must never
//! log the token or say how close a wrong one was.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use cachelayer::http::{Purged, ResponseCacheLayer};
use cachelayer::{Cache, Removal};
use serde::Serialize;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, AnyOfBuilder, Array, ArrayBuilder, ObjectBuilder, Schema,
    Type,
};
use utoipa::{PartialSchema, ToSchema};

use crate::error::{ApiError, FieldError, body_within};

/// Most names in one request, per list.
const MAX_NAMES: usize = 1000;

/// What to invalidate: one or more of the three lists, each optional, at least one of them
/// not empty; nothing else.
#[derive(Debug, Default, ToSchema)]
#[allow(dead_code)] // Describes the body for OpenAPI; the handler checks it by hand.
#[schema(example = json!({ "tags": ["products"], "keys": ["product:7"], "urls": ["/products?limit=5"] }))]
pub(crate) struct InvalidateRequest {
    #[schema(schema_with = tag_list)]
    tags: Option<Vec<String>>,
    #[schema(schema_with = key_list)]
    keys: Option<Vec<String>>,
    #[schema(schema_with = url_list)]
    urls: Option<Vec<String>>,
}

/// A list of names: at most [`MAX_NAMES`] non-empty strings.
fn name_list(description: &str, item: ObjectBuilder) -> Array {
    ArrayBuilder::new()
        .items(item.schema_type(Type::String).min_length(Some(1)))
        .max_items(Some(MAX_NAMES))
        .description(Some(description))
        .build()
}

fn tag_list() -> Array {
    name_list(
        "Tags of cached responses (every list page of `serve` carries `products`).",
        ObjectBuilder::new(),
    )
}

fn key_list() -> Array {
    name_list(
        "Cache keys as the application writes them, e.g. `product:7`.",
        ObjectBuilder::new(),
    )
}

fn url_list() -> Array {
    name_list(
        "URLs of cached responses: a path and query (`/products?limit=5`, for this request's `Host`) or an absolute `http://host/path?query`.",
        ObjectBuilder::new().pattern(Some("^(/|https?://[^/?#]+)")),
    )
}

/// The request body's schema: closed, and naming something.
pub(crate) fn invalidate_request() -> RefOr<Schema> {
    let RefOr::T(Schema::Object(mut object)) = InvalidateRequest::schema() else {
        return InvalidateRequest::schema();
    };
    object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
    let one_not_empty =
        ["tags", "keys", "urls"]
            .into_iter()
            .fold(AnyOfBuilder::new(), |any, list| {
                let not_empty = ArrayBuilder::new().min_items(Some(1));
                any.item(
                    ObjectBuilder::new()
                        .required(list)
                        .property(list, not_empty),
                )
            });
    let all = AllOfBuilder::new()
        .item(object)
        .item(one_not_empty)
        .description(Some("At least one name, in any of the lists."))
        .build();
    RefOr::T(Schema::AllOf(all))
}

/// What the invalidation removed, and what it was asked for but found nothing under, e.g.
/// `{"tags": 1, "keys": 1, "urls": 0, "not_found": {"keys": ["product:99"], "urls":
/// ["http://localhost:8080/products?limit=5"]}}`. Each name counts once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "tags": 1, "keys": 1, "urls": 0,
    "not_found": { "keys": ["product:99"], "urls": ["http://localhost:8080/products?limit=5"] }
}))]
pub(crate) struct Invalidated {
    /// Tags invalidated: every tag named, as a tag always applies (its responses, however
    /// many, are no longer served; they are not counted).
    pub tags: usize,
    /// Keys that held an entry, now removed.
    pub keys: usize,
    /// URLs that had a stored response, now removed (with every variant when it varies).
    pub urls: usize,
    /// The keys and URLs named that held nothing.
    pub not_found: NamesNotFound,
}

/// Names that held nothing, spelled as the cache looked them up, so a spelling that differs
/// from the stored one shows.
#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct NamesNotFound {
    /// Keys as the cache reads them: as sent when made of letters, digits, `_`, `-`, `.`
    /// and `:` (`product:99`), else `#` and the hash the cache keys them by.
    pub keys: Vec<String>,
    /// URLs as the HTTP cache keys them: `http://` (for any scheme: keys hold none), the
    /// host lowercase, without a default port (80, 443), and without any port when the
    /// key host port is ignored, then the path's normal form and the query as keyed
    /// (parameters sorted), e.g. `http://localhost:8080/products?limit=5`.
    pub urls: Vec<String>,
}

/// What the admin routes need: the token, and the cache and HTTP layer to invalidate in
/// (shared with every instance on the same store).
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    pub(crate) token: Option<Arc<str>>,
    pub(crate) max_body_bytes: usize,
    pub(crate) cache: Cache,
    pub(crate) layer: ResponseCacheLayer,
    /// Whether a URL may be a bare path, for the admin request's own `Host` (true where the
    /// admin routes share the clients' listener).
    pub(crate) bare_paths: bool,
}

impl AdminState {
    /// Drop tags (of cached responses), keys (as the application writes them, e.g.
    /// `product:7`) and URLs (path and query, for a host); what was removed.
    async fn invalidate_named(
        &self,
        tags: &[String],
        keys: &[String],
        urls: &[(String, String)],
    ) -> cachelayer::Result<Invalidated> {
        if !tags.is_empty() {
            self.layer.invalidate_tags(tags.iter().cloned()).await?;
        }
        let removal = if keys.is_empty() {
            Removal::default()
        } else {
            let keys = keys.iter().map(String::as_str);
            self.cache.invalidate_reporting(keys).await?
        };
        let (urls, not_stored) = self.purge_urls(urls).await?;
        Ok(Invalidated {
            tags: tags.len(),
            keys: removal.count(),
            urls,
            not_found: NamesNotFound {
                keys: removal.not_found.iter().map(|k| k.to_string()).collect(),
                urls: not_stored,
            },
        })
    }

    /// Purge each URL once (two spellings of one are one): how many had a stored response,
    /// and the others as the cache keys them.
    async fn purge_urls(
        &self,
        urls: &[(String, String)],
    ) -> cachelayer::Result<(usize, Vec<String>)> {
        let mut seen = HashSet::new();
        let (mut purged, mut not_stored) = (0, Vec::new());
        for (host, path) in urls {
            let keyed = self.layer.keyed_url(host, path)?;
            if !seen.insert(keyed.clone()) {
                continue;
            }
            match self.layer.purge(host, path).await? {
                Purged::Removed => purged += 1,
                Purged::NotStored => not_stored.push(keyed),
            }
        }
        Ok((purged, not_stored))
    }
}

/// Whether the request carries `Authorization: Bearer <token>`. The scheme is
/// case-insensitive and followed by one or more spaces (RFC 9110 sections 11.1 and 11.4);
/// the token is compared exactly, in constant time.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(presented) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
    else {
        return false;
    };
    bool::from(presented.trim_end().as_bytes().ct_eq(token.as_bytes()))
}

/// The credentials of a `Bearer` authorization value, or `None` for another scheme.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then(|| credentials.trim_start_matches(' '))
}

/// Invalidate tags, keys and URLs, in every instance sharing the store.
#[utoipa::path(
    post,
    path = "/admin/invalidate",
    tag = "admin",
    request_body = InvalidateRequest,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Invalidated: what was removed, and the names that held nothing (exists only with an admin token configured)", body = Invalidated),
        (status = 401, description = "Missing or wrong admin token", body = crate::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 413, description = "The body is larger than the limit (`--max-body-bytes`)", body = crate::error::ErrorBody),
        (status = 422, description = "Invalid fields, each named", body = crate::error::ErrorBody),
        (status = 503, description = "The cache store is unavailable; nothing may have been invalidated", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn invalidate(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Invalidated>, ApiError> {
    let token = state.token.as_deref().unwrap_or_default();
    if token.is_empty() || !authorized(&headers, token) {
        tracing::warn!("admin request refused: missing or wrong token");
        return Err(ApiError::unauthorized());
    }
    let body = body_within(body, state.max_body_bytes)?;
    let request_host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let request_host = state.bare_paths.then_some(request_host);
    let (tags, keys, urls) = parse(&body, request_host).map_err(ApiError::validation)?;
    let invalidated = state
        .invalidate_named(&tags, &keys, &urls)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "admin invalidation failed");
            ApiError::unavailable("the cache store")
        })?;
    tracing::info!(
        tags = invalidated.tags,
        keys = invalidated.keys,
        urls = invalidated.urls,
        not_found_keys = ?invalidated.not_found.keys,
        not_found_urls = ?invalidated.not_found.urls,
        "admin invalidation"
    );
    Ok(Json(invalidated))
}

type Names = (Vec<String>, Vec<String>, Vec<(String, String)>);

/// The request body, checked: every bad field named.
fn parse(body: &[u8], request_host: Option<&str>) -> Result<Names, Vec<FieldError>> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        vec![FieldError::new(
            "body",
            format!("is not valid JSON ({err})"),
        )]
    })?;
    let Value::Object(object) = value else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let mut errors: Vec<FieldError> = object
        .keys()
        .filter(|name| !matches!(name.as_str(), "tags" | "keys" | "urls"))
        .map(|name| FieldError::new(name, "is not a field; send tags, keys and/or urls"))
        .collect();
    let tags = names(&object, "tags", &mut errors);
    let keys = names(&object, "keys", &mut errors);
    let urls: Vec<(String, String)> = names(&object, "urls", &mut errors)
        .iter()
        .filter_map(|url| {
            let parts = split_url(url, request_host);
            if parts.is_none() {
                let accepted = if request_host.is_some() {
                    "a path (/products?limit=5) or an http(s) URL"
                } else {
                    "an http(s) URL naming the host clients use (http://api.example/items/7)"
                };
                errors.push(FieldError::new(
                    "urls",
                    format!("{url:?} is not {accepted}"),
                ));
            }
            parts
        })
        .collect();
    if errors.is_empty() && tags.is_empty() && keys.is_empty() && urls.is_empty() {
        errors.push(FieldError::new(
            "body",
            "names nothing; send tags, keys and/or urls",
        ));
    }
    if errors.is_empty() {
        Ok((tags, keys, urls))
    } else {
        Err(errors)
    }
}

/// The field `name`: absent (none), or an array of non-empty strings (else an error), each
/// once, in order.
fn names(object: &Map<String, Value>, name: &str, errors: &mut Vec<FieldError>) -> Vec<String> {
    let mut seen = HashSet::new();
    let strings = match object.get(name) {
        None => return Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_NAMES => items
            .iter()
            .map(|item| item.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
            .filter(|name| name.as_ref().is_none_or(|name| seen.insert(name.clone())))
            .collect::<Option<Vec<String>>>(),
        Some(_) => None,
    };
    strings.unwrap_or_else(|| {
        errors.push(FieldError::new(
            name,
            format!("must be an array of at most {MAX_NAMES} non-empty strings"),
        ));
        Vec::new()
    })
}

/// A URL as (host, path and query), the host normalized as the HTTP layer normalizes a
/// request's `Host` (lowercase, without a default port, 80 or 443, whatever the scheme), so
/// a bare path for the admin request's own `Host` and an absolute URL meet the same key.
fn split_url(url: &str, request_host: Option<&str>) -> Option<(String, String)> {
    let host_of = cachelayer::http::key::normalize_host;
    // Only what the HTTP layer can purge: a path and query it would parse.
    let valid_path = |path: &str| path.parse::<http::uri::PathAndQuery>().is_ok();
    if url.starts_with('/') {
        let host = request_host?;
        return valid_path(url).then(|| (host_of(host), url.to_owned()));
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    (!authority.is_empty() && valid_path(path)).then(|| (host_of(authority), path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_host_and_path() {
        assert_eq!(
            split_url("/products?limit=5", Some("Shop.example:8000")),
            Some((
                "shop.example:8000".to_owned(),
                "/products?limit=5".to_owned()
            ))
        );
        assert_eq!(
            split_url("https://a.example:443/products", None),
            Some(("a.example".to_owned(), "/products".to_owned()))
        );
        assert_eq!(split_url("ftp://a/b", Some("x")), None);
        assert_eq!(split_url("products", Some("x")), None);
        assert_eq!(
            split_url("/products", None),
            None,
            "a bare path needs a host"
        );
        assert_eq!(split_url("/a b", Some("x")), None);
    }

    /// A bare path for the admin request's `Host: localhost:80` and `http://localhost:80/x`
    /// name the host a request with `Host: localhost` is keyed under; another port stays.
    #[test]
    fn default_ports_are_dropped_from_purged_hosts() {
        let localhost = Some(("localhost".to_owned(), "/x".to_owned()));
        assert_eq!(split_url("/x", Some("LocalHost:80")), localhost);
        assert_eq!(split_url("/x", Some("localhost:443")), localhost);
        assert_eq!(split_url("http://localhost:80/x", None), localhost);
        assert_eq!(split_url("https://localhost:0443/x", None), localhost);
        assert_eq!(
            split_url("/x", Some("localhost:8080")),
            Some(("localhost:8080".to_owned(), "/x".to_owned()))
        );
    }

    #[test]
    fn requests_must_name_something_valid() {
        let fields = |body: &[u8]| -> Vec<String> {
            parse(body, Some("h"))
                .expect_err("invalid")
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(b"{}"), ["body"]);
        assert_eq!(fields(br#"{"tags": "products"}"#), ["tags"]);
        assert_eq!(fields(br#"{"tag": ["x"]}"#), ["tag"]);
        assert_eq!(fields(br#"{"urls": ["nope"]}"#), ["urls"]);
        let (tags, keys, urls) = parse(
            br#"{"tags": ["products"], "keys": ["product:7"]}"#,
            Some("h"),
        )
        .expect("valid");
        assert_eq!((tags.len(), keys.len(), urls.len()), (1, 1, 0));
        let (tags, keys, _) = parse(
            br#"{"tags": ["a", "b", "a"], "keys": ["k", "k"]}"#,
            Some("h"),
        )
        .expect("valid");
        assert_eq!(
            (tags, keys),
            (vec!["a".into(), "b".into()], vec!["k".into()])
        );
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
            headers
        };
        for accepted in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR s3cret",
            "Bearer   s3cret",
        ] {
            assert!(authorized(&with(accepted), "s3cret"), "{accepted:?}");
        }
        for refused in [
            "Bearer S3CRET",
            "bearer s3cre",
            "Bearers3cret",
            "Bearer",
            "Bearer ",
            "s3cret",
            "Bearer\ts3cret",
            "Bearerx s3cret",
            "Bear s3cret",
        ] {
            assert!(!authorized(&with(refused), "s3cret"), "{refused:?}");
        }
        assert!(!authorized(&with("Bearer s3cre"), "s3cret"));
        assert!(!authorized(&with("Bearer s3cret2"), "s3cret"));
        assert!(!authorized(&with("Basic s3cret"), "s3cret"));
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
    }
}
