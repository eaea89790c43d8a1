//! The door of every request, between hyper and what a listener serves: it refuses what HTTP
//! says to refuse before any route sees it (an HTTP/1.1 request without exactly one valid
//! `Host`, a target longer than `--max-uri-bytes`, a head larger than `--max-header-bytes`),
//! tells the service the client's address ([`ConnectInfo`]), bounds the gaps of a request
//! body, marks HTTP/1 answers `Connection: close` while the instance drains, and keeps the
//! connection's account ([`super::activity`]) of what is in flight and what waits on the
//! client.
//!
//! Its refusals are JSON, like every other error. This module must never look at what a
//! request asks for beyond the head's framing: routes, caching and auth belong to the
//! service behind it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::header::{CONNECTION, HOST};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Uri, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;
use tower::{Service, ServiceExt};

use super::Draining;
use super::activity::{Activity, InFlight, Timeout};
use super::interim::Interim;
use crate::error::ApiError;

/// Every request of one connection, checked and accounted, then handed to `app`.
#[derive(Clone)]
pub(crate) struct Gate<S> {
    pub(crate) app: S,
    pub(crate) peer: SocketAddr,
    pub(crate) activity: Arc<Activity>,
    /// The connection's queue of interim responses (HTTP/1.1 requests may send some).
    pub(crate) interim: Arc<Interim>,
    pub(crate) draining: Draining,
    pub(crate) listener: &'static str,
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for Gate<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = hyper::Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let version = request.version();
        let mut in_flight = self.activity.request_started(version);
        let limits = *in_flight.limits();
        let refused = refusal(request.uri(), request.headers(), version, &limits);
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        // HTTP/1.0 clients may not understand 1xx (RFC 9110 section 15.2), and HTTP/2 has no
        // way here to send them: only HTTP/1.1 requests get a sender.
        let interim_scope = (version == Version::HTTP_11).then(|| {
            let (sender, scope) = self.interim.open();
            parts.extensions.insert(sender);
            scope
        });
        let body = RequestBody {
            inner: body,
            gap: limits.request_body_timeout,
            timer: None,
            listener: self.listener,
        };
        let request = Request::from_parts(parts, Body::new(body));
        let app = self.app.clone();
        let draining = self.draining.clone();
        Box::pin(async move {
            let (mut response, close) = match refused {
                Some(refusal) => (refusal.into_response(), true),
                None => {
                    let Ok(response) = app.oneshot(request).await;
                    (response, false)
                }
            };
            // The final response is ready: no interim response may follow it out.
            drop(interim_scope);
            // HTTP/2 has no `Connection` field: its drain is the connection's GOAWAY.
            if version < Version::HTTP_2 && (close || draining.is_draining()) {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            in_flight.responded();
            let pieces = (version == Version::HTTP_2).then_some(HTTP2_PIECE_BYTES);
            Ok(response.map(|inner| ResponseBody {
                inner,
                in_flight,
                pieces,
                rest: None,
            }))
        })
    }
}

/// What HTTP says to refuse in this head, as the answer; `None` to serve it.
fn refusal(
    uri: &Uri,
    headers: &HeaderMap,
    version: Version,
    limits: &super::limits::Limits,
) -> Option<ApiError> {
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > limits.max_uri_bytes {
        return Some(ApiError::uri_too_long(limits.max_uri_bytes));
    }
    // Each field as HTTP/1 writes it: name, ": ", value, CRLF.
    let head: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if head > limits.max_header_bytes {
        return Some(ApiError::headers_too_large(limits.max_header_bytes));
    }
    host_refusal(headers, version).map(ApiError::bad_request)
}

/// RFC 9112 section 3.2: a server must answer 400 to an HTTP/1.1 request without `Host`,
/// and to any request with more than one or an invalid one. A request keyed under a host it
/// does not carry, or under one of two, could be cached for the wrong site.
fn host_refusal(headers: &HeaderMap, version: Version) -> Option<&'static str> {
    let mut hosts = headers.get_all(HOST).iter();
    let Some(host) = hosts.next() else {
        return (version == Version::HTTP_11)
            .then_some("an HTTP/1.1 request must carry a Host header");
    };
    if hosts.next().is_some() {
        return Some("a request must carry exactly one Host header");
    }
    let valid = Authority::try_from(host.as_bytes())
        .is_ok_and(|authority| !authority.as_str().contains('@'));
    (!valid).then_some("the Host header is not a valid host[:port]")
}

