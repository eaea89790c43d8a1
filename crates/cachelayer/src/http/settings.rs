//! The layer's settings, shared by every service a [`ResponseCacheLayer`] makes, and the
//! key of a request under them.
//!
//! This module must never change a setting once a layer has made a service: the builder
//! (`layer`) makes a new `Settings` for each change.
//!
//! [`ResponseCacheLayer`]: super::ResponseCacheLayer

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::request::Parts;

use super::key::{HostRefused, KeyRules, primary_key};
use metrics::Counter;

use super::policy::StoreRules;
use super::status::CacheStatus;
use crate::cache::Cache;

/// Extra key parts taken from a request (per route: give each route its own layer).
#[derive(Clone)]
pub(super) struct KeyParts(pub(super) Arc<KeyPartsFn>);

/// A function from a request to extra key parts.
type KeyPartsFn = dyn Fn(&Parts) -> Vec<String> + Send + Sync;

impl std::fmt::Debug for KeyParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyParts(..)")
    }
}

/// The layer's settings.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) cache: Cache,
    pub(super) keys: KeyRules,
    pub(super) key_parts: Option<KeyParts>,
    pub(super) store: StoreRules,
    pub(super) max_body_bytes: usize,
    /// Requests carrying `Cookie` go around the cache.
    pub(super) bypass_cookie_requests: bool,
    pub(super) generate_etag: bool,
    pub(super) expose_tags: bool,
    pub(super) pass_ttl: Duration,
    pub(super) stale_while_revalidate: Duration,
    pub(super) stale_if_error: Duration,
    /// Keys with a background refresh running in this process.
    pub(super) refreshing: Arc<Mutex<HashSet<String>>>,
    /// The response counter of each `X-Cache` label, resolved at the first response:
    /// looking a labelled series up per response showed in the profile of hits.
    pub(super) responses: Arc<OnceLock<ResponseCounters>>,
}

/// [`HTTP_RESPONSES`](crate::telemetry::HTTP_RESPONSES) by label: hit, stale, miss, bypass.
#[derive(Debug)]
pub(super) struct ResponseCounters([Counter; 4]);

impl Settings {
    /// The counter of responses described by `status`.
    pub(super) fn responses_counter(&self, status: &CacheStatus) -> &Counter {
        let counters = self.responses.get_or_init(|| {
            let counter = |label: &'static str| {
                metrics::counter!(crate::telemetry::HTTP_RESPONSES, "cache" => label)
            };
            ResponseCounters(["HIT", "STALE", "MISS", "BYPASS"].map(counter))
        });
        let index = match status {
            CacheStatus::Hit { .. } => 0,
            CacheStatus::Stale { .. } => 1,
            CacheStatus::Miss { .. } => 2,
            CacheStatus::Bypass { .. } => 3,
        };
        &counters.0[index]
    }

    /// The key of a request: its URL's, plus the configured extra parts.
    pub(super) fn request_key(&self, parts: &Parts) -> Result<crate::key::Key, HostRefused> {
        let key = primary_key(parts, &self.keys)?;
        Ok(match &self.key_parts {
            Some(extra) => (extra.0)(parts)
                .into_iter()
                .fold(key, crate::key::Key::part),
            None => key,
        })
    }
}
