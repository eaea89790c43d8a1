//! Responses that vary (RFC 9111 section 4.1): a marker under the URL's key names the request
//! headers, and each variant lives under a key of its own made from the request's values of
//! them and the marker's generation. Also where entries are read and responses written.
//!
//! This module must never judge a stored response (`lookup` does), only find and store it.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::key::request_values;
use super::stored::{CachedEntry, StoredResponse};
use crate::cache::Cache;
use crate::codec::EnvelopeHeader;
use crate::store::MAX_TTL;
use crate::telemetry::RepairedKey;

/// Least lifetime of a `Vary` marker: longer than its variants, so they stay reachable.
const MARKER_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How far past its recorded life a marker must be before it counts as broken: far more
/// than hosts' clocks disagree by (a `Vary` marker taken for broken orphans its variants).
const MARKER_CLOCK_MARGIN: Duration = Duration::from_secs(60 * 60);

/// The entry under `key`, if any can be read. A marker (pass or `Vary`) past the life it
/// was written for is not one: the store expires markers, so one still there lost its TTL
/// to a write from outside (a script re-`SET`ting keys), and would otherwise hold the URL
/// uncached, or its old variants, forever. The next response written there replaces it.
pub(super) async fn fetch(cache: &Cache, key: &str) -> Option<CachedEntry> {
    fetch_at(cache, key, SystemTime::now()).await
}

async fn fetch_at(cache: &Cache, key: &str, now: SystemTime) -> Option<CachedEntry> {
    let decoded = cache.fetch_entry::<CachedEntry>(key).await?;
    let entry = decoded.value?;
    let marker = matches!(entry, CachedEntry::Pass | CachedEntry::Variants { .. });
    if marker && outlived(&decoded.header, now) {
        RepairedKey::Marker.record(key);
        return None;
    }
    Some(entry)
}

/// Whether an entry is past its recorded life (fresh TTL and the margin) at `now`.
fn outlived(header: &EnvelopeHeader, now: SystemTime) -> bool {
    let age = now.duration_since(header.stored_at).unwrap_or_default();
    age > header.ttl.saturating_add(MARKER_CLOCK_MARGIN)
}

/// The entry for a request: under the URL's key, or, when a marker there says the URL
/// varies, under the request's variant's key. Returns that key too (the URL's when it does
/// not vary).
pub(super) async fn find(
    cache: &Cache,
    primary: &str,
    request: &HeaderMap,
) -> (String, Option<CachedEntry>) {
    match fetch(cache, primary).await {
        Some(CachedEntry::Variants { names, generation }) => {
            let values = request_values(&names, request);
            let full = variant_key(primary, &generation, &values);
            let entry = fetch(cache, &full).await;
            (full, entry)
        }
        entry => (primary.to_owned(), entry),
    }
}

/// The key of the request's variant, when the entry under the URL's key is a marker.
pub(super) async fn variant_of(
    cache: &Cache,
    primary: &str,
    request: &HeaderMap,
) -> Option<String> {
    match fetch(cache, primary).await {
        Some(CachedEntry::Variants { names, generation }) => {
            let values = request_values(&names, request);
            Some(variant_key(primary, &generation, &values))
        }
        _ => None,
    }
}

