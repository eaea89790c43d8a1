//! Which way each client request of the proxy goes: through a cache layer (the default one,
//! or a rule's with its own default TTL) or straight upstream (a rule's bypass), after the
//! host allow-list.
//!
//! This module must never answer a client with an error of its own making when the upstream
//! answered: cache trouble falls back to forwarding (the layer's behaviour).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cachelayer::Cache;
use cachelayer::http::ResponseCacheLayer;
use cachelayer::http::key::{host_allowed, request_host};
use cachelayer::http::status::{CACHE_STATUS, CacheStatus, X_CACHE};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use super::config::ProxyConfig;
use super::forward::Forwarder;
use super::rules::{Rule, RuleAction, normalized_path};

/// A way to answer a proxied request: through a cache layer, or straight upstream.
type Route = BoxCloneSyncService<Request, Response, Infallible>;

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

/// A route through `layer` to the upstream, its body boxed as axum's.
fn cached(layer: &ResponseCacheLayer, forwarder: &Forwarder) -> Route {
    let forwarder = forwarder.clone();
    let upstream = tower::service_fn(move |request: Request| {
        let forwarder = forwarder.clone();
        async move { Ok::<_, Infallible>(forwarder.forward(request).await) }
    });
    let service =
        tower::Layer::layer(layer, upstream).map_response(|response| response.map(Body::new));
    BoxCloneSyncService::new(service)
}

/// A route straight upstream, reported as `X-Cache: BYPASS` with `detail`.
fn bypass(forwarder: &Forwarder, detail: &'static str) -> Route {
    let forwarder = forwarder.clone();
    BoxCloneSyncService::new(tower::service_fn(move |request: Request| {
        let forwarder = forwarder.clone();
        async move {
            let mut response = forwarder.forward(request).await;
            let headers = response.headers_mut();
            let status = CacheStatus::Bypass {
                detail: Some(detail),
            };
            // Inserted, not appended: this route has always replaced the upstream's entries.
            headers.insert(X_CACHE, status.x_cache());
            headers.insert(CACHE_STATUS, status.cache_status());
            Ok::<_, Infallible>(response)
        }
    }))
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
            .max_body_bytes(config.max_cached_body_bytes)
            .stale_if_error(config.stale_if_error)
            .stale_while_revalidate(config.stale_while_revalidate);
        if !config.allowed_hosts.is_empty() {
            base = base.allowed_hosts(config.allowed_hosts.iter().cloned());
        }
        let rules = config
            .rules
            .iter()
            .map(|rule| {
                let route = match rule.action {
                    RuleAction::Bypass => bypass(forwarder, "rule"),
                    RuleAction::DefaultTtl(ttl) => {
                        cached(&base.clone().default_ttl(Some(ttl)), forwarder)
                    }
                };
                (rule.clone(), route)
            })
            .collect();
        let dispatch = Self {
            rules: Arc::new(rules),
            default: cached(&base, forwarder),
            allowed_hosts: Arc::new(config.allowed_hosts.clone()),
        };
        (dispatch, base)
    }

    fn route(&self, path: &str) -> Route {
        let path = normalized_path(path);
        self.rules
            .iter()
            .find(|(rule, _)| rule.matches(&path))
            .map_or_else(|| self.default.clone(), |(_, route)| route.clone())
    }

    fn host_allowed(&self, request: &Request) -> bool {
        // Compared as the cache layer compares its own allow-list.
        let host = request_host(request.headers(), request.uri());
        host_allowed(&host, &self.allowed_hosts)
    }
}

/// The clients' handler: every request, answered by the route its path selects.
pub(crate) async fn proxy(State(dispatch): State<Dispatch>, request: Request) -> Response {
    if !dispatch.host_allowed(&request) {
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
    let route = dispatch.route(request.uri().path());
    match route.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
