//! Responses the cache makes itself: a stored response served (or a `304` when the client's
//! copy is current, or the `206`/`416` its `Range` asks for), a `504` for `only-if-cached`,
//! and the status headers on every response.
//!
//! This module must never call the origin nor touch the store; it renders what it is given.

use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};

use super::body::{CacheBody, full_body};
use super::range::{self, Ranged};
use super::settings::Settings;
use super::status::{CacheStatus, Forward};
use super::stored::StoredResponse;

/// A stored response served stale, `ttl` seconds past its freshness (negative), for the
/// status headers.
pub(super) fn stale_hit(ttl: i64) -> CacheStatus {
    CacheStatus::Stale {
        ttl: Some(ttl),
        fwd: None,
    }
}

/// `X-Cache` and `Cache-Status` (RFC 9211) for a response, counted.
pub(super) fn describe(settings: &Settings, headers: &mut HeaderMap, status: &CacheStatus) {
    settings.responses_counter(status).increment(1);
    status.write_to(headers);
}

/// A response built from a stored one, with `Age` and the status headers; a `304` when
/// the request's own validators match it (RFC 9110 section 13.1). Its headers and body are
/// moved out of `stored`, the body still sharing the stored bytes.
pub(super) fn from_store(
    settings: &Settings,
    stored: StoredResponse,
    request: &Parts,
    age: Duration,
    status: CacheStatus,
) -> Response<CacheBody> {
    if stored.status() == StatusCode::OK && not_modified(&request.headers, &stored) {
        return not_modified_response(settings, stored.headers(), age, &status);
    }
    let heuristic = stored.facts().heuristic;
    let ranged = ranged(request, &stored);
    let served = stored.into_served();
    let mut response = match ranged {
        Some(ranged) => {
            let mut headers = served.headers;
            for name in ranged.removed {
                headers.remove(name);
            }
            for (name, value) in ranged.set {
                headers.insert(name, value);
            }
            let mut response = Response::new(full_body(ranged.body));
            *response.status_mut() = ranged.status;
            *response.headers_mut() = headers;
            response
        }
        None => {
            // A HEAD gets the stored `Content-Length` with an empty body.
            let body = if request.method == Method::HEAD {
                Bytes::new()
            } else {
                served.body
            };
            let mut response = Response::new(full_body(body));
            *response.status_mut() = served.status;
            *response.headers_mut() = served.headers;
            response
        }
    };
    response
        .headers_mut()
        .insert(http::header::AGE, HeaderValue::from(age.as_secs()));
    describe(settings, response.headers_mut(), &status);
    if heuristic {
        super::status::append_param(response.headers_mut(), &["detail=heuristic"]);
    }
    response
}

/// The `206` or `416` a GET's `Range` makes of a stored complete `200`, if any.
fn ranged(request: &Parts, stored: &StoredResponse) -> Option<Ranged> {
    if request.method != Method::GET
        || stored.status() != StatusCode::OK
        || !request.headers.contains_key(http::header::RANGE)
    {
        return None;
    }
    let plan = range::plan(&request.headers, stored.headers(), stored.body().len());
    range::answer(&plan, stored.headers(), stored.body())
}

/// Whether a request's `If-None-Match` (weak comparison), or else its `If-Modified-Since`,
/// says the client's copy is current (evaluated before any `Range`, RFC 9110 section 13.2.2).
pub(crate) fn not_modified(request: &HeaderMap, stored: &StoredResponse) -> bool {
    if request.contains_key(http::header::IF_NONE_MATCH) {
        return stored
            .etag()
            .is_some_and(|etag| super::conditional::if_none_match(request, etag));
    }
    let since = request
        .get(http::header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    // Without `Last-Modified`, the stored response's `Date`, else when it arrived (RFC 9111
    // section 4.3.2).
    match since {
        Some(since) => stored.last_modified_or_date() <= since,
        None => false,
    }
}

/// A `304 Not Modified` carrying the fields RFC 9110 section 15.4.5 asks for.
fn not_modified_response(
    settings: &Settings,
    stored: &HeaderMap,
    age: Duration,
    status: &CacheStatus,
) -> Response<CacheBody> {
    let mut response = Response::new(full_body(Bytes::new()));
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [
        http::header::CACHE_CONTROL,
        http::header::CONTENT_LOCATION,
        http::header::DATE,
        http::header::ETAG,
        http::header::EXPIRES,
        http::header::VARY,
        http::header::LAST_MODIFIED,
    ] {
        for value in stored.get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
        .headers_mut()
        .insert(http::header::AGE, HeaderValue::from(age.as_secs()));
    describe(settings, response.headers_mut(), status);
    response
}

/// `504` for `only-if-cached` with nothing usable stored (RFC 9111 section 5.2.1.7), with
/// the JSON error body every error of the project has: a machine code and a sentence.
pub(super) fn gateway_timeout(settings: &Settings) -> Response<CacheBody> {
    let mut response = Response::new(full_body(Bytes::from_static(
        br#"{"error":"not_in_cache","message":"nothing usable is stored and the request said only-if-cached"}"#,
    )));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    describe(
        settings,
        response.headers_mut(),
        &CacheStatus::forwarded(Forward::UriMiss),
    );
    response
}
