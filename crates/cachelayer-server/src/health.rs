//! Health and readiness, as both commands report them: the overall [`Status`], time-boxed
//! checks, Redis as `/health` shows it, `/health/live`, and the one `/health/ready` handler.
//!
//! Every check is time-boxed, so a hung Redis, database or upstream makes `/health` slow by
//! at most [`CHECK_TIMEOUT`], never hang. Each command's `/health` report (what it checks
//! besides Redis) is its own, in its folder. This module must never change what a command
//! checks, nor put a failure's detail (addresses, driver messages) in an answer: that goes
//! to the log.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cachelayer::near::NearState;
use cachelayer::store::StoreKind;
use cachelayer::{BreakerState, Cache};
use futures::future::BoxFuture;
use serde::{Serialize, Serializer};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::listen::Draining;

/// Longest wait for one check.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Everything answers.
    Healthy,
    /// Redis does not answer (or its breaker is open): requests are served from the
    /// database, slower, and writes queue their invalidations.
    Degraded,
    /// The database does not answer: requests fail.
    Unhealthy,
}

impl Status {
    /// The HTTP status `/health` answers with: 503 only when unhealthy.
    pub(crate) fn http_status(self) -> StatusCode {
        match self {
            Status::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
            Status::Healthy | Status::Degraded => StatusCode::OK,
        }
    }
}

/// A string schema of a few words, for fields whose Rust type is not the word itself.
pub(crate) fn one_of_words(words: &[&str]) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(words.iter().copied()))
        .build()
}

fn breaker_states() -> utoipa::openapi::Object {
    one_of_words(&["closed", "half_open", "open"])
}

fn near_states() -> utoipa::openapi::Object {
    one_of_words(&["watching", "blind", "off"])
}

/// Redis as `/health` sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RedisHealth {
    /// Whether a PING was answered within the check timeout.
    pub reachable: bool,
    /// PING round trip, in milliseconds.
    pub latency_ms: Option<f64>,
    /// The circuit breaker: `closed`, `half_open` or `open`.
    #[serde(serialize_with = "breaker_label")]
    #[schema(schema_with = breaker_states)]
    pub breaker: BreakerState,
    /// Multiplexed connections in the pool.
    pub pool_connections: usize,
    /// Why it is unreachable: `error` or `timeout` (the detail is logged).
    pub error: Option<String>,
    /// The near tier: hot entries kept in this process, coherent through Redis.
    pub near: NearHealth,
}

/// The near tier as `/health` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NearHealth {
    /// `watching` (served from memory), `blind` (change tracking lost: emptied and
    /// bypassed until it is back) or `off`.
    #[schema(schema_with = near_states)]
    pub state: NearState,
    /// Entries held.
    pub entries: u64,
    /// Bytes held (keys, stored bytes, bookkeeping).
    pub bytes: u64,
    /// The bound on `bytes`.
    pub capacity_bytes: u64,
}

impl NearHealth {
    fn of(cache: &Cache) -> Self {
        let stats = cache.near_stats();
        Self {
            state: stats.state,
            entries: stats.entries,
            bytes: stats.bytes,
            capacity_bytes: stats.capacity_bytes,
        }
    }
}

/// The breaker's state as `/health` spells it.
fn breaker_label<S: Serializer>(state: &BreakerState, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(state.as_str())
}

/// The name of the cache's store, as `/health` reports it (`redis` or `memory`).
pub(crate) fn store_kind(cache: &Cache) -> StoreKind {
    cache.store().kind()
}

/// Redis, pinged within [`CHECK_TIMEOUT`], when the cache's store is Redis (`None` for the
/// in-process store). `pool_connections` is the configured pool size.
pub(crate) async fn check_redis(cache: &Cache, pool_connections: usize) -> Option<RedisHealth> {
    if store_kind(cache) != StoreKind::Redis {
        return None;
    }
    let ping = timed("redis", async { cache.ping().await.map(drop) }).await;
    Some(RedisHealth {
        reachable: ping.is_ok(),
        latency_ms: ping.as_ref().ok().copied().map(millis),
        breaker: cache.breaker_state(),
        pool_connections,
        error: ping.err(),
        near: NearHealth::of(cache),
    })
}

