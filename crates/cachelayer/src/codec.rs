//! The stored-value envelope: a small versioned header, then the serialized (and perhaps
//! compressed) payload. One concept in one file, so the wire format is read in one place;
//! its unit tests take it past 600 lines.
//!
//! Layout of format versions 1 and 2 (30 bytes of header, integers big-endian):
//!
//! | bytes | field | values |
//! |---|---|---|
//! | 0..2 | magic | `CL` |
//! | 2 | version | `1` or `2` |
//! | 3 | serialization | `j` JSON, `m` MessagePack (named fields), `b` the value's own binary layout |
//! | 4 | compression | `-` none, `z` zstd |
//! | 5 | flags | version 1: 0; version 2: bit 0 kept past its TTL for stale serving, bit 1 a cached "not found" |
//! | 6..14 | stored at | Unix time, milliseconds |
//! | 14..22 | TTL | fresh lifetime in milliseconds (the TTL asked for, after jitter) |
//! | 22..26 | compute time | milliseconds the value took to load (for early refresh) |
//! | 26..30 | payload length | uncompressed payload bytes |
//!
//! Version 2 exists so that a reader which does not know the flags never mistakes a stale or
//! "not found" entry for a fresh value: entries with a flag set are written as version 2,
//! which such a reader treats as unreadable (a miss); entries without flags are still written
//! as version 1, which every reader understands. This reader reads both, and ignores flag
//! bits it does not know (a change older readers must not ignore takes a new version).
//!
//! An entry without bit 0 is fresh for as long as the store keeps it; one with bit 0 is fresh
//! until `stored at + TTL` by the writer's clock and stale after, until the store drops it. A
//! "not found" entry (bit 1) has an empty payload.
//!
//! A `b` payload is bytes laid out by the value's type itself (the HTTP layer's stored
//! responses, [`Payload`]): its readers take it as a slice of the stored bytes, with no copy
//! when it is not compressed. A typed reader finding one, or a binary reader finding a
//! serialized payload (an entry of an older release), reads a miss ([`DecodeFailure::Layout`]).
//!
//! Everything needed to read an entry is in its own header, so reads never depend on the
//! reader's current settings. Decoding must never panic and never allocate more than the
//! configured maximum value size, whatever bytes it is handed: the store is outside our
//! trust boundary (another deploy, another type, or plain garbage may be there).

use std::borrow::Cow;
use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

/// Magic bytes that open every envelope.
pub const MAGIC: [u8; 2] = *b"CL";
/// The newest envelope format version this build writes and reads (it reads every version
/// from 1 up to this one, and writes version 1 for entries without flags).
pub const FORMAT_VERSION: u8 = 2;
/// The format version of entries that carry no flags, readable by every release.
const PLAIN_FORMAT_VERSION: u8 = 1;
/// Header size of format versions 1 and 2.
pub const HEADER_LEN: usize = 30;
/// Default payload size from which values are compressed.
pub const DEFAULT_COMPRESSION_THRESHOLD_BYTES: usize = 1024;
/// Default zstd level: level 1 gets most of the ratio at a fraction of the CPU.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Flag bit: the store keeps the entry past its TTL, so readers can serve it stale.
const FLAG_KEPT_STALE: u8 = 0b01;
/// Flag bit: the entry records that the value does not exist (negative caching).
const FLAG_ABSENT: u8 = 0b10;
/// Default bound on one value's uncompressed payload, on write and on read.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

/// How a payload is serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Serialization {
    /// JSON: readable with `redis-cli` and by services in any language. The default.
    Json,
    /// MessagePack with named fields: less CPU, tolerant of added or removed fields.
    #[serde(alias = "msgpack")]
    MessagePack,
    /// The value's own binary layout: how values that are not serde types (the HTTP layer's
    /// stored responses) are written. Not a choice for typed values: [`Codec::new`] and
    /// the cache builder refuse it.
    #[serde(skip)]
    Binary,
}

