//! Interim (1xx) responses through `cachelayer proxy`, against raw-socket upstreams and
//! clients: `102` and `103` reach HTTP/1.1 clients ahead of the final response, filtered as a
//! final response is, and never where they do not belong: after a request timed out, from a
//! background refresh, inside a pipelined response, to HTTP/1.0 or HTTP/2 clients, as a
//! final `101`; and a client flooded with hints still gets its final response. Sleeps here are
//! time passing (a slow upstream, a response going stale), never synchronisation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::support::{PATIENCE, Server};
use super::upstream::{RawUpstream, read_head, request_line};

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

fn proxy_address(proxy: &Server) -> String {
    proxy
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// Writes `bytes` to the upstream's `socket`; false once the proxy hung up.
async fn wrote(socket: &mut TcpStream, bytes: &[u8]) -> bool {
    socket.write_all(bytes).await.is_ok()
}

/// A raw connection to `proxy` that has sent `GET path` in `version`, for `shop.example`.
async fn ask(proxy: &Server, version: &str, path: &str) -> TcpStream {
    let mut client = TcpStream::connect(proxy_address(proxy))
        .await
        .expect("connect");
    send_get(&mut client, version, path).await;
    client
}

/// Sends `GET path` in `version`, for `shop.example`, on `client`.
async fn send_get(client: &mut TcpStream, version: &str, path: &str) {
    let request = format!("GET {path} {version}\r\nHost: shop.example\r\n\r\n");
    client.write_all(request.as_bytes()).await.expect("send");
}

/// Every head up to and including the final one, and the final one's body.
async fn exchange(socket: &mut TcpStream) -> (Vec<String>, Vec<u8>) {
    let mut heads = Vec::new();
    loop {
        let head = tokio::time::timeout(PATIENCE, read_head(socket))
            .await
            .expect("a head in time")
            .unwrap_or_else(|| panic!("the connection ended after {heads:#?}"));
        let interim = head.starts_with("HTTP/1.1 1");
        heads.push(head);
        if !interim {
            break;
        }
    }
    let mut body = vec![0u8; content_length(heads.last().expect("a head"))];
    tokio::time::timeout(PATIENCE, socket.read_exact(&mut body))
        .await
        .expect("a body in time")
        .expect("the body");
    (heads, body)
}

/// The next head on `socket`, within the tests' patience.
async fn next_head(socket: &mut TcpStream) -> String {
    tokio::time::timeout(PATIENCE, read_head(socket))
        .await
        .expect("a head in time")
        .expect("a head")
}

/// Interim responses (RFC 9110 section 15.2): the upstream's `102` and `103` reach an
/// HTTP/1.1 client while the upstream is still making its final response, `100` (hyper's
/// own business) does not, the final response is stored as usual, and a hit (or an
/// HTTP/1.0 client, which may not understand them) gets no interim response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_reach_http11_clients_and_are_never_stored() {
    let (release, released) = watch::channel(false);
    let upstream = RawUpstream::start(move |mut socket, _| {
        let mut released = released.clone();
        async move {
            while let Some(head) = read_head(&mut socket).await {
                let interim = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n\
                               HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n";
                if !wrote(&mut socket, interim.as_bytes()).await {
                    return;
                }
                // The final response waits until the test has seen the hints arrive.
                if request_line(&head) == "GET /hinted" {
                    let _ = released.wait_for(|released| *released).await;
                }
                let answer = "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n\
                              Content-Length: 5\r\n\r\nhello";
                if !wrote(&mut socket, answer.as_bytes()).await {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = Server::proxy(&upstream.url(), &[]);

    let mut client = ask(&proxy, "HTTP/1.1", "/hinted").await;
    let processing = next_head(&mut client).await;
    assert!(processing.starts_with("HTTP/1.1 102 "), "{processing}");
    let hints = next_head(&mut client).await;
    assert!(hints.starts_with("HTTP/1.1 103 "), "{hints}");
    assert!(
        hints.contains("link: </style.css>; rel=preload\r\n"),
        "{hints}"
    );
    release.send_replace(true);
    let last = next_head(&mut client).await;
    assert!(last.starts_with("HTTP/1.1 200 "), "{last}");
    assert!(last.contains("x-cache: MISS\r\n"), "{last}");
    let mut body = [0u8; 5];
    client.read_exact(&mut body).await.expect("the body");
    assert_eq!(&body, b"hello");

    // Stored without them: a hit is the final response alone.
    let mut again = ask(&proxy, "HTTP/1.1", "/hinted").await;
    let hit = next_head(&mut again).await;
    assert!(
        hit.starts_with("HTTP/1.1 200 ") && hit.contains("x-cache: HIT\r\n"),
        "{hit}"
    );

    // HTTP/1.0 clients get none.
    let mut old = ask(&proxy, "HTTP/1.0", "/hinted-1.0").await;
    let first = next_head(&mut old).await;
    assert!(
        first.starts_with("HTTP/1.0 200 ") || first.starts_with("HTTP/1.1 200 "),
        "{first}"
    );
}

/// A final response strips the fields `Connection` names, the cache-tag fields and the
/// upstream's `X-Cache`; a 1xx must not carry `Content-Length` (RFC 9110 section 8.6) nor
/// the fields its `Connection` names (section 7.6.1). The interim head must be filtered
/// at least as the final one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_fields_are_filtered_like_the_final_response() {
    let upstream = RawUpstream::start(|mut socket, _| async move {
        while read_head(&mut socket).await.is_some() {
            let hop = "Connection: x-secret\r\nX-Secret: internal-token\r\n\
                       Cache-Tag: tenant-42\r\nSurrogate-Key: tenant-42\r\nX-Cache: HIT\r\n";
            let interim = format!(
                "HTTP/1.1 103 Early Hints\r\n{hop}Content-Length: 7\r\n\
                 Link: </a.css>; rel=preload\r\n\r\n"
            );
            let last = format!(
                "HTTP/1.1 200 OK\r\n{hop}Cache-Control: no-store\r\nContent-Length: 5\r\n\r\nhello"
            );
            if socket.write_all(interim.as_bytes()).await.is_err()
                || socket.write_all(last.as_bytes()).await.is_err()
            {
                return;
            }
        }
    })
    .await;
    let proxy = Server::proxy(&upstream.url(), &[]);
    let mut client = ask(&proxy, "HTTP/1.1", "/fields").await;
    let (heads, body) = exchange(&mut client).await;
    assert_eq!(body, b"hello");
    assert_eq!(heads.len(), 2, "{heads:#?}");
    let (interim, last) = (&heads[0], &heads[1]);
    let last_lower = last.to_ascii_lowercase();
    let mut leaked = Vec::new();
    for field in [
        "x-secret:",
        "cache-tag:",
        "surrogate-key:",
        "x-cache: hit",
        "content-length:",
    ] {
        let in_interim = interim.to_ascii_lowercase().contains(field);
        let in_last = last_lower.contains(field) && field != "content-length:";
        if in_interim && !in_last {
            leaked.push(field);
        }
    }
    assert!(
        leaked.is_empty(),
        "the 103 carries {leaked:?}, which the final response does not:\n{interim}---\n{last}"
    );
}

/// An upstream flooding a client with hints for 4 s, to a client that reads what waits
/// every 400 ms: the client gets the final response, the connection is not cut at the
/// 1 s `--send-timeout` (hints written count as progress: the listener's unit test
/// `interim_bytes_written_count_as_progress` pins that down), and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_a_flood_of_hints_is_not_cut() {
    let upstream = RawUpstream::start(|mut socket, _| async move {
        while read_head(&mut socket).await.is_some() {
            let hint = format!(
                "HTTP/1.1 103 Early Hints\r\nLink: </{}.css>; rel=preload\r\n\r\n",
                "a".repeat(8_000)
            );
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(4) {
                if !wrote(&mut socket, hint.as_bytes()).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let last =
                "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 4\r\n\r\ndone";
            if !wrote(&mut socket, last.as_bytes()).await {
                return;
            }
        }
    })
    .await;
    let proxy = Server::proxy(
        &upstream.url(),
        &["--send-timeout", "1s", "--upstream-timeout", "60s"],
    );
    let mut client = ask(&proxy, "HTTP/1.1", "/flood").await;
    let started = Instant::now();
    let mut received: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let ended = 'reading: loop {
        // Time passing: the client reads in bursts, as a busy one does.
        tokio::time::sleep(Duration::from_millis(400)).await;
        loop {
            match tokio::time::timeout(Duration::from_millis(5), client.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) => {
                    break 'reading Some(format!("end of stream after {:?}", started.elapsed()));
                }
                Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
                Ok(Err(err)) => {
                    break 'reading Some(format!("{err} after {:?}", started.elapsed()));
                }
            }
        }
        if received.ends_with(b"done") {
            break None;
        }
        if started.elapsed() > PATIENCE {
            break Some("no final response in time".to_owned());
        }
    };
    let hints = received
        .windows(12)
        .filter(|w| w == b"HTTP/1.1 103")
        .count();
    assert_eq!(ended, None, "{hints} hints received first");
}

/// A request cut by `--upstream-timeout` (504) whose upstream later sends a 103: the next
/// request on the connection (a slow one with no hints of its own) must not get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_requests_late_hint_never_reaches_the_next_request() {
    let upstream = RawUpstream::start(|mut socket, _| async move {
        while let Some(head) = read_head(&mut socket).await {
            let line = request_line(&head);
            if line == "GET /late" {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let hint = "HTTP/1.1 103 Early Hints\r\nLink: </late.css>; rel=preload\r\n\r\n";
                if !wrote(&mut socket, hint.as_bytes()).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(3000)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(800)).await;
            }
            let last = "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok";
            if !wrote(&mut socket, last.as_bytes()).await {
                return;
            }
        }
    })
    .await;
    let proxy = Server::proxy(&upstream.url(), &["--upstream-timeout", "1s"]);
    let mut client = ask(&proxy, "HTTP/1.1", "/late").await;
    let (heads, _) = exchange(&mut client).await;
    assert!(heads[0].starts_with("HTTP/1.1 504 "), "{heads:#?}");
    for n in 0..3 {
        send_get(&mut client, "HTTP/1.1", &format!("/plain-{n}")).await;
        let (heads, body) = exchange(&mut client).await;
        assert_eq!(heads.len(), 1, "request {n} got another's hint: {heads:#?}");
        assert_eq!(body, b"ok");
    }
}

