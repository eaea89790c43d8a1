//! The HTTP layer against hostile clients and careless origins, where RFC 9110 and 9111
//! leave room for a cache to get hurt: ranges of empty bodies, fields kept from reuse coming
//! back through a 304, a 304 naming another representation, `POST` responses without
//! explicit freshness, ten-year lifetimes with `Vary`, weak `If-Range` dates, `no-cache`
//! responses and collapsed waiters, a 304 that makes a response private. Each test states
//! what the RFC asks for; each failed before the fix it guards. On the in-process store: the
//! behaviour is the layer's, whatever stores it.

#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, header};
use bytes::Bytes;
use cachelayer::http::ResponseCacheLayer;
use http_body_util::BodyExt;
use support::Backend;
use tower::{Layer, Service, ServiceExt};

const HOST: &str = "shop.example";

/// What the scripted origin sees of a request.
struct Seen {
    call: usize,
    method: Method,
    headers: HeaderMap,
}

type Script = dyn Fn(Seen) -> Response<Body> + Send + Sync;

#[derive(Clone)]
struct Origin {
    script: Arc<Script>,
    calls: Arc<AtomicUsize>,
    delay: Duration,
}

impl Service<Request<Body>> for Origin {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let script = Arc::clone(&self.script);
        let delay = self.delay;
        let (parts, _) = request.into_parts();
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(script(Seen {
                call,
                method: parts.method,
                headers: parts.headers,
            }))
        })
    }
}

struct App<S> {
    service: S,
    calls: Arc<AtomicUsize>,
}

fn make_app(
    layer: ResponseCacheLayer,
    delay: Duration,
    script: impl Fn(Seen) -> Response<Body> + Send + Sync + 'static,
) -> App<cachelayer::http::ResponseCache<Origin>> {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = Origin {
        script: Arc::new(script),
        calls: Arc::clone(&calls),
        delay,
    };
    App {
        service: layer.layer(origin),
        calls,
    }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn h(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn send<S>(app: &App<S>, method: Method, uri: &str, headers: &[(&str, &str)]) -> Reply
where
    S: Service<Request<Body>, Response = Response<cachelayer::http::CacheBody>, Error = Infallible>
        + Clone,
{
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, HOST);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Body::empty()).expect("request");
    let response = app
        .service
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

async fn get<S>(app: &App<S>, uri: &str, headers: &[(&str, &str)]) -> Reply
where
    S: Service<Request<Body>, Response = Response<cachelayer::http::CacheBody>, Error = Infallible>
        + Clone,
{
    send(app, Method::GET, uri, headers).await
}

fn response(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).expect("response")
}

fn layer(backend: &Backend) -> ResponseCacheLayer {
    ResponseCacheLayer::new(backend.cache()).allowed_hosts([HOST])
}

fn header_of<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

// ---------------------------------------------------------------------------------------
// 1. A hostile client: `Range: bytes=-1` on a stored empty 200.
// ---------------------------------------------------------------------------------------

/// RFC 9110 section 14.1.1: a suffix range of an empty representation is unsatisfiable
/// (416), or the range may be ignored (200). Never a panic, never a bogus Content-Range.
#[tokio::test]
async fn range_suffix_on_empty_stored_body() {
    let backend = Backend::memory();
    let app = make_app(layer(&backend), Duration::ZERO, |_| {
        response(200, &[("cache-control", "max-age=60")], "")
    });
    let first = get(&app, "/empty", &[]).await;
    assert_eq!(first.status, 200);
    let ranged = get(&app, "/empty", &[("range", "bytes=-1")]).await;
    assert!(ranged.status == 416 || ranged.status == 200, "{ranged:?}");
    assert!(!ranged.h("content-range").contains("18446744073709551615"));
}

// ---------------------------------------------------------------------------------------
// 2. Qualified private fields and the 304 update.
// ---------------------------------------------------------------------------------------

/// RFC 9111 section 5.2.2.7: a field named by `private="..."` must never be stored by a
/// shared cache. A 304 that refreshes the stored response carries it again: it must not
/// end up stored (and served to the next user).
#[tokio::test]
async fn qualified_private_field_stored_through_304_update() {
    let backend = Backend::memory();
    let app = make_app(layer(&backend), Duration::ZERO, |seen| {
        let user = header_of(&seen, "x-who").to_owned();
        let cc = "private=\"x-user\", max-age=1";
        if header_of(&seen, "if-none-match") == "\"v1\"" {
            response(
                304,
                &[("cache-control", cc), ("etag", "\"v1\""), ("x-user", &user)],
                Body::empty(),
            )
        } else {
            response(
                200,
                &[("cache-control", cc), ("etag", "\"v1\""), ("x-user", &user)],
                "shared page",
            )
        }
    });
    let alice = get(&app, "/page", &[("x-who", "alice")]).await;
    assert_eq!(alice.h("x-user"), "alice");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let bob = get(&app, "/page", &[("x-who", "bob")]).await;
    assert_eq!(bob.status, 200);
    let carol = get(&app, "/page", &[("x-who", "carol")]).await;
    assert_eq!(
        carol.h("x-user"),
        "",
        "carol got another user's private field: x-cache={} cache-status={}",
        carol.h("x-cache"),
        carol.h("cache-status")
    );
}

