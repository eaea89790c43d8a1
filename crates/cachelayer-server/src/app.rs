//! The router: every route of `cachelayer serve`, the state they share, and the layers
//! around them (metrics and logs outermost, then panics, body limits, and the HTTP cache on
//! the list route only).
//!
//! This module wires; it must never hold business rules (those live in the catalogue).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::Instant;
use tower_http::catch_panic::CatchPanicLayer;

use crate::admin::AdminState;
use crate::catalogue::Catalogue;
use crate::error::ApiError;
use crate::observe::CacheOutcomes;
use crate::{admin, api, health, observe, openapi};

/// What every handler can reach: one `Arc`, because axum clones the state for every
/// request and every middleware (cloning the fields one by one showed in the profile).
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl AppState {
    pub(crate) fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub(crate) struct Shared {
    pub(crate) catalogue: Catalogue,
    pub(crate) max_body_bytes: usize,
    pub(crate) admin_token: Option<Arc<str>>,
    pub(crate) started: Instant,
    pub(crate) shutting_down: Arc<AtomicBool>,
    pub(crate) outcomes: Arc<CacheOutcomes>,
    pub(crate) redis_pool_size: usize,
    pub(crate) prometheus: PrometheusHandle,
    /// Whether list pages are cached (false when caching is off).
    pub(crate) cache_lists: bool,
}

impl FromRef<AppState> for AdminState {
    fn from_ref(state: &AppState) -> Self {
        Self {
            token: state.admin_token.clone(),
            max_body_bytes: state.max_body_bytes,
            cache: state.catalogue.cache().clone(),
            layer: state.catalogue.lists().clone(),
            bare_paths: true,
        }
    }
}

/// The application's routes and layers.
pub(crate) fn router(state: AppState) -> Router {
    let mut routes = Router::new()
        .route("/products", list_route(&state).post(api::create_product))
        .route(
            "/products/{id}",
            get(api::get_product)
                .put(api::replace_product)
                .patch(api::patch_product)
                .delete(api::delete_product),
        )
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::openapi));
    if state.admin_token.is_some() {
        routes = routes.route("/admin/invalidate", post(admin::invalidate));
    }
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(from_fn_with_state(
            observe::Observed::new(Arc::clone(&state.outcomes), "unmatched"),
            observe::observe,
        ))
        .with_state(state)
}

/// `GET /products` behind the HTTP cache: pages are stored by URL (and host), tagged, and
/// dropped by every write.
fn list_route(state: &AppState) -> MethodRouter<AppState> {
    let route = get(api::list_products);
    if !state.cache_lists {
        return route;
    }
    route
        .layer(state.catalogue.lists().clone())
        .layer(from_fn_with_state(state.clone(), read_around_pending))
}

/// While an invalidation of the lists is pending (the store failed it), ask the cache
/// layer to go to the database (`Cache-Control: no-cache`), so this instance never serves a
/// page the write should have dropped.
async fn read_around_pending(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if state.catalogue.lists_pending() {
        request
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    next.run(request).await
}

async fn metrics(State(state): State<AppState>) -> Response {
    observe::render_metrics(&state.prometheus)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

fn panicked(payload: Box<dyn std::any::Any + Send>) -> Response {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %message, "a request handler panicked");
    ApiError::internal().into_response()
}
