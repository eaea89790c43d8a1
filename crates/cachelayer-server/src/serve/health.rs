//! `GET /health` of `cachelayer serve`, for people and monitors: the state of the database,
//! of Redis and of the cache.
//!
//! Redis down is `degraded` (requests are still served from the database) and answers 200;
//! only a database that does not answer is `unhealthy` (503). Checks run concurrently, each
//! time-boxed by the shared health checks. This module must never change what it checks.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cachelayer::BreakerState;
use cachelayer::store::StoreKind;
use serde::Serialize;
use utoipa::ToSchema;

use super::state::AppState;
use crate::health::{RedisHealth, Status, check_redis, millis, store_kind, timed};
use crate::observe::CacheStats;

/// The body of `/health`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "status": "degraded", "version": "0.1.0", "uptime_seconds": 3600.5,
    "cache": {
        "store": "redis",
        "redis": {
            "reachable": false, "latency_ms": null, "breaker": "open", "pool_connections": 4,
            "error": "timeout",
            "near": { "state": "blind", "entries": 0, "bytes": 0, "capacity_bytes": 67108864 }
        },
        "stats": { "hits": 9120, "stale": 3, "misses": 880, "bypasses": 12, "hit_ratio": 0.912 },
        "invalidations_pending": true
    },
    "database": { "kind": "sqlite", "reachable": true, "latency_ms": 0.21, "error": null }
}))]
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
    #[schema(schema_with = store_kinds)]
    pub store: StoreKind,
    /// Redis, when the store is Redis.
    pub redis: Option<RedisHealth>,
    /// Read outcomes in this instance since start.
    pub stats: CacheStats,
    /// Writes whose invalidation failed and is being retried.
    pub invalidations_pending: bool,
}

/// The database as `/health` sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DatabaseHealth {
    /// `sqlite` or `postgres`.
    #[schema(schema_with = database_kinds)]
    pub kind: &'static str,
    /// Whether a trivial query was answered within the check timeout.
    pub reachable: bool,
    /// That query's time, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Why it is unreachable: `error` or `timeout` (the detail is logged).
    pub error: Option<String>,
}

fn store_kinds() -> utoipa::openapi::Object {
    crate::health::one_of_words(&["redis", "memory"])
}

fn database_kinds() -> utoipa::openapi::Object {
    crate::health::one_of_words(&["sqlite", "postgres"])
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
    let (redis, database) = tokio::join!(
        check_redis(cache, state.redis_pool_size),
        timed("database", db.ping())
    );
    let status = if database.is_err() {
        Status::Unhealthy
    } else if redis
        .as_ref()
        .is_some_and(|r| !r.reachable || r.breaker != BreakerState::Closed)
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
            store: store_kind(cache),
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
    (status.http_status(), Json(body)).into_response()
}
