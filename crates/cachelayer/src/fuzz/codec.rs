//! Fuzz target: the envelope decoder (`crate::codec`), which reads whatever bytes a store
//! holds (another release, another type, another program, or garbage) into typed values,
//! binary payloads or cached "not found" entries, decompressing zstd payloads on the way.
//!
//! The envelope has no checksum, so what is checked is what its header makes checkable:
//! decoding agrees with the header it parsed, a payload is exactly its declared length
//! (so a cut or extended entry is refused, and a compressed one never yields another
//! value), nothing declared past the reader's maximum is read, and what was written reads
//! back the same. This module must never weaken those checks to hide a finding (one it
//! cannot fix is a `KNOWN_*` exception that describes it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::mutate;
use crate::codec::{
    Codec, Compression, DecodeFailure, EntryMeta, EnvelopeHeader, HEADER_LEN, Serialization,
};

/// A reader's maximum in the targets that check it: small, so declarations past it are
/// common.
const SMALL_MAX_BYTES: usize = 4096;

/// A value with most serde shapes: what typed readers decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    id: u64,
    delta: i64,
    name: String,
    bytes: Vec<u8>,
    flag: bool,
    letter: char,
    score: Option<i32>,
    tags: Vec<String>,
    attrs: std::collections::BTreeMap<String, u16>,
    kind: Kind,
    pair: (u8, String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Kind {
    Unit,
    Tuple(u8, bool),
    Named { text: String, nested: Vec<Kind> },
}

fn kind() -> impl Strategy<Value = Kind> {
    let leaf = prop_oneof![
        Just(Kind::Unit),
        (any::<u8>(), any::<bool>()).prop_map(|(a, b)| Kind::Tuple(a, b)),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        (".{0,16}", vec(inner, 0..4)).prop_map(|(text, nested)| Kind::Named { text, nested })
    })
}

fn doc() -> impl Strategy<Value = Doc> {
    (
        (
            any::<u64>(),
            any::<i64>(),
            ".{0,40}",
            vec(any::<u8>(), 0..64),
        ),
        (any::<bool>(), any::<char>(), any::<Option<i32>>()),
        (
            vec(".{0,12}", 0..8),
            btree_map(".{0,8}", any::<u16>(), 0..8),
            kind(),
            (any::<u8>(), ".{0,12}"),
        ),
    )
        .prop_map(
            |((id, delta, name, bytes), (flag, letter, score), (tags, attrs, kind, pair))| Doc {
                id,
                delta,
                name,
                bytes,
                flag,
                letter,
                score,
                tags,
                attrs,
                kind,
                pair,
            },
        )
}

/// A doc, sometimes made larger and repetitive so that it is compressed.
fn big_or_small_doc() -> impl Strategy<Value = Doc> {
    (doc(), prop::bool::weighted(0.3), 0usize..3000).prop_map(|(mut doc, grow, by)| {
        if grow {
            doc.name = doc
                .name
                .repeat(2)
                .chars()
                .chain("ab".repeat(by).chars())
                .collect();
        }
        doc
    })
}

/// A writer codec: either serialization, any threshold, a few zstd levels.
fn codec() -> impl Strategy<Value = Codec> {
    (
        prop_oneof![Just(Serialization::Json), Just(Serialization::MessagePack)],
        prop_oneof![Just(None), (0usize..2048).prop_map(Some)],
        prop::sample::select(vec![1, 2, 3, 7, 19]),
    )
        .prop_map(|(serialization, threshold, level)| {
            Codec::new(serialization, threshold, level, 1 << 20).expect("a valid codec")
        })
}

/// Entry facts at millisecond precision (what the header keeps), over their whole range.
fn meta() -> impl Strategy<Value = EntryMeta> {
    (any::<u64>(), any::<u32>(), any::<bool>()).prop_map(|(ttl, compute, kept_stale)| EntryMeta {
        ttl: Duration::from_millis(ttl),
        compute_time: Duration::from_millis(u64::from(compute)),
        kept_stale,
    })
}

/// An envelope put together field by field, so every field can be wrong on its own.
#[derive(Debug, Clone)]
struct RawEnvelope {
    magic: [u8; 2],
    version: u8,
    serialization: u8,
    compression: u8,
    flags: u8,
    stored_at_ms: u64,
    ttl_ms: u64,
    compute_ms: u32,
    declared: u32,
    body: Vec<u8>,
}