impl Serialization {
    fn tag(self) -> u8 {
        match self {
            Serialization::Json => b'j',
            Serialization::MessagePack => b'm',
            Serialization::Binary => b'b',
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            b'j' => Some(Serialization::Json),
            b'm' => Some(Serialization::MessagePack),
            b'b' => Some(Serialization::Binary),
            _ => None,
        }
    }
}

/// How a payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Stored as serialized.
    None,
    /// zstd frame.
    Zstd,
}

impl Compression {
    fn tag(self) -> u8 {
        match self {
            Compression::None => b'-',
            Compression::Zstd => b'z',
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            b'-' => Some(Compression::None),
            b'z' => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Why stored bytes could not be read. Every one of these is treated as a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeFailure {
    /// Shorter than a header.
    TooShort,
    /// Does not start with [`MAGIC`]: not written by cachelayer.
    BadMagic,
    /// Written by a newer (or unknown) envelope format.
    UnknownVersion,
    /// Unknown serialization tag.
    UnknownSerialization,
    /// Unknown compression tag.
    UnknownCompression,
    /// The stored-at time cannot be represented on this platform.
    BadTimestamp,
    /// Declares a payload larger than the configured maximum.
    TooLarge,
    /// The payload is shorter or longer than the header says.
    Truncated,
    /// The compressed payload is corrupt.
    Decompress,
    /// The payload does not have the requested type's shape.
    Deserialize,
    /// The entry is a cached "not found" (negative caching): there is no value to decode.
    /// Not damage: read such entries with [`Codec::decode_optional`].
    Absent,
    /// The payload is laid out for another kind of reader: a binary layout read as a typed
    /// value, or a serialized value (an older release's stored response) read as binary.
    Layout,
}

impl DecodeFailure {
    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeFailure::TooShort => "too_short",
            DecodeFailure::BadMagic => "bad_magic",
            DecodeFailure::UnknownVersion => "unknown_version",
            DecodeFailure::UnknownSerialization => "unknown_serialization",
            DecodeFailure::UnknownCompression => "unknown_compression",
            DecodeFailure::BadTimestamp => "bad_timestamp",
            DecodeFailure::TooLarge => "too_large",
            DecodeFailure::Truncated => "truncated",
            DecodeFailure::Decompress => "decompress",
            DecodeFailure::Deserialize => "deserialize",
            DecodeFailure::Absent => "absent",
            DecodeFailure::Layout => "layout",
        }
    }
}

/// What the header of a stored entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// How the payload is serialized.
    pub serialization: Serialization,
    /// How the payload is compressed.
    pub compression: Compression,
    /// When the entry was written (millisecond precision).
    pub stored_at: SystemTime,
    /// The fresh lifetime: the TTL the writer asked for, after jitter.
    pub ttl: Duration,
    /// How long the value took to compute.
    pub compute_time: Duration,
    /// Uncompressed payload length.
    pub payload_len: u32,
    /// The store keeps the entry past `ttl`, for stale serving.
    pub kept_stale: bool,
    /// The entry is a cached "not found" with no payload.
    pub absent: bool,
}

