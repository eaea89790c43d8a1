//! `cachelayer proxy`: the HTTP cache layer in front of any existing API, as a reverse proxy.
//! This file runs it: the cache, the two listeners (bound before anything else starts), and
//! what is cleaned up after the shared drain (`crate::listen`).
//!
//! Two listeners: clients on `--listen`, where every request goes through the cache (or a
//! rule's bypass) to the upstream (`dispatch`, `forward`); and operators on `--admin-listen`
//! (`admin_listener`), so they never collide with the upstream's paths. Cache behaviour is
//! the upstream's `Cache-Control` (RFC 9111, as the layer implements it), with per-path
//! default TTLs and bypasses from a rules file (`rules`). Instances sharing one Redis and one
//! key scope (by default, one upstream) share one cache: one upstream call per key across
//! them, and purges reach all of them; instances for other upstreams never see their
//! entries. This module must never answer a client with an error of its own making when the
//! upstream answered, and nothing in `proxy` may import `serve`.
//!
//! Dependencies point one way: `mod.rs` → `admin_listener` → `health` → `forward` →
//! `config` → `rules`; `dispatch` → `forward`, `config`, `rules`.

mod admin_listener;
mod config;
mod dispatch;
mod forward;
#[cfg(test)]
mod fuzz;
mod health;
mod rules;

use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use tokio::time::Instant;

use self::admin_listener::AdminApp;
use self::config::{ADMIN_LISTEN_FLAG, LISTEN_FLAG};
pub use self::config::{HostMode, ProxyArgs, ProxyConfig};
use self::dispatch::{Clients, Dispatch};
use self::forward::Forwarder;
pub(crate) use self::forward::{
    UPSTREAM_BODY_TIMEOUTS, UPSTREAM_IN_FLIGHT, UPSTREAM_QUEUED, UPSTREAM_REJECTED,
    UPSTREAM_RETRIES,
};
use self::health::ProxyHealth;
pub use self::rules::{Case, Rule, RuleAction};
use crate::admin::AdminState;
use crate::error::Error;
use crate::health::{CHECK_TIMEOUT, Readiness};
use crate::listen::{
    Draining, Listener, bind, raise_open_file_limit, serve_until, shutdown_signal,
};
use crate::metrics::{prometheus, run_upkeep};
use crate::observe::{CacheOutcomes, Observed, observe};

/// Largest admin request body, in bytes.
const ADMIN_MAX_BODY_BYTES: usize = 64 * 1024;
/// Connections the admin listener holds at once: operators and scrapers need few, and its
/// descriptors come out of the same open-file limit as the clients'.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Run the proxy until SIGTERM or SIGINT, then drain both listeners.
pub async fn run(config: ProxyConfig) -> Result<(), Error> {
    let metrics = prometheus();
    tracing::info!(config = ?config, "starting cachelayer proxy");
    // The flags were checked before the runtime started (`crate::cli`); both ports are taken
    // before anything else starts (the cache's Redis connections, the upstream's pool).
    let (socket, address) = bind(config.listen, LISTEN_FLAG).await?;
    let (admin_socket, admin_address) = bind(config.admin_listen, ADMIN_LISTEN_FLAG).await?;
    let cache = config
        .cache
        .build()
        .map_err(|err| Error::config("cache settings", err.to_string()))?;
    if config.cache.redis_url.is_none() {
        tracing::info!("no Redis URL: the cache is local to this process");
    }
    crate::health::report_redis_at_start(&cache);
    let lock_max_wait = config.cache.lock_max_wait;
    if config.cache.lock && lock_max_wait < config.upstream_timeout {
        // Waiters give up on an upstream call slower than this and make their own.
        tracing::warn!(
            ?lock_max_wait,
            upstream_timeout = ?config.upstream_timeout,
            "--lock-max-wait is shorter than --upstream-timeout: requests waiting on a slower upstream call make their own"
        );
    }
    let forwarder = Forwarder::new(&config);
    let (dispatch, layer) = Dispatch::new(&config, &cache, &forwarder);
    let outcomes = Arc::new(CacheOutcomes::default());
    let draining = Draining::default();
    // No router: every client request goes the same way (rules choose by path prefix).
    let clients = Clients {
        dispatch,
        observed: Observed::new(Arc::clone(&outcomes), "proxy"),
    };
    let operators = admin_listener::router(AdminApp {
        admin: AdminState {
            token: config.admin_token.as_ref().map(|t| Arc::from(t.expose())),
            max_body_bytes: ADMIN_MAX_BODY_BYTES,
            cache: cache.clone(),
            layer,
            // This listener's own Host is no client's: purges must name the host.
            bare_paths: false,
        },
        health: ProxyHealth {
            cache,
            forwarder,
            outcomes: Arc::clone(&outcomes),
            started: Instant::now(),
            redis_pool_size: config.cache.redis_pool_size,
        },
        readiness: Readiness::new(draining.clone()),
        prometheus: metrics.clone(),
    })
    .layer(from_fn_with_state(
        Observed::new(outcomes, "admin-unmatched"),
        observe,
    ));
    let upkeep = tokio::spawn(run_upkeep(metrics));
    let limits = config.limits.within_open_files(raise_open_file_limit());
    let listeners = vec![
        Listener {
            socket,
            name: "clients",
            app: Box::new(clients),
            limits,
            drain_within: config.shutdown_timeout,
        },
        // Operators' requests are short: the checks' own bound is enough.
        Listener {
            socket: admin_socket,
            name: "admin",
            app: Box::new(operators),
            limits: limits.with_max_connections(ADMIN_MAX_CONNECTIONS),
            drain_within: CHECK_TIMEOUT,
        },
    ];
    let listening = || tracing::info!(address = %address, admin = %admin_address, upstream = %config.upstream, "listening");
    let shutdown = shutdown_signal();
    serve_until(
        listeners,
        &draining,
        config.shutdown_timeout,
        listening,
        shutdown,
    )
    .await;
    upkeep.abort();
    tracing::info!("stopped");
    Ok(())
}
