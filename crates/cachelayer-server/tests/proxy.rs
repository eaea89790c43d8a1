//! End-to-end tests of `cachelayer proxy`: the real binary in front of a small origin that
//! this test runs (an axum server on a free port, counting its calls per path), with real
//! `redis-server` processes. They must never use the shared Redis on 6379.
//!
//! One suite, kept in one file past 600 lines on purpose: its tests share one set of
//! helpers and each reads on its own, so splitting it would only scatter the helpers.

mod support;

// Suites of the proxy facing hostile clients and upstreams, on this file's helpers.
#[path = "proxy/interim.rs"]
mod interim;
#[path = "proxy/keys.rs"]
mod keys;
#[path = "proxy/rfc9111.rs"]
mod rfc9111;
#[path = "proxy/upstream.rs"]
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cachelayer_testkit::RedisServer;
use serde_json::{Value, json};
use support::{
    PATIENCE, Server, client, get_via, metrics_text, refused_at_start, undescribed, x_cache,
};
use tokio::time::Instant;

/// Calls per path.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<String, usize>>>);

impl Calls {
    fn count(&self, path: &str) -> usize {
        let calls = self.0.lock().expect("calls");
        calls.get(path).copied().unwrap_or(0)
    }

    fn record(&self, path: &str) -> usize {
        let mut calls = self.0.lock().expect("calls");
        let count = calls.entry(path.to_owned()).or_default();
        *count += 1;
        *count
    }
}

/// The origin's state: call counts, and the gate of `/held`.
#[derive(Clone, Default)]
struct OriginState {
    calls: Calls,
    release: Arc<tokio::sync::Notify>,
}

impl axum::extract::FromRef<OriginState> for Calls {
    fn from_ref(state: &OriginState) -> Self {
        state.calls.clone()
    }
}

impl axum::extract::FromRef<OriginState> for Arc<tokio::sync::Notify> {
    fn from_ref(state: &OriginState) -> Self {
        Arc::clone(&state.release)
    }
}

/// The origin: each route answers with the cache headers its name says.
struct Origin {
    address: SocketAddr,
    calls: Calls,
    release: Arc<tokio::sync::Notify>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn with_cache_control(value: &'static str, body: String) -> Response {
    ([("cache-control", value)], body).into_response()
}

async fn cache_controlled(
    State(calls): State<Calls>,
    Path(name): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let n = calls.record(uri.path());
    let body = format!("{name} call {n}");
    match name.as_str() {
        "max-age" => with_cache_control("public, max-age=60", body),
        "no-store" => with_cache_control("no-store", body),
        "private" => with_cache_control("private, max-age=60", body),
        "s-maxage" => with_cache_control("max-age=0, s-maxage=60", body),
        "stale-if-error" => with_cache_control("max-age=1, stale-if-error=600", body),
        // What a cache in front of the origin (Varnish, a CDN) would add.
        "labelled" => ([("cache-control", "max-age=60"), ("x-cache", "HIT")], body).into_response(),
        _ => body.into_response(),
    }
}

async fn slow_cached(State(calls): State<Calls>, Path(name): Path<String>) -> Response {
    let n = calls.record(&format!("/slow-cached/{name}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    with_cache_control("max-age=60", format!("{name} call {n}"))
}

async fn headers(State(calls): State<Calls>, received: HeaderMap) -> Response {
    calls.record("/headers");
    let received: HashMap<String, String> = received
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    (
        [
            ("connection", "x-origin-hop"),
            ("x-origin-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("x-end-to-end", "kept"),
        ],
        axum::Json(received),
    )
        .into_response()
}

/// 10 MB in 64 KiB chunks, generated as it is sent.
async fn big(State(calls): State<Calls>) -> Response {
    calls.record("/big");
    let chunks = (0..160)
        .map(|i: u32| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![(i % 251) as u8; 65_536])));
    let body = Body::from_stream(futures::stream::iter(chunks));
    ([("cache-control", "max-age=60")], body).into_response()
}

/// The first 64 KiB, then the rest only once the test releases it: a client can read the
/// first part only if the proxy streams.
async fn held(
    State(calls): State<Calls>,
    State(release): State<Arc<tokio::sync::Notify>>,
) -> Response {
    calls.record("/held");
    let first = futures::stream::once(async {
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 65_536]))
    });
    let rest = futures::stream::once(async move {
        release.notified().await;
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![2u8; 65_536]))
    });
    Body::from_stream(futures::StreamExt::chain(first, rest)).into_response()
}

