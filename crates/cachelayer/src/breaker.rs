//! A circuit breaker in front of the store: after repeated failures it stops calling the
//! store for a cool-down, then lets one probe through; the probe's outcome closes or re-opens
//! it. The cache makes the probe a background read of its own (no caller waits on it), so
//! the cool-down can be short: traffic is back within about one cool-down of the store
//! answering again, while a store that stays down sees one probe per cool-down from each
//! process, spread by jitter so a fleet does not redial in step.
//!
//! Written by hand: the breaker crates on crates.io are either unmaintained or built around
//! wrapping a future, while the cache needs its state readable (health checks report it) and
//! driven by tokio's clock (so tests can pause time). It must never hold its lock across an
//! `.await`, and never let a cancelled probe wedge it half-open: a probe that does not report
//! back within a cool-down is presumed lost and another is allowed.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::telemetry;

/// Default consecutive failures that open the breaker.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Default time the breaker stays open before probing (less up to a fifth, at random).
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_millis(500);
/// The largest share of a cool-down that jitter takes off.
const COOL_DOWN_JITTER: f64 = 0.2;

/// The breaker's state, as reported to health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// The store is called normally.
    Closed,
    /// One probe is allowed through to test the store.
    HalfOpen,
    /// The store is not called until the cool-down ends.
    Open,
}

impl BreakerState {
    /// A stable label for metrics, logs and health output.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// Whether a call may go to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Call the store.
    Allowed,
    /// Do not call the store for this caller, but probe it now: the probe's outcome decides
    /// the breaker's fate.
    Probe,
    /// Do not call the store.
    Rejected,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

/// Tracks store health and decides whether to call it.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    phase: Mutex<Phase>,
    failure_threshold: u32,
    cool_down: Duration,
    /// The store it guards, as logs name it (its redacted address, or its kind).
    store: String,
    /// The node this breaker guards, when the store keeps one per node (a Redis Cluster);
    /// it labels the breaker's metrics.
    node: Option<String>,
}

impl CircuitBreaker {
    /// A breaker for the store logs call `store`.
    pub(crate) fn new(failure_threshold: u32, cool_down: Duration, store: String) -> Self {
        let breaker = Self {
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            failure_threshold,
            cool_down,
            store,
            node: None,
        };
        breaker.gauge(BreakerState::Closed);
        breaker
    }

    /// A breaker for one node of a store (its metrics carry a `node` label).
    pub(crate) fn for_node(
        failure_threshold: u32,
        cool_down: Duration,
        store: String,
        node: String,
    ) -> Self {
        let breaker = Self {
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            failure_threshold,
            cool_down,
            store,
            node: Some(node),
        };
        breaker.gauge(BreakerState::Closed);
        breaker
    }

    /// The store it guards, as logs name it.
    pub(crate) fn store(&self) -> &str {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // The critical sections cannot panic half-way, so a poisoned lock still holds a
        // consistent phase.
        self.phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.lock() {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
            Phase::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
        }
    }

    pub(crate) fn admit(&self) -> Admission {
        let mut phase = self.lock();
        if matches!(*phase, Phase::Closed { .. }) {
            // The common case reads no clock.
            return Admission::Allowed;
        }
        let now = Instant::now();
        match *phase {
            Phase::Closed { .. } => Admission::Allowed,
            Phase::Open { until } if now < until => Admission::Rejected,
            Phase::HalfOpen { probe_started } if now < probe_started + self.cool_down => {
                Admission::Rejected
            }
            Phase::Open { .. } | Phase::HalfOpen { .. } => {
                *phase = Phase::HalfOpen { probe_started: now };
                drop(phase);
                self.transition(BreakerState::HalfOpen);
                Admission::Probe
            }
        }
    }

    pub(crate) fn record_success(&self) {
        let mut phase = self.lock();
        let was_closed = matches!(*phase, Phase::Closed { .. });
        *phase = Phase::Closed { failures: 0 };
        drop(phase);
        if !was_closed {
            tracing::info!(store = %self.store, node = self.node.as_deref(), "cache store recovered; circuit breaker closed");
            self.transition(BreakerState::Closed);
        }
    }

    pub(crate) fn record_failure(&self) {
        let now = Instant::now();
        let mut phase = self.lock();
        let opens = match *phase {
            Phase::Closed { failures } if failures + 1 >= self.failure_threshold => true,
            Phase::Closed { failures } => {
                *phase = Phase::Closed {
                    failures: failures + 1,
                };
                false
            }
            Phase::HalfOpen { .. } => true,
            // Calls admitted before the breaker opened can still fail; they do not extend it.
            Phase::Open { .. } => false,
        };
        if opens {
            let jitter = self.cool_down.mul_f64(COOL_DOWN_JITTER * fastrand::f64());
            *phase = Phase::Open {
                until: now + self.cool_down - jitter,
            };
            drop(phase);
            tracing::warn!(
                store = %self.store,
                node = self.node.as_deref(),
                cool_down_ms = self.cool_down.as_millis() as u64,
                "cache store failing; circuit breaker open, serving from the source of truth"
            );
            self.transition(BreakerState::Open);
        }
    }

    /// This breaker is no longer used (its node left the cluster): its gauge reads closed
    /// from now on, so no alert stays on for a node that is gone.
    pub(crate) fn retire(&self) {
        self.gauge(BreakerState::Closed);
    }

    fn transition(&self, to: BreakerState) {
        self.gauge(to);
        match &self.node {
            None => metrics::counter!(telemetry::BREAKER_TRANSITIONS, "to" => to.as_str())
                .increment(1),
            Some(node) => metrics::counter!(telemetry::BREAKER_TRANSITIONS, "to" => to.as_str(), "node" => node.clone())
                .increment(1),
        }
    }

    fn gauge(&self, state: BreakerState) {
        match &self.node {
            None => metrics::gauge!(telemetry::BREAKER_STATE).set(state.gauge_value()),
            Some(node) => metrics::gauge!(telemetry::BREAKER_STATE, "node" => node.clone())
                .set(state.gauge_value()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens after the threshold, rejects during the cool-down, probes once, closes on success.
    #[tokio::test(start_paused = true)]
    async fn opens_probes_and_closes() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(5), "test".to_owned());
        for _ in 0..2 {
            assert_eq!(breaker.admit(), Admission::Allowed);
            breaker.record_failure();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit(), Admission::Rejected);

        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(breaker.admit(), Admission::Probe);
        assert_eq!(
            breaker.admit(),
            Admission::Rejected,
            "only one probe at a time"
        );
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.admit(), Admission::Allowed);
    }

    /// A failed probe re-opens the breaker for a full cool-down.
    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let breaker = CircuitBreaker::new(1, Duration::from_secs(2), "test".to_owned());
        breaker.record_failure();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(breaker.admit(), Admission::Probe);
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.admit(), Admission::Rejected);
    }

    /// A probe that never reports back (cancelled) does not wedge the breaker.
    #[tokio::test(start_paused = true)]
    async fn lost_probe_is_replaced() {
        let breaker = CircuitBreaker::new(1, Duration::from_secs(1), "test".to_owned());
        breaker.record_failure();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.admit(), Admission::Probe);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.admit(), Admission::Probe);
    }

    /// A success in between resets the failure count: only consecutive failures open it.
    #[tokio::test(start_paused = true)]
    async fn only_consecutive_failures_count() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(1), "test".to_owned());
        breaker.record_failure();
        breaker.record_success();
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
