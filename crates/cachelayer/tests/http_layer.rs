//! The HTTP response cache on an axum router whose handlers count their calls, against a
//! real redis-server and the in-process store.
//!
//! One suite, kept in one file past 600 lines on purpose: its tests share one set of
//! helpers and each reads on its own, so splitting it would only scatter the helpers.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode, header};
use axum::routing;
use bytes::Bytes;
use cachelayer::Cache;
use cachelayer::http::ResponseCacheLayer;
use cachelayer_testkit::RedisServer;
use http_body_util::BodyExt;
use support::{Backend, redis_store};
use tower::ServiceExt;

/// Calls per route.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<&'static str, usize>>>);

impl Calls {
    fn count(&self, route: &'static str) -> usize {
        let mut calls = self.0.lock().expect("calls");
        let n = calls.entry(route).or_default();
        *n += 1;
        *n
    }

    fn of(&self, route: &'static str) -> usize {
        self.0
            .lock()
            .expect("calls")
            .get(route)
            .copied()
            .unwrap_or(0)
    }
}

fn respond(cache_control: &str, body: String) -> Response<Body> {
    Response::builder()
        .header(header::CACHE_CONTROL, cache_control)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(body))
        .expect("response")
}

/// The router under test; every handler returns its own call count in its body.
fn router(cache: Cache) -> (Router, Calls) {
    let (app, calls, _) = router_and_layer(cache);
    (app, calls)
}

