//! Listening and graceful drain, the same for both commands: binding addresses, serving
//! an app on them, and [`serve_until`], the one start-to-shutdown sequence. On SIGTERM or
//! SIGINT ([`shutdown_signal`]) it marks the instance [`Draining`] (readiness turns 503), stops
//! accepting on every listener at once, then waits for each listener's connections within
//! that listener's deadline.
//!
//! Each listener faces clients that may be hostile: [`limits`] says what one may hold,
//! [`connection`] accepts within a cap and drains, [`io`] enforces a connection's deadlines
//! on its socket, [`gate`] checks each request's head, and [`activity`] is the account the
//! last two share. Connections still open past a deadline are left to the runtime, which
//! drops them when the command returns. This module must never decide what a command serves
//! or what it cleans up after draining (that is the command's), and never drain without
//! logging how it ended.

mod activity;
mod connection;
mod gate;
mod interim;
mod io;
mod limits;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Service;

pub(crate) use self::activity::CONNECTIONS_TIMED_OUT;
use self::connection::Serving;
pub(crate) use self::connection::{CONNECTION_LIMIT_REACHED, CONNECTIONS_OPEN};
pub(crate) use self::gate::ClientBodyError;
pub(crate) use self::interim::InterimSender;
pub(crate) use self::limits::raise_open_file_limit;
pub use self::limits::{LimitArgs, Limits};
use crate::error::Error;

/// Whether the instance is draining for shutdown: set once by [`serve_until`], read
/// by readiness. Cheap to clone (all clones share one flag).
#[derive(Debug, Clone, Default)]
pub(crate) struct Draining(Arc<AtomicBool>);

impl Draining {
    /// Whether shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn begin(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Begin draining without a signal (tests of what reads the flag).
    #[cfg(test)]
    pub(crate) fn begin_for_test(&self) {
        self.begin();
    }
}

/// A bound listener, what answers on it, its bounds, and how long its connections may take
/// to finish at shutdown.
pub(crate) struct Listener {
    /// The bound socket.
    pub(crate) socket: TcpListener,
    /// Its name in logs and metrics (`api`, `clients`, `admin`).
    pub(crate) name: &'static str,
    /// What answers on it.
    pub(crate) app: Box<dyn App>,
    /// What one client may hold of it.
    pub(crate) limits: Limits,
    /// Drain deadline at shutdown.
    pub(crate) drain_within: Duration,
}

/// What answers the requests of a listener: any service of axum requests, an axum `Router`
/// or one service for every request (the proxy's clients, where a router would only add
/// work to every hit). Each request carries the client's address as `ConnectInfo`.
pub(crate) trait App: Send + 'static {
    /// Serve `socket` until `stopped` turns true, then finish its connections.
    fn spawn(
        self: Box<Self>,
        socket: TcpListener,
        serving: ServingParts,
        stopped: watch::Receiver<bool>,
    ) -> JoinHandle<()>;
}

/// What a listener's serving needs besides its app.
pub(crate) struct ServingParts {
    name: &'static str,
    limits: Limits,
    draining: Draining,
}

impl<S> App for S
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    fn spawn(
        self: Box<Self>,
        socket: TcpListener,
        parts: ServingParts,
        stopped: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let serving = Serving {
            app: *self,
            limits: parts.limits,
            draining: parts.draining,
            name: parts.name,
        };
        tokio::spawn(serving.run(socket, stopped))
    }
}

/// Bind `address`, which `flag` gave; the listener and the address it got (a port 0 becomes
/// a real one). An error names the address, the flag and the operating system's reason.
pub(crate) async fn bind(
    address: SocketAddr,
    flag: &str,
) -> Result<(TcpListener, SocketAddr), Error> {
    let doing = format!("cannot listen on {address}, given by {flag}");
    let listener = TcpListener::bind(address)
        .await
        .map_err(|err| Error::io(&doing, err))?;
    let local = listener
        .local_addr()
        .map_err(|err| Error::io("reading the listening address", err))?;
    Ok((listener, local))
}

/// Serve every listener until `shutdown` completes (commands pass [`shutdown_signal`]:
/// SIGTERM or SIGINT), then drain them: mark `draining`, stop accepting everywhere, and wait
/// for each listener in turn, within its own deadline. `listening` runs once every listener
/// is served (the command logs where it listens); `shutdown_timeout` is what the shutdown
/// log line reports.
pub(crate) async fn serve_until(
    listeners: Vec<Listener>,
    draining: &Draining,
    shutdown_timeout: Duration,
    listening: impl FnOnce(),
    shutdown: impl Future<Output = &'static str>,
) {
    let (stop, stopped) = watch::channel(false);
    let running: Vec<(JoinHandle<()>, Duration)> = listeners
        .into_iter()
        .map(|listener| {
            let parts = ServingParts {
                name: listener.name,
                limits: listener.limits,
                draining: draining.clone(),
            };
            let server = listener.app.spawn(listener.socket, parts, stopped.clone());
            (server, listener.drain_within)
        })
        .collect();
    listening();

    let signal = shutdown.await;
    tracing::info!(signal, timeout = ?shutdown_timeout, "shutting down: draining in-flight requests");
    draining.begin();
    // Receivers live as long as the server tasks; an error means they already ended.
    let _ = stop.send(true);
    for (server, within) in running {
        drain(server, within).await;
    }
}

/// Wait for the server to finish its in-flight requests, up to `timeout`. Past it, the
/// connections still open are left to the runtime, which drops them when the command
/// returns (their loads release their locks as they are dropped).
async fn drain(server: JoinHandle<()>, timeout: Duration) {
    let abort = server.abort_handle();
    match tokio::time::timeout(timeout, server).await {
        Ok(Ok(())) => tracing::info!("all in-flight requests finished"),
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

/// Completes on SIGTERM or SIGINT, with the name of the signal that asked us to stop.
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

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::{Notify, mpsc, oneshot};

    use super::*;

    /// Shutdown marks the instance draining, stops accepting, and still answers the request
    /// that was in flight before it returns.
    #[tokio::test]
    async fn shutdown_drains_the_request_in_flight() {
        let (socket, address) = bind(([127, 0, 0, 1], 0).into(), "--listen")
            .await
            .expect("bind");
        let (started, mut handler_started) = mpsc::unbounded_channel::<()>();
        let release = Arc::new(Notify::new());
        let router = Router::new().route(
            "/slow",
            get({
                let release = Arc::clone(&release);
                move || async move {
                    let _ = started.send(());
                    release.notified().await;
                    "done"
                }
            }),
        );
        let draining = Draining::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn({
            let draining = draining.clone();
            let listener = Listener {
                socket,
                name: "test",
                app: Box::new(router),
                limits: limits::defaults(),
                drain_within: Duration::from_secs(10),
            };
            async move {
                let shutdown = async {
                    drop(stopped.await);
                    "test"
                };
                serve_until(vec![listener], &draining, Duration::ZERO, || {}, shutdown).await;
            }
        });
        let mut connection = TcpStream::connect(address).await.expect("connect");
        connection
            .write_all(b"GET /slow HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .await
            .expect("request");
        handler_started.recv().await.expect("the handler runs");

        stop.send(()).expect("shutdown");
        while !draining.is_draining() {
            tokio::task::yield_now().await;
        }
        assert!(!server.is_finished(), "a request is still in flight");
        release.notify_one();
        let mut response = String::new();
        connection
            .read_to_string(&mut response)
            .await
            .expect("response");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("done"), "{response}");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("drained in time")
            .expect("server task");
    }
}
