//! Response bodies through the layer: one boxed body type, stored bytes as a body, and
//! buffering an origin's body up to a limit.
//!
//! This module must never hold more than the limit of a body in memory: past it, what was
//! read is replayed and the rest streams.

use std::convert::Infallible;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};

/// Boxed error of the bodies this layer returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response through the layer: stored bytes, or the origin's body.
pub type CacheBody = UnsyncBoxBody<Bytes, BoxError>;

/// An origin's body, read as far as the limit allows.
pub(super) enum Buffered {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Over the limit (or with trailers, or failed): what was read, then the rest, as it
    /// comes.
    Streaming(CacheBody),
}

/// Read a body up to `max` bytes; past that, hand back a body that replays what was read and
/// streams the rest, so memory stays bounded by `max` per response.
pub(super) async fn buffer<B>(body: B, max: usize) -> Buffered
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut collected = BytesMut::new();
    loop {
        let stop = match body.frame().await {
            None => return Buffered::Complete(collected.freeze()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if collected.len() + data.len() <= max => {
                    collected.extend_from_slice(&data);
                    continue;
                }
                Ok(data) => Ok(Frame::data(data)),
                Err(trailers) => Ok(trailers),
            },
            Some(Err(err)) => Err(err.into()),
        };
        let read = Frame::data(collected.freeze());
        let head = futures::stream::iter([Ok::<_, BoxError>(read), stop]);
        let rest = BodyStream::new(body).map(|frame| frame.map_err(Into::into));
        return Buffered::Streaming(StreamBody::new(head.chain(rest)).boxed_unsync());
    }
}

/// A response body of the service behind the layer: bytes, with errors the layer can box,
/// that may move to another task (collapsed calls and refreshes run on their own).
pub(super) trait OriginBody:
    Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> OriginBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// Any body, boxed as the layer's.
pub(super) fn boxed<B: OriginBody>(body: B) -> CacheBody {
    body.map_err(Into::into).boxed_unsync()
}

/// Bytes in memory as the layer's body.
pub(super) fn full_body(bytes: Bytes) -> CacheBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}