/// The stored response a marker or a response shared by another request's origin call
/// leaves for this request, if any.
pub(super) async fn shared_response(
    cache: &Cache,
    primary: &str,
    shared: Option<CachedEntry>,
    request: &HeaderMap,
) -> Option<StoredResponse> {
    match shared {
        Some(CachedEntry::Stored(stored)) => Some(stored),
        Some(CachedEntry::Variants { names, generation }) => {
            let values = request_values(&names, request);
            let key = variant_key(primary, &generation, &values);
            match fetch(cache, &key).await {
                Some(CachedEntry::Stored(stored)) => Some(stored),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The key of one variant (the request's values of the varying headers) of a URL.
fn variant_key(primary: &str, generation: &str, values: &[(String, Option<String>)]) -> String {
    let described = serde_json::to_string(values).unwrap_or_default();
    let part = crate::key::Key::new("variant").hashed_part(format!("{generation}\n{described}"));
    format!("{primary}:{part}")
}

/// A new generation of a URL's variants.
fn new_generation() -> String {
    crate::token::random_token()
}

/// Store a response under the URL's key, or, when it varies, under its variant's key with a
/// marker naming the headers under the URL's key. True when written.
pub(super) async fn store_response(
    cache: &Cache,
    primary: &str,
    stored: &StoredResponse,
    fresh: Duration,
    grace: Duration,
) -> bool {
    if !stored.fits_layout() {
        return false;
    }
    let names = stored.vary_names();
    if names.is_empty() {
        let value = CachedEntry::Stored(stored.clone());
        return matches!(
            cache
                .store_value(primary.to_owned(), &value, fresh, grace, Duration::ZERO)
                .await,
            Ok(true)
        );
    }
    // Keep the generation of a marker for the same headers, so its variants stay reachable.
    let generation = match fetch(cache, primary).await {
        Some(CachedEntry::Variants {
            names: known,
            generation,
        }) if known == names => generation,
        _ => new_generation(),
    };
    let variant = variant_key(primary, &generation, stored.vary_pairs());
    let marker = CachedEntry::Variants { names, generation };
    let value = CachedEntry::Stored(stored.clone());
    // Never past what a store keeps (a response fresh for ten years or more would leave
    // its marker unwritable, and its variants unreachable).
    let marker_life = MARKER_TTL.max(fresh.saturating_add(grace)).min(MAX_TTL);
    let (marked, written) = tokio::join!(
        cache.store_value(
            primary.to_owned(),
            &marker,
            marker_life,
            Duration::ZERO,
            Duration::ZERO
        ),
        cache.store_value(variant, &value, fresh, grace, Duration::ZERO),
    );
    matches!((marked, written), (Ok(true), Ok(true)))
}

/// Delete `stored`, the response of `primary`'s URL for its request values, wherever it
/// lives (under the URL's key, or its variant's); a failure is only logged: the entry
/// then lives out its TTL.
pub(super) async fn remove_response(cache: &Cache, primary: &str, stored: &StoredResponse) {
    let key = if stored.vary_names().is_empty() {
        Some(primary.to_owned())
    } else {
        match fetch(cache, primary).await {
            Some(CachedEntry::Variants { generation, .. }) => {
                Some(variant_key(primary, &generation, stored.vary_pairs()))
            }
            _ => None,
        }
    };
    if let Some(key) = key
        && let Err(err) = cache.remove(&key).await
    {
        tracing::warn!(error = %err, key, "could not delete a revoked stored response");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Markers past their recorded life (their store TTL was stripped from outside) are
    /// not found; within it, and a minute past for hosts' clocks, they are.
    #[tokio::test]
    async fn markers_outliving_their_life_are_absent() {
        let cache = Cache::builder().build().expect("cache");
        let life = Duration::from_secs(10);
        let variants = CachedEntry::Variants {
            names: vec!["accept-language".to_owned()],
            generation: "g".to_owned(),
        };
        for (key, marker) in [("pass", CachedEntry::Pass), ("vary", variants)] {
            let key = cache.full_key(key);
            let stored = cache
                .store_value(key.clone(), &marker, life, Duration::ZERO, Duration::ZERO)
                .await;
            assert_eq!(stored.ok(), Some(true));
            let now = SystemTime::now();
            assert_eq!(fetch_at(&cache, &key, now).await, Some(marker.clone()));
            let within = now + life + MARKER_CLOCK_MARGIN - Duration::from_secs(1);
            assert_eq!(fetch_at(&cache, &key, within).await, Some(marker));
            let past = now + life + MARKER_CLOCK_MARGIN + Duration::from_secs(2);
            assert_eq!(fetch_at(&cache, &key, past).await, None, "{key}");
        }
    }
}
