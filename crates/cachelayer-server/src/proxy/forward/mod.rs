//! Forwarding to the upstream: one request in, the upstream's response out, bodies streamed
//! both ways over a pool of keep-alive connections (hyper's client).
//!
//! As RFC 9110 section 7.6.1 asks of a proxy, hop-by-hop fields (the library's one list,
//! [`cachelayer::http::headers::HOP_BY_HOP`], and the fields `Connection` names) are
//! dropped in both directions, and `Via` is added; the client's address goes upstream in
//! `X-Forwarded-For`. Upstream failures become short JSON answers: 502 when it cannot be
//! reached, 503 when it is at `--upstream-max-concurrency` for longer than
//! `--upstream-timeout`, 504 when it does not answer in time.
//!
//! The upstream is shielded from what clients do: at most `--upstream-max-concurrency`
//! requests are in flight to it (a request holds its place until the response body ends or
//! is dropped, so a client that resets gives its place back at once), a body that sends
//! nothing for `--upstream-body-timeout` is cut, and a bodiless idempotent request whose
//! connection closed before an answer is sent once more. This module must never buffer a
//! body, nor send a request again when the upstream may have acted on it and the method is
//! not idempotent.

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Request, Response, StatusCode, Uri, Version};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, Error as ClientError};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

mod body;
mod failure;
mod limit;
mod read_ahead;

pub(crate) use self::body::UPSTREAM_BODY_TIMEOUTS;
pub(crate) use self::failure::UPSTREAM_RETRIES;
pub(crate) use self::limit::{UPSTREAM_IN_FLIGHT, UPSTREAM_QUEUED, UPSTREAM_REJECTED};

use cachelayer::http::TAG_HEADERS;
use cachelayer::http::headers::strip_hop_by_hop;
use cachelayer::http::status::X_CACHE;

use crate::listen::InterimSender;

use self::body::UpstreamBody;
use self::failure::{Failure, Replay};
use self::limit::{Limits, Permit};
use self::read_ahead::{READ_AHEAD_BUDGET_BYTES, ReadAhead, read_ahead};
use super::config::{HostMode, ProxyConfig};

/// The `Via` entry this proxy adds (RFC 9110 section 7.6.3).
const VIA: &str = "1.1 cachelayer";
/// Idle upstream connections kept per host.
const POOL_IDLE_PER_HOST: usize = 256;
/// How long an idle upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Boxed error of the bodies passed on to the client.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sends requests to one upstream. Cheap to clone (the connection pool and the concurrency
/// limit are shared).
#[derive(Clone, Debug)]
pub(crate) struct Forwarder {
    client: Client<HttpConnector, Body>,
    upstream: Uri,
    host_mode: HostMode,
    timeout: Duration,
    limits: Arc<Limits>,
    read_ahead: ReadAhead,
}

