//! The layer's settings, shared by every service a [`ResponseCacheLayer`] makes, and the
//! key of a request under them.
//!
//! This module must never change a setting once a layer has made a service: the builder
//! (`layer`) makes a new `Settings` for each change.
//!
//! [`ResponseCacheLayer`]: super::ResponseCacheLayer

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::request::Parts;

use super::key::{HostRefused, KeyRules, primary_key};
use super::policy::StoreRules;
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
}

impl Settings {
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
