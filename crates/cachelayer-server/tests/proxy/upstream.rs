//! The proxy against a misbehaving upstream: framing, stalls, closed connections, load.
//!
//! Upstreams that break HTTP's rules are written by hand on raw sockets ([`RawUpstream`]);
//! the slow one that counts its load is a small axum app ([`GatedOrigin`]). Each listens on
//! a free port of its own and must never outlive its test.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::support::{PATIENCE, Server, client, counter, metric_once, refused_at_start, x_cache};

/// An upstream written by hand on a raw socket, for answers no HTTP library would send:
/// each accepted connection is handed to the test's function with its number (from 0).
pub(super) struct RawUpstream {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub(super) async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(TcpStream, usize) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            for number in 0.. {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(socket, number));
            }
        });
        Self { address, task }
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request head, read byte by byte (these tests' requests carry no body); `None` when
/// the connection ends first.
pub(super) async fn read_head(socket: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The method and path of a request head (`GET /a`).
pub(super) fn request_line(head: &str) -> String {
    let line = head.lines().next().unwrap_or_default();
    line.rsplit_once(' ')
        .map_or(line, |(start, _)| start)
        .to_owned()
}

/// Wait until the connection ends (the proxy hung up), discarding what comes.
async fn wait_for_hang_up(socket: &mut TcpStream) {
    let mut discarded = [0u8; 1024];
    while matches!(socket.read(&mut discarded).await, Ok(n) if n > 0) {}
}

/// A client without a timeout of its own: each test bounds its waits itself, so a proxy
/// that hangs fails the test instead of looking like an error answer.
fn patient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// RFC 9112 section 6.3: an upstream response with both `Content-Length` and
/// `Transfer-Encoding` is read by the latter, and its `Content-Length` is not passed on
/// (it would give the client a false length), whether the answer is fresh or stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_beside_transfer_encoding_is_not_forwarded() {
    let upstream = RawUpstream::start(|mut socket, _| async move {
        while read_head(&mut socket).await.is_some() {
            let answer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\
                          Cache-Control: max-age=60\r\n\r\nb\r\nhello world\r\n0\r\n\r\n";
            if socket.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = Server::proxy(&upstream.url(), &[]);
    for expected_cache in ["MISS", "HIT"] {
        let response = tokio::time::timeout(PATIENCE, client().get(proxy.url("/framed")).send())
            .await
            .expect("an answer in time")
            .expect("GET");
        let cache = x_cache(&response);
        let length = response.headers().get("content-length").cloned();
        let body = response.text().await.expect("the whole body");
        assert_eq!(
            (body.as_str(), cache.as_str()),
            ("hello world", expected_cache)
        );
        assert_ne!(
            length.as_ref().map(|v| v.as_bytes()),
            Some(&b"5"[..]),
            "the upstream's Content-Length was forwarded"
        );
    }
}

/// A body that stops after its headers is cut after `--upstream-body-timeout` (the client
/// sees an error, not a short success), counted and logged, and is never stored: the next
/// request goes upstream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_counted_and_not_stored() {
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&requests);
    let upstream = RawUpstream::start(move |mut socket, _| {
        let seen = Arc::clone(&seen);
        async move {
            if read_head(&mut socket).await.is_none() {
                return;
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let head =
                "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=60\r\n\r\n";
            let sent = socket
                .write_all(format!("{head}0123456789").as_bytes())
                .await;
            // Then nothing more, the connection held open until the proxy hangs up.
            if sent.is_ok() {
                wait_for_hang_up(&mut socket).await;
            }
        }
    })
    .await;
    let mut proxy = Server::proxy(&upstream.url(), &["--upstream-body-timeout", "300ms"]);
    let client = patient_client();
    for attempt in 1..=2 {
        let read = async { client.get(proxy.url("/stalls")).send().await?.bytes().await };
        let result = tokio::time::timeout(PATIENCE, read)
            .await
            .expect("the proxy cut the stalled body in time");
        assert!(
            result.is_err(),
            "a cut body must not look whole: {result:?}"
        );
        assert_eq!(
            requests.load(Ordering::SeqCst),
            attempt,
            "every attempt reaches the upstream: nothing was stored"
        );
    }
    let logged = tokio::task::block_in_place(|| {
        proxy.wait_for_log("upstream body stalled; cutting the response")
    });
    assert_eq!(logged["level"], Value::from("WARN"));
    let cut = counter(&proxy, "cachelayer_upstream_body_timeouts_total", "").await;
    assert_eq!(cut, 2.0);
}

/// What the upstream of the closed-connection test did with each request: the
/// connection's number and the request line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Answered(usize, String),
    Dropped(usize, String),
}

/// A connection the upstream closed after one answer (the keep-alive race: it closes as
/// the proxy sends the next request on it) costs an idempotent request one retry on a new
/// connection, not a 502; a POST is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_is_retried_only_when_idempotent() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let upstream = RawUpstream::start(move |mut socket, number| {
        let log = Arc::clone(&log);
        async move {
            let Some(head) = read_head(&mut socket).await else {
                return;
            };
            let answer =
                "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nCache-Control: no-store\r\n\r\nanswered";
            if socket.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            log.lock()
                .expect("log")
                .push(Seen::Answered(number, request_line(&head)));
            // The next request on this connection is read, then the connection closed.
            if let Some(head) = read_head(&mut socket).await {
                log.lock()
                    .expect("log")
                    .push(Seen::Dropped(number, request_line(&head)));
            }
        }
    })
    .await;
    let proxy = Server::proxy(&upstream.url(), &[]);
    let client = client();
    for path in ["/first", "/second"] {
        let response = client.get(proxy.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        assert_eq!(response.text().await.expect("body"), "answered");
    }
    let post = client.post(proxy.url("/third")).send().await.expect("POST");
    assert_eq!(post.status(), StatusCode::BAD_GATEWAY);
    let seen = seen.lock().expect("log").clone();
    assert_eq!(
        seen,
        [
            Seen::Answered(0, "GET /first".to_owned()),
            Seen::Dropped(0, "GET /second".to_owned()),
            Seen::Answered(1, "GET /second".to_owned()),
            Seen::Dropped(1, "POST /third".to_owned()),
        ],
        "each request after the first goes out on the pooled connection; only the GET again"
    );
    let retries = counter(&proxy, "cachelayer_upstream_retries_total", "closed").await;
    assert_eq!(retries, 1.0);
}

