//! Why the upstream gave no answer, and whether the request may be sent again: the one
//! place that reads hyper-util's errors. This module must never allow a second attempt of a
//! request that carries a body or whose method is not idempotent.

use std::error::Error as _;

use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, Method, Request, Uri, Version};
use hyper_util::client::legacy::Error as ClientError;

use crate::listen::ClientBodyError;

/// Counter of requests sent a second time, by `reason` ([`Failure::as_str`]).
pub(crate) const UPSTREAM_RETRIES: &str = "cachelayer_upstream_retries_total";

/// Why the upstream gave no answer: what the client is told, and whether sending the
/// request again is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// No connection could be made: the upstream never saw the request.
    Unreachable,
    /// The connection closed or was reset before an answer: most often a pooled connection
    /// the upstream closed as the request went out on it.
    Closed,
    /// Anything else, such as an answer that is not HTTP.
    Broken,
    /// The client's request body failed (malformed, cut off, stalled): the client's fault.
    ClientBody,
}

impl Failure {
    pub(super) fn of(err: &ClientError) -> Self {
        if err.is_connect() {
            return Self::Unreachable;
        }
        let mut causes = std::iter::successors(err.source(), |&cause| cause.source());
        if causes
            .clone()
            .any(|cause| cause.downcast_ref::<ClientBodyError>().is_some())
        {
            return Self::ClientBody;
        }
        let closed = causes.any(|cause| {
            let hyper_closed = cause
                .downcast_ref::<hyper::Error>()
                .is_some_and(|e| e.is_incomplete_message() || e.is_canceled());
            let io_closed = cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
                use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
                matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
            });
            hyper_closed || io_closed
        });
        if closed { Self::Closed } else { Self::Broken }
    }

    /// A malformed answer is not retried: the upstream answered, and would again.
    pub(super) fn may_retry(self) -> bool {
        matches!(self, Self::Unreachable | Self::Closed)
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Closed => "closed",
            Self::Broken => "broken",
            Self::ClientBody => "client_body",
        }
    }
}

/// The head of a request that may be sent again. RFC 9110 section 9.2.2 lets a client
/// repeat an idempotent request after a connection failure; the body went with the first
/// attempt, so only requests without one are repeated.
pub(super) struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    pub(super) fn of(request: &Request<Body>) -> Option<Self> {
        let repeatable = request.method().is_idempotent() && request.body().is_end_stream();
        repeatable.then(|| Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
        })
    }

    pub(super) fn into_request(self) -> Request<Body> {
        let mut request = Request::new(Body::empty());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = self.headers;
        request
    }
}
