//! Fuzz target: the decoder of stored HTTP responses (`http::stored`, the binary layout of a
//! `CachedEntry` inside its envelope), which reads bytes any process with access to the store
//! may have written.
//!
//! Checked: whatever the bytes, reading never panics, and what it accepts is a well-formed
//! entry (a final status, one `Content-Length` that is the body's own, a layout that can be
//! written again and reads back the same); every entry written reads back equal, with and
//! without compression; a cut or extended layout is always refused. This module must never
//! reach past the layout's own API (no private fields) nor weaken a check to pass a finding.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use proptest::collection::vec;
use proptest::prelude::*;

use super::mutate;
use crate::codec::{Codec, DecodeFailure, EntryMeta, HEADER_LEN};
use crate::http::key::request_values;
use crate::http::policy::Storable;
use crate::http::stored::{Arrival, CachedEntry, StoredResponse, merge_update};
use crate::payload::{DecodePayload, EncodePayload};

fn meta() -> EntryMeta {
    EntryMeta::new(Duration::from_secs(60), Duration::ZERO)
}

/// Header names: the ones the layer treats specially, and arbitrary tokens.
pub(super) fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        prop::sample::select(vec![
            "content-type",
            "content-length",
            "etag",
            "last-modified",
            "cache-control",
            "expires",
            "date",
            "age",
            "vary",
            "set-cookie",
            "cache-tag",
            "surrogate-key",
            "connection",
            "keep-alive",
            "transfer-encoding",
            "location",
            "x-lang",
        ])
        .prop_map(HeaderName::from_static),
        "[a-z0-9_.!*+~-]{1,24}"
            .prop_map(|name| HeaderName::from_bytes(name.as_bytes()).expect("a token")),
    ]
}

/// Header values: any bytes a field value may hold (visible ASCII, space, tab, obs-text).
pub(super) fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        vec(any::<u8>(), 0..48).prop_map(|bytes| {
            let bytes: Vec<u8> = bytes
                .into_iter()
                .map(|b| {
                    if (b < 0x20 && b != b'\t') || b == 0x7f {
                        b'x'
                    } else {
                        b
                    }
                })
                .collect();
            HeaderValue::from_bytes(&bytes).expect("valid field bytes")
        }),
        "[ -~]{0,32}".prop_map(|text| HeaderValue::from_str(&text).expect("visible ASCII")),
    ]
}

fn millis() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![0, 1, 1_700_000_000_000, u64::MAX]),
        0u64..(1 << 45),
        any::<u64>(),
    ]
}

/// A stored response as the layer makes one, from a response head with any fields.
fn stored_response() -> impl Strategy<Value = StoredResponse> {
    (
        (
            200u16..1000,
            vec((header_name(), header_value()), 0..12),
            prop_oneof![
                vec(any::<u8>(), 0..1024),
                (vec(any::<u8>(), 1..4), 0usize..2048).prop_map(|(unit, n)| unit.repeat(n)),
            ],
        ),
        (
            millis(),
            millis(),
            millis(),
            any::<bool>(),
            millis(),
            millis(),
        ),
        (
            vec((".{0,16}", proptest::option::of(".{0,24}")), 0..4),
            vec(header_name(), 0..2),
            vec((".{0,16}", ".{0,16}"), 0..4),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (status, fields, body),
                (fresh, swr, sie, must_revalidate, initial_age, arrived),
                (vary, dropped, tags, etag_generated),
            )| {
                let (mut head, ()) = http::Response::new(()).into_parts();
                head.status = StatusCode::from_u16(status).expect("a status");
                for (name, value) in fields {
                    head.headers.append(name, value);
                }
                let facts = Storable {
                    must_revalidate,
                    stale_while_revalidate: Duration::from_millis(swr),
                    stale_if_error: Duration::from_millis(sie),
                    ..Storable::fresh_for(Duration::from_millis(fresh))
                };
                let arrival = Arrival {
                    initial_age: Duration::from_millis(initial_age),
                    response_time: UNIX_EPOCH + Duration::from_millis(arrived),
                };
                let stored =
                    StoredResponse::new(&head, Bytes::from(body), facts, arrival, vary, &dropped)
                        .with_tags(tags);
                if etag_generated {
                    stored.with_generated_etag()
                } else {
                    stored
                }
            },
        )
}

/// Every kind of entry the layer stores.
fn entry() -> impl Strategy<Value = CachedEntry> {
    prop_oneof![
        6 => stored_response().prop_map(CachedEntry::Stored),
        1 => Just(CachedEntry::Pass),
        2 => (vec(".{0,16}", 0..6), ".{0,24}")
            .prop_map(|(names, generation)| CachedEntry::Variants { names, generation }),
    ]
}

/// The layout of an entry: the payload of its envelope, written uncompressed.
fn layout_of(entry: &CachedEntry) -> Vec<u8> {
    let codec = Codec::default().compressing_binary(false);
    let encoded = entry
        .encode_payload(&codec, meta())
        .expect("an entry encodes");
    encoded.bytes[HEADER_LEN..].to_vec()
}

