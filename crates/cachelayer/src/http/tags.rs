//! Tags (surrogate keys): responses carry tags (`Cache-Tag: a, b`, `Surrogate-Key: a b`, or
//! a [`CacheTags`] response extension), and `invalidate_tags` drops every response with a
//! tag, in every instance sharing the store, in one round trip, without KEYS or SCAN.
//!
//! How: each tag has a version key holding a version (when it was set, on the tag clock, and
//! a random part). A stored response records the version of each of its tags when it was
//! stored; on a hit the current versions are read (one MGET) and any difference makes it a
//! miss. Invalidating sets new versions. A response whose origin call started before one of
//! its tags was invalidated is not stored (it may show the old data).
//!
//! "Before" is decided on one clock for every process: the tag clock, a counter in the store
//! that each invalidation advances ([`Store::advance_counter`](crate::store::Store::advance_counter)),
//! read before each origin call. Hosts' clocks are never compared, so a host whose clock is
//! off cannot store a page an invalidation dropped. A missing version key (never created, or
//! evicted) never matches a recorded version, so eviction can only cost misses, never revive
//! a dropped response; a lost clock restarts past every version it stamped. This module must
//! never enumerate keys, nor read a host's clock.

use bytes::Bytes;
use http::HeaderMap;

use crate::cache::Cache;
use crate::error::Result;
use crate::store::{MAX_TTL, parse_counter};
use crate::telemetry::RepairedKey;
use crate::token::{TOKEN_LEN, random_token};

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
pub const TAG_HEADERS: [&str; 2] = ["cache-tag", "surrogate-key"];

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

/// The store key of `tag`'s version, for operators (and tests) who inspect the store.
///
/// ```
/// use cachelayer::Cache;
///
/// let cache = Cache::builder().namespace("shop").build().unwrap();
/// let key = cachelayer::http::tag_version_key(&cache, "product:7");
/// // On a Redis Cluster: `shop:v1:{shop:v1:tags}:tag:#...`, one slot for every tag.
/// assert!(key.starts_with("shop:v1:tag:#"), "{key}");
/// ```
pub fn tag_version_key(cache: &Cache, tag: &str) -> String {
    version_keys(cache, &[tag.to_owned()]).remove(0)
}

/// The keys of tags' versions. They share one slot with the tag clock (on a Redis Cluster,
/// [`Store::advance_counter`](crate::store::Store::advance_counter) sets them in one script).
fn version_keys(cache: &Cache, tags: &[String]) -> Vec<String> {
    tags.iter()
        .map(|tag| cache.grouped_key(TAG_GROUP, crate::key::Key::new("tag").hashed_part(tag)))
        .collect()
}

/// The key of the counter that orders invalidations (the tag clock).
fn clock_key(cache: &Cache) -> String {
    cache.grouped_key(TAG_GROUP, "tag-clock")
}

/// The slot group of the tag clock and the tags' versions.
const TAG_GROUP: &str = "tags";

/// The tag clock's reading when an origin call started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagClock {
    /// The clock read this: responses whose tags were all last invalidated at or before it
    /// may be stored.
    Read(u64),
    /// Not read: the store did not answer, or the response will not be stored anyway. A
    /// response with tags is then not stored.
    Unread,
}

/// Read the tag clock before an origin call (one `GET`: whether the response will carry
/// tags is not known before it arrives). A clock that is missing (evicted, flushed, never
/// advanced) or unreadable is advanced first: it restarts from the store's clock, past every
/// version it stamped before.
pub(crate) async fn read_clock(cache: &Cache) -> TagClock {
    let key = clock_key(cache);
    let read = match cache.call("tag_clock", cache.store().get(&key)).await {
        Ok(read) => read,
        Err(_) => return TagClock::Unread,
    };
    match read.as_deref().map(parse_counter) {
        Some(Some(reading)) => TagClock::Read(reading),
        unreadable_or_missing => {
            if matches!(unreadable_or_missing, Some(None)) {
                RepairedKey::TagCounter.record(&key);
            }
            match advance_clock(cache, &[]).await {
                Ok(reading) => TagClock::Read(reading),
                Err(_) => TagClock::Unread,
            }
        }
    }
}

