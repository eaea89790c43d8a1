//! The proxy's key space: what one cache entry stands for, and what cannot split or merge it.
//! A client must not choose the variant the next client gets (`Connection`), nor dodge a
//! bypass or split an entry by spelling a path differently; proxies for different upstreams
//! on one Redis must not serve each other's responses, nor a proxy `serve`'s; a rule's
//! default TTL must not store error pages.

use std::io::{Read, Write};
use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cachelayer_testkit::RedisServer;
use serde_json::json;

use super::support::{TestDatabase, refused_at_start};
use super::{Calls, PATIENCE, Server, client, x_cache};

/// The key under which the origin counts every request, whatever its path.
const EVERY_REQUEST: &str = "*";

/// An origin that counts its calls by the path it received and answers every path:
/// `/vary/NAME` with the request's value of header NAME and `Vary: NAME`; `/e405...` and
/// `/listed...` with a 405 and no cache headers; `PUT` anything with 204 (counted as
/// `PUT path`); anything else
/// with its name, the path and the call's number, fresh for a minute.
struct KeyOrigin {
    address: SocketAddr,
    calls: Calls,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct KeyOriginState {
    calls: Calls,
    name: &'static str,
}

async fn answer(
    State(origin): State<KeyOriginState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_owned();
    origin.calls.record(EVERY_REQUEST);
    if method == Method::PUT {
        origin.calls.record(&format!("PUT {path}"));
        return StatusCode::NO_CONTENT.into_response();
    }
    let n = origin.calls.record(&path);
    if let Some(name) = path.strip_prefix("/vary/") {
        let value = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        let vary = [("cache-control", "public, max-age=60"), ("vary", name)];
        return (vary, value).into_response();
    }
    if path == "/host" || path == "/fresh-host" {
        let host = headers.get("host").and_then(|v| v.to_str().ok());
        let fresh = [("cache-control", "public, max-age=60")];
        return (fresh, host.unwrap_or("none").to_owned()).into_response();
    }
    if path.starts_with("/e405") || path.starts_with("/listed") {
        return (StatusCode::METHOD_NOT_ALLOWED, "odd request").into_response();
    }
    let fresh = [("cache-control", "public, max-age=60")];
    (fresh, format!("{} {path} call {n}", origin.name)).into_response()
}

impl KeyOrigin {
    async fn start(name: &'static str) -> Self {
        let state = KeyOriginState {
            calls: Calls::default(),
            name,
        };
        let app = Router::new().fallback(answer).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("origin");
        });
        Self {
            address,
            calls: state.calls,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for KeyOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A GET through the proxy with `headers`, for `api.example`: (status, X-Cache, body).
async fn get(proxy: &Server, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String, String) {
    let mut request = client().get(proxy.url(path)).header("host", "api.example");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("GET");
    let status = response.status();
    let cache = x_cache(&response);
    (status, cache, response.text().await.expect("text"))
}

/// A GET of `target` exactly as written (an HTTP client's URL parser would rewrite `\` to
/// `/`): (status, X-Cache).
async fn raw_get(proxy: &Server, target: &str) -> (u16, String) {
    let address = proxy.base.trim_start_matches("http://").to_owned();
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n");
    let received = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        stream.write_all(request.as_bytes()).expect("send");
        let mut received = Vec::new();
        stream.read_to_end(&mut received).expect("read");
        String::from_utf8_lossy(&received).into_owned()
    })
    .await
    .expect("raw request");
    let head = received.split("\r\n\r\n").next().unwrap_or_default();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {received:?}"));
    let cache = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("x-cache"))
        .map_or("-".to_owned(), |(_, value)| value.trim().to_owned());
    (status, cache)
}

/// A rules file in a temporary directory, and the proxy args naming it.
fn rules_file(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("rules.toml"), text).expect("rules");
    dir
}

fn rules_path(dir: &tempfile::TempDir) -> String {
    dir.path()
        .join("rules.toml")
        .to_str()
        .expect("path")
        .to_owned()
}