impl RawEnvelope {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len());
        out.extend(self.magic);
        out.extend([
            self.version,
            self.serialization,
            self.compression,
            self.flags,
        ]);
        out.extend(self.stored_at_ms.to_be_bytes());
        out.extend(self.ttl_ms.to_be_bytes());
        out.extend(self.compute_ms.to_be_bytes());
        out.extend(self.declared.to_be_bytes());
        out.extend(&self.body);
        out
    }
}

/// A finding this target made that cannot be fixed from here: MessagePack payloads are read
/// with `rmp_serde`'s default nesting limit (1,024), and in a debug build decoding one nested
/// that deep into a recursive type (`serde_json::Value`) overflows a 2 MiB thread stack
/// (tokio's and the test harness's default), which aborts the process; JSON's limit is 128.
/// Release builds fit 1,024 levels in 2 MiB, so only debug builds bound the depth here.
/// Remove this bound once `codec.rs` sets a smaller MessagePack depth limit.
const KNOWN_MSGPACK_DEPTH_BOUND: usize = if cfg!(debug_assertions) { 256 } else { 4000 };

/// Payloads that reach the deserializers: garbage, JSON and MessagePack of docs and of
/// arbitrary shapes, and deep nesting.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        doc().prop_map(|doc| serde_json::to_vec(&doc).unwrap_or_default()),
        doc().prop_map(|doc| rmp_serde::to_vec_named(&doc).unwrap_or_default()),
        ".{0,64}".prop_map(String::into_bytes),
        any::<Vec<(u8, String)>>().prop_map(|v| rmp_serde::to_vec(&v).unwrap_or_default()),
        // Nesting deeper than the deserializers' recursion limits, and closed again.
        (
            prop::sample::select(vec![b'[', b'{', 0x91, 0x81, 0xdc]),
            1usize..4000,
            any::<bool>()
        )
            .prop_map(|(open, depth, close)| {
                let depth = if matches!(open, b'[' | b'{') {
                    depth
                } else {
                    depth.min(KNOWN_MSGPACK_DEPTH_BOUND)
                };
                let mut bytes = vec![open; depth];
                if close && open == b'[' {
                    bytes.extend(std::iter::repeat_n(b']', depth));
                }
                bytes
            }),
    ]
}

/// Edge values and plain ones for the header's time fields.
fn time_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            1_700_000_000_000,
            253_402_300_799_999,
            i64::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ]),
        any::<u64>(),
    ]
}

/// Envelopes with every field drawn from its valid values and a few invalid ones; the body a
/// real zstd frame or not, the declared length honest or not.
fn raw_envelope() -> impl Strategy<Value = RawEnvelope> {
    (
        (
            prop::sample::select(vec![*b"CL", *b"CL", *b"CL", *b"cl", *b"XL", [0, 0]]),
            prop::sample::select(vec![1u8, 1, 2, 2, 0, 3, 255]),
            prop::sample::select(vec![b'j', b'm', b'b', b'x', 0]),
            prop::sample::select(vec![b'-', b'z', b'?']),
            prop_oneof![Just(0u8), Just(1), Just(2), Just(3), any::<u8>()],
        ),
        (time_ms(), time_ms(), any::<u32>()),
        (
            payload(),
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.8),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (magic, version, serialization, compression, flags),
                (stored_at_ms, ttl_ms, compute_ms),
                (payload, real_frame, honest, random_declared),
            )| {
                let body = if compression == b'z' && real_frame {
                    zstd::bulk::compress(&payload, 1).expect("zstd compresses")
                } else {
                    payload.clone()
                };
                let declared = if honest {
                    u32::try_from(payload.len()).expect("small")
                } else {
                    random_declared
                };
                RawEnvelope {
                    magic,
                    version,
                    serialization,
                    compression,
                    flags,
                    stored_at_ms,
                    ttl_ms,
                    compute_ms,
                    declared,
                    body,
                }
            },
        )
}

/// Any input: garbage, or an envelope put together field by field.
fn any_entry() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..128),
        4 => raw_envelope().prop_map(|raw| raw.bytes()),
    ]
}

