//! Admin routes: `POST /admin/invalidate`, for operators who changed data behind the
//! service's back (a migration, a manual fix) and need the cache to forget it. Both
//! commands serve it: `serve` beside its API, `proxy` on its admin listener.
//!
//! The routes exist only when an admin token is configured, and every request must carry it
//! as `Authorization: Bearer <token>`, compared in constant time. This module must never
//! log the token or say how close a wrong one was.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use cachelayer::Cache;
use cachelayer::http::ResponseCacheLayer;
use serde::Serialize;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::error::{ApiError, FieldError, body_within};

/// Most names in one request, per list.
const MAX_NAMES: usize = 1000;

/// What to invalidate.
#[derive(Debug, Default, ToSchema)]
#[allow(dead_code)] // Describes the body for OpenAPI; the handler checks it by hand.
pub(crate) struct InvalidateRequest {
    /// Tags of cached list pages (every list page carries `products`).
    tags: Vec<String>,
    /// Cache keys as the catalogue writes them, e.g. `product:7`.
    keys: Vec<String>,
    /// URLs of cached responses: a path and query (`/products?limit=5`, for this request's
    /// `Host`) or an absolute `http://host/path?query`.
    urls: Vec<String>,
}

/// How many names of each kind were invalidated.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Invalidated {
    /// Tags invalidated.
    pub tags: usize,
    /// Keys invalidated.
    pub keys: usize,
    /// URLs purged.
    pub urls: usize,
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
    /// `product:7`) and URLs (path and query, for a host).
    async fn invalidate_named(
        &self,
        tags: &[String],
        keys: &[String],
        urls: &[(String, String)],
    ) -> cachelayer::Result<()> {
        if !tags.is_empty() {
            self.layer.invalidate_tags(tags.iter().cloned()).await?;
        }
        if !keys.is_empty() {
            self.cache
                .invalidate_many(keys.iter().map(String::as_str))
                .await?;
        }
        for (host, path) in urls {
            self.layer.purge(host, path).await?;
        }
        Ok(())
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
        (status = 200, description = "Invalidated (exists only with an admin token configured)", body = Invalidated),
        (status = 401, description = "Missing or wrong admin token", body = crate::error::ErrorBody),
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
    state
        .invalidate_named(&tags, &keys, &urls)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "admin invalidation failed");
            ApiError::unavailable("the cache store")
        })?;
    tracing::info!(tags = ?tags, keys = ?keys, urls = urls.len(), "admin invalidation");
    Ok(Json(Invalidated {
        tags: tags.len(),
        keys: keys.len(),
        urls: urls.len(),
    }))
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

/// The field `name`: absent (none), or an array of non-empty strings (else an error).
fn names(object: &Map<String, Value>, name: &str, errors: &mut Vec<FieldError>) -> Vec<String> {
    let strings = match object.get(name) {
        None => return Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_NAMES => items
            .iter()
            .map(|item| item.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
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

/// A URL as (host, path and query), the host as the HTTP layer keys it: lowercase, with
/// its port unless it is 80 or 443.
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
