//! The tower layer's builder: [`ResponseCacheLayer`] and the settings it hands to every
//! [`ResponseCache`] service it makes, with purges by URL and by tag.
//!
//! This module must never handle a request: the service does (`service`).

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use http::request::Parts;
use tower::Layer;

use super::invalidate::Purged;
use super::key::{HostPort, KeyRules};
use super::policy::{SetCookieResponses, StatusSet, StoreRules};
use super::service::ResponseCache;
use super::settings::{KeyParts, Settings};
use crate::cache::Cache;

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
    settings: Arc<Settings>,
}

impl ResponseCacheLayer {
    /// A layer storing responses in `cache`, with every default: any host (each with its
    /// own entries), sorted query parameters, only responses with explicit freshness stored,
    /// bodies up to 1 MiB, requests with cookies bypassing the cache.
    pub fn new(cache: Cache) -> Self {
        Self {
            settings: Arc::new(Settings {
                cache,
                keys: KeyRules {
                    sort_query: true,
                    ..KeyRules::default()
                },
                key_parts: None,
                store: StoreRules::default(),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                bypass_cookie_requests: true,
                generate_etag: true,
                expose_tags: false,
                pass_ttl: DEFAULT_PASS_TTL,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                refreshing: Arc::default(),
                responses: Arc::default(),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::clone(&self.settings);
        change(&mut settings);
        self.settings = Arc::new(settings);
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

    /// Fresh lifetime of responses that carry no freshness information, for the statuses
    /// of [`default_ttl_statuses`](Self::default_ttl_statuses) (200, 203, 204, 301 and 308
    /// by default: never an error page); `None` (default) stores only responses that say
    /// how long they are fresh.
    pub fn default_ttl(self, ttl: Option<Duration>) -> Self {
        self.with(|s| s.store.default_ttl = ttl)
    }

    /// The statuses [`default_ttl`](Self::default_ttl) applies to (default
    /// [`DEFAULT_TTL_STATUSES`](super::policy::DEFAULT_TTL_STATUSES)). Responses that say
    /// how long they are fresh are stored as they say, whatever their status.
    pub fn default_ttl_statuses(self, statuses: StatusSet) -> Self {
        self.with(|s| s.store.default_ttl_statuses = statuses)
    }

    /// The key space of this layer's entries: layers with different scopes never share an
    /// entry, even on one store for one host and path (two proxies in front of different
    /// origins, say); layers with the same scope do. Purges and write invalidation stay in
    /// the scope. Default: no scope (an empty `scope` is none too); tags are not scoped.
    pub fn key_scope(self, scope: impl Into<String>) -> Self {
        let scope = Some(scope.into()).filter(|s| !s.is_empty());
        self.with(|s| s.keys.scope = scope)
    }

    /// Whether the port of a request's `Host` is part of its key (default
    /// [`HostPort::Kept`]: `localhost:8080` and `localhost` are different entries; default
    /// ports, 80 and 443, never count). [`HostPort::Ignored`] lets instances on different
    /// ports behind one name share entries, for origins whose responses do not depend on the
    /// port; purges then remove the entry whatever port they name.
    pub fn key_host_port(self, host_port: HostPort) -> Self {
        self.with(|s| s.keys.host_port = host_port)
    }

    /// Derive freshness from `Last-Modified` when nothing explicit is given (RFC 9111
    /// section 4.2.2: a tenth of the time since it was modified, up to
    /// [`heuristic_freshness_limit`](Self::heuristic_freshness_limit)), for the statuses
    /// that allow it (default off). Hits of such responses say `detail=heuristic` in
    /// `Cache-Status`.
    pub fn heuristic_freshness(self, on: bool) -> Self {
        self.with(|s| s.store.heuristic = on)
    }

    /// The longest heuristic freshness (default
    /// [`DEFAULT_HEURISTIC_LIMIT`](super::policy::DEFAULT_HEURISTIC_LIMIT), a day).
    pub fn heuristic_freshness_limit(self, limit: Duration) -> Self {
        self.with(|s| s.store.heuristic_limit = limit)
    }

    /// What to do with responses that set a cookie where the origin does not say (default
    /// [`SetCookieResponses::Refuse`]: not stored). A response marked
    /// `no-cache="Set-Cookie"` or `private="Set-Cookie"` is stored without the cookie
    /// whatever this says.
    pub fn set_cookie_responses(self, choice: SetCookieResponses) -> Self {
        self.with(|s| s.store.set_cookie = choice)
    }

    /// Obey these targeted cache-control fields (RFC 9213), first match first: the first
    /// one a response carries with a valid value replaces its `Cache-Control` and `Expires`
    /// for this cache (`CDN-Cache-Control: max-age=60` stores a response marked
    /// `Cache-Control: no-store` for browsers). Default: none, the layer being the
    /// application's own cache; a proxy in front of other origins would give
    /// `["cachelayer-cache-control", "cdn-cache-control"]`. Names that are not valid field
    /// names are skipped.
    pub fn targeted_cache_control<S: AsRef<str>>(self, names: impl IntoIterator<Item = S>) -> Self {
        let names: Vec<HeaderName> = names
            .into_iter()
            .filter_map(|name| HeaderName::from_bytes(name.as_ref().as_bytes()).ok())
            .collect();
        self.with(|s| s.store.targeted = names.into())
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
        self.with(|s| s.bypass_cookie_requests = bypass)
    }
}

impl ResponseCacheLayer {
    /// Drop every stored response carrying any of `tags` (from `Cache-Tag`, `Surrogate-Key`
    /// or [`CacheTags`](super::CacheTags)), in every instance sharing the store, in one
    /// round trip. Reports store failure, like [`Cache::invalidate`].
    pub async fn invalidate_tags<S: Into<String>>(
        &self,
        tags: impl IntoIterator<Item = S>,
    ) -> crate::error::Result<()> {
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        super::tags::invalidate(&self.settings.cache, &tags).await
    }

    /// Drop the stored response of a URL (`path_and_query` as requested, e.g.
    /// `/products?page=2`, in any spelling of its path: `/%70roducts` is the same) for
    /// `host` (its port counting as [`key_host_port`](Self::key_host_port) says), with
    /// every variant when it varies, in this layer's key scope, in every instance sharing
    /// the store; and say whether a response was stored. Reports store failure, like
    /// [`Cache::invalidate`].
    pub async fn purge(&self, host: &str, path_and_query: &str) -> crate::error::Result<Purged> {
        let (host, uri) = named_url(host, path_and_query)?;
        let key = super::key::url_key(&host, uri.path(), uri.query(), &self.settings.keys);
        let cache = &self.settings.cache;
        super::invalidate::purge(cache, &cache.full_key(key)).await
    }

    /// The URL a [`purge`](Self::purge) of the same arguments looks under, spelled for
    /// people: `http://`, the host as keys hold it (lowercase, no default port, no port at
    /// all with [`HostPort::Ignored`]), the path's normal form and the normalized query
    /// (`http://shop.example:8080/products?limit=5&page=2`). Keys do not hold the scheme, so
    /// it is `http` for any.
    pub fn keyed_url(&self, host: &str, path_and_query: &str) -> crate::error::Result<String> {
        let (host, uri) = named_url(host, path_and_query)?;
        let keys = &self.settings.keys;
        Ok(super::key::keyed_url(&host, uri.path(), uri.query(), keys))
    }
}

/// A URL named for a purge: its host normalized, its path and query parsed.
fn named_url(host: &str, path_and_query: &str) -> crate::error::Result<(String, http::Uri)> {
    let uri = path_and_query.parse().map_err(|_| {
        crate::error::Error::invalid_input(format!("{path_and_query:?} is not a path and query"))
    })?;
    Ok((super::key::normalize_host(host), uri))
}

impl<S> Layer<S> for ResponseCacheLayer {
    type Service = ResponseCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache::new(inner, Arc::clone(&self.settings))
    }
}
