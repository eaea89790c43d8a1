//! End-to-end tests of `POST /admin/invalidate` on the real binary: the answer counts what
//! was removed (a key that held an entry, a URL that had a stored response), and names what
//! held nothing as the cache looked it up; a `Host`'s port is part of list pages' keys
//! unless `--key-host-port ignore`, and purges follow the same rule. On `serve` (SQLite,
//! Redis started by the testkit on a free port, or the in-process store) and on `proxy` in
//! front of a scripted origin.

mod support;

use cachelayer_testkit::RedisServer;
use cachelayer_testkit::origin::{Scripted, ScriptedOrigin};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Server, TestDatabase, client, x_cache};

const TOKEN: &str = "admin-test-token";

/// `X-Cache` of a GET of `url`, sent with `Host: host`.
async fn x_cache_for(url: String, host: &str) -> String {
    let response = client()
        .get(&url)
        .header("host", host)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK, "{url} for {host}");
    let cache = x_cache(&response);
    response.bytes().await.expect("body");
    cache
}

/// The answer of `POST /admin/invalidate` at `url` to `body`, with `Host: host` when given
/// (else the listener's address, as clients reach it).
async fn invalidate(url: String, host: Option<&str>, body: Value) -> Value {
    let mut request = client().post(url).bearer_auth(TOKEN).json(&body);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let response = request.send().await.expect("admin");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

/// The answer's shape: counts removed, and what was not found.
fn removed(keys: usize, urls: usize, not_found_keys: &[&str], not_found_urls: &[&str]) -> Value {
    json!({
        "tags": 0,
        "keys": keys,
        "urls": urls,
        "not_found": {"keys": not_found_keys, "urls": not_found_urls},
    })
}

/// A page is counted purged only when it was cached; a key only when it held an entry; what
/// held nothing is named, a URL as the cache keyed it (the admin request's host, the query
/// sorted). Over Redis, so the counts are Redis's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reports_what_was_removed() {
    let redis = RedisServer::start();
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--redis-url", &redis.url(), "--admin-token", TOKEN]);
    let host = server.base.trim_start_matches("http://").to_owned();
    let admin = server.url("/admin/invalidate");
    let page = "/products?offset=0&limit=5";
    let keyed = format!("http://{host}/products?limit=5&offset=0");

    let body = json!({"urls": [page], "keys": ["product:7", "product:99"]});
    assert_eq!(
        invalidate(admin.clone(), None, body.clone()).await,
        removed(0, 0, &["product:7", "product:99"], &[&keyed]),
        "nothing cached yet"
    );
    x_cache_for(server.url(page), &host).await;
    x_cache_for(server.url("/products/7"), &host).await;
    assert_eq!(x_cache_for(server.url(page), &host).await, "HIT");
    assert_eq!(x_cache_for(server.url("/products/7"), &host).await, "HIT");
    assert_eq!(
        invalidate(admin.clone(), None, body.clone()).await,
        removed(1, 1, &["product:99"], &[]),
        "the page and product 7 were cached"
    );
    assert_eq!(x_cache_for(server.url(page), &host).await, "MISS");
    assert_eq!(x_cache_for(server.url("/products/7"), &host).await, "MISS");
    // Two spellings of one page are one URL, counted once.
    let spellings = json!({"urls": [page, "/products?limit=5&offset=0"], "tags": ["products"]});
    let mut expected = removed(0, 1, &[], &[]);
    expected["tags"] = json!(1);
    assert_eq!(invalidate(admin, None, spellings).await, expected);
}