/// The router, and the layer in it (for purges).
fn router_and_layer(cache: Cache) -> (Router, Calls, ResponseCacheLayer) {
    let layer = ResponseCacheLayer::new(cache)
        .allowed_hosts(["shop.example"])
        .ignore_query_params(["utm_*"]);
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/fresh",
            routing::get(|State(c): State<Calls>| async move {
                respond("max-age=60", format!("fresh {}", c.count("/fresh")))
            }),
        )
        .route(
            "/shared",
            routing::get(|State(c): State<Calls>| async move {
                respond(
                    "max-age=0, s-maxage=60",
                    format!("shared {}", c.count("/shared")),
                )
            }),
        )
        .route(
            "/public",
            routing::get(|State(c): State<Calls>| async move {
                respond(
                    "public, max-age=60",
                    format!("public {}", c.count("/public")),
                )
            }),
        )
        .route(
            "/private",
            routing::get(|State(c): State<Calls>| async move {
                respond(
                    "private, max-age=60",
                    format!("private {}", c.count("/private")),
                )
            }),
        )
        .route(
            "/plain",
            routing::get(
                |State(c): State<Calls>| async move { format!("plain {}", c.count("/plain")) },
            ),
        )
        .route(
            "/cookie",
            routing::get(|State(c): State<Calls>| async move {
                let mut response = respond("max-age=60", format!("cookie {}", c.count("/cookie")));
                response
                    .headers_mut()
                    .insert(header::SET_COOKIE, "session=secret".parse().expect("v"));
                response
            }),
        )
        .route(
            "/vary",
            routing::get(|State(c): State<Calls>, headers: HeaderMap| async move {
                c.count("/vary");
                let language = headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                let mut response = respond("max-age=60", format!("language {language}"));
                response
                    .headers_mut()
                    .insert(header::VARY, "Accept-Language".parse().expect("v"));
                response
            }),
        )
        .route(
            "/vary-slow",
            routing::get(|State(c): State<Calls>, headers: HeaderMap| async move {
                c.count("/vary-slow");
                // Stands for a slow query: concurrent requests arrive while it runs.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let language = headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                let mut response = respond("max-age=60", format!("language {language}"));
                response
                    .headers_mut()
                    .insert(header::VARY, "Accept-Language".parse().expect("v"));
                response
            }),
        )
        .route(
            "/slow",
            routing::get(|State(c): State<Calls>| async move {
                let n = c.count("/slow");
                // Stands for a slow query: concurrent requests arrive while it runs.
                tokio::time::sleep(Duration::from_millis(300)).await;
                respond("max-age=60", format!("slow {n}"))
            }),
        )
        .route(
            "/big",
            routing::get(|State(c): State<Calls>| async move {
                c.count("/big");
                let chunks =
                    (0..160).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 64 * 1024])));
                Response::builder()
                    .header(header::CACHE_CONTROL, "max-age=60")
                    .body(Body::from_stream(futures::stream::iter(chunks)))
                    .expect("response")
            }),
        )
        .route(
            "/items",
            routing::get(|State(c): State<Calls>| async move {
                respond("max-age=60", format!("items {}", c.count("/items")))
            })
            .post(|State(c): State<Calls>| async move {
                let n = c.count("/items:post");
                Response::builder()
                    .status(StatusCode::CREATED)
                    .header(header::LOCATION, "/items/7")
                    .body(Body::from(format!("created {n}")))
                    .expect("response")
            }),
        )
        .route(
            "/versioned",
            routing::get(|State(c): State<Calls>, headers: HeaderMap| async move {
                // Honours If-None-Match like a careful origin: 304 while version 1 is current.
                let matched = headers
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v.as_bytes() == b"\"v1\"");
                let n = c.count(if matched {
                    "/versioned:304"
                } else {
                    "/versioned"
                });
                let builder = Response::builder()
                    .header(header::CACHE_CONTROL, "max-age=1")
                    .header(header::ETAG, "\"v1\"");
                if matched {
                    builder
                        .status(StatusCode::NOT_MODIFIED)
                        .body(Body::empty())
                        .expect("r")
                } else {
                    builder
                        .body(Body::from(format!("versioned {n}")))
                        .expect("r")
                }
            }),
        )
        .route(
            "/swr",
            routing::get(|State(c): State<Calls>| async move {
                respond(
                    "max-age=1, stale-while-revalidate=60",
                    format!("swr {}", c.count("/swr")),
                )
            }),
        )
        .route(
            "/sie",
            routing::get(|State(c): State<Calls>| async move {
                let n = c.count("/sie");
                if n == 1 {
                    respond("max-age=1, stale-if-error=60", format!("sie {n}"))
                } else {
                    Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(Body::from("database down"))
                        .expect("r")
                }
            }),
        )
        .route(
            "/tagged",
            routing::get(|State(c): State<Calls>| async move {
                let mut response = respond("max-age=60", format!("tagged {}", c.count("/tagged")));
                response
                    .headers_mut()
                    .insert("cache-tag", "product:7, products".parse().expect("v"));
                response
            }),
        )
        .route(
            "/extension",
            routing::get(|State(c): State<Calls>| async move {
                let mut response =
                    respond("max-age=60", format!("extension {}", c.count("/extension")));
                response
                    .extensions_mut()
                    .insert(cachelayer::http::CacheTags::new(["home"]));
                response
            }),
        )
        .route(
            "/items/7",
            routing::get(|State(c): State<Calls>| async move {
                respond("max-age=60", format!("item 7 {}", c.count("/items/7")))
            })
            .put(|State(c): State<Calls>| async move {
                c.count("/items/7:put");
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(calls.clone())
        .layer(layer.clone());
    (app, calls, layer)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

fn get_request(uri: &str) -> axum::http::request::Builder {
    Request::get(uri).header(header::HOST, "shop.example")
}

async fn head(app: &Router, uri: &str) -> Reply {
    let request = Request::head(uri)
        .header(header::HOST, "shop.example")
        .body(Body::empty())
        .expect("request");
    send(app, request).await
}

async fn fetch(app: &Router, uri: &str) -> Reply {
    send(app, get_request(uri).body(Body::empty()).expect("request")).await
}

/// A fresh response is stored on a miss and served on a hit, with Age, X-Cache and
/// Cache-Status; HEAD is answered from GET's entry.
async fn hit_and_miss(backend: Backend) {
    let (app, calls) = router(backend.cache());
    let first = fetch(&app, "/fresh").await;
    assert_eq!(
        (first.status, first.x_cache(), first.text()),
        (StatusCode::OK, "MISS", "fresh 1")
    );
    assert!(
        first
            .cache_status()
            .starts_with("cachelayer; fwd=uri-miss; stored; key=\"#"),
        "{}",
        first.cache_status()
    );
    let second = fetch(&app, "/fresh").await;
    assert_eq!((second.x_cache(), second.text()), ("HIT", "fresh 1"));
    assert!(
        second.cache_status().starts_with("cachelayer; hit; ttl="),
        "{}",
        second.cache_status()
    );
    assert!(second.headers.contains_key(header::AGE));
    let head = send(
        &app,
        Request::head("/fresh")
            .header(header::HOST, "shop.example")
            .body(Body::empty())
            .expect("r"),
    )
    .await;
    assert_eq!((head.x_cache(), head.body.len()), ("HIT", 0));
    assert_eq!(calls.of("/fresh"), 1);
}

/// s-maxage wins over max-age for a shared cache; responses without freshness information,
/// private ones and ones setting cookies are not stored.
async fn freshness_sources_and_refusals(backend: Backend) {
    let (app, calls) = router(backend.cache());
    for route in ["/shared", "/plain", "/private", "/cookie"] {
        fetch(&app, route).await;
        fetch(&app, route).await;
    }
    assert_eq!(calls.of("/shared"), 1, "s-maxage=60 overrides max-age=0");
    assert_eq!(calls.of("/plain"), 2, "no freshness, no default TTL");
    assert_eq!(calls.of("/private"), 2);
    assert_eq!(calls.of("/cookie"), 2);
    // With a default TTL, a plain response is stored.
    let cache = backend.cache();
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/plain",
            routing::get(
                |State(c): State<Calls>| async move { format!("plain {}", c.count("/plain")) },
            ),
        )
        .with_state(calls.clone())
        .layer(ResponseCacheLayer::new(cache).default_ttl(Some(Duration::from_secs(60))));
    assert_eq!(fetch(&app, "/plain").await.text(), "plain 1");
    assert_eq!(fetch(&app, "/plain").await.text(), "plain 1");
    assert_eq!(calls.of("/plain"), 1);
}

/// The client's Cache-Control: no-cache and max-age=0 go to the origin; Pragma: no-cache
/// from HTTP/1.0 clients too; only-if-cached gets the stored response or a 504.
async fn request_directives(backend: Backend) {
    let (app, calls) = router(backend.cache());
    let only = |uri| {
        get_request(uri)
            .header(header::CACHE_CONTROL, "only-if-cached")
            .body(Body::empty())
            .expect("r")
    };
    let absent = send(&app, only("/fresh")).await;
    assert_eq!(absent.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(absent.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        absent.text(),
        r#"{"error":"not_in_cache","message":"nothing usable is stored and the request said only-if-cached"}"#
    );
    assert_eq!(calls.of("/fresh"), 0);
    fetch(&app, "/fresh").await;
    assert_eq!(send(&app, only("/fresh")).await.text(), "fresh 1");
    for (name, value) in [
        (header::CACHE_CONTROL, "no-cache"),
        (header::CACHE_CONTROL, "max-age=0"),
        (header::PRAGMA, "no-cache"),
    ] {
        let reply = send(
            &app,
            get_request("/fresh")
                .header(name, value)
                .body(Body::empty())
                .expect("r"),
        )
        .await;
        assert_eq!(reply.x_cache(), "MISS", "{value}");
        assert!(
            reply.cache_status().contains("fwd=request"),
            "{}",
            reply.cache_status()
        );
    }
    assert_eq!(calls.of("/fresh"), 4);
    // What those requests fetched was stored: the latest is served.
    assert_eq!(fetch(&app, "/fresh").await.text(), "fresh 4");
}

/// Vary: a response is served only to requests with the same values of the named headers,
/// and each variant is kept under its own secondary key.
async fn vary_is_respected(backend: Backend) {
    let (app, calls) = router(backend.cache());
    let in_language = |language| {
        get_request("/vary")
            .header(header::ACCEPT_LANGUAGE, language)
            .body(Body::empty())
            .expect("r")
    };
    assert_eq!(send(&app, in_language("fr")).await.text(), "language fr");
    let english = send(&app, in_language("en")).await;
    assert_eq!((english.x_cache(), english.text()), ("MISS", "language en"));
    assert!(english.cache_status().contains("fwd=vary-miss"));
    let again = send(&app, in_language("en")).await;
    assert_eq!((again.x_cache(), again.text()), ("HIT", "language en"));
    // Each variant has its own entry: French is still there.
    let french = send(&app, in_language("fr")).await;
    assert_eq!((french.x_cache(), french.text()), ("HIT", "language fr"));
    assert_eq!(calls.of("/vary"), 2);
    // Absent matches only absent: an empty value is another variant.
    assert_eq!(fetch(&app, "/vary").await.text(), "language none");
    assert_eq!(send(&app, in_language("")).await.x_cache(), "MISS");
    assert_eq!(fetch(&app, "/vary").await.x_cache(), "HIT");
    assert_eq!(calls.of("/vary"), 4);
}

/// A response to a request with Authorization is stored only when it says it may be shared;
/// requests with cookies bypass the cache; other methods pass through.
async fn authorization_cookies_and_methods(backend: Backend) {
    let (app, calls) = router(backend.cache());
    let authorized = |uri| {
        get_request(uri)
            .header(header::AUTHORIZATION, "Bearer alice")
            .body(Body::empty())
            .expect("r")
    };
    assert_eq!(send(&app, authorized("/fresh")).await.x_cache(), "MISS");
    assert_eq!(send(&app, authorized("/fresh")).await.x_cache(), "MISS");
    assert_eq!(
        calls.of("/fresh"),
        2,
        "max-age alone does not allow sharing an authorized response"
    );
    send(&app, authorized("/public")).await;
    assert_eq!(send(&app, authorized("/public")).await.x_cache(), "HIT");
    let with_cookie = get_request("/public")
        .header(header::COOKIE, "session=1")
        .body(Body::empty())
        .expect("r");
    assert_eq!(send(&app, with_cookie).await.x_cache(), "BYPASS");
    let post = Request::post("/items")
        .header(header::HOST, "shop.example")
        .body(Body::empty())
        .expect("r");
    let created = send(&app, post).await;
    assert_eq!((created.x_cache(), created.text()), ("BYPASS", "created 1"));
}

/// Waits past a 1 s freshness lifetime: expiry has no signal, so this is time passing.
async fn outlive_one_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// Clients revalidate with If-None-Match (the generated strong ETag) or If-Modified-Since
/// and get 304 from the cache.
async fn conditional_requests_get_304(backend: Backend) {
    let (app, calls) = router(backend.cache());
    let first = fetch(&app, "/fresh").await;
    let etag = first
        .headers
        .get(header::ETAG)
        .expect("generated etag")
        .clone();
    assert!(etag.to_str().expect("ascii").starts_with('"'));
    let revalidate = |value: &str| {
        get_request("/fresh")
            .header(header::IF_NONE_MATCH, value)
            .body(Body::empty())
            .expect("r")
    };
    let not_modified = send(&app, revalidate(etag.to_str().expect("ascii"))).await;
    assert_eq!(
        (not_modified.status, not_modified.body.len()),
        (StatusCode::NOT_MODIFIED, 0)
    );
    assert_eq!(not_modified.headers.get(header::ETAG), Some(&etag));
    assert_eq!(not_modified.x_cache(), "HIT");
    let weak = format!("W/{}", etag.to_str().expect("ascii"));
    assert_eq!(
        send(&app, revalidate(&weak)).await.status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        send(&app, revalidate("\"other\"")).await.status,
        StatusCode::OK
    );
    assert_eq!(calls.of("/fresh"), 1);
}

/// A stale response with the origin's validators is revalidated: the origin answers 304,
/// and the stored body is served and kept, fresh again.
async fn stale_responses_are_revalidated(backend: Backend) {
    let (app, calls) = router(backend.cache());
    assert_eq!(fetch(&app, "/versioned").await.text(), "versioned 1");
    outlive_one_second().await;
    let revalidated = fetch(&app, "/versioned").await;
    assert_eq!(
        (revalidated.status, revalidated.text()),
        (StatusCode::OK, "versioned 1")
    );
    assert!(
        revalidated.cache_status().contains("fwd-status=304"),
        "{}",
        revalidated.cache_status()
    );
    assert_eq!(calls.of("/versioned:304"), 1);
    let hit = fetch(&app, "/versioned").await;
    assert_eq!((hit.x_cache(), hit.text()), ("HIT", "versioned 1"));
    assert_eq!(calls.of("/versioned"), 1, "the body was never sent again");
}

/// A 304 the origin sends for a client's own validators is that client's answer only: it is
/// not stored, and the next client gets the whole response. A HEAD that revalidates with the
/// cache's validators gets a 200 with the stored length, never a bare 304.
async fn origin_304s_are_never_shared(backend: Backend) {
    let (app, calls) = router(backend.cache());
    let with_validator = get_request("/versioned")
        .header(header::IF_NONE_MATCH, "\"v1\"")
        .body(Body::empty())
        .expect("r");
    assert_eq!(
        send(&app, with_validator).await.status,
        StatusCode::NOT_MODIFIED
    );
    let plain = fetch(&app, "/versioned").await;
    assert_eq!(
        (plain.status, plain.text()),
        (StatusCode::OK, "versioned 1")
    );
    assert_eq!(calls.of("/versioned:304"), 1);
    let fresh_head = head(&app, "/versioned").await;
    assert_eq!(
        fresh_head
            .headers
            .get(header::CONTENT_LENGTH)
            .map(|v| v.as_bytes()),
        Some(&b"11"[..]),
        "HEAD carries the stored length"
    );
    outlive_one_second().await;
    // A HEAD never fills the cache for a GET: it goes to the origin, and gets no bare 304.
    let stale_head = head(&app, "/versioned").await;
    assert_eq!(
        (stale_head.status, stale_head.body.len()),
        (StatusCode::OK, 0)
    );
    assert_eq!(
        calls.of("/versioned:304"),
        1,
        "no validators were added to the HEAD"
    );
}

/// stale-while-revalidate: the stale response is served at once and refreshed in the
/// background; stale-if-error: an origin failure is answered with the stale response.
async fn stale_serving_from_response_directives(backend: Backend) {
    let (app, calls) = router(backend.cache());
    assert_eq!(fetch(&app, "/swr").await.text(), "swr 1");
    outlive_one_second().await;
    let stale = fetch(&app, "/swr").await;
    assert_eq!((stale.x_cache(), stale.text()), ("STALE", "swr 1"));
    // The refresh lands in the background: wait for its observable result.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fetch(&app, "/swr").await.text() != "swr 2" {
        assert!(tokio::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls.of("/swr"), 2);

    assert_eq!(fetch(&app, "/sie").await.text(), "sie 1");
    outlive_one_second().await;
    let fallback = fetch(&app, "/sie").await;
    assert_eq!(
        (fallback.status, fallback.x_cache(), fallback.text()),
        (StatusCode::OK, "STALE", "sie 1")
    );
    assert_eq!(calls.of("/sie"), 2, "the origin was asked and failed");
    let again = fetch(&app, "/sie").await;
    assert_eq!(
        (again.x_cache(), again.text()),
        ("STALE", "sie 1"),
        "the stale copy stays"
    );
}

/// Tags (header or extension) are stripped before clients see them, and invalidating a tag
/// through one layer drops the responses every other instance on the store would serve.
/// Without near tiers: one would keep the old tag versions for its documented window (the
/// time Redis takes to push the change), which near_cache.rs measures.
async fn tags_invalidate_across_instances(backend: Backend) {
    let instance = || {
        backend
            .cache_builder()
            .near_capacity_bytes(0)
            .build()
            .expect("cache")
    };
    let (first, calls_first, layer_first) = router_and_layer(instance());
    let (second, calls_second, _) = router_and_layer(instance());
    for uri in ["/tagged", "/extension", "/fresh"] {
        let reply = fetch(&first, uri).await;
        assert!(!reply.headers.contains_key("cache-tag"), "{uri}");
        assert_eq!(
            fetch(&second, uri).await.x_cache(),
            "HIT",
            "{uri}: one shared store"
        );
    }
    layer_first
        .invalidate_tags(["products", "home"])
        .await
        .expect("invalidate");
    for (uri, text) in [("/tagged", "tagged 1"), ("/extension", "extension 1")] {
        let reply = fetch(&second, uri).await;
        assert_eq!((reply.x_cache(), reply.text()), ("MISS", text), "{uri}");
    }
    assert_eq!(
        fetch(&second, "/fresh").await.x_cache(),
        "HIT",
        "untagged stays"
    );
    assert_eq!(calls_first.of("/tagged") + calls_second.of("/tagged"), 2);
    assert_eq!(
        fetch(&first, "/tagged").await.x_cache(),
        "HIT",
        "the new copy is valid"
    );
}

/// A tag's version key holding garbage (bytes that are not even UTF-8, written from
/// outside) is replaced as an invalidation would: the response that finds it is not stored,
/// the next one is, and hits follow; caching of the tag's responses is not off for good.
async fn broken_tag_versions_heal(backend: Backend) {
    let cache = backend.cache();
    let (app, calls) = router(cache.clone());
    assert_eq!(fetch(&app, "/tagged").await.x_cache(), "MISS");
    assert_eq!(fetch(&app, "/tagged").await.x_cache(), "HIT");
    for tag in ["products", "product:7"] {
        let key = cachelayer::http::tag_version_key(&cache, tag);
        backend
            .store
            .set(
                &key,
                Bytes::from_static(b"\xff\xfe garbage"),
                Duration::from_secs(3600),
            )
            .await
            .expect("break the version");
    }
    let replies: Vec<String> = {
        let mut replies = Vec::new();
        for _ in 0..3 {
            replies.push(fetch(&app, "/tagged").await.x_cache().to_owned());
        }
        replies
    };
    assert_eq!(
        replies,
        ["MISS", "MISS", "HIT"],
        "healed on the second miss"
    );
    assert_eq!(calls.of("/tagged"), 3);
    // On Redis a version key can also hold another type, which reads as absent.
    if let Some(server) = &backend.server {
        for tag in ["products", "product:7"] {
            let key = cachelayer::http::tag_version_key(&cache, tag);
            server.cli(["DEL", &key]);
            server.cli(["HSET", &key, "field", "value"]);
        }
        let mut replies = Vec::new();
        for _ in 0..3 {
            replies.push(fetch(&app, "/tagged").await.x_cache().to_owned());
        }
        assert_eq!(replies, ["MISS", "MISS", "HIT"], "another type healed");
    }
}

/// A URL whose responses cannot be stored is remembered for a while: later concurrent
/// requests all reach the origin at once instead of queueing behind one another. The
/// handler waits until 10 requests are inside it, which only happens if none waits on
/// another (a queue would never fill the barrier, and the timeout would fail the test).
async fn uncacheable_urls_are_not_queued(backend: Backend) {
    let calls = Calls::default();
    let inside = Arc::new(tokio::sync::Barrier::new(10));
    let app = Router::new()
        .route(
            "/personal",
            routing::get(move |State(c): State<Calls>| {
                let inside = Arc::clone(&inside);
                async move {
                    if c.count("/personal") > 1 {
                        inside.wait().await;
                    }
                    respond("private, max-age=60", "yours".to_owned())
                }
            }),
        )
        .with_state(calls.clone())
        .layer(ResponseCacheLayer::new(backend.cache()));
    assert_eq!(fetch(&app, "/personal").await.x_cache(), "MISS");
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { fetch(&app, "/personal").await })
        })
        .collect();
    for request in requests {
        let reply = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("requests were queued")
            .expect("request");
        assert_eq!(reply.text(), "yours");
    }
    assert_eq!(calls.of("/personal"), 11);
}