/// The load on [`GatedOrigin`].
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// Requests that reached a handler.
    arrived: usize,
    /// Handlers running now.
    current: usize,
    /// The most handlers running at once.
    max: usize,
    /// Handlers that answered.
    answered: usize,
    /// Handlers dropped before answering: their connection closed (the request cancelled).
    cancelled: usize,
}

/// A slow origin: every request waits at a gate the test opens, and the origin counts how
/// many wait at once and which were cancelled.
struct GatedOrigin {
    address: SocketAddr,
    load: Arc<watch::Sender<Load>>,
    gate: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct GateState {
    load: Arc<watch::Sender<Load>>,
    gate: watch::Receiver<bool>,
}

/// One request in [`Load::current`] while its handler runs; dropped unanswered, it
/// counts as cancelled.
struct Visit {
    load: Arc<watch::Sender<Load>>,
    answered: bool,
}

impl Visit {
    fn enter(load: &Arc<watch::Sender<Load>>) -> Self {
        load.send_modify(|load| {
            load.arrived += 1;
            load.current += 1;
            load.max = load.max.max(load.current);
        });
        Self {
            load: Arc::clone(load),
            answered: false,
        }
    }
}

impl Drop for Visit {
    fn drop(&mut self) {
        let answered = self.answered;
        self.load.send_modify(|load| {
            load.current -= 1;
            if answered {
                load.answered += 1;
            } else {
                load.cancelled += 1;
            }
        });
    }
}

async fn gated(State(state): State<GateState>) -> Response {
    let mut visit = Visit::enter(&state.load);
    let mut gate = state.gate;
    // Never fires until the test opens the gate: a cancelled request is dropped here.
    if gate.wait_for(|open| *open).await.is_err() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    visit.answered = true;
    ([("cache-control", "no-store")], "through the gate").into_response()
}

/// Headers at once, the body only once the gate opens: the upstream call is past its
/// headers, and its place held by the body.
/// A POST: answered once its whole body has come, as an upstream that reads its input does.
async fn read_body(body: axum::body::Bytes) -> String {
    format!("read {} bytes", body.len())
}

async fn held_body(State(state): State<GateState>) -> Response {
    let visit = Visit::enter(&state.load);
    let mut gate = state.gate;
    let rest = async move {
        // Moved whole, so the visit lasts as long as the body.
        let mut visit = visit;
        let opened = gate.wait_for(|open| *open).await.is_ok();
        visit.answered = opened;
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(b"through the gate"))
    };
    let body = axum::body::Body::from_stream(futures::stream::once(rest));
    ([("cache-control", "no-store")], body).into_response()
}