/// Answers with the length of the request body it received.
async fn echo_length(State(calls): State<Calls>, body: bytes::Bytes) -> String {
    calls.record("/echo");
    body.len().to_string()
}

async fn slow(State(calls): State<Calls>) -> &'static str {
    calls.record("/slow");
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

impl Origin {
    async fn start() -> Self {
        let state = OriginState::default();
        let app = Router::new()
            .route("/cc/{name}", get(cache_controlled).post(echo_length))
            .route("/plain/{name}", get(cache_controlled))
            .route("/slow-cached/{name}", get(slow_cached))
            .route("/headers", get(headers))
            .route("/big", get(big))
            .route("/slow", get(slow))
            .route("/held", get(held))
            .route("/echo", axum::routing::post(echo_length))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    drop(stopped.await);
                })
                .await
                .expect("origin");
        });
        Self {
            address,
            calls: state.calls,
            release: state.release,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stop answering: the port refuses connections afterwards.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The origin task may have ended already; then there is nothing to stop.
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Keep-alive connections from the proxy are closed by the graceful shutdown.
            drop(tokio::time::timeout(PATIENCE, task).await);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_responses_are_served_without_the_upstream() {
    let origin = Origin::start().await;
    let proxy = Server::proxy(&origin.url(), &[]);
    let first = get_via(&proxy, "/cc/max-age").await;
    let second = get_via(&proxy, "/cc/max-age").await;
    assert_eq!(
        (first.0, first.1.as_str(), first.2.as_str()),
        (StatusCode::OK, "MISS", "max-age call 1")
    );
    assert_eq!(
        (second.1.as_str(), second.2.as_str()),
        ("HIT", "max-age call 1")
    );
    assert_eq!(origin.calls.count("/cc/max-age"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_cache_control_decides() {
    let origin = Origin::start().await;
    let proxy = Server::proxy(&origin.url(), &[]);
    for (path, stored) in [
        ("/cc/no-store", false),
        ("/cc/private", false),
        ("/cc/s-maxage", true),
        ("/cc/max-age", true),
        ("/plain/none", false),
        ("/cc/labelled", true),
    ] {
        let (_, first, _) = get_via(&proxy, path).await;
        assert_eq!(
            first, "MISS",
            "{path}: this proxy's label, not the upstream's"
        );
        let (_, cache, _) = get_via(&proxy, path).await;
        let calls = origin.calls.count(path);
        if stored {
            assert_eq!((cache.as_str(), calls), ("HIT", 1), "{path}");
        } else {
            assert_eq!((cache.as_str(), calls), ("MISS", 2), "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_give_default_ttls_and_bypasses() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\npath = \"/plain\"\ndefault_ttl = \"60s\"\n\n[[rules]]\npath = \"/cc/max-age\"\nbypass = true\n",
    )
    .expect("rules");
    let proxy = Server::proxy(&origin.url(), &["--rules", rules.to_str().expect("path")]);
    get_via(&proxy, "/plain/x").await;
    assert_eq!(
        get_via(&proxy, "/plain/x").await.1,
        "HIT",
        "default TTL from the rule"
    );
    assert_eq!(origin.calls.count("/plain/x"), 1);
    get_via(&proxy, "/cc/max-age").await;
    assert_eq!(get_via(&proxy, "/cc/max-age").await.1, "BYPASS");
    assert_eq!(origin.calls.count("/cc/max-age"), 2);
    for disguised in ["/cc/%6Dax-age", "/cc//max-age", "/cc/x/../max-age"] {
        assert_eq!(get_via(&proxy, disguised).await.1, "BYPASS", "{disguised}");
    }
    get_via(&proxy, "/cc/no-store").await;
    assert_eq!(
        get_via(&proxy, "/cc/no-store").await.1,
        "MISS",
        "the upstream's no-store wins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_dropped_and_forwarding_headers_added() {
    let origin = Origin::start().await;
    let proxy = Server::proxy(&origin.url(), &[]);
    let response = client()
        .get(proxy.url("/headers"))
        .header("host", "api.example")
        .header("connection", "x-client-hop")
        .header("x-client-hop", "1")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-end-to-end", "kept")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    for dropped in ["x-origin-hop", "keep-alive"] {
        assert!(
            !response.headers().contains_key(dropped),
            "{dropped} reached the client"
        );
    }
    assert_eq!(response.headers()["x-end-to-end"], "kept");
    assert!(
        response.headers()["via"]
            .to_str()
            .expect("via")
            .contains("1.1 cachelayer")
    );
    let seen: Value = response.json().await.expect("json");
    for dropped in ["x-client-hop", "te", "connection"] {
        assert!(
            seen.get(dropped).is_none(),
            "{dropped} reached the origin: {seen}"
        );
    }
    assert_eq!(seen["host"], "api.example", "the client's Host, unchanged");
    assert_eq!(seen["x-end-to-end"], "kept");
    assert_eq!(seen["via"], "1.1 cachelayer");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");

    let rewriting = Server::proxy(&origin.url(), &["--host-mode", "rewrite"]);
    let seen: Value = client()
        .get(rewriting.url("/headers"))
        .header("host", "api.example")
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(seen["host"], origin.address.to_string());
    assert_eq!(seen["x-forwarded-host"], "api.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_body_streams_through() {
    let origin = Origin::start().await;
    let proxy = Server::proxy(&origin.url(), &[]);
    for _ in 0..2 {
        let response = client().get(proxy.url("/big")).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(x_cache(&response), "MISS", "too large to store");
        let body = response.bytes().await.expect("body");
        assert_eq!(body.len(), 160 * 65_536);
        assert!(
            body.chunks(65_536)
                .enumerate()
                .all(|(i, chunk)| chunk.iter().all(|b| usize::from(*b) == i % 251))
        );
    }
    assert_eq!(origin.calls.count("/big"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_or_stale_and_slow_is_504() {
    let mut origin = Origin::start().await;
    let proxy = Server::proxy(
        &origin.url(),
        &["--upstream-timeout", "500ms", "--stale-if-error", "0s"],
    );
    let (status, _, body) = get_via(&proxy, "/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"], "upstream_timeout");
    get_via(&proxy, "/cc/stale-if-error").await;
    origin.stop().await;
    let (status, _, body) = get_via(&proxy, "/cc/no-store").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"], "upstream_unreachable");
    // Past its max-age=1, within the upstream's stale-if-error=600: served stale.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, cache, body) = get_via(&proxy, "/cc/stale-if-error").await;
        if cache == "STALE" {
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "stale-if-error call 1")
            );
            break;
        }
        assert_eq!(cache, "HIT", "fresh until it is stale");
        assert!(Instant::now() < deadline, "never served stale");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = client()
        .get(proxy.admin_url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(
        health.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream unreachable: unhealthy"
    );
    let report: Value = health.json().await.expect("a JSON report");
    assert_eq!(
        report["upstream"]["error"], "connection refused",
        "says what failed: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_on_one_redis_share_the_cache_and_the_purges() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let token = "proxy-admin-token";
    let args = ["--redis-url", &redis.url(), "--admin-token", token];
    let a = Server::proxy(&origin.url(), &args);
    let b = Server::proxy(&origin.url(), &args);
    let requests: Vec<_> = (0..40)
        .map(|n| {
            let url = if n % 2 == 0 {
                a.url("/slow-cached/cold")
            } else {
                b.url("/slow-cached/cold")
            };
            tokio::spawn(async move {
                let response = client()
                    .get(url)
                    .header("host", "api.example")
                    .send()
                    .await
                    .expect("GET");
                assert_eq!(response.status(), StatusCode::OK);
                response.text().await.expect("text")
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.expect("request"), "cold call 1");
    }
    assert_eq!(
        origin.calls.count("/slow-cached/cold"),
        1,
        "one upstream call for 40 requests on 2 proxies"
    );

    for proxy in [&a, &b] {
        get_via(proxy, "/cc/max-age").await;
        assert_eq!(get_via(proxy, "/cc/max-age").await.1, "HIT");
    }
    let unauthorized = client()
        .post(a.admin_url("/admin/invalidate"))
        .json(&json!({"urls": ["http://api.example/cc/max-age"]}))
        .send()
        .await
        .expect("admin");
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    // A purge through one proxy's admin listener is seen by the other: its next request
    // goes upstream (and stores the new copy, which then serves both).
    for (purging, other) in [(&a, &b), (&b, &a)] {
        let purged = client()
            .post(purging.admin_url("/admin/invalidate"))
            .bearer_auth(token)
            .json(&json!({"urls": ["http://api.example/cc/max-age"]}))
            .send()
            .await
            .expect("admin");
        assert_eq!(purged.status(), StatusCode::OK);
        assert_eq!(
            get_via(other, "/cc/max-age").await.1,
            "MISS",
            "purged everywhere"
        );
        assert_eq!(get_via(purging, "/cc/max-age").await.1, "HIT");
    }
    assert_eq!(origin.calls.count("/cc/max-age"), 3);
    // The admin listener's /metrics describes every family it shows.
    let text = metrics_text(&a).await;
    assert!(
        text.contains("# HELP cachelayer_http_responses_total"),
        "{text}"
    );
    assert_eq!(undescribed(&text), Vec::<String>::new(), "{text}");
    assert_eq!(
        get_via(&a, "/products").await.0,
        StatusCode::NOT_FOUND,
        "upstream paths stay upstream's"
    );
    assert_eq!(
        client()
            .get(a.url("/metrics"))
            .header("host", "api.example")
            .send()
            .await
            .expect("GET")
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_off_the_allow_list_are_refused() {
    let origin = Origin::start().await;
    let proxy = Server::proxy(&origin.url(), &["--allowed-hosts", "api.example"]);
    assert_eq!(get_via(&proxy, "/cc/max-age").await.0, StatusCode::OK);
    let response = client()
        .get(proxy.url("/cc/max-age"))
        .header("host", "evil.example")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(origin.calls.count("/cc/max-age"), 1);
}

#[test]
fn invalid_proxy_settings_exit_naming_the_flag() {
    for (args, named) in [
        (
            &["--upstream", "ftp://x"][..],
            "--upstream (CACHELAYER_UPSTREAM)",
        ),
        (&["--upstream", "http://x/api"][..], "has a path"),
        (
            &["--upstream", "http://x", "--rules", "/nonexistent.toml"][..],
            "--rules",
        ),
    ] {
        let mut all = vec!["proxy"];
        all.extend_from_slice(args);
        let stderr = refused_at_start(&all);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_host_is_part_of_the_key() {
    let origin = Origin::start().await;
    let proxy = Server::proxy(&origin.url(), &[]);
    for host in ["a.example", "b.example", "a.example", "b.example"] {
        let response = client()
            .get(proxy.url("/cc/max-age"))
            .header("host", host)
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        origin.calls.count("/cc/max-age"),
        2,
        "one upstream call per host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_through_in_both_directions() {
    let origin = Origin::start().await;
    let proxy = Server::proxy(&origin.url(), &[]);
    // Download: the first part arrives while the origin still holds the rest.
    let mut response = client().get(proxy.url("/held")).send().await.expect("GET");
    let mut received = 0;
    while received < 65_536 {
        let chunk = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .expect("the first part arrives before the rest is released")
            .expect("chunk")
            .expect("not the end");
        assert!(chunk.iter().all(|b| *b == 1));
        received += chunk.len();
    }
    origin.release.notify_one();
    let rest = response.bytes().await.expect("rest");
    assert_eq!(received + rest.len(), 2 * 65_536);
    // Upload: a 1 MiB body of unknown length, sent as a stream.
    let chunks = (0..16).map(|_| {
        Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::from(vec![
            7u8;
            65_536
        ])))
    });
    let body = reqwest::Body::wrap(http_body_util::StreamBody::new(futures::stream::iter(
        chunks,
    )));
    let response = client()
        .post(proxy.url("/echo"))
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(x_cache(&response), "BYPASS");
    assert_eq!(response.text().await.expect("text"), "1048576");
    // A successful POST goes through the cache layer, which drops what it changes
    // (RFC 9111 section 4.4): the target's stored response.
    let response = client()
        .get(proxy.url("/cc/max-age"))
        .send()
        .await
        .expect("GET");
    assert_eq!(x_cache(&response), "MISS");
    let response = client()
        .get(proxy.url("/cc/max-age"))
        .send()
        .await
        .expect("GET");
    assert_eq!(x_cache(&response), "HIT");
    let response = client()
        .post(proxy.url("/cc/max-age"))
        .body("x")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::OK);
    let response = client()
        .get(proxy.url("/cc/max-age"))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        x_cache(&response),
        "MISS",
        "the POST dropped the stored response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_purges_on_the_proxy_name_their_host() {
    let origin = Origin::start().await;
    let proxy = Server::proxy(&origin.url(), &["--admin-token", "t"]);
    let response = client()
        .post(proxy.admin_url("/admin/invalidate"))
        .bearer_auth("t")
        .json(&json!({"urls": ["/cc/max-age"]}))
        .send()
        .await
        .expect("admin");
    assert_eq!(
        response.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "a bare path names no client host"
    );
}

/// Over HTTP/2 a GET can carry a body without declaring its length; the body is not part of
/// the cache key, so such a request must neither be served from the cache nor fill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_get_with_an_undeclared_body_is_not_cached() {
    let origin = Origin::start().await;
    let proxy = Server::proxy(&origin.url(), &[]);
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(PATIENCE)
        .build()
        .expect("client");
    let plain = h2.get(proxy.url("/cc/max-age")).send().await.expect("GET");
    assert_eq!(
        (plain.version(), x_cache(&plain).as_str()),
        (reqwest::Version::HTTP_2, "MISS")
    );
    for _ in 0..2 {
        let frames = futures::stream::iter([Ok::<_, std::io::Error>(hyper::body::Frame::data(
            bytes::Bytes::from_static(b"{\"filter\": 1}"),
        ))]);
        let body = reqwest::Body::wrap(http_body_util::StreamBody::new(frames));
        let response = h2
            .get(proxy.url("/cc/max-age"))
            .body(body)
            .send()
            .await
            .expect("GET with a body");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(x_cache(&response), "BYPASS", "not answered from the cache");
    }
    assert_eq!(
        origin.calls.count("/cc/max-age"),
        3,
        "each request with a body went upstream"
    );
    let again = h2.get(proxy.url("/cc/max-age")).send().await.expect("GET");
    assert_eq!(
        x_cache(&again),
        "HIT",
        "the plain GET's entry was not replaced"
    );
    assert_eq!(again.text().await.expect("text"), "max-age call 1");
}
