//! Invalidation after writes (RFC 9111 section 4.4): a successful unsafe request drops the
//! stored responses of its target URI and of the `Location` / `Content-Location` URIs on
//! the same host, relative references resolved against the target, every path in the
//! normal form keys use (`path`), so no spelling of a written URL stays stale. Also what a
//! purge of one URL drops, and what it says it found ([`Purged`]).
//!
//! This module must never touch the response: a failed invalidation is logged, and the
//! origin's response goes back as it came.

use http::request::Parts;
use http::{HeaderMap, StatusCode, Uri};

use super::key::{normalize_host, normalized_host, url_key};
use super::settings::Settings;
use super::stored::CachedEntry;
use crate::cache::Cache;

/// What a purge of a URL ([`ResponseCacheLayer::purge`](super::ResponseCacheLayer::purge))
/// found under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purged {
    /// A stored response was removed: the URL's own, or, for a URL whose responses vary,
    /// the `Vary` marker through which every variant was found (the variants can no longer
    /// be reached, and expire unseen). A marker outlives its variants (a day at least), so
    /// a purge after every variant expired still finds it and says `Removed`.
    Removed,
    /// No response was stored under the URL's key in the layer's scope: never stored,
    /// expired, or only the note that its responses cannot be stored (removed too).
    NotStored,
}

/// Drop the entry under the URL key `full` (the stored response, or the `Vary` marker that
/// makes its variants reachable), everywhere, and say what it was. Reports store failure.
pub(super) async fn purge(cache: &Cache, full: &str) -> crate::error::Result<Purged> {
    let held = super::vary::fetch(cache, full).await;
    let existed = cache
        .remove_each(std::slice::from_ref(&full.to_owned()))
        .await?;
    Ok(match (existed.first(), held) {
        (Some(true), Some(CachedEntry::Pass)) | (Some(false) | None, _) => Purged::NotStored,
        // An entry that could not be read (garbage, a hiccup) counts as a response.
        (Some(true), _) => Purged::Removed,
    })
}

/// Drops what a write with `status` and `response` headers made stale. `request` is the
/// request as the origin received it (its path already normal).
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
            .and_then(|v| resolve(v, request.uri.path()))
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

/// A URI reference from a response header, resolved against the request's `base` path
/// (RFC 3986 section 5.2; dot segments are left to the key's normal form), without its
/// fragment; `None` when it is no URI.
pub(crate) fn resolve(reference: &str, base: &str) -> Option<Uri> {
    let reference = reference.split('#').next().unwrap_or_default().trim();
    let scheme = reference
        .split_once(':')
        .is_some_and(|(scheme, _)| !scheme.is_empty() && !scheme.contains(['/', '?']));
    let absolute = if reference.starts_with("//") {
        // A network-path reference: the scheme does not matter for the host check.
        format!("http:{reference}")
    } else if scheme || reference.starts_with('/') {
        reference.to_owned()
    } else if reference.is_empty() || reference.starts_with('?') {
        format!("{base}{reference}")
    } else {
        let directory = base.rfind('/').map_or("/", |slash| &base[..=slash]);
        format!("{directory}{reference}")
    };
    absolute.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Absolute URIs, absolute paths and relative references all name a URL.
    #[test]
    fn references_resolve_against_the_target() {
        let resolved = |reference| resolve(reference, "/items/7").map(|u| u.to_string());
        for (reference, uri) in [
            ("/items/8?x=1", "/items/8?x=1"),
            ("http://shop.example/items/8", "http://shop.example/items/8"),
            ("//shop.example/a", "http://shop.example/a"),
            ("8", "/items/8"),
            ("../lists/1#top", "/items/../lists/1"),
            ("?page=2", "/items/7?page=2"),
        ] {
            assert_eq!(resolved(reference).as_deref(), Some(uri), "{reference}");
        }
        assert_eq!(resolved("http://"), None);
    }
}
