//! A response as stored: status, end-to-end headers, body, and the facts RFC 9111 needs to
//! judge it later (when it arrived, its age then, its freshness, its `Vary` values), and the
//! entries stored under a response key ([`CachedEntry`]: a response, or a marker).
//!
//! Bodies and header values are bytes: in JSON they are base64 strings, in MessagePack raw
//! bytes. Hop-by-hop headers are never stored (RFC 9110 section 7.6.1), nor `Age` (it is
//! computed when served). This module must never decide cacheability; `policy` does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::headers::{is_hop_by_hop, strip_hop_by_hop};
use super::policy::Storable;

/// What is stored under a response key: a response, or a marker telling what to do instead.
///
/// The variant names are part of the stored form (entries of earlier versions decode).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum CachedEntry {
    /// A stored response.
    Stored(StoredResponse),
    /// The URL's response could not be stored: each request calls the origin itself (also
    /// what a collapsed origin call shares when its response was not stored).
    Pass,
    /// The URL's responses vary by these request headers: each variant is stored under a
    /// secondary key made from the request's values of them and this generation (a purge
    /// drops the marker, and the variants of the old generation become unreachable).
    Variants {
        names: Vec<String>,
        generation: String,
    },
}

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Field {
    name: String,
    #[serde(with = "binary")]
    value: Vec<u8>,
}

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredResponse {
    status: u16,
    headers: Vec<Field>,
    #[serde(with = "binary")]
    body: Bytes,
    /// When the response arrived, Unix milliseconds.
    response_time_ms: u64,
    /// Its age on arrival, milliseconds.
    initial_age_ms: u64,
    /// Its freshness lifetime, milliseconds.
    freshness_ms: u64,
    must_revalidate: bool,
    stale_while_revalidate_ms: u64,
    stale_if_error_ms: u64,
    /// The request's values of the headers its `Vary` names (`None`: absent).
    vary: Vec<(String, Option<String>)>,
    /// Its `ETag` was made here from the body (so the origin does not know it).
    #[serde(default)]
    etag_generated: bool,
    /// Its tags, each with the tag's version when it was stored.
    #[serde(default)]
    tags: Vec<(String, String)>,
}

/// When a response arrived, and how old it was then.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub(crate) initial_age: Duration,
    pub(crate) response_time: SystemTime,
}

/// What the layer needs back from a stored response to serve it.
pub(crate) struct Served {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl StoredResponse {
    /// A response to store; `drop_headers` are left out as well as hop-by-hop ones.
    pub(crate) fn new(
        head: &http::response::Parts,
        body: Bytes,
        facts: Storable,
        arrival: Arrival,
        vary: Vec<(String, Option<String>)>,
        drop_headers: &[HeaderName],
    ) -> Self {
        let (status, headers) = (head.status, &head.headers);
        let Arrival {
            initial_age,
            response_time,
        } = arrival;
        let mut end_to_end = headers.clone();
        strip_hop_by_hop(&mut end_to_end);
        let fields = end_to_end
            .iter()
            .filter(|(name, _)| *name != http::header::AGE && !drop_headers.contains(name))
            .map(|(name, value)| Field {
                name: name.as_str().to_owned(),
                value: value.as_bytes().to_vec(),
            })
            .collect();
        Self {
            status: status.as_u16(),
            headers: fields,
            body,
            response_time_ms: millis(response_time.duration_since(UNIX_EPOCH).unwrap_or_default()),
            initial_age_ms: millis(initial_age),
            freshness_ms: millis(facts.freshness),
            must_revalidate: facts.must_revalidate,
            stale_while_revalidate_ms: millis(facts.stale_while_revalidate),
            stale_if_error_ms: millis(facts.stale_if_error),
            vary,
            etag_generated: false,
            tags: Vec::new(),
        }
    }

    /// Records its tags and their versions.
    pub(crate) fn with_tags(mut self, tags: Vec<(String, String)>) -> Self {
        self.tags = tags;
        self
    }

