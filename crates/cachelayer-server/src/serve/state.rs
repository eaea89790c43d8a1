//! The state every route of `cachelayer serve` reads ([`AppState`]), and the narrower views
//! the shared handlers take of it (admin, metrics, readiness).
//!
//! This module holds data and how to reach it; it must never hold a handler or a rule.

use std::sync::Arc;

use axum::extract::FromRef;
use futures::FutureExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::Instant;

use super::catalogue::Catalogue;
use crate::admin::AdminState;
use crate::health::{BoxError, Readiness};
use crate::listen::Draining;
use crate::observe::CacheOutcomes;

/// What every handler can reach: one `Arc`, because axum clones the state for every
/// request and every middleware (cloning the fields one by one showed in the profile).
#[derive(Clone)]
pub(crate) struct AppState(Arc<AppContext>);

impl AppState {
    pub(crate) fn new(context: AppContext) -> Self {
        Self(Arc::new(context))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppContext;

    fn deref(&self) -> &AppContext {
        &self.0
    }
}

/// What the handlers of `serve` run with: the catalogue, the limits and settings they
/// apply, and what `/health` and `/metrics` report.
pub(crate) struct AppContext {
    pub(crate) catalogue: Catalogue,
    pub(crate) max_body_bytes: usize,
    pub(crate) admin_token: Option<Arc<str>>,
    pub(crate) started: Instant,
    pub(crate) draining: Draining,
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

impl FromRef<AppState> for PrometheusHandle {
    fn from_ref(state: &AppState) -> Self {
        state.prometheus.clone()
    }
}

/// Ready while not draining and the database answers.
impl FromRef<AppState> for Readiness {
    fn from_ref(state: &AppState) -> Self {
        let db = state.catalogue.db().clone();
        Readiness::new(state.draining.clone()).requiring("database", move || {
            let db = db.clone();
            async move { db.ping().await.map_err(BoxError::from) }.boxed()
        })
    }
}
