//! The binary layout of a [`CachedEntry`], the payload of its envelope (serialization `b`).
//! Integers are big-endian; lengths come before what they measure.
//!
//! | bytes | field |
//! |---|---|
//! | 1 | layout version: [`LAYOUT_VERSION`], or [`LAYOUT_VERSION_NO_CACHE`] for a `no-cache` response |
//! | 1 | kind: `S` a stored response, `P` a pass marker, `V` a `Vary` marker |
//!
//! A stored response (`S`) goes on with: status (u16); flags (u8: bit 0 `must-revalidate`,
//! bit 1 an `ETag` made here, bit 2 heuristic freshness, bit 3 `no-cache`); arrival time, initial age, freshness, `stale-while-revalidate`
//! and `stale-if-error` (u64 milliseconds each); the headers (u16 count, then per field a u16
//! name length, the name, a u32 value length, the value); the `Vary` values (u16 count, then
//! a u16 name length, the name, a u8 1 when the request had the header, a u32 value length,
//! the value); the tags (u16 count, then a u16 length and the tag, a u16 length and its
//! version); and the body (a u32 length, then the body, which ends the payload).
//! A `Vary` marker (`V`) goes on with the names (u16 count, each a u16 length and the name)
//! and the generation (a u16 length and the text). A pass marker has nothing more.
//!
//! Reading must never panic, whatever the bytes (the store is outside our trust boundary),
//! and allocates at most a small multiple of the payload's size (counts are u16, each item
//! takes a few bytes): anything that does not fit is a miss. The `Content-Length` a reader
//! gets is always the body's own, whatever the stored block says, so an entry written by
//! someone else cannot break the framing of the connection it is served on.
//! A layout change that older readers must not misread takes a new [`LAYOUT_VERSION`].

use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use super::{CachedEntry, StoredResponse};
use crate::codec::{Codec, DecodeFailure, Decoded, Encoded, EntryMeta};
use crate::error::Result;
use crate::http::policy::Storable;
use crate::payload::{DecodePayload, EncodePayload};

/// The layout this build writes and reads.
const LAYOUT_VERSION: u8 = 1;
/// The same layout, for a response that must be revalidated on every use: readers that
/// predate the `no-cache` flag would ignore it and serve the response as fresh, so it takes
/// a version they refuse (a miss). Other entries keep version 1, which every reader reads.
const LAYOUT_VERSION_NO_CACHE: u8 = 2;

const KIND_STORED: u8 = b'S';
const KIND_PASS: u8 = b'P';
const KIND_VARIANTS: u8 = b'V';

const FLAG_MUST_REVALIDATE: u8 = 0b01;
const FLAG_ETAG_GENERATED: u8 = 0b10;
const FLAG_HEURISTIC: u8 = 0b100;
const FLAG_NO_CACHE: u8 = 0b1000;

impl EncodePayload for CachedEntry {
    fn encode_payload(&self, codec: &Codec, meta: EntryMeta) -> Result<Encoded> {
        codec.encode_binary(&write(self), meta)
    }
}

impl DecodePayload for CachedEntry {
    fn decode_payload(
        codec: &Codec,
        bytes: &Bytes,
    ) -> std::result::Result<Decoded<Option<Self>>, DecodeFailure> {
        let decoded = codec.decode_binary(bytes)?;
        let value = match decoded.value {
            Some(payload) => Some(read(&payload).ok_or(DecodeFailure::Deserialize)?),
            None => None,
        };
        Ok(Decoded {
            value,
            header: decoded.header,
        })
    }
}

/// The entry in its binary layout.
pub(super) fn write(entry: &CachedEntry) -> Vec<u8> {
    let mut out = Vec::new();
    let version = match entry {
        CachedEntry::Stored(stored) if stored.facts.no_cache => LAYOUT_VERSION_NO_CACHE,
        _ => LAYOUT_VERSION,
    };
    out.put_u8(version);
    match entry {
        CachedEntry::Stored(stored) => {
            out.reserve(stored.body.len() + 256);
            out.put_u8(KIND_STORED);
            write_stored(&mut out, stored);
        }
        CachedEntry::Pass => out.put_u8(KIND_PASS),
        CachedEntry::Variants { names, generation } => {
            out.put_u8(KIND_VARIANTS);
            put_count(&mut out, names.len());
            for name in names {
                put_short(&mut out, name.as_bytes());
            }
            put_short(&mut out, generation.as_bytes());
        }
    }
    out
}