/// A valid entry of each kind a store holds: a typed value, a binary payload, a "not found".
fn valid_entry() -> impl Strategy<Value = (Vec<u8>, Codec)> {
    let typed = (big_or_small_doc(), codec(), meta()).prop_map(|(doc, codec, meta)| {
        let encoded = codec.encode(&doc, meta).expect("a doc encodes");
        (encoded.bytes.to_vec(), codec)
    });
    let binary = (binary_payload(), codec(), any::<bool>(), meta()).prop_map(
        |(payload, codec, compress, meta)| {
            let codec = codec.compressing_binary(compress);
            let encoded = codec.encode_binary(&payload, meta).expect("encodes");
            (encoded.bytes.to_vec(), codec)
        },
    );
    let absent = (codec(), meta())
        .prop_map(|(codec, meta)| (codec.encode_absent(meta).bytes.to_vec(), codec));
    prop_oneof![3 => typed, 2 => binary, 1 => absent]
}

/// Binary payloads, compressible or not.
fn binary_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..2048),
        (vec(any::<u8>(), 1..8), 0usize..600).prop_map(|(unit, times)| unit.repeat(times)),
    ]
}

/// What one reader makes of the bytes, as comparable values.
#[derive(Debug, PartialEq)]
struct Reading {
    json: Result<Option<serde_json::Value>, DecodeFailure>,
    doc: Result<Option<Doc>, DecodeFailure>,
    binary: Result<Option<Bytes>, DecodeFailure>,
}

fn read_all(codec: &Codec, bytes: &[u8]) -> (Reading, Vec<EnvelopeHeader>) {
    let json = codec.decode_optional::<serde_json::Value>(bytes);
    let doc = codec.decode_optional::<Doc>(bytes);
    let binary = codec.decode_binary(&Bytes::copy_from_slice(bytes));
    let headers = [
        json.as_ref().ok().map(|d| d.header),
        doc.as_ref().ok().map(|d| d.header),
        binary.as_ref().ok().map(|d| d.header),
    ]
    .into_iter()
    .flatten()
    .collect();
    let reading = Reading {
        json: json.map(|d| d.value),
        doc: doc.map(|d| d.value),
        binary: binary.map(|d| d.value),
    };
    (reading, headers)
}