    /// Its tags and their versions when stored.
    pub(crate) fn tags(&self) -> &[(String, String)] {
        &self.tags
    }

    /// Marks its `ETag` as made here, not by the origin.
    pub(crate) fn with_generated_etag(mut self) -> Self {
        self.etag_generated = true;
        self
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| std::str::from_utf8(&f.value).ok())
    }

    /// Its entity tag.
    pub(crate) fn etag(&self) -> Option<&str> {
        self.header("etag")
    }

    /// Its `Last-Modified` time.
    pub(crate) fn last_modified(&self) -> Option<SystemTime> {
        self.header("last-modified")
            .and_then(|v| httpdate::parse_http_date(v).ok())
    }

    /// Validators the origin understands, for a conditional request: its own `ETag` (not
    /// one made here) and `Last-Modified`.
    pub(crate) fn origin_validators(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut validators = Vec::new();
        if !self.etag_generated
            && let Some(etag) = self.etag().and_then(|e| HeaderValue::from_str(e).ok())
        {
            validators.push((http::header::IF_NONE_MATCH, etag));
        }
        if let Some(modified) = self
            .header("last-modified")
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            validators.push((http::header::IF_MODIFIED_SINCE, modified));
        }
        validators
    }

    /// This response refreshed by a `304 Not Modified` (RFC 9111 section 4.3.4), with the
    /// headers [`merge_not_modified`] made; the body stays.
    pub(crate) fn refreshed(&self, merged: HeaderMap, facts: Storable, arrival: Arrival) -> Self {
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.status = self.status();
        head.headers = merged;
        let refreshed = Self::new(
            &head,
            self.body.clone(),
            facts,
            arrival,
            self.vary.clone(),
            &[],
        );
        Self {
            etag_generated: self.etag_generated,
            tags: self.tags.clone(),
            ..refreshed
        }
    }

    /// Its status.
    pub(crate) fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK)
    }

    /// Its headers as a map (fields that no longer parse are skipped).
    pub(crate) fn header_map(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for field in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(field.name.as_bytes()),
                HeaderValue::from_bytes(&field.value),
            ) {
                headers.append(name, value);
            }
        }
        headers
    }

    /// Its storage facts.
    pub(crate) fn facts(&self) -> Storable {
        Storable {
            freshness: Duration::from_millis(self.freshness_ms),
            must_revalidate: self.must_revalidate,
            stale_while_revalidate: Duration::from_millis(self.stale_while_revalidate_ms),
            stale_if_error: Duration::from_millis(self.stale_if_error_ms),
        }
    }

    /// Its current age (RFC 9111 section 4.2.3: initial age plus time resident here).
    pub(crate) fn age(&self, now: SystemTime) -> Duration {
        let arrived = UNIX_EPOCH + Duration::from_millis(self.response_time_ms);
        let resident = now.duration_since(arrived).unwrap_or_default();
        Duration::from_millis(self.initial_age_ms).saturating_add(resident)
    }

    /// Whether it may answer a request with these `Vary` values.
    pub(crate) fn matches(&self, vary: &[(String, Option<String>)]) -> bool {
        self.vary == vary
    }

    /// The request header names its `Vary` lists (lowercase, sorted).
    pub(crate) fn vary_names(&self) -> Vec<String> {
        self.vary.iter().map(|(name, _)| name.clone()).collect()
    }

    /// The request's values of those headers when it was stored.
    pub(crate) fn vary_pairs(&self) -> &[(String, Option<String>)] {
        &self.vary
    }

    /// Status, headers and body to send.
    pub(crate) fn served(&self) -> Served {
        Served {
            status: self.status(),
            headers: self.header_map(),
            body: self.body.clone(),
        }
    }
}

/// Fields a 304 must not change in a stored response: they describe the body or the
/// connection, or belong to one client (a cookie), or instruct this cache (tags).
const KEPT_ON_304: [&str; 8] = [
    "content-length",
    "content-encoding",
    "content-range",
    "content-type",
    "set-cookie",
    "cache-tag",
    "surrogate-key",
    "age",
];