/// Advance the tag clock, and set each of `keys` to a new version stamped with its reading,
/// atomically (two invalidations can never leave the older version under a key).
async fn advance_clock(cache: &Cache, keys: &[String]) -> Result<u64> {
    let stamps: Vec<crate::store::StoreEntry> = keys
        .iter()
        .map(|key| crate::store::StoreEntry {
            key: key.clone(),
            value: Bytes::from(format!("-{}", random_token())),
            ttl: MAX_TTL,
        })
        .collect();
    let _forget = cache.forget_on_drop(&stamps, crate::cache::entry_key);
    cache
        .call(
            "tag_invalidate",
            cache
                .store()
                .advance_counter(&clock_key(cache), MAX_TTL, &stamps),
        )
        .await
}

/// A version: the tag clock's reading when it was set, then a random part that makes it
/// unique.
fn version(clock: u64) -> Bytes {
    Bytes::from(format!("{clock}-{}", random_token()))
}

/// When a version was set, on the tag clock; `None` when the bytes are not a version (a
/// foreign write, garbage).
fn version_clock(version: &[u8]) -> Option<u64> {
    let (clock, random) = std::str::from_utf8(version).ok()?.split_once('-')?;
    let random_ok = random.len() == TOKEN_LEN && random.bytes().all(|b| b.is_ascii_hexdigit());
    random_ok.then(|| parse_counter(clock.as_bytes())).flatten()
}

/// The current versions of `tags`, creating the missing ones, for a response whose origin
/// call started at `started` on the tag clock. `None` when the response must not be
/// stored: the store cannot say, or a tag was invalidated after the call started. A
/// version that is not one (garbage) is replaced as an invalidation would, so the tag's
/// responses are stored again from the next origin call on.
pub(crate) async fn versions_for_store(
    cache: &Cache,
    tags: &[String],
    started: TagClock,
) -> Option<Vec<String>> {
    if tags.is_empty() {
        return Some(Vec::new());
    }
    let TagClock::Read(started) = started else {
        return None;
    };
    let keys = version_keys(cache, tags);
    let current = cache.read_many("tag_versions", &keys).await.ok()?;
    let mut versions = Vec::with_capacity(keys.len());
    let mut broken = Vec::new();
    let mut invalidated = false;
    for (key, found) in keys.iter().zip(current) {
        let found = match found {
            Some(found) => found,
            // Stamped with the clock now: later than `started` if an invalidation came in
            // between (whose version was then lost: evicted, flushed).
            None => match first_version(cache, key).await? {
                Some(found) => found,
                // Neither absent nor readable: a key of another type.
                None => Bytes::new(),
            },
        };
        match version_clock(&found) {
            None => {
                RepairedKey::TagVersion.record(key);
                broken.push(key.clone());
            }
            // After the call started: the response may show what the invalidation dropped.
            Some(set_at) => invalidated |= set_at > started,
        }
        versions.push(String::from_utf8_lossy(&found).into_owned());
    }
    if !broken.is_empty() {
        let _ = invalidate_keys(cache, &broken).await;
        return None;
    }
    (!invalidated).then_some(versions)
}