fn write_stored(out: &mut Vec<u8>, stored: &StoredResponse) {
    out.put_u16(stored.status.as_u16());
    let mut flags = 0;
    if stored.facts.must_revalidate {
        flags |= FLAG_MUST_REVALIDATE;
    }
    if stored.etag_generated {
        flags |= FLAG_ETAG_GENERATED;
    }
    if stored.facts.heuristic {
        flags |= FLAG_HEURISTIC;
    }
    if stored.facts.no_cache {
        flags |= FLAG_NO_CACHE;
    }
    out.put_u8(flags);
    out.put_u64(stored.response_time_ms);
    out.put_u64(stored.initial_age_ms);
    for window in [
        stored.facts.freshness,
        stored.facts.stale_while_revalidate,
        stored.facts.stale_if_error,
    ] {
        out.put_u64(super::millis(window));
    }
    put_count(out, stored.headers.len());
    for (name, value) in &stored.headers {
        put_short(out, name.as_str().as_bytes());
        put_long(out, value.as_bytes());
    }
    put_count(out, stored.vary.len());
    for (name, value) in &stored.vary {
        put_short(out, name.as_bytes());
        out.put_u8(u8::from(value.is_some()));
        put_long(out, value.as_deref().unwrap_or_default().as_bytes());
    }
    put_count(out, stored.tags.len());
    for (tag, version) in &stored.tags {
        put_short(out, tag.as_bytes());
        put_short(out, version.as_bytes());
    }
    put_long(out, &stored.body);
}

/// Counts and short fields are u16: header names, tags and markers are far below that, and
/// the layer does not store a response that does not fit ([`fits`]).
fn put_count(out: &mut Vec<u8>, count: usize) {
    out.put_u16(u16::try_from(count).unwrap_or(u16::MAX));
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.put_u16(len);
    out.put_slice(&bytes[..usize::from(len)]);
}

fn put_long(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.put_u32(len);
    out.put_slice(&bytes[..len as usize]);
}

/// Whether the response can be written without truncating a field (counts and short fields
/// fit in u16, long ones in u32) and read back (a header map has a bound of its own).
pub(super) fn fits(stored: &StoredResponse) -> bool {
    let short = |s: &str| s.len() <= usize::from(u16::MAX);
    let long = |len: usize| u32::try_from(len).is_ok();
    HeaderMap::<HeaderValue>::try_with_capacity(stored.headers.len()).is_ok()
        && stored.vary.len() <= usize::from(u16::MAX)
        && stored.tags.len() <= usize::from(u16::MAX)
        && stored
            .headers
            .iter()
            .all(|(name, value)| short(name.as_str()) && long(value.as_bytes().len()))
        && stored
            .vary
            .iter()
            .all(|(name, value)| short(name) && value.as_deref().is_none_or(|v| long(v.len())))
        && stored.tags.iter().all(|(t, v)| short(t) && short(v))
        && long(stored.body.len())
}

/// The entry laid out in `payload`, or `None` when the bytes are not one (another layout
/// version, damage, or garbage). Header values and the body are slices of `payload`.
pub(super) fn read(payload: &Bytes) -> Option<CachedEntry> {
    let mut reader = Reader { payload, at: 0 };
    let version = reader.u8()?;
    if version != LAYOUT_VERSION && version != LAYOUT_VERSION_NO_CACHE {
        return None;
    }
    let entry = match reader.u8()? {
        KIND_STORED => CachedEntry::Stored(read_stored(&mut reader)?),
        KIND_PASS => CachedEntry::Pass,
        KIND_VARIANTS => {
            let count = reader.count(2)?;
            let mut names = Vec::with_capacity(count);
            for _ in 0..count {
                names.push(reader.short_text()?);
            }
            let generation = reader.short_text()?;
            CachedEntry::Variants { names, generation }
        }
        _ => return None,
    };
    // Version 2 is exactly the no-cache responses, so a writer never mislabels one.
    let no_cache = matches!(&entry, CachedEntry::Stored(stored) if stored.facts.no_cache);
    (reader.at_end() && no_cache == (version == LAYOUT_VERSION_NO_CACHE)).then_some(entry)
}