/// Layouts put together from the layout's own pieces (a version, a kind, then integers of
/// every width and length-prefixed fields), so lengths and counts are often nearly right.
fn pieced_layout() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        prop::sample::select(vec![0u16, 1, 2, 3, 200, 0xffff])
            .prop_map(|v| v.to_be_bytes().to_vec()),
        prop::sample::select(vec![0u32, 1, 3, 0xffff_ffff]).prop_map(|v| v.to_be_bytes().to_vec()),
        any::<u64>().prop_map(|v| v.to_be_bytes().to_vec()),
        vec(any::<u8>(), 0..12).prop_map(|text| {
            let mut out = u16::try_from(text.len())
                .expect("short")
                .to_be_bytes()
                .to_vec();
            out.extend(text);
            out
        }),
        vec(any::<u8>(), 0..12).prop_map(|text| {
            let mut out = u32::try_from(text.len())
                .expect("short")
                .to_be_bytes()
                .to_vec();
            out.extend(text);
            out
        }),
    ];
    (
        prop::sample::select(vec![1u8, 1, 1, 0, 2]),
        prop::sample::select(vec![b'S', b'S', b'P', b'V', b'x']),
        vec(piece, 0..24),
    )
        .prop_map(|(version, kind, pieces)| {
            let mut out = vec![version, kind];
            out.extend(pieces.into_iter().flatten());
            out
        })
}

/// Read `layout` through a valid envelope, compressed or not, and check what comes back.
fn read_layout(layout: &[u8], compress: bool) -> Result<Option<CachedEntry>, TestCaseError> {
    let codec = Codec::default().compressing_binary(compress);
    let encoded = codec.encode_binary(layout, meta()).expect("encodes");
    match CachedEntry::decode_payload(&codec, &encoded.bytes) {
        // The envelope is sound, so only the layout can be refused.
        Err(failure) => {
            prop_assert_eq!(failure, DecodeFailure::Deserialize);
            Ok(None)
        }
        Ok(decoded) => {
            let entry = decoded.value.expect("a payload, not a \"not found\"");
            check_entry(&entry)?;
            Ok(Some(entry))
        }
    }
}

/// What every entry a reader accepts must be.
fn check_entry(entry: &CachedEntry) -> Result<(), TestCaseError> {
    // It can be written again, and that reads back the same: the written form is a fixed
    // point.
    let written = layout_of(entry);
    let codec = Codec::default().compressing_binary(false);
    let encoded = codec.encode_binary(&written, meta()).expect("encodes");
    let again = CachedEntry::decode_payload(&codec, &encoded.bytes)
        .expect("what was read can be read again")
        .value;
    prop_assert_eq!(again.as_ref(), Some(entry));
    let CachedEntry::Stored(stored) = entry else {
        return Ok(());
    };
    prop_assert!(!stored.status().is_informational());
    prop_assert!(stored.fits_layout());
    let served = stored.clone().into_served();
    let lengths: Vec<&HeaderValue> = served.headers.get_all(CONTENT_LENGTH).iter().collect();
    prop_assert_eq!(lengths.len(), 1);
    let length = served.body.len().to_string();
    prop_assert_eq!(lengths[0].as_bytes(), length.as_bytes());
    // What the layer then does with a stored response, on fields it did not write.
    let _ = stored.age(SystemTime::now());
    let _ = stored.etag();
    let _ = stored.last_modified();
    let _ = stored.origin_validators();
    let names = stored.vary_names();
    let _ = stored.matches(&request_values(&names, &HeaderMap::new()));
    let _ = stored.matches(&request_values(&names, stored.headers()));
    let merged = merge_update(stored.headers(), stored.headers());
    let arrival = Arrival {
        initial_age: Duration::ZERO,
        response_time: SystemTime::now(),
    };
    let refreshed = stored.refreshed(merged, stored.facts(), arrival, &[]);
    prop_assert_eq!(refreshed.tags(), stored.tags());
    Ok(())
}

proptest! {
    #![proptest_config(super::config())]

    /// Arbitrary bytes and layouts made of the layout's own pieces, as the payload of a
    /// sound envelope (compressed or not): never a panic, and what is accepted is a
    /// well-formed entry whose written form reads back the same.
    #[test]
    fn fuzz_stored_response_decodes_any_layout(
        layout in prop_oneof![vec(any::<u8>(), 0..160), pieced_layout()],
        compress in prop::bool::weighted(0.2),
    ) {
        read_layout(&layout, compress)?;
    }

    /// Every entry the layer writes reads back equal through its envelope, compressed or not.
    #[test]
    fn fuzz_stored_response_round_trips(entry in entry(), compress in any::<bool>()) {
        prop_assert!(!matches!(&entry, CachedEntry::Stored(stored) if !stored.fits_layout()));
        let codec = Codec::default().compressing_binary(compress);
        let encoded = entry.encode_payload(&codec, meta()).expect("an entry encodes");
        let back = CachedEntry::decode_payload(&codec, &encoded.bytes).expect("it decodes");
        prop_assert_eq!(back.value.as_ref(), Some(&entry));
        check_entry(&entry)?;
    }

    /// Valid layouts damaged by a few edits (bits, lengths and counts set to edge values,
    /// cuts, insertions, repeated runs): never a panic, and what is accepted is well formed.
    #[test]
    fn fuzz_stored_response_decodes_damaged_layouts(
        entry in entry(),
        edits in mutate::mutations(),
        compress in prop::bool::weighted(0.2),
    ) {
        let mut layout = layout_of(&entry);
        mutate::apply(&mut layout, &edits);
        read_layout(&layout, compress)?;
    }

    /// A valid layout cut anywhere, or with bytes after it, is refused: its lengths and
    /// counts account for every byte.
    #[test]
    fn fuzz_stored_response_refuses_cut_and_extended_layouts(
        entry in entry(),
        cut in any::<prop::sample::Index>(),
        tail in vec(any::<u8>(), 1..16),
    ) {
        let layout = layout_of(&entry);
        let cut = &layout[..cut.index(layout.len())];
        prop_assert_eq!(read_layout(cut, false)?, None);
        let mut longer = layout.clone();
        longer.extend(tail);
        prop_assert_eq!(read_layout(&longer, false)?, None);
    }
}