/// Extra key parts split entries by what the URL does not show.
async fn extra_key_parts_split_entries(backend: Backend) {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/tenant",
            routing::get(|State(c): State<Calls>, headers: HeaderMap| async move {
                c.count("/tenant");
                let tenant = headers
                    .get("x-tenant")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                respond("max-age=60", format!("tenant {tenant}"))
            }),
        )
        .with_state(calls.clone())
        .layer(ResponseCacheLayer::new(backend.cache()).key_parts(|parts| {
            vec![
                parts
                    .headers
                    .get("x-tenant")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned(),
            ]
        }));
    let as_tenant = |tenant| {
        get_request("/tenant")
            .header("x-tenant", tenant)
            .body(Body::empty())
            .expect("r")
    };
    assert_eq!(send(&app, as_tenant("a")).await.text(), "tenant a");
    assert_eq!(send(&app, as_tenant("b")).await.text(), "tenant b");
    let again = send(&app, as_tenant("a")).await;
    assert_eq!((again.x_cache(), again.text()), ("HIT", "tenant a"));
    assert_eq!(calls.of("/tenant"), 2);
}

/// A successful write invalidates its target URI and its Location; a purge drops one URL.
async fn writes_and_purges_invalidate(backend: Backend) {
    let (app, calls, layer) = router_and_layer(backend.cache());
    for uri in ["/items", "/items/7", "/fresh"] {
        fetch(&app, uri).await;
        assert_eq!(fetch(&app, uri).await.x_cache(), "HIT", "{uri}");
    }
    let post = Request::post("/items")
        .header(header::HOST, "shop.example")
        .body(Body::empty())
        .expect("r");
    assert_eq!(send(&app, post).await.status, StatusCode::CREATED);
    let list = fetch(&app, "/items").await;
    assert_eq!(
        (list.x_cache(), list.text()),
        ("MISS", "items 2"),
        "the write's target"
    );
    let item = fetch(&app, "/items/7").await;
    assert_eq!(
        (item.x_cache(), item.text()),
        ("MISS", "item 7 2"),
        "its Location"
    );
    assert_eq!(
        fetch(&app, "/fresh").await.x_cache(),
        "HIT",
        "other URLs stay"
    );
    // PUT then GET returns the new body.
    assert_eq!(fetch(&app, "/items/7").await.x_cache(), "HIT");
    let put = Request::put("/items/7")
        .header(header::HOST, "shop.example")
        .body(Body::empty())
        .expect("r");
    assert_eq!(send(&app, put).await.status, StatusCode::NO_CONTENT);
    assert_eq!(fetch(&app, "/items/7").await.text(), "item 7 3");
    // A purge of a URL that varies drops every variant.
    let french = || {
        get_request("/vary")
            .header(header::ACCEPT_LANGUAGE, "fr")
            .body(Body::empty())
            .expect("r")
    };
    send(&app, french()).await;
    fetch(&app, "/vary").await;
    assert_eq!(send(&app, french()).await.x_cache(), "HIT");
    layer.purge("shop.example", "/vary").await.expect("purge");
    assert_eq!(fetch(&app, "/vary").await.x_cache(), "MISS");
    assert_eq!(
        send(&app, french()).await.x_cache(),
        "MISS",
        "every variant"
    );
    layer.purge("shop.example", "/fresh").await.expect("purge");
    assert_eq!(fetch(&app, "/fresh").await.x_cache(), "MISS");
    assert_eq!(calls.of("/fresh"), 2);
}

