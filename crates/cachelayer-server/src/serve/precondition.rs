//! Preconditions of a write (RFC 9110 sections 13.1.1, 13.1.2 and 13.2.2): `If-Match` and
//! `If-None-Match` on `PUT`, `PATCH` and `DELETE`, judged against the product's current
//! entity tag, so a client doing optimistic concurrency never overwrites a change it has not
//! seen (`412 Precondition Failed` instead).
//!
//! This module must never touch the database: it judges a tag it is given.

use axum::http::{HeaderMap, HeaderName, header};

/// The entity tags a precondition field lists.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tags {
    /// `*`: any current representation.
    Any,
    /// The tags as sent (an unreadable field lists none).
    List(Vec<String>),
}

impl Tags {
    fn of(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut fields = headers.get_all(name).iter().peekable();
        fields.peek()?;
        let mut tags = Vec::new();
        for field in fields {
            let Ok(text) = field.to_str() else {
                return Some(Self::List(Vec::new()));
            };
            for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if tag == "*" {
                    return Some(Self::Any);
                }
                tags.push(tag.to_owned());
            }
        }
        Some(Self::List(tags))
    }
}

/// A write's preconditions, from its request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Precondition {
    if_match: Option<Tags>,
    if_none_match: Option<Tags>,
}

impl Precondition {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        Self {
            if_match: Tags::of(headers, &header::IF_MATCH),
            if_none_match: Tags::of(headers, &header::IF_NONE_MATCH),
        }
    }

    /// Whether the request states none (the write goes ahead unconditionally).
    pub(crate) fn is_none(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }

    /// Whether the write may go ahead, `current` being the product's entity tag (`None`:
    /// no such product). `If-Match` compares strongly (a weak tag never matches),
    /// `If-None-Match` weakly; both must hold.
    pub(crate) fn holds(&self, current: Option<&str>) -> bool {
        let if_match = match &self.if_match {
            None => true,
            Some(Tags::Any) => current.is_some(),
            Some(Tags::List(tags)) => current.is_some_and(|current| {
                !current.starts_with("W/") && tags.iter().any(|tag| tag == current)
            }),
        };
        let if_none_match = match &self.if_none_match {
            None => true,
            Some(Tags::Any) => current.is_none(),
            Some(Tags::List(tags)) => current.is_none_or(|current| {
                let opaque = |tag: &str| tag.strip_prefix("W/").unwrap_or(tag).to_owned();
                tags.iter().all(|tag| opaque(tag) != opaque(current))
            }),
        };
        if_match && if_none_match
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

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