impl GatedOrigin {
    async fn start() -> Self {
        let load = Arc::new(watch::Sender::new(Load::default()));
        let (gate, closed) = watch::channel(false);
        let state = GateState {
            load: Arc::clone(&load),
            gate: closed,
        };
        let app = Router::new()
            .route("/gate/{name}", get(gated).post(read_body))
            .route("/held/{name}", get(held_body))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("origin");
        });
        Self {
            address,
            load,
            gate,
            task,
        }
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }

    /// The load once `reached` holds, waiting for it.
    async fn wait_for(&self, what: &str, reached: impl FnMut(&Load) -> bool) -> Load {
        let mut load = self.load.subscribe();
        let reached = tokio::time::timeout(PATIENCE, load.wait_for(reached)).await;
        match reached.map(|result| result.map(|now| *now)) {
            Ok(Ok(now)) => now,
            _ => panic!("the origin's load never reached {what}: {:?}", self.load()),
        }
    }

    fn load(&self) -> Load {
        *self.load.borrow()
    }
}

impl Drop for GatedOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait until the proxy's gauge or counter `name` reads `value`.
async fn wait_for_metric(proxy: &Server, name: &str, value: f64) {
    let now = metric_once(proxy, name, "", |now| now == value).await;
    assert_eq!(now, value, "{name} stayed at {now}");
}

/// Twenty concurrent requests through `--upstream-max-concurrency 4`: the origin never
/// sees more than four at once, the rest queue (and the queue is measured), and all twenty
/// are answered once the origin answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_never_sees_more_than_the_concurrency_limit() {
    let origin = GatedOrigin::start().await;
    let proxy = Server::proxy(&origin.url(), &["--upstream-max-concurrency", "4"]);
    let client = client();
    // Distinct paths: the cache layer would otherwise collapse them into one call.
    let requests: Vec<_> = (0..20)
        .map(|n| tokio::spawn(client.get(proxy.url(&format!("/gate/{n}"))).send()))
        .collect();
    origin
        .wait_for("four in flight", |load| load.current == 4)
        .await;
    wait_for_metric(&proxy, "cachelayer_upstream_requests_queued", 16.0).await;
    wait_for_metric(&proxy, "cachelayer_upstream_requests_in_flight", 4.0).await;
    origin.open();
    for request in requests {
        let response = request.await.expect("task").expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let load = origin.load();
    assert_eq!(load.answered, 20, "{load:?}");
    assert!(load.max <= 4, "the origin saw {} at once", load.max);
}

/// A request that waits for a place past `--upstream-timeout` is answered 503, in JSON like
/// the other upstream failures, and counted; it never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_past_the_upstream_timeout_is_503() {
    let origin = GatedOrigin::start().await;
    let args = [
        "--upstream-max-concurrency",
        "1",
        "--upstream-timeout",
        "1s",
    ];
    let proxy = Server::proxy(&origin.url(), &args);
    let client = client();
    // Its headers come at once, so only its body (no deadline but the body timeout) holds
    // the one place.
    let first = tokio::spawn(client.get(proxy.url("/held/first")).send());
    wait_for_metric(&proxy, "cachelayer_upstream_requests_in_flight", 1.0).await;
    let second = client
        .get(proxy.url("/gate/second"))
        .send()
        .await
        .expect("GET");
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = second.json().await.expect("JSON");
    assert_eq!(body["error"], "upstream_busy");
    assert_eq!(
        counter(&proxy, "cachelayer_upstream_rejected_total", "").await,
        1.0
    );
    origin.open();
    let first = first.await.expect("task").expect("GET");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.text().await.expect("body"), "through the gate");
    assert_eq!(
        origin.load().arrived,
        1,
        "the queued request never reached the origin"
    );
}

