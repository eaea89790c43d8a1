//! Properties of the envelope codec: every value round-trips under every setting, and no
//! byte string makes decoding panic or over-allocate.

use std::collections::BTreeMap;
use std::time::Duration;

use cachelayer::__private::codec::{Codec, EntryMeta, EnvelopeHeader};
use cachelayer::Serialization;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    id: u64,
    name: String,
    score: Option<i32>,
    tags: Vec<String>,
    attrs: BTreeMap<String, u16>,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Kind {
    Unit,
    Tuple(u8, bool),
    Named { text: String },
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Unit),
        (any::<u8>(), any::<bool>()).prop_map(|(a, b)| Kind::Tuple(a, b)),
        ".{0,40}".prop_map(|text| Kind::Named { text }),
    ]
}

fn doc() -> impl Strategy<Value = Doc> {
    (
        any::<u64>(),
        ".{0,200}",
        any::<Option<i32>>(),
        prop::collection::vec("[a-z]{0,12}", 0..50),
        prop::collection::btree_map("[a-z]{1,8}", any::<u16>(), 0..20),
        kind(),
    )
        .prop_map(|(id, name, score, tags, attrs, kind)| Doc {
            id,
            name,
            score,
            tags,
            attrs,
            kind,
        })
}

fn codec() -> impl Strategy<Value = Codec> {
    (
        prop_oneof![Just(Serialization::Json), Just(Serialization::MessagePack)],
        prop_oneof![Just(None), (0usize..2048).prop_map(Some)],
        1i32..6,
    )
        .prop_map(|(serialization, threshold, level)| {
            Codec::new(serialization, threshold, level, 1 << 20).expect("valid codec")
        })
}

proptest! {
    /// Any document, under any codec settings, decodes to itself with the metadata it was
    /// written with.
    #[test]
    fn envelope_round_trips(doc in doc(), codec in codec(), ttl_ms in 1u64..10_000_000, compute_ms in 0u64..100_000) {
        let meta = EntryMeta::new(Duration::from_millis(ttl_ms), Duration::from_millis(compute_ms));
        let encoded = codec.encode(&doc, meta).expect("encode");
        let decoded = Codec::default().decode::<Doc>(&encoded.bytes).expect("decode");
        prop_assert_eq!(decoded.value, doc);
        prop_assert_eq!(decoded.header.ttl, meta.ttl);
        prop_assert_eq!(decoded.header.compute_time, meta.compute_time);
        prop_assert_eq!(decoded.header.serialization, codec.serialization());
    }

    /// Arbitrary bytes never panic the decoder; they are either a value or a failure.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let codec = Codec::default();
        let _ = codec.decode::<Doc>(&bytes);
        let _ = codec.decode::<serde_json::Value>(&bytes);
        let _ = EnvelopeHeader::parse(&bytes);
    }

    /// Arbitrary payloads behind a valid-looking header never panic the decompressor or the
    /// deserializers. The declared length usually matches (so decoding gets past the length
    /// check), and for zstd the payload is usually a real frame (so it gets past
    /// decompression); otherwise tags and lengths are arbitrary.
    #[test]
    fn arbitrary_payload_behind_a_header_never_panics(
        serialization in prop::sample::select(vec![b'j', b'm', b'x']),
        compression in prop::sample::select(vec![b'-', b'z', b'?']),
        honest_length in prop::bool::weighted(0.9),
        real_frame in prop::bool::weighted(0.9),
        random_declared in any::<u32>(),
        payload in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            // JSON-ish and MessagePack-ish bytes reach deeper into the deserializers.
            ".{0,200}".prop_map(String::into_bytes),
            any::<Vec<(u8, String)>>().prop_map(|v| rmp_serde::to_vec_named(&v).unwrap_or_default()),
        ],
    ) {
        let body = if compression == b'z' && real_frame {
            zstd::bulk::compress(&payload, 1).expect("zstd")
        } else {
            payload.clone()
        };
        let declared = if honest_length { payload.len() as u32 } else { random_declared };
        let mut bytes = b"CL\x01".to_vec();
        bytes.extend([serialization, compression, 0]);
        bytes.extend([0u8; 20]);
        bytes.extend(declared.to_be_bytes());
        bytes.extend(&body);
        let _ = Codec::default().decode::<Doc>(&bytes);
        let _ = Codec::default().decode::<serde_json::Value>(&bytes);
        let _ = Codec::default().decode::<Vec<(u8, String)>>(&bytes);
    }

    /// A payload that declares more than the reader's maximum is refused before it is
    /// decompressed, whatever the frame would expand to.
    #[test]
    fn oversized_declarations_are_refused_unread(declared in (1u32 << 20) + 1.., payload in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = b"CL\x01jz\x00".to_vec();
        bytes.extend([0u8; 20]);
        bytes.extend(declared.to_be_bytes());
        bytes.extend(&payload);
        let codec = Codec::new(Serialization::Json, Some(1024), 1, 1 << 20).expect("codec");
        prop_assert_eq!(codec.decode::<serde_json::Value>(&bytes).err(), Some(cachelayer::__private::codec::DecodeFailure::TooLarge));
    }

    /// Flipping any one byte of a valid entry yields a failure or a value, never a panic.
    #[test]
    fn corrupting_one_byte_never_panics(doc in doc(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let encoded = Codec::default().encode(&doc, EntryMeta::new(Duration::from_secs(1), Duration::ZERO)).expect("encode");
        let mut bytes = encoded.bytes.to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        let _ = Codec::default().decode::<Doc>(&bytes);
    }
}
