//! The tower layer: [`ResponseCacheLayer`] wraps a service (an axum `Router`, or any
//! `Service<Request>`) in [`ResponseCache`], a shared HTTP cache.
//!
//! For each request: decide whether the cache applies at all (method, host allow-list,
//! cookies), read the stored response and judge it by RFC 9111 and the request's directives,
//! then serve it, or call the origin, with concurrent misses of one key collapsed into one
//! origin call (per process, and across processes through the cache's lock). Whatever goes
//! wrong in the cache, the origin's response is served unchanged: this module must never
//! turn a good response into an error.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

use super::key::{KeyRules, primary_key, request_values, vary_values};
use super::policy::{
    RequestDirectives, Storable, StoreRules, Usable, initial_age, storable, usable,
};
use super::stored::{Arrival, StoredResponse};
use crate::cache::{Fetched, LoadMode};
use crate::stampede::LoadOptions;
use crate::{Cache, telemetry};

/// Boxed error of the bodies this layer returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response through the layer: stored bytes, or the origin's body.
pub type CacheBody = UnsyncBoxBody<Bytes, BoxError>;

/// Default time a URL whose response could not be stored skips collapsing.
pub const DEFAULT_PASS_TTL: Duration = Duration::from_secs(30);
/// Default largest body stored; larger ones stream through unstored.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Adds a shared HTTP cache in front of a service.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use cachelayer::Cache;
/// use cachelayer::http::ResponseCacheLayer;
///
/// let cache = Cache::builder().build().unwrap();
/// let app: Router = Router::new()
///     .route("/products", get(|| async { "[]" }))
///     .layer(
///         ResponseCacheLayer::new(cache)
///             .allowed_hosts(["shop.example"])
///             .default_ttl(Some(Duration::from_secs(30))),
///     );
/// # drop(app);
/// ```
#[derive(Clone, Debug)]
pub struct ResponseCacheLayer {
    shared: Arc<Settings>,
}

/// Extra key parts taken from a request (per route: give each route its own layer).
#[derive(Clone)]
struct KeyParts(Arc<KeyPartsFn>);

/// A function from a request to extra key parts.
type KeyPartsFn = dyn Fn(&Parts) -> Vec<String> + Send + Sync;

impl std::fmt::Debug for KeyParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyParts(..)")
    }
}