/// A header the client names in `Connection` never reaches the upstream (the proxy drops
/// it), so the cache must not key the upstream's answer under it either: the next client
/// who really sends that value gets its own answer, not the one stored for "absent".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_poison_a_variant() {
    let origin = KeyOrigin::start("origin").await;
    let proxy = Server::proxy(&origin.url(), &[]);
    for (name, value) in [
        ("x-lang", "fr"),
        ("accept-language", "fr-CH"),
        ("origin", "https://evil.example"),
    ] {
        let path = format!("/vary/{name}");
        let naming = get(&proxy, &path, &[("connection", name), (name, value)]).await;
        assert_eq!(naming.2, "none", "{name}: the upstream never saw it");
        let real = get(&proxy, &path, &[(name, value)]).await;
        assert_eq!(
            (real.1.as_str(), real.2.as_str()),
            ("MISS", value),
            "{name}: a client with the value gets the upstream's answer for it"
        );
        let without = get(&proxy, &path, &[]).await;
        assert_eq!((without.1.as_str(), without.2.as_str()), ("HIT", "none"));
        assert_eq!(origin.calls.count(&path), 2, "{name}");
    }
}

/// Two proxies for different upstreams on one Redis keep apart (the default key scope is
/// the upstream); two given the same `--key-scope` share on purpose; admin purges reach the
/// entry of their own scope, in any spelling of its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_key_scopes() {
    let redis = RedisServer::start();
    let (first, second) = (
        KeyOrigin::start("first").await,
        KeyOrigin::start("second").await,
    );
    let token = "scope-token";
    let url = redis.url();
    let on_redis = ["--redis-url", url.as_str(), "--admin-token", token];
    let a = Server::proxy(&first.url(), &on_redis);
    let b = Server::proxy(&second.url(), &on_redis);
    assert_eq!(get(&a, "/who", &[]).await.2, "first /who call 1");
    let other = get(&b, "/who", &[]).await;
    assert_eq!(
        (other.1.as_str(), other.2.as_str()),
        ("MISS", "second /who call 1"),
        "another upstream's response is never served"
    );
    assert_eq!(get(&a, "/who", &[]).await.1, "HIT");
    // Purged through a's admin listener, spelled otherwise: gone for a only.
    let purged = client()
        .post(a.admin_url("/admin/invalidate"))
        .bearer_auth(token)
        .json(&json!({"urls": ["http://api.example/%77ho"]}))
        .send()
        .await
        .expect("admin");
    assert_eq!(purged.status(), StatusCode::OK);
    assert_eq!(get(&a, "/who", &[]).await.2, "first /who call 2");
    assert_eq!(
        get(&b, "/who", &[]).await.1,
        "HIT",
        "b's scope is untouched"
    );

    let shared = [&on_redis[..], &["--key-scope", "catalogue"]].concat();
    let c = Server::proxy(&first.url(), &shared);
    let d = Server::proxy(&second.url(), &shared);
    assert_eq!(get(&c, "/shared", &[]).await.2, "first /shared call 1");
    let same = get(&d, "/shared", &[]).await;
    assert_eq!(
        (same.1.as_str(), same.2.as_str()),
        ("HIT", "first /shared call 1"),
        "one --key-scope, one key space"
    );
    assert_eq!(get(&a, "/shared", &[]).await.1, "MISS", "not a's scope");
}

/// A proxy on the Redis of `serve`, asked for the same host and path, never gets `serve`'s
/// cached list page: `serve` keys its pages in a scope of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_never_serves_the_catalogues_pages() {
    let redis = RedisServer::start();
    let database = TestDatabase::sqlite();
    let serve = Server::start(&database, &["--redis-url", &redis.url()]);
    for expected in ["MISS", "HIT"] {
        let (status, cache, _) = get(&serve, "/products", &[]).await;
        assert_eq!((status, cache.as_str()), (StatusCode::OK, expected));
    }
    let origin = KeyOrigin::start("origin").await;
    let proxy = Server::proxy(&origin.url(), &["--redis-url", &redis.url()]);
    let (_, cache, body) = get(&proxy, "/products", &[]).await;
    let start: String = body.chars().take(60).collect();
    assert_eq!(cache, "MISS", "the proxy served {start:?}");
    assert_eq!(body, "origin /products call 1");
}