fn read_stored(reader: &mut Reader<'_>) -> Option<StoredResponse> {
    // An interim (1xx) status is never a stored response; hyper would treat a 101 as an
    // upgrade.
    let status = StatusCode::from_u16(reader.u16()?)
        .ok()
        .filter(|status| !status.is_informational())?;
    let flags = reader.u8()?;
    let response_time_ms = reader.u64()?;
    let initial_age_ms = reader.u64()?;
    let facts = Storable {
        freshness: Duration::from_millis(reader.u64()?),
        must_revalidate: flags & FLAG_MUST_REVALIDATE != 0,
        no_cache: flags & FLAG_NO_CACHE != 0,
        heuristic: flags & FLAG_HEURISTIC != 0,
        stale_while_revalidate: Duration::from_millis(reader.u64()?),
        stale_if_error: Duration::from_millis(reader.u64()?),
    };
    // Each field takes at least 6 bytes (two lengths), so the count cannot ask for more
    // room than the payload could fill; a map past `HeaderMap`'s own bound (which would
    // panic) is refused.
    let count = reader.count(6)?;
    let mut headers = HeaderMap::try_with_capacity(count).ok()?;
    for _ in 0..count {
        let name = HeaderName::from_bytes(reader.short()?).ok()?;
        let value = HeaderValue::from_maybe_shared(reader.long_shared()?).ok()?;
        headers.try_append(name, value).ok()?;
    }
    let count = reader.count(7)?;
    let mut vary = Vec::with_capacity(count);
    for _ in 0..count {
        let name = reader.short_text()?;
        let present = reader.u8()? == 1;
        let value = String::from_utf8(reader.long()?.to_vec()).ok()?;
        vary.push((name, present.then_some(value)));
    }
    let count = reader.count(4)?;
    let mut tags = Vec::with_capacity(count);
    for _ in 0..count {
        tags.push((reader.short_text()?, reader.short_text()?));
    }
    let body = reader.long_shared()?;
    // The body's own length, never the stored field's: a lying one would desynchronise the
    // connection (the bytes after it read as the next response).
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Some(StoredResponse {
        status,
        headers,
        body,
        response_time_ms,
        initial_age_ms,
        facts,
        vary,
        etag_generated: flags & FLAG_ETAG_GENERATED != 0,
        tags,
    })
}

