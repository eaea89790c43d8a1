//! What a load can cache ([`Value`]) and how it becomes the payload of a stored entry and
//! back: serde types through the cache's serialization (JSON or MessagePack), and types with a
//! binary layout of their own, [`Raw`] bytes and the HTTP layer's stored responses, which are
//! read without parsing a serialization and, uncompressed, without copying their bytes.
//!
//! The load machinery is generic over [`Value`], so one stampede-protected fill serves every
//! kind. This module must never decide what is stored or for how long; the cache does.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, DecodeFailure, Decoded, Encoded, EntryMeta};
use crate::error::Result;

/// A value the cache's loads (`get_with`, `entry(..)`, and the rest) can hold: any type that
/// is `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`, and [`Raw`] bytes.
/// Sealed: the ways to store a value are this crate's.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be cached",
    label = "not Serialize + DeserializeOwned + Clone + Send + Sync + 'static",
    note = "derive Serialize and Deserialize for it, or cache bytes as `cachelayer::Raw`"
)]
pub trait Value: EncodePayload + DecodePayload + Clone + Send + Sync + 'static {}

impl<T: EncodePayload + DecodePayload + Clone + Send + Sync + 'static> Value for T {}

/// Bytes cached as they are: no serialization when stored, none when read. A read from the
/// in-process store returns a slice of the stored entry, not a copy; from Redis, one copy of
/// the reply. For what is already encoded, such as a response body rendered once:
///
/// ```
/// use std::time::Duration;
/// use cachelayer::{Cache, Raw};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache = Cache::builder().build().unwrap();
/// let render = async { Raw::from(br#"{"id":7}"#.as_slice()) };
/// let body = cache.get_with("product:7", Duration::from_secs(60), render).await;
/// assert_eq!(&body.0[..], br#"{"id":7}"#);
/// # }
/// ```
///
/// The bytes are checked only by the entry's envelope (its magic, version, kind and length),
/// not parsed: whoever can write the store can choose them, as they can any cached value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Raw(pub Bytes);

impl From<Bytes> for Raw {
    fn from(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl From<Vec<u8>> for Raw {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Bytes::from(bytes))
    }
}

impl From<&[u8]> for Raw {
    fn from(bytes: &[u8]) -> Self {
        Self(Bytes::copy_from_slice(bytes))
    }
}

/// A value that can be written as an entry's payload (sealed: in a private module).
pub trait EncodePayload {
    /// The envelope holding this value.
    fn encode_payload(&self, codec: &Codec, meta: EntryMeta) -> Result<Encoded>;
}

/// A value that can be read back from an entry (sealed: in a private module).
pub trait DecodePayload: Sized {
    /// The value in `bytes` (`None`: a cached "not found"), or why it cannot be read.
    fn decode_payload(codec: &Codec, bytes: &Bytes)
    -> Result<Decoded<Option<Self>>, DecodeFailure>;
}

impl<T: Serialize + ?Sized> EncodePayload for T {
    fn encode_payload(&self, codec: &Codec, meta: EntryMeta) -> Result<Encoded> {
        codec.encode(self, meta)
    }
}

impl<T: DeserializeOwned> DecodePayload for T {
    fn decode_payload(
        codec: &Codec,
        bytes: &Bytes,
    ) -> Result<Decoded<Option<Self>>, DecodeFailure> {
        codec.decode_optional(bytes)
    }
}

impl EncodePayload for Raw {
    fn encode_payload(&self, codec: &Codec, meta: EntryMeta) -> Result<Encoded> {
        codec.encode_binary(&self.0, meta)
    }
}

impl DecodePayload for Raw {
    fn decode_payload(
        codec: &Codec,
        bytes: &Bytes,
    ) -> Result<Decoded<Option<Self>>, DecodeFailure> {
        let decoded = codec.decode_binary(bytes)?;
        Ok(Decoded {
            value: decoded.value.map(Raw),
            header: decoded.header,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Uncompressed raw bytes come back as a slice of the stored entry; compressed, equal.
    #[test]
    fn raw_reads_share_the_entry_unless_compressed() {
        let body = Raw(Bytes::from(vec![b'x'; 4096]));
        let meta = EntryMeta::new(Duration::from_secs(60), Duration::ZERO);
        for compress in [false, true] {
            let codec = Codec::default().compressing_binary(compress);
            let stored = body.encode_payload(&codec, meta).expect("encode");
            let read = Raw::decode_payload(&codec, &stored.bytes).expect("decode");
            let value = read.value.expect("a value");
            assert_eq!(value, body);
            let shared = stored.bytes.as_ptr_range().contains(&value.0.as_ptr());
            assert_eq!(shared, !compress);
        }
    }

    /// A cached "not found" (written with the cache's serialization, without a payload)
    /// reads as one for raw bytes too: negative caching works for them.
    #[test]
    fn raw_reads_take_cached_absence() {
        let codec = Codec::default();
        let meta = EntryMeta::new(Duration::from_secs(60), Duration::ZERO);
        let absent = codec.encode_absent(meta);
        let read = Raw::decode_payload(&codec, &absent.bytes).expect("decode");
        assert_eq!(read.value, None);
    }
}
