//! `GET /openapi.json` of `cachelayer serve`: the API described by the handlers' own
//! annotations (utoipa), so the description cannot drift from the routes. A test checks that
//! every route is in it. This module must never describe a route by hand that a handler
//! annotation could describe.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The OpenAPI document of `cachelayer serve`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cachelayer product catalogue",
        description = "A product catalogue API cached end to end by cachelayer. Reads report the cache's part in `X-Cache` (HIT, MISS, STALE, BYPASS) and `Cache-Status` (RFC 9211)."
    ),
    paths(
        super::api::get_product,
        super::api::list_products,
        super::api::create_product,
        super::api::replace_product,
        super::api::patch_product,
        super::api::delete_product,
        super::health::health,
        crate::health::live,
        crate::health::ready,
        crate::admin::invalidate,
        metrics,
        openapi,
    ),
    modifiers(&AdminToken),
    tags(
        (name = "products", description = "The catalogue"),
        (name = "health", description = "Health checks"),
        (name = "admin", description = "Operator routes; present only with an admin token configured"),
        (name = "operations", description = "Metrics and this description"),
    )
)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[allow(dead_code)] // Described here; served by `crate::metrics::metrics`.
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