/// No spelling of a bypassed path is cached: path parameters, case, an escaped `/` or `\`,
/// a trailing dot, a backslash. A path no rule matches is cached, so the BYPASS is the
/// rule's doing; a case-sensitive rule matches only its own case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_rules_match_every_spelling() {
    let origin = KeyOrigin::start("origin").await;
    let rules = rules_file(
        "[[rules]]\npath = \"/api/cart\"\nbypass = true\n\n\
         [[rules]]\npath = \"/Admin\"\nbypass = true\ncase_sensitive = true\n",
    );
    let proxy = Server::proxy(&origin.url(), &["--rules", &rules_path(&rules)]);
    let spellings = [
        "/api/cart",
        "/api/cart;jsessionid=1",
        "/API/cart",
        "/api%2fcart",
        "/api/cart%2e",
        "/api\\cart",
        "/api/car%74",
        "/api/Cart/items",
        "/api/x/..%2Fcart",
        // Under /api/cart to an upstream that reads them literally, elsewhere once decoded.
        "/api/cart/..;/items",
        "/api/cart/%252e%252e/items",
        "/api/cart/.%252e/items",
        // Under /api/cart to an upstream that decodes %2F but resolves no dots.
        "/api/cart%2F..%2Fitems",
        "/api/cart%2f%2e%2e%2fitems",
    ];
    for spelling in spellings {
        for _ in 0..2 {
            assert_eq!(
                raw_get(&proxy, spelling).await,
                (200, "BYPASS".to_owned()),
                "{spelling}"
            );
        }
    }
    assert_eq!(
        origin.calls.count(EVERY_REQUEST),
        2 * spellings.len(),
        "every request reached the upstream"
    );
    for (path, second) in [
        ("/api/carts", "HIT"),
        ("/admin", "HIT"),
        ("/Admin", "BYPASS"),
    ] {
        raw_get(&proxy, path).await;
        assert_eq!(raw_get(&proxy, path).await.1, second, "{path}");
    }
}

/// `/%62/n2` and `/b/n2` are one entry, and the upstream receives the normal form; a PUT
/// through either spelling drops it for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_of_a_path_share_one_entry() {
    let origin = KeyOrigin::start("origin").await;
    let proxy = Server::proxy(&origin.url(), &[]);
    let (_, cache, body) = get(&proxy, "/%62/n2", &[]).await;
    assert_eq!(
        (cache.as_str(), body.as_str()),
        ("MISS", "origin /b/n2 call 1")
    );
    for spelling in ["/b/n2", "/%62/%6E2", "/b//n2"] {
        let (_, cache, body) = get(&proxy, spelling, &[]).await;
        assert_eq!(
            (cache.as_str(), body.as_str()),
            ("HIT", "origin /b/n2 call 1"),
            "{spelling}"
        );
    }
    let mut calls = 1;
    for written in ["/b/n2", "/%62/n2"] {
        let put = client()
            .put(proxy.url(written))
            .header("host", "api.example")
            .body("{}")
            .send()
            .await
            .expect("PUT");
        assert_eq!(put.status(), StatusCode::NO_CONTENT);
        for read in ["/%62/n2", "/b/n2"] {
            let (_, cache, body) = get(&proxy, read, &[]).await;
            if read == "/%62/n2" {
                calls += 1;
                assert_eq!(cache, "MISS", "PUT {written}, then GET {read}");
            }
            assert_eq!(body, format!("origin /b/n2 call {calls}"));
        }
    }
    assert_eq!(
        origin.calls.count("/%62/n2"),
        0,
        "the upstream got the normal form"
    );
    assert_eq!(
        origin.calls.count("PUT /b/n2"),
        2,
        "both PUTs, in the normal form"
    );
}

