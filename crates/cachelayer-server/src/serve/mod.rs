//! `cachelayer serve`: a product catalogue API over a real SQL database, cached end to end.
//! This file runs it: the database, the cache, the listener, background tasks, and what is
//! cleaned up after the shared drain (`crate::listen`).
//!
//! Start-up never needs Redis (the cache connects lazily and fails open); it needs the
//! database, and says so if it cannot reach it. The flags are checked and the port taken
//! before the database is opened, so a refused start leaves no database created, migrated
//! or seeded. Shutdown stops accepting, marks the instance not ready, drains in-flight
//! requests within the timeout, makes a last attempt at pending invalidations, and closes
//! the database pool. This module must never exit silently: every way out is logged; it
//! must never touch the database before the port is taken; and nothing in `serve` may
//! import `proxy`.
//!
//! Dependencies point one way: `mod.rs` → `app` (routes) → `api` / `health` / `openapi`
//! (with `schema`, the request schemas built from `product`'s rules) → `state` →
//! `catalogue` (cache, invalidation, and `precondition`s of writes) → `db` (SQL) →
//! `product` (the resource and its validation); `config` holds the flags.

mod api;
mod app;
mod catalogue;
mod config;
mod db;
mod health;
mod openapi;
mod precondition;
mod product;
mod schema;
mod state;

use std::sync::Arc;
use std::time::Duration;

use cachelayer::Cache;
use cachelayer::http::ResponseCacheLayer;
use tokio::time::Instant;

use self::app::router;
pub use self::catalogue::INVALIDATION_FAILURES;
use self::catalogue::{Catalogue, RETRY_EVERY};
use self::config::LISTEN_FLAG;
pub use self::config::{DEFAULT_DATABASE_URL, ServeArgs, ServeConfig};
pub use self::db::DB_QUERIES;
use self::db::Database;
pub use self::openapi::ApiDoc;
use self::state::{AppContext, AppState};
use crate::error::Error;
use crate::listen::{
    Draining, Listener, bind, raise_open_file_limit, serve_until, shutdown_signal,
};
use crate::metrics::{prometheus, run_upkeep};
use crate::observe::CacheOutcomes;

/// How long closing the database pool may take at exit.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The key scope of the cached list pages: fixed, so every `serve` instance on one Redis
/// shares them, and never a proxy's default scope (an upstream's `http://host:port`), so a
/// proxy on the same Redis never serves them nor they its entries.
const SERVE_KEY_SCOPE: &str = "cachelayer-serve";

/// Run the catalogue API until SIGTERM or SIGINT, then shut down gracefully.
pub async fn run(config: ServeConfig) -> Result<(), Error> {
    let metrics = prometheus();
    tracing::info!(config = ?config, "starting cachelayer serve");
    // The flags were checked before the runtime started (`crate::cli`); what is left that
    // can refuse to start comes before the database too.
    let (socket, address) = bind(config.listen, LISTEN_FLAG).await?;
    let cache = open_cache(&config)?;
    let catalogue = open_catalogue(&config, cache).await?;
    let draining = Draining::default();
    let state = AppState::new(AppContext {
        catalogue: catalogue.clone(),
        max_body_bytes: config.max_body_bytes,
        admin_token: config.admin_token.as_ref().map(|t| Arc::from(t.expose())),
        started: Instant::now(),
        draining: draining.clone(),
        outcomes: Arc::new(CacheOutcomes::default()),
        redis_pool_size: config.cache.redis_pool_size,
        prometheus: metrics.clone(),
        cache_lists: !config.cache_ttl.is_zero() && !config.list_ttl.is_zero(),
    });
    if state.admin_token.is_none() {
        tracing::info!("no admin token: the admin routes are off");
    }
    let background = [
        tokio::spawn(run_upkeep(metrics)),
        tokio::spawn(retry_invalidations(catalogue.clone())),
    ];
    let listener = Listener {
        socket,
        name: "api",
        app: Box::new(router(state)),
        limits: config.limits.within_open_files(raise_open_file_limit()),
        drain_within: config.shutdown_timeout,
    };
    let listening = || tracing::info!(address = %address, "listening");
    let shutdown = shutdown_signal();
    serve_until(
        vec![listener],
        &draining,
        config.shutdown_timeout,
        listening,
        shutdown,
    )
    .await;
    for task in background {
        task.abort();
    }
    close(&catalogue).await;
    tracing::info!("stopped");
    Ok(())
}

/// The cache. Building it never waits on Redis, which may be down at start; a background
/// check logs whether it answers.
fn open_cache(config: &ServeConfig) -> Result<Cache, Error> {
    let cache = config
        .cache
        .build()
        .map_err(|err| Error::config("cache settings", err.to_string()))?;
    if config.cache.redis_url.is_none() {
        tracing::info!(
            "no Redis URL: the cache is local to this process; other instances neither share it nor see its invalidations"
        );
    }
    crate::health::report_redis_at_start(&cache);
    Ok(cache)
}

/// The database (migrated and seeded) and the cache, as the catalogue.
async fn open_catalogue(config: &ServeConfig, cache: Cache) -> Result<Catalogue, Error> {
    let db = Database::open(&config.database_url, config.db_pool_size).await?;
    let seeded = db.seed(config.seed).await?;
    tracing::info!(database = db.kind(), seeded, "database ready");
    let mut lists = ResponseCacheLayer::new(cache.clone())
        .key_scope(SERVE_KEY_SCOPE)
        .key_host_port(config.key_host_port)
        .default_ttl(Some(config.list_ttl));
    if !config.allowed_hosts.is_empty() {
        lists = lists.allowed_hosts(config.allowed_hosts.iter().cloned());
    }
    Ok(Catalogue::new(db, cache, lists, config.cache_ttl))
}

/// A last attempt at pending invalidations, then the database pool, each bounded.
async fn close(catalogue: &Catalogue) {
    if catalogue.retry_pending().await {
        tracing::warn!(
            "some invalidations could not be delivered before exit; entries may be stale until their TTL"
        );
    }
    // Requests still running past the drain deadline hold connections; do not wait on them
    // for ever (the runtime drops them when `run` returns).
    if tokio::time::timeout(CLOSE_TIMEOUT, catalogue.db().close())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?CLOSE_TIMEOUT, "database connections still in use at exit");
    }
}

/// Retry failed invalidations until they succeed.
async fn retry_invalidations(catalogue: Catalogue) {
    let mut tick = tokio::time::interval(RETRY_EVERY);
    // A pass can outlast the period (it waits for loads to release their locks): no bursts.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if catalogue.invalidations_pending() {
            catalogue.retry_pending().await;
        }
    }
}