/// A forged Host is never cached, so it cannot poison the entry of the real host.
async fn forged_host_cannot_poison(backend: Backend) {
    let (app, calls) = router(backend.cache());
    let forged = Request::get("/fresh")
        .header(header::HOST, "evil.example")
        .body(Body::empty())
        .expect("r");
    assert_eq!(send(&app, forged).await.x_cache(), "BYPASS");
    let real = fetch(&app, "/fresh").await;
    assert_eq!((real.x_cache(), real.text()), ("MISS", "fresh 2"));
    assert_eq!(calls.of("/fresh"), 2);
}

/// Parameter order and ignored parameters (utm_*) do not split entries.
async fn query_is_normalized(backend: Backend) {
    let (app, calls) = router(backend.cache());
    fetch(&app, "/fresh?b=2&a=1&utm_source=mail").await;
    assert_eq!(fetch(&app, "/fresh?a=1&b=2").await.x_cache(), "HIT");
    assert_eq!(fetch(&app, "/fresh?a=1&b=3").await.x_cache(), "MISS");
    assert_eq!(calls.of("/fresh"), 2);
}

/// Spellings of a query that RFC 3986 calls one (escaped unreserved characters, in names
/// and values, ignored names included) are one entry; `+` and `%20` are not.
async fn query_escapes_are_one_entry(backend: Backend) {
    let (app, calls) = router(backend.cache());
    assert_eq!(fetch(&app, "/items?limit=5").await.x_cache(), "MISS");
    for spelling in ["/items?l%69mit=5", "/items?limit=%35&utm%5Fsource=x"] {
        let reply = fetch(&app, spelling).await;
        assert_eq!(
            (reply.x_cache(), reply.text()),
            ("HIT", "items 1"),
            "{spelling}"
        );
    }
    fetch(&app, "/items?q=a+b").await;
    assert_eq!(fetch(&app, "/items?q=a%20b").await.x_cache(), "MISS");
    assert_eq!(calls.of("/items"), 3);
}