/// Clients that give up (an HTTP/2 stream reset, an HTTP/1.1 connection closed) cancel
/// their upstream requests, waiting for headers or for the body: the origin sees them
/// dropped, the proxy's places come back, and the next requests go through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_give_up_cancel_their_upstream_requests_and_free_their_places() {
    let origin = GatedOrigin::start().await;
    let proxy = Server::proxy(&origin.url(), &["--upstream-max-concurrency", "2"]);
    let give_up = Duration::from_secs(1);
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(give_up)
        .build()
        .expect("client");
    let h1 = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .timeout(give_up)
        .build()
        .expect("client");
    let impatient: Vec<_> = [
        (&h2, "/gate/h2"),
        (&h1, "/held/h1"),
        (&h2, "/held/h2"),
        (&h1, "/gate/h1"),
    ]
    .into_iter()
    .map(|(client, path)| {
        // The body too: a held body's headers come at once.
        let request = client.get(proxy.url(path)).send();
        tokio::spawn(async move { request.await?.bytes().await })
    })
    .collect();
    for request in impatient {
        let result = request.await.expect("task");
        assert!(
            result.as_ref().is_err_and(reqwest::Error::is_timeout),
            "the client gave up: {result:?}"
        );
    }
    let load = origin
        .wait_for("every arrival cancelled", |load| {
            load.current == 0 && load.arrived >= 2 && load.cancelled == load.arrived
        })
        .await;
    assert_eq!(load.answered, 0, "{load:?}");
    wait_for_metric(&proxy, "cachelayer_upstream_requests_in_flight", 0.0).await;
    wait_for_metric(&proxy, "cachelayer_upstream_requests_queued", 0.0).await;
    origin.open();
    let client = client();
    for name in ["after-a", "after-b", "after-c"] {
        let response = tokio::time::timeout(
            PATIENCE,
            client.get(proxy.url(&format!("/gate/{name}"))).send(),
        )
        .await
        .expect("places were given back")
        .expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let load = origin.load();
    assert!(load.max <= 2, "the origin saw {} at once", load.max);
}

/// A concurrency limit of 0 or a body timeout of 0s would forward nothing or cut every
/// body: the proxy refuses them at start, naming the flag and its variable.
#[test]
fn zero_limits_exit_naming_the_flag() {
    for (flag, value, variable) in [
        (
            "--upstream-max-concurrency",
            "0",
            "CACHELAYER_UPSTREAM_MAX_CONCURRENCY",
        ),
        (
            "--upstream-body-timeout",
            "0s",
            "CACHELAYER_UPSTREAM_BODY_TIMEOUT",
        ),
    ] {
        let stderr = refused_at_start(&["proxy", "--upstream", "http://127.0.0.1:1", flag, value]);
        assert!(stderr.contains(&format!("{flag} ({variable})")), "{stderr}");
    }
}

/// A client that trickles a request body holds no place under the concurrency limit: the
/// body is read before the request takes one, so with one place, another client's request
/// goes through while the slow body is still coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_body_holds_no_upstream_place() {
    let origin = GatedOrigin::start().await;
    origin.open();
    // Longer than the client's patience: a request queued behind the slow body would fail.
    let args = [
        "--upstream-max-concurrency",
        "1",
        "--upstream-timeout",
        "60s",
    ];
    let proxy = Server::proxy(&origin.url(), &args);
    let address = proxy.base.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&address).await.expect("connect");
    slow.write_all(b"POST /gate/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        .await
        .expect("a head and one byte");
    // The slow request has reached the proxy's service: the gauge counts it, and the
    // scrape that reads the gauge.
    wait_for_metric(&proxy, "cachelayer_http_requests_in_flight", 2.0).await;
    let other = client()
        .get(proxy.url("/gate/other"))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "not queued behind the slow body"
    );
    assert_eq!(
        counter(&proxy, "cachelayer_upstream_rejected_total", "").await,
        0.0
    );
    drop(slow);
}
