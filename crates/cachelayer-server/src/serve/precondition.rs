//! Preconditions of a write (RFC 9110 sections 13.1.1, 13.1.2 and 13.2.2): `If-Match` and
//! `If-None-Match` on `PUT`, `PATCH` and `DELETE`, judged against the product's current
//! entity tag, so a client doing optimistic concurrency never overwrites a change it has not
//! seen (`412 Precondition Failed` instead). The comparisons are the library's
//! ([`conditional`]), the ones reads use.
//!
//! This module must never touch the database: it judges a tag it is given.

use axum::http::{HeaderMap, header};
use cachelayer::http::conditional;

/// A write's preconditions: the request's two fields, nothing else of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Precondition {
    fields: HeaderMap,
}

impl Precondition {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut fields = HeaderMap::new();
        for name in [header::IF_MATCH, header::IF_NONE_MATCH] {
            for value in headers.get_all(&name) {
                fields.append(name.clone(), value.clone());
            }
        }
        Self { fields }
    }

    /// Whether the request states none (the write goes ahead unconditionally).
    pub(crate) fn is_none(&self) -> bool {
        self.fields.is_empty()
    }

    /// Whether the write may go ahead, `current` being the product's entity tag (`None`:
    /// no such product). `If-Match` compares strongly (a weak tag never matches),
    /// `If-None-Match` weakly; both must hold.
    pub(crate) fn holds(&self, current: Option<&str>) -> bool {
        let if_match = !self.fields.contains_key(header::IF_MATCH)
            || current.is_some_and(|tag| conditional::if_match(&self.fields, tag));
        let if_none_match = !self.fields.contains_key(header::IF_NONE_MATCH)
            || current.is_none_or(|tag| !conditional::if_none_match(&self.fields, tag));
        if_match && if_none_match
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderName, HeaderValue};

    use super::*;

    fn precondition(fields: &[(HeaderName, &str)]) -> Precondition {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(name, HeaderValue::from_str(value).expect("value"));
        }
        Precondition::of(&headers)
    }

    const TAG: &str = "\"abc\"";

    #[test]
    fn if_match_compares_strongly() {
        let current = Some(TAG);
        let holds = |value: &str| precondition(&[(header::IF_MATCH, value)]).holds(current);
        assert!(holds(TAG));
        assert!(holds("\"x\", \"abc\""));
        assert!(holds("*"));
        assert!(!holds("W/\"abc\""), "a weak tag never matches");
        assert!(!holds("\"abcd\""));
        let any = precondition(&[(header::IF_MATCH, "*")]);
        assert!(!any.holds(None), "no product: `*` does not hold");
        assert!(!precondition(&[(header::IF_MATCH, TAG)]).holds(None));
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let holds =
            |value: &str, current| precondition(&[(header::IF_NONE_MATCH, value)]).holds(current);
        assert!(!holds(TAG, Some(TAG)));
        assert!(!holds("W/\"abc\"", Some(TAG)));
        assert!(!holds("*", Some(TAG)));
        assert!(holds("*", None));
        assert!(holds("\"other\"", Some(TAG)));
    }

    #[test]
    fn both_must_hold_and_none_is_unconditional() {
        let both = precondition(&[(header::IF_MATCH, TAG), (header::IF_NONE_MATCH, TAG)]);
        assert!(!both.holds(Some(TAG)));
        let none = precondition(&[]);
        assert!(none.is_none());
        assert!(none.holds(None) && none.holds(Some(TAG)));
        let unreadable = {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::IF_MATCH,
                HeaderValue::from_bytes(b"\"\xff\"").expect("v"),
            );
            Precondition::of(&headers)
        };
        assert!(
            !unreadable.holds(Some(TAG)),
            "an unreadable If-Match names no tag"
        );
    }
}