/// The properties every input must satisfy, whatever its bytes: no panic, and every
/// reader agreeing with the header it parsed and with the bounds it declares.
fn check_any(codec: &Codec, bytes: &[u8]) -> Result<(), TestCaseError> {
    let parsed = EnvelopeHeader::parse(bytes);
    let (reading, headers) = read_all(codec, bytes);
    let copy = codec.uncompressed(bytes);
    let header = match parsed {
        Err(reason) => {
            // The header is read first: its failure is every reader's.
            prop_assert_eq!(&reading.json, &Err(reason));
            prop_assert_eq!(&reading.doc, &Err(reason));
            prop_assert_eq!(&reading.binary, &Err(reason));
            prop_assert!(copy.is_none());
            return Ok(());
        }
        Ok(header) => header,
    };
    prop_assert!(bytes.len() >= HEADER_LEN);
    for seen in &headers {
        prop_assert_eq!(seen, &header);
    }
    let body_len = bytes.len() - HEADER_LEN;
    let declared = header.payload_len as usize;
    if header.absent {
        // A "not found" is exactly a header, read as absent by every reader.
        let expected: Result<(), DecodeFailure> = if body_len == 0 && declared == 0 {
            Ok(())
        } else {
            Err(DecodeFailure::Truncated)
        };
        prop_assert_eq!(&reading.json, &expected.map(|()| None));
        prop_assert_eq!(&reading.doc, &expected.map(|()| None));
        prop_assert_eq!(&reading.binary, &expected.map(|()| None));
        prop_assert!(copy.is_none());
        return Ok(());
    }
    if declared > codec_max(codec) {
        // Refused before anything is decompressed or allocated for it.
        prop_assert_eq!(&reading.binary, &Err(DecodeFailure::TooLarge));
        prop_assert_eq!(&reading.json, &Err(DecodeFailure::TooLarge));
        return Ok(());
    }
    if header.compression == Compression::None && body_len != declared {
        prop_assert_eq!(&reading.binary, &Err(DecodeFailure::Truncated));
        prop_assert_eq!(&reading.json, &Err(DecodeFailure::Truncated));
    }
    match &reading.binary {
        Ok(Some(payload)) => {
            prop_assert_eq!(header.serialization, Serialization::Binary);
            prop_assert_eq!(payload.len(), declared);
            if header.compression == Compression::None {
                prop_assert_eq!(&payload[..], &bytes[HEADER_LEN..]);
            }
        }
        Ok(None) => prop_assert!(false, "only an absent entry reads as None"),
        Err(DecodeFailure::Layout) => {
            prop_assert_ne!(header.serialization, Serialization::Binary);
        }
        Err(_) => {}
    }
    for typed_ok in [reading.json.is_ok(), reading.doc.is_ok()] {
        if typed_ok {
            prop_assert_ne!(header.serialization, Serialization::Binary);
        }
    }
    match copy {
        Some(copy) => {
            // A copy is offered only for a readable compressed entry, and reads the same.
            prop_assert_eq!(header.compression, Compression::Zstd);
            let copied = EnvelopeHeader::parse(&copy).expect("a copy has a header");
            prop_assert_eq!(
                copied,
                EnvelopeHeader {
                    compression: Compression::None,
                    ..header
                }
            );
            let (again, _) = read_all(codec, &copy);
            prop_assert_eq!(&again, &reading);
            prop_assert!(codec.uncompressed(&copy).is_none());
        }
        None => {
            // The payload was opened (decompressed) when the binary reader got past it.
            let opened = matches!(reading.binary, Ok(_) | Err(DecodeFailure::Layout));
            prop_assert!(
                !(header.compression == Compression::Zstd && opened),
                "a readable compressed entry has an uncompressed copy"
            );
        }
    }
    Ok(())
}

/// The reader maximum of the codecs used here (the codec keeps it private).
fn codec_max(codec: &Codec) -> usize {
    if *codec == small_reader() {
        SMALL_MAX_BYTES
    } else {
        crate::codec::DEFAULT_MAX_VALUE_BYTES
    }
}

fn small_reader() -> Codec {
    Codec::new(Serialization::Json, Some(1024), 1, SMALL_MAX_BYTES).expect("a valid codec")
}

