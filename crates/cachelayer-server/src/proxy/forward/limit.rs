//! The upstream's concurrency limit: a place per request, held until its response body ends
//! or is dropped, with a queue bounded by the request's deadline, and the series that report
//! on them. This module must never let a request through without a place.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::body::UPSTREAM_BODY_TIMEOUTS;
use crate::metrics::GaugeUnit;

/// Gauge of requests the upstream is answering (headers or body) right now.
pub(crate) const UPSTREAM_IN_FLIGHT: &str = "cachelayer_upstream_requests_in_flight";
/// Gauge of requests waiting for a place under `--upstream-max-concurrency`.
pub(crate) const UPSTREAM_QUEUED: &str = "cachelayer_upstream_requests_queued";
/// Counter of requests answered 503 because no place freed up in time.
pub(crate) const UPSTREAM_REJECTED: &str = "cachelayer_upstream_rejected_total";

/// The upstream's concurrency limit and body timeout, and the series that report on them.
#[derive(Debug)]
pub(super) struct Limits {
    /// Fair (first come, first served), so a queued request is not overtaken.
    pub(super) places: Arc<Semaphore>,
    in_flight: Gauge,
    queued: Gauge,
    rejected: Counter,
    pub(super) body_timeout: Duration,
    pub(super) body_timeouts: Counter,
}

impl Limits {
    pub(super) fn new(max_concurrency: usize, body_timeout: Duration) -> Self {
        Self {
            places: Arc::new(Semaphore::new(max_concurrency)),
            in_flight: metrics::gauge!(UPSTREAM_IN_FLIGHT),
            queued: metrics::gauge!(UPSTREAM_QUEUED),
            rejected: metrics::counter!(UPSTREAM_REJECTED),
            body_timeout,
            body_timeouts: metrics::counter!(UPSTREAM_BODY_TIMEOUTS),
        }
    }

    /// A place for one request, waiting for one until `deadline`; `None` past it. Dropping
    /// the future while it waits leaves the queue.
    pub(super) async fn admit(&self, deadline: Instant) -> Option<Permit> {
        let place = match Arc::clone(&self.places).try_acquire_owned() {
            Ok(place) => place,
            Err(_) => {
                let _queued = GaugeUnit::enter(&self.queued);
                let waiting = Arc::clone(&self.places).acquire_owned();
                // The semaphore is never closed: an error is the deadline.
                let Ok(Ok(place)) = tokio::time::timeout_at(deadline, waiting).await else {
                    self.rejected.increment(1);
                    return None;
                };
                place
            }
        };
        Some(Permit {
            _place: place,
            _counted: GaugeUnit::enter(self.in_flight.clone()),
        })
    }
}

/// A request's place under the concurrency limit, counted in [`UPSTREAM_IN_FLIGHT`].
#[derive(Debug)]
pub(super) struct Permit {
    _place: OwnedSemaphorePermit,
    _counted: GaugeUnit<Gauge>,
}
