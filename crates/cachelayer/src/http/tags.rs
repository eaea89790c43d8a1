//! Tags (surrogate keys): responses carry tags (`Cache-Tag: a, b`, `Surrogate-Key: a b`, or
//! a [`CacheTags`] response extension), and `invalidate_tags` drops every response with a
//! tag, in every instance sharing the store, in one round trip, without KEYS or SCAN.
//!
//! How: each tag has a version key holding a token (the time it was set, and a random part).
//! A stored response records the token of each of its tags when it was stored; on a hit the
//! current tokens are read (one MGET) and any difference makes it a miss. Invalidating sets
//! new tokens. A response whose origin call started before one of its tags was invalidated
//! is not stored (it may show the old data). A missing version key (never created, or
//! evicted) never matches a recorded token, so eviction can only cost misses, never revive a
//! dropped response. This module must never enumerate keys.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;

use crate::cache::Cache;
use crate::error::Result;
use crate::store::MAX_TTL;
use crate::token::random_token;

/// Tags a handler attaches to its response, as an extension (not sent to clients).
///
/// ```
/// use axum::response::IntoResponse;
/// use cachelayer::http::CacheTags;
///
/// async fn product() -> impl IntoResponse {
///     let mut response = "{\"id\": 7}".into_response();
///     response.extensions_mut().insert(CacheTags::new(["product:7", "products"]));
///     response
/// }
/// # drop(product);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheTags(Vec<String>);

impl CacheTags {
    /// These tags.
    pub fn new<S: Into<String>>(tags: impl IntoIterator<Item = S>) -> Self {
        Self(tags.into_iter().map(Into::into).collect())
    }
}

/// The header fields that carry tags.
pub(crate) const TAG_HEADERS: [&str; 2] = ["cache-tag", "surrogate-key"];

/// A response's tags: from `Cache-Tag` (comma-separated), `Surrogate-Key`
/// (space-separated) and the [`CacheTags`] extension; sorted, without duplicates.
pub(crate) fn tags_of(headers: &HeaderMap, extension: Option<&CacheTags>) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for value in headers
        .get_all("cache-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        tags.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        );
    }
    for value in headers
        .get_all("surrogate-key")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        tags.extend(value.split_ascii_whitespace().map(str::to_owned));
    }
    if let Some(extension) = extension {
        tags.extend(extension.0.iter().cloned());
    }
    tags.sort();
    tags.dedup();
    tags
}

fn version_keys(cache: &Cache, tags: &[String]) -> Vec<String> {
    tags.iter()
        .map(|tag| cache.full_key(crate::key::Key::new("tag").hashed_part(tag)))
        .collect()
}

/// A version token set by an invalidation: its time in milliseconds, then a random part.
fn invalidation_token() -> Bytes {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    Bytes::from(format!("{millis}-{}", random_token()))
}

/// The first version of a tag, created when a response with it is stored: no invalidation
/// has happened, so its time is 0.
fn first_token() -> Bytes {
    Bytes::from(format!("0-{}", random_token()))
}

/// When a token was set (0 when it does not say).
fn token_time(token: &[u8]) -> u128 {
    std::str::from_utf8(token)
        .ok()
        .and_then(|t| t.split_once('-'))
        .and_then(|(millis, _)| millis.parse().ok())
        .unwrap_or(0)
}

/// The current version tokens of `tags`, creating the missing ones, for a response whose
/// origin call started at `requested`. `None` when the response must not be stored: the
/// store cannot say, or a tag was invalidated after the call started.
pub(crate) async fn versions_for_store(
    cache: &Cache,
    tags: &[String],
    requested: SystemTime,
) -> Option<Vec<String>> {
    if tags.is_empty() {
        return Some(Vec::new());
    }
    let keys = version_keys(cache, tags);
    let current = cache.read_many("tag_versions", &keys).await.ok()?;
    let mut versions = Vec::with_capacity(keys.len());
    for (key, version) in keys.iter().zip(current) {
        let version = match version {
            Some(version) => version,
            None => {
                let token = first_token();
                let store = cache.store();
                let created = cache
                    .call(
                        "tag_create",
                        store.set_if_absent(key, token.clone(), MAX_TTL),
                    )
                    .await
                    .ok()?;
                if created {
                    token
                } else {
                    cache.call("tag_versions", store.get(key)).await.ok()??
                }
            }
        };
        let started = requested
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        // At or after: an invalidation in the same millisecond as the start may have come
        // after it. Clocks of different hosts are compared here, so a writer whose clock is
        // behind the reader's by more than the origin call's duration can still let a stale
        // response be stored (documented where the guarantees are).
        if token_time(&version) >= started {
            return None;
        }
        versions.push(String::from_utf8_lossy(&version).into_owned());
    }
    Some(versions)
}

