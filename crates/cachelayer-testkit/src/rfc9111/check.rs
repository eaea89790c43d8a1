//! Judging one step: a [`Reply`] and what the origin saw, against an [`Expect`]ation.
//!
//! Every mismatch of a step is reported at once, with the reply's cache labels, so one
//! failure message is enough to see what the cache did. This module must never send a
//! request nor wait: it only compares.

use http::{HeaderMap, HeaderName};

use super::{Expect, Reply};
use crate::origin::Received;

/// Longest body quoted in a failure message.
const QUOTED_BODY_BYTES: usize = 120;

/// What the origin saw of a case's path around one step.
#[derive(Debug)]
pub(super) struct OriginSeen {
    /// Requests for the path before the step was sent.
    pub(super) calls_before: usize,
    /// Requests for the path after the reply.
    pub(super) calls: usize,
    /// The last request for the path.
    pub(super) last: Option<Received>,
}

/// Checks a step; the error lists every mismatch and summarises the reply.
pub(super) fn step(expect: &Expect, reply: &Reply, seen: &OriginSeen) -> Result<(), String> {
    let mut problems = Vec::new();
    problems.extend(shape(expect, reply));
    problems.extend(reply_headers(expect, &reply.headers));
    problems.extend(cache_status(expect, &reply.headers));
    problems.extend(origin_calls(expect, seen));
    problems.extend(origin_request(expect, seen));
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!("{} [got {}]", problems.join("; "), summary(reply)))
}

/// Status and body, or the custom check that replaces them.
fn shape(expect: &Expect, reply: &Reply) -> Vec<String> {
    if let Some(check) = expect.check {
        return check(reply).err().into_iter().collect();
    }
    let mut problems = Vec::new();
    if reply.status.as_u16() != expect.status {
        problems.push(format!(
            "status {} (expected {})",
            reply.status.as_u16(),
            expect.status
        ));
    }
    if let Some(body) = &expect.body
        && reply.body != *body
    {
        problems.push(format!(
            "body {} (expected {})",
            quote(&reply.body),
            quote(body)
        ));
    }
    problems
}

/// Header fields the reply must and must not carry.
fn reply_headers(expect: &Expect, headers: &HeaderMap) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, value) in &expect.headers {
        if !has_value(headers, name, value) {
            problems.push(format!(
                "{name}: {} (expected {value:?})",
                values(headers, name)
            ));
        }
    }
    for name in &expect.absent {
        if headers.contains_key(name) {
            problems.push(format!("{name}: {} (expected none)", values(headers, name)));
        }
    }
    problems
}

/// Text `Cache-Status` must contain (all entries, joined as one list).
fn cache_status(expect: &Expect, headers: &HeaderMap) -> Vec<String> {
    let status = all_values(headers, &HeaderName::from_static("cache-status"));
    expect
        .cache_status_contains
        .iter()
        .filter(|text| !status.contains(*text))
        .map(|text| format!("Cache-Status lacks {text:?}"))
        .collect()
}

/// The origin's call count for the path after the step.
fn origin_calls(expect: &Expect, seen: &OriginSeen) -> Option<String> {
    let expected = expect.origin_calls_after_step?;
    (seen.calls != expected).then(|| {
        format!(
            "origin called {} time(s) in all (expected {expected}; {} in this step)",
            seen.calls,
            seen.calls - seen.calls_before
        )
    })
}

/// Header fields the origin's last request must and must not carry.
fn origin_request(expect: &Expect, seen: &OriginSeen) -> Vec<String> {
    if expect.origin_saw.is_empty() && expect.origin_lacked.is_empty() {
        return Vec::new();
    }
    let Some(last) = seen
        .last
        .as_ref()
        .filter(|_| seen.calls > seen.calls_before)
    else {
        return vec!["the origin received no request in this step".to_owned()];
    };
    let mut problems = Vec::new();
    for (name, value) in &expect.origin_saw {
        if !has_value(&last.headers, name, value) {
            problems.push(format!(
                "origin saw {name}: {} (expected {value:?})",
                values(&last.headers, name)
            ));
        }
    }
    for name in &expect.origin_lacked {
        if last.headers.contains_key(name) {
            problems.push(format!(
                "origin saw {name}: {} (expected none)",
                values(&last.headers, name)
            ));
        }
    }
    problems
}

/// Whether one of `name`'s field values is `value` (surrounding whitespace aside).
fn has_value(headers: &HeaderMap, name: &HeaderName, value: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.trim() == value))
}

/// `name`'s values for a message, `none` when absent.
fn values(headers: &HeaderMap, name: &HeaderName) -> String {
    if headers.contains_key(name) {
        format!("{:?}", all_values(headers, name))
    } else {
        "none".to_owned()
    }
}

/// `name`'s values joined as one comma-separated list.
fn all_values(headers: &HeaderMap, name: &HeaderName) -> String {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reply in one line: status, cache labels and body.
fn summary(reply: &Reply) -> String {
    let x_cache = HeaderName::from_static("x-cache");
    let cache_status = HeaderName::from_static("cache-status");
    format!(
        "{} X-Cache={} Cache-Status={:?} body {}",
        reply.status.as_u16(),
        all_values(&reply.headers, &x_cache),
        all_values(&reply.headers, &cache_status),
        quote(&reply.body)
    )
}

/// A body for a message, cut short.
fn quote(body: &[u8]) -> String {
    let shown = &body[..body.len().min(QUOTED_BODY_BYTES)];
    let more = if body.len() > shown.len() { "…" } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(shown))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::field;
    use http::{Method, StatusCode};

    fn reply(status: u16, headers: &[(&str, &str)], body: &'static str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: headers.iter().map(|(n, v)| field(n, v)).collect(),
            body: body.into(),
        }
    }

    fn seen(calls_before: usize, calls: usize, headers: &[(&str, &str)]) -> OriginSeen {
        OriginSeen {
            calls_before,
            calls,
            last: Some(Received {
                method: Method::GET,
                path_and_query: "/rfc/x".to_owned(),
                headers: headers.iter().map(|(n, v)| field(n, v)).collect(),
            }),
        }
    }

    /// A matching reply passes; each kind of mismatch is named in the message.
    #[test]
    fn mismatches_are_all_reported() {
        let expect = Expect::hit(1)
            .body("stored")
            .absent("set-cookie")
            .cache_status("hit")
            .origin_saw("if-none-match", "\"a\"");
        let good = reply(
            200,
            &[("x-cache", "HIT"), ("cache-status", "cachelayer; hit")],
            "stored",
        );
        assert_eq!(
            step(&expect, &good, &seen(0, 1, &[("if-none-match", "\"a\"")])),
            Ok(())
        );
        let bad = reply(206, &[("x-cache", "MISS"), ("set-cookie", "a=1")], "other");
        let message = step(&expect, &bad, &seen(1, 1, &[])).expect_err("mismatches");
        for part in [
            "status 206",
            "body \"other\"",
            "x-cache: \"MISS\"",
            "set-cookie",
            "Cache-Status lacks \"hit\"",
            "no request in this step",
        ] {
            assert!(message.contains(part), "{part:?} missing from {message}");
        }
    }
}
