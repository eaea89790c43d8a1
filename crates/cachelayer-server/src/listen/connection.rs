//! Accepting and serving connections on one listener: a cap on how many are open at once
//! (`--max-connections`; past it, new ones wait in the kernel's queue, with a log line and a
//! metric), HTTP/1 and HTTP/2 on each (hyper's, with the limits of [`super::limits`]), and
//! each connection's part of the drain.
//!
//! At shutdown the listening socket is closed at once, after taking the connections the
//! kernel had already completed (closing would reset them). An HTTP/2 connection is sent GOAWAY
//! (its streams finish). An HTTP/1 connection gets a moment's grace: a request arriving in it
//! is answered with `Connection: close`, so a keep-alive client learns the connection ends
//! from the answer instead of a reset; then an idle connection is closed. This module must
//! never decide what is served: that is the app's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use futures::FutureExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::Service;

use super::Draining;
use super::activity::{Activity, Protocol};
use super::gate::Gate;
use super::interim::Interim;
use super::io::Guarded;
use super::limits::Limits;

/// Open client connections, by listener.
pub(crate) const CONNECTIONS_OPEN: &str = "cachelayer_connections_open";
/// Times a listener reached `--max-connections` and stopped accepting, by listener.
pub(crate) const CONNECTION_LIMIT_REACHED: &str = "cachelayer_connection_limit_reached_total";
/// hyper's default bound on header fields in a request head.
const HYPER_MAX_HEADERS: usize = 100;
/// How long an idle HTTP/1 connection is kept at shutdown for a request already on its way.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Pause after an accept error that is not the client's (out of descriptors, say), so that
/// the loop does not spin while nothing can be accepted.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One listener's serving: its app, bounds and name (the `listener` label).
pub(crate) struct Serving<S> {
    pub(crate) app: S,
    pub(crate) limits: Limits,
    pub(crate) draining: Draining,
    pub(crate) name: &'static str,
}

impl<S> Serving<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    /// Accept on `socket` until `stopped` turns true, then close it and wait until every
    /// connection has ended.
    pub(crate) async fn run(self, socket: TcpListener, mut stopped: watch::Receiver<bool>) {
        let cap = self.limits.max_connections;
        let permits = Arc::new(Semaphore::new(cap));
        let hyper = Arc::new(hyper_builder(&self.limits));
        let this = Arc::new(self);
        let mut full = false;
        loop {
            let permit = tokio::select! {
                permit = this.permit(&permits, &mut full) => permit,
                () = until_stopped(&mut stopped) => break,
            };
            let accepted = tokio::select! {
                accepted = socket.accept() => accepted,
                () = until_stopped(&mut stopped) => break,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(&err, this.name).await;
                    continue;
                }
            };
            Connection::spawn(&this, &hyper, &stopped, permit, tcp, peer);
        }
        // Connections the kernel completed before now would be reset when the socket
        // closes, their first request lost: take them, so each answers the request on its
        // way (with `Connection: close`), as any connection open at the signal does.
        while let Some(Ok((tcp, peer))) = socket.accept().now_or_never() {
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                break;
            };
            Connection::spawn(&this, &hyper, &stopped, permit, tcp, peer);
        }
        drop(socket);
        // Every connection holds a permit until it ends: all of them back means all ended.
        let all = u32::try_from(cap).expect("the cap is checked to fit");
        drop(permits.acquire_many(all).await);
    }

    /// A connection slot; past the cap, waits for one to free. Reaching the cap is logged
    /// and counted once each time the listener fills (`full` says whether it still is), not
    /// once a connection: under a flood, every accept waits.
    async fn permit(&self, permits: &Arc<Semaphore>, full: &mut bool) -> OwnedSemaphorePermit {
        if let Ok(permit) = Arc::clone(permits).try_acquire_owned() {
            *full = false;
            return permit;
        }
        if !*full {
            *full = true;
            metrics::counter!(CONNECTION_LIMIT_REACHED, "listener" => self.name).increment(1);
            tracing::warn!(
                listener = self.name,
                max_connections = self.limits.max_connections,
                "connection limit reached: new connections wait until one closes"
            );
        }
        Arc::clone(permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

/// hyper's HTTP/1 and HTTP/2 settings for `limits`.
fn hyper_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        // The socket enforces the header and idle deadlines (hyper's one timeout would cut
        // idle keep-alive connections at the header bound).
        .header_read_timeout(None)
        .max_buf_size(limits.read_buffer_bytes());
    // Set only when it differs from hyper's own 100: once set, hyper parses every head into
    // a heap array instead of one on the stack (1% of a hit's CPU, measured).
    if limits.max_headers != HYPER_MAX_HEADERS {
        http1.max_headers(limits.max_headers);
    }
    builder
        .http2()
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Completes once `stopped` turns true (or its sender is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    drop(stopped.wait_for(|stop| *stop).await);
}

/// What an accept error means: a connection the client abandoned is skipped; anything else
/// (no descriptors left, say) is logged and waited out.
async fn accept_failed(err: &std::io::Error, listener: &'static str) {
    use std::io::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(listener, error = %err, "accepting a connection failed; retrying shortly");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// One accepted connection, holding its slot until it ends.
struct Connection<S> {
    serving: Arc<Serving<S>>,
    hyper: Arc<auto::Builder<TokioExecutor>>,
    stopped: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl<S> Connection<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    /// Serve an accepted connection on a task of its own, holding `permit` until it ends.
    fn spawn(
        serving: &Arc<Serving<S>>,
        hyper: &Arc<auto::Builder<TokioExecutor>>,
        stopped: &watch::Receiver<bool>,
        permit: OwnedSemaphorePermit,
        tcp: TcpStream,
        peer: SocketAddr,
    ) {
        let connection = Self {
            serving: Arc::clone(serving),
            hyper: Arc::clone(hyper),
            stopped: stopped.clone(),
            _permit: permit,
        };
        tokio::spawn(connection.serve(tcp, peer));
    }

    async fn serve(mut self, tcp: TcpStream, peer: SocketAddr) {
        let name = self.serving.name;
        if let Err(err) = tcp.set_nodelay(true) {
            // A response written in pieces must not wait for the client's delayed ACK.
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
        let open = metrics::gauge!(CONNECTIONS_OPEN, "listener" => name);
        open.increment(1.0);
        let activity = Activity::new(self.serving.limits);
        let interim = Arc::new(Interim::default());
        let gate = Gate {
            app: self.serving.app.clone(),
            peer,
            activity: Arc::clone(&activity),
            interim: Arc::clone(&interim),
            draining: self.serving.draining.clone(),
            listener: name,
        };
        let io = TokioIo::new(Guarded::new(tcp, Arc::clone(&activity), interim, name));
        let mut connection = pin!(self.hyper.serve_connection(io, gate));
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = until_stopped(&mut self.stopped) => {
                // HTTP/1: a request on its way is answered with `Connection: close` (the
                // gate), which ends the connection.
                let graced = match activity.protocol() {
                    Protocol::Http2 => None,
                    Protocol::Http1 | Protocol::Unknown => {
                        tokio::time::timeout(DRAIN_GRACE, connection.as_mut()).await.ok()
                    }
                };
                match graced {
                    Some(ended) => ended,
                    None => {
                        // Idle HTTP/1: closed; busy HTTP/1: closed after its answer;
                        // HTTP/2: GOAWAY, then its streams finish.
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                }
            }
        };
        open.decrement(1.0);
        if let Err(err) = ended {
            // Clients that vanish are routine; a debug line is enough.
            tracing::debug!(listener = name, error = %err, "connection ended with an error");
        }
    }
}