proptest! {
    #![proptest_config(super::config())]

    /// Garbage and envelopes put together field by field, each field valid or not, read by
    /// every reader: no panic, and every answer agrees with the header and its bounds.
    #[test]
    fn fuzz_envelope_decodes_any_bytes(bytes in any_entry()) {
        check_any(&Codec::default(), &bytes)?;
        check_any(&small_reader(), &bytes)?;
    }

    /// Valid entries damaged by a few edits (bits, length fields, cuts, insertions): no
    /// panic, and every answer still agrees with the header and its bounds.
    #[test]
    fn fuzz_envelope_decodes_damaged_entries(
        (entry, _codec) in valid_entry(),
        edits in mutate::mutations(),
    ) {
        let mut bytes = entry;
        mutate::apply(&mut bytes, &edits);
        check_any(&Codec::default(), &bytes)?;
        check_any(&small_reader(), &bytes)?;
    }

    /// Every value, under every codec setting and entry fact, reads back as written, with
    /// the facts it was written with; flagged entries are version 2, plain ones version 1.
    #[test]
    fn fuzz_envelope_round_trips(doc in big_or_small_doc(), codec in codec(), meta in meta()) {
        let encoded = codec.encode(&doc, meta).expect("a doc encodes");
        prop_assert_eq!(encoded.bytes[2], if meta.kept_stale { 2 } else { 1 });
        let decoded = Codec::default().decode::<Doc>(&encoded.bytes).expect("it decodes");
        prop_assert_eq!(&decoded.value, &doc);
        let header = decoded.header;
        prop_assert_eq!(header.ttl, meta.ttl);
        prop_assert_eq!(header.compute_time, meta.compute_time);
        prop_assert_eq!(header.kept_stale, meta.kept_stale);
        prop_assert!(!header.absent);
        prop_assert_eq!(header.serialization, codec.serialization());
        prop_assert_eq!(header.compression, encoded.compression);
        prop_assert_eq!(header.payload_len as usize, encoded.payload_len);
        let age = SystemTime::now().duration_since(header.stored_at).unwrap_or_default();
        prop_assert!(age < Duration::from_secs(60) && header.stored_at > UNIX_EPOCH);
        match codec.uncompressed(&encoded.bytes) {
            Some(copy) => {
                prop_assert_eq!(encoded.compression, Compression::Zstd);
                prop_assert_eq!(Codec::default().decode::<Doc>(&copy).expect("copy").value, doc);
            }
            None => prop_assert_eq!(encoded.compression, Compression::None),
        }
        // A reader whose maximum is below the payload refuses it unread.
        if encoded.payload_len > 1 {
            let strict = Codec::new(Serialization::Json, None, 1, encoded.payload_len - 1)
                .expect("a valid codec");
            prop_assert_eq!(strict.decode::<Doc>(&encoded.bytes).err(), Some(DecodeFailure::TooLarge));
        }
        // A binary reader does not take a typed value for its own.
        prop_assert_eq!(
            Codec::default().decode_binary(&encoded.bytes).err(),
            Some(DecodeFailure::Layout)
        );
        check_any(&Codec::default(), &encoded.bytes)?;
    }

    /// Binary payloads read back as written, as slices of the stored bytes when not
    /// compressed; "not found" entries read as absent by every reader.
    #[test]
    fn fuzz_envelope_binary_and_absent_round_trip(
        payload in binary_payload(),
        codec in codec(),
        compress in any::<bool>(),
        meta in meta(),
    ) {
        let codec = codec.compressing_binary(compress);
        let encoded = codec.encode_binary(&payload, meta).expect("encodes");
        let read = Codec::default().decode_binary(&encoded.bytes).expect("it decodes");
        let value = read.value.expect("a payload");
        prop_assert_eq!(&value[..], &payload[..]);
        if encoded.compression == Compression::None {
            let range = encoded.bytes.as_ptr_range();
            prop_assert!(value.is_empty() || range.contains(&value.as_ptr()));
        } else {
            prop_assert!(compress);
        }
        prop_assert_eq!(
            Codec::default().decode_optional::<serde_json::Value>(&encoded.bytes).err(),
            Some(DecodeFailure::Layout)
        );

        let absent = codec.encode_absent(meta);
        prop_assert_eq!(absent.bytes.len(), HEADER_LEN);
        let none = Codec::default().decode_optional::<Doc>(&absent.bytes).expect("absent");
        prop_assert!(none.value.is_none() && none.header.absent);
        prop_assert_eq!(none.header.kept_stale, meta.kept_stale);
        prop_assert_eq!(
            Codec::default().decode::<Doc>(&absent.bytes).err(),
            Some(DecodeFailure::Absent)
        );
        prop_assert!(Codec::default().decode_binary(&absent.bytes).expect("absent").value.is_none());
        check_any(&Codec::default(), &absent.bytes)?;
    }

    /// A valid entry cut anywhere is refused by every reader; one with bytes added after it
    /// is refused, or (a compressed payload followed by what zstd skips) reads the same
    /// value, never another one.
    #[test]
    fn fuzz_envelope_refuses_cut_and_extended_entries(
        (entry, _codec) in valid_entry(),
        cut in any::<prop::sample::Index>(),
        tail in vec(any::<u8>(), 1..32),
    ) {
        let codec = Codec::default();
        let (original, _) = read_all(&codec, &entry);
        let cut = &entry[..cut.index(entry.len())];
        let (reading, _) = read_all(&codec, cut);
        prop_assert!(reading.json.is_err() && reading.doc.is_err() && reading.binary.is_err(), "{:?}", reading);
        let mut longer = entry.clone();
        longer.extend(&tail);
        let (reading, _) = read_all(&codec, &longer);
        prop_assert!(reading.json.is_err() || reading.json == original.json, "{:?}", reading);
        prop_assert!(reading.doc.is_err() || reading.doc == original.doc, "{:?}", reading);
        prop_assert!(reading.binary.is_err() || reading.binary == original.binary, "{:?}", reading);
        check_any(&codec, &longer)?;
    }
}