/// A stale-while-revalidate hit starts a refresh carrying its request's extensions (and so
/// its interim sender). The refresh's upstream sends a 103 while the next request of the
/// connection waits on a slow upstream: that request must not get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_does_not_hint_the_next_request() {
    let swr_calls = Arc::new(AtomicUsize::new(0));
    let calls = Arc::clone(&swr_calls);
    let upstream = RawUpstream::start(move |mut socket, _| {
        let calls = Arc::clone(&calls);
        async move {
            while let Some(head) = read_head(&mut socket).await {
                let line = request_line(&head);
                let last = if line == "GET /swr" {
                    if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                        // The refresh: a hint while the next request waits, then the answer.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let hint = "HTTP/1.1 103 Early Hints\r\nLink: </refresh.css>; rel=preload\r\n\r\n";
                        if !wrote(&mut socket, hint.as_bytes()).await {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    "HTTP/1.1 200 OK\r\nCache-Control: max-age=1, stale-while-revalidate=60\r\nContent-Length: 3\r\n\r\nswr"
                } else {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"
                };
                if !wrote(&mut socket, last.as_bytes()).await {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = Server::proxy(&upstream.url(), &[]);
    let mut client = ask(&proxy, "HTTP/1.1", "/swr").await;
    let (heads, _) = exchange(&mut client).await;
    assert!(heads[0].contains("x-cache: MISS"), "{heads:#?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    send_get(&mut client, "HTTP/1.1", "/swr").await;
    let (heads, _) = exchange(&mut client).await;
    assert_eq!(heads.len(), 1, "{heads:#?}");
    assert!(heads[0].contains("x-cache: STALE"), "{heads:#?}");
    send_get(&mut client, "HTTP/1.1", "/next").await;
    let (heads, body) = exchange(&mut client).await;
    assert_eq!(
        heads.len(),
        1,
        "the refresh's hint reached /next: {heads:#?}"
    );
    assert_eq!(body, b"ok");
    assert_eq!(swr_calls.load(Ordering::SeqCst), 2, "the refresh ran");
}

/// Pipelined requests: the first a large body read slowly, the second hinted at once. The
/// hint must come after the whole first response, never inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_hints_never_land_inside_the_previous_response() {
    const SIZE: usize = 8 * 1024 * 1024;
    let upstream = RawUpstream::start(|mut socket, _| async move {
        while let Some(head) = read_head(&mut socket).await {
            if request_line(&head) == "GET /big" {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: {SIZE}\r\n\r\n"
                );
                let mut answer = head.into_bytes();
                answer.extend(std::iter::repeat_n(b'z', SIZE));
                if socket.write_all(&answer).await.is_err() {
                    return;
                }
            } else {
                let hint = "HTTP/1.1 103 Early Hints\r\nLink: </p.css>; rel=preload\r\n\r\n";
                if !wrote(&mut socket, hint.as_bytes()).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let last =
                    "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok";
                if !wrote(&mut socket, last.as_bytes()).await {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = Server::proxy(&upstream.url(), &[]);
    let mut client = TcpStream::connect(proxy_address(&proxy))
        .await
        .expect("connect");
    client
        .write_all(
            b"GET /big HTTP/1.1\r\nHost: shop.example\r\n\r\nGET /hinted HTTP/1.1\r\nHost: shop.example\r\n\r\n",
        )
        .await
        .expect("send");
    // Read slowly at first, so the first response waits on the client for a while.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (heads, body) = exchange(&mut client).await;
    assert_eq!(heads.len(), 1, "{heads:#?}");
    assert!(
        body.iter().all(|&b| b == b'z'),
        "something inside the first body: {:?}",
        String::from_utf8_lossy(&body[body.iter().position(|&b| b != b'z').unwrap_or(0)..][..200])
    );
    let (heads, body) = exchange(&mut client).await;
    assert_eq!(heads.len(), 2, "{heads:#?}");
    assert!(heads[0].starts_with("HTTP/1.1 103 "), "{heads:#?}");
    assert_eq!(body, b"ok");
}

/// HTTP/2 clients get no interim bytes written raw into their connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_final_responses_only() {
    let upstream = RawUpstream::start(|mut socket, _| async move {
        while read_head(&mut socket).await.is_some() {
            let answer = "HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </h2.css>; rel=preload\r\n\r\n\
                          HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok";
            if !wrote(&mut socket, answer.as_bytes()).await {
                return;
            }
        }
    })
    .await;
    let proxy = Server::proxy(&upstream.url(), &[]);
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    for n in 0..3 {
        let response =
            tokio::time::timeout(PATIENCE, client.get(proxy.url(&format!("/h2-{n}"))).send())
                .await
                .expect("in time")
                .expect("GET over HTTP/2");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), "ok");
    }
}

/// An upstream answering a plain GET with `101` (hyper's client hands it back as the final
/// response) gets the client a `502`, never the upgrade it did not ask for (RFC 9110
/// section 15.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_101_to_a_plain_request_never_reaches_the_client() {
    let upstream = RawUpstream::start(|mut socket, _| async move {
        while read_head(&mut socket).await.is_some() {
            let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
            if !wrote(&mut socket, answer.as_bytes()).await {
                return;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await;
    let proxy = Server::proxy(&upstream.url(), &[]);
    let mut client = ask(&proxy, "HTTP/1.1", "/plain").await;
    let head = tokio::time::timeout(PATIENCE, read_head(&mut client))
        .await
        .expect("a head in time")
        .expect("a head");
    assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
}