/// Create a tag's first version, stamped with the tag clock's reading now (or read the one
/// another process created meanwhile). `None` when the store failed; `Some(None)` when the
/// key holds something that reads as absent yet cannot be created (another type).
async fn first_version(cache: &Cache, key: &str) -> Option<Option<Bytes>> {
    let TagClock::Read(now) = read_clock(cache).await else {
        return None;
    };
    let first = version(now);
    let store = cache.store();
    let created = cache
        .call(
            "tag_create",
            store.set_if_absent(key, first.clone(), MAX_TTL),
        )
        .await
        .ok()?;
    if created {
        Some(Some(first))
    } else {
        cache.call("tag_versions", store.get(key)).await.ok()
    }
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
/// instance sharing the store. One round trip (the clock and the versions, together);
/// reports store failure. Retried once at once when the connection was cut, as a failover or an idle
/// timeout does; the retry sets newer versions, which is as good.
pub(crate) async fn invalidate(cache: &Cache, tags: &[String]) -> Result<()> {
    if tags.is_empty() {
        return Ok(());
    }
    let keys = version_keys(cache, tags);
    cache
        .retry_once_if_cut(|| invalidate_keys(cache, &keys))
        .await
}

async fn invalidate_keys(cache: &Cache, keys: &[String]) -> Result<()> {
    advance_clock(cache, keys).await.map(drop)
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
    /// never valid; a response whose origin call started before an invalidation of one of
    /// its tags is not stored, and one that started after it is.
    #[tokio::test]
    async fn versions_change_on_invalidation() {
        let cache = Cache::builder().build().expect("cache");
        let tags = vec!["a".to_owned(), "b".to_owned()];
        let before = read_clock(&cache).await;
        assert!(matches!(before, TagClock::Read(_)), "{before:?}");
        let versions = versions_for_store(&cache, &tags, before)
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
        assert_eq!(versions_for_store(&cache, &tags, before).await, None);
        let after = read_clock(&cache).await;
        assert!(versions_for_store(&cache, &tags, after).await.is_some());
        assert_eq!(
            versions_for_store(&cache, &tags, TagClock::Unread).await,
            None
        );
    }

    /// A version or a clock holding garbage is replaced: the response that found it is not
    /// stored, the next one is.
    #[tokio::test]
    async fn garbage_versions_and_clocks_heal() {
        let cache = Cache::builder().build().expect("cache");
        let tags = vec!["a".to_owned()];
        let store = cache.store();
        let key = version_keys(&cache, &tags).remove(0);
        let ttl = std::time::Duration::from_secs(60);
        store
            .set(&key, Bytes::from_static(b"\xff\xfe-not-a-version"), ttl)
            .await
            .expect("garbage version");
        let started = read_clock(&cache).await;
        assert_eq!(versions_for_store(&cache, &tags, started).await, None);
        let started = read_clock(&cache).await;
        assert!(versions_for_store(&cache, &tags, started).await.is_some());

        store
            .set(&clock_key(&cache), Bytes::from_static(b"garbage"), ttl)
            .await
            .expect("garbage clock");
        let started = read_clock(&cache).await;
        assert!(matches!(started, TagClock::Read(_)), "{started:?}");
        assert!(versions_for_store(&cache, &tags, started).await.is_some());
    }

    /// A version lost (evicted, flushed) after an invalidation during the origin call does
    /// not let its response be stored: the recreated version is stamped with the clock now.
    #[tokio::test]
    async fn a_version_lost_during_the_call_is_not_a_pass() {
        let cache = Cache::builder().build().expect("cache");
        let tags = vec!["a".to_owned()];
        let started = read_clock(&cache).await;
        invalidate(&cache, &tags).await.expect("invalidate");
        let key = version_keys(&cache, &tags).remove(0);
        cache.store().delete(&key).await.expect("evict");
        assert_eq!(versions_for_store(&cache, &tags, started).await, None);
        let after = read_clock(&cache).await;
        assert!(versions_for_store(&cache, &tags, after).await.is_some());
    }

    /// Versions are what `version` writes, nothing else.
    #[test]
    fn only_versions_parse() {
        let written = version(42);
        assert_eq!(version_clock(&written), Some(42));
        assert_eq!(version_clock(&version(0)), Some(0));
        for bad in [
            &b""[..],
            b"42",
            b"-0123456789abcdef0123456789abcdef",
            b"+1-0123456789abcdef0123456789abcdef",
            b"1-0123456789abcdef",
            b"1-0123456789abcdef0123456789abcdeg",
            b"\xff-0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(version_clock(bad), None, "{bad:?}");
        }
    }
}
