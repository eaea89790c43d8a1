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

use super::key::{KeyRules, primary_key, vary_values};
use super::policy::{RequestDirectives, StoreRules, Usable, initial_age, storable, usable};
use super::stored::{Arrival, StoredResponse};
use crate::cache::{Fetched, LoadMode};
use crate::stampede::LoadOptions;
use crate::{Cache, telemetry};

/// Boxed error of the bodies this layer returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response through the layer: stored bytes, or the origin's body.
pub type CacheBody = UnsyncBoxBody<Bytes, BoxError>;

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

#[derive(Debug)]
struct Settings {
    cache: Cache,
    keys: KeyRules,
    store: StoreRules,
    max_body_bytes: usize,
    cookies_vary: bool,
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
                store: StoreRules::default(),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                cookies_vary: true,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings {
            cache: self.shared.cache.clone(),
            keys: self.shared.keys.clone(),
            store: self.shared.store,
            max_body_bytes: self.shared.max_body_bytes,
            cookies_vary: self.shared.cookies_vary,
        };
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

    /// Whether requests carrying `Cookie` bypass the cache (default true). Set false only
    /// for routes whose responses do not depend on cookies.
    pub fn bypass_requests_with_cookies(self, bypass: bool) -> Self {
        self.with(|s| s.cookies_vary = bypass)
    }
}

impl ResponseCacheLayer {
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
    ReqBody: Send + 'static,
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
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send,
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
        let response = forward(&mut inner, parts, body, bypass("method")).await?;
        if unsafe_method {
            invalidate_after_write(&shared, &target, response.status(), response.headers()).await;
        }
        return Ok(response);
    }
    if shared.cookies_vary && parts.headers.contains_key(http::header::COOKIE) {
        return forward(&mut inner, parts, body, bypass("cookie")).await;
    }
    let Ok(key) = primary_key(&parts, &shared.keys) else {
        return forward(&mut inner, parts, body, bypass("host")).await;
    };
    let directives = RequestDirectives::of(&parts.headers);
    let cache = &shared.cache;
    let full = cache.full_key(key);
    let now = SystemTime::now();
    let stored = match cache
        .fetch_entry::<Shared>(&full)
        .await
        .and_then(|entry| entry.value)
    {
        Some(Shared::Stored(stored)) => Some(stored),
        _ => None,
    };
    let mut fwd = "uri-miss";
    if let Some(stored) = &stored {
        let vary = vary_values(&stored.vary_headers(), &parts.headers);
        if vary.as_deref().is_some_and(|v| stored.matches(v)) {
            let age = stored.age(now);
            match usable(&stored.facts(), age, &directives) {
                Usable::Fresh => {
                    let ttl = signed_secs(stored.facts().freshness, age);
                    return Ok(from_store(stored, &parts.method, age, Outcome::Hit { ttl }));
                }
                Usable::StaleAccepted => {
                    let ttl = signed_secs(stored.facts().freshness, age);
                    return Ok(from_store(
                        stored,
                        &parts.method,
                        age,
                        Outcome::Stale { ttl },
                    ));
                }
                Usable::Stale(_) => fwd = "stale",
                Usable::Refused => fwd = "request",
            }
        } else {
            fwd = "vary-miss";
        }
    }
    if directives.only_if_cached {
        return Ok(gateway_timeout());
    }
    let refusing =
        directives.no_cache || directives.max_age.is_some() || directives.min_fresh.is_some();
    if refusing || directives.no_store {
        // Straight to the origin: the request refuses what others might have stored, so it
        // must not wait on (or be answered by) their load.
        return forward_and_store(
            &shared,
            &mut inner,
            parts,
            body,
            &full,
            !directives.no_store,
            fwd,
        )
        .await;
    }
    collapsed(&shared, inner, parts, body, full, fwd).await
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
    let Ok(target) = primary_key(request, &shared.keys) else {
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
        let same_host = uri
            .authority()
            .is_none_or(|authority| authority.as_str().eq_ignore_ascii_case(&host));
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
    full: String,
    fwd: &'static str,
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
        let response = match inner.call(Request::from_parts(parts.clone(), body)).await {
            Ok(response) => response,
            Err(err) => {
                put(&own, Err(err));
                return Ok(Fetched::new(Some(Shared::Pass), false));
            }
        };
        let (served, stored) = prepare(shared, &parts, response, request_time).await;
        let fetched = match stored {
            Some((stored, fresh, grace)) => {
                Fetched::with_lifetime(Shared::Stored(stored), fresh, grace)
            }
            None => Fetched::new(Some(Shared::Pass), false),
        };
        put(&own, Ok((served, fetched.store)));
        Ok(fetched)
    };
    // The TTL here is a placeholder: a stored response brings its own lifetime.
    let options =
        LoadOptions::ttl(Duration::from_secs(1)).on_lock_timeout(crate::OnLockTimeout::Load);
    let mode = LoadMode {
        absent_ok: false,
        share_errors: true,
    };
    let loaded = shared.cache.fill(&full, options, loader, mode).await;
    if let Some(own) = take(&own) {
        return own.map(|(mut response, stored)| {
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
    // Another request (here or in another process) called the origin.
    if let Ok(Some(Shared::Stored(stored))) = loaded.into_outcome() {
        let vary = vary_values(&stored.vary_headers(), &parts.headers);
        if vary.as_deref().is_some_and(|v| stored.matches(v)) {
            let age = stored.age(SystemTime::now());
            let outcome = Outcome::Miss {
                fwd,
                stored: false,
                collapsed: true,
            };
            return Ok(from_store(&stored, &parts.method, age, outcome));
        }
    }
    let Some(body) = take(&request_body) else {
        // Unreachable in practice: only our own loader takes the body, and then `own` is set.
        return Ok(gateway_timeout());
    };
    forward_and_store(shared, &mut inner, parts, body, &full, true, fwd).await
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
    let (mut response, stored) = prepare(shared, &parts, response, request_time).await;
    let mut written = false;
    if store && let Some((stored, fresh, grace)) = stored {
        let value = Shared::Stored(stored);
        written = shared
            .cache
            .store_value(full.to_owned(), &value, fresh, grace, Duration::ZERO)
            .await
            .is_ok();
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
) -> (
    Response<CacheBody>,
    Option<(StoredResponse, Duration, Duration)>,
)
where
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let response_time = SystemTime::now();
    let (head, body) = response.into_parts();
    let decision = storable(
        &parts.method,
        &parts.headers,
        head.status,
        &head.headers,
        shared.store,
    );
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
            let grace = if facts.must_revalidate {
                Duration::ZERO
            } else {
                facts.stale_while_revalidate.max(facts.stale_if_error)
            };
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

/// A response built from a stored one, with `Age` and the status headers.
fn from_store(
    stored: &StoredResponse,
    method: &Method,
    age: Duration,
    outcome: Outcome,
) -> Response<CacheBody> {
    let served = stored.served();
    let body = if *method == Method::HEAD {
        Bytes::new()
    } else {
        served.body
    };
    let mut response = Response::new(full_body(body));
    *response.status_mut() = served.status;
    *response.headers_mut() = served.headers;
    response
        .headers_mut()
        .insert(http::header::AGE, HeaderValue::from(age.as_secs()));
    decorate(response.headers_mut(), &outcome);
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
