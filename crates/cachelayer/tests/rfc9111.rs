//! RFC 9111 conformance of the tower layer: the testkit's cases, run against
//! `ResponseCacheLayer` wrapped around a scripted origin's router, on a real redis-server
//! and on the in-process store. The layer is configured as `cachelayer proxy` configures it
//! by default, so both runners judge the same cache.
//!
//! This runner only says how a request reaches the cache; it must never add cases or
//! expectations of its own (they belong in `cachelayer_testkit::rfc9111`, where the proxy
//! runner sees them too). `RFC9111_CASE=<name>` runs one case.

#![cfg(feature = "http")]

mod support;

use axum::Router;
use axum::body::Body;
use cachelayer::http::ResponseCacheLayer;
use cachelayer::http::policy::SetCookieResponses;
use cachelayer_testkit::origin::ScriptedOrigin;
use cachelayer_testkit::rfc9111::{self, Case, Reply, Request, Target};
use http_body_util::BodyExt;
use support::Backend;
use tower::ServiceExt;

/// The `Host` of every request: the layer keys entries by host, and a request needs one.
const HOST: &str = "rfc.example";

/// The layer as the proxy sets it up by default: targeted fields (its own, then the CDN
/// one) and heuristic freshness.
fn proxy_like_layer(backend: &Backend) -> ResponseCacheLayer {
    ResponseCacheLayer::new(backend.cache())
        .targeted_cache_control(["cachelayer-cache-control", "cdn-cache-control"])
        .heuristic_freshness(true)
}

/// Runs `cases` against the layer `configure` makes of the proxy-like one, panicking with
/// every failure.
async fn conforms(
    backend: Backend,
    cases: Vec<Case>,
    configure: fn(ResponseCacheLayer) -> ResponseCacheLayer,
) {
    let origin = ScriptedOrigin::new();
    let app = origin.router().layer(configure(proxy_like_layer(&backend)));
    let failures = rfc9111::run(Target::Layer, &origin, cases, move |request| {
        send(app.clone(), request)
    })
    .await;
    rfc9111::assert_no_failures(&failures);
}

/// One request through the layer, in-process.
async fn send(app: Router, request: Request) -> Reply {
    let mut http_request = axum::http::Request::builder()
        .method(request.method)
        .uri(request.path)
        .header(axum::http::header::HOST, HOST)
        .body(Body::empty())
        .expect("a request");
    http_request.headers_mut().extend(request.headers);
    let response = app.oneshot(http_request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("the body").to_bytes(),
    }
}

async fn default_settings(backend: Backend) {
    conforms(backend, rfc9111::cases(), |layer| layer).await;
}

async fn set_cookie_refused(backend: Backend) {
    conforms(backend, rfc9111::set_cookie_refuse_cases(), |layer| {
        layer.set_cookie_responses(SetCookieResponses::Refuse)
    })
    .await;
}

async fn set_cookie_stripped(backend: Backend) {
    conforms(backend, rfc9111::set_cookie_strip_cases(), |layer| {
        layer.set_cookie_responses(SetCookieResponses::Strip)
    })
    .await;
}

async fn set_cookie_stored(backend: Backend) {
    conforms(backend, rfc9111::set_cookie_store_cases(), |layer| {
        layer.set_cookie_responses(SetCookieResponses::Store)
    })
    .await;
}

on_every_store!(
    default_settings,
    set_cookie_refused,
    set_cookie_stripped,
    set_cookie_stored,
);
