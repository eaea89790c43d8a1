//! Admission of an origin's response: what the client gets, and what of it the cache may
//! store and for how long (RFC 9111 section 3 and the layer's settings), with its tags'
//! versions and, when asked, a generated `ETag`.
//!
//! This module must never write to the store (the caller stores, under the keys it knows),
//! nor hold more of a body than the layer's limit.

use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode};
use http_body::Body;

use super::body::{BoxError, Buffered, CacheBody, boxed, buffer, full_body};
use super::key::vary_values;
use super::lifetime::{Admitted, fresh_left, with_configured_windows};
use super::policy::{NotStored, Storable, fields_not_stored, initial_age, storable};
use super::revalidate::{answer_not_modified, refresh_from_update, same_representation};
use super::settings::Settings;
use super::stored::{Arrival, StoredResponse};
use super::tags::TagClock;
use crate::telemetry;

/// What the cache may do with an origin's response.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Store this (boxed: the verdict moves through every miss, and the others are empty).
    Store(Box<Admitted>),
    /// Not storable (RFC 9111, the settings, its size): this says something about the URL,
    /// which a marker may remember for a while.
    Refused,
    /// Storable, but one of its tags was invalidated while the origin answered (or the
    /// store could not say): it may show what the invalidation dropped, so it is neither
    /// stored nor shared with waiters, and it says nothing about the URL.
    Outdated,
    /// The answer to a revalidation says the stored response may no longer be used (it now
    /// forbids storing, or a 304 names another representation): the stored response is
    /// deleted, and nothing is shared.
    Revoked,
}

/// The origin's response for its caller, and what to store of it when RFC 9111 and the
/// settings allow. A 304 to the cache's own revalidation of `revalidating` is answered
/// with the refreshed stored response; a 206 of it passes through, and its headers
/// refresh the stored response.
pub(super) async fn admit<ResBody>(
    settings: &Settings,
    parts: &Parts,
    response: Response<ResBody>,
    request_time: SystemTime,
    tag_clock: TagClock,
    revalidating: Option<&StoredResponse>,
) -> (Response<CacheBody>, Verdict)
where
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let response_time = SystemTime::now();
    let (mut head, body) = response.into_parts();
    if head.status == StatusCode::NOT_MODIFIED
        && let Some(stored) = revalidating
    {
        return answer_not_modified(
            settings,
            parts,
            stored,
            &head.headers,
            request_time,
            response_time,
        );
    }
    if head.status == StatusCode::PARTIAL_CONTENT
        && let Some(stored) = revalidating
        && same_representation(stored, &head.headers)
    {
        // A part of the stored representation: its headers and freshness are the stored
        // response's news (RFC 9111 section 3.4); the part itself passes through.
        let times = (request_time, response_time);
        let updated = refresh_from_update(settings, parts, stored, &head.headers, times.0, times.1);
        if !settings.expose_tags {
            strip_tag_headers(&mut head.headers);
        }
        return (Response::from_parts(head, boxed(body)), updated.verdict);
    }
    let decision = storable(
        &parts.method,
        &parts.headers,
        head.status,
        &head.headers,
        &settings.store,
    )
    .and_then(|facts| worth_storing(facts, &head.headers))
    .map(|facts| with_configured_windows(settings, facts));
    let tags = super::tags::tags_of(
        &head.headers,
        head.extensions.get::<super::tags::CacheTags>(),
    );
    if !settings.expose_tags {
        strip_tag_headers(&mut head.headers);
    }
    let vary = vary_values(&head.headers, &parts.headers);
    let (Ok(facts), Some(vary)) = (decision, vary) else {
        return (Response::from_parts(head, boxed(body)), Verdict::Refused);
    };
    let initial = initial_age(&head.headers, request_time, response_time);
    let Some(fresh) = fresh_left(facts, initial) else {
        return (Response::from_parts(head, boxed(body)), Verdict::Refused);
    };
    match buffer(body, settings.max_body_bytes).await {
        Buffered::Complete(bytes) => {
            let generated = settings.generate_etag
                && head.status == StatusCode::OK
                && !head.headers.contains_key(http::header::ETAG);
            if generated {
                head.headers
                    .insert(http::header::ETAG, super::conditional::strong_etag(&bytes));
            }
            let dropped = fields_not_stored(&head.headers, &settings.store);
            let arrival = Arrival {
                initial_age: initial,
                response_time,
            };
            let stored = StoredResponse::new(&head, bytes.clone(), facts, arrival, vary, &dropped);
            let stored = if generated {
                stored.with_generated_etag()
            } else {
                stored
            };
            let Some(versions) =
                super::tags::versions_for_store(&settings.cache, &tags, tag_clock).await
            else {
                // Without the tags' versions, a later invalidation could miss it; or one of
                // them was invalidated during the origin call: not stored.
                metrics::counter!(telemetry::HTTP_NOT_STORED, "reason" => "tags").increment(1);
                return (
                    Response::from_parts(head, full_body(bytes)),
                    Verdict::Outdated,
                );
            };
            let stored = stored.with_tags(tags.into_iter().zip(versions).collect());
            (
                Response::from_parts(head, full_body(bytes)),
                Verdict::Store(Box::new(Admitted::new(stored, facts, fresh))),
            )
        }
        Buffered::Streaming(body) => {
            metrics::counter!(telemetry::HTTP_NOT_STORED, "reason" => "too_large").increment(1);
            (Response::from_parts(head, body), Verdict::Refused)
        }
    }
}

/// A `no-cache` response is revalidated on every use, so it is worth storing only with
/// validators the origin understands (an `ETag` made here is not one).
fn worth_storing(facts: Storable, response: &http::HeaderMap) -> Result<Storable, NotStored> {
    let validators = response.contains_key(http::header::ETAG)
        || response.contains_key(http::header::LAST_MODIFIED);
    if facts.no_cache && !validators {
        return Err(NotStored::NoCache);
    }
    Ok(facts)
}

/// Drops `Cache-Tag` / `Surrogate-Key`: the application's instructions to this cache.
pub(super) fn strip_tag_headers(headers: &mut http::HeaderMap) {
    for name in super::tags::TAG_HEADERS {
        headers.remove(name);
    }
}