/// The same through a qualified `no-cache="x-user"` (RFC 9111 section 5.2.2.4): the field
/// may not be reused without revalidation.
#[tokio::test]
async fn qualified_no_cache_field_stored_through_304_update() {
    let backend = Backend::memory();
    let app = make_app(layer(&backend), Duration::ZERO, |seen| {
        let user = header_of(&seen, "x-who").to_owned();
        let cc = "no-cache=\"x-user\", max-age=1";
        let status = if header_of(&seen, "if-none-match") == "\"v1\"" {
            304
        } else {
            200
        };
        response(
            status,
            &[("cache-control", cc), ("etag", "\"v1\""), ("x-user", &user)],
            if status == 200 { "page" } else { "" },
        )
    });
    get(&app, "/nc", &[("x-who", "alice")]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    get(&app, "/nc", &[("x-who", "bob")]).await;
    let carol = get(&app, "/nc", &[("x-who", "carol")]).await;
    assert_eq!(
        carol.h("x-user"),
        "",
        "x-cache={} cache-status={}",
        carol.h("x-cache"),
        carol.h("cache-status")
    );
}

/// A malformed field list in `private="..."` must be read as plain `private` (the safer
/// reading policy.rs claims), not as "store everything".
#[tokio::test]
async fn private_with_unparseable_field_list_is_shared() {
    let backend = Backend::memory();
    let app = make_app(layer(&backend), Duration::ZERO, |seen| {
        let user = header_of(&seen, "x-who").to_owned();
        response(
            200,
            &[
                ("cache-control", "private=\"x-user x-account\", max-age=60"),
                ("x-account", &user),
            ],
            format!("account page of {user}"),
        )
    });
    get(&app, "/acct", &[("x-who", "alice")]).await;
    let bob = get(&app, "/acct", &[("x-who", "bob")]).await;
    assert_eq!(
        std::str::from_utf8(&bob.body).unwrap(),
        "account page of bob",
        "x-cache={} x-account={}",
        bob.h("x-cache"),
        bob.h("x-account")
    );
}

// ---------------------------------------------------------------------------------------
// 3. A buggy origin: a 304 with another strong validator.
// ---------------------------------------------------------------------------------------

/// RFC 9111 section 4.3.4: a 304 whose strong validator matches no stored response MUST
/// NOT update it. Here it replaces the stored ETag: the old body is then served under the
/// new tag (and If-Range with the new tag splices old bytes into a new download).
#[tokio::test]
async fn not_modified_with_other_etag_updates_stored_response() {
    let backend = Backend::memory();
    let app = make_app(layer(&backend), Duration::ZERO, |seen| {
        if seen.call == 1 {
            response(
                200,
                &[("cache-control", "max-age=1"), ("etag", "\"a\"")],
                "old-representation",
            )
        } else {
            response(
                304,
                &[("cache-control", "max-age=60"), ("etag", "\"b\"")],
                Body::empty(),
            )
        }
    });
    get(&app, "/doc", &[]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    get(&app, "/doc", &[]).await;
    let hit = get(
        &app,
        "/doc",
        &[("range", "bytes=0-2"), ("if-range", "\"b\"")],
    )
    .await;
    assert!(
        !(hit.h("etag") == "\"b\"" && hit.body.starts_with(b"old")),
        "old body served under the new validator: {} {:?} etag={} x-cache={}",
        hit.status,
        hit.body,
        hit.h("etag"),
        hit.h("x-cache")
    );
}

// ---------------------------------------------------------------------------------------
// 4. POST responses reused for GET.
// ---------------------------------------------------------------------------------------

fn post_script(extra: &'static [(&'static str, &'static str)]) -> impl Fn(Seen) -> Response<Body> {
    move |seen: Seen| {
        if seen.method == Method::POST {
            let user = header_of(&seen, "x-who").to_owned();
            let mut headers = vec![("content-location", "/form")];
            headers.extend_from_slice(extra);
            response(200, &headers, format!("thanks {user}, order placed"))
        } else {
            response(200, &[("cache-control", "max-age=60")], "the empty form")
        }
    }
}

/// RFC 9110 section 9.3.3: a POST response is cacheable only with explicit freshness. A
/// default TTL is not explicit.
#[tokio::test]
async fn post_response_without_explicit_freshness_reused_with_default_ttl() {
    let backend = Backend::memory();
    let layer = layer(&backend).default_ttl(Some(Duration::from_secs(60)));
    let app = make_app(layer, Duration::ZERO, post_script(&[]));
    let post = send(&app, Method::POST, "/form", &[("x-who", "alice")]).await;
    let later = get(&app, "/form", &[]).await;
    assert_eq!(
        std::str::from_utf8(&later.body).unwrap(),
        "the empty form",
        "POST cache-status={} / GET x-cache={}",
        post.h("cache-status"),
        later.h("x-cache")
    );
}

/// Heuristic freshness (on by default in `cachelayer proxy`) is not explicit either.
#[tokio::test]
async fn post_response_without_explicit_freshness_reused_with_heuristic() {
    let backend = Backend::memory();
    let layer = layer(&backend).heuristic_freshness(true);
    let app = make_app(
        layer,
        Duration::ZERO,
        post_script(&[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")]),
    );
    let post = send(&app, Method::POST, "/form", &[("x-who", "alice")]).await;
    let later = get(&app, "/form", &[]).await;
    assert_eq!(
        std::str::from_utf8(&later.body).unwrap(),
        "the empty form",
        "POST cache-status={} / GET x-cache={}",
        post.h("cache-status"),
        later.h("x-cache")
    );
}

// ---------------------------------------------------------------------------------------
// 5. Ten-year freshness (nginx `expires max`) and Vary.
// ---------------------------------------------------------------------------------------

/// `max-age=315360000` (what nginx's `expires max` sends) with `Vary: Accept-Encoding` and
/// a validator: the freshness is clamped to MAX_TTL, but the Vary marker's TTL
/// (fresh + grace) is over MAX_TTL, its write is refused, and the URL never hits.
#[tokio::test]
async fn ten_year_freshness_with_vary_never_hits() {
    let backend = Backend::memory();
    let app = make_app(layer(&backend), Duration::ZERO, |_| {
        response(
            200,
            &[
                ("cache-control", "max-age=315360000"),
                ("vary", "Accept-Encoding"),
                ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
            "static asset",
        )
    });
    let control_backend = Backend::memory();
    let control = make_app(layer(&control_backend), Duration::ZERO, |_| {
        response(
            200,
            &[
                ("cache-control", "max-age=315360000"),
                ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
            "static asset",
        )
    });
    get(&control, "/app.js", &[("accept-encoding", "gzip")]).await;
    let hit = get(&control, "/app.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(hit.h("x-cache"), "HIT", "control without Vary");
    let first = get(&app, "/app.js", &[("accept-encoding", "gzip")]).await;
    let second = get(&app, "/app.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(
        second.h("x-cache"),
        "HIT",
        "first cache-status={} second cache-status={} origin calls={}",
        first.h("cache-status"),
        second.h("cache-status"),
        app.calls.load(Ordering::SeqCst)
    );
}

// ---------------------------------------------------------------------------------------
// 6. If-Range with a date that is not a strong validator.
// ---------------------------------------------------------------------------------------

/// RFC 9110 sections 13.1.5 and 8.8.2.2: an If-Range date is a strong validator for a
/// cache only when the stored Date is at least one second after Last-Modified; otherwise
/// the condition is false and the whole 200 is sent.
#[tokio::test]
async fn if_range_date_without_strength_serves_a_part() {
    let backend = Backend::memory();
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    let stamp = now.clone();
    let app = make_app(layer(&backend), Duration::ZERO, move |_| {
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("last-modified", &stamp),
                ("date", &stamp),
            ],
            "0123456789",
        )
    });
    get(&app, "/f", &[]).await;
    let ranged = get(&app, "/f", &[("range", "bytes=0-1"), ("if-range", &now)]).await;
    assert_eq!(ranged.status, 200, "{ranged:?}");
}

// ---------------------------------------------------------------------------------------
// 7. no-cache and collapsed requests.
// ---------------------------------------------------------------------------------------

/// RFC 9111 section 4 (collapsed requests may share a response only when it may be reused
/// for them) and 5.2.2.4 (no-cache: never reused without validation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_response_shared_with_collapsed_waiters() {
    let backend = Backend::memory();
    let app = Arc::new(make_app(
        layer(&backend),
        Duration::from_millis(300),
        |seen| {
            response(
                200,
                &[("cache-control", "no-cache"), ("etag", "\"n\"")],
                format!("call {}", seen.call),
            )
        },
    ));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let app = Arc::clone(&app);
        tasks.push(tokio::spawn(async move { get(&app, "/nc", &[]).await }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task").h("cache-status").to_owned());
    }
    assert_eq!(
        app.calls.load(Ordering::SeqCst),
        3,
        "a no-cache response answered requests it was not validated for: {statuses:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 8. A 304 that makes the stored response private.
// ---------------------------------------------------------------------------------------

/// RFC 9111 section 4.3.4: the 304's fields update the stored response. Once the origin
/// says `private`, a shared cache must no longer serve it (stale-while-revalidate or not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_response_kept_after_304_says_private() {
    let backend = Backend::memory();
    let app = make_app(layer(&backend), Duration::ZERO, |seen| {
        if seen.call == 1 {
            response(
                200,
                &[
                    (
                        "cache-control",
                        "public, max-age=1, stale-while-revalidate=60",
                    ),
                    ("etag", "\"s\""),
                ],
                "was public",
            )
        } else {
            response(
                304,
                &[("cache-control", "private, max-age=60"), ("etag", "\"s\"")],
                Body::empty(),
            )
        }
    });
    get(&app, "/s", &[]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let stale = get(&app, "/s", &[]).await; // served stale; refresh in the background
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = get(&app, "/s", &[]).await;
    assert_ne!(
        after.h("x-cache"),
        "STALE",
        "first stale={} / after the origin said private: {} cc={} calls={}",
        stale.h("x-cache"),
        after.h("cache-status"),
        after.h("cache-control"),
        app.calls.load(Ordering::SeqCst)
    );
}

/// Several empty-length suffix ranges: multipart path, same underflow.
#[tokio::test]
async fn range_multi_suffix_on_empty_stored_body() {
    let backend = Backend::memory();
    let app = make_app(layer(&backend), Duration::ZERO, |_| {
        response(200, &[("cache-control", "max-age=60")], "")
    });
    get(&app, "/empty", &[]).await;
    let ranged = get(&app, "/empty", &[("range", "bytes=-1,-2")]).await;
    assert!(ranged.status == 416 || ranged.status == 200, "{ranged:?}");
}

/// A background refresh started by a range request with conditions of its own refreshes
/// the whole response on the stored validators: the origin sees neither the range nor the
/// client's `If-None-Match`, so its answer can refresh the stored copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_asks_for_the_whole_response() {
    let backend = Backend::memory();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let app = make_app(layer(&backend), Duration::ZERO, move |request| {
        let asked = (
            request.call,
            header_of(&request, "range").to_owned(),
            header_of(&request, "if-none-match").to_owned(),
        );
        let _ = seen_tx.send(asked);
        let etag = format!("\"v{}\"", request.call);
        let cache_control = "max-age=1, stale-while-revalidate=60";
        let headers = [("cache-control", cache_control), ("etag", etag.as_str())];
        response(200, &headers, format!("body {}", request.call))
    });
    get(&app, "/swr", &[]).await;
    assert_eq!(seen.recv().await.map(|s| s.0), Some(1));
    // Time passing, not synchronisation: the stored response must become stale.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ranged = get(
        &app,
        "/swr",
        &[("range", "bytes=0-1"), ("if-none-match", "\"other\"")],
    )
    .await;
    assert_eq!(
        (ranged.status, &ranged.body[..]),
        (StatusCode::PARTIAL_CONTENT, &b"bo"[..])
    );
    let refresh = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the refresh reaches the origin");
    assert_eq!(refresh, Some((2, String::new(), "\"v1\"".to_owned())));
}

/// The cookie an origin sets with its 304 to the cache's revalidation reaches the client
/// whose request caused it, and no one else: the stored response is refreshed without it.
#[tokio::test]
async fn a_304s_cookie_reaches_only_its_own_client() {
    let backend = Backend::memory();
    let app = make_app(layer(&backend), Duration::ZERO, |request| {
        if header_of(&request, "if-none-match") == "\"v1\"" {
            let headers = [("cache-control", "max-age=60"), ("set-cookie", "seen=1")];
            return response(304, &headers, Body::empty());
        }
        let headers = [("cache-control", "max-age=1"), ("etag", "\"v1\"")];
        response(200, &headers, "page")
    });
    get(&app, "/page", &[]).await;
    // Time passing, not synchronisation: the stored response must become stale.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revalidated = get(&app, "/page", &[]).await;
    assert_eq!(
        (revalidated.h("set-cookie"), &revalidated.body[..]),
        ("seen=1", &b"page"[..])
    );
    let hit = get(&app, "/page", &[]).await;
    assert_eq!((hit.h("x-cache"), hit.h("set-cookie")), ("HIT", ""));
}