/// The issue: a page cached for `Host: localhost:8080` is another entry than `localhost`'s.
/// A bare path purged with the admin request's `Host: localhost:8080` removes it; a purge
/// of `http://localhost/products` does not, and says what it looked for. A default port is
/// no port: `http://localhost:80/products` and `Host: localhost:80` meet `localhost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keys_a_host_with_its_port() {
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--admin-token", TOKEN]);
    let admin = server.url("/admin/invalidate");
    let page = server.url("/products");
    x_cache_for(page.clone(), "localhost:8080").await;
    assert_eq!(x_cache_for(page.clone(), "localhost:8080").await, "HIT");

    let other_host = json!({"urls": ["http://localhost/products"]});
    assert_eq!(
        invalidate(admin.clone(), None, other_host).await,
        removed(0, 0, &[], &["http://localhost/products"])
    );
    assert_eq!(x_cache_for(page.clone(), "localhost:8080").await, "HIT");
    let bare = json!({"urls": ["/products"]});
    assert_eq!(
        invalidate(admin.clone(), Some("localhost:8080"), bare.clone()).await,
        removed(0, 1, &[], &[])
    );
    assert_eq!(x_cache_for(page.clone(), "localhost:8080").await, "MISS");

    for (admin_host, purge) in [
        (None, "http://localhost:80/products"),
        (Some("LOCALHOST:80"), "/products"),
    ] {
        x_cache_for(page.clone(), "localhost").await;
        assert_eq!(x_cache_for(page.clone(), "localhost").await, "HIT");
        assert_eq!(
            invalidate(admin.clone(), admin_host, json!({"urls": [purge]})).await,
            removed(0, 1, &[], &[]),
            "{purge} for {admin_host:?}"
        );
    }
}

/// With `--key-host-port ignore`, two ports of one host share a page, and a purge naming
/// either port removes it; the URL not found is spelled without a port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_can_ignore_the_host_port() {
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--admin-token", TOKEN, "--key-host-port", "ignore"]);
    let admin = server.url("/admin/invalidate");
    let page = server.url("/products");
    assert_eq!(x_cache_for(page.clone(), "localhost:8080").await, "MISS");
    assert_eq!(x_cache_for(page.clone(), "localhost:9000").await, "HIT");
    let purge = json!({"urls": ["http://localhost:9000/products"]});
    assert_eq!(
        invalidate(admin.clone(), None, purge.clone()).await,
        removed(0, 1, &[], &[])
    );
    assert_eq!(x_cache_for(page, "localhost:8080").await, "MISS");
    assert_eq!(
        invalidate(
            admin.clone(),
            Some("localhost:9000"),
            json!({"urls": ["/products"]})
        )
        .await,
        removed(0, 1, &[], &[]),
        "stored again by the MISS"
    );
    assert_eq!(
        invalidate(admin, None, purge).await,
        removed(0, 0, &[], &["http://localhost/products"])
    );
}

/// The proxy's admin listener reports its purges too, and `--key-host-port ignore` reaches
/// its cache: two ports share an entry, and a purge of either removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_reports_purges_and_can_ignore_the_host_port() {
    let origin = ScriptedOrigin::new();
    origin.script(
        "/items",
        [Scripted::ok("items").header("cache-control", "max-age=60")],
    );
    let upstream = origin.serve().await;
    let kept = Server::proxy(&upstream.url(), &["--admin-token", TOKEN]);
    let ignoring = Server::proxy(
        &upstream.url(),
        &["--admin-token", TOKEN, "--key-host-port", "ignore"],
    );
    for proxy in [&kept, &ignoring] {
        x_cache_for(proxy.url("/items"), "api.example:8080").await;
    }
    assert_eq!(
        x_cache_for(kept.url("/items"), "api.example:9000").await,
        "MISS"
    );
    assert_eq!(
        x_cache_for(ignoring.url("/items"), "api.example:9000").await,
        "HIT"
    );
    let purge = json!({"urls": ["http://api.example:8080/items"]});
    for proxy in [&kept, &ignoring] {
        assert_eq!(
            invalidate(proxy.admin_url("/admin/invalidate"), None, purge.clone()).await,
            removed(0, 1, &[], &[])
        );
    }
    let purge = json!({"urls": ["http://api.example:8080/items"], "keys": ["x"]});
    assert_eq!(
        invalidate(kept.admin_url("/admin/invalidate"), None, purge.clone()).await,
        removed(0, 0, &["x"], &["http://api.example:8080/items"]),
        "purged already; api.example:9000's entry is another"
    );
    assert_eq!(
        x_cache_for(ignoring.url("/items"), "api.example:9000").await,
        "MISS"
    );
    assert_eq!(
        invalidate(ignoring.admin_url("/admin/invalidate"), None, purge).await,
        removed(0, 1, &["x"], &[]),
        "api.example:9000's entry is api.example:8080's"
    );
}
