//! Range requests answered from a stored complete response (RFC 9110 section 14): which
//! bytes a `Range` asks for, whether `If-Range` lets it apply, and the `206` (one range, or
//! several as `multipart/byteranges`) or `416` the cache makes of them.
//!
//! This module must never call the origin nor read the store: it plans over a stored body
//! it is given. A `Range` it does not understand, or that asks for too much work, is
//! ignored, and the whole response is served, as RFC 9110 section 14.2 allows.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::HeaderValue;
use http::{HeaderMap, StatusCode};

/// Most ranges served as parts of one response; more (or overlapping ones) are answered
/// with the whole body, which RFC 9110 section 14.2 allows and which defeats requests made
/// to multiply the work of one hit.
const MAX_PARTS: usize = 16;

/// What a request's `Range` makes of a stored body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RangePlan {
    /// No range applies: serve the whole response.
    Whole,
    /// Serve these byte ranges of the body (one or more, ascending, not overlapping).
    Parts(Vec<Range<usize>>),
    /// No range overlaps the body: `416` with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// The plan for a request with `request` headers against a stored `200` with `stored`
/// headers and a body of `len` bytes.
pub(crate) fn plan(request: &HeaderMap, stored: &HeaderMap, len: usize) -> RangePlan {
    let Some(range) = request
        .get(http::header::RANGE)
        .and_then(|r| r.to_str().ok())
    else {
        return RangePlan::Whole;
    };
    if !if_range_holds(request, stored) {
        return RangePlan::Whole;
    }
    let Some(specs) = parse(range) else {
        return RangePlan::Whole;
    };
    let mut parts: Vec<Range<usize>> = specs
        .into_iter()
        .filter_map(|spec| spec.resolve(len))
        .collect();
    if parts.is_empty() {
        return RangePlan::Unsatisfiable;
    }
    parts.sort_by_key(|part| part.start);
    let overlapping = parts.windows(2).any(|pair| pair[0].end > pair[1].start);
    if parts.len() > MAX_PARTS || overlapping {
        return RangePlan::Whole;
    }
    RangePlan::Parts(parts)
}

/// One `range-spec` of a `bytes` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-` (`last` `None`).
    From { first: u64, last: Option<u64> },
    /// `-suffix`: the last `suffix` bytes.
    Suffix(u64),
}

impl Spec {
    /// The bytes it selects of a body of `len`, or `None` when it selects none.
    fn resolve(self, len: usize) -> Option<Range<usize>> {
        let len_u64 = u64::try_from(len).ok()?;
        let (start, end) = match self {
            Self::From { first, .. } if first >= len_u64 => return None,
            Self::From { first, last } => {
                let last = last.map_or(len_u64 - 1, |last| last.min(len_u64 - 1));
                (first, last + 1)
            }
            Self::Suffix(0) => return None,
            Self::Suffix(suffix) => (len_u64.saturating_sub(suffix), len_u64),
        };
        // An empty body has no byte to select: a suffix of it is unsatisfiable too.
        (start < end).then_some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }
}

/// The specs of a `bytes=` range (the unit case-insensitive), or `None` when it is not one
/// this cache understands (another unit, a malformed spec): then it is ignored.
fn parse(range: &str) -> Option<Vec<Spec>> {
    let (unit, specs) = range.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut parsed = Vec::new();
    for spec in specs.split(',').map(str::trim) {
        if spec.is_empty() {
            // Empty list elements are allowed and ignored (RFC 9110 section 5.6.1).
            continue;
        }
        let (first, last) = spec.split_once('-')?;
        let number = |text: &str| {
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse::<u64>().unwrap_or(u64::MAX))
        };
        parsed.push(match (first.trim(), last.trim()) {
            ("", suffix) => Spec::Suffix(number(suffix)?),
            (first, "") => Spec::From {
                first: number(first)?,
                last: None,
            },
            (first, last) => {
                let (first, last) = (number(first)?, number(last)?);
                if last < first {
                    return None;
                }
                Spec::From {
                    first,
                    last: Some(last),
                }
            }
        });
    }
    (!parsed.is_empty()).then_some(parsed)
}

