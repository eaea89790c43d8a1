//! Background refresh (RFC 5861 stale-while-revalidate): a stale response is served while
//! one request per key and process refreshes it on a task of its own.
//!
//! This module must never run two refreshes of one key in a process at once, nor leave a
//! key claimed after its refresh ends (however it ends).

use std::sync::{Arc, PoisonError};

use http::request::Parts;

use super::body::OriginBody;
use super::collapse::{Keys, collapsed};
use super::forward::Origin;
use super::settings::Settings;
use super::status::Forward;
use super::stored::StoredResponse;
use crate::telemetry;

/// A key's background refresh in this process; released however the refresh ends.
struct RefreshClaim {
    settings: Arc<Settings>,
    full: String,
}

impl RefreshClaim {
    /// Claims `full`, unless a refresh of it already runs in this process.
    fn claim(settings: &Arc<Settings>, full: &str) -> Option<Self> {
        let claimed = settings
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(full.to_owned());
        claimed.then(|| Self {
            settings: Arc::clone(settings),
            full: full.to_owned(),
        })
    }
}

impl Drop for RefreshClaim {
    fn drop(&mut self) {
        self.settings
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.full);
    }
}

/// Refresh `keys.full` with this request on a task of its own, unless a refresh of it
/// already runs in this process (across processes, the lock dedupes).
pub(super) fn refresh_in_background<S, ReqBody, ResBody>(
    settings: &Arc<Settings>,
    inner: S,
    parts: Parts,
    body: ReqBody,
    keys: Keys,
    stored: StoredResponse,
) where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(claim) = RefreshClaim::claim(settings, &keys.full) else {
        return;
    };
    metrics::counter!(telemetry::REFRESHES, "trigger" => "http_stale").increment(1);
    let settings = Arc::clone(settings);
    // The refresh is of the whole response, on the stored response's validators: a range,
    // or the client's own conditions, would get an answer that cannot refresh it.
    let mut parts = parts;
    for name in [
        http::header::RANGE,
        http::header::IF_RANGE,
        http::header::IF_NONE_MATCH,
        http::header::IF_MODIFIED_SINCE,
        http::header::IF_MATCH,
        http::header::IF_UNMODIFIED_SINCE,
    ] {
        parts.headers.remove(name);
    }
    runtime.spawn(async move {
        let _claim = claim;
        let full = keys.full.clone();
        let refreshed = collapsed(
            &settings,
            inner,
            parts,
            body,
            keys,
            Forward::Stale,
            Some(stored),
        )
        .await;
        if refreshed.is_err() {
            tracing::warn!(key = full, "background refresh of a stale response failed");
        }
    });
}
