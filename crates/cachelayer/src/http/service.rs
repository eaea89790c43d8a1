//! The tower service: [`ResponseCache`] and the flow of one request through it.
//!
//! For each request: make it the request the origin will receive (hop-by-hop fields, and
//! those `Connection` names, dropped; the path in its normal form), decide whether the cache
//! applies at all (method, body, cookies, host allow-list), look up and judge what is stored
//! (`lookup`), then serve it, or call the origin, with concurrent misses of one key
//! collapsed into one origin call (`collapse`).
//! Whatever goes wrong in the cache, the origin's response is served unchanged: this module
//! must never turn a good response into an error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response};
use http_body::Body;
use tower::Service;

use super::body::{BoxError, CacheBody, OriginBody};
use super::collapse::{Keys, collapsed};
use super::forward::{Origin, Storing, forward, forward_and_store};
use super::headers::strip_hop_by_hop;
use super::key::{host_is_normal, normalize_host};
use super::lookup::{Found, Phase, Serve, judge, signed_secs};
use super::path::normalize_uri;
use super::policy::RequestDirectives;
use super::refresh::refresh_in_background;
use super::respond::{from_store, gateway_timeout, stale_hit};
use super::settings::Settings;
use super::status::{self, CacheStatus, Forward};
use super::stored::{CachedEntry, StoredResponse};
use super::tags::TagCheck;
use super::vary::find;
use super::write::write_through;
use crate::stampede::within;

/// The service [`ResponseCacheLayer`](super::ResponseCacheLayer) produces.
#[derive(Clone, Debug)]
pub struct ResponseCache<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> ResponseCache<S> {
    /// `inner` behind the cache, with the layer's settings.
    pub(super) fn new(inner: S, settings: Arc<Settings>) -> Self {
        Self { inner, settings }
    }
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
        let settings = Arc::clone(&self.settings);
        Box::pin(handle(settings, inner, request))
    }
}

/// Why a request goes around the cache, for `Cache-Status: detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bypass {
    /// Not a GET or HEAD.
    Method,
    /// It carries a body, which is not part of the key.
    Body,
    /// It carries cookies, and the layer bypasses such requests.
    Cookie,
    /// Its host is not allowed (or missing).
    Host,
}

impl Bypass {
    pub(super) fn status(self) -> CacheStatus {
        let detail = match self {
            Self::Method => "method",
            Self::Body => "body",
            Self::Cookie => "cookie",
            Self::Host => "host",
        };
        CacheStatus::Bypass {
            detail: Some(detail),
        }
    }
}

/// Whether a request carries a body: declared by its headers, or (HTTP/2 data frames need
/// neither) by the body itself.
fn has_body<B: Body>(parts: &Parts, body: &B) -> bool {
    parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
        || !body.is_end_stream()
}

/// Makes `parts` the request the origin receives, so that what the cache keys, varies on
/// and invalidates is what the origin answers: the hop-by-hop fields go, with every field
/// `Connection` names (an intermediary between here and the origin would drop them, and a
/// response keyed under a value its origin never saw could be served to the clients who do
/// send it), the path takes its normal form (`path`), so spellings of one resource are
/// one entry, and `Host` the form keys hold (lowercase, no trailing dot or default port):
/// `A.EXAMPLE:443` and `a.example` are one entry, so the origin must see one host for both,
/// or an answer built from the first (a redirect, a link) would be served for the second.
fn as_origin_receives(parts: &mut Parts) {
    strip_hop_by_hop(&mut parts.headers);
    if let Some(uri) = normalize_uri(&parts.uri) {
        parts.uri = uri;
    }
    // The host keys take: the `Host` field, else the target's authority (HTTP/2's
    // `:authority`, an HTTP/1.0 absolute-form target); the origin gets it as `Host` either
    // way, so no later step can forward the raw spelling.
    let host = parts.headers.get(http::header::HOST);
    let raw = match host {
        Some(host) => host.to_str().ok(),
        None => parts.uri.authority().map(http::uri::Authority::as_str),
    };
    if host.is_some() && raw.is_some_and(host_is_normal) {
        return;
    }
    let normal = raw
        .map(normalize_host)
        .filter(|normal| host.is_none_or(|host| host.as_bytes() != normal.as_bytes()))
        .and_then(|normal| http::HeaderValue::from_str(&normal).ok());
    if let Some(normal) = normal {
        parts.headers.insert(http::header::HOST, normal);
    }
}

