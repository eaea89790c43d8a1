//! Revalidation with the origin (RFC 9111 section 4.3): the conditional request made from a
//! stale stored response, and what a `304 Not Modified` to it makes of the stored response.
//!
//! This module must never add its own validators to a request that carries the client's
//! (the client's `304` is the client's), nor store anything: the caller stores what it gets.

use std::time::SystemTime;

use http::request::Parts;
use http::{HeaderMap, Method, Response};

use super::admit::Verdict;
use super::body::CacheBody;
use super::lifetime::{Admitted, fresh_left, with_configured_windows};
use super::policy::{initial_age, storable};
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
/// validators were ours, not the client's), refreshed, and what to store of it when the
/// refreshed response may still be stored.
pub(super) fn answer_not_modified(
    settings: &Settings,
    parts: &Parts,
    stored: &StoredResponse,
    not_modified: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> (Response<CacheBody>, Verdict) {
    let refreshed = refresh_from_update(
        settings,
        parts,
        stored,
        not_modified,
        request_time,
        response_time,
    );
    match refreshed {
        Some(admitted) => {
            let age = admitted.stored.age(SystemTime::now());
            let served = admitted.stored.clone();
            let response = from_store(settings, served, parts, age, CacheStatus::REVALIDATED);
            (response, Verdict::Store(Box::new(admitted)))
        }
        None => {
            let arrival = Arrival {
                initial_age: initial_age(not_modified, request_time, response_time),
                response_time,
            };
            let headers = merge_update(stored.headers(), not_modified);
            let merged = stored.refreshed(headers, stored.facts(), arrival);
            let age = merged.age(SystemTime::now());
            let status = CacheStatus::forwarded(Forward::Stale);
            (
                from_store(settings, merged, parts, age, status),
                Verdict::Refused,
            )
        }
    }
}

/// A 304 from the origin, or a 206 of the same representation, refreshes the stored
/// response (RFC 9111 sections 3.2 and 4.3.4): merged headers, new freshness and age;
/// `None` when the merged response may no longer be stored.
pub(super) fn refresh_from_update(
    settings: &Settings,
    parts: &Parts,
    stored: &StoredResponse,
    update: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Option<Admitted> {
    let merged = merge_update(stored.headers(), update);
    // Judged as the GET it stands for, whatever the method of the request that revalidated.
    let facts = storable(
        &Method::GET,
        &parts.headers,
        stored.status(),
        &merged,
        &settings.store,
    )
    .ok()
    .map(|facts| with_configured_windows(settings, facts))?;
    let initial = initial_age(update, request_time, response_time);
    let fresh = fresh_left(facts, initial)?;
    let arrival = Arrival {
        initial_age: initial,
        response_time,
    };
    let refreshed = stored.refreshed(merged, facts, arrival);
    Some(Admitted::new(refreshed, facts, fresh))
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
