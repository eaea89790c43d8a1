//! `cachelayer proxy`: the HTTP cache layer in front of any existing API, as a reverse proxy.
//!
//! Two listeners: clients on `--listen`, where every request goes through the cache (or a
//! rule's bypass) to the upstream; and operators on `--admin-listen`, with `/metrics`,
//! `/health` and `/admin/invalidate`, so they never collide with the upstream's paths.
//! Cache behaviour is the upstream's `Cache-Control` (RFC 9111, as the layer implements it),
//! with per-path default TTLs and bypasses from a rules file. Instances sharing one Redis
//! share one cache: one upstream call per key across them, and purges reach all of them.
//! This module must never answer a client with an error of its own making when the upstream
//! answered: cache trouble falls back to forwarding.

mod forward;
mod rules;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cachelayer::Cache;
use cachelayer::http::ResponseCacheLayer;
use cachelayer::http::key::{host_without_port, normalize_host};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use self::forward::Forwarder;
pub(crate) use self::rules::load_rules;
use self::rules::normalized_path;
pub use self::rules::{Rule, RuleAction};
use crate::admin::AdminState;
use crate::config::ProxyConfig;
use crate::error::{ApiError, Error};
use crate::health::{CHECK_TIMEOUT, Status, millis, timed};
use crate::observe::{CacheOutcomes, Observed, observe, prometheus, render_metrics, run_upkeep};
use crate::server::{drain, shutdown_signal, without_nagle};

/// A way to answer a proxied request: through a cache layer, or straight upstream.
type Route = BoxCloneSyncService<Request, Response, Infallible>;

/// Which route answers which path.
#[derive(Clone)]
struct Dispatch {
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
            headers.insert("x-cache", HeaderValue::from_static("BYPASS"));
            if let Ok(status) =
                HeaderValue::from_str(&format!("cachelayer; fwd=bypass; detail={detail}"))
            {
                headers.insert("cache-status", status);
            }
            Ok::<_, Infallible>(response)
        }
    }))
}

impl Dispatch {
    fn new(
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
        if self.allowed_hosts.is_empty() {
            return true;
        }
        let host = request
            .headers()
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()))
            .unwrap_or_default();
        // Compared as the cache layer compares its own allow-list.
        let host = normalize_host(&host);
        let name = host_without_port(&host);
        self.allowed_hosts.iter().any(|allowed| allowed == name)
    }
}

async fn proxy(State(dispatch): State<Dispatch>, request: Request) -> Response {
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

/// State of the admin listener.
#[derive(Clone)]
struct AdminApp {
    admin: AdminState,
    cache: Cache,
    forwarder: Forwarder,
    outcomes: Arc<CacheOutcomes>,
    started: Instant,
    shutting_down: Arc<AtomicBool>,
    redis_pool_size: usize,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
}

impl axum::extract::FromRef<AdminApp> for AdminState {
    fn from_ref(app: &AdminApp) -> Self {
        app.admin.clone()
    }
}

fn admin_router(app: AdminApp) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/health/live", get(crate::health::live))
        .route("/health/ready", get(ready));
    if app.admin.token.is_some() {
        router = router.route("/admin/invalidate", post(crate::admin::invalidate));
    }
    router
        .fallback(|| async { ApiError::not_found("no such route on the admin listener") })
        .with_state(app)
}

async fn metrics(State(app): State<AdminApp>) -> Response {
    render_metrics(&app.prometheus)
}

/// The proxy's health: `unhealthy` (503) when the upstream cannot be connected to,
/// `degraded` when Redis is unreachable (the proxy then forwards every request), else
/// `healthy`.
async fn health(State(app): State<AdminApp>) -> Response {
    let uses_redis = app.cache.store().kind() == "redis";
    let authority = app.forwarder.connect_address();
    let (redis, upstream) = tokio::join!(
        async {
            if uses_redis {
                Some(timed("redis", async { app.cache.ping().await.map(drop) }).await)
            } else {
                None
            }
        },
        timed("upstream", async {
            tokio::net::TcpStream::connect(authority.as_str())
                .await
                .map(drop)
        })
    );
    let breaker = app.cache.breaker_state().as_str();
    let status = match (&upstream, &redis) {
        (Err(_), _) => Status::Unhealthy,
        (Ok(_), Some(Err(_))) => Status::Degraded,
        (Ok(_), _) if breaker == "open" => Status::Degraded,
        _ => Status::Healthy,
    };
    let body = serde_json::json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
        "upstream": {
            "address": authority,
            "reachable": upstream.is_ok(),
            "connect_ms": upstream.as_ref().ok().copied().map(millis),
            "error": upstream.as_ref().err(),
        },
        "cache": {
            "store": app.cache.store().kind(),
            "redis": redis.as_ref().map(|ping| serde_json::json!({
                "reachable": ping.is_ok(),
                "latency_ms": ping.as_ref().ok().copied().map(millis),
                "breaker": breaker,
                "pool_connections": app.redis_pool_size,
                "error": ping.as_ref().err(),
            })),
            "stats": app.outcomes.stats(),
        },
    });
    let code = if status == Status::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, axum::Json(body)).into_response()
}