async fn handle<S, ReqBody, ResBody>(
    settings: Arc<Settings>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Body + Send + 'static,
    ResBody: OriginBody,
{
    let (mut parts, body) = request.into_parts();
    // Judged before the hop-by-hop fields go: `Transfer-Encoding` declares a body too.
    let carries_body = has_body(&parts, &body);
    as_origin_receives(&mut parts);
    // Every path but a hit is boxed: the future of a hit stays small, so creating and
    // moving it costs little (the whole future was copied per request, 6% of a hit's
    // CPU, before).
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return Box::pin(write_through(settings, inner, parts, body)).await;
    }
    let bypass = if carries_body {
        // Its body is not part of the key, so its response cannot be shared.
        Some(Bypass::Body)
    } else if settings.bypass_cookie_requests && parts.headers.contains_key(http::header::COOKIE) {
        Some(Bypass::Cookie)
    } else {
        None
    };
    if let Some(bypass) = bypass {
        return Box::pin(forward(&settings, &mut inner, parts, body, bypass.status())).await;
    }
    let Ok(key) = settings.request_key(&parts) else {
        let status = Bypass::Host.status();
        return Box::pin(forward(&settings, &mut inner, parts, body, status)).await;
    };
    // A hash of the key: it may hold extra key parts (a tenant) that must not be echoed.
    let key_text = crate::key::Key::new("key")
        .hashed_part(key.as_str())
        .as_str()[4..]
        .to_owned();
    let mut response = serve_cacheable(settings, inner, parts, body, key).await?;
    // The key (RFC 9211 `key`) shows only the host and a hash, so it is safe to expose.
    status::append_key(response.headers_mut(), &key_text);
    Ok(response)
}

/// A GET or HEAD the cache may answer: look up, judge, serve or load.
async fn serve_cacheable<S, ReqBody, ResBody>(
    settings: Arc<Settings>,
    mut inner: S,
    parts: Parts,
    body: ReqBody,
    key: crate::key::Key,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let directives = RequestDirectives::of(&parts.headers);
    let cache = &settings.cache;
    let primary = cache.full_key(key);
    let now = SystemTime::now();
    let (full, entry) = find(cache, &primary, &parts.headers).await;
    let found = match entry {
        Some(CachedEntry::Stored(stored)) => {
            let tags = super::tags::check(cache, stored.tags()).await;
            if tags == TagCheck::Invalid {
                // Dropped by a tag: delete it, so the collapsed load cannot find it again.
                let _ = cache.remove(&full).await;
            }
            Found::Stored { stored, tags }
        }
        Some(CachedEntry::Pass) => Found::Pass,
        Some(CachedEntry::Variants { .. }) | None => Found::Nothing {
            varies: full != primary,
        },
    };
    let keys = Keys { primary, full };
    match judge(found, &parts.headers, &directives, now) {
        Phase::Fresh(serve) => {
            let hit = CacheStatus::Hit {
                ttl: Some(serve.ttl),
            };
            Ok(from_store(&settings, serve.stored, &parts, serve.age, hit))
        }
        Phase::StaleServed(serve) => {
            let status = stale_hit(serve.ttl);
            Ok(from_store(
                &settings,
                serve.stored,
                &parts,
                serve.age,
                status,
            ))
        }
        Phase::StaleWhileRevalidate(Serve { stored, age, ttl }) => {
            let response = from_store(&settings, stored.clone(), &parts, age, stale_hit(ttl));
            refresh_in_background(&settings, inner, parts, body, keys, stored);
            Ok(response)
        }
        Phase::OnlyIfCachedMiss => Ok(gateway_timeout(&settings)),
        Phase::Pass => {
            // Recently uncacheable: no collapsing; a cacheable answer replaces the marker.
            let storing = Storing::allowed_by(&directives);
            let primary = &keys.primary;
            Box::pin(forward_and_store(
                &settings,
                &mut inner,
                parts,
                body,
                primary,
                storing,
                Forward::UriMiss,
                None,
            ))
            .await
        }
        Phase::Miss(fwd) => {
            Box::pin(go_forward(settings, inner, parts, body, keys, fwd, None)).await
        }
        Phase::Revalidate { stored, by } => {
            let stale = Some((stored, by));
            Box::pin(go_forward(
                settings,
                inner,
                parts,
                body,
                keys,
                Forward::Stale,
                stale,
            ))
            .await
        }
    }
}