impl Forwarder {
    pub(crate) fn new(config: &ProxyConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.upstream_connect_timeout));
        connector.set_nodelay(true);
        // The client's own retry (on by default) covers a request never written to a
        // pooled connection found closed; `send` covers the one written to it.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .build(connector);
        Self {
            client,
            upstream: config.upstream.clone(),
            host_mode: config.host_mode,
            timeout: config.upstream_timeout,
            limits: Arc::new(Limits::new(
                config.upstream_max_concurrency,
                config.upstream_body_timeout,
            )),
            read_ahead: ReadAhead::new(READ_AHEAD_BUDGET_BYTES),
        }
    }

    /// The upstream's `host:port`, with the scheme's default port when the URL gives none.
    pub(crate) fn connect_address(&self) -> String {
        let host = self.upstream.host().unwrap_or_default();
        let port = self.upstream.port_u16().unwrap_or(80);
        if host.contains(':') {
            format!("[{}]:{port}", host.trim_matches(|c| c == '[' || c == ']'))
        } else {
            format!("{host}:{port}")
        }
    }

    /// The upstream's authority as its URL gives it (the `Host` of rewrite mode).
    pub(crate) fn authority(&self) -> String {
        self.upstream
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default()
    }

    /// Forward one request; never fails (upstream trouble is a 502, 503 or 504 answer).
    pub(crate) async fn forward(&self, request: Request<Body>) -> Response<Body> {
        let Some(request) = self.upstream_request(request) else {
            return gateway_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request target cannot be forwarded",
            );
        };
        // Before taking a place: a client slow to send its body must not hold one.
        let Ok((request, _read_ahead)) = read_ahead(request, &self.read_ahead).await else {
            return client_body_failed();
        };
        // One deadline for the queue and the headers: a full upstream holds a client no
        // longer than a slow one.
        let deadline = Instant::now() + self.timeout;
        let Some(permit) = self.limits.admit(deadline).await else {
            tracing::warn!(timeout = ?self.timeout, upstream = %self.upstream, "upstream at its concurrency limit");
            return gateway_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_busy",
                "the upstream is answering as many requests as it may; try again later",
            );
        };
        match tokio::time::timeout_at(deadline, self.send(request)).await {
            // hyper's client hands a 101 back as the final response; the proxy forwards no
            // upgrade (the client asked for none it could get), so it is the upstream's error.
            Ok(Ok(response)) if response.status().is_informational() => {
                tracing::warn!(status = %response.status(), upstream = %self.upstream, "upstream answered with an interim status as final");
                gateway_error(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the upstream answered with an interim status",
                )
            }
            Ok(Ok(response)) => self.downstream_response(response, permit),
            Ok(Err(err)) => self.failure_response(&err),
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, upstream = %self.upstream, "upstream timed out");
                gateway_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the upstream did not answer in time",
                )
            }
        }
    }

    /// The client's request as the upstream gets it; `None` when its target cannot be sent.
    fn upstream_request(&self, request: Request<Body>) -> Option<Request<Body>> {
        let client_ip = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        let (mut parts, body) = request.into_parts();
        // HTTP/2 clients send no Host field (only :authority); HTTP/1.1 upstreams need one.
        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = self.upstream_uri(path)?;
        // The upstream connection is HTTP/1.1 whatever the client spoke.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        self.set_host(&mut parts.headers, client_host);
        append_forwarded_for(&mut parts.headers, client_ip);
        // Kept when a TLS terminator in front of this proxy set it; this listener is plain.
        parts
            .headers
            .entry(HeaderName::from_static("x-forwarded-proto"))
            .or_insert(HeaderValue::from_static("http"));
        append_via(&mut parts.headers);
        Some(Request::from_parts(parts, body))
    }

    /// Send `request`, and once more when its connection failed before any answer and
    /// sending it again is safe (see [`Replay`]).
    async fn send(&self, mut request: Request<Body>) -> Result<Response<Incoming>, ClientError> {
        let interim = request.extensions().get::<InterimSender>().cloned();
        pass_interim(&mut request, interim.clone());
        let replay = Replay::of(&request);
        let err = match self.client.request(request).await {
            Ok(response) => return Ok(response),
            Err(err) => err,
        };
        let failure = Failure::of(&err);
        match replay {
            Some(replay) if failure.may_retry() => {
                metrics::counter!(UPSTREAM_RETRIES, "reason" => failure.as_str()).increment(1);
                tracing::debug!(error = %err, reason = failure.as_str(), upstream = %self.upstream, "sending the request again");
                let mut again = replay.into_request();
                pass_interim(&mut again, interim);
                self.client.request(again).await
            }
            _ => Err(err),
        }
    }

    /// The upstream's response as the client gets it, its body holding `permit`.
    fn downstream_response(&self, response: Response<Incoming>, permit: Permit) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        // The client's connection keeps its own version (an HTTP/1.0 upstream must not turn
        // it into a close-after-each-response connection).
        parts.version = Version::HTTP_11;
        // RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length, and a proxy must
        // remove the latter before forwarding. hyper's client reads the body by the former
        // but keeps the latter, which would give the client a false length.
        if parts.headers.contains_key(header::TRANSFER_ENCODING) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(&mut parts.headers);
        // An upstream cache's own label (Varnish, a CDN) would be taken for this proxy's;
        // its `Cache-Status` entries stay (RFC 9211 lists every cache).
        parts.headers.remove(X_CACHE);
        append_via(&mut parts.headers);
        let body = UpstreamBody::new(body, permit, &self.limits);
        Response::from_parts(parts, Body::new(body))
    }

    fn failure_response(&self, err: &ClientError) -> Response<Body> {
        // hyper-util's own message names only the stage; the cause says what happened.
        let cause = err.source();
        match Failure::of(err) {
            Failure::Unreachable => {
                tracing::warn!(error = %err, ?cause, upstream = %self.upstream, "upstream unreachable");
                gateway_error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    "the upstream cannot be reached",
                )
            }
            Failure::ClientBody => {
                tracing::debug!(error = %err, ?cause, "the client's request body failed");
                client_body_failed()
            }
            failure @ (Failure::Closed | Failure::Broken) => {
                tracing::warn!(error = %err, ?cause, reason = failure.as_str(), upstream = %self.upstream, "upstream request failed");
                gateway_error(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the upstream's answer could not be read",
                )
            }
        }
    }

    fn upstream_uri(&self, path_and_query: &str) -> Option<Uri> {
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse().ok()?);
        Uri::from_parts(parts).ok()
    }

    fn set_host(&self, headers: &mut HeaderMap, client_host: Option<HeaderValue>) {
        match self.host_mode {
            HostMode::Forward => {
                if let Some(host) = client_host {
                    headers.insert(header::HOST, host);
                }
            }
            HostMode::Rewrite => {
                if let Some(host) = client_host {
                    headers.insert(HeaderName::from_static("x-forwarded-host"), host);
                }
                if let Ok(upstream) = HeaderValue::from_str(&self.authority()) {
                    headers.insert(header::HOST, upstream);
                }
            }
        }
    }
}