async fn ready(State(app): State<AdminApp>) -> Response {
    if app.shutting_down.load(Ordering::Relaxed) {
        let body = serde_json::json!({ "status": "shutting_down" });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    axum::Json(serde_json::json!({ "status": "ready" })).into_response()
}

async fn bind(address: SocketAddr, what: &str) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|err| Error::io(&format!("listening on {address} ({what})"), err))?;
    let local = listener
        .local_addr()
        .map_err(|err| Error::io("reading the listening address", err))?;
    Ok((listener, local))
}

/// Run the proxy until SIGTERM or SIGINT, then drain both listeners.
pub async fn proxy_main(config: ProxyConfig) -> Result<(), Error> {
    let metrics = prometheus();
    tracing::info!(config = ?config, "starting cachelayer proxy");
    let cache = config
        .cache
        .build()
        .map_err(|err| Error::config("cache settings", err.to_string()))?;
    if config.cache.redis_url.is_none() {
        tracing::info!("no Redis URL: the cache is local to this process");
    }
    let lock_max_wait = std::time::Duration::from_millis(config.cache.lock_max_wait_ms);
    if config.cache.lock && lock_max_wait < config.upstream_timeout {
        // Waiters give up on an upstream call slower than this and make their own.
        tracing::warn!(
            ?lock_max_wait,
            upstream_timeout = ?config.upstream_timeout,
            "--lock-max-wait is shorter than --upstream-timeout: requests waiting on a slower upstream call make their own"
        );
    }
    let forwarder = Forwarder::new(
        config.upstream.clone(),
        config.host_mode,
        config.upstream_timeout,
        config.upstream_connect_timeout,
    );
    let (dispatch, layer) = Dispatch::new(&config, &cache, &forwarder);
    let outcomes = Arc::new(CacheOutcomes::default());
    let shutting_down = Arc::new(AtomicBool::new(false));
    let observed = Observed::new(Arc::clone(&outcomes), "proxy");
    let app = Router::new()
        .fallback(proxy)
        .with_state(dispatch)
        .layer(from_fn_with_state(observed.clone(), observe));
    let admin = admin_router(AdminApp {
        admin: AdminState {
            token: config.admin_token.as_ref().map(|t| Arc::from(t.0.as_str())),
            max_body_bytes: 64 * 1024,
            cache: cache.clone(),
            layer,
            // This listener's own Host is no client's: purges must name the host.
            bare_paths: false,
        },
        cache,
        forwarder,
        outcomes,
        started: Instant::now(),
        shutting_down: Arc::clone(&shutting_down),
        redis_pool_size: config.cache.redis_pool_size,
        prometheus: metrics.clone(),
    })
    .layer(from_fn_with_state(
        Observed::new(Arc::clone(&observed.outcomes), "admin-unmatched"),
        observe,
    ));
    let (listener, address) = bind(config.listen, "clients").await?;
    let (admin_listener, admin_address) = bind(config.admin_listen, "admin").await?;
    let upkeep = tokio::spawn(run_upkeep(metrics));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serve = |listener: TcpListener, router: Router| {
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            axum::serve(
                without_nagle(listener),
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                drop(stopped.wait_for(|stop| *stop).await);
            })
            .await
        })
    };
    let clients = serve(listener, app);
    let operators = serve(admin_listener, admin);
    tracing::info!(address = %address, admin = %admin_address, upstream = %config.upstream, "listening");

    let signal = shutdown_signal().await;
    tracing::info!(signal, timeout = ?config.shutdown_timeout, "shutting down: draining in-flight requests");
    shutting_down.store(true, Ordering::Relaxed);
    // Receivers live as long as the server tasks; an error means they already ended.
    let _ = stop.send(true);
    drain(clients, config.shutdown_timeout).await;
    drain(operators, CHECK_TIMEOUT).await;
    upkeep.abort();
    tracing::info!("stopped");
    Ok(())
}