#[derive(Debug, Clone)]
struct Settings {
    cache: Cache,
    keys: KeyRules,
    key_parts: Option<KeyParts>,
    store: StoreRules,
    max_body_bytes: usize,
    cookies_vary: bool,
    generate_etag: bool,
    expose_tags: bool,
    pass_ttl: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    /// Keys with a background refresh running in this process.
    refreshing: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl ResponseCacheLayer {
    /// A layer storing responses in `cache`, with every default: any host (each with its
    /// own entries), sorted query parameters, only responses with explicit freshness stored,
    /// bodies up to 1 MiB, requests with cookies bypassing the cache.
    pub fn new(cache: Cache) -> Self {
        Self {
            shared: Arc::new(Settings {
                cache,
                keys: KeyRules {
                    sort_query: true,
                    ..KeyRules::default()
                },
                key_parts: None,
                store: StoreRules::default(),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                cookies_vary: true,
                generate_etag: true,
                expose_tags: false,
                pass_ttl: DEFAULT_PASS_TTL,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                refreshing: Arc::default(),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::clone(&self.shared);
        change(&mut settings);
        self.shared = Arc::new(settings);
        self
    }

    /// Serve from the cache only requests for these hosts (case-insensitive, without port);
    /// others pass through uncached, so a forged `Host` cannot poison the cache.
    pub fn allowed_hosts<S: Into<String>>(self, hosts: impl IntoIterator<Item = S>) -> Self {
        let hosts: Vec<String> = hosts
            .into_iter()
            .map(|h| h.into().to_ascii_lowercase())
            .collect();
        self.with(|s| s.keys.allowed_hosts = hosts)
    }

    /// Query parameters left out of keys: exact names, or prefixes ending in `*`.
    pub fn ignore_query_params<S: Into<String>>(self, names: impl IntoIterator<Item = S>) -> Self {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        self.with(|s| s.keys.ignored_query_params = names)
    }

    /// Extra key parts from each request, for responses that depend on something the URL
    /// does not show (a tenant header, say). Each part is escaped like any key part. Purges
    /// by URL do not know these parts; use tags for such routes.
    pub fn key_parts(self, parts: impl Fn(&Parts) -> Vec<String> + Send + Sync + 'static) -> Self {
        let parts = KeyParts(Arc::new(parts));
        self.with(|s| s.key_parts = Some(parts))
    }

    /// Sort query parameters in keys (default true).
    pub fn sort_query(self, sort: bool) -> Self {
        self.with(|s| s.keys.sort_query = sort)
    }

    /// Fresh lifetime of responses that carry no freshness information (the tutorial's
    /// behaviour); `None` (default) stores only responses that say how long they are fresh.
    pub fn default_ttl(self, ttl: Option<Duration>) -> Self {
        self.with(|s| s.store.default_ttl = ttl)
    }

    /// Derive freshness from `Last-Modified` when nothing explicit is given (default off).
    pub fn heuristic_freshness(self, on: bool) -> Self {
        self.with(|s| s.store.heuristic = on)
    }

    /// Store responses that set cookies, with `Set-Cookie` stripped from the stored copy
    /// (default off: such responses are not stored).
    pub fn strip_set_cookie(self, on: bool) -> Self {
        self.with(|s| s.store.strip_set_cookie = on)
    }

    /// Largest body stored (default 1 MiB); larger bodies stream through unstored.
    pub fn max_body_bytes(self, bytes: usize) -> Self {
        self.with(|s| s.max_body_bytes = bytes)
    }

    /// Give stored responses without an `ETag` a strong one made from their body, so clients
    /// can revalidate with `If-None-Match` (default true).
    pub fn generate_etag(self, on: bool) -> Self {
        self.with(|s| s.generate_etag = on)
    }

    /// How long a URL whose response could not be stored goes straight to the origin,
    /// without waiting on other requests for it (default 30 s; zero turns it off).
    pub fn pass_ttl(self, ttl: Duration) -> Self {
        self.with(|s| s.pass_ttl = ttl)
    }

    /// Send `Cache-Tag` / `Surrogate-Key` on to clients (default false: they are the
    /// application's instructions to this cache, stripped before the response leaves).
    pub fn expose_tags(self, on: bool) -> Self {
        self.with(|s| s.expose_tags = on)
    }

    /// Serve a stale response this long past its freshness while one background request
    /// refreshes it (RFC 5861), for responses that do not say so themselves (default 0).
    pub fn stale_while_revalidate(self, window: Duration) -> Self {
        self.with(|s| s.stale_while_revalidate = window)
    }

    /// Serve a stale response this long past its freshness when the origin fails or answers
    /// 5xx (RFC 5861), for responses that do not say so themselves (default 0).
    pub fn stale_if_error(self, window: Duration) -> Self {
        self.with(|s| s.stale_if_error = window)
    }

    /// Whether requests carrying `Cookie` bypass the cache (default true). Set false only
    /// for routes whose responses do not depend on cookies.
    pub fn bypass_requests_with_cookies(self, bypass: bool) -> Self {
        self.with(|s| s.cookies_vary = bypass)
    }
}

impl ResponseCacheLayer {
    /// Drop every stored response carrying any of `tags` (from `Cache-Tag`, `Surrogate-Key`
    /// or [`CacheTags`](super::CacheTags)), in every instance sharing the store, in one
    /// round trip. Reports store failure, like [`Cache::invalidate`].
    pub async fn invalidate_tags<S: Into<String>>(
        &self,
        tags: impl IntoIterator<Item = S>,
    ) -> crate::Result<()> {
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        super::tags::invalidate(&self.shared.cache, &tags).await
    }

    /// Drop the stored response of a URL (`path_and_query` as requested, e.g.
    /// `/products?page=2`) for `host`, in every instance sharing the store. Reports store
    /// failure, like [`Cache::invalidate`].
    pub async fn purge(&self, host: &str, path_and_query: &str) -> crate::Result<()> {
        let uri: http::Uri = path_and_query.parse().map_err(|_| {
            crate::Error::invalid_input(format!("{path_and_query:?} is not a path and query"))
        })?;
        let key = super::key::url_key(
            &host.to_ascii_lowercase(),
            uri.path(),
            uri.query(),
            &self.shared.keys,
        );
        self.shared.cache.invalidate(key).await
    }
}

impl<S> Layer<S> for ResponseCacheLayer {
    type Service = ResponseCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`ResponseCacheLayer`] produces.
#[derive(Clone, Debug)]
pub struct ResponseCache<S> {
    inner: S,
    shared: Arc<Settings>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResponseCache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CacheBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone is not ready; the ready one handles this request (tower's usual swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(handle(shared, inner, request))
    }
}

/// What a collapsed origin call shares with the requests that waited on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Shared {
    /// A stored response.
    Stored(StoredResponse),
    /// The origin's response could not be stored: each waiter calls the origin itself.
    Pass,
    /// The URL's responses vary by these request headers: each variant is stored under a
    /// secondary key made from the request's values of them and this generation (a purge
    /// drops the marker, and the variants of the old generation become unreachable).
    Variants {
        names: Vec<String>,
        generation: String,
    },
}

/// How the response was produced, for `X-Cache` and `Cache-Status`.
enum Outcome {
    Hit {
        ttl: i64,
    },
    Stale {
        ttl: i64,
    },
    Miss {
        fwd: &'static str,
        stored: bool,
        collapsed: bool,
    },
    /// A stale response the origin confirmed with a 304.
    Revalidated,
    Bypass {
        detail: &'static str,
    },
}

async fn handle<S, ReqBody, ResBody>(
    shared: Arc<Settings>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let bypass = |detail| Outcome::Bypass { detail };
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let unsafe_method = !matches!(
            parts.method,
            Method::OPTIONS | Method::TRACE | Method::CONNECT
        );
        let target = parts.clone();
        let response = forward(&shared, &mut inner, parts, body, bypass("method")).await?;
        if unsafe_method {
            // On its own task, awaited: the invalidation completes even if the client goes
            // away, and before this response is returned.
            let (status, headers) = (response.status(), response.headers().clone());
            let shared = Arc::clone(&shared);
            let invalidation = tokio::spawn(async move {
                invalidate_after_write(&shared, &target, status, &headers).await;
            });
            if invalidation.await.is_err() {
                tracing::warn!("the invalidation after a write did not complete");
            }
        }
        return Ok(response);
    }
    // Declared by its headers, or (HTTP/2 data frames need neither) by the body itself.
    let has_body = parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
        || !body.is_end_stream();
    if has_body {
        // Its body is not part of the key, so its response cannot be shared.
        return forward(&shared, &mut inner, parts, body, bypass("body")).await;
    }
    if shared.cookies_vary && parts.headers.contains_key(http::header::COOKIE) {
        return forward(&shared, &mut inner, parts, body, bypass("cookie")).await;
    }
    let Ok(key) = request_key(&shared, &parts) else {
        return forward(&shared, &mut inner, parts, body, bypass("host")).await;
    };
    // A hash of the key: it may hold extra key parts (a tenant) that must not be echoed.
    let key_text = crate::Key::new("key").hashed_part(key.as_str()).as_str()[4..].to_owned();
    let response = serve_cacheable(shared, inner, parts, body, key).await?;
    Ok(with_cache_key(response, &key_text))
}

/// Adds the cache key to `Cache-Status` (RFC 9211 `key`): it shows only the host and a hash
/// of the path and query, so it is safe to expose.
fn with_cache_key(mut response: Response<CacheBody>, key: &str) -> Response<CacheBody> {
    let name = HeaderName::from_static("cache-status");
    let mut values: Vec<HeaderValue> = response.headers().get_all(&name).iter().cloned().collect();
    // Ours is the last entry (caches closer to the origin list theirs first).
    let Some(ours) = values.pop() else {
        return response;
    };
    let updated = ours
        .to_str()
        .ok()
        .and_then(|status| HeaderValue::from_str(&format!("{status}; key=\"{key}\"")).ok())
        .unwrap_or(ours);
    values.push(updated);
    response.headers_mut().remove(&name);
    for value in values {
        response.headers_mut().append(name.clone(), value);
    }
    response
}

/// A GET or HEAD the cache may answer: look up, judge, serve or load.
async fn serve_cacheable<S, ReqBody, ResBody>(
    shared: Arc<Settings>,
    mut inner: S,
    parts: Parts,
    body: ReqBody,
    key: crate::Key,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let directives = RequestDirectives::of(&parts.headers);
    let cache = &shared.cache;
    let primary = cache.full_key(key);
    let now = SystemTime::now();
    let mut entry = cache
        .fetch_entry::<Shared>(&primary)
        .await
        .and_then(|entry| entry.value);
    // `full`: where this request's response lives (a variant's own key when the URL varies).
    let mut full = primary.clone();
    if let Some(Shared::Variants { names, generation }) = &entry {
        let values = request_values(names, &parts.headers);
        full = variant_key(&primary, generation, &values);
        entry = cache
            .fetch_entry::<Shared>(&full)
            .await
            .and_then(|entry| entry.value);
    }
    let varies = full != primary;
    let stored = match entry {
        Some(Shared::Stored(stored)) => Some(stored),
        Some(Shared::Variants { .. }) => None,
        Some(Shared::Pass) if directives.only_if_cached => return Ok(gateway_timeout()),
        Some(Shared::Pass) => {
            // Recently uncacheable: no collapsing; a cacheable answer replaces the marker.
            let store = !directives.no_store;
            return forward_and_store(
                &shared, &mut inner, parts, body, &primary, store, "uri-miss",
            )
            .await;
        }
        None => None,
    };
    // The URL is known to vary, and this request's variant is not stored: a vary miss.
    let mut fwd = if varies { "vary-miss" } else { "uri-miss" };
    // A stale response kept for stale-if-error and revalidation.
    let mut stale = None;
    if let Some(stored) = stored {
        let vary = request_values(&stored.vary_names(), &parts.headers);
        let tags = super::tags::check(cache, stored.tags()).await;
        if tags != super::tags::TagCheck::Valid {
            if tags == super::tags::TagCheck::Invalid {
                // Dropped by a tag: delete it, so the collapsed load cannot find it again.
                let _ = cache.call("delete", cache.store().delete(&full)).await;
            }
            fwd = "uri-miss";
        } else if stored.matches(&vary) {
            let age = stored.age(now);
            let ttl = signed_secs(stored.facts().freshness, age);
            match usable(&stored.facts(), age, &directives) {
                Usable::Fresh => {
                    let hit = Outcome::Hit { ttl };
                    return Ok(from_store(&stored, &parts, age, hit));
                }
                Usable::StaleAccepted => {
                    let served = Outcome::Stale { ttl };
                    return Ok(from_store(&stored, &parts, age, served));
                }
                Usable::Stale(by) if within(by, stored.facts().stale_while_revalidate) => {
                    let response = from_store(&stored, &parts, age, Outcome::Stale { ttl });
                    refresh_in_background(&shared, inner, parts, body, (primary, full), stored);
                    return Ok(response);
                }
                Usable::Stale(by) => {
                    fwd = "stale";
                    stale = Some((stored, by));
                }
                Usable::Refused => fwd = "request",
            }
        } else {
            fwd = "vary-miss";
        }
    }
    if directives.only_if_cached {
        return Ok(gateway_timeout());
    }
    if parts.headers.contains_key(http::header::RANGE) || parts.method == Method::HEAD {
        // A HEAD or a range request cannot fill the cache for a GET: it goes to the origin
        // (a stored response above answers both).
        return forward(
            &shared,
            &mut inner,
            parts,
            body,
            Outcome::Miss {
                fwd,
                stored: false,
                collapsed: false,
            },
        )
        .await;
    }
    let refusing =
        directives.no_cache || directives.max_age.is_some() || directives.min_fresh.is_some();
    // A request with credentials rarely gets a shareable response: no waiting on others.
    let personal = parts.headers.contains_key(http::header::AUTHORIZATION);
    if refusing || personal || directives.no_store {
        // Straight to the origin: the request refuses what others might have stored, so it
        // must not wait on (or be answered by) their load.
        return forward_and_store(
            &shared,
            &mut inner,
            parts,
            body,
            &primary,
            !directives.no_store,
            fwd,
        )
        .await;
    }
    let revalidating = stale.as_ref().map(|(stored, _)| stored.clone());
    let request_head = parts.clone();
    let result = collapsed(
        &shared,
        inner,
        parts,
        body,
        (primary, full),
        fwd,
        revalidating,
    )
    .await;
    // stale-if-error: an origin failure or 5xx is answered with the stale response.
    let failed = match &result {
        Ok(response) => response.status().is_server_error(),
        Err(_) => true,
    };
    if failed
        && let Some((stored, by)) = stale
        && within(by, stored.facts().stale_if_error)
    {
        let age = stored.age(SystemTime::now());
        let ttl = signed_secs(stored.facts().freshness, age);
        return Ok(from_store(
            &stored,
            &request_head,
            age,
            Outcome::Stale { ttl },
        ));
    }
    result
}

/// A key's background refresh in this process; released however the refresh ends.
struct RefreshClaim {
    shared: Arc<Settings>,
    full: String,
}

impl Drop for RefreshClaim {
    fn drop(&mut self) {
        self.shared
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.full);
    }
}

/// Whether staleness `by` falls within a stale window (a zero window is off).
fn within(by: Duration, window: Duration) -> bool {
    !window.is_zero() && by <= window
}

/// stale-while-revalidate: refresh `full` with this request on a task of its own, unless a
/// refresh of it already runs in this process (across processes, the lock dedupes).
fn refresh_in_background<S, ReqBody, ResBody>(
    shared: &Arc<Settings>,
    inner: S,
    parts: Parts,
    body: ReqBody,
    (primary, full): (String, String),
    stored: StoredResponse,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let claimed = shared
        .refreshing
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(full.clone());
    if !claimed {
        return;
    }
    metrics::counter!(telemetry::REFRESHES, "trigger" => "http_stale").increment(1);
    let shared = Arc::clone(shared);
    runtime.spawn(async move {
        let _claim = RefreshClaim {
            shared: Arc::clone(&shared),
            full: full.clone(),
        };
        let refreshed = collapsed(
            &shared,
            inner,
            parts,
            body,
            (primary, full.clone()),
            "stale",
            Some(stored),
        )
        .await;
        if refreshed.is_err() {
            tracing::warn!(key = full, "background refresh of a stale response failed");
        }
    });
}

/// RFC 9111 section 4.4: a successful unsafe request invalidates its target URI and the
/// `Location` / `Content-Location` URIs on the same host. A failed invalidation is logged
/// and counted; the origin's response is returned regardless.
async fn invalidate_after_write(
    shared: &Settings,
    request: &Parts,
    status: StatusCode,
    response: &HeaderMap,
) {
    if !(status.is_success() || status.is_redirection()) {
        return;
    }
    let Ok(target) = request_key(shared, request) else {
        return;
    };
    let host = super::key::normalized_host(request);
    let mut keys = vec![target];
    for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let Some(uri) = response
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<http::Uri>().ok())
        else {
            continue;
        };
        let same_host = uri.authority().is_none_or(|authority| {
            let named = authority.as_str().to_ascii_lowercase();
            let named = named
                .strip_suffix(":80")
                .or_else(|| named.strip_suffix(":443"))
                .unwrap_or(&named);
            named == host
        });
        if same_host {
            keys.push(super::key::url_key(
                &host,
                uri.path(),
                uri.query(),
                &shared.keys,
            ));
        }
    }
    if let Err(err) = shared.cache.invalidate_many(keys).await {
        tracing::warn!(error = %err, uri = %request.uri, "could not invalidate cached responses after a write");
    }
}

