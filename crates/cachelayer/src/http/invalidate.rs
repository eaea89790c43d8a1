//! Invalidation after writes (RFC 9111 section 4.4): a successful unsafe request drops the
//! stored responses of its target URI and of the `Location` / `Content-Location` URIs on
//! the same host.
//!
//! This module must never touch the response: a failed invalidation is logged, and the
//! origin's response goes back as it came.

use http::request::Parts;
use http::{HeaderMap, StatusCode};

use super::key::{normalize_host, normalized_host, url_key};
use super::settings::Settings;

/// Drops what a write with `status` and `response` headers made stale.
pub(super) async fn invalidate_after_write(
    settings: &Settings,
    request: &Parts,
    status: StatusCode,
    response: &HeaderMap,
) {
    if !(status.is_success() || status.is_redirection()) {
        return;
    }
    let Ok(target) = settings.request_key(request) else {
        return;
    };
    let host = normalized_host(request);
    let mut keys = vec![target];
    for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let Some(uri) = response
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<http::Uri>().ok())
        else {
            continue;
        };
        let same_host = uri
            .authority()
            .is_none_or(|authority| normalize_host(authority.as_str()) == host);
        if same_host {
            keys.push(url_key(&host, uri.path(), uri.query(), &settings.keys));
        }
    }
    if let Err(err) = settings.cache.invalidate_many(keys).await {
        tracing::warn!(error = %err, uri = %request.uri, "could not invalidate cached responses after a write");
    }
}
