//! How long a stored response lives: its stale windows (its own, else the layer's) and how
//! long it is kept past its freshness.
//!
//! This module must never decide whether a response may be stored (`policy` does), only for
//! how long a storable one is kept.

use std::time::Duration;

use super::policy::Storable;
use super::settings::Settings;
use super::stored::StoredResponse;

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
            fresh,
            grace,
        }
    }
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
    let stale_windows = if facts.must_revalidate {
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