/// How often Redis is asked again after it did not answer at start.
const START_RETRY_EVERY: Duration = Duration::from_secs(1);

/// Says whether the cache's Redis answers at start, naming it (credentials redacted) and,
/// if not, the error; then, on a task of its own, asks again every second and says so once
/// it answers. Nothing for a store in this process. Later outages are the breaker's to tell.
pub(crate) fn report_redis_at_start(cache: &Cache) {
    let Some(address) = cache.store().address() else {
        return;
    };
    let store = Arc::clone(cache.store());
    tokio::spawn(async move {
        let ping = || tokio::time::timeout(CHECK_TIMEOUT, store.ping());
        match ping().await {
            Ok(Ok(())) => {
                tracing::info!(store = %address, "Redis answers");
                return;
            }
            Ok(Err(err)) => {
                tracing::warn!(store = %address, error = %err, "Redis unreachable at start; serving from the source of truth until it answers")
            }
            Err(_) => {
                tracing::warn!(store = %address, timeout = ?CHECK_TIMEOUT, "Redis did not answer at start; serving from the source of truth until it answers")
            }
        }
        loop {
            tokio::time::sleep(START_RETRY_EVERY).await;
            if matches!(ping().await, Ok(Ok(()))) {
                tracing::info!(store = %address, "Redis answers again");
                return;
            }
        }
    });
}

/// A time-boxed check of `what`: its latency, or a short reason it failed (`error` or
/// `timeout`). The detail (addresses, driver messages) goes to the log, not to whoever can
/// read `/health`.
pub(crate) async fn timed<E: std::fmt::Display>(
    what: &'static str,
    check: impl Future<Output = Result<(), E>>,
) -> Result<Duration, String> {
    timed_as(what, check, |_| "error").await
}

/// [`timed`], its failure told by `cause`: a short phrase safe for whoever reads `/health`
/// (no addresses, no driver messages; those go to the log).
pub(crate) async fn timed_as<E: std::fmt::Display>(
    what: &'static str,
    check: impl Future<Output = Result<(), E>>,
    cause: impl FnOnce(&E) -> &'static str,
) -> Result<Duration, String> {
    let started = Instant::now();
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(err)) => {
            tracing::warn!(check = what, error = %err, "health check failed");
            Err(cause(&err).to_owned())
        }
        Err(_) => {
            tracing::warn!(check = what, timeout = ?CHECK_TIMEOUT, "health check timed out");
            Err("timeout".to_owned())
        }
    }
}

/// A duration in (fractional) milliseconds, as `/health` reports latencies.
pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The body of `/health/live`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({ "status": "live" }))]
pub(crate) struct Live {
    /// Always `live`.
    #[schema(pattern = "^live$")]
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "The process is up", body = Live)))]
pub(crate) async fn live() -> Json<Live> {
    Json(Live { status: "live" })
}

/// A check readiness needs to pass, by name (the name is the log's `check` field).
type Requirement = (
    &'static str,
    Arc<dyn Fn() -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>,
);

/// Any error a readiness requirement reports (logged, never answered).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What `/health/ready` looks at: whether the instance is draining, and the one dependency
/// without which it cannot answer, if any (serve's database; the proxy requires none, as
/// an unreachable upstream is answered with 502s, not by taking the instance out).
#[derive(Clone)]
pub(crate) struct Readiness {
    draining: Draining,
    requires: Option<Requirement>,
}

impl Readiness {
    /// Ready until `draining` is set.
    pub(crate) fn new(draining: Draining) -> Self {
        Self {
            draining,
            requires: None,
        }
    }