/// 100 concurrent requests for a cold URL make one origin call.
async fn concurrent_misses_collapse(backend: Backend) {
    let (app, calls) = router(backend.cache());
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { fetch(&app, "/slow").await })
        })
        .collect();
    for request in requests {
        let reply = request.await.expect("request");
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "slow 1"));
    }
    assert_eq!(calls.of("/slow"), 1);
}

/// Concurrent misses of a varying URL collapse per variant: 2 languages x 20 requests make
/// 2 origin calls.
async fn concurrent_misses_collapse_per_variant(backend: Backend) {
    let (app, calls) = router(backend.cache());
    let requests: Vec<_> = (0..40)
        .map(|i| {
            let app = app.clone();
            let language = if i % 2 == 0 { "fr" } else { "en" };
            tokio::spawn(async move {
                let request = get_request("/vary-slow")
                    .header(header::ACCEPT_LANGUAGE, language)
                    .body(Body::empty())
                    .expect("r");
                (language, send(&app, request).await)
            })
        })
        .collect();
    for request in requests {
        let (language, reply) = request.await.expect("request");
        assert_eq!(reply.text(), format!("language {language}"));
    }
    assert_eq!(calls.of("/vary-slow"), 2);
}

/// A 10 MB streamed body passes through whole and unstored (the limit is 1 MiB).
async fn large_bodies_stream_through(backend: Backend) {
    let (app, calls) = router(backend.cache());
    for _ in 0..2 {
        let reply = fetch(&app, "/big").await;
        assert_eq!(reply.body.len(), 160 * 64 * 1024);
        assert!(reply.body.iter().all(|b| *b == b'x'));
        assert_eq!(reply.x_cache(), "MISS");
    }
    assert_eq!(calls.of("/big"), 2);
}

