//! Entity tags, `If-None-Match` and `If-Match` (RFC 9110 sections 8.8.3, 13.1.1 and
//! 13.1.2): the one way this crate makes a strong tag of a body, decides that a client's
//! copy is current (weak comparison), and that a write's tag still names the current one
//! (strong comparison). Public so that an application answering its own conditional reads
//! and writes (outside the layer) agrees with the layer exactly.
//!
//! This module must never decide what to send: it compares and makes tags, nothing else.

use http::HeaderMap;
use http::header::HeaderValue;

/// A strong entity tag of `body`: the first 128 bits of its SHA-256, in hex, quoted.
/// Equal bodies get equal tags; a changed body a different one (SHA-256 makes a collision
/// out of reach even for a client choosing what it writes).
pub fn strong_etag(body: &[u8]) -> HeaderValue {
    use sha2::{Digest, Sha256};
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(body);
    let mut tag = [b'"'; 34];
    for (i, byte) in digest[..16].iter().enumerate() {
        tag[1 + 2 * i] = HEX[usize::from(byte >> 4)];
        tag[2 + 2 * i] = HEX[usize::from(byte & 0x0f)];
    }
    HeaderValue::from_bytes(&tag).expect("quoted hex is a valid header value")
}

/// Whether the request's `If-None-Match` names `etag` (weak comparison: `W/"x"` and `"x"`
/// match) or is `*`: the client's copy is current, and a GET or HEAD gets `304`. `false`
/// when the request has no `If-None-Match`.
pub fn if_none_match(request: &HeaderMap, etag: &str) -> bool {
    let etag = opaque(etag);
    request
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| candidate.trim() == "*" || opaque(candidate) == etag)
}

/// Whether the request's `If-Match` names `etag` (strong comparison: a weak tag never
/// matches, RFC 9110 section 8.8.3.2) or is `*`: a write conditional on it may go ahead.
/// `false` when the request has no `If-Match`, or one that cannot be read.
pub fn if_match(request: &HeaderMap, etag: &str) -> bool {
    let strong = |tag: &str| !tag.starts_with("W/");
    let etag = etag.trim();
    request
        .get_all(http::header::IF_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| {
            candidate == "*" || (strong(candidate) && strong(etag) && candidate == etag)
        })
}

/// The opaque part of an entity tag, for the weak comparison.
fn opaque(tag: &str) -> &str {
    let tag = tag.trim();
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                http::header::IF_NONE_MATCH,
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    #[test]
    fn strong_tags_are_quoted_hex_of_the_body() {
        let tag = strong_etag(b"hello");
        assert_eq!(tag, "\"2cf24dba5fb0a30e26e83b2ac5b9e29e\"");
        assert_ne!(strong_etag(b"hello!"), tag);
    }

    #[test]
    fn if_none_match_compares_weakly_across_lists_and_fields() {
        let etag = "\"abc\"";
        assert!(if_none_match(&request(&["\"abc\""]), etag));
        assert!(if_none_match(&request(&["W/\"abc\""]), etag));
        assert!(if_none_match(&request(&["\"x\", \"abc\""]), etag));
        assert!(if_none_match(&request(&["\"x\"", " W/\"abc\" "]), etag));
        assert!(if_none_match(&request(&["*"]), etag));
        assert!(if_none_match(&request(&["\"abc\""]), "W/\"abc\""));
        assert!(!if_none_match(&request(&["\"abcd\""]), etag));
        assert!(!if_none_match(&request(&["abc"]), etag), "unquoted");
        assert!(!if_none_match(&request(&[]), etag));
    }

    #[test]
    fn if_match_compares_strongly() {
        let mut headers = HeaderMap::new();
        headers.append(
            http::header::IF_MATCH,
            HeaderValue::from_static("\"x\", \"abc\""),
        );
        assert!(if_match(&headers, "\"abc\""));
        assert!(!if_match(&headers, "W/\"abc\""), "a weak current tag");
        assert!(!if_match(&headers, "\"abcd\""));
        headers.insert(
            http::header::IF_MATCH,
            HeaderValue::from_static("W/\"abc\""),
        );
        assert!(!if_match(&headers, "\"abc\""), "a weak tag in the request");
        headers.insert(http::header::IF_MATCH, HeaderValue::from_static("*"));
        assert!(if_match(&headers, "\"anything\""));
        assert!(!if_match(&HeaderMap::new(), "\"abc\""));
    }
}
