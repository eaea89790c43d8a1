//! Revalidation with the origin (RFC 9111 section 4.3): the conditional request made from a
//! stale stored response, and what a `304 Not Modified` to it makes of the stored response.
//!
//! This module must never add its own validators to a request that carries the client's
//! (the client's `304` is the client's), nor store anything: the caller stores what it gets.

use std::time::SystemTime;

use http::header::SET_COOKIE;
use http::request::Parts;
use http::{HeaderMap, Method, Response};

use super::admit::Verdict;
use super::body::CacheBody;
use super::lifetime::{Admitted, fresh_left, with_configured_windows};
use super::policy::{fields_not_stored, initial_age, parse_date, storable};
use super::respond::from_store;
use super::settings::Settings;
use super::status::{CacheStatus, Forward};
use super::stored::{Arrival, StoredResponse, merge_update};

/// The request to send to the origin: when revalidating a stale response and the client
/// sent no validators of its own, with the stored response's validators added (then a 304
/// refreshes the stored response). Returns the stored response only in that case.
pub(super) fn conditional<'a>(
    parts: &Parts,
    revalidating: Option<&'a StoredResponse>,
) -> (Parts, Option<&'a StoredResponse>) {
    let mut origin = parts.clone();
    let client_conditional = has_validators(&parts.headers);
    match revalidating {
        Some(stored) if !client_conditional => {
            let validators = stored.origin_validators();
            if validators.is_empty() {
                return (origin, None);
            }
            for (name, value) in validators {
                origin.headers.insert(name, value);
            }
            (origin, Some(stored))
        }
        _ => (origin, None),
    }
}

/// Whether a request carries conditional headers of its own.
pub(super) fn has_validators(headers: &HeaderMap) -> bool {
    [
        http::header::IF_NONE_MATCH,
        http::header::IF_MODIFIED_SINCE,
        http::header::IF_MATCH,
        http::header::IF_UNMODIFIED_SINCE,
        http::header::IF_RANGE,
    ]
    .iter()
    .any(|name| headers.contains_key(name))
}

/// The answer to a request whose revalidation of `stored` got a 304: the full response (the
/// validators were ours, not the client's), refreshed, and what becomes of the stored
/// response.
pub(super) fn answer_not_modified(
    settings: &Settings,
    parts: &Parts,
    stored: &StoredResponse,
    not_modified: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> (Response<CacheBody>, Verdict) {
    if !identifies(stored, not_modified) {
        // A 304 naming another representation confirms nothing stored (RFC 9111 section
        // 4.3.4): this request gets the stored response as the origin's answer to the
        // validators sent, and the stored response goes.
        let age = stored.age(SystemTime::now());
        let status = CacheStatus::forwarded(Forward::Stale);
        let response = from_store(settings, stored.clone(), parts, age, status);
        return (response, Verdict::Revoked);
    }
    let times = (request_time, response_time);
    let Updated { served, verdict } =
        refresh_from_update(settings, parts, stored, not_modified, times.0, times.1);
    let status = match verdict {
        Verdict::Store(_) => CacheStatus::REVALIDATED,
        _ => CacheStatus::forwarded(Forward::Stale),
    };
    let age = served.age(SystemTime::now());
    (from_store(settings, served, parts, age, status), verdict)
}

/// A stored response updated from a 304 or a 206 of its representation: the copy this
/// request gets (every field the origin sent it), and what becomes of the stored one.
pub(super) struct Updated {
    pub(super) served: StoredResponse,
    pub(super) verdict: Verdict,
}

/// A 304 from the origin, or a 206 of the same representation, refreshes the stored
/// response (RFC 9111 sections 3.2 and 4.3.4): merged headers, new freshness and age. The
/// copy stored leaves out the fields the merged response keeps from reuse; when the merged
/// response may no longer be stored at all (it now says `private` or `no-store`), the
/// stored one is revoked; when it arrived stale, nothing is written.
pub(super) fn refresh_from_update(
    settings: &Settings,
    parts: &Parts,
    stored: &StoredResponse,
    update: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Updated {
    let merged = merge_update(stored.headers(), update);
    let initial = initial_age(update, request_time, response_time);
    let arrival = Arrival {
        initial_age: initial,
        response_time,
    };
    // Judged as the GET it stands for, whatever the method of the request that revalidated.
    let facts = storable(
        &Method::GET,
        &parts.headers,
        stored.status(),
        &merged,
        &settings.store,
    )
    .map(|facts| with_configured_windows(settings, facts));
    let mut served_headers = merged.clone();
    if update.contains_key(SET_COOKIE) {
        // The cookie the origin set with its answer is this client's alone.
        served_headers.remove(SET_COOKIE);
        for cookie in update.get_all(SET_COOKIE) {
            served_headers.append(SET_COOKIE, cookie.clone());
        }
    }
    let served_facts = facts.unwrap_or(stored.facts());
    let served = stored.refreshed(served_headers, served_facts, arrival, &[]);
    let verdict = match facts {
        Err(_) => Verdict::Revoked,
        Ok(facts) => match fresh_left(facts, initial) {
            Some(fresh) => {
                let dropped = fields_not_stored(&merged, &settings.store);
                let refreshed = stored.refreshed(merged, facts, arrival, &dropped);
                Verdict::Store(Box::new(Admitted::new(refreshed, facts, fresh)))
            }
            None => Verdict::Refused,
        },
    };
    Updated { served, verdict }
}

/// Whether a 304 identifies the stored response for update (RFC 9111 section 4.3.4): a
/// strong entity tag equal to the stored one, a weak one that matches it weakly, or, without
/// an entity tag, the same `Last-Modified` or none.
fn identifies(stored: &StoredResponse, update: &HeaderMap) -> bool {
    let text = |name| {
        update
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
    };
    let weak = |tag: &str| tag.trim().starts_with("W/");
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    match (text(http::header::ETAG), stored.origin_etag()) {
        (Some(theirs), Some(ours)) if weak(theirs) => opaque(theirs) == opaque(ours),
        (Some(theirs), Some(ours)) => !weak(ours) && theirs.trim() == ours.trim(),
        (Some(_), None) => false,
        (None, _) => match text(http::header::LAST_MODIFIED) {
            Some(modified) => {
                parse_date(modified).is_some_and(|m| stored.last_modified() == Some(m))
            }
            None => true,
        },
    }
}

/// Whether a `206` is a part of the stored response's representation: both carry the same
/// strong entity tag, the origin's own (RFC 9110 section 8.8.3.2).
pub(super) fn same_representation(stored: &StoredResponse, partial: &HeaderMap) -> bool {
    let strong = |tag: &str| !tag.trim_start().starts_with("W/");
    let theirs = partial
        .get(http::header::ETAG)
        .and_then(|tag| tag.to_str().ok());
    match (stored.origin_etag(), theirs) {
        (Some(ours), Some(theirs)) => {
            strong(ours) && strong(theirs) && ours.trim() == theirs.trim()
        }
        _ => false,
    }
}