/// The key of a request: its URL's, plus the configured extra parts.
fn request_key(shared: &Settings, parts: &Parts) -> Result<crate::Key, super::key::HostRefused> {
    let key = primary_key(parts, &shared.keys)?;
    Ok(match &shared.key_parts {
        Some(extra) => (extra.0)(parts).into_iter().fold(key, crate::Key::part),
        None => key,
    })
}

/// Seconds of freshness left (negative when stale), for `Cache-Status: ttl`.
fn signed_secs(freshness: Duration, age: Duration) -> i64 {
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    secs(freshness) - secs(age)
}

/// The leader's own origin response (and whether it was stored), or the origin's error.
type OwnResponse<E> = Mutex<Option<Result<(Response<CacheBody>, bool), E>>>;

/// Call the origin once for every request waiting on this key, store what may be stored,
/// and answer each waiter from the shared result (or let it call the origin itself when the
/// result could not be shared).
async fn collapsed<S, ReqBody, ResBody>(
    shared: &Arc<Settings>,
    mut inner: S,
    parts: Parts,
    body: ReqBody,
    (primary, full): (String, String),
    fwd: &'static str,
    revalidating: Option<StoredResponse>,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    // When this request leads, its own origin response (or error) comes back through `own`;
    // the request body stays in `request_body` until someone calls the origin with it.
    let own: OwnResponse<S::Error> = Mutex::new(None);
    let request_body = Mutex::new(Some(body));
    let loader = async {
        let Some(body) = take(&request_body) else {
            return Ok::<_, Infallible>(Fetched::new(Some(Shared::Pass), false));
        };
        let request_time = SystemTime::now();
        let (origin_parts, revalidating) = conditional(&parts, revalidating.as_ref());
        let response = match inner.call(Request::from_parts(origin_parts, body)).await {
            Ok(response) => response,
            Err(err) => {
                put(&own, Err(err));
                return Ok(Fetched::new(Some(Shared::Pass), false));
            }
        };
        let (served, stored) = prepare(shared, &parts, response, request_time, revalidating).await;
        let (fetched, written) = match stored {
            // Written here rather than by the load: a response that varies goes under its
            // variant's key, with a marker under the URL's.
            Some((stored, fresh, grace)) => {
                let written = store_response(shared, &primary, &stored, fresh, grace).await;
                (Fetched::new(Some(Shared::Stored(stored)), false), written)
            }
            // Remember for a while that this URL's responses are not shareable, so later
            // requests go straight to the origin instead of queueing behind one another
            // (here and, through the lock, across processes). A response to a client's own
            // conditional request says nothing about the URL, so it leaves no marker.
            // Never for a failure (the stale copy must stay for stale-if-error), nor for a
            // HEAD or a stale copy being revalidated: those say nothing about the URL.
            None if !has_validators(&parts.headers)
                && !shared.pass_ttl.is_zero()
                && !served.status().is_server_error()
                && parts.method == Method::GET
                && revalidating.is_none() =>
            {
                (
                    Fetched::with_lifetime(Shared::Pass, shared.pass_ttl, Duration::ZERO),
                    false,
                )
            }
            None => (Fetched::new(Some(Shared::Pass), false), false),
        };
        put(&own, Ok((served, written)));
        Ok(fetched)
    };
    // The TTL here is a placeholder: a stored response brings its own lifetime.
    let options =
        LoadOptions::ttl(Duration::from_secs(1)).on_lock_timeout(crate::OnLockTimeout::Load);
    let mode = LoadMode {
        absent_ok: false,
        share_errors: true,
    };
    // A panic in the origin service resumes here, in the request that called it, as it
    // would without the layer.
    let outcome = shared
        .cache
        .fill(&full, options, loader, mode)
        .await
        .resume_panic();
    if let Some(own) = take(&own) {
        return own.map(|(mut response, stored)| {
            if response.headers().contains_key("x-cache") {
                // Already described (answered from the refreshed stored response).
                return response;
            }
            decorate(
                response.headers_mut(),
                &Outcome::Miss {
                    fwd,
                    stored,
                    collapsed: false,
                },
            );
            response
        });
    }
    // Another request (here or in another process) called the origin. When the URL turned
    // out to vary, this request's variant may be stored already.
    let shared_response = match outcome {
        Ok(Some(Shared::Stored(stored))) => Some(stored),
        Ok(Some(Shared::Variants { names, generation })) => {
            let values = request_values(&names, &parts.headers);
            let key = variant_key(&primary, &generation, &values);
            match shared
                .cache
                .fetch_entry::<Shared>(&key)
                .await
                .and_then(|e| e.value)
            {
                Some(Shared::Stored(stored)) => Some(stored),
                _ => None,
            }
        }
        _ => None,
    };
    if let Some(stored) = shared_response
        && stored.matches(&request_values(&stored.vary_names(), &parts.headers))
    {
        let age = stored.age(SystemTime::now());
        let outcome = Outcome::Miss {
            fwd,
            stored: false,
            collapsed: true,
        };
        return Ok(from_store(&stored, &parts, age, outcome));
    }
    let Some(body) = take(&request_body) else {
        unreachable!(
            "our loader took the body, so it either set `own` or panicked (resumed above)"
        );
    };
    // The URL turned out to vary, and this request's variant is not stored: collapse once
    // more, on the variant's own key, with the other requests for the same variant.
    if full == primary
        && let Some(Shared::Variants { names, generation }) = shared
            .cache
            .fetch_entry::<Shared>(&primary)
            .await
            .and_then(|entry| entry.value)
    {
        let values = request_values(&names, &parts.headers);
        let variant = variant_key(&primary, &generation, &values);
        let keys = (primary, variant);
        return Box::pin(collapsed(
            shared,
            inner,
            parts,
            body,
            keys,
            "vary-miss",
            None,
        ))
        .await;
    }
    forward_and_store(shared, &mut inner, parts, body, &primary, true, fwd).await
}

