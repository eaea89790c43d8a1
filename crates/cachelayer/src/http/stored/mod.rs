//! A response as stored: status, end-to-end headers, body, and the facts RFC 9111 needs to
//! judge it later (when it arrived, its age then, its freshness, its `Vary` values), and the
//! entries stored under a response key ([`CachedEntry`]: a response, or a marker).
//!
//! Entries are written in a binary layout of their own (`layout`): a hit reads the status,
//! the header block and the body as bytes, with no serialization to parse, and its body is
//! a slice of the stored bytes. Hop-by-hop headers are never stored (RFC 9110 section 7.6.1),
//! nor `Age` (it is computed when served); `Content-Length` is set when the response is
//! stored, so hits need not. This module must never decide cacheability; `policy` does.

mod layout;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use super::headers::{is_hop_by_hop, strip_hop_by_hop};
use super::policy::Storable;

/// What is stored under a response key: a response, or a marker telling what to do instead.
// A response is the common case, read on every hit: boxing it would allocate per hit.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredResponse {
    status: StatusCode,
    /// End-to-end headers, `Content-Length` included.
    headers: HeaderMap,
    body: Bytes,
    /// When the response arrived, Unix milliseconds.
    response_time_ms: u64,
    /// Its age on arrival, milliseconds.
    initial_age_ms: u64,
    facts: Storable,
    /// The request's values of the headers its `Vary` names (`None`: absent).
    vary: Vec<(String, Option<String>)>,
    /// Its `ETag` was made here from the body (so the origin does not know it).
    etag_generated: bool,
    /// Its tags, each with the tag's version when it was stored.
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
        let Arrival {
            initial_age,
            response_time,
        } = arrival;
        let mut headers = head.headers.clone();
        strip_hop_by_hop(&mut headers);
        headers.remove(http::header::AGE);
        for name in drop_headers {
            headers.remove(name);
        }
        // The stored body's length, also for HEAD (whose body is empty when served).
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Self {
            status: head.status,
            headers,
            body,
            response_time_ms: millis(response_time.duration_since(UNIX_EPOCH).unwrap_or_default()),
            initial_age_ms: millis(initial_age),
            facts,
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

    fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Its entity tag.
    pub(crate) fn etag(&self) -> Option<&str> {
        self.header(&http::header::ETAG)
    }

    /// Its entity tag, when the origin gave it (not made here).
    pub(crate) fn origin_etag(&self) -> Option<&str> {
        self.etag().filter(|_| !self.etag_generated)
    }

    /// Its `Last-Modified` time.
    pub(crate) fn last_modified(&self) -> Option<SystemTime> {
        self.header(&http::header::LAST_MODIFIED)
            .and_then(super::policy::parse_date)
    }

    /// Its `Last-Modified` time, else its `Date`, else when it arrived: what a request's
    /// `If-Modified-Since` is compared with (RFC 9111 section 4.3.2).
    pub(crate) fn last_modified_or_date(&self) -> SystemTime {
        self.last_modified()
            .or_else(|| super::policy::date_of(&self.headers))
            .unwrap_or(UNIX_EPOCH + Duration::from_millis(self.response_time_ms))
    }

    /// Its body.
    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }

    /// Validators the origin understands, for a conditional request: its own `ETag` (not
    /// one made here) and `Last-Modified`.
    pub(crate) fn origin_validators(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut validators = Vec::new();
        if !self.etag_generated
            && let Some(etag) = self.headers.get(http::header::ETAG)
        {
            validators.push((http::header::IF_NONE_MATCH, etag.clone()));
        }
        if let Some(modified) = self.headers.get(http::header::LAST_MODIFIED) {
            validators.push((http::header::IF_MODIFIED_SINCE, modified.clone()));
        }
        validators
    }

    /// This response refreshed by a `304 Not Modified` or a `206` of it (RFC 9111 section
    /// 4.3.4), with the headers [`merge_update`] made, less `drop_headers`; the body stays.
    pub(crate) fn refreshed(
        &self,
        merged: HeaderMap,
        facts: Storable,
        arrival: Arrival,
        drop_headers: &[HeaderName],
    ) -> Self {
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.status = self.status;
        head.headers = merged;
        let refreshed = Self::new(
            &head,
            self.body.clone(),
            facts,
            arrival,
            self.vary.clone(),
            drop_headers,
        );
        Self {
            etag_generated: self.etag_generated,
            tags: self.tags.clone(),
            ..refreshed
        }
    }

    /// Its status.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// Its headers.
    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Its storage facts.
    pub(crate) fn facts(&self) -> Storable {
        self.facts
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

    /// Whether its layout can hold it and a reader take it back: a response with more
    /// fields than a header map holds, more than 65,535 tags or `Vary` values, or a header
    /// name or tag longer than that, is not stored.
    pub(crate) fn fits_layout(&self) -> bool {
        layout::fits(self)
    }

    /// Status, headers and body to send: moved out, not copied (the body shares the stored
    /// bytes).
    pub(crate) fn into_served(self) -> Served {
        Served {
            status: self.status,
            headers: self.headers,
            body: self.body,
        }
    }
}

/// Fields a 304 or 206 must not change in a stored response: they describe the body or the
/// connection, or belong to one client (a cookie), or instruct this cache (tags).
const KEPT_ON_UPDATE: [&str; 8] = [
    "content-length",
    "content-encoding",
    "content-range",
    "content-type",
    "set-cookie",
    "cache-tag",
    "surrogate-key",
    "age",
];

/// A stored response's headers updated from a 304, or a 206 of the same representation (RFC
/// 9111 sections 3.2, 3.4 and 4.3.4): its fields replace those of the same name, except the
/// ones above and hop-by-hop ones; fields it does not carry are kept.
pub(crate) fn merge_update(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    for name in not_modified.keys() {
        if is_hop_by_hop(name) || KEPT_ON_UPDATE.contains(&name.as_str()) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let facts = Storable::fresh_for(Duration::from_secs(60));
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
    /// not stored; the body's length is.
    #[test]
    fn stores_end_to_end_headers_and_the_length() {
        let served = sample().into_served();
        assert_eq!(served.headers.len(), 2, "{:?}", served.headers);
        assert_eq!(served.headers["content-type"], "application/octet-stream");
        assert_eq!(served.headers["content-length"], "5");
        assert_eq!(&served.body[..], &[0, 159, 146, 150, 255]);
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