impl EnvelopeHeader {
    /// Parse and check the header of stored bytes without touching the payload.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeFailure> {
        let header: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(DecodeFailure::TooShort)?;
        if header[0..2] != MAGIC {
            return Err(DecodeFailure::BadMagic);
        }
        let version = header[2];
        if !(PLAIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(DecodeFailure::UnknownVersion);
        }
        // Version 1 writers left the flags byte zero; nothing else may be read into it.
        let flags = if version == PLAIN_FORMAT_VERSION {
            0
        } else {
            header[5]
        };
        let serialization =
            Serialization::from_tag(header[3]).ok_or(DecodeFailure::UnknownSerialization)?;
        let compression =
            Compression::from_tag(header[4]).ok_or(DecodeFailure::UnknownCompression)?;
        let u64_at = |at: usize| {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(&header[at..at + 8]);
            u64::from_be_bytes(buf)
        };
        let u32_at = |at: usize| {
            let mut buf = [0u8; 4];
            buf.copy_from_slice(&header[at..at + 4]);
            u32::from_be_bytes(buf)
        };
        // Checked: on some platforms SystemTime cannot hold far-future stamps, and these
        // bytes are untrusted.
        let stored_at = UNIX_EPOCH
            .checked_add(Duration::from_millis(u64_at(6)))
            .ok_or(DecodeFailure::BadTimestamp)?;
        Ok(Self {
            serialization,
            compression,
            stored_at,
            ttl: Duration::from_millis(u64_at(14)),
            compute_time: Duration::from_millis(u64::from(u32_at(22))),
            payload_len: u32_at(26),
            kept_stale: flags & FLAG_KEPT_STALE != 0,
            absent: flags & FLAG_ABSENT != 0,
        })
    }

    fn write(&self, out: &mut BytesMut) {
        let mut flags = 0;
        if self.kept_stale {
            flags |= FLAG_KEPT_STALE;
        }
        if self.absent {
            flags |= FLAG_ABSENT;
        }
        out.put_slice(&MAGIC);
        out.put_u8(if flags == 0 {
            PLAIN_FORMAT_VERSION
        } else {
            FORMAT_VERSION
        });
        out.put_u8(self.serialization.tag());
        out.put_u8(self.compression.tag());
        out.put_u8(flags);
        out.put_u64(saturating_millis(
            self.stored_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        ));
        out.put_u64(saturating_millis(self.ttl));
        out.put_u32(u32::try_from(self.compute_time.as_millis()).unwrap_or(u32::MAX));
        out.put_u32(self.payload_len);
    }
}

fn saturating_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl EnvelopeHeader {
    /// Where the entry stands at `now` by the writer's clock: fresh (with the time left) or
    /// stale (with how long ago it expired). An entry not kept for stale serving is fresh for
    /// as long as the store holds it, so clock skew between processes cannot make it stale.
    pub fn freshness(&self, now: SystemTime) -> Freshness {
        let age = now.duration_since(self.stored_at).unwrap_or_default();
        match self.ttl.checked_sub(age) {
            Some(left) if !left.is_zero() => Freshness::Fresh { left },
            _ if !self.kept_stale => Freshness::Fresh {
                left: Duration::ZERO,
            },
            _ => Freshness::Stale {
                by: age.saturating_sub(self.ttl),
            },
        }
    }

    /// Whether the entry is fresh now. Only an entry kept for stale serving can be past its
    /// fresh TTL, so the clock is read for those alone (a cost on every hit otherwise).
    pub(crate) fn is_fresh_now(&self) -> bool {
        !self.kept_stale || matches!(self.freshness(SystemTime::now()), Freshness::Fresh { .. })
    }
}

/// Whether an entry may be served as fresh; see [`EnvelopeHeader::freshness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within its TTL; `left` until it expires (zero when only the store's TTL governs).
    Fresh {
        /// Time left before expiry.
        left: Duration,
    },
    /// Past its TTL, kept for stale serving.
    Stale {
        /// How long ago it expired (stale by this much).
        by: Duration,
    },
}

/// Facts about one entry being written, recorded in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// The TTL asked for.
    pub ttl: Duration,
    /// How long the value took to compute (zero when unknown).
    pub compute_time: Duration,
    /// The store keeps the entry past `ttl` for stale serving.
    pub kept_stale: bool,
}

impl EntryMeta {
    /// An entry fresh for `ttl`, which took `compute_time` to load, not kept stale.
    pub const fn new(ttl: Duration, compute_time: Duration) -> Self {
        Self {
            ttl,
            compute_time,
            kept_stale: false,
        }
    }
}

/// An encoded entry, ready for a store.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Header and payload.
    pub bytes: Bytes,
    /// Serialized payload size before compression.
    pub payload_len: usize,
    /// How the payload was stored.
    pub compression: Compression,
}

/// A decoded entry.
#[derive(Debug, Clone)]
pub struct Decoded<T> {
    /// The value.
    pub value: T,
    /// Its header.
    pub header: EnvelopeHeader,
}

