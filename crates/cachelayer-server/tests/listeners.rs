//! End-to-end tests of what a client may hold of a listener: the real binary, attacked over
//! raw TCP and HTTP/2 as a hostile client would: slow and idle connections, more of them
//! than the process has descriptors for, responses never read, malformed heads, and
//! keep-alive clients racing a shutdown. The listener code is shared by `serve` and `proxy`;
//! these run `serve` on SQLite (and the proxy where the head checks matter to the cache).

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use support::{PATIENCE, Server, TestDatabase, client, counter, metric_once};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// The address of a server's base URL (`host:port`).
fn address(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// One HTTP/1.1 response read off a raw connection: its head and body, or `None` if the
/// connection ended before a whole response.
async fn read_response(tcp: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut buf = [0_u8; 8192];
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("content-length"));
    while bytes.len() < head_end + length {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    Some((head, bytes[head_end..head_end + length].to_vec()))
}

/// Whether the server closes `tcp` (end of stream or reset) within [`PATIENCE`], reading
/// and dropping whatever comes before.
async fn closed_by_server(tcp: &mut TcpStream) -> bool {
    let mut buf = [0_u8; 8192];
    let read_until_closed = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    timeout(PATIENCE, read_until_closed).await.is_ok()
}

/// Send a raw request and read its answer (the status code and the body as JSON).
async fn raw_request(server: &Server, request: &[u8]) -> (u16, String, Value) {
    let mut tcp = TcpStream::connect(address(server)).await.expect("connect");
    tcp.write_all(request).await.expect("send");
    let (head, body) = timeout(PATIENCE, read_response(&mut tcp))
        .await
        .expect("an answer in time")
        .expect("a whole answer");
    let status = head[9..12].parse().expect("status");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, head, json)
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off_at_the_header_timeout() {
    let database = TestDatabase::sqlite();
    let server = Server::start(&database, &["--header-timeout", "1s"]);
    let mut tcp = TcpStream::connect(address(&server)).await.expect("connect");
    let started = Instant::now();
    tcp.write_all(b"GET /products HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a head");
    // Trickle a header byte at a time, as a slow-header attack does: still cut off.
    let trickle = async {
        for byte in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if tcp.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    timeout(PATIENCE, trickle).await.expect("the writes end");
    assert!(
        closed_by_server(&mut tcp).await,
        "the slow head was not cut off"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before its deadline"
    );
    let timed_out = eventually_counted(&server, "header_timeout").await;
    assert!(timed_out >= 1.0, "counted: {timed_out}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let database = TestDatabase::sqlite();
    let server = Server::start(
        &database,
        &["--idle-timeout", "1s", "--header-timeout", "30s"],
    );
    let mut tcp = TcpStream::connect(address(&server)).await.expect("connect");
    tcp.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let (head, _) = read_response(&mut tcp).await.expect("an answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "kept alive: {head}");
    let idle = Instant::now();
    assert!(
        closed_by_server(&mut tcp).await,
        "the idle connection stayed open"
    );
    let after = idle.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    assert!(
        after < Duration::from_secs(30),
        "closed at the header timeout instead: {after:?}"
    );
    let timed_out = eventually_counted(&server, "idle_timeout").await;
    assert!(timed_out >= 1.0, "counted: {timed_out}");
}

/// With a 1,024 open-file limit, 1,100 connections that never finish their head fill every
/// slot; the cap keeps descriptors for the rest, the header timeout frees the slots, and a
/// new client is served while the slow ones hang on.
#[tokio::test]
async fn a_new_client_is_served_while_1100_slow_ones_hang_on() {
    let database = TestDatabase::sqlite();
    let server = Server::start_with_open_files(&database, 1024, &["--header-timeout", "8s"]);
    let target = address(&server);
    let mut slow = Vec::with_capacity(1100);
    for _ in 0..11 {
        let batch = (0..100).map(|_| async {
            let mut tcp = timeout(PATIENCE, TcpStream::connect(&target))
                .await
                .ok()?
                .ok()?;
            // Half a head, never finished.
            tcp.write_all(b"GET /products HTTP/1.1\r\nHo").await.ok()?;
            Some(tcp)
        });
        slow.extend(futures::future::join_all(batch).await.into_iter().flatten());
    }
    assert!(
        slow.len() > 1024,
        "only {} slow connections opened",
        slow.len()
    );
    let response = client()
        .get(server.url("/products/1"))
        .send()
        .await
        .expect("the new client is served");
    assert_eq!(response.status(), 200);
    let mut server = server;
    server.wait_for_log("connection limit reached: new connections wait until one closes");
    let reached = counter(&server, "cachelayer_connection_limit_reached_total", "api").await;
    assert!(reached >= 1.0, "counted: {reached}");
    drop(slow);
}

/// A client that opens HTTP/2 streams with a shut flow-control window and never reads would
/// hold every response in memory; past the send timeout its connection is closed, and it
/// may not open more streams than the limit.
#[tokio::test]
async fn an_http2_client_that_never_reads_is_cut_off() {
    stalled_http2_client_is_cut_off(0).await;
}

/// The same with a window of one byte, opened once: a body handed over whole at the first
/// byte of window would end its request and be held in memory with no deadline.
#[tokio::test]
async fn an_http2_client_that_opens_one_byte_of_window_is_cut_off() {
    stalled_http2_client_is_cut_off(1).await;
}

async fn stalled_http2_client_is_cut_off(window: u32) {
    let database = TestDatabase::sqlite();
    let server = Server::start(
        &database,
        &["--send-timeout", "1s", "--http2-max-streams", "8"],
    );
    let tcp = TcpStream::connect(address(&server)).await.expect("connect");
    let (mut h2, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let mut responses = Vec::new();
    for page in 0..8 {
        h2 = h2.ready().await.expect("a stream slot");
        let request = http::Request::get(format!("http://x/products?limit=100&offset={page}"))
            .body(())
            .expect("request");
        let (response, _) = h2.send_request(request, true).expect("stream");
        responses.push(response);
    }
    // Kept, never read: dropping one would reset its stream, which frees the server.
    let mut unread = Vec::new();
    for response in responses {
        let response = timeout(PATIENCE, response).await.expect("headers in time");
        // Headers need no window; the body never gets (more than a byte of) one.
        let response = response.expect("response");
        assert_eq!(response.status(), 200);
        let length: usize = response.headers()["content-length"]
            .to_str()
            .expect("length")
            .parse()
            .expect("a number");
        assert!(
            length > 32 * 1024,
            "pages of several frames: {length} bytes"
        );
        unread.push(response);
    }
    assert_eq!(
        h2.current_max_send_streams(),
        8,
        "the server's stream limit"
    );
    let timed_out = eventually_counted(&server, "send_timeout").await;
    assert!(
        timed_out >= 1.0,
        "the stalled HTTP/2 connection was never closed (window {window})"
    );
    let ended = timeout(PATIENCE, connection).await;
    assert!(ended.is_ok(), "the client did not see its connection end");
    drop(unread);
}

/// The count of connections closed for `reason`, once it is at least one (or after
/// [`PATIENCE`], whatever it is then).
async fn eventually_counted(server: &Server, reason: &str) -> f64 {
    let name = "cachelayer_connections_timed_out_total";
    metric_once(server, name, reason, |count| count >= 1.0).await
}

/// An HTTP/1.1 client that sends requests and never reads the answers fills the socket;
/// past the send timeout its connection is closed.
#[tokio::test]
async fn an_http1_client_that_never_reads_is_cut_off() {
    let database = TestDatabase::sqlite();
    let server = Server::start(&database, &["--send-timeout", "1s"]);
    let mut tcp = TcpStream::connect(address(&server)).await.expect("connect");
    // Pipelined requests for large pages, never read: the server's writes fill the socket.
    let request = b"GET /products?limit=100 HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3000);
    let sent = timeout(PATIENCE, async {
        // The server stops reading while its answers wait, so this may not finish: that
        // is fine, the close ends it.
        drop(tcp.write_all(&request).await);
    });
    drop(sent.await);
    let metric = eventually_counted(&server, "send_timeout").await;
    assert!(
        metric >= 1.0,
        "the connection that never reads was not closed"
    );
}

/// A request body that stops coming is given up after the request-body timeout.
#[tokio::test]
async fn a_stalled_request_body_is_given_up() {
    let database = TestDatabase::sqlite();
    let server = Server::start(&database, &["--request-body-timeout", "1s"]);
    let mut tcp = TcpStream::connect(address(&server)).await.expect("connect");
    tcp.write_all(
        b"POST /products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":",
    )
    .await
    .expect("part of a body");
    let answer = timeout(PATIENCE, read_response(&mut tcp)).await;
    let answer = answer.expect("the server gave up in time");
    if let Some((head, _)) = answer {
        assert!(head.starts_with("http/1.1 4"), "{head}");
    }
    let timed_out = eventually_counted(&server, "request_body_timeout").await;
    assert!(timed_out >= 1.0, "counted: {timed_out}");
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without `Host`, or any with two or an invalid
/// one, is refused, on `serve` and on the proxy (which would key it under a host it lacks).
#[tokio::test]
async fn requests_without_exactly_one_valid_host_are_refused() {
    let database = TestDatabase::sqlite();
    let serve = Server::start(&database, &[]);
    let proxy = Server::proxy(&serve.base, &[]);
    for server in [&serve, &proxy] {
        for (request, why) in [
            (&b"GET /products/1 HTTP/1.1\r\n\r\n"[..], "no Host"),
            (
                b"GET /products/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "two",
            ),
            (
                b"GET /products/1 HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                "the same twice",
            ),
            (
                b"GET /products/1 HTTP/1.1\r\nHost: u@a\r\n\r\n",
                "user info",
            ),
            (b"GET /products/1 HTTP/1.1\r\nHost: a/b\r\n\r\n", "a path"),
        ] {
            let (status, head, json) = raw_request(server, request).await;
            assert_eq!(status, 400, "{why}: {head}");
            assert_eq!(json["error"], "bad_request", "{why}: {json}");
            assert!(head.contains("connection: close"), "{why}: {head}");
        }
        let (status, head, _) = raw_request(server, b"GET /products/1 HTTP/1.0\r\n\r\n").await;
        assert_eq!(status, 200, "HTTP/1.0 needs no Host: {head}");
    }
}

/// Targets and heads past the limits get JSON answers, both those the listener refuses and
/// those too large for hyper to hold at all.
#[tokio::test]
async fn overlong_targets_and_heads_get_json_answers() {
    let database = TestDatabase::sqlite();
    let server = Server::start(&database, &[]);
    let long_path = |bytes: usize| format!("/products?x={}", "a".repeat(bytes));
    let cases = [
        (
            format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", long_path(10 * 1024)),
            414,
            "uri_too_long",
        ),
        (
            format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", long_path(100 * 1024)),
            431,
            "headers_too_large",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(40 * 1024)
            ),
            431,
            "headers_too_large",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(400 * 1024)
            ),
            431,
            "headers_too_large",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..150)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>()
            ),
            431,
            "headers_too_large",
        ),
        ("NOT HTTP AT ALL\r\n\r\n".to_owned(), 400, "bad_request"),
    ];
    for (request, status, error) in cases {
        let (got, head, json) = raw_request(&server, request.as_bytes()).await;
        assert_eq!(got, status, "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(json["error"], error, "{json}");
    }
}

/// Keep-alive clients racing a shutdown: every request the server took is answered, the
/// last answers on each connection say `Connection: close`, and no connection is reset.
#[tokio::test]
async fn shutdown_under_keep_alive_load_answers_every_request_it_took() {
    let database = TestDatabase::sqlite();
    let mut server = Server::start(&database, &[]);
    let target = address(&server);
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(64);
    let mut workers = Vec::new();
    for _ in 0..20 {
        let target = target.clone();
        let started = started_tx.clone();
        workers.push(tokio::spawn(async move {
            let mut answered = 0_u32;
            let mut closes = 0_u32;
            let mut broken = 0_u32;
            // Reconnect after each `Connection: close` until the listener refuses. A
            // connection that never gets an answer was never accepted (it was still in the
            // kernel's queue when the listener closed): not a request the server took.
            while let Ok(mut tcp) = TcpStream::connect(&target).await {
                let mut on_this_connection = 0;
                loop {
                    let request = b"GET /products/1 HTTP/1.1\r\nHost: x\r\n\r\n";
                    let sent = tcp.write_all(request).await.is_ok();
                    let answer = if sent {
                        read_response(&mut tcp).await
                    } else {
                        None
                    };
                    let Some((head, _)) = answer else {
                        if on_this_connection > 0 {
                            broken += 1;
                        }
                        break;
                    };
                    answered += 1;
                    on_this_connection += 1;
                    if answered == 1 {
                        let _ = started.try_send(());
                    }
                    if head.contains("connection: close") {
                        closes += 1;
                        break;
                    }
                }
                if broken > 0 || on_this_connection == 0 {
                    break;
                }
            }
            (answered, closes, broken)
        }));
    }
    drop(started_tx);
    for _ in 0..20 {
        started_rx.recv().await.expect("every worker is answered");
    }
    server.terminate();
    let mut closes = 0;
    for worker in workers {
        let (answered, closed, broken) = timeout(PATIENCE, worker)
            .await
            .expect("the worker ends")
            .expect("worker");
        assert!(answered > 0);
        assert_eq!(
            broken, 0,
            "a request on a kept-alive connection was dropped"
        );
        closes += closed;
    }
    assert!(
        closes >= 20,
        "each connection's last answer says close: {closes}"
    );
    assert!(server.wait().success(), "the server exited cleanly");
}

/// An upstream whose body, sent in two parts, ends with text shaped like an HTTP error head:
/// the client gets the body exactly (nothing may take it for the listener's own error
/// answer), and its keep-alive connection stays in step.
#[tokio::test]
async fn a_body_that_looks_like_an_error_head_passes_through_intact() {
    const FIRST: &[u8] = b"transcript:\n";
    const LAST: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\r\n";
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let origin_address = origin.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = origin.accept().await {
            tokio::spawn(async move {
                let mut buf = [0_u8; 4096];
                let mut pending = Vec::new();
                loop {
                    while !pending.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                    pending.clear();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncache-control: no-store\r\n\r\n",
                        FIRST.len() + LAST.len()
                    );
                    let mut first = head.into_bytes();
                    first.extend_from_slice(FIRST);
                    if tcp.write_all(&first).await.is_err() {
                        return;
                    }
                    // The last part comes later, in a write of its own.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if tcp.write_all(LAST).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = Server::proxy(&format!("http://{origin_address}"), &[]);
    let mut tcp = TcpStream::connect(address(&proxy)).await.expect("connect");
    for path in ["/first", "/second"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("request");
        let (head, body) = timeout(PATIENCE, read_response(&mut tcp))
            .await
            .expect("an answer in time")
            .expect("a whole answer");
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert_eq!(body, [FIRST, LAST].concat(), "{path}: the body as sent");
    }
}

/// A request body the client mangles is the client's fault: `400` in JSON, not the `502`
/// that says the upstream failed.
#[tokio::test]
async fn a_malformed_request_body_through_the_proxy_is_a_client_error() {
    let database = TestDatabase::sqlite();
    let serve = Server::start(&database, &[]);
    let proxy = Server::proxy(&serve.base, &[]);
    let request = b"POST /products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n";
    let (status, head, json) = raw_request(&proxy, request).await;
    assert_eq!(status, 400, "{head}");
    assert_eq!(json["error"], "bad_request", "{json}");
}

/// On HTTP/2, streams the client keeps moving do not cover the ones it leaves stalled: each
/// response has its own send clock, so the connection is cut at the send timeout while the
/// client still reads other pages.
#[tokio::test]
async fn streams_kept_moving_do_not_cover_stalled_ones() {
    let database = TestDatabase::sqlite();
    let server = Server::start(&database, &["--send-timeout", "1s"]);
    let tcp = TcpStream::connect(address(&server)).await.expect("connect");
    let (mut h2, connection) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .initial_connection_window_size(1 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let page = |n: usize| {
        http::Request::get(format!("http://x/products?limit=100&offset={n}"))
            .body(())
            .expect("request")
    };
    let mut stalled = Vec::new();
    for n in 0..7 {
        h2 = h2.ready().await.expect("a stream slot");
        let response = h2.send_request(page(n), true).expect("stream").0;
        let response = timeout(PATIENCE, response).await.expect("headers in time");
        // Kept, never read.
        stalled.push(response.expect("response").into_body());
    }
    // Meanwhile, read page after page in full, every tenth of a second, for seconds.
    let mut pages_read = 0;
    let cut = 'reading: loop {
        if pages_read == 40 {
            break false;
        }
        let Ok(ready) = h2.clone().ready().await else {
            break true;
        };
        h2 = ready;
        let Ok((response, _)) = h2.send_request(page(pages_read % 7), true) else {
            break true;
        };
        let Ok(Ok(response)) = timeout(PATIENCE, response).await else {
            break true;
        };
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else {
                break 'reading true;
            };
            drop(body.flow_control().release_capacity(chunk.len()));
        }
        pages_read += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        cut,
        "{pages_read} pages read: the stalled streams were kept"
    );
    assert!(eventually_counted(&server, "send_timeout").await >= 1.0);
    drop(stalled);
}