/// A GET carrying a body is never answered from the cache nor stored: declared by
/// `Content-Length`, or not declared at all (a stream, as HTTP/2 data frames arrive).
async fn requests_with_bodies_bypass(backend: Backend) {
    let (app, calls) = router(backend.cache());
    fetch(&app, "/fresh").await;
    assert_eq!(fetch(&app, "/fresh").await.x_cache(), "HIT");
    let declared = get_request("/fresh")
        .header(header::CONTENT_LENGTH, "2")
        .body(Body::from("{}"))
        .expect("request");
    let chunks = [Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{}"))];
    let undeclared = get_request("/fresh")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .expect("request");
    for request in [declared, undeclared] {
        let reply = send(&app, request).await;
        assert_eq!(reply.x_cache(), "BYPASS");
    }
    assert_eq!(calls.of("/fresh"), 3, "both went to the origin");
    assert_eq!(
        fetch(&app, "/fresh").await.text(),
        "fresh 1",
        "the stored entry is intact"
    );
}

/// A header a request names in `Connection` is dropped before the cache judges the request
/// and before the origin sees it: the response is keyed under what the origin answered for
/// (no such header), so a client cannot store an answer under a `Vary` value the origin
/// never saw, to be served to the next client who sends that value.
async fn connection_cannot_choose_the_variant(backend: Backend) {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/speaks/{vary}",
            routing::get(
                |State(c): State<Calls>,
                 axum::extract::Path(name): axum::extract::Path<String>,
                 headers: HeaderMap| async move {
                    c.count("/speaks");
                    let value = headers
                        .get(name.as_str())
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    let mut response = respond("max-age=60", value);
                    response
                        .headers_mut()
                        .insert(header::VARY, name.parse().expect("a header name"));
                    response
                },
            ),
        )
        .with_state(calls.clone())
        .layer(ResponseCacheLayer::new(backend.cache()));
    for (name, value) in [
        ("x-lang", "fr"),
        ("accept-language", "fr-CH"),
        ("origin", "https://evil.example"),
    ] {
        let uri = format!("/speaks/{name}");
        let naming = get_request(&uri)
            .header(header::CONNECTION, format!("keep-alive, {name}"))
            .header(name, value)
            .body(Body::empty())
            .expect("r");
        let first = send(&app, naming).await;
        assert_eq!(first.text(), "none", "{name}: the origin never saw it");
        let sending = get_request(&uri)
            .header(name, value)
            .body(Body::empty())
            .expect("r");
        let real = send(&app, sending).await;
        assert_eq!(
            (real.x_cache(), real.text()),
            ("MISS", value),
            "{name}: not the answer stored for the request that named it"
        );
        let without = fetch(&app, &uri).await;
        assert_eq!(
            (without.x_cache(), without.text()),
            ("HIT", "none"),
            "{name}"
        );
    }
    assert_eq!(calls.of("/speaks"), 6);
}

