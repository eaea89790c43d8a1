//! Metrics: the process-wide Prometheus recorder, the `/metrics` route both commands serve,
//! and the upkeep that keeps its histograms bounded.
//!
//! What is recorded is decided where it happens (requests in [`crate::observe`], queries
//! and invalidations in `serve`, the cache in the library); this module must never define a
//! series of its own, nor fail start-up because another recorder is installed.

use std::borrow::Borrow;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use cachelayer::telemetry::{MetricKind, describe_metric};
use metrics::Gauge;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: fine below 10 ms, where cache hits are.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often the recorder's upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder (the `metrics` facade has one global recorder),
/// installed on first use.
pub(crate) fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)
                .expect("the bucket list is not empty");
            match builder.install_recorder() {
                Ok(handle) => {
                    describe_metrics();
                    handle
                }
                Err(err) => {
                    // Another recorder is installed (an embedding program's): render ours
                    // empty rather than fail to start.
                    tracing::warn!(error = %err, "a metrics recorder is already installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// The metrics the binary records itself, and what `# HELP` says of each (the library's
/// describe themselves: [`cachelayer::telemetry::describe_metrics`]).
const DESCRIBED: [(&str, MetricKind, &str); 13] = [
    (
        crate::observe::HTTP_REQUESTS,
        MetricKind::Counter,
        "requests answered, by method, route, status and cache outcome",
    ),
    (
        crate::observe::HTTP_DURATION,
        MetricKind::Histogram,
        "request latency in seconds, by method, route and status",
    ),
    (
        crate::observe::HTTP_IN_FLIGHT,
        MetricKind::Gauge,
        "requests being answered right now",
    ),
    (
        crate::listen::CONNECTIONS_OPEN,
        MetricKind::Gauge,
        "client connections open, by listener",
    ),
    (
        crate::listen::CONNECTION_LIMIT_REACHED,
        MetricKind::Counter,
        "times a listener reached --max-connections and stopped accepting, by listener",
    ),
    (
        crate::listen::CONNECTIONS_TIMED_OUT,
        MetricKind::Counter,
        "connections and request bodies cut by a deadline, by listener and reason",
    ),
    (
        crate::serve::DB_QUERIES,
        MetricKind::Counter,
        "database statements run, by query",
    ),
    (
        crate::serve::INVALIDATION_FAILURES,
        MetricKind::Counter,
        "invalidations that failed and were queued for retry, by what",
    ),
    (
        crate::proxy::UPSTREAM_RETRIES,
        MetricKind::Counter,
        "upstream requests sent a second time after their connection failed, by reason",
    ),
    (
        crate::proxy::UPSTREAM_BODY_TIMEOUTS,
        MetricKind::Counter,
        "upstream response bodies cut after --upstream-body-timeout without data",
    ),
    (
        crate::proxy::UPSTREAM_IN_FLIGHT,
        MetricKind::Gauge,
        "requests the upstream is answering right now",
    ),
    (
        crate::proxy::UPSTREAM_QUEUED,
        MetricKind::Gauge,
        "requests waiting for a place under --upstream-max-concurrency",
    ),
    (
        crate::proxy::UPSTREAM_REJECTED,
        MetricKind::Counter,
        "requests answered 503 because no upstream place freed up in time",
    ),
];

/// Describes every metric, the library's and the binary's, to the installed recorder.
fn describe_metrics() {
    cachelayer::telemetry::describe_metrics();
    for (name, kind, help) in DESCRIBED {
        describe_metric(name, kind, help);
    }
}

/// `GET /metrics`: the recorder's series in the Prometheus text format.
pub(crate) async fn metrics(State(handle): State<PrometheusHandle>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4");
    ([(header::CONTENT_TYPE, content_type)], handle.render()).into_response()
}

/// Keeps the recorder's histograms from growing without bound (the exporter's upkeep).
pub(crate) async fn run_upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// One unit of a gauge, given back when dropped (also when what it counts is cancelled).
/// Borrowing the gauge where the guard lives no longer than it (a request in the
/// middleware), owning a handle where it travels (inside a response body).
#[derive(Debug)]
pub(crate) struct GaugeUnit<G: Borrow<Gauge>>(G);

impl<G: Borrow<Gauge>> GaugeUnit<G> {
    /// Count one more in `gauge` until dropped.
    pub(crate) fn enter(gauge: G) -> Self {
        gauge.borrow().increment(1.0);
        Self(gauge)
    }
}

impl<G: Borrow<Gauge>> Drop for GaugeUnit<G> {
    fn drop(&mut self) {
        self.0.borrow().decrement(1.0);
    }
}
