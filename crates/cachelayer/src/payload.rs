//! How a value becomes the payload of a stored entry and back: serde types through the
//! cache's serialization (JSON or MessagePack), and types with a binary layout of their own
//! (the HTTP layer's stored responses), which are read without parsing a serialization and,
//! uncompressed, without copying their bytes.
//!
//! The load machinery is generic over these two traits, so one stampede-protected fill serves
//! both kinds. This module must never decide what is stored or for how long; the cache does.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, DecodeFailure, Decoded, Encoded, EntryMeta};
use crate::error::Result;

/// A value that can be written as an entry's payload.
pub(crate) trait EncodePayload {
    /// The envelope holding this value.
    fn encode_payload(&self, codec: &Codec, meta: EntryMeta) -> Result<Encoded>;
}

/// A value that can be read back from an entry.
pub(crate) trait DecodePayload: Sized {
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