/// Least lifetime of a `Vary` marker: longer than its variants, so they stay reachable.
const MARKER_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The key of one variant (the request's values of the varying headers) of a URL.
fn variant_key(primary: &str, generation: &str, values: &[(String, Option<String>)]) -> String {
    let described = serde_json::to_string(values).unwrap_or_default();
    let part = crate::Key::new("variant").hashed_part(format!("{generation}\n{described}"));
    format!("{primary}:{part}")
}

/// Store a response under the URL's key, or, when it varies, under its variant's key with a
/// marker naming the headers under the URL's key. True when written.
async fn store_response(
    shared: &Settings,
    primary: &str,
    stored: &StoredResponse,
    fresh: Duration,
    grace: Duration,
) -> bool {
    let cache = &shared.cache;
    let names = stored.vary_names();
    if names.is_empty() {
        let value = Shared::Stored(stored.clone());
        return matches!(
            cache
                .store_value(primary.to_owned(), &value, fresh, grace, Duration::ZERO)
                .await,
            Ok(true)
        );
    }
    // Keep the generation of a marker for the same headers, so its variants stay reachable.
    let generation = match cache
        .fetch_entry::<Shared>(primary)
        .await
        .and_then(|entry| entry.value)
    {
        Some(Shared::Variants {
            names: known,
            generation,
        }) if known == names => generation,
        _ => crate::stampede::lock_token(),
    };
    let variant = variant_key(primary, &generation, stored.vary_pairs());
    let marker = Shared::Variants { names, generation };
    let value = Shared::Stored(stored.clone());
    let marker_life = MARKER_TTL.max(fresh.saturating_add(grace));
    let (marked, written) = tokio::join!(
        cache.store_value(
            primary.to_owned(),
            &marker,
            marker_life,
            Duration::ZERO,
            Duration::ZERO
        ),
        cache.store_value(variant, &value, fresh, grace, Duration::ZERO),
    );
    matches!((marked, written), (Ok(true), Ok(true)))
}

/// The request to send to the origin: when revalidating a stale response and the client
/// sent no validators of its own, with the stored response's validators added (then a 304
/// refreshes the stored response). Returns the stored response only in that case.
fn conditional<'a>(
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
fn has_validators(headers: &HeaderMap) -> bool {
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

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

fn put<T>(slot: &Mutex<Option<T>>, value: T) {
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
}

/// Call the origin without collapsing, store the response when allowed (and `store`).
async fn forward_and_store<S, ReqBody, ResBody>(
    shared: &Arc<Settings>,
    inner: &mut S,
    parts: Parts,
    body: ReqBody,
    full: &str,
    store: bool,
    fwd: &'static str,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let request_time = SystemTime::now();
    let response = inner.call(Request::from_parts(parts.clone(), body)).await?;
    let (mut response, stored) = prepare(shared, &parts, response, request_time, None).await;
    let mut written = false;
    if store && let Some((stored, fresh, grace)) = stored {
        written = store_response(shared, full, &stored, fresh, grace).await;
    }
    decorate(
        response.headers_mut(),
        &Outcome::Miss {
            fwd,
            stored: written,
            collapsed: false,
        },
    );
    Ok(response)
}

/// Call the origin and pass its response through untouched but for the status headers.
async fn forward<S, ReqBody, ResBody>(
    shared: &Settings,
    inner: &mut S,
    parts: Parts,
    body: ReqBody,
    outcome: Outcome,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let response = inner.call(Request::from_parts(parts, body)).await?;
    let mut response = response.map(boxed);
    if !shared.expose_tags {
        for name in super::tags::TAG_HEADERS {
            response.headers_mut().remove(name);
        }
    }
    decorate(response.headers_mut(), &outcome);
    Ok(response)
}

/// The origin's response for its caller, and what to store of it (the stored copy, its
/// fresh lifetime left, and its stale grace) when RFC 9111 and the settings allow.
async fn prepare<ResBody>(
    shared: &Settings,
    parts: &Parts,
    response: Response<ResBody>,
    request_time: SystemTime,
    revalidating: Option<&StoredResponse>,
) -> (
    Response<CacheBody>,
    Option<(StoredResponse, Duration, Duration)>,
)
where
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let response_time = SystemTime::now();
    let (mut head, body) = response.into_parts();
    if head.status == StatusCode::NOT_MODIFIED
        && let Some(stored) = revalidating
    {
        // The validators were ours, so the client gets the full response, stored or not.
        let refreshed = refresh_from_304(
            shared,
            parts,
            stored,
            &head.headers,
            request_time,
            response_time,
        );
        return match refreshed {
            Some((refreshed, fresh, grace)) => {
                let age = refreshed.age(SystemTime::now());
                let response = from_store(&refreshed, parts, age, Outcome::Revalidated);
                (response, Some((refreshed, fresh, grace)))
            }
            None => {
                let arrival = Arrival {
                    initial_age: initial_age(&head.headers, request_time, response_time),
                    response_time,
                };
                let headers =
                    super::stored::merge_not_modified(&stored.header_map(), &head.headers);
                let merged = stored.refreshed(headers, stored.facts(), arrival);
                let age = merged.age(SystemTime::now());
                let outcome = Outcome::Miss {
                    fwd: "stale",
                    stored: false,
                    collapsed: false,
                };
                (from_store(&merged, parts, age, outcome), None)
            }
        };
    }
    let decision = storable(
        &parts.method,
        &parts.headers,
        head.status,
        &head.headers,
        shared.store,
    )
    .map(|facts| with_configured_windows(shared, facts));
    let tags = super::tags::tags_of(&head.headers, head.extensions.get::<super::CacheTags>());
    if !shared.expose_tags {
        for name in super::tags::TAG_HEADERS {
            head.headers.remove(name);
        }
    }
    let vary = vary_values(&head.headers, &parts.headers);
    let (Ok(facts), Some(vary)) = (decision, vary) else {
        return (Response::from_parts(head, boxed(body)), None);
    };
    let initial = initial_age(&head.headers, request_time, response_time);
    let Some(fresh) = facts
        .freshness
        .checked_sub(initial)
        .filter(|f| !f.is_zero())
    else {
        return (Response::from_parts(head, boxed(body)), None);
    };
    match buffer(body, shared.max_body_bytes).await {
        Buffered::Complete(bytes) => {
            let generated = shared.generate_etag
                && head.status == StatusCode::OK
                && !head.headers.contains_key(http::header::ETAG);
            if generated {
                head.headers.insert(http::header::ETAG, strong_etag(&bytes));
            }
            let dropped: &[HeaderName] = if shared.store.strip_set_cookie {
                &[http::header::SET_COOKIE]
            } else {
                &[]
            };
            let arrival = Arrival {
                initial_age: initial,
                response_time,
            };
            let stored = StoredResponse::new(&head, bytes.clone(), facts, arrival, vary, dropped);
            let stored = if generated {
                stored.with_generated_etag()
            } else {
                stored
            };
            let Some(versions) =
                super::tags::versions_for_store(&shared.cache, &tags, request_time).await
            else {
                // Without the tags' versions, a later invalidation could miss it: not stored.
                return (Response::from_parts(head, full_body(bytes)), None);
            };
            let stored = stored.with_tags(tags.into_iter().zip(versions).collect());
            let grace = grace_of(facts, &stored);
            (
                Response::from_parts(head, full_body(bytes)),
                Some((stored, fresh, grace)),
            )
        }
        Buffered::Streaming(body) => {
            metrics::counter!(telemetry::HTTP_NOT_STORED, "reason" => "too_large").increment(1);
            (Response::from_parts(head, body), None)
        }
    }
}

/// The stale windows of a stored response: its own, else the layer's configured ones.
fn with_configured_windows(shared: &Settings, mut facts: Storable) -> Storable {
    if facts.stale_while_revalidate.is_zero() {
        facts.stale_while_revalidate = shared.stale_while_revalidate;
    }
    if facts.stale_if_error.is_zero() {
        facts.stale_if_error = shared.stale_if_error;
    }
    facts
}

/// Least and most time a response with validators is kept past its freshness, so a stale
/// copy can be revalidated (a 304 instead of the whole body).
const MIN_REVALIDATION_GRACE: Duration = Duration::from_secs(60);
const MAX_REVALIDATION_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// How long past its freshness a response is kept: for its stale windows (unless it may
/// never be served stale), and, when the origin gave validators, for revalidation (as long
/// as it was fresh, within 1 minute to 1 day).
fn grace_of(facts: Storable, stored: &StoredResponse) -> Duration {
    let stale_windows = if facts.must_revalidate {
        Duration::ZERO
    } else {
        facts.stale_while_revalidate.max(facts.stale_if_error)
    };
    let revalidation = if stored.origin_validators().is_empty() {
        Duration::ZERO
    } else {
        facts
            .freshness
            .clamp(MIN_REVALIDATION_GRACE, MAX_REVALIDATION_GRACE)
    };
    stale_windows.max(revalidation)
}

/// A 304 from the origin refreshes the stored response (RFC 9111 section 4.3.4): merged
/// headers, new freshness and age; `None` when the merged response may no longer be stored.
fn refresh_from_304(
    shared: &Settings,
    parts: &Parts,
    stored: &StoredResponse,
    not_modified: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Option<(StoredResponse, Duration, Duration)> {
    let merged = super::stored::merge_not_modified(&stored.header_map(), not_modified);
    // Judged as the GET it stands for, whatever the method of the request that revalidated.
    let facts = storable(
        &Method::GET,
        &parts.headers,
        stored.status(),
        &merged,
        shared.store,
    )
    .ok()
    .map(|facts| with_configured_windows(shared, facts))?;
    let initial = initial_age(not_modified, request_time, response_time);
    let fresh = facts
        .freshness
        .checked_sub(initial)
        .filter(|f| !f.is_zero())?;
    let arrival = Arrival {
        initial_age: initial,
        response_time,
    };
    let refreshed = stored.refreshed(merged, facts, arrival);
    let grace = grace_of(facts, &refreshed);
    Some((refreshed, fresh, grace))
}

/// A strong entity tag from the body's SHA-256 (128 bits, hex).
fn strong_etag(body: &[u8]) -> HeaderValue {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

enum Buffered {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Over the limit (or with trailers, or failed): what was read, then the rest, as it
    /// comes.
    Streaming(CacheBody),
}

/// Read a body up to `max` bytes; past that, hand back a body that replays what was read and
/// streams the rest, so memory stays bounded by `max` per response.
async fn buffer<B>(body: B, max: usize) -> Buffered
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut collected = BytesMut::new();
    loop {
        let stop = match body.frame().await {
            None => return Buffered::Complete(collected.freeze()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if collected.len() + data.len() <= max => {
                    collected.extend_from_slice(&data);
                    continue;
                }
                Ok(data) => Ok(Frame::data(data)),
                Err(trailers) => Ok(trailers),
            },
            Some(Err(err)) => Err(err.into()),
        };
        let read = Frame::data(collected.freeze());
        let head = futures::stream::iter([Ok::<_, BoxError>(read), stop]);
        let rest = BodyStream::new(body).map(|frame| frame.map_err(Into::into));
        return Buffered::Streaming(StreamBody::new(head.chain(rest)).boxed_unsync());
    }
}

fn boxed<B>(body: B) -> CacheBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

fn full_body(bytes: Bytes) -> CacheBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A response built from a stored one, with `Age` and the status headers; a `304` when
/// the request's own validators match it (RFC 9110 section 13.1).
fn from_store(
    stored: &StoredResponse,
    request: &Parts,
    age: Duration,
    outcome: Outcome,
) -> Response<CacheBody> {
    let served = stored.served();
    if served.status == StatusCode::OK && not_modified(&request.headers, stored) {
        return not_modified_response(&served.headers, age, &outcome);
    }
    let length = HeaderValue::from(served.body.len());
    let body = if request.method == Method::HEAD {
        Bytes::new()
    } else {
        served.body
    };
    let mut response = Response::new(full_body(body));
    *response.status_mut() = served.status;
    *response.headers_mut() = served.headers;
    // The stored body's length, also for HEAD (whose body here is empty).
    response
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, length);
    response
        .headers_mut()
        .insert(http::header::AGE, HeaderValue::from(age.as_secs()));
    decorate(response.headers_mut(), &outcome);
    response
}

/// Whether a request's `If-None-Match` (weak comparison), or else its `If-Modified-Since`,
/// says the client's copy is current.
fn not_modified(request: &HeaderMap, stored: &StoredResponse) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    if request.contains_key(http::header::IF_NONE_MATCH) {
        let Some(etag) = stored.etag().map(opaque) else {
            return false;
        };
        return request
            .get_all(http::header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|candidate| candidate.trim() == "*" || opaque(candidate) == etag);
    }
    let since = request
        .get(http::header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    match (since, stored.last_modified()) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// A `304 Not Modified` carrying the fields RFC 9110 section 15.4.5 asks for.
fn not_modified_response(
    stored: &HeaderMap,
    age: Duration,
    outcome: &Outcome,
) -> Response<CacheBody> {
    let mut response = Response::new(full_body(Bytes::new()));
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [
        http::header::CACHE_CONTROL,
        http::header::CONTENT_LOCATION,
        http::header::DATE,
        http::header::ETAG,
        http::header::EXPIRES,
        http::header::VARY,
        http::header::LAST_MODIFIED,
    ] {
        for value in stored.get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
        .headers_mut()
        .insert(http::header::AGE, HeaderValue::from(age.as_secs()));
    decorate(response.headers_mut(), outcome);
    response
}

/// `504` for `only-if-cached` with nothing usable stored (RFC 9111 section 5.2.1.7).
fn gateway_timeout() -> Response<CacheBody> {
    let mut response = Response::new(full_body(Bytes::from_static(
        br#"{"error":"not in cache","detail":"the request said only-if-cached"}"#,
    )));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    decorate(
        response.headers_mut(),
        &Outcome::Miss {
            fwd: "uri-miss",
            stored: false,
            collapsed: false,
        },
    );
    response
}

/// `X-Cache` and `Cache-Status` (RFC 9211) for a response.
fn decorate(headers: &mut HeaderMap, outcome: &Outcome) {
    let (label, status) = match outcome {
        Outcome::Hit { ttl } => ("HIT", format!("cachelayer; hit; ttl={ttl}")),
        Outcome::Stale { ttl } => ("STALE", format!("cachelayer; hit; ttl={ttl}")),
        Outcome::Miss {
            fwd,
            stored,
            collapsed,
        } => {
            let mut status = format!("cachelayer; fwd={fwd}");
            if *stored {
                status.push_str("; stored");
            }
            if *collapsed {
                status.push_str("; collapsed");
            }
            ("MISS", status)
        }
        Outcome::Revalidated => (
            "MISS",
            "cachelayer; fwd=stale; fwd-status=304; stored".to_owned(),
        ),
        Outcome::Bypass { detail } => {
            ("BYPASS", format!("cachelayer; fwd=bypass; detail={detail}"))
        }
    };
    metrics::counter!(telemetry::HTTP_RESPONSES, "cache" => label).increment(1);
    headers.insert(
        HeaderName::from_static("x-cache"),
        HeaderValue::from_static(label),
    );
    if let Ok(value) = HeaderValue::from_str(&status) {
        headers.append(HeaderName::from_static("cache-status"), value);
    }
}
