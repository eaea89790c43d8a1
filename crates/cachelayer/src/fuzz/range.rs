//! Fuzz target: `Range` and `If-Range` against a stored body (`http::range`), the bytes a
//! hostile client chooses and the cache answers from memory.
//!
//! Checked: planning is total for any field bytes and any body length (an empty one
//! included); every part planned lies inside the body, ascending, without overlap, at most
//! 16 of them; a single part's `206` carries exactly those bytes with a `Content-Range` and
//! `Content-Length` that say so; a multipart body holds every part; an unsatisfiable range is
//! a `416` naming the length. This module must never loosen a property to hide a finding.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, StatusCode};
use proptest::collection::vec;
use proptest::prelude::*;

use super::stored::header_value;
use crate::http::range::{RangePlan, answer, plan};

/// One range spec as clients write them, numbers near and past a small body's end.
fn spec() -> impl Strategy<Value = String> {
    let number = prop_oneof![0u64..40, Just(u64::MAX), Just(1 << 63)];
    prop_oneof![
        (number.clone(), number.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        number.clone().prop_map(|a| format!("{a}-")),
        number.prop_map(|n| format!("-{n}")),
        "[ -~]{0,6}",
    ]
}

/// A `Range` field: a list of specs after a unit, or any bytes at all.
fn range_field() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        4 => (
            prop::sample::select(vec!["bytes", "BYTES", "Bytes", "items", ""]),
            vec(spec(), 0..20),
            prop::sample::select(vec![",", ", ", " , ", ",,"]),
        )
            .prop_filter_map("a valid field", |(unit, specs, separator)| {
                HeaderValue::from_str(&format!("{unit}={}", specs.join(separator))).ok()
            }),
        1 => header_value(),
    ]
}

proptest! {
    #![proptest_config(super::config())]

    /// Whatever `Range` and `If-Range` a client sends, against any stored body: the plan
    /// and the answer hold the properties above.
    #[test]
    fn fuzz_ranges_select_what_they_say(
        range in range_field(),
        if_range in proptest::option::of(header_value()),
        body in vec(any::<u8>(), 0..64),
        etag in prop::sample::select(vec!["\"v1\"", "W/\"v1\"", ""]),
    ) {
        let mut request = HeaderMap::new();
        request.insert(http::header::RANGE, range);
        if let Some(condition) = if_range {
            request.insert(http::header::IF_RANGE, condition);
        }
        let mut stored = HeaderMap::new();
        stored.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        if !etag.is_empty() {
            stored.insert(http::header::ETAG, HeaderValue::from_static(etag));
        }
        let body = Bytes::from(body);
        let planned = plan(&request, &stored, body.len());
        if let RangePlan::Parts(parts) = &planned {
            prop_assert!(!parts.is_empty() && parts.len() <= 16, "{:?}", parts);
            prop_assert!(parts.iter().all(|p| p.start < p.end && p.end <= body.len()), "{:?}", parts);
            prop_assert!(parts.windows(2).all(|w| w[0].end <= w[1].start), "{:?}", parts);
        }
        let answered = answer(&planned, &stored, &body);
        let field = |ranged: &crate::http::range::Ranged, name: http::HeaderName| {
            ranged.set.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_str().unwrap_or("").to_owned())
        };
        match (&planned, answered) {
            (RangePlan::Whole, answered) => prop_assert!(answered.is_none()),
            (RangePlan::Unsatisfiable, Some(ranged)) => {
                prop_assert_eq!(ranged.status, StatusCode::RANGE_NOT_SATISFIABLE);
                prop_assert_eq!(field(&ranged, http::header::CONTENT_RANGE), Some(format!("bytes */{}", body.len())));
            }
            (RangePlan::Parts(parts), Some(ranged)) if parts.len() == 1 => {
                let part = parts[0].clone();
                prop_assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
                prop_assert_eq!(&ranged.body[..], &body[part.clone()]);
                prop_assert_eq!(
                    field(&ranged, http::header::CONTENT_RANGE),
                    Some(format!("bytes {}-{}/{}", part.start, part.end - 1, body.len()))
                );
                prop_assert_eq!(field(&ranged, http::header::CONTENT_LENGTH), Some(part.len().to_string()));
            }
            (RangePlan::Parts(parts), Some(ranged)) => {
                prop_assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
                prop_assert_eq!(field(&ranged, http::header::CONTENT_LENGTH), Some(ranged.body.len().to_string()));
                for part in parts {
                    let header = format!("Content-Range: bytes {}-{}/{}\r\n\r\n", part.start, part.end - 1, body.len());
                    let mut expected = header.into_bytes();
                    expected.extend_from_slice(&body[part.clone()]);
                    prop_assert!(
                        ranged.body.windows(expected.len()).any(|w| w == &expected[..]),
                        "part {:?} missing", part
                    );
                }
            }
            (planned, None) => prop_assert!(false, "{:?} without an answer", planned),
        }
    }
}
