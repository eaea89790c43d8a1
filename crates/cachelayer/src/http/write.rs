//! Requests of other methods than GET and HEAD: to the origin, then, for an unsafe method,
//! the invalidation of what it changed (`invalidate`); and a `POST` response that says it
//! is the current representation of its own URL (`Content-Location` equal to the target,
//! with explicit freshness) stored for later GETs (RFC 9111 section 4, RFC 9110 section
//! 9.3.3).
//!
//! This module must never store a response to a request whose answer may depend on more
//! than its URL (a cookie the layer bypasses for, extra key parts it cannot know, a host
//! off the allow-list), nor before the write's invalidation has run.

use std::sync::Arc;
use std::time::SystemTime;

use http::request::Parts;
use http::{HeaderMap, Method, Request, Response};

use super::admit::{Verdict, admit, strip_tag_headers};
use super::body::{CacheBody, OriginBody, boxed};
use super::forward::{Origin, store_admitted};
use super::invalidate::{invalidate_after_write, resolve};
use super::key::{normalize_host, normalized_host, primary_key, url_key};
use super::policy::has_explicit_freshness;
use super::respond::describe;
use super::service::Bypass;
use super::settings::Settings;
use super::tags::{TagClock, read_clock};

/// A request of another method: straight to the origin, then, for an unsafe method, the
/// invalidation of what it changed, and for a `POST`, the reuse of its response when it
/// allows.
pub(super) async fn write_through<S, ReqBody, ResBody>(
    settings: Arc<Settings>,
    mut inner: S,
    parts: Parts,
    body: ReqBody,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let unsafe_method = !matches!(
        parts.method,
        Method::OPTIONS | Method::TRACE | Method::CONNECT
    );
    let target = parts.clone();
    let reuse = reusable_post(&settings, &parts);
    // Read before the origin call, like every response that may be stored with tags.
    let tag_clock = match reuse {
        Some(_) => read_clock(&settings.cache).await,
        None => TagClock::Unread,
    };
    let request_time = SystemTime::now();
    let response = inner.call(Request::from_parts(parts, body)).await?;
    if unsafe_method {
        // On its own task, awaited: the invalidation completes even if the client goes
        // away, and before this response is returned (or stored).
        let (status, headers) = (response.status(), response.headers().clone());
        let invalidated = Arc::clone(&settings);
        let request = target.clone();
        let invalidation = tokio::spawn(async move {
            invalidate_after_write(&invalidated, &request, status, &headers).await;
        });
        if invalidation.await.is_err() {
            tracing::warn!("the invalidation after a write did not complete");
        }
    }
    let status = Bypass::Method.status();
    // Explicit freshness only (RFC 9110 section 9.3.3): a default TTL or a heuristic is
    // the operator's guess about GETs, never a reason to reuse a write's answer.
    if let Some(primary) = reuse
        && has_explicit_freshness(response.headers(), &settings.store)
        && names_its_target(&settings, &target, response.headers())
    {
        // Judged and stored as the GET it answers for.
        let mut as_get = target;
        as_get.method = Method::GET;
        let (mut response, verdict) =
            admit(&settings, &as_get, response, request_time, tag_clock, None).await;
        let written = match verdict {
            Verdict::Store(admitted) => store_admitted(&settings, &primary, &admitted).await,
            Verdict::Refused | Verdict::Outdated | Verdict::Revoked => false,
        };
        describe(&settings, response.headers_mut(), &status);
        if written {
            super::status::append_param(response.headers_mut(), &["stored"]);
        }
        return Ok(response);
    }
    let mut response = response.map(boxed);
    if !settings.expose_tags {
        strip_tag_headers(response.headers_mut());
    }
    describe(&settings, response.headers_mut(), &status);
    Ok(response)
}

/// The full key a `POST`'s response would be stored under for GETs of its URL, when such a
/// request may leave a shared response at all.
fn reusable_post(settings: &Settings, parts: &Parts) -> Option<String> {
    let shared = parts.method == Method::POST
        && settings.key_parts.is_none()
        && !(settings.bypass_cookie_requests && parts.headers.contains_key(http::header::COOKIE));
    if !shared {
        return None;
    }
    let key = settings.request_key(parts).ok()?;
    Some(settings.cache.full_key(key))
}

/// Whether `response`'s `Content-Location` names the request's own URL (same host, same key
/// after normalization).
fn names_its_target(settings: &Settings, request: &Parts, response: &HeaderMap) -> bool {
    let Some(location) = response
        .get(http::header::CONTENT_LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| resolve(v, request.uri.path()))
    else {
        return false;
    };
    let host = normalized_host(request);
    let same_host = location
        .authority()
        .is_none_or(|authority| normalize_host(authority.as_str()) == host);
    let Ok(target) = primary_key(request, &settings.keys) else {
        return false;
    };
    same_host && url_key(&host, location.path(), location.query(), &settings.keys) == target
}