/// A rule's default TTL does not store a 405 the upstream sent without cache headers (one
/// odd request must not answer every later client), unless the rule lists 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_ttls_skip_error_pages_unless_listed() {
    let origin = KeyOrigin::start("origin").await;
    let rules = rules_file(
        "[[rules]]\npath = \"/e405\"\ndefault_ttl = \"60s\"\n\n\
         [[rules]]\npath = \"/listed\"\ndefault_ttl = \"60s\"\nstatuses = [200, 405]\n\n\
         [[rules]]\npath = \"/ok\"\ndefault_ttl = \"60s\"\n",
    );
    let proxy = Server::proxy(&origin.url(), &["--rules", &rules_path(&rules)]);
    for (path, second, calls) in [
        ("/e405", "MISS", 2),
        ("/listed", "HIT", 1),
        ("/ok", "HIT", 1),
    ] {
        get(&proxy, path, &[]).await;
        let (status, cache, _) = get(&proxy, path, &[]).await;
        assert_eq!(cache, second, "{path}");
        assert_eq!(origin.calls.count(path), calls, "{path}");
        if path != "/ok" {
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        }
    }
}

/// Settings the rules file and `--key-scope` refuse stop the proxy at start, naming what.
#[test]
fn invalid_statuses_and_scopes_exit_naming_them() {
    let rules = rules_file("[[rules]]\npath = \"/a\"\ndefault_ttl = \"1s\"\nstatuses = [700]\n");
    let rules = rules_path(&rules);
    for (args, named) in [
        (
            vec!["--rules", rules.as_str()],
            "rule 1 (path \"/a\"): status 700",
        ),
        (
            vec!["--key-scope", " "],
            "--key-scope (CACHELAYER_KEY_SCOPE)",
        ),
    ] {
        let mut all = vec!["proxy", "--upstream", "http://127.0.0.1:9"];
        all.extend_from_slice(&args);
        let stderr = refused_at_start(&all);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

/// Spellings of one host are one entry, so the upstream sees one spelling for all of them:
/// an answer built from `API.EXAMPLE:443` (a redirect, a link) is never served for
/// `api.example`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_of_a_host_reach_the_upstream_as_one() {
    let origin = KeyOrigin::start("origin").await;
    let proxy = Server::proxy(&origin.url(), &[]);
    let proxy = &proxy;
    let as_host = move |host: &'static str| async move {
        let response = client()
            .get(proxy.url("/host"))
            .header("host", host)
            .send()
            .await
            .expect("GET");
        let cache = x_cache(&response);
        (cache, response.text().await.expect("text"))
    };
    let (cache, body) = as_host("API.Example:443").await;
    assert_eq!((cache.as_str(), body.as_str()), ("MISS", "api.example"));
    for host in ["api.example", "api.example.", "API.EXAMPLE:80"] {
        let (cache, body) = as_host(host).await;
        assert_eq!(
            (cache.as_str(), body.as_str()),
            ("HIT", "api.example"),
            "{host}"
        );
    }
    // HTTP/2 names its host in `:authority`, with no `Host` field: the upstream sees the
    // keyed form there too.
    let address = proxy.base.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (h2, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.expect("ready");
    for authority in ["API.EXAMPLE:80", "api.example"] {
        let request = http::Request::get(format!("http://{authority}/fresh-host"))
            .body(())
            .expect("request");
        let (response, _) = h2.send_request(request, true).expect("stream");
        let mut body = response.await.expect("response").into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            text.extend_from_slice(&chunk.expect("data"));
        }
        assert_eq!(String::from_utf8_lossy(&text), "api.example", "{authority}");
    }
}