    /// Also not ready while `check` fails or times out.
    pub(crate) fn requiring<F>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync + 'static,
    {
        self.requires = Some((name, Arc::new(check)));
        self
    }
}

/// Whether an instance takes traffic, as `/health/ready` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ReadyStatus {
    /// Ready to serve.
    Ready,
    /// Draining before exit.
    ShuttingDown,
    /// A requirement (the database) fails or does not answer.
    NotReady,
}

/// The body of `/health/ready`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({ "status": "not_ready", "error": "timeout" }))]
pub(crate) struct Ready {
    pub(crate) status: ReadyStatus,
    /// With `not_ready`: how the requirement failed (`timeout` or `error`; the detail is
    /// in the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl Ready {
    fn answer(self) -> Response {
        let status = match self.status {
            ReadyStatus::Ready => StatusCode::OK,
            ReadyStatus::ShuttingDown | ReadyStatus::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(self)).into_response()
    }
}

// The doc line below is the route's description in serve's OpenAPI document (the proxy,
// which has none, requires nothing but not draining).
/// Readiness: not shutting down, and the database answers (Redis is not required).
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = Ready,
            example = json!({ "status": "ready" })),
        (status = 503, description = "Shutting down, or the database does not answer", body = Ready,
            example = json!({ "status": "shutting_down" })),
    ))]
pub(crate) async fn ready(State(readiness): State<Readiness>) -> Response {
    let (status, error) = if readiness.draining.is_draining() {
        (ReadyStatus::ShuttingDown, None)
    } else if let Some((name, check)) = &readiness.requires {
        match timed(name, check()).await {
            Ok(_) => (ReadyStatus::Ready, None),
            Err(error) => (ReadyStatus::NotReady, Some(error)),
        }
    } else {
        (ReadyStatus::Ready, None)
    };
    Ready { status, error }.answer()
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use futures::FutureExt;

    use super::*;

    async fn answer(readiness: Readiness) -> (StatusCode, serde_json::Value) {
        let response = ready(State(readiness)).await;
        let status = response.status();
        let body = to_bytes(response.into_body(), 1024).await.expect("body");
        (status, serde_json::from_slice(&body).expect("json"))
    }

    /// Without a requirement, ready until draining begins; then 503 `shutting_down`.
    #[tokio::test]
    async fn ready_until_draining() {
        let draining = Draining::default();
        let readiness = Readiness::new(draining.clone());
        let (status, body) = answer(readiness.clone()).await;
        assert_eq!((status, &body["status"]), (StatusCode::OK, &"ready".into()));
        draining.begin_for_test();
        let (status, body) = answer(readiness).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "shutting_down");
    }

    /// A failing requirement is 503 `not_ready` with the short reason, never its detail.
    #[tokio::test]
    async fn a_failing_requirement_is_not_ready() {
        let readiness = Readiness::new(Draining::default()).requiring("database", || {
            async { Err(BoxError::from("connection refused at 10.0.0.7")) }.boxed()
        });
        let (status, body) = answer(readiness).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            serde_json::json!({ "status": "not_ready", "error": "error" })
        );
    }

    /// The breaker is spelt as before the enum: `closed`, `half_open`, `open`.
    #[test]
    fn redis_health_spells_the_breaker_as_a_word() {
        let health = RedisHealth {
            reachable: false,
            latency_ms: None,
            breaker: BreakerState::HalfOpen,
            pool_connections: 4,
            error: Some("timeout".to_owned()),
            near: NearHealth {
                state: NearState::Blind,
                entries: 0,
                bytes: 0,
                capacity_bytes: 1024,
            },
        };
        let json = serde_json::to_value(&health).expect("json");
        assert_eq!(json["breaker"], "half_open");
        assert_eq!(json["near"]["state"], "blind");
        assert_eq!(Status::Degraded.http_status(), StatusCode::OK);
        assert_eq!(
            Status::Unhealthy.http_status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
