//! Request bodies read before their request takes a place under the upstream's concurrency
//! limit, as nginx's `proxy_request_buffering` does: a client that trickles its body then
//! holds only its own connection (bounded by `--request-body-timeout`), never a place the
//! upstream's other clients wait for. A body larger than [`READ_AHEAD_BYTES`] streams on
//! after its first part, holding a place while it does; so does one that finds the
//! process-wide [`ReadAhead`] budget spent (many clients each holding a body in memory
//! would otherwise add up without bound).
//!
//! This module must never hold more than [`READ_AHEAD_BYTES`] (and a frame) of one request,
//! nor more than the budget of all of them.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, HttpBody};
use axum::http::Request;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most of a request body read before forwarding.
pub(super) const READ_AHEAD_BYTES: usize = 64 * 1024;
/// The most of all request bodies read ahead at once, in the whole process.
pub(super) const READ_AHEAD_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// The budget's unit: a frame's bytes are counted in whole KiB.
const UNIT: usize = 1024;

/// The process-wide budget of bytes read ahead. Cheap to clone (all clones share it).
#[derive(Debug, Clone)]
pub(super) struct ReadAhead(Arc<Semaphore>);

impl ReadAhead {
    /// A budget of `bytes`.
    pub(super) fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes.div_ceil(UNIT))))
    }

    /// A share for `bytes` more, if the budget has it.
    fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(bytes.div_ceil(UNIT)).ok()?;
        Arc::clone(&self.0).try_acquire_many_owned(units).ok()
    }
}

/// `request` with its body read ahead, and the share of the budget it holds (to be kept
/// until the request has gone upstream): whole when it ends within [`READ_AHEAD_BYTES`] and
/// the budget, else what was read followed by the rest as it comes. An error is the
/// client's body failing.
pub(super) async fn read_ahead(
    request: Request<Body>,
    budget: &ReadAhead,
) -> Result<(Request<Body>, Option<OwnedSemaphorePermit>), axum::Error> {
    if request.body().is_end_stream() {
        return Ok((request, None));
    }
    let (parts, mut body) = request.into_parts();
    let mut read: Vec<Bytes> = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut bytes = 0;
    while bytes <= READ_AHEAD_BYTES {
        let Some(frame) = body.frame().await else {
            let whole = Request::from_parts(parts, Body::from(joined(read)));
            return Ok((whole, held));
        };
        match frame?.into_data() {
            Ok(data) => {
                bytes += data.len();
                let Some(share) = budget.take(data.len()) else {
                    // The budget is spent: stream on from here.
                    read.push(data);
                    break;
                };
                match held.as_mut() {
                    Some(held) => held.merge(share),
                    None => held = Some(share),
                }
                read.push(data);
            }
            Err(trailers) => {
                // Trailers end a body: it is whole.
                let frames = read
                    .into_iter()
                    .map(Frame::data)
                    .chain(std::iter::once(trailers))
                    .map(Ok::<_, Infallible>);
                let body = StreamBody::new(futures::stream::iter(frames));
                return Ok((Request::from_parts(parts, Body::new(body)), held));
            }
        }
    }
    let first = futures::stream::iter(read.into_iter().map(|data| Ok(Frame::data(data))));
    let body = StreamBody::new(first.chain(BodyStream::new(body)));
    Ok((Request::from_parts(parts, Body::new(body)), held))
}

/// The parts of a body as one buffer (without a copy when there is one part).
fn joined(mut parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 {
        return parts.pop().unwrap_or_default();
    }
    let mut whole = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for part in parts {
        whole.extend_from_slice(&part);
    }
    whole.freeze()
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;

    use super::*;

    fn request(body: Body) -> Request<Body> {
        Request::post("http://upstream/x")
            .body(body)
            .expect("request")
    }

    async fn collected(request: Request<Body>) -> Bytes {
        request
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    }

    #[tokio::test]
    async fn a_small_body_is_read_whole_before_forwarding() {
        let (sender, receiver) = mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        for part in ["{\"a\":", "1}"] {
            sender
                .unbounded_send(Ok(Frame::data(Bytes::from(part))))
                .expect("send");
        }
        drop(sender);
        let budget = ReadAhead::new(READ_AHEAD_BUDGET_BYTES);
        let (ready, held) = read_ahead(request(Body::new(StreamBody::new(receiver))), &budget)
            .await
            .expect("read");
        assert_eq!(
            ready.body().size_hint().exact(),
            Some(7),
            "whole, in memory"
        );
        let held = held.map(|share| share.num_permits());
        assert_eq!(held, Some(2), "a KiB a frame");
        assert_eq!(collected(ready).await, "{\"a\":1}");
    }

    #[tokio::test]
    async fn a_large_body_streams_on_after_its_first_part() {
        let (sender, receiver) = mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        let part = Bytes::from(vec![b'x'; 40 * 1024]);
        for _ in 0..2 {
            sender
                .unbounded_send(Ok(Frame::data(part.clone())))
                .expect("send");
        }
        // The rest has not come yet: reading ahead must not wait for it.
        let budget = ReadAhead::new(READ_AHEAD_BUDGET_BYTES);
        let (ready, _held) = read_ahead(request(Body::new(StreamBody::new(receiver))), &budget)
            .await
            .expect("read");
        sender
            .unbounded_send(Ok(Frame::data(Bytes::from("end"))))
            .expect("send");
        drop(sender);
        let body = collected(ready).await;
        assert_eq!(body.len(), 80 * 1024 + 3);
        assert!(body.ends_with(b"end"));
    }

    #[tokio::test]
    async fn an_empty_body_is_left_as_it_is() {
        let budget = ReadAhead::new(READ_AHEAD_BUDGET_BYTES);
        let (ready, held) = read_ahead(request(Body::empty()), &budget)
            .await
            .expect("read");
        assert!(ready.body().is_end_stream());
        assert!(held.is_none());
    }

    /// Past the process-wide budget a body streams on instead of being held, and the budget
    /// comes back when a request's share is dropped.
    #[tokio::test]
    async fn the_budget_bounds_what_all_requests_hold() {
        let budget = ReadAhead::new(4 * 1024);
        let (sender, receiver) = mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        for _ in 0..2 {
            sender
                .unbounded_send(Ok(Frame::data(Bytes::from(vec![b'x'; 3 * 1024]))))
                .expect("send");
        }
        // The body has not ended: only the budget can stop the reading.
        let (ready, held) = read_ahead(request(Body::new(StreamBody::new(receiver))), &budget)
            .await
            .expect("read");
        assert_eq!(held.as_ref().map(|share| share.num_permits()), Some(3));
        assert_eq!(
            budget.0.available_permits(),
            1,
            "the second frame did not fit"
        );
        drop(sender);
        assert_eq!(collected(ready).await.len(), 6 * 1024, "nothing lost");
        drop(held);
        assert_eq!(budget.0.available_permits(), 4);
    }
}