/// A request body that failed on the client's side (malformed, cut off, or stalled past
/// `--request-body-timeout`): what reads the body can tell the client's fault from its own.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed: {0}")]
pub(crate) struct ClientBodyError(#[source] Box<dyn std::error::Error + Send + Sync>);

/// A request body whose reads may not wait more than `--request-body-timeout` apart.
struct RequestBody {
    inner: Incoming,
    gap: Duration,
    /// Armed while a read waits.
    timer: Option<Pin<Box<Sleep>>>,
    listener: &'static str,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(|err| ClientBodyError(err.into()))))
            }
            Poll::Pending => {
                let gap = this.gap;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let why = Timeout::RequestBody;
                why.count(this.listener);
                let err = std::io::Error::new(std::io::ErrorKind::TimedOut, why.as_str());
                Poll::Ready(Some(Err(ClientBodyError(err.into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The largest piece of an HTTP/2 response body handed to hyper at once: one frame's worth.
/// hyper passes a whole piece to the stream once the client's window opens by one byte, and
/// asks for the next only when that piece is out; in pieces, a client that keeps its window
/// nearly shut is seen stalling (and cut at the send timeout) instead of being handed the
/// whole body to hold in memory.
const HTTP2_PIECE_BYTES: usize = 16 * 1024;

/// A response body that tells the connection's account whether it waits on the client (hyper
/// has not asked for the next frame) or on its source; dropping it ends the request.
pub(crate) struct ResponseBody {
    inner: Body,
    in_flight: InFlight,
    /// The largest data frame passed on (HTTP/2), or `None` for frames as they come.
    pieces: Option<usize>,
    /// What is left of a data frame larger than a piece.
    rest: Option<Bytes>,
}

impl ResponseBody {
    /// The next piece of `data` as a frame, keeping what is left for the next poll.
    fn piece(&mut self, mut data: Bytes) -> Frame<Bytes> {
        if let Some(piece) = self.pieces
            && data.len() > piece
        {
            let first = data.split_to(piece);
            self.rest = Some(data);
            return Frame::data(first);
        }
        Frame::data(data)
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(rest) = this.rest.take() {
            this.in_flight.sent();
            return Poll::Ready(Some(Ok(this.piece(rest))));
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match frame {
            Poll::Ready(Some(Ok(frame))) => {
                this.in_flight.sent();
                let frame = match frame.into_data() {
                    Ok(data) => this.piece(data),
                    Err(other) => other,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.in_flight.sent();
                Poll::Ready(other)
            }
            Poll::Pending => {
                this.in_flight.waiting_on_source();
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(rest) = &self.rest {
            let rest = u64::try_from(rest.len()).unwrap_or(u64::MAX);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + rest);
            }
            hint.set_lower(hint.lower() + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_hosts(hosts: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(HOST, HeaderValue::from_str(host).expect("value"));
        }
        headers
    }

    #[test]
    fn host_is_required_once_and_valid() {
        assert_eq!(
            host_refusal(&with_hosts(&["example.com"]), Version::HTTP_11),
            None
        );
        assert_eq!(
            host_refusal(&with_hosts(&["127.0.0.1:80"]), Version::HTTP_11),
            None
        );
        assert_eq!(
            host_refusal(&with_hosts(&["[::1]:8080"]), Version::HTTP_11),
            None
        );
        assert_eq!(
            host_refusal(&with_hosts(&[]), Version::HTTP_10),
            None,
            "HTTP/1.0"
        );
        assert_eq!(
            host_refusal(&with_hosts(&[]), Version::HTTP_2),
            None,
            ":authority"
        );
        for bad in [
            &[][..],
            &["a.com", "b.com"][..],
            &["a.com", "a.com"][..],
            &["user@a.com"][..],
            &["a.com/x"][..],
            &["a b"][..],
            &[""][..],
        ] {
            assert!(
                host_refusal(&with_hosts(bad), Version::HTTP_11).is_some(),
                "{bad:?}"
            );
        }
    }

    /// HTTP/2 bodies are handed to hyper a frame's worth at a time, whole and in order.
    #[tokio::test]
    async fn http2_bodies_go_out_in_pieces() {
        use http_body_util::BodyExt;

        let activity = Activity::new(crate::listen::limits::defaults());
        let data = Bytes::from(vec![7_u8; 40 * 1024]);
        let mut body = ResponseBody {
            inner: Body::from(data.clone()),
            in_flight: activity.request_started(Version::HTTP_2),
            pieces: Some(HTTP2_PIECE_BYTES),
            rest: None,
        };
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(40 * 1024));
        let mut sizes = Vec::new();
        let mut received = Vec::new();
        while let Some(frame) = body.frame().await {
            let chunk = frame.expect("frame").into_data().expect("data");
            sizes.push(chunk.len());
            received.extend_from_slice(&chunk);
            let left = http_body::Body::size_hint(&body).exact();
            assert_eq!(left, Some((data.len() - received.len()) as u64));
        }
        assert_eq!(sizes, [16 * 1024, 16 * 1024, 8 * 1024]);
        assert_eq!(received, data);
    }
}