/// Spellings of one path (escaped unreserved characters, dot segments, repeated slashes)
/// are one entry, the origin receives the normal form, and a write through any spelling,
/// or a `Location` naming one, or a purge, drops it.
async fn path_spellings_are_one_entry(backend: Backend) {
    let calls = Calls::default();
    let layer = ResponseCacheLayer::new(backend.cache());
    let origin = Router::new()
        .route(
            "/b/n2",
            routing::get(|State(c): State<Calls>| async move {
                respond("max-age=60", format!("n2 {}", c.count("/b/n2")))
            })
            .put(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/b",
            routing::post(|| async {
                // A relative reference, in another spelling: `/b/n2` once resolved.
                (StatusCode::CREATED, [(header::LOCATION, "%62/n2")])
            }),
        )
        .with_state(calls.clone());
    // Around the router, not `Router::layer` (which runs after routing): the router routes
    // the normal form the layer passes on.
    let app = Router::new().fallback_service(tower::Layer::layer(&layer, origin));
    let first = fetch(&app, "/%62/n2").await;
    assert_eq!((first.status, first.text()), (StatusCode::OK, "n2 1"));
    for spelling in ["/b/n2", "/%62/%6e2", "/b//n2", "/x/../b/./n2"] {
        let reply = fetch(&app, spelling).await;
        assert_eq!(
            (reply.x_cache(), reply.text()),
            ("HIT", "n2 1"),
            "{spelling}"
        );
    }
    let write = |method: &str, uri: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "shop.example")
            .body(Body::empty())
            .expect("r")
    };
    let mut expected = 1;
    for (method, uri) in [("PUT", "/b/n2"), ("PUT", "/%62/n2"), ("POST", "/b")] {
        assert!(send(&app, write(method, uri)).await.status.is_success());
        expected += 1;
        for spelling in ["/%62/n2", "/b/n2"] {
            let reply = fetch(&app, spelling).await;
            assert_eq!(
                reply.text(),
                format!("n2 {expected}"),
                "{method} {uri}, then {spelling}"
            );
        }
    }
    layer
        .purge("shop.example", "/%62/./n2")
        .await
        .expect("purge");
    assert_eq!(fetch(&app, "/b/n2").await.x_cache(), "MISS", "purged");
    assert_eq!(calls.of("/b/n2"), 5);
}

/// Layers with different key scopes on one store never serve each other's entries for the
/// same host and path; layers with the same scope share them, and purge them for each other.
async fn key_scopes_keep_layers_apart(backend: Backend) {
    let scoped = |scope: &'static str, calls: &Calls| {
        let layer = ResponseCacheLayer::new(backend.cache()).key_scope(scope);
        let app = Router::new()
            .route(
                "/page",
                routing::get(move |State(c): State<Calls>| async move {
                    respond("max-age=60", format!("{scope} {}", c.count("/page")))
                }),
            )
            .with_state(calls.clone())
            .layer(layer.clone());
        (app, layer)
    };
    let (a_calls, b_calls) = (Calls::default(), Calls::default());
    let (a, _) = scoped("http://a.internal:80", &a_calls);
    let (b, b_layer) = scoped("http://b.internal:80", &b_calls);
    let (b_again, _) = scoped("http://b.internal:80", &b_calls);
    assert_eq!(fetch(&a, "/page").await.text(), "http://a.internal:80 1");
    let other = fetch(&b, "/page").await;
    assert_eq!(
        (other.x_cache(), other.text()),
        ("MISS", "http://b.internal:80 1"),
        "another scope's entry is not served"
    );
    let shared = fetch(&b_again, "/page").await;
    assert_eq!(
        (shared.x_cache(), shared.text()),
        ("HIT", "http://b.internal:80 1")
    );
    b_layer.purge("shop.example", "/page").await.expect("purge");
    assert_eq!(fetch(&b_again, "/page").await.x_cache(), "MISS");
    assert_eq!(
        fetch(&a, "/page").await.x_cache(),
        "HIT",
        "purged in its scope only"
    );
    let unscoped = Router::new()
        .route(
            "/page",
            routing::get(|| async { respond("max-age=60", "unscoped".into()) }),
        )
        .layer(ResponseCacheLayer::new(backend.cache()));
    let own = fetch(&unscoped, "/page").await;
    assert_eq!(
        (own.x_cache(), own.text()),
        ("MISS", "unscoped"),
        "no scope is a key space of its own"
    );
}