/// The answer when the client's own request body failed (malformed, cut off, stalled).
fn client_body_failed() -> Response<Body> {
    gateway_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "the request body could not be read",
    )
}

/// Passes the upstream's interim responses (`103 Early Hints`, `102 Processing`) to the
/// client through `sender`, when the client may get them (an HTTP/1.1 connection).
/// hyper's client reports them from HTTP/1 upstreams, which is all this proxy speaks to.
fn pass_interim(request: &mut Request<Body>, sender: Option<InterimSender>) {
    if let Some(sender) = sender {
        hyper::ext::on_informational(request, move |interim| {
            // Filtered as a final response is: an upstream cache's label and the tags meant
            // for this proxy never reach the client.
            let mut headers = interim.headers().clone();
            headers.remove(X_CACHE);
            for tag_field in TAG_HEADERS {
                headers.remove(tag_field);
            }
            sender.send(interim.status(), &headers);
        });
    }
}

fn append_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, HeaderValue::from_static(VIA));
}

fn append_forwarded_for(headers: &mut HeaderMap, client: Option<std::net::IpAddr>) {
    let Some(client) = client else { return };
    let name = HeaderName::from_static("x-forwarded-for");
    let value = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client}"),
        None => client.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name, value);
    }
}

fn gateway_error(status: StatusCode, error: &'static str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": error, "message": message });
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::channel::mpsc;
    use http_body_util::{BodyExt, StreamBody};

    use axum::body::HttpBody;
    use axum::http::Method;
    use bytes::Bytes;
    use hyper::body::Frame;

    use super::body::UpstreamBodyError;
    use super::*;

    /// Longest wait for what a test expects to happen.
    const PATIENCE: Duration = Duration::from_secs(10);

    type Frames = mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;
    type TestBody =
        UpstreamBody<StreamBody<mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>>>;

    /// A body whose frames the test sends, holding the one place of its limits.
    async fn one_place_body(timeout: Duration) -> (Arc<Limits>, Frames, TestBody) {
        let limits = Arc::new(Limits::new(1, timeout));
        let permit = limits.admit(Instant::now()).await.expect("a free place");
        let (frames, receiver) = mpsc::unbounded();
        let body = UpstreamBody::new(StreamBody::new(receiver), permit, &limits);
        (limits, frames, body)
    }

    fn data(text: &'static str) -> Result<Frame<Bytes>, Infallible> {
        Ok(Frame::data(Bytes::from_static(text.as_bytes())))
    }

    async fn next_data(body: &mut TestBody) -> Bytes {
        let frame = tokio::time::timeout(PATIENCE, body.frame()).await;
        let frame = frame
            .expect("a frame in time")
            .expect("a frame")
            .expect("data");
        frame.into_data().expect("a data frame")
    }

    /// A body that sends nothing for the timeout ends with an error, gives its place back
    /// and ends there.
    #[tokio::test]
    async fn a_stalled_body_is_cut_and_gives_its_place_back() {
        let (limits, frames, mut body) = one_place_body(Duration::from_millis(50)).await;
        frames.unbounded_send(data("first")).expect("send");
        assert_eq!(next_data(&mut body).await, "first");
        assert_eq!(limits.places.available_permits(), 0);
        let cut = tokio::time::timeout(PATIENCE, body.frame()).await;
        let cut = cut.expect("cut in time").expect("a frame");
        assert!(matches!(cut, Err(UpstreamBodyError::Stalled(_))), "{cut:?}");
        assert_eq!(limits.places.available_permits(), 1);
        assert!(body.frame().await.is_none(), "nothing after the cut");
        assert!(body.is_end_stream());
    }

    /// The stall timer runs only while the body waits on the upstream: a client that reads
    /// nothing for longer than the timeout is not taken for a stalled upstream, even when
    /// the next frame is not there at its first poll (hyper reads it only once asked).
    #[tokio::test]
    async fn a_client_slow_to_read_is_not_taken_for_a_stalled_upstream() {
        let (_limits, frames, mut body) = one_place_body(Duration::from_millis(50)).await;
        frames.unbounded_send(data("first")).expect("send");
        assert_eq!(next_data(&mut body).await, "first");
        // The slow client under test: it reads nothing for twice the timeout.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut next = body.frame();
        assert!(futures::poll!(&mut next).is_pending(), "waiting, not cut");
        frames.unbounded_send(data("second")).expect("send");
        let second = tokio::time::timeout(PATIENCE, next).await.expect("in time");
        let second = second.expect("a frame").expect("data").into_data();
        assert_eq!(second.expect("a data frame"), "second");
    }

    /// The place is held while the body streams, and given back when it ends or when it is
    /// dropped unread (the client went away).
    #[tokio::test]
    async fn the_place_is_held_until_the_body_ends_or_is_dropped() {
        let (limits, frames, mut body) = one_place_body(PATIENCE).await;
        frames.unbounded_send(data("only")).expect("send");
        assert_eq!(next_data(&mut body).await, "only");
        assert_eq!(limits.places.available_permits(), 0);
        drop(frames);
        assert!(body.frame().await.is_none());
        assert_eq!(limits.places.available_permits(), 1);

        let (limits, _frames, body) = one_place_body(PATIENCE).await;
        assert_eq!(limits.places.available_permits(), 0);
        drop(body);
        assert_eq!(limits.places.available_permits(), 1);
    }

    /// A request waits for a place until its deadline, gives up past it, and a place given
    /// back goes to the one waiting.
    #[tokio::test]
    async fn a_request_waits_for_a_place_until_its_deadline() {
        let limits = Limits::new(1, PATIENCE);
        let held = limits.admit(Instant::now()).await.expect("a free place");
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(
            limits.admit(soon).await.is_none(),
            "no place before the deadline"
        );
        let waiting = limits.admit(Instant::now() + PATIENCE);
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(held);
        let admitted = tokio::time::timeout(PATIENCE, waiting).await;
        assert!(admitted.expect("in time").is_some());
    }

    /// Only requests that are idempotent and have no body are sent again.
    #[test]
    fn only_bodiless_idempotent_requests_are_replayed() {
        let request = |method: Method, body: Body| {
            let mut request = Request::new(body);
            *request.method_mut() = method;
            request
        };
        assert!(Replay::of(&request(Method::GET, Body::empty())).is_some());
        assert!(Replay::of(&request(Method::DELETE, Body::empty())).is_some());
        assert!(Replay::of(&request(Method::POST, Body::empty())).is_none());
        assert!(Replay::of(&request(Method::PUT, Body::from("changed"))).is_none());
    }

    #[test]
    fn forwarded_for_appends_to_what_came_before() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, Some([10, 0, 0, 1].into()));
        append_forwarded_for(&mut headers, Some([10, 0, 0, 2].into()));
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
    }
}
