//! `ScriptedOrigin`: an HTTP origin whose answers a test scripts per path, and which records
//! every request it receives, so a test can put a cache in front of it and say both what the
//! client must get and what the origin must have seen (say, that a revalidation carried
//! `If-None-Match`).
//!
//! It runs in-process ([`ScriptedOrigin::router`], for a tower layer) or on a free
//! `127.0.0.1` port ([`ScriptedOrigin::serve`], for a proxy), and is stopped when the served
//! handle is dropped. It must never decide an answer from the request it received: a cache
//! test asserts what the origin saw, so the origin answers only what it was scripted to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One scripted response: a status, header fields (a name may repeat) and a body.
///
/// ```
/// use cachelayer_testkit::origin::Scripted;
///
/// let stored = Scripted::ok("hello")
///     .header("Cache-Control", "max-age=60")
///     .header("Set-Cookie", "a=1")
///     .header("Set-Cookie", "b=2");
/// assert_eq!(stored.status, 200);
/// assert_eq!(stored.headers.len(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scripted {
    /// The status code.
    pub status: StatusCode,
    /// Header fields in the order they are sent; repeated names are sent as repeated lines.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

impl Scripted {
    /// An empty response with this status.
    ///
    /// # Panics
    /// If `status` is not a status code (100–999): a bug in the test's script.
    pub fn new(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("a status code between 100 and 999"),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A 200 with this body.
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self::new(200).body(body)
    }

    /// Adds a header field line (after any of the same name).
    ///
    /// # Panics
    /// If the name or value is not valid in HTTP: a bug in the test's script.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(field(name, value));
        self
    }

    /// Replaces the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    fn to_response(&self) -> Response {
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = self.status;
        for (name, value) in &self.headers {
            response.headers_mut().append(name.clone(), value.clone());
        }
        response
    }
}

/// A header field from test data.
///
/// # Panics
/// If the name or value is not valid in HTTP: a bug in the test's data.
pub fn field(name: &str, value: &str) -> (HeaderName, HeaderValue) {
    let name = header_name(name);
    let value = HeaderValue::from_str(value)
        .unwrap_or_else(|_| panic!("{value:?} is not a valid value of {name}"));
    (name, value)
}

/// A header name from test data.
///
/// # Panics
/// If it is not a valid header name: a bug in the test's data.
pub fn header_name(name: &str) -> HeaderName {
    HeaderName::from_bytes(name.as_bytes())
        .unwrap_or_else(|_| panic!("{name:?} is not a header name"))
}

/// A request the origin received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its method.
    pub method: Method,
    /// Its path and query, as received.
    pub path_and_query: String,
    /// Its header fields, as received.
    pub headers: HeaderMap,
}

/// The responses scripted for one path, and how many have been used.
#[derive(Debug, Default)]
struct Script {
    responses: Vec<Scripted>,
    used: usize,
}

impl Script {
    /// The next response: each is used once, in order, and the last one repeats.
    fn next(&mut self) -> Option<Scripted> {
        let index = self.used.min(self.responses.len().checked_sub(1)?);
        self.used += 1;
        self.responses.get(index).cloned()
    }
}

/// Scripts and received requests, by path (without query).
#[derive(Debug, Default)]
struct Book {
    scripts: HashMap<String, Script>,
    received: HashMap<String, Vec<Received>>,
}

/// An origin answering each path from its script. Clones share the script and the record,
/// so a test keeps one while the router or server it made answers requests.
#[derive(Debug, Clone, Default)]
pub struct ScriptedOrigin {
    book: Arc<Mutex<Book>>,
}

impl ScriptedOrigin {
    /// An origin with nothing scripted: every path answers 404, never to be stored.
    pub fn new() -> Self {
        Self::default()
    }

    /// The book, even after a panic elsewhere poisoned its lock: it holds only plain data,
    /// always left consistent, and a test must still be able to report what the origin saw.
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answer requests for `path` (without query) with `responses`, one per request, the
    /// last repeating; replaces any earlier script of the path. Calls already counted stay.
    pub fn script(&self, path: &str, responses: impl IntoIterator<Item = Scripted>) {
        let script = Script {
            responses: responses.into_iter().collect(),
            used: 0,
        };
        self.book().scripts.insert(path.to_owned(), script);
    }

    /// How many requests for `path` (any method, any query) the origin received.
    pub fn calls(&self, path: &str) -> usize {
        self.book().received.get(path).map_or(0, Vec::len)
    }