/// A cursor over untrusted bytes: every read is bounds-checked, and slices share the payload.
struct Reader<'a> {
    payload: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    fn slice(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(len)?;
        let slice = self.payload.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.at.checked_add(N)?;
        let bytes = self.payload.get(self.at..end)?.try_into().ok()?;
        self.at = end;
        Some(bytes)
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// A count of items of at least `least` bytes each, refused when they cannot fit in
    /// what is left.
    fn count(&mut self, least: usize) -> Option<usize> {
        let count = usize::from(self.u16()?);
        (count.checked_mul(least)? <= self.payload.len() - self.at).then_some(count)
    }

    fn short(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.slice(usize::from(len))
    }

    fn long(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()?;
        self.slice(usize::try_from(len).ok()?)
    }

    /// A long field as a slice sharing the payload's memory.
    fn long_shared(&mut self) -> Option<Bytes> {
        let payload = self.payload;
        self.long().map(|slice| payload.slice_ref(slice))
    }

    fn short_text(&mut self) -> Option<String> {
        String::from_utf8(self.short()?.to_vec()).ok()
    }

    fn at_end(&self) -> bool {
        self.at == self.payload.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;
    use crate::http::stored::Arrival;

    /// A stored response at a fixed time, with a tag and a Vary value.
    fn pinned() -> StoredResponse {
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.headers
            .append("content-type", "text/plain".parse().expect("v"));
        head.headers.append("etag", "\"v1\"".parse().expect("v"));
        let facts = Storable {
            must_revalidate: true,
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(7),
            ..Storable::fresh_for(Duration::from_secs(60))
        };
        let arrival = Arrival {
            initial_age: Duration::from_millis(1500),
            response_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        };
        let vary = vec![
            ("accept".to_owned(), Some("text/plain".to_owned())),
            ("origin".to_owned(), None),
        ];
        StoredResponse::new(
            &head,
            Bytes::from_static(&[0, 159, 255]),
            facts,
            arrival,
            vary,
            &[],
        )
        .with_tags(vec![("home".to_owned(), "7".to_owned())])
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Entries written by this release keep their layout: the bytes are pinned, and read
    /// back to the same entry.
    #[test]
    fn the_layout_is_pinned() {
        const STORED: &str = concat!(
            "0153", // version 1, stored response
            "00c8",
            "01", // 200, must-revalidate
            "0000018bcfe5687b",
            "00000000000005dc", // arrival, initial age
            "000000000000ea60",
            "0000000000001388",
            "0000000000001b58", // 60 s, 5 s, 7 s
            "0003",             // three headers
            "000c",
            "636f6e74656e742d74797065",
            "0000000a",
            "746578742f706c61696e",
            "0004",
            "65746167",
            "00000004",
            "22763122",
            "000e",
            "636f6e74656e742d6c656e677468",
            "00000001",
            "33",
            "0002", // two Vary values
            "0006",
            "616363657074",
            "01",
            "0000000a",
            "746578742f706c61696e",
            "0006",
            "6f726967696e",
            "00",
            "00000000",
            "0001",
            "0004",
            "686f6d65",
            "0001",
            "37", // one tag
            "00000003",
            "009fff", // the body
        );
        let entry = CachedEntry::Stored(pinned());
        assert_eq!(hex(&write(&entry)), STORED);
        assert_eq!(read(&Bytes::from(write(&entry))), Some(entry));

        let marker = CachedEntry::Variants {
            names: vec!["accept".to_owned()],
            generation: "g1".to_owned(),
        };
        let laid_out = write(&marker);
        assert_eq!(
            hex(&laid_out),
            "0156000100066163636570740002 6731".replace(' ', "")
        );
        assert_eq!(read(&Bytes::from(laid_out)), Some(marker));
        assert_eq!(write(&CachedEntry::Pass), b"\x01P");
        assert_eq!(read(&Bytes::from_static(b"\x01P")), Some(CachedEntry::Pass));
    }

    /// A hit's body and header values are slices of the stored bytes, not copies: hits of
    /// one response share one allocation however many are in flight.
    #[test]
    fn reads_share_the_stored_bytes() {
        let payload = Bytes::from(write(&CachedEntry::Stored(pinned())));
        let Some(CachedEntry::Stored(stored)) = read(&payload) else {
            panic!("a stored response");
        };
        let range = payload.as_ptr_range();
        let served = stored.into_served();
        assert!(range.contains(&served.body.as_ptr()));
        let value = &served.headers["content-type"];
        assert!(range.contains(&value.as_bytes().as_ptr()));
    }

    /// Through the envelope: entries of this layout round-trip, with and without
    /// compression, and serialized entries of older releases read as another layout.
    #[test]
    fn entries_round_trip_through_the_envelope() {
        let mut big = pinned();
        big.body = Bytes::from(vec![b'x'; 8192]);
        big.headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(8192));
        let meta = EntryMeta::new(Duration::from_secs(60), Duration::ZERO);
        for compress in [true, false] {
            let codec = Codec::default().compressing_binary(compress);
            let entry = CachedEntry::Stored(big.clone());
            let encoded = entry.encode_payload(&codec, meta).expect("encode");
            assert_eq!(
                encoded.compression == crate::codec::Compression::Zstd,
                compress
            );
            let back = CachedEntry::decode_payload(&codec, &encoded.bytes).expect("decode");
            assert_eq!(back.value, Some(entry));
        }
        let older = Codec::default()
            .encode(&serde_json::json!({"Stored": {"status": 200}}), meta)
            .expect("encode");
        let failure = CachedEntry::decode_payload(&Codec::default(), &older.bytes);
        assert_eq!(failure.err(), Some(DecodeFailure::Layout));
        // And a typed reader does not take a response for its own value.
        let binary = CachedEntry::Pass
            .encode_payload(&Codec::default(), meta)
            .expect("encode");
        let typed = Codec::default().decode_optional::<String>(&binary.bytes);
        assert_eq!(typed.err(), Some(DecodeFailure::Layout));
    }

    /// Another layout version, an unknown kind, trailing bytes and every truncation are
    /// refused.
    #[test]
    fn damaged_layouts_are_refused() {
        let good = write(&CachedEntry::Stored(pinned()));
        for cut in 0..good.len() {
            assert_eq!(
                read(&Bytes::copy_from_slice(&good[..cut])),
                None,
                "cut at {cut}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(read(&Bytes::from(longer)), None);
        let mut newer = good.clone();
        newer[0] = LAYOUT_VERSION + 1;
        assert_eq!(read(&Bytes::from(newer)), None);
        assert_eq!(read(&Bytes::from_static(b"\x01X")), None);
    }

    /// A payload naming more fields than a header map can hold is refused, not a panic.
    #[test]
    fn too_many_fields_are_refused() {
        let count: u16 = 40_000;
        let mut laid_out = write(&CachedEntry::Stored(pinned()));
        // Cut after the fixed fields (2 + 2 + 1 + 5 * 8 bytes) and write a new field list.
        laid_out.truncate(45);
        laid_out.put_u16(count);
        for i in 0..count {
            let name = format!("x{i}");
            put_short(&mut laid_out, name.as_bytes());
            put_long(&mut laid_out, b"");
        }
        laid_out.put_u16(0); // no Vary values
        laid_out.put_u16(0); // no tags
        laid_out.put_u32(0); // an empty body
        assert_eq!(read(&Bytes::from(laid_out)), None);
    }

    /// A stored `Content-Length` that is not the body's own is never served: an entry
    /// written by someone else cannot desynchronise a connection. Interim statuses are
    /// refused.
    #[test]
    fn the_length_is_the_bodys_own() {
        let mut lying = pinned();
        lying
            .headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(9_999));
        let Some(CachedEntry::Stored(read_back)) =
            read(&Bytes::from(write(&CachedEntry::Stored(lying))))
        else {
            panic!("a stored response");
        };
        assert_eq!(read_back.headers()["content-length"], "3");
        let mut interim = pinned();
        interim.status = StatusCode::SWITCHING_PROTOCOLS;
        assert_eq!(
            read(&Bytes::from(write(&CachedEntry::Stored(interim)))),
            None
        );
    }

    /// What the layer would refuse to store is told apart from what fits.
    #[test]
    fn oversized_fields_do_not_fit() {
        assert!(fits(&pinned()));
        let mut tagged = pinned();
        tagged.tags = vec![("t".repeat(70_000), "1".to_owned())];
        assert!(!fits(&tagged));
    }

    /// The age of a stored response is read back exactly.
    #[test]
    fn arrival_facts_round_trip() {
        let stored = pinned();
        let Some(CachedEntry::Stored(back)) =
            read(&Bytes::from(write(&CachedEntry::Stored(stored.clone()))))
        else {
            panic!("a stored response");
        };
        let now = SystemTime::now();
        assert_eq!(back.age(now), stored.age(now));
        assert_eq!(back.facts(), stored.facts());
    }

    proptest! {
        /// Whatever the bytes, reading never panics, and what it accepts reads back the same
        /// once written again.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Some(entry) = read(&Bytes::from(bytes)) {
                prop_assert_eq!(read(&Bytes::from(write(&entry))), Some(entry));
            }
        }

        /// Flipping any byte of a good entry never panics.
        #[test]
        fn damaged_entries_never_panic(at in 0usize..200, value in any::<u8>()) {
            let mut laid_out = write(&CachedEntry::Stored(pinned()));
            let at = at % laid_out.len();
            laid_out[at] = value;
            let _ = read(&Bytes::from(laid_out));
        }
    }
}
