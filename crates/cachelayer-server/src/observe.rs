//! Observing each request: a middleware both commands put outermost that records a count
//! and a latency by route and status, counts cache outcomes by `X-Cache` (for `/health`),
//! and writes one structured log line per request.
//!
//! Labels use the matched route (`/products/{id}`), never the raw path, so a client cannot
//! create unbounded metric series. This module must never change a response.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use cachelayer::http::status::X_CACHE;

use crate::metrics::GaugeUnit;
use metrics::{Counter, Gauge, Histogram};
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;

/// Counter of requests, by `method`, `route` and `status`.
pub const HTTP_REQUESTS: &str = "cachelayer_http_requests_total";
/// Histogram of request latency in seconds, by `method`, `route` and `status`.
pub const HTTP_DURATION: &str = "cachelayer_http_request_duration_seconds";

/// Gauge of requests being answered right now.
pub const HTTP_IN_FLIGHT: &str = "cachelayer_http_requests_in_flight";

/// Cache outcomes of reads answered by this instance, by `X-Cache`.
#[derive(Debug, Default)]
pub(crate) struct CacheOutcomes {
    hits: AtomicU64,
    stale: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
}

/// [`CacheOutcomes`] as `/health` reports them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CacheStats {
    /// Reads answered from a fresh cached value.
    pub hits: u64,
    /// Reads answered from a stale cached value.
    pub stale: u64,
    /// Reads that went to the source (the database, or the proxy's upstream).
    pub misses: u64,
    /// Reads that did not use the cache.
    pub bypasses: u64,
    /// (hits + stale) / (hits + stale + misses); null before any cacheable read.
    pub hit_ratio: Option<f64>,
}

impl CacheOutcomes {
    fn record(&self, x_cache: &[u8]) {
        let counter = match x_cache {
            b"HIT" => &self.hits,
            b"STALE" => &self.stale,
            b"MISS" => &self.misses,
            b"BYPASS" => &self.bypasses,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let hits = self.hits.load(Ordering::Relaxed);
        let stale = self.stale.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let served = hits + stale;
        let total = served + misses;
        CacheStats {
            hits,
            stale,
            misses,
            bypasses: self.bypasses.load(Ordering::Relaxed),
            hit_ratio: (total > 0).then(|| served as f64 / total as f64),
        }
    }
}

/// The method as a metric label: the standard ones by name, any other token (clients may
/// send anything) as `other`, so labels stay bounded.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// What the per-request middleware records into.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    pub(crate) outcomes: Arc<CacheOutcomes>,
    /// The `route` label of requests no route matched (the proxy's are all of them).
    pub(crate) unmatched: &'static str,
    /// Metric handles by method and status, then route: registering a labelled series
    /// builds and hashes its key, which showed in the profile; a handle is reused.
    pub(crate) series: Arc<Mutex<SeriesHandles>>,
    /// The in-flight gauge, resolved once (the recorder is installed before any listener).
    in_flight: Gauge,
}

impl Observed {
    pub(crate) fn new(outcomes: Arc<CacheOutcomes>, unmatched: &'static str) -> Self {
        Self {
            outcomes,
            unmatched,
            series: Arc::default(),
            in_flight: metrics::gauge!(HTTP_IN_FLIGHT),
        }
    }

    fn series(&self, method: &'static str, status: u16, route: &str) -> (Counter, Histogram) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let by_route = series.entry((method, status)).or_default();
        if let Some(handles) = by_route.get(route) {
            return handles.clone();
        }
        let labels = [
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ];
        let handles = (
            metrics::counter!(HTTP_REQUESTS, &labels),
            metrics::histogram!(HTTP_DURATION, &labels),
        );
        by_route.insert(route.to_owned(), handles.clone());
        handles
    }
}

/// Counter and histogram handles of each (method, status) and route.
pub(crate) type SeriesHandles = HashMap<(&'static str, u16), HashMap<String, (Counter, Histogram)>>;

/// The per-request middleware of a router: metrics, cache outcome, one log line.
pub(crate) async fn observe(
    State(state): State<Observed>,
    request: Request,
    next: Next,
) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched
        .as_ref()
        .map_or(state.unmatched, MatchedPath::as_str);
    observed(&state, route, request, |request| next.run(request)).await
}

/// A request answered by `answer`, observed under `route`: metrics, cache outcome, one log
/// line.
pub(crate) async fn observed<F, Fut>(
    state: &Observed,
    route: &str,
    request: Request,
    answer: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let started = Instant::now();
    // Counted until dropped, also when the client goes away mid-request.
    let _in_flight = GaugeUnit::enter(&state.in_flight);
    let method = method_label(request.method());
    // Copied only when the line is written: this runs on every hit.
    let logged = tracing::enabled!(target: "cachelayer::request", tracing::Level::INFO);
    let path = logged.then(|| request.uri().path().to_owned());
    let response = answer(request).await;
    let elapsed = started.elapsed();
    let (requests, duration) = state.series(method, response.status().as_u16(), route);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
    let cache = response.headers().get(X_CACHE).map(|v| v.as_bytes());
    if let Some(cache) = cache {
        state.outcomes.record(cache);
    }
    tracing::info!(
        target: "cachelayer::request",
        method,
        path = path.as_deref().unwrap_or_default(),
        route,
        status = response.status().as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        cache = cache.and_then(|v| std::str::from_utf8(v).ok()).unwrap_or("-"),
        "request"
    );
    response
}
