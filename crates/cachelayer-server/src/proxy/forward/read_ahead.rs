//! Request bodies read before their request takes a place under the upstream's concurrency
//! limit, as nginx's `proxy_request_buffering` does: a client that trickles its body then
//! holds only its own connection (bounded by `--request-body-timeout`), never a place the
//! upstream's other clients wait for. A body larger than [`READ_AHEAD_BYTES`] streams on
//! after its first part, holding a place while it does.
//!
//! This module must never hold more than [`READ_AHEAD_BYTES`] (and a frame) of one request.

use std::convert::Infallible;

use axum::body::{Body, HttpBody};
use axum::http::Request;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Frame;

/// The most of a request body read before forwarding.
pub(super) const READ_AHEAD_BYTES: usize = 64 * 1024;

/// `request` with its body read ahead: whole when it ends within [`READ_AHEAD_BYTES`], else
/// what was read followed by the rest as it comes. An error is the client's body failing.
pub(super) async fn read_ahead(request: Request<Body>) -> Result<Request<Body>, axum::Error> {
    if request.body().is_end_stream() {
        return Ok(request);
    }
    let (parts, mut body) = request.into_parts();
    let mut read: Vec<Bytes> = Vec::new();
    let mut bytes = 0;
    while bytes <= READ_AHEAD_BYTES {
        let Some(frame) = body.frame().await else {
            return Ok(Request::from_parts(parts, Body::from(joined(read))));
        };
        match frame?.into_data() {
            Ok(data) => {
                bytes += data.len();
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
                return Ok(Request::from_parts(parts, Body::new(body)));
            }
        }
    }
    let first = futures::stream::iter(read.into_iter().map(|data| Ok(Frame::data(data))));
    let body = StreamBody::new(first.chain(BodyStream::new(body)));
    Ok(Request::from_parts(parts, Body::new(body)))
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
        let ready = read_ahead(request(Body::new(StreamBody::new(receiver))))
            .await
            .expect("read");
        assert_eq!(
            ready.body().size_hint().exact(),
            Some(7),
            "whole, in memory"
        );
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
        let ready = read_ahead(request(Body::new(StreamBody::new(receiver))))
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
        let ready = read_ahead(request(Body::empty())).await.expect("read");
        assert!(ready.body().is_end_stream());
    }
}
