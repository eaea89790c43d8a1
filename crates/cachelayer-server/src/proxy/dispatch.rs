//! Which way each client request of the proxy goes: through a cache layer (the default one,
//! or a rule's with its own default TTL), all in the proxy's key scope, or straight upstream
//! (a rule's bypass), after the host allow-list. Rules see the path in their liberal
//! matching form (`rules`); the layer then keys and forwards its strict normal form.
//!
//! This module must never answer a client with an error of its own making when the upstream
//! answered: cache trouble falls back to forwarding (the layer's behaviour).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cachelayer::Cache;
use cachelayer::http::key::{host_allowed, request_host};
use cachelayer::http::status::{CACHE_STATUS, CacheStatus, X_CACHE};
use cachelayer::http::{ResponseCache, ResponseCacheLayer};
use tower::{Service, ServiceExt};

use super::config::ProxyConfig;
use super::forward::Forwarder;
use super::rules::{RequestPath, Rule, RuleAction};
use crate::observe::{Observed, observed};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The upstream as a service: what the cache layer calls on a miss. Cheap to clone (the layer
/// clones it for every request).
#[derive(Clone)]
pub(crate) struct Upstream(Arc<Forwarder>);

impl Service<Request> for Upstream {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let forwarder = Arc::clone(&self.0);
        Box::pin(async move { Ok(forwarder.forward(request).await) })
    }
}

/// A way to answer a proxied request: through a cache layer, or straight upstream, reported
/// as `X-Cache: BYPASS` with a detail. Concrete, not boxed: choosing and cloning one is a
/// few reference counts per request.
#[derive(Clone)]
enum Route {
    Cached(ResponseCache<Upstream>),
    Bypass(Upstream, &'static str),
}

impl Route {
    async fn answer(self, request: Request) -> Response {
        match self {
            Self::Cached(layer) => match layer.oneshot(request).await {
                Ok(response) => response.map(Body::new),
                Err(never) => match never {},
            },
            Self::Bypass(upstream, detail) => {
                let Ok(mut response) = upstream.oneshot(request).await;
                let headers = response.headers_mut();
                let status = CacheStatus::Bypass {
                    detail: Some(detail),
                };
                // Inserted, not appended: this route has always replaced the upstream's entries.
                headers.insert(X_CACHE, status.x_cache());
                headers.insert(CACHE_STATUS, status.cache_status());
                response
            }
        }
    }
}

/// Which route answers which path.
#[derive(Clone)]
pub(crate) struct Dispatch {
    /// Rules, longest prefix first, each with its route.
    rules: Arc<Vec<(Rule, Route)>>,
    /// Paths no rule matches: cached as the upstream says.
    default: Route,
    /// Hosts served; empty: any.
    allowed_hosts: Arc<Vec<String>>,
}

impl Dispatch {
    /// The routes `config` describes, and the base cache layer (the admin purges through
    /// it).
    pub(crate) fn new(
        config: &ProxyConfig,
        cache: &Cache,
        forwarder: &Forwarder,
    ) -> (Self, ResponseCacheLayer) {
        let mut base = ResponseCacheLayer::new(cache.clone())
            .key_scope(config.key_scope.as_str())
            .max_body_bytes(config.max_cached_body_bytes)
            .stale_if_error(config.stale_if_error)
            .stale_while_revalidate(config.stale_while_revalidate)
            .targeted_cache_control(&config.targeted_cache_control)
            .heuristic_freshness(!config.heuristic_freshness_limit.is_zero())
            .heuristic_freshness_limit(config.heuristic_freshness_limit)
            .set_cookie_responses(config.set_cookie_responses)
            .key_host_port(config.key_host_port);
        if !config.allowed_hosts.is_empty() {
            base = base.allowed_hosts(config.allowed_hosts.iter().cloned());
        }
        let upstream = Upstream(Arc::new(forwarder.clone()));
        let cached = |layer: &ResponseCacheLayer| {
            Route::Cached(tower::Layer::layer(layer, upstream.clone()))
        };
        let rules = config
            .rules
            .iter()
            .map(|rule| {
                let route = match rule.action {
                    RuleAction::Bypass => Route::Bypass(upstream.clone(), "rule"),
                    RuleAction::DefaultTtl { ttl, statuses } => cached(
                        &base
                            .clone()
                            .default_ttl(Some(ttl))
                            .default_ttl_statuses(statuses),
                    ),
                };
                (rule.clone(), route)
            })
            .collect();
        let dispatch = Self {
            rules: Arc::new(rules),
            default: cached(&base),
            allowed_hosts: Arc::new(config.allowed_hosts.clone()),
        };
        (dispatch, base)
    }

    fn route(&self, path: &str) -> &Route {
        if self.rules.is_empty() {
            return &self.default;
        }
        let path = RequestPath::of(path);
        // A bypass under any reading of the path wins: the cache must never answer for a
        // path its operator keeps out of it. Otherwise the longest matching prefix.
        let bypass = self
            .rules
            .iter()
            .find(|(rule, _)| rule.is_bypass() && rule.matches(&path));
        bypass
            .or_else(|| self.rules.iter().find(|(rule, _)| rule.matches(&path)))
            .map_or(&self.default, |(_, route)| route)
    }

    fn host_allowed(&self, request: &Request) -> bool {
        // Compared as the cache layer compares its own allow-list.
        let host = request_host(request.headers(), request.uri());
        host_allowed(&host, &self.allowed_hosts)
    }

    /// Every client request, answered by the route its path selects.
    async fn answer(self, request: Request) -> Response {
        if !self.allowed_hosts.is_empty() && !self.host_allowed(&request) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                axum::Json(serde_json::json!({
                    "error": "misdirected_request",
                    "message": "this proxy does not serve that host",
                })),
            )
                .into_response();
        }
        // Every request goes through a route's layer (unless a rule bypasses it): the layer
        // never caches a request carrying a body, declared or not, and invalidates what a
        // successful unsafe request changes.
        let route = self.route(request.uri().path()).clone();
        route.answer(request).await
    }
}

/// The clients' service: every request observed, then dispatched.
#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) dispatch: Dispatch,
    pub(crate) observed: Observed,
}

impl Service<Request> for Clients {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Self {
            dispatch,
            observed: observer,
        } = self.clone();
        Box::pin(async move {
            let route = observer.unmatched;
            let answer = |request| dispatch.answer(request);
            Ok(observed(&observer, route, request, answer).await)
        })
    }
}
