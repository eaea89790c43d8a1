//! Running `serve`: logging, the database, the cache, the listener, background tasks, and
//! the graceful shutdown that ends them in order.
//!
//! Start-up never needs Redis (the cache connects lazily and fails open); it needs the
//! database, and says so if it cannot reach it. Shutdown stops accepting, marks the instance
//! not ready, drains in-flight requests within the timeout, makes a last attempt at pending
//! invalidations, and closes the database pool. This module must never exit silently:
//! every way out is logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cachelayer::http::ResponseCacheLayer;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

use crate::app::{AppState, Shared, router};
use crate::catalogue::{Catalogue, RETRY_EVERY};
use crate::config::{LogFormat, ServeConfig};
use crate::db::Database;
use crate::error::Error;
use crate::observe::{CacheOutcomes, prometheus, run_upkeep};

/// Install the log subscriber (stdout; text or one JSON object per line).
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), Error> {
    let filter = EnvFilter::try_new(filter).map_err(|err| {
        Error::config(
            "--log (CACHELAYER_LOG)",
            format!("{err}; write e.g. info or cachelayer=debug"),
        )
    })?;
    // Colours only for a terminal: escape codes in a log file or collector are noise.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Already installed (an embedding program's subscriber): keep it.
    drop(installed);
    Ok(())
}

/// The listener with TCP_NODELAY on every accepted connection: a response written in more
/// than one piece (headers, then body) must not wait for the client's delayed ACK.
pub(crate) fn without_nagle(
    listener: TcpListener,
) -> axum::serve::TapIo<TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt;
    fn no_delay(tcp: &mut tokio::net::TcpStream) {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
    }
    listener.tap_io(no_delay as fn(&mut tokio::net::TcpStream))
}

/// How long closing the database pool may take at exit.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run the catalogue API until SIGTERM or SIGINT, then shut down gracefully.
pub async fn serve(config: ServeConfig) -> Result<(), Error> {
    let metrics = prometheus();
    tracing::info!(config = ?config, "starting cachelayer serve");
    let catalogue = open_catalogue(&config).await?;
    let state = AppState::new(Shared {
        catalogue: catalogue.clone(),
        max_body_bytes: config.max_body_bytes,
        admin_token: config.admin_token.as_deref().map(Arc::from),
        started: Instant::now(),
        shutting_down: Arc::new(AtomicBool::new(false)),
        outcomes: Arc::new(CacheOutcomes::default()),
        redis_pool_size: config.cache.redis_pool_size,
        prometheus: metrics.clone(),
        cache_lists: !config.cache_ttl.is_zero() && !config.list_ttl.is_zero(),
    });
    if state.admin_token.is_none() {
        tracing::info!("no admin token: the admin routes are off");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|err| Error::io(&format!("listening on {}", config.listen), err))?;
    let address = listener
        .local_addr()
        .map_err(|err| Error::io("reading the listening address", err))?;
    let background = [
        tokio::spawn(run_upkeep(metrics)),
        tokio::spawn(retry_invalidations(catalogue.clone())),
    ];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(state.clone());
    let server = tokio::spawn(async move {
        axum::serve(without_nagle(listener), app)
            .with_graceful_shutdown(async {
                drop(stopped.await);
            })
            .await
    });
    tracing::info!(address = %address, "listening");

    let signal = shutdown_signal().await;
    tracing::info!(signal, timeout = ?config.shutdown_timeout, "shutting down: draining in-flight requests");
    state.shutting_down.store(true, Ordering::Relaxed);
    // The receiver lives as long as the server task; an error means it already ended.
    let _ = stop.send(());
    drain(server, config.shutdown_timeout).await;
    for task in background {
        task.abort();
    }
    close(&catalogue).await;
    tracing::info!("stopped");
    Ok(())
}

/// The database (migrated and seeded) and the cache, as the catalogue.
async fn open_catalogue(config: &ServeConfig) -> Result<Catalogue, Error> {
    let db = Database::open(&config.database_url, config.db_pool_size).await?;
    let seeded = db.seed(config.seed).await?;
    tracing::info!(database = db.kind(), seeded, "database ready");
    let cache = config
        .cache
        .build()
        .map_err(|err| Error::config("cache settings", err.to_string()))?;
    if config.cache.redis_url.is_none() {
        tracing::info!(
            "no Redis URL: the cache is local to this process; other instances neither share it nor see its invalidations"
        );
    }
    let mut lists = ResponseCacheLayer::new(cache.clone()).default_ttl(Some(config.list_ttl));
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
    // for ever (the runtime drops them when `serve` returns).
    if tokio::time::timeout(CLOSE_TIMEOUT, catalogue.db().close())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?CLOSE_TIMEOUT, "database connections still in use at exit");
    }
}

/// Wait for the server to finish its in-flight requests, up to `timeout`. Past it, the
/// connections still open are left to the runtime, which drops them when `serve` returns
/// (their loads release their locks as they are dropped).
pub(crate) async fn drain(server: tokio::task::JoinHandle<std::io::Result<()>>, timeout: Duration) {
    let abort = server.abort_handle();
    match tokio::time::timeout(timeout, server).await {
        Ok(Ok(Ok(()))) => tracing::info!("all in-flight requests finished"),
        Ok(Ok(Err(err))) => tracing::error!(error = %err, "the server failed while draining"),
        Ok(Err(err)) => tracing::error!(error = %err, "the server task failed"),
        Err(_) => {
            abort.abort();
            tracing::warn!(
                ?timeout,
                "in-flight requests did not finish in time; dropping them"
            );
        }
    }
}

/// Retry failed invalidations until they succeed.
async fn retry_invalidations(catalogue: Catalogue) {
    let mut tick = tokio::time::interval(RETRY_EVERY);
    loop {
        tick.tick().await;
        if catalogue.invalidations_pending() {
            catalogue.retry_pending().await;
        }
    }
}

/// The name of the signal that asked us to stop.
pub(crate) async fn shutdown_signal() -> &'static str {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                () = interrupt => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            },
            Err(_) => {
                interrupt.await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        interrupt.await;
        "SIGINT"
    }
}
