//! RFC 9111 conformance of `cachelayer proxy`: the testkit's cases, run against the real
//! binary (on a fresh redis-server) in front of a scripted origin served on a free port,
//! with its default cache settings (targeted cache control and heuristic freshness on) and
//! each `--set-cookie-responses` choice in a test of its own.
//!
//! This runner only says how a request reaches the proxy; it must never add cases or
//! expectations of its own (they belong in `cachelayer_testkit::rfc9111`, where the layer
//! runner sees them too). `RFC9111_CASE=<name>` runs one case.

use std::sync::Arc;

use cachelayer_testkit::RedisServer;
use cachelayer_testkit::origin::ScriptedOrigin;
use cachelayer_testkit::rfc9111::{self, Case, Reply, Request, Target};

use super::{PATIENCE, Server};

/// A client that shows the proxy's answer as it is: unlike the suite's `client()`, it does
/// not follow redirects, so a stored 301 reaches the case that checks it.
fn literal_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PATIENCE)
        .build()
        .expect("client")
}

/// Runs `cases` against a proxy started with `flags`, panicking with every failure.
async fn conforms(cases: Vec<Case>, flags: &[&str]) {
    let origin = ScriptedOrigin::new();
    let served = origin.serve().await;
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let mut args = vec!["--redis-url", redis_url.as_str()];
    args.extend_from_slice(flags);
    let proxy = Server::proxy(&served.url(), &args);
    let base: Arc<str> = Arc::from(proxy.base.as_str());
    let client = literal_client();
    let failures = rfc9111::run(Target::Proxy, &origin, cases, move |request| {
        send(client.clone(), Arc::clone(&base), request)
    })
    .await;
    rfc9111::assert_no_failures(&failures);
}

/// One request through the proxy, over TCP.
async fn send(client: reqwest::Client, base: Arc<str>, request: Request) -> Reply {
    let response = client
        .request(request.method, format!("{base}{}", request.path))
        .headers(request.headers)
        .send()
        .await
        .expect("the proxy answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("the body");
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_settings() {
    conforms(rfc9111::cases(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_refused() {
    let flags = ["--set-cookie-responses", "refuse"];
    conforms(rfc9111::set_cookie_refuse_cases(), &flags).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_stripped() {
    let flags = ["--set-cookie-responses", "strip"];
    conforms(rfc9111::set_cookie_strip_cases(), &flags).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_stored() {
    let flags = ["--set-cookie-responses", "store"];
    conforms(rfc9111::set_cookie_store_cases(), &flags).await;
}