/// Whether `If-Range`, if present, lets the range apply: an entity tag that strongly matches
/// the stored one, or a date equal to its `Last-Modified` when that is a strong validator
/// (RFC 9110 section 13.1.5).
fn if_range_holds(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(condition) = request.get(http::header::IF_RANGE) else {
        return true;
    };
    let Ok(condition) = condition.to_str() else {
        return false;
    };
    let condition = condition.trim();
    let stored_field = |name| stored.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if condition.starts_with('"') || condition.starts_with("W/") {
        // Strong comparison: a weak tag on either side never matches.
        return !condition.starts_with("W/")
            && stored_field(http::header::ETAG)
                .is_some_and(|etag| !etag.starts_with("W/") && etag.trim() == condition);
    }
    // A date is a strong validator only when the response was sent at least a second after
    // it (RFC 9110 section 8.8.2.2), and only a strong one may select a part.
    let date = |name| stored_field(name).and_then(super::policy::parse_date);
    let (Some(modified), Some(sent)) =
        (date(http::header::LAST_MODIFIED), date(http::header::DATE))
    else {
        return false;
    };
    let strong = sent
        .duration_since(modified)
        .is_ok_and(|gap| gap >= std::time::Duration::from_secs(1));
    strong && super::policy::parse_date(condition) == Some(modified)
}

/// The status, header changes and body of a `206` or `416` for `plan` over `body`, given
/// the stored headers (`Content-Type` goes into each part of a multipart answer).
pub(crate) struct Ranged {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    /// Fields to set on the stored response's headers.
    pub(crate) set: Vec<(http::HeaderName, HeaderValue)>,
    /// Fields of the stored response that no longer describe the body sent.
    pub(crate) removed: Vec<http::HeaderName>,
}

/// The answer for `parts` (non-empty) or an unsatisfiable range of `body`.
pub(crate) fn answer(plan: &RangePlan, stored: &HeaderMap, body: &Bytes) -> Option<Ranged> {
    let len = body.len();
    match plan {
        RangePlan::Whole => None,
        RangePlan::Unsatisfiable => Some(Ranged {
            status: StatusCode::RANGE_NOT_SATISFIABLE,
            body: Bytes::new(),
            set: vec![
                (http::header::CONTENT_RANGE, content_range(None, len)),
                (http::header::CONTENT_LENGTH, HeaderValue::from(0)),
            ],
            removed: vec![http::header::CONTENT_TYPE],
        }),
        RangePlan::Parts(parts) if parts.len() == 1 => {
            let part = parts[0].clone();
            Some(Ranged {
                status: StatusCode::PARTIAL_CONTENT,
                set: vec![
                    (http::header::CONTENT_RANGE, content_range(Some(&part), len)),
                    (http::header::CONTENT_LENGTH, HeaderValue::from(part.len())),
                ],
                body: body.slice(part),
                removed: Vec::new(),
            })
        }
        RangePlan::Parts(parts) => Some(multipart(parts, stored, body)),
    }
}

/// A `multipart/byteranges` body of `parts` (RFC 9110 section 14.6).
fn multipart(parts: &[Range<usize>], stored: &HeaderMap, body: &Bytes) -> Ranged {
    let boundary = crate::token::random_token();
    let content_type = stored.get(http::header::CONTENT_TYPE);
    let mut out = BytesMut::new();
    for part in parts {
        out.put_slice(b"\r\n--");
        out.put_slice(boundary.as_bytes());
        out.put_slice(b"\r\n");
        if let Some(content_type) = content_type {
            out.put_slice(b"Content-Type: ");
            out.put_slice(content_type.as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"Content-Range: ");
        out.put_slice(content_range(Some(part), body.len()).as_bytes());
        out.put_slice(b"\r\n\r\n");
        out.put_slice(&body[part.clone()]);
    }
    out.put_slice(b"\r\n--");
    out.put_slice(boundary.as_bytes());
    out.put_slice(b"--\r\n");
    let media = format!("multipart/byteranges; boundary={boundary}");
    Ranged {
        status: StatusCode::PARTIAL_CONTENT,
        set: vec![
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(&media)
                    .unwrap_or(HeaderValue::from_static("multipart/byteranges")),
            ),
            (http::header::CONTENT_LENGTH, HeaderValue::from(out.len())),
        ],
        body: out.freeze(),
        removed: Vec::new(),
    }
}

