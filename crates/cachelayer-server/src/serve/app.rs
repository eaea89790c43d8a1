//! The router of `cachelayer serve`: every route, and the layers around them (metrics and
//! logs outermost, then panics, body limits, and the HTTP cache on the list route only).
//!
//! This module wires; it must never hold business rules (those live in the catalogue).

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use cachelayer::http::status::CacheStatus;
use tower_http::catch_panic::CatchPanicLayer;

use super::state::AppState;
use super::{api, health, openapi};
use crate::error::ApiError;
use crate::{admin, metrics, observe};

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
        .route("/health/live", get(crate::health::live))
        .route("/health/ready", get(crate::health::ready))
        .route("/metrics", get(metrics::metrics))
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
        return route.layer(axum::middleware::map_response(caching_off));
    }
    route
        .layer(state.catalogue.lists().clone())
        .layer(from_fn_with_state(state.clone(), read_around_pending))
}

/// With list caching off, pages still say where they came from, as product reads do:
/// around the cache (`X-Cache: BYPASS`, `Cache-Status: ...; fwd=bypass; detail=off`).
async fn caching_off(mut response: Response) -> Response {
    CacheStatus::Bypass {
        detail: Some("off"),
    }
    .write_to(response.headers_mut());
    response
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

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

fn panicked(payload: Box<dyn std::any::Any + Send>) -> Response {
    let message = cachelayer::error::panic_message(payload.as_ref());
    tracing::error!(panic = %message, "a request handler panicked");
    ApiError::internal().into_response()
}
