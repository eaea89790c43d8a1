//! Collapsed forwarding: concurrent misses of one key make one origin call (per process, and
//! across processes through the cache's lock); the others are answered from what it stored,
//! or call the origin themselves when it could not be shared.
//!
//! This module must never make a request wait on an origin call whose answer it cannot use
//! without calling the origin itself afterwards, and never hide the leader's own response
//! (or error, or panic) from the leader.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::request::Parts;
use http::{Method, Response};

use super::admit::Verdict;
use super::body::{CacheBody, OriginBody};
use super::forward::{Origin, Storing, call_and_admit, forward_and_store, store_admitted};
use super::respond::{describe, from_store};
use super::revalidate::has_validators;
use super::settings::Settings;
use super::status::{CacheStatus, Forward, X_CACHE};
use super::stored::{CachedEntry, StoredResponse};
use super::tags::{TagCheck, check, read_clock};
use super::vary::{remove_response, shared_response, variant_of};
use crate::cache::{Fetched, LoadMode};
use crate::stampede::LoadOptions;

/// The leader's own origin response (and whether it was stored), or the origin's error.
type OwnResponse<E> = Mutex<Option<Result<(Response<CacheBody>, bool), E>>>;

/// The keys of a request's response: the URL's, and where its response lives (a variant's
/// own key when the URL varies, else the URL's).
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub(super) primary: String,
    pub(super) full: String,
}

/// What an origin call shares with its waiters, the load itself storing nothing (the layer
/// writes responses itself, under the keys it knows).
fn unstored(entry: CachedEntry) -> Fetched<CachedEntry> {
    Fetched::uncacheable(Some(entry))
}

/// What an origin call shares when nothing it produced may be kept: each waiter calls the
/// origin itself.
fn not_shared() -> Fetched<CachedEntry> {
    unstored(CachedEntry::Pass)
}

/// Call the origin once for every request waiting on this key, store what may be stored,
/// and answer each waiter from the shared result (or let it call the origin itself when the
/// result could not be shared).
pub(super) async fn collapsed<S, ReqBody, ResBody>(
    settings: &Arc<Settings>,
    mut inner: S,
    parts: Parts,
    body: ReqBody,
    keys: Keys,
    fwd: Forward,
    revalidating: Option<StoredResponse>,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ResBody: OriginBody,
{
    let Keys { primary, full } = keys;
    // When this request leads, its own origin response (or error) comes back through `own`;
    // the request body stays in `request_body` until someone calls the origin with it.
    let own: OwnResponse<S::Error> = Mutex::new(None);
    let request_body = Mutex::new(Some(body));
    let loader = async {
        let Some(body) = take(&request_body) else {
            return Ok::<_, Infallible>(not_shared());
        };
        let tag_clock = read_clock(&settings.cache).await;
        let revalidates = revalidating.as_ref();
        let called = call_and_admit(settings, &mut inner, &parts, body, revalidates, tag_clock);
        let (served, admitted) = match called.await {
            Ok(admitted) => admitted,
            Err(err) => {
                put(&own, Err(err));
                return Ok(not_shared());
            }
        };
        let (fetched, written) = match admitted {
            // Written here rather than by the load: a response that varies goes under its
            // variant's key, with a marker under the URL's.
            Verdict::Store(admitted) => {
                let written = store_admitted(settings, &primary, &admitted).await;
                // A no-cache response is reused only once validated for each request: the
                // waiters call the origin themselves (RFC 9111 section 4).
                let shared = if admitted.stored.facts().no_cache {
                    not_shared()
                } else {
                    unstored(CachedEntry::Stored(admitted.stored))
                };
                (shared, written)
            }
            Verdict::Revoked => {
                if let Some(stored) = &revalidating {
                    remove_response(&settings.cache, &primary, stored).await;
                }
                (not_shared(), false)
            }
            // Remember for a while that this URL's responses are not shareable, so later
            // requests go straight to the origin instead of queueing behind one another
            // (here and, through the lock, across processes). A response to a client's own
            // conditional request says nothing about the URL, so it leaves no marker.
            // Never for a failure (the stale copy must stay for stale-if-error), nor for a
            // HEAD or a stale copy being revalidated: those say nothing about the URL.
            Verdict::Refused
                if !has_validators(&parts.headers)
                    && !settings.pass_ttl.is_zero()
                    && !served.status().is_server_error()
                    && parts.method == Method::GET
                    && revalidating.is_none() =>
            {
                (
                    Fetched::with_lifetime(CachedEntry::Pass, settings.pass_ttl, Duration::ZERO),
                    false,
                )
            }
            Verdict::Refused | Verdict::Outdated => (not_shared(), false),
        };
        put(&own, Ok((served, written)));
        Ok(fetched)
    };
    // The TTL here is a placeholder: a stored response brings its own lifetime.
    let options = LoadOptions::ttl(Duration::from_secs(1))
        .on_lock_timeout(crate::stampede::OnLockTimeout::Load);
    let mode = LoadMode {
        absent_ok: false,
        share_errors: true,
    };
    // A panic in the origin service resumes here, in the request that called it, as it
    // would without the layer.
    let outcome = settings
        .cache
        .fill(&full, options, loader, mode)
        .await
        .resume_panic();
    if let Some(own) = take(&own) {
        return own.map(|(mut response, stored)| {
            if response.headers().contains_key(X_CACHE) {
                // Already described (answered from the refreshed stored response).
                return response;
            }
            describe(
                settings,
                response.headers_mut(),
                &CacheStatus::forwarded(fwd).with_stored(stored),
            );
            response
        });
    }
    // Another request (here or in another process) called the origin. When the URL turned
    // out to vary, this request's variant may be stored already.
    let cache = &settings.cache;
    let shared_stored = shared_response(cache, &primary, outcome.ok().flatten(), &parts.headers);
    if let Some(stored) = shared_stored.await
        && stored.matches(&super::key::request_values(
            &stored.vary_names(),
            &parts.headers,
        ))
        // A tag invalidated after the origin call checked its versions, but before this
        // request got its answer (it may have arrived after the write returned): not for
        // this request.
        && check(cache, stored.tags()).await == TagCheck::Valid
    {
        let age = stored.age(SystemTime::now());
        return Ok(from_store(
            settings,
            stored,
            &parts,
            age,
            CacheStatus::forwarded(fwd).collapsed(),
        ));
    }
    let Some(body) = take(&request_body) else {
        unreachable!(
            "our loader took the body, so it either set `own` or panicked (resumed above)"
        );
    };
    // The URL turned out to vary, and this request's variant is not stored: collapse once
    // more, on the variant's own key, with the other requests for the same variant.
    if full == primary
        && let Some(variant) = variant_of(cache, &primary, &parts.headers).await
    {
        let keys = Keys {
            primary,
            full: variant,
        };
        return Box::pin(collapsed(
            settings,
            inner,
            parts,
            body,
            keys,
            Forward::VaryMiss,
            None,
        ))
        .await;
    }
    forward_and_store(
        settings,
        &mut inner,
        parts,
        body,
        &primary,
        Storing::IfStorable,
        fwd,
        None,
    )
    .await
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

fn put<T>(slot: &Mutex<Option<T>>, value: T) {
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
}
