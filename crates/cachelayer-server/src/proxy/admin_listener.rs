//! The proxy's admin listener (`--admin-listen`): `/metrics`, `/health`, `/health/live`,
//! `/health/ready` and, with an admin token, `/admin/invalidate`, on an address of their
//! own so they never collide with the upstream's paths.
//!
//! This module wires shared handlers to the proxy's state; it must never forward a request
//! upstream.

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

use super::health::{self, ProxyHealth};
use crate::admin::{self, AdminState};
use crate::error::ApiError;
use crate::health::{Readiness, live, ready};
use crate::metrics::metrics;

/// State of the admin listener.
#[derive(Clone)]
pub(crate) struct AdminApp {
    pub(crate) admin: AdminState,
    pub(crate) health: ProxyHealth,
    pub(crate) readiness: Readiness,
    pub(crate) prometheus: PrometheusHandle,
}

impl FromRef<AdminApp> for AdminState {
    fn from_ref(app: &AdminApp) -> Self {
        app.admin.clone()
    }
}

impl FromRef<AdminApp> for ProxyHealth {
    fn from_ref(app: &AdminApp) -> Self {
        app.health.clone()
    }
}

impl FromRef<AdminApp> for Readiness {
    fn from_ref(app: &AdminApp) -> Self {
        app.readiness.clone()
    }
}

impl FromRef<AdminApp> for PrometheusHandle {
    fn from_ref(app: &AdminApp) -> Self {
        app.prometheus.clone()
    }
}

/// The admin listener's routes.
pub(crate) fn router(app: AdminApp) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health::health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready));
    if app.admin.token.is_some() {
        router = router.route("/admin/invalidate", post(admin::invalidate));
    }
    router
        .fallback(|| async { ApiError::not_found("no such route on the admin listener") })
        .with_state(app)
}