/// A default TTL stores successes and permanent redirects without cache headers, never an
/// error page, unless the layer lists that status; explicit freshness is stored as before.
async fn default_ttl_skips_error_pages(backend: Backend) {
    let app = |layer: ResponseCacheLayer, calls: &Calls| {
        Router::new()
            .route(
                "/odd",
                routing::get(|State(c): State<Calls>| async move {
                    c.count("/odd");
                    StatusCode::METHOD_NOT_ALLOWED
                }),
            )
            .route(
                "/told",
                routing::get(|State(c): State<Calls>| async move {
                    c.count("/told");
                    let told = [(header::CACHE_CONTROL, "max-age=60")];
                    (StatusCode::NOT_FOUND, told)
                }),
            )
            .route(
                "/moved",
                routing::get(|State(c): State<Calls>| async move {
                    c.count("/moved");
                    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/b")])
                }),
            )
            .with_state(calls.clone())
            .layer(layer)
    };
    let ttl = Some(Duration::from_secs(60));
    let calls = Calls::default();
    let defaults = app(
        ResponseCacheLayer::new(backend.cache()).default_ttl(ttl),
        &calls,
    );
    for uri in ["/odd", "/odd", "/told", "/told", "/moved", "/moved"] {
        fetch(&defaults, uri).await;
    }
    assert_eq!(
        calls.of("/odd"),
        2,
        "a 405 is not stored for the default TTL"
    );
    assert_eq!(calls.of("/told"), 1, "explicit freshness applies to a 404");
    assert_eq!(calls.of("/moved"), 1, "a permanent redirect is");
    let calls = Calls::default();
    // A scope of its own: the first layer's entries are in the same store.
    let listed = ResponseCacheLayer::new(backend.cache())
        .key_scope("listed")
        .default_ttl(ttl)
        .default_ttl_statuses([StatusCode::METHOD_NOT_ALLOWED].into_iter().collect());
    let listed = app(listed, &calls);
    for _ in 0..2 {
        assert_eq!(
            fetch(&listed, "/odd").await.status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
    assert_eq!(calls.of("/odd"), 1, "listed: stored");
}

on_every_store!(
    connection_cannot_choose_the_variant,
    path_spellings_are_one_entry,
    key_scopes_keep_layers_apart,
    default_ttl_skips_error_pages,
    requests_with_bodies_bypass,
    hit_and_miss,
    freshness_sources_and_refusals,
    request_directives,
    vary_is_respected,
    authorization_cookies_and_methods,
    writes_and_purges_invalidate,
    conditional_requests_get_304,
    tags_invalidate_across_instances,
    broken_tag_versions_heal,
    extra_key_parts_split_entries,
    uncacheable_urls_are_not_queued,
    stale_responses_are_revalidated,
    origin_304s_are_never_shared,
    stale_serving_from_response_directives,
    forged_host_cannot_poison,
    query_is_normalized,
    query_escapes_are_one_entry,
    concurrent_misses_collapse,
    concurrent_misses_collapse_per_variant,
    large_bodies_stream_through,
);

/// Two layer instances (two processes' caches) on one Redis: 2 x 50 concurrent requests for
/// a cold URL make one origin call between them, through the cache's fleet-wide lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_collapse_across_instances() {
    let server = RedisServer::start();
    let instance = || {
        Cache::builder()
            .store(redis_store(&server.url()))
            .namespace("http")
            .command_timeout(Duration::from_secs(2))
            .build()
            .expect("cache")
    };
    let (first, calls_first) = router(instance());
    let (second, calls_second) = router(instance());
    let start = Arc::new(tokio::sync::Barrier::new(100));
    let mut requests = Vec::new();
    for app in [first, second] {
        for _ in 0..50 {
            let (app, start) = (app.clone(), Arc::clone(&start));
            requests.push(tokio::spawn(async move {
                start.wait().await;
                fetch(&app, "/slow").await
            }));
        }
    }
    for request in requests {
        let reply = request.await.expect("request");
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "slow 1"));
    }
    assert_eq!(calls_first.of("/slow") + calls_second.of("/slow"), 1);
}

/// Redis stopped mid-test: every request is still answered by the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_test_serves_the_origin() {
    let mut server = RedisServer::start();
    let cache = Cache::builder()
        .store(redis_store(&server.url()))
        .namespace("http")
        .build()
        .expect("cache");
    let (app, calls) = router(cache.clone());
    fetch(&app, "/fresh").await;
    assert_eq!(fetch(&app, "/fresh").await.x_cache(), "HIT");
    server.stop();
    support::until_near_tier_blind(&cache).await;
    let reply = fetch(&app, "/fresh").await;
    assert_eq!(
        (reply.status, reply.x_cache(), reply.text()),
        (StatusCode::OK, "MISS", "fresh 2")
    );
    assert_eq!(calls.of("/fresh"), 2);
}

/// In the in-process store, hits of one response share its stored bytes: each hit's body is
/// the same memory, not a copy, however many hits are in flight (a slow reader holding a
/// large response costs no memory of its own).
#[tokio::test]
async fn hits_share_one_copy_of_the_body() {
    let layer = ResponseCacheLayer::new(Backend::memory().cache());
    let app = Router::new()
        .route(
            "/large",
            routing::get(|| async { respond("max-age=60", "x".repeat(256 * 1024)) }),
        )
        .layer(layer);
    let request = || get_request("/large").body(Body::empty()).expect("request");
    assert_eq!(send(&app, request()).await.x_cache(), "MISS");
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let response = app.clone().oneshot(request()).await.expect("infallible");
        assert_eq!(response.headers()["x-cache"], "HIT");
        let frame = response
            .into_body()
            .frame()
            .await
            .expect("a frame")
            .expect("no error");
        let data = frame.into_data().expect("data");
        assert_eq!(data.len(), 256 * 1024, "the whole body in one frame");
        bodies.push(data);
    }
    assert_eq!(
        bodies[0].as_ptr(),
        bodies[1].as_ptr(),
        "both hits' bodies are one stored copy"
    );
}