/// Nothing stored may answer the request: call the origin, alone or collapsed with others,
/// and answer with the `stale` response (and how stale it is) if the origin fails within
/// its stale-if-error window.
async fn go_forward<S, ReqBody, ResBody>(
    settings: Arc<Settings>,
    mut inner: S,
    parts: Parts,
    body: ReqBody,
    keys: Keys,
    fwd: Forward,
    stale: Option<(StoredResponse, Duration)>,
) -> Result<Response<CacheBody>, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let directives = RequestDirectives::of(&parts.headers);
    let ranged = parts.headers.contains_key(http::header::RANGE);
    if let Some((stored, _)) = &stale
        && parts.method == Method::GET
        && (ranged || stored.facts().no_cache)
    {
        // Revalidated alone: a range is not what waiters want, and a no-cache response is
        // confirmed for each request (a collapsed load would find it stored and not ask).
        let storing = Storing::allowed_by(&directives);
        let primary = &keys.primary;
        let fwd = Forward::Stale;
        let stored = Some(stored);
        return forward_and_store(
            &settings, &mut inner, parts, body, primary, storing, fwd, stored,
        )
        .await;
    }
    if ranged || parts.method == Method::HEAD {
        // A HEAD or a range request cannot fill the cache for a GET: it goes to the origin
        // (a stored response above answers both).
        let status = CacheStatus::forwarded(fwd);
        return forward(&settings, &mut inner, parts, body, status).await;
    }
    let refusing =
        directives.no_cache || directives.max_age.is_some() || directives.min_fresh.is_some();
    // A request with credentials rarely gets a shareable response: no waiting on others.
    let personal = parts.headers.contains_key(http::header::AUTHORIZATION);
    if refusing || personal || directives.no_store {
        // Straight to the origin: the request refuses what others might have stored, so it
        // must not wait on (or be answered by) their load.
        let storing = Storing::allowed_by(&directives);
        let primary = &keys.primary;
        return forward_and_store(
            &settings, &mut inner, parts, body, primary, storing, fwd, None,
        )
        .await;
    }
    let revalidating = stale.as_ref().map(|(stored, _)| stored.clone());
    let request_head = parts.clone();
    let result = collapsed(&settings, inner, parts, body, keys, fwd, revalidating).await;
    // stale-if-error: an origin failure or 5xx is answered with the stale response.
    let failed = match &result {
        Ok(response) => response.status().is_server_error(),
        Err(_) => true,
    };
    if failed
        && let Some((stored, by)) = stale
        && stored.facts().may_serve_stale()
        && within(by, stored.facts().stale_if_error)
    {
        let age = stored.age(SystemTime::now());
        let ttl = signed_secs(stored.facts().freshness, age);
        return Ok(from_store(
            &settings,
            stored,
            &request_head,
            age,
            stale_hit(ttl),
        ));
    }
    result
}

#[cfg(test)]
mod tests {
    use http_body_util::{Empty, Full};

    use super::*;

    fn head(headers: &[(&'static str, &'static str)]) -> Parts {
        let mut request = Request::new(());
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, http::HeaderValue::from_static(value));
        }
        request.into_parts().0
    }

    /// A body counts when its headers declare one or when it has data of its own.
    #[test]
    fn a_body_is_declared_or_present() {
        let empty = Empty::<Bytes>::new();
        assert!(!has_body(&head(&[]), &empty));
        assert!(!has_body(&head(&[("content-length", "0")]), &empty));
        assert!(has_body(&head(&[("content-length", "3")]), &empty));
        assert!(has_body(&head(&[("transfer-encoding", "chunked")]), &empty));
        let data = Full::new(Bytes::from_static(b"x"));
        assert!(has_body(&head(&[]), &data));
    }

    /// The request judged is the one the origin gets: no hop-by-hop field, none that
    /// `Connection` names, and the path's normal form with the query kept.
    #[test]
    fn requests_are_made_what_the_origin_receives() {
        let mut parts = head(&[
            ("connection", "X-Lang, Origin"),
            ("x-lang", "fr"),
            ("origin", "https://evil.example"),
            ("accept-language", "de"),
            ("te", "trailers"),
        ]);
        parts.uri = "/%62/./n2?q=%62".parse().expect("uri");
        as_origin_receives(&mut parts);
        let names: Vec<&str> = parts.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["accept-language"]);
        assert_eq!(parts.uri, "/b/n2?q=%62");
        for (sent, received) in [
            ("A.Example:443", "a.example"),
            ("a.example.", "a.example"),
            ("a.example:80", "a.example"),
            ("a.example:8080", "a.example:8080"),
        ] {
            let mut parts = head(&[("host", sent)]);
            as_origin_receives(&mut parts);
            assert_eq!(parts.headers["host"], received, "{sent}");
        }
        // No `Host` (HTTP/2, an HTTP/1.0 absolute-form target): the authority's, normalized.
        let mut parts = head(&[]);
        parts.uri = "http://A.EXAMPLE:80/x".parse().expect("uri");
        as_origin_receives(&mut parts);
        assert_eq!(parts.headers["host"], "a.example");
    }

    /// Each reason to go around the cache is told in `Cache-Status`.
    #[test]
    fn bypasses_say_why() {
        let details = [
            (Bypass::Method, "method"),
            (Bypass::Body, "body"),
            (Bypass::Cookie, "cookie"),
            (Bypass::Host, "host"),
        ];
        for (bypass, detail) in details {
            let status = bypass.status();
            assert_eq!(status.x_cache(), "BYPASS");
            assert_eq!(
                status.cache_status_text(),
                format!("cachelayer; fwd=bypass; detail={detail}")
            );
        }
    }
}