/// Encodes typed values into envelopes and back.
///
/// ```
/// use std::time::Duration;
/// use cachelayer::__private::codec::{Codec, Compression, EntryMeta};
///
/// let codec = Codec::default();
/// let meta = EntryMeta::new(Duration::from_secs(60), Duration::ZERO);
/// let small = codec.encode(&"tiny", meta).unwrap();
/// assert_eq!(small.compression, Compression::None);
/// let big = codec.encode(&"x".repeat(4096), meta).unwrap();
/// assert_eq!(big.compression, Compression::Zstd);
/// let back: String = codec.decode(&big.bytes).unwrap().value;
/// assert_eq!(back.len(), 4096);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    serialization: Serialization,
    compression_threshold: Option<usize>,
    zstd_level: i32,
    max_value_bytes: usize,
    /// Whether binary payloads are compressed too (see [`Codec::compressing_binary`]).
    compress_binary: bool,
}

impl Default for Codec {
    fn default() -> Self {
        Self {
            serialization: Serialization::Json,
            compression_threshold: Some(DEFAULT_COMPRESSION_THRESHOLD_BYTES),
            zstd_level: DEFAULT_ZSTD_LEVEL,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            compress_binary: true,
        }
    }
}

thread_local! {
    // Reused contexts are much faster than one-shot calls for values of a few KB.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

impl Codec {
    /// A codec with the given settings; `compression_threshold` of `None` turns compression
    /// off. Fails on a zstd level outside 1..=22, a zero maximum, or
    /// [`Serialization::Binary`] (a layout, not a serialization for typed values).
    pub fn new(
        serialization: Serialization,
        compression_threshold: Option<usize>,
        zstd_level: i32,
        max_value_bytes: usize,
    ) -> Result<Self> {
        if !(1..=22).contains(&zstd_level) {
            return Err(Error::config(format!(
                "zstd level {zstd_level} is out of range; use 1 (fast) to 22 (small)"
            )));
        }
        if max_value_bytes == 0 || u32::try_from(max_value_bytes).is_err() {
            return Err(Error::config(
                "max_value_bytes must be between 1 and 4 GiB - 1",
            ));
        }
        if serialization == Serialization::Binary {
            return Err(Error::config(
                "serialization `binary` is the HTTP layer's own layout; use json or messagepack",
            ));
        }
        Ok(Self {
            serialization,
            compression_threshold,
            zstd_level,
            max_value_bytes,
            compress_binary: true,
        })
    }

    /// The same codec, compressing binary payloads or not. A cache over the in-process store
    /// keeps them uncompressed, so that every read of one shares its bytes instead of
    /// decompressing a copy.
    #[must_use]
    pub fn compressing_binary(self, compress: bool) -> Self {
        Self {
            compress_binary: compress,
            ..self
        }
    }

    /// The serialization used for new entries.
    pub fn serialization(&self) -> Serialization {
        self.serialization
    }

    /// Serialize, compress when worth it, and prefix the header.
    pub fn encode<T: Serialize + ?Sized>(&self, value: &T, meta: EntryMeta) -> Result<Encoded> {
        let payload = self.serialize(value)?;
        self.envelope(self.serialization, &payload, meta, true)
    }

    /// Prefix a payload in the value's own binary layout with the header, compressing it
    /// when worth it (and when this codec compresses binary payloads).
    pub fn encode_binary(&self, payload: &[u8], meta: EntryMeta) -> Result<Encoded> {
        self.envelope(Serialization::Binary, payload, meta, self.compress_binary)
    }

    fn envelope(
        &self,
        serialization: Serialization,
        payload: &[u8],
        meta: EntryMeta,
        may_compress: bool,
    ) -> Result<Encoded> {
        if payload.len() > self.max_value_bytes {
            return Err(Error::new(
                ErrorKind::Encode,
                format!(
                    "value serializes to {} bytes, over max_value_bytes ({}); raise the limit or cache a smaller value",
                    payload.len(),
                    self.max_value_bytes
                ),
            ));
        }
        let compressed = match self.compression_threshold {
            Some(threshold) if may_compress && payload.len() >= threshold => self.compress(payload),
            _ => None,
        };
        let (compression, body) = match &compressed {
            Some(smaller) => (Compression::Zstd, smaller.as_slice()),
            None => (Compression::None, payload),
        };
        let header = EnvelopeHeader {
            serialization,
            compression,
            stored_at: SystemTime::now(),
            ttl: meta.ttl,
            compute_time: meta.compute_time,
            // Fits: checked against max_value_bytes, which fits in u32.
            payload_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            kept_stale: meta.kept_stale,
            absent: false,
        };
        let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
        header.write(&mut out);
        out.put_slice(body);
        Ok(Encoded {
            bytes: out.freeze(),
            payload_len: payload.len(),
            compression,
        })
    }

    /// An entry recording that a value does not exist (negative caching): a header only.
    pub fn encode_absent(&self, meta: EntryMeta) -> Encoded {
        let header = EnvelopeHeader {
            serialization: self.serialization,
            compression: Compression::None,
            stored_at: SystemTime::now(),
            ttl: meta.ttl,
            compute_time: meta.compute_time,
            payload_len: 0,
            kept_stale: meta.kept_stale,
            absent: true,
        };
        let mut out = BytesMut::with_capacity(HEADER_LEN);
        header.write(&mut out);
        Encoded {
            bytes: out.freeze(),
            payload_len: 0,
            compression: Compression::None,
        }
    }

    /// Check the header, decompress within bounds, and deserialize as `T`. A cached "not
    /// found" is [`DecodeFailure::Absent`]; use [`decode_optional`](Self::decode_optional)
    /// where those are expected.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<Decoded<T>, DecodeFailure> {
        let decoded = self.decode_optional(bytes)?;
        match decoded.value {
            Some(value) => Ok(Decoded {
                value,
                header: decoded.header,
            }),
            None => Err(DecodeFailure::Absent),
        }
    }

    /// Like [`decode`](Self::decode), with a cached "not found" decoded as `None`.
    pub fn decode_optional<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
    ) -> Result<Decoded<Option<T>>, DecodeFailure> {
        let (header, payload) = self.open(bytes)?;
        let Some(payload) = payload else {
            return Ok(Decoded {
                value: None,
                header,
            });
        };
        let value = match header.serialization {
            Serialization::Json => serde_json::from_slice(&payload).ok(),
            Serialization::MessagePack => rmp_serde::from_slice(&payload).ok(),
            Serialization::Binary => return Err(DecodeFailure::Layout),
        }
        .ok_or(DecodeFailure::Deserialize)?;
        Ok(Decoded {
            value: Some(value),
            header,
        })
    }

    /// The payload of an entry in a binary layout (`None`: a cached "not found"): a slice of
    /// `bytes` itself unless it was compressed.
    pub fn decode_binary(&self, bytes: &Bytes) -> Result<Decoded<Option<Bytes>>, DecodeFailure> {
        let (header, payload) = self.open(bytes)?;
        // A cached "not found" has no payload, so no layout: any reader takes it.
        if payload.is_some() && header.serialization != Serialization::Binary {
            return Err(DecodeFailure::Layout);
        }
        let value = payload.map(|payload| match payload {
            Cow::Borrowed(slice) => bytes.slice_ref(slice),
            Cow::Owned(vec) => Bytes::from(vec),
        });
        Ok(Decoded { value, header })
    }

    /// The same entry with its payload stored uncompressed, for a copy kept in this process's
    /// memory, which every read would otherwise decompress again. `None` when there is nothing
    /// to gain: the entry is not compressed, or is unreadable (a copy of the stored bytes then
    /// fails its reads as the original does).
    pub fn uncompressed(&self, bytes: &[u8]) -> Option<Bytes> {
        let (mut header, payload) = self.open(bytes).ok()?;
        if header.compression != Compression::Zstd {
            return None;
        }
        let payload = payload?;
        header.compression = Compression::None;
        let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
        header.write(&mut out);
        out.put_slice(&payload);
        Some(out.freeze())
    }

    /// The checked header and the payload, decompressed within bounds (`None`: a cached "not
    /// found").
    fn open<'a>(&self, bytes: &'a [u8]) -> Result<(EnvelopeHeader, Payload<'a>), DecodeFailure> {
        let header = EnvelopeHeader::parse(bytes)?;
        if header.absent {
            return if bytes.len() == HEADER_LEN && header.payload_len == 0 {
                Ok((header, None))
            } else {
                Err(DecodeFailure::Truncated)
            };
        }
        let declared = header.payload_len as usize;
        if declared > self.max_value_bytes {
            return Err(DecodeFailure::TooLarge);
        }
        let body = &bytes[HEADER_LEN..];
        let payload = match header.compression {
            Compression::None => Cow::Borrowed(body),
            Compression::Zstd => Cow::Owned(decompress_exact(body, declared)?),
        };
        if payload.len() != declared {
            return Err(DecodeFailure::Truncated);
        }
        Ok((header, Some(payload)))
    }

    fn serialize<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        let result = match self.serialization {
            Serialization::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            // Named fields: positional MessagePack breaks when a struct gains or loses a field.
            Serialization::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
            // Refused by `new`; a typed value has no binary layout of its own.
            Serialization::Binary => Err("binary is not a serialization".to_owned()),
        };
        result.map_err(|reason| {
            Error::new(
                ErrorKind::Encode,
                format!("cannot serialize the value for the cache: {reason}"),
            )
        })
    }

    /// The compressed payload, or `None` when compression fails or does not make it smaller
    /// (already-compressed data such as images would only cost CPU on every read).
    fn compress(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let level = self.zstd_level;
        let compressed = COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
            }
            slot.as_mut()?.1.compress(payload).ok()
        })?;
        if compressed.len() < payload.len() {
            metrics::histogram!(crate::telemetry::COMPRESSION_RATIO)
                .record(payload.len() as f64 / compressed.len().max(1) as f64);
            Some(compressed)
        } else {
            None
        }
    }
}