/// `bytes first-last/len`, or `bytes */len` for an unsatisfiable range.
fn content_range(part: Option<&Range<usize>>, len: usize) -> HeaderValue {
    let text = match part {
        Some(part) => format!("bytes {}-{}/{len}", part.start, part.end - 1),
        None => format!("bytes */{len}"),
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("bytes */0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    /// One range, `start..end`.
    fn one(start: usize, end: usize) -> RangePlan {
        RangePlan::Parts(std::iter::once(start..end).collect())
    }

    fn planned(range: &'static str) -> RangePlan {
        plan(&request(&[("range", range)]), &HeaderMap::new(), 10)
    }

    /// Single ranges in each form, clamped to the body.
    #[test]
    fn single_ranges() {
        assert_eq!(planned("bytes=2-4"), one(2, 5));
        assert_eq!(planned("bytes=7-"), one(7, 10));
        assert_eq!(planned("bytes=-3"), one(7, 10));
        assert_eq!(planned("BYTES=8-99"), one(8, 10));
        assert_eq!(planned("bytes=-30"), one(0, 10));
        assert_eq!(planned("bytes=20-"), RangePlan::Unsatisfiable);
        assert_eq!(planned("bytes=-0"), RangePlan::Unsatisfiable);
    }

    /// What is not understood is ignored; too many or overlapping parts get the whole body.
    #[test]
    fn ranges_not_understood_are_ignored() {
        for range in [
            "items=0-1",
            "bytes=4-2",
            "bytes=a-b",
            "bytes=",
            "bytes=1-2-3",
        ] {
            assert_eq!(planned(range), RangePlan::Whole, "{range}");
        }
        assert_eq!(planned("bytes=0-5,3-7"), RangePlan::Whole);
        let many = (0..20)
            .map(|i| format!("{i}-{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let headers: HeaderMap = [(
            http::header::RANGE,
            HeaderValue::from_str(&format!("bytes={many}")).expect("v"),
        )]
        .into_iter()
        .collect();
        assert_eq!(plan(&headers, &HeaderMap::new(), 100), RangePlan::Whole);
        assert_eq!(
            planned("bytes=4-5, 0-1"),
            RangePlan::Parts(vec![0..2, 4..6])
        );
    }

    /// If-Range: a strong tag match or the exact Last-Modified lets the range apply.
    #[test]
    fn if_range_needs_a_strong_match() {
        let stored = request(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sat, 28 Nov 2026 08:00:00 GMT"),
            ("date", "Sat, 28 Nov 2026 08:00:01 GMT"),
        ]);
        let with = |condition: &'static str| {
            plan(
                &request(&[("range", "bytes=0-1"), ("if-range", condition)]),
                &stored,
                10,
            )
        };
        assert_eq!(with("\"v1\""), one(0, 2));
        assert_eq!(with("\"v2\""), RangePlan::Whole);
        assert_eq!(with("W/\"v1\""), RangePlan::Whole);
        assert_eq!(with("Sat, 28 Nov 2026 08:00:00 GMT"), one(0, 2));
        assert_eq!(with("Sat, 28 Nov 2026 09:00:00 GMT"), RangePlan::Whole);
        // Sent in the second it was modified: the date is weak, the whole body is sent.
        let weak = request(&[
            ("last-modified", "Sat, 28 Nov 2026 08:00:00 GMT"),
            ("date", "Sat, 28 Nov 2026 08:00:00 GMT"),
        ]);
        let asked = request(&[
            ("range", "bytes=0-1"),
            ("if-range", "Sat, 28 Nov 2026 08:00:00 GMT"),
        ]);
        assert_eq!(plan(&asked, &weak, 10), RangePlan::Whole);
    }

    /// An empty body has nothing to select, even for a suffix.
    #[test]
    fn an_empty_body_satisfies_no_range() {
        for range in ["bytes=-1", "bytes=-1,-2", "bytes=0-"] {
            let headers = request(&[("range", range)]);
            assert_eq!(
                plan(&headers, &HeaderMap::new(), 0),
                RangePlan::Unsatisfiable,
                "{range}"
            );
        }
    }

    /// Two parts become a multipart body naming each part's range and type.
    #[test]
    fn multipart_bodies() {
        let stored = request(&[("content-type", "text/plain")]);
        let body = Bytes::from_static(b"0123456789");
        let ranged =
            answer(&RangePlan::Parts(vec![0..2, 4..6]), &stored, &body).expect("an answer");
        let text = String::from_utf8(ranged.body.to_vec()).expect("text");
        assert!(text.contains("Content-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01"));
        assert!(text.contains("Content-Range: bytes 4-5/10\r\n\r\n45"));
        assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    }
}
