//! Health: `/health` for people and monitors (the state of Redis, the database and the
//! cache), `/health/live` and `/health/ready` for orchestrators.
//!
//! Every check is time-boxed, so a hung Redis or database makes `/health` slow by at most
//! [`CHECK_TIMEOUT`], never hang. Redis down is `degraded` (requests are still served from
//! the database) and answers 200; only a database that does not answer is `unhealthy` (503).
//! This module must never change what it checks.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::observe::CacheStats;

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

/// The body of `/health`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// Overall state; HTTP 200 for healthy and degraded, 503 for unhealthy.
    pub status: Status,
    /// The server's version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// The cache store and its statistics.
    pub cache: CacheHealth,
    /// The database.
    pub database: DatabaseHealth,
}

/// The cache part of `/health`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CacheHealth {
    /// `redis`, or `memory` (the in-process store, local to this instance).
    pub store: &'static str,
    /// Redis, when the store is Redis.
    pub redis: Option<RedisHealth>,
    /// Read outcomes in this instance since start.
    pub stats: CacheStats,
    /// Writes whose invalidation failed and is being retried.
    pub invalidations_pending: bool,
}

/// Redis as `/health` sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RedisHealth {
    /// Whether a PING was answered within the check timeout.
    pub reachable: bool,
    /// PING round trip, in milliseconds.
    pub latency_ms: Option<f64>,
    /// The circuit breaker: `closed`, `half_open` or `open`.
    pub breaker: &'static str,
    /// Multiplexed connections in the pool.
    pub pool_connections: usize,
    /// Why it is unreachable: `error` or `timeout` (the detail is logged).
    pub error: Option<String>,
}

/// The database as `/health` sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DatabaseHealth {
    /// `sqlite` or `postgres`.
    pub kind: &'static str,
    /// Whether a trivial query was answered within the check timeout.
    pub reachable: bool,
    /// That query's time, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Why it is unreachable: `error` or `timeout` (the detail is logged).
    pub error: Option<String>,
}

/// A time-boxed check of `what`: its latency, or a short reason it failed (`error` or
/// `timeout`). The detail (addresses, driver messages) goes to the log, not to whoever can
/// read `/health`.
pub(crate) async fn timed<E: std::fmt::Display>(
    what: &'static str,
    check: impl Future<Output = Result<(), E>>,
) -> Result<Duration, String> {
    let started = Instant::now();
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(err)) => {
            tracing::warn!(check = what, error = %err, "health check failed");
            Err("error".to_owned())
        }
        Err(_) => {
            tracing::warn!(check = what, timeout = ?CHECK_TIMEOUT, "health check timed out");
            Err("timeout".to_owned())
        }
    }
}

pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Full health report.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses(
        (status = 200, description = "Healthy or degraded", body = Health),
        (status = 503, description = "Unhealthy: the database does not answer", body = Health),
    )
)]
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let catalogue = &state.catalogue;
    let cache = catalogue.cache();
    let db = catalogue.db();
    let uses_redis = cache.store().kind() == "redis";
    let (redis, database) = tokio::join!(
        async {
            if uses_redis {
                Some(timed("redis", async { cache.ping().await.map(drop) }).await)
            } else {
                None
            }
        },
        timed("database", db.ping())
    );
    let redis = redis.map(|ping| RedisHealth {
        reachable: ping.is_ok(),
        latency_ms: ping.as_ref().ok().copied().map(millis),
        breaker: cache.breaker_state().as_str(),
        pool_connections: state.redis_pool_size,
        error: ping.err(),
    });
    let status = if database.is_err() {
        Status::Unhealthy
    } else if redis
        .as_ref()
        .is_some_and(|r| !r.reachable || r.breaker == "open")
    {
        Status::Degraded
    } else {
        Status::Healthy
    };
    let body = Health {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        cache: CacheHealth {
            store: cache.store().kind(),
            redis,
            stats: state.outcomes.stats(),
            invalidations_pending: catalogue.invalidations_pending(),
        },
        database: DatabaseHealth {
            kind: db.kind(),
            reachable: database.is_ok(),
            latency_ms: database.as_ref().ok().copied().map(millis),
            error: database.err(),
        },
    };
    let code = match status {
        Status::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        Status::Healthy | Status::Degraded => StatusCode::OK,
    };
    (code, Json(body)).into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "The process is up")))]
pub(crate) async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "live" }))
}

/// Readiness: not shutting down, and the database answers (Redis is not required).
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Ready to serve"),
        (status = 503, description = "Shutting down, or the database does not answer"),
    ))]
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        let body = serde_json::json!({ "status": "shutting_down" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    match timed("database", state.catalogue.db().ping()).await {
        Ok(_) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(error) => {
            let body = serde_json::json!({ "status": "not_ready", "error": error });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}