/// An entry's payload: borrowed from the stored bytes, or decompressed (`None`: a cached
/// "not found").
type Payload<'a> = Option<Cow<'a, [u8]>>;

/// Decompress into a buffer of exactly the declared size: the declared size was checked
/// against the maximum, so a decompression bomb cannot allocate more, and a frame that
/// decodes to any other size is rejected.
fn decompress_exact(body: &[u8], declared: usize) -> Result<Vec<u8>, DecodeFailure> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        let decompressor = slot.as_mut().ok_or(DecodeFailure::Decompress)?;
        let out = decompressor
            .decompress(body, declared)
            .map_err(|_| DecodeFailure::Decompress)?;
        if out.len() == declared {
            Ok(out)
        } else {
            Err(DecodeFailure::Truncated)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> EntryMeta {
        EntryMeta::new(Duration::from_secs(300), Duration::from_millis(42))
    }

    /// `binary` is a layout for values that have their own, not a serialization a cache can
    /// be configured with.
    #[test]
    fn binary_is_not_a_serialization_for_typed_values() {
        let refused = Codec::new(Serialization::Binary, None, 1, 1024);
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::Config));
        let parsed: std::result::Result<Serialization, _> = serde_json::from_str("\"binary\"");
        assert!(parsed.is_err());
    }

    /// The header records what was asked for and is read back without the payload.
    #[test]
    fn header_round_trip() {
        let encoded = Codec::default()
            .encode(&vec![1, 2, 3], meta())
            .expect("encode");
        let header = EnvelopeHeader::parse(&encoded.bytes).expect("header");
        assert_eq!(header.ttl, Duration::from_secs(300));
        assert_eq!(header.compute_time, Duration::from_millis(42));
        assert_eq!(header.serialization, Serialization::Json);
        assert_eq!(header.compression, Compression::None);
        assert_eq!(&encoded.bytes[HEADER_LEN..], b"[1,2,3]");
        let age = SystemTime::now()
            .duration_since(header.stored_at)
            .expect("past");
        assert!(age < Duration::from_secs(5));
    }

    /// Flags round-trip, and a "not found" entry decodes as `None` (and as `Absent` for
    /// readers that expect a value).
    #[test]
    fn flags_and_absent_entries_round_trip() {
        let codec = Codec::default();
        let kept = EntryMeta {
            kept_stale: true,
            ..meta()
        };
        let value = codec.encode(&5u8, kept).expect("encode");
        let header = EnvelopeHeader::parse(&value.bytes).expect("header");
        assert!(header.kept_stale && !header.absent);
        // Flagged entries are version 2, so readers that predate flags treat them as misses;
        // plain ones stay version 1, readable by every release.
        assert_eq!(value.bytes[2], 2);
        assert_eq!(codec.encode(&5u8, meta()).expect("encode").bytes[2], 1);
        // A version 1 entry's flags byte is never interpreted.
        let mut v1 = codec.encode(&5u8, meta()).expect("encode").bytes.to_vec();
        v1[5] = 0xff;
        let header = EnvelopeHeader::parse(&v1).expect("header");
        assert!(!header.kept_stale && !header.absent);

        let absent = codec.encode_absent(meta());
        assert_eq!(absent.bytes.len(), HEADER_LEN);
        let decoded = codec.decode_optional::<u8>(&absent.bytes).expect("absent");
        assert_eq!(decoded.value, None);
        assert!(decoded.header.absent && !decoded.header.kept_stale);
        assert_eq!(
            codec.decode::<u8>(&absent.bytes).err(),
            Some(DecodeFailure::Absent)
        );
        // An "absent" entry with a payload is damage, not a "not found".
        let mut padded = absent.bytes.to_vec();
        padded.push(b'1');
        assert_eq!(
            codec.decode_optional::<u8>(&padded).err(),
            Some(DecodeFailure::Truncated)
        );
    }

    /// Entries kept stale turn stale at `stored_at + ttl`; others stay fresh while stored.
    #[test]
    fn freshness_follows_the_writer_clock_only_for_entries_kept_stale() {
        let stored_at = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut header =
            EnvelopeHeader::parse(&Codec::default().encode(&1, meta()).expect("e").bytes)
                .expect("header");
        header.stored_at = stored_at;
        header.ttl = Duration::from_secs(10);
        let at = |secs| stored_at + Duration::from_secs(secs);
        assert_eq!(
            header.freshness(at(4)),
            Freshness::Fresh {
                left: Duration::from_secs(6)
            }
        );
        assert_eq!(
            header.freshness(at(15)),
            Freshness::Fresh {
                left: Duration::ZERO
            }
        );
        header.kept_stale = true;
        assert_eq!(
            header.freshness(at(15)),
            Freshness::Stale {
                by: Duration::from_secs(5)
            }
        );
        // A writer clock ahead of ours: the entry is simply fresh.
        assert!(matches!(
            header.freshness(stored_at - Duration::from_secs(3)),
            Freshness::Fresh { .. }
        ));
    }

    /// A compressed entry's uncompressed copy decodes to the same value and header; an
    /// entry that is not compressed, or unreadable, has none.
    #[test]
    fn uncompressed_copies_read_the_same() {
        let codec = Codec::default();
        let big = "x".repeat(4096);
        let stored = codec.encode(&big, meta()).expect("encode");
        assert_eq!(stored.compression, Compression::Zstd);
        let copy = codec.uncompressed(&stored.bytes).expect("a copy");
        let original: Decoded<String> = codec.decode(&stored.bytes).expect("decode");
        let decoded: Decoded<String> = codec.decode(&copy).expect("decode the copy");
        assert_eq!(decoded.value, big);
        assert_eq!(decoded.header.compression, Compression::None);
        assert_eq!(
            (
                decoded.header.stored_at,
                decoded.header.ttl,
                decoded.header.kept_stale
            ),
            (
                original.header.stored_at,
                original.header.ttl,
                original.header.kept_stale
            )
        );
        let small = codec.encode(&"tiny", meta()).expect("encode");
        assert_eq!(codec.uncompressed(&small.bytes), None);
        assert_eq!(codec.uncompressed(b"garbage"), None);
    }

    /// Incompressible payloads are stored as they are, even above the threshold.
    #[test]
    fn incompressible_payload_is_not_compressed() {
        let codec = Codec::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let noise: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
        let zstd_out = zstd::bulk::compress(&noise, 1).expect("zstd");
        assert!(zstd_out.len() >= noise.len(), "noise should not compress");
        assert!(codec.compress(&noise).is_none());
    }

    /// A zstd frame that expands beyond the declared size is refused, not allocated.
    #[test]
    fn decompression_is_bounded_by_declared_size() {
        let bomb = zstd::bulk::compress(&vec![0u8; 8 * 1024 * 1024], 1).expect("zstd");
        assert!(bomb.len() < 4096);
        assert!(decompress_exact(&bomb, 1024).is_err());
    }

    /// A payload whose declared size exceeds the reader's maximum is refused before any work.
    #[test]
    fn oversized_declaration_is_too_large() {
        let big = Codec::default()
            .encode(&"y".repeat(5000), meta())
            .expect("encode");
        let strict = Codec::new(Serialization::Json, Some(1024), 1, 1000).expect("codec");
        assert_eq!(
            strict.decode::<String>(&big.bytes).err(),
            Some(DecodeFailure::TooLarge)
        );
    }

    /// Writing more than the maximum is an encode error, so nothing unreadable is stored.
    #[test]
    fn oversized_value_is_refused_on_write() {
        let strict = Codec::new(Serialization::Json, None, 1, 100).expect("codec");
        let err = strict
            .encode(&"z".repeat(200), meta())
            .expect_err("too big");
        assert_eq!(err.kind(), ErrorKind::Encode);
    }

    /// Each corruption maps to its own reason.
    #[test]
    fn corruption_reasons() {
        let codec = Codec::default();
        let good = codec
            .encode(&"hello", meta())
            .expect("encode")
            .bytes
            .to_vec();
        assert_eq!(
            codec.decode::<String>(b"CL").err(),
            Some(DecodeFailure::TooShort)
        );
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(
            codec.decode::<String>(&bad).err(),
            Some(DecodeFailure::BadMagic)
        );
        let mut bad = good.clone();
        bad[2] = 9;
        assert_eq!(
            codec.decode::<String>(&bad).err(),
            Some(DecodeFailure::UnknownVersion)
        );
        let mut bad = good.clone();
        bad[3] = b'?';
        assert_eq!(
            codec.decode::<String>(&bad).err(),
            Some(DecodeFailure::UnknownSerialization)
        );
        let mut bad = good.clone();
        bad[4] = b'?';
        assert_eq!(
            codec.decode::<String>(&bad).err(),
            Some(DecodeFailure::UnknownCompression)
        );
        let truncated = &good[..good.len() - 1];
        assert_eq!(
            codec.decode::<String>(truncated).err(),
            Some(DecodeFailure::Truncated)
        );
        assert_eq!(
            codec.decode::<u64>(&good).err(),
            Some(DecodeFailure::Deserialize)
        );
    }

    /// Entries are read with the serialization recorded in them, not the reader's setting.
    #[test]
    fn reads_use_the_recorded_serialization() {
        let writer = Codec::new(Serialization::MessagePack, None, 1, 1024).expect("codec");
        let encoded = writer.encode(&("a", 1u8), meta()).expect("encode");
        let reader = Codec::default();
        assert_eq!(reader.serialization(), Serialization::Json);
        let decoded: (String, u8) = reader.decode(&encoded.bytes).expect("decode").value;
        assert_eq!(decoded, ("a".to_owned(), 1));
    }
}