    /// Every request for `path` the origin received, in order.
    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.book().received.get(path).cloned().unwrap_or_default()
    }

    /// The last request for `path` the origin received.
    pub fn last_request(&self, path: &str) -> Option<Received> {
        self.book()
            .received
            .get(path)
            .and_then(|r| r.last().cloned())
    }

    /// Records `request` and picks its answer, under one lock so that calls and answers
    /// stay in step when requests for one path arrive concurrently.
    fn answer(&self, request: &Request) -> Response {
        let path = request.uri().path().to_owned();
        let received = Received {
            method: request.method().clone(),
            path_and_query: request
                .uri()
                .path_and_query()
                .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned()),
            headers: request.headers().clone(),
        };
        let mut book = self.book();
        book.received
            .entry(path.clone())
            .or_default()
            .push(received);
        let scripted = book.scripts.get_mut(&path).and_then(Script::next);
        match scripted {
            Some(scripted) => scripted.to_response(),
            None => unscripted(&path),
        }
    }

    /// The origin as a router, for a tower layer or any in-process server.
    pub fn router(&self) -> Router {
        Router::new().fallback(answer).with_state(self.clone())
    }

    /// Serve the origin on a free `127.0.0.1` port until the returned handle is dropped.
    ///
    /// # Panics
    /// If no port can be bound (a broken test environment).
    pub async fn serve(&self) -> ServedOrigin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port for the origin");
        let address = listener.local_addr().expect("the origin's address");
        let (stop, stopped) = oneshot::channel::<()>();
        let app = self.router();
        let task = tokio::spawn(async move {
            let shutdown = async {
                // A dropped sender means the handle is gone: stop then too.
                let _ = stopped.await;
            };
            // Serving only fails if accepting fails for good; the test then sees refused
            // connections, which is the clearer report.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        ServedOrigin {
            address,
            origin: self.clone(),
            stop: Some(stop),
            task,
        }
    }
}

/// What a path without a script answers: a 404 that no cache may store, naming the path so
/// a forgotten script is obvious in a failure.
fn unscripted(path: &str) -> Response {
    Scripted::new(404)
        .header("cache-control", "no-store")
        .body(format!("no script for {path}"))
        .to_response()
}

async fn answer(State(origin): State<ScriptedOrigin>, request: Request) -> Response {
    origin.answer(&request)
}

/// A [`ScriptedOrigin`] served on a port; stops serving when dropped.
#[derive(Debug)]
pub struct ServedOrigin {
    address: SocketAddr,
    origin: ScriptedOrigin,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ServedOrigin {
    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The origin it serves (to script it and read what it received).
    pub fn origin(&self) -> &ScriptedOrigin {
        &self.origin
    }

    /// Stop serving and wait until the port is closed.
    pub async fn stop(mut self) {
        self.halt();
        // The task ends cancelled (the abort) or finished (the graceful stop won the race);
        // either way its listener is gone.
        let _ = (&mut self.task).await;
    }

    /// Open connections are told to finish (idle keep-alive ones close at once); aborting
    /// the accept loop closes the port now rather than after the last connection.
    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl Drop for ServedOrigin {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Responses are used in order and the last one repeats.
    #[test]
    fn the_last_scripted_response_repeats() {
        let mut script = Script {
            responses: vec![Scripted::ok("one"), Scripted::ok("two")],
            used: 0,
        };
        let bodies: Vec<Bytes> = (0..4)
            .filter_map(|_| script.next())
            .map(|s| s.body)
            .collect();
        assert_eq!(bodies, ["one", "two", "two", "two"]);
        assert_eq!(Script::default().next(), None);
    }

    /// Calls and requests are recorded per path, query included in what was received.
    #[test]
    fn requests_are_recorded_per_path() {
        let origin = ScriptedOrigin::new();
        origin.script("/a", [Scripted::new(204)]);
        let request = Request::builder()
            .uri("/a?x=1")
            .header("if-none-match", "\"e\"")
            .body(Body::empty())
            .expect("request");
        assert_eq!(origin.answer(&request).status(), 204);
        let unscripted = Request::builder()
            .uri("/b")
            .body(Body::empty())
            .expect("request");
        assert_eq!(origin.answer(&unscripted).status(), 404);
        assert_eq!((origin.calls("/a"), origin.calls("/b")), (1, 1));
        let last = origin.last_request("/a").expect("a request");
        assert_eq!(last.path_and_query, "/a?x=1");
        assert_eq!(last.headers["if-none-match"], "\"e\"");
    }

    /// Served, the origin answers over TCP; stopped, its port refuses connections.
    #[tokio::test]
    async fn a_served_origin_answers_until_stopped() {
        let origin = ScriptedOrigin::new();
        origin.script("/x", [Scripted::ok("hi").header("x-one", "1")]);
        let served = origin.serve().await;
        let address = served.address();
        let reply = tokio::task::spawn_blocking(move || raw_get(address, "/x"))
            .await
            .expect("client thread");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("x-one: 1"), "{reply}");
        assert!(reply.ends_with("hi"), "{reply}");
        served.stop().await;
        // The port is free again, and a test running alongside may already have it (free
        // ports are handed out in parallel): what must be gone is this origin's answer.
        let after = tokio::task::spawn_blocking(move || try_raw_get(address, "/x"))
            .await
            .expect("client thread");
        if let Some(reply) = after {
            assert!(!reply.contains("x-one: 1"), "still served: {reply}");
        }
    }

    /// One HTTP/1.1 GET over a plain socket, the whole reply as text.
    fn raw_get(address: SocketAddr, path: &str) -> String {
        try_raw_get(address, path).expect("connect")
    }

    /// [`raw_get`], or `None` when nothing listens at `address`. Whatever else answers
    /// there has 5 s to reply.
    fn try_raw_get(address: SocketAddr, path: &str) -> Option<String> {
        use std::io::{Read, Write};

        let mut stream = std::net::TcpStream::connect(address).ok()?;
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("read timeout");
        // A peer that is not HTTP may close at once, failing the write or the read.
        let _ = write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
        );
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        Some(String::from_utf8_lossy(&reply).into_owned())
    }
}
