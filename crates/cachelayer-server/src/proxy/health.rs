//! `GET /health` of `cachelayer proxy`, on the admin listener: `unhealthy` (503) when the
//! upstream cannot be connected to (saying why: refused, timed out, unreachable), `degraded` when Redis is unreachable or its breaker is
//! open (the proxy then forwards every request), else `healthy`.
//!
//! Checks run concurrently, each time-boxed by the shared health checks. This module must
//! never send the upstream a request: a TCP connect is the check.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cachelayer::{BreakerState, Cache};
use tokio::time::Instant;

use super::forward::Forwarder;
use crate::health::{Status, check_redis, millis, store_kind, timed_as};
use crate::observe::CacheOutcomes;

/// What the proxy's `/health` looks at.
#[derive(Clone)]
pub(crate) struct ProxyHealth {
    pub(crate) cache: Cache,
    pub(crate) forwarder: Forwarder,
    pub(crate) outcomes: Arc<CacheOutcomes>,
    pub(crate) started: Instant,
    pub(crate) redis_pool_size: usize,
}

/// The proxy's health report.
pub(crate) async fn health(State(probe): State<ProxyHealth>) -> Response {
    let authority = probe.forwarder.connect_address();
    let (redis, upstream) = tokio::join!(
        check_redis(&probe.cache, probe.redis_pool_size),
        timed_as(
            "upstream",
            async {
                tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map(drop)
            },
            connect_failure,
        )
    );
    let breaker = probe.cache.breaker_state();
    let status = match (&upstream, &redis) {
        (Err(_), _) => Status::Unhealthy,
        (Ok(_), Some(redis)) if !redis.reachable => Status::Degraded,
        (Ok(_), _) if breaker != BreakerState::Closed => Status::Degraded,
        _ => Status::Healthy,
    };
    let body = serde_json::json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": probe.started.elapsed().as_secs_f64(),
        "upstream": {
            "address": authority,
            "reachable": upstream.is_ok(),
            "connect_ms": upstream.as_ref().ok().copied().map(millis),
            "error": upstream.as_ref().err(),
        },
        "cache": {
            "store": store_kind(&probe.cache),
            "redis": redis,
            "stats": probe.outcomes.stats(),
        },
    });
    (status.http_status(), axum::Json(body)).into_response()
}

/// Why the upstream could not be connected to, as `/health` says it: the report already
/// names the address, so the kind of failure is enough to act on.
fn connect_failure(err: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionRefused => "connection refused",
        ErrorKind::TimedOut => "connect timed out",
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => "unreachable",
        ErrorKind::AddrNotAvailable => "address not available",
        ErrorKind::PermissionDenied => "connect not permitted",
        _ => "connect failed",
    }
}