/// A stored response's headers updated from a 304 (RFC 9111 section 3.2): its fields
/// replace those of the same name, except the ones above and hop-by-hop ones.
pub(crate) fn merge_not_modified(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    for name in not_modified.keys() {
        if is_hop_by_hop(name) || KEPT_ON_304.contains(&name.as_str()) {
            continue;
        }
        merged.remove(name);
        for value in not_modified.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Bytes as base64 text in human-readable formats (JSON), as raw bytes otherwise (MessagePack
/// `bin`; arrays of numbers are accepted too).
mod binary {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer, B: AsRef<[u8]>>(
        bytes: &B,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let bytes = bytes.as_ref();
        if serializer.is_human_readable() {
            serializer.serialize_str(&STANDARD.encode(bytes))
        } else {
            serde_bytes::Bytes::new(bytes).serialize(serializer)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, B: From<Vec<u8>>>(
        deserializer: D,
    ) -> Result<B, D::Error> {
        let bytes = if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            STANDARD.decode(text).map_err(serde::de::Error::custom)?
        } else {
            serde_bytes::ByteBuf::deserialize(deserializer)?.into_vec()
        };
        Ok(B::from(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Serialization;
    use crate::codec::{Codec, EntryMeta};

    fn sample() -> StoredResponse {
        let (mut head, ()) = http::Response::new(()).into_parts();
        let headers = &mut head.headers;
        headers.append(
            "content-type",
            "application/octet-stream".parse().expect("v"),
        );
        headers.append("connection", "close, x-hop".parse().expect("v"));
        headers.append("x-hop", "1".parse().expect("v"));
        headers.append("transfer-encoding", "chunked".parse().expect("v"));
        headers.append("age", "5".parse().expect("v"));
        headers.append("set-cookie", "id=1".parse().expect("v"));
        let facts = Storable {
            freshness: Duration::from_secs(60),
            must_revalidate: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        };
        let arrival = Arrival {
            initial_age: Duration::from_secs(5),
            response_time: SystemTime::now(),
        };
        StoredResponse::new(
            &head,
            Bytes::from_static(&[0, 159, 146, 150, 255]),
            facts,
            arrival,
            Vec::new(),
            &[http::header::SET_COOKIE],
        )
    }

    /// Hop-by-hop headers (also those named by Connection), Age and dropped headers are
    /// not stored; binary bodies round-trip through both serializations.
    #[test]
    fn stores_end_to_end_headers_and_binary_bodies() {
        let stored = sample();
        let served = stored.served();
        assert_eq!(served.headers.len(), 1, "{:?}", served.headers);
        assert!(served.headers.contains_key("content-type"));
        for serialization in [Serialization::Json, Serialization::MessagePack] {
            let codec = Codec::new(serialization, None, 1, 1 << 20).expect("codec");
            let encoded = codec
                .encode(
                    &stored,
                    EntryMeta::new(Duration::from_secs(1), Duration::ZERO),
                )
                .expect("encode");
            let back: StoredResponse = codec.decode(&encoded.bytes).expect("decode").value;
            assert_eq!(back, stored);
            assert_eq!(&back.served().body[..], &[0, 159, 146, 150, 255]);
        }
    }

    /// A stored response of the present form, at a fixed time, with a tag and a Vary value.
    fn pinned() -> StoredResponse {
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.headers
            .append("content-type", "text/plain".parse().expect("v"));
        head.headers.append("etag", "\"v1\"".parse().expect("v"));
        let facts = Storable {
            freshness: Duration::from_secs(60),
            must_revalidate: true,
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(7),
        };
        let arrival = Arrival {
            initial_age: Duration::from_millis(1500),
            response_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        };
        let vary = vec![("accept".to_owned(), Some("text/plain".to_owned()))];
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

    /// Entries stored by earlier versions still decode, and new ones are written the same
    /// way: the serialized form of both formats is pinned.
    #[test]
    fn the_stored_form_is_pinned() {
        const JSON: &str = r#"{"status":200,"headers":[{"name":"content-type","value":"dGV4dC9wbGFpbg=="},{"name":"etag","value":"InYxIg=="}],"body":"AJ//","response_time_ms":1700000000123,"initial_age_ms":1500,"freshness_ms":60000,"must_revalidate":true,"stale_while_revalidate_ms":5000,"stale_if_error_ms":7000,"vary":[["accept","text/plain"]],"etag_generated":false,"tags":[["home","7"]]}"#;
        const PACKED: &str = "8ca6737461747573ccc8a7686561646572739282a46e616d65ac636f6e74656e742d74797065a576616c7565c40a746578742f706c61696e82a46e616d65a465746167a576616c7565c40422763122a4626f6479c403009fffb0726573706f6e73655f74696d655f6d73cf0000018bcfe5687bae696e697469616c5f6167655f6d73cd05dcac66726573686e6573735f6d73cdea60af6d7573745f726576616c6964617465c3b97374616c655f7768696c655f726576616c69646174655f6d73cd1388b17374616c655f69665f6572726f725f6d73cd1b58a4766172799192a6616363657074aa746578742f706c61696eae657461675f67656e657261746564c2a4746167739192a4686f6d65a137";
        let stored = pinned();
        assert_eq!(serde_json::to_string(&stored).expect("json"), JSON);
        let packed = rmp_serde::to_vec_named(&stored).expect("msgpack");
        let hex: String = packed.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PACKED);
        let from_json: StoredResponse = serde_json::from_str(JSON).expect("decode json");
        assert_eq!(from_json, stored);
        let from_packed: StoredResponse = rmp_serde::from_slice(&packed).expect("decode msgpack");
        assert_eq!(from_packed, stored);
    }

    /// The entries under a response key keep their variant names, the stored form's tags.
    #[test]
    fn entry_markers_are_pinned() {
        let marker = CachedEntry::Variants {
            names: vec!["accept".to_owned()],
            generation: "g1".to_owned(),
        };
        let json = serde_json::to_string(&marker).expect("json");
        assert_eq!(
            json,
            r#"{"Variants":{"names":["accept"],"generation":"g1"}}"#
        );
        assert_eq!(
            serde_json::to_string(&CachedEntry::Pass).expect("json"),
            r#""Pass""#
        );
        let stored = serde_json::to_string(&CachedEntry::Stored(pinned())).expect("json");
        assert!(
            stored.starts_with(r#"{"Stored":{"status":200,"#),
            "{stored}"
        );
        for entry in [marker, CachedEntry::Pass, CachedEntry::Stored(pinned())] {
            let packed = rmp_serde::to_vec_named(&entry).expect("msgpack");
            let back: CachedEntry = rmp_serde::from_slice(&packed).expect("decode");
            assert_eq!(format!("{back:?}"), format!("{entry:?}"));
        }
    }

    /// Bytes written as a MessagePack array of numbers (not `bin`) decode too.
    #[test]
    fn bytes_as_arrays_decode() {
        #[derive(Serialize)]
        struct AsArray {
            name: String,
            value: Vec<u8>,
        }
        let packed = rmp_serde::to_vec_named(&AsArray {
            name: "etag".to_owned(),
            value: b"\"1\"".to_vec(),
        })
        .expect("msgpack");
        let field: Field = rmp_serde::from_slice(&packed).expect("decode");
        assert_eq!(field.value, b"\"1\"");
    }

    /// Age is the initial age plus the time resident.
    #[test]
    fn age_grows_with_residence() {
        let stored = sample();
        let later = SystemTime::now() + Duration::from_secs(10);
        let age = stored.age(later);
        assert!(
            age >= Duration::from_secs(15) && age < Duration::from_secs(16),
            "{age:?}"
        );
    }
}
