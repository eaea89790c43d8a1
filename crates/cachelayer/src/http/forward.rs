//! Calling the origin for one request, without waiting on others: passing its response
//! through, or storing it when allowed.
//!
//! This module must never turn the origin's response into an error: whatever the store
//! does, the origin's response (or error) is what the caller gets.

use std::time::SystemTime;

use http::request::Parts;
use http::{Request, Response};
use tower::Service;

use super::admit::{Verdict, admit, strip_tag_headers};
use super::body::{CacheBody, OriginBody, boxed};
use super::lifetime::Admitted;
use super::policy::RequestDirectives;
use super::respond::describe;
use super::revalidate::conditional;
use super::settings::Settings;
use super::status::X_CACHE;
use super::status::{CacheStatus, Forward};
use super::stored::StoredResponse;
use super::tags::{TagClock, read_clock};
use super::vary::{remove_response, store_response};

/// The service behind the layer, as every step on the way to it needs it: its calls, their
/// futures and errors may move to another task (collapsed calls, background refreshes).
pub(super) trait Origin<ReqBody, ResBody>:
    Service<Request<ReqBody>, Response = Response<ResBody>, Future: Send, Error: Send + 'static>
    + Send
    + 'static
{
}

impl<S, ReqBody, ResBody> Origin<ReqBody, ResBody> for S where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Future: Send, Error: Send + 'static>
        + Send
        + 'static
{
}

/// Call the origin and pass its response through untouched but for the status headers.
pub(super) async fn forward<S, ReqBody, ResBody>(
    settings: &Settings,
    inner: &mut S,
    parts: Parts,
    body: ReqBody,
    status: CacheStatus,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ResBody: OriginBody,
{
    let response = inner.call(Request::from_parts(parts, body)).await?;
    let mut response = response.map(boxed);
    if !settings.expose_tags {
        strip_tag_headers(response.headers_mut());
    }
    describe(settings, response.headers_mut(), &status);
    Ok(response)
}

/// Whether a response fetched without collapsing may be written to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Storing {
    /// Store it when the response allows.
    IfStorable,
    /// The request said `no-store`: pass the response through only.
    Never,
}

impl Storing {
    /// What the request's own `Cache-Control` allows.
    pub(super) fn allowed_by(directives: &RequestDirectives) -> Self {
        if directives.no_store {
            Self::Never
        } else {
            Self::IfStorable
        }
    }
}

/// Call the origin without collapsing; store the response under `primary` (the URL's key)
/// when `storing` and the response allow it. With the stored response it `revalidates`,
/// the request carries its validators (unless the client's own): a `304` refreshes it, a
/// `206` of it updates its headers.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward_and_store<S, ReqBody, ResBody>(
    settings: &Settings,
    inner: &mut S,
    parts: Parts,
    body: ReqBody,
    primary: &str,
    storing: Storing,
    fwd: Forward,
    revalidates: Option<&StoredResponse>,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ResBody: OriginBody,
{
    let tag_clock = match storing {
        Storing::IfStorable => read_clock(&settings.cache).await,
        Storing::Never => TagClock::Unread,
    };
    let (mut response, admitted) =
        call_and_admit(settings, inner, &parts, body, revalidates, tag_clock).await?;
    let written = match admitted {
        Verdict::Store(admitted) if storing == Storing::IfStorable => {
            store_admitted(settings, primary, &admitted).await
        }
        Verdict::Revoked => {
            if let Some(stored) = revalidates {
                remove_response(&settings.cache, primary, stored).await;
            }
            false
        }
        Verdict::Store(_) | Verdict::Refused | Verdict::Outdated => false,
    };
    if !response.headers().contains_key(X_CACHE) {
        // Not yet described (a refreshed stored response is).
        let status = CacheStatus::forwarded(fwd).with_stored(written);
        describe(settings, response.headers_mut(), &status);
    }
    Ok(response)
}

/// Call the origin for `parts` (with the validators of the stored response it
/// `revalidates`, unless the client sent its own) and admit its response: what the client
/// gets, and what may be stored.
pub(super) async fn call_and_admit<S, ReqBody, ResBody>(
    settings: &Settings,
    inner: &mut S,
    parts: &Parts,
    body: ReqBody,
    revalidates: Option<&StoredResponse>,
    tag_clock: TagClock,
) -> Result<(Response<CacheBody>, Verdict), S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ResBody: OriginBody,
{
    let request_time = SystemTime::now();
    let (origin_parts, revalidating) = conditional(parts, revalidates);
    let response = inner.call(Request::from_parts(origin_parts, body)).await?;
    let admitted = admit(
        settings,
        parts,
        response,
        request_time,
        tag_clock,
        revalidating,
    )
    .await;
    Ok(admitted)
}

/// Writes an admitted response under `primary` (or its variant's key); true when written.
pub(super) async fn store_admitted(
    settings: &Settings,
    primary: &str,
    admitted: &Admitted,
) -> bool {
    store_response(
        &settings.cache,
        primary,
        &admitted.stored,
        admitted.fresh,
        admitted.grace,
    )
    .await
}
