//! What invalidations report they removed, on a real redis-server and the in-process store:
//! `Cache::invalidate_reporting` (keys that held an entry, and keys that held none) and
//! `ResponseCacheLayer::purge` (whether a stored response, or a `Vary` marker and with it
//! every variant, was removed), with the host's port in keys kept or ignored.

#![cfg(feature = "http")]

mod support;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Request, header};
use axum::routing::get;
use cachelayer::http::{HostPort, Purged, ResponseCacheLayer};
use cachelayer::{Key, Removal};
use support::Backend;
use tower::ServiceExt;

/// `/fresh` (stored for a minute), `/vary` (varies on `Accept-Language`) and `/plain` (no
/// freshness: never stored) behind `layer`.
fn app(layer: ResponseCacheLayer) -> Router {
    let varying = |headers: HeaderMap| async move {
        let language = headers
            .get(header::ACCEPT_LANGUAGE)
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        (
            [
                (header::CACHE_CONTROL, "max-age=60"),
                (header::VARY, "Accept-Language"),
            ],
            format!("language {language}"),
        )
    };
    Router::new()
        .route(
            "/fresh",
            get(|| async { ([(header::CACHE_CONTROL, "max-age=60")], "fresh") }),
        )
        .route("/vary", get(varying))
        .route("/plain", get(|| async { "plain" }))
        .layer(layer)
}

/// `X-Cache` of a GET of `uri` for `host`, with `language` as `Accept-Language` if given.
async fn x_cache(app: &Router, host: &str, uri: &str, language: Option<&str>) -> String {
    let mut request = Request::get(uri).header(header::HOST, host);
    if let Some(language) = language {
        request = request.header(header::ACCEPT_LANGUAGE, language);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let x_cache = response.headers()["x-cache"]
        .to_str()
        .expect("x-cache")
        .to_owned();
    // Stored once the body has been read.
    to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    x_cache
}

/// Keys that held an entry are reported removed, the others not found, each once.
async fn invalidate_reporting_tells_what_was_stored(backend: Backend) {
    let cache = backend.cache();
    cache.insert("product:7", "lamp").await.expect("insert");
    cache.insert("product:8", "desk").await.expect("insert");
    let removal = cache
        .invalidate_reporting(["product:7", "product:99", "product:8", "product:7"])
        .await
        .expect("invalidate");
    assert_eq!(
        removal,
        Removal {
            removed: vec![Key::from("product:7"), Key::from("product:8")],
            not_found: vec![Key::from("product:99")],
        }
    );
    assert_eq!(removal.count(), 2);
    assert_eq!(cache.get::<String>("product:7").await, None, "removed");
    let again = cache
        .invalidate_reporting(["product:7", "product:8"])
        .await
        .expect("invalidate");
    assert_eq!(
        (again.count(), again.not_found.len()),
        (0, 2),
        "nothing left"
    );
    let none = cache
        .invalidate_reporting(Vec::<Key>::new())
        .await
        .expect("invalidate");
    assert_eq!(none, Removal::default());
}

/// A purge says `Removed` only when a response was stored: a plain one, or a `Vary` marker
/// (every variant goes with it); not for a URL never stored, purged already, or whose
/// response could not be stored.
async fn purges_tell_whether_a_response_was_stored(backend: Backend) {
    let layer = ResponseCacheLayer::new(backend.cache());
    let app = app(layer.clone());
    let host = "shop.example";
    let purge = |path: &'static str| {
        let layer = layer.clone();
        async move { layer.purge(host, path).await.expect("purge") }
    };
    assert_eq!(purge("/fresh").await, Purged::NotStored, "never stored");
    x_cache(&app, host, "/fresh", None).await;
    assert_eq!(x_cache(&app, host, "/fresh", None).await, "HIT");
    assert_eq!(purge("/%66resh").await, Purged::Removed, "any spelling");
    assert_eq!(x_cache(&app, host, "/fresh", None).await, "MISS");
    assert_eq!(purge("/fresh").await, Purged::Removed);
    assert_eq!(purge("/fresh").await, Purged::NotStored, "purged already");

    for language in [Some("fr"), None] {
        x_cache(&app, host, "/vary", language).await;
        assert_eq!(x_cache(&app, host, "/vary", language).await, "HIT");
    }
    assert_eq!(purge("/vary").await, Purged::Removed, "a Vary'd URL");
    for language in [Some("fr"), None] {
        assert_eq!(
            x_cache(&app, host, "/vary", language).await,
            "MISS",
            "every variant: {language:?}"
        );
    }
    assert_eq!(purge("/vary").await, Purged::Removed, "stored again");
    assert_eq!(purge("/vary").await, Purged::NotStored);

    assert_eq!(x_cache(&app, host, "/plain", None).await, "MISS");
    assert_eq!(
        purge("/plain").await,
        Purged::NotStored,
        "a response that could not be stored"
    );
}

/// With the port kept (the default), `localhost:8080` is an entry of its own, and a purge
/// meets it only naming that port; `http://localhost:80` is `localhost`. With ports
/// ignored, every port shares one entry and any purges it.
async fn purges_follow_the_host_port_rule(backend: Backend) {
    let kept = ResponseCacheLayer::new(backend.cache());
    let app_kept = app(kept.clone());
    x_cache(&app_kept, "localhost:8080", "/fresh", None).await;
    assert_eq!(
        x_cache(&app_kept, "localhost", "/fresh", None).await,
        "MISS"
    );
    let purged = kept.purge("localhost", "/fresh").await.expect("purge");
    assert_eq!(purged, Purged::Removed, "the entry of Host: localhost");
    assert_eq!(
        kept.purge("localhost", "/fresh").await.expect("purge"),
        Purged::NotStored,
        "not the one of localhost:8080"
    );
    assert_eq!(
        x_cache(&app_kept, "localhost:8080", "/fresh", None).await,
        "HIT"
    );
    assert_eq!(
        kept.purge("LOCALHOST:8080", "/fresh").await.expect("purge"),
        Purged::Removed
    );
    x_cache(&app_kept, "localhost", "/fresh", None).await;
    assert_eq!(
        kept.purge("localhost:80", "/fresh").await.expect("purge"),
        Purged::Removed,
        "a default port is no port"
    );
    assert_eq!(
        kept.keyed_url("LocalHost:8080", "/%66resh?b=1&a=2")
            .expect("url"),
        "http://localhost:8080/fresh?a=2&b=1"
    );

    let ignored = ResponseCacheLayer::new(backend.cache()).key_host_port(HostPort::Ignored);
    let app_ignored = app(ignored.clone());
    x_cache(&app_ignored, "localhost:8080", "/fresh", None).await;
    assert_eq!(
        x_cache(&app_ignored, "localhost:9000", "/fresh", None).await,
        "HIT",
        "two ports, one entry"
    );
    assert_eq!(
        ignored
            .purge("localhost:9000", "/fresh")
            .await
            .expect("purge"),
        Purged::Removed
    );
    assert_eq!(
        x_cache(&app_ignored, "localhost:8080", "/fresh", None).await,
        "MISS"
    );
    assert_eq!(
        ignored.keyed_url("localhost:9000", "/fresh").expect("url"),
        "http://localhost/fresh"
    );
}

on_every_store!(
    invalidate_reporting_tells_what_was_stored,
    purges_tell_whether_a_response_was_stored,
    purges_follow_the_host_port_rule,
);
