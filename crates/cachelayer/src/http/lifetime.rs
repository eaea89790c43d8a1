//! How long a stored response lives: its stale windows (its own, else the layer's) and how
//! long it is kept past its freshness.
//!
//! This module must never decide whether a response may be stored (`policy` does), only for
//! how long a storable one is kept.

use std::time::Duration;

use super::policy::Storable;
use super::settings::Settings;
use super::stored::StoredResponse;
use crate::store::MAX_TTL;

/// Least and most time a response with validators is kept past its freshness, so a stale
/// copy can be revalidated (a 304 instead of the whole body).
const MIN_REVALIDATION_GRACE: Duration = Duration::from_secs(60);
const MAX_REVALIDATION_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// A response the cache will store: the stored copy, its fresh lifetime left, and how long
/// it is kept past that.
#[derive(Debug)]
pub(super) struct Admitted {
    pub(super) stored: StoredResponse,
    pub(super) fresh: Duration,
    pub(super) grace: Duration,
}

impl Admitted {
    /// `stored`, fresh for `fresh` more, kept for its `facts`' grace past that.
    pub(super) fn new(stored: StoredResponse, facts: Storable, fresh: Duration) -> Self {
        let grace = grace_of(facts, &stored);
        Self {
            stored,
            // Stores keep nothing longer than their limit; RFC 9111 section 1.2.2 allows
            // freshness of 2^31 s, which is then fresh for as long as it is kept.
            fresh: fresh.min(MAX_TTL),
            grace,
        }
    }
}

/// Least time a `no-cache` response is kept fresh in the store: it is revalidated on every
/// use whatever its freshness, and kept for its validators' sake.
const NO_CACHE_STORE_FRESHNESS: Duration = Duration::from_secs(1);

/// How long a response that arrived `initial_age` old stays fresh in the store, or `None`
/// when it arrived stale and is worth nothing stored (a `no-cache` response is worth its
/// validators: every use revalidates it anyway).
pub(super) fn fresh_left(facts: Storable, initial_age: Duration) -> Option<Duration> {
    let left = facts.freshness.saturating_sub(initial_age);
    if facts.no_cache {
        return Some(left.max(NO_CACHE_STORE_FRESHNESS));
    }
    Some(left).filter(|left| !left.is_zero())
}

/// The stale windows of a stored response: its own, else the layer's configured ones.
pub(super) fn with_configured_windows(settings: &Settings, mut facts: Storable) -> Storable {
    if facts.stale_while_revalidate.is_zero() {
        facts.stale_while_revalidate = settings.stale_while_revalidate;
    }
    if facts.stale_if_error.is_zero() {
        facts.stale_if_error = settings.stale_if_error;
    }
    facts
}

/// How long past its freshness a response is kept: for its stale windows (unless it may
/// never be served stale), and, when the origin gave validators, for revalidation (as long
/// as it was fresh, within 1 minute to 1 day).
fn grace_of(facts: Storable, stored: &StoredResponse) -> Duration {
    let stale_windows = if !facts.may_serve_stale() {
        Duration::ZERO
    } else {
        facts.stale_while_revalidate.max(facts.stale_if_error)
    };
    let revalidation = if stored.origin_validators().is_empty() {
        Duration::ZERO
    } else {
        facts
            .freshness
            .clamp(MIN_REVALIDATION_GRACE, MAX_REVALIDATION_GRACE)
    };
    stale_windows.max(revalidation)
}
