//! An upstream's response body on its way to the client: cut when the upstream stalls,
//! holding its request's place under the concurrency limit until it ends. This module must
//! never buffer the body.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::HttpBody;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use metrics::Counter;
use tokio::time::{Instant, Sleep};

use super::BoxError;
use super::limit::{Limits, Permit};

/// Counter of response bodies cut because the upstream sent nothing for the body timeout.
pub(crate) const UPSTREAM_BODY_TIMEOUTS: &str = "cachelayer_upstream_body_timeouts_total";

/// Why an upstream body ended early.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamBodyError {
    /// Nothing came for the body timeout.
    #[error("the upstream sent nothing for {0:?}; the body was cut")]
    Stalled(Duration),
    /// The upstream's connection failed.
    #[error("the upstream's body failed: {0}")]
    Failed(#[source] BoxError),
}

/// Where an upstream body is.
#[derive(Debug)]
enum BodyState {
    /// The last poll gave a frame (or none was asked for yet): no stall timer runs, so a
    /// client slow to read is not taken for a stalled upstream.
    Flowing(Permit),
    /// Waiting on the upstream, the stall timer set.
    Waiting(Permit),
    /// Ended, failed or cut: the place is given back.
    Ended,
}

/// An upstream's response body on its way to the client: cut with an error when the
/// upstream sends nothing for the body timeout (the client's connection is then reset,
/// which is how a proxy says a body is incomplete, and the cache layer stores no body that
/// ended in an error), and holding the request's place until it ends or is dropped.
pub(super) struct UpstreamBody<B> {
    inner: B,
    state: BodyState,
    stall: Pin<Box<Sleep>>,
    timeout: Duration,
    timeouts: Counter,
}

impl<B> UpstreamBody<B> {
    pub(super) fn new(inner: B, permit: Permit, limits: &Limits) -> Self {
        Self {
            inner,
            state: BodyState::Flowing(permit),
            stall: Box::pin(tokio::time::sleep(limits.body_timeout)),
            timeout: limits.body_timeout,
            timeouts: limits.body_timeouts.clone(),
        }
    }

    /// A frame came: the stall timer stops.
    fn flowing(&mut self) {
        self.state = match std::mem::replace(&mut self.state, BodyState::Ended) {
            BodyState::Flowing(permit) | BodyState::Waiting(permit) => BodyState::Flowing(permit),
            BodyState::Ended => BodyState::Ended,
        };
    }

    /// Nothing is ready from the upstream: set the stall timer if it is not set, and cut
    /// the body when it fires.
    fn poll_stall(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        self.state = match std::mem::replace(&mut self.state, BodyState::Ended) {
            BodyState::Flowing(permit) => {
                self.stall.as_mut().reset(Instant::now() + self.timeout);
                BodyState::Waiting(permit)
            }
            state => state,
        };
        ready!(self.stall.as_mut().poll(cx));
        self.state = BodyState::Ended;
        self.timeouts.increment(1);
        tracing::warn!(timeout = ?self.timeout, "upstream body stalled; cutting the response");
        Poll::Ready(Some(Err(UpstreamBodyError::Stalled(self.timeout))))
    }
}

impl<B> HttpBody for UpstreamBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = self.get_mut();
        if matches!(this.state, BodyState::Ended) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.flowing();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.state = BodyState::Ended;
                Poll::Ready(Some(Err(UpstreamBodyError::Failed(err.into()))))
            }
            Poll::Ready(None) => {
                this.state = BodyState::Ended;
                Poll::Ready(None)
            }
            Poll::Pending => this.poll_stall(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Ended) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Ended => SizeHint::with_exact(0),
            _ => self.inner.size_hint(),
        }
    }
}