/// What a hit's tags say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagCheck {
    /// Every tag has the recorded version.
    Valid,
    /// A tag was invalidated (or its version lost): the response must not be served.
    Invalid,
    /// The store did not answer: not served either, but not deleted.
    Unknown,
}

/// Whether every tag still has the version recorded with a stored response (one MGET).
pub(crate) async fn check(cache: &Cache, tagged: &[(String, String)]) -> TagCheck {
    if tagged.is_empty() {
        return TagCheck::Valid;
    }
    let tags: Vec<String> = tagged.iter().map(|(tag, _)| tag.clone()).collect();
    let keys = version_keys(cache, &tags);
    let Ok(current) = cache.read_many("tag_versions", &keys).await else {
        return TagCheck::Unknown;
    };
    let same = current.len() == tagged.len()
        && current
            .iter()
            .zip(tagged)
            .all(|(now, (_, recorded))| now.as_deref() == Some(recorded.as_bytes()));
    if same {
        TagCheck::Valid
    } else {
        TagCheck::Invalid
    }
}

/// New versions for `tags`: every response stored with one of them becomes a miss, in every
/// instance sharing the store. One round trip; reports store failure.
pub(crate) async fn invalidate(cache: &Cache, tags: &[String]) -> Result<()> {
    if tags.is_empty() {
        return Ok(());
    }
    let entries: Vec<crate::store::StoreEntry> = version_keys(cache, tags)
        .into_iter()
        .map(|key| crate::store::StoreEntry {
            key,
            value: invalidation_token(),
            ttl: MAX_TTL,
        })
        .collect();
    let _forget = cache.forget_on_drop(&entries, crate::cache::entry_key);
    cache
        .call("tag_invalidate", cache.store().set_many(&entries))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tags come from both headers and the extension, trimmed, sorted and deduplicated.
    #[test]
    fn tags_from_headers_and_extension() {
        let mut headers = HeaderMap::new();
        headers.append("cache-tag", "product:7, products".parse().expect("v"));
        headers.append("surrogate-key", "products  home".parse().expect("v"));
        let extension = CacheTags::new(["home", "promo"]);
        assert_eq!(
            tags_of(&headers, Some(&extension)),
            ["home", "product:7", "products", "promo"]
        );
    }

    /// A recorded version is valid until the tag is invalidated; a missing version key is
    /// never valid.
    #[tokio::test]
    async fn versions_change_on_invalidation() {
        let cache = Cache::builder().build().expect("cache");
        let tags = vec!["a".to_owned(), "b".to_owned()];
        let before = SystemTime::now() - std::time::Duration::from_secs(1);
        let versions = versions_for_store(&cache, &tags, SystemTime::now())
            .await
            .expect("versions");
        let tagged: Vec<(String, String)> = tags.iter().cloned().zip(versions).collect();
        assert_eq!(check(&cache, &tagged).await, TagCheck::Valid);
        invalidate(&cache, &["b".to_owned()])
            .await
            .expect("invalidate");
        assert_eq!(check(&cache, &tagged).await, TagCheck::Invalid);
        let missing = vec![("never-created".to_owned(), "x".to_owned())];
        assert_eq!(check(&cache, &missing).await, TagCheck::Invalid);
        // A response whose origin call started before the invalidation is not stored.
        assert_eq!(versions_for_store(&cache, &tags, before).await, None);
    }
}
