//! Interim (1xx) responses sent ahead of a request's final response on an HTTP/1.1
//! connection: the `102 Processing` and `103 Early Hints` an upstream sends pass on to the
//! client while its final response is still being made.
//!
//! hyper's server answers each request with one final response and has no way to send a 1xx
//! before it (only its own `100 Continue`), so the connection's socket wrapper (`io`) writes
//! them itself, between messages: [`Interim`] holds the bytes queued for a connection, an
//! [`InterimSender`] (in each HTTP/1.1 request's extensions) queues them, and the request's
//! [`InterimScope`] closes the queue to it once its final response is ready, before hyper
//! writes a byte of it. Written by hand because neither hyper nor any crate of the field
//! offers it yet.
//!
//! This module must never let an interim response out after its request's final response
//! has begun, nor for another request; `100 Continue` (hyper's own), `101` (an upgrade),
//! hop-by-hop fields and `Content-Length` never pass, and a connection queues at most
//! [`MAX_QUEUED_BYTES`] (an upstream sending endless hints costs the client nothing more).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;

use futures::task::AtomicWaker;

use http::{HeaderMap, StatusCode};

use cachelayer::http::headers::strip_hop_by_hop;

/// Most bytes of interim responses waiting for one connection; more are dropped, as an
/// intermediary may drop any interim response (RFC 9110 section 15.2).
const MAX_QUEUED_BYTES: usize = 16 * 1024;

/// The interim responses waiting to be written on one connection.
#[derive(Debug, Default)]
pub(crate) struct Interim {
    state: Mutex<State>,
    /// Whether bytes are queued: every write of every connection asks, so the answer must
    /// not take the lock.
    queued: AtomicBool,
    /// The connection task, woken when bytes are queued.
    waker: AtomicWaker,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes to write before anything else hyper writes.
    queued: Vec<u8>,
    /// The request that may still queue (its number), if any.
    open: Option<u64>,
    /// Requests numbered so far.
    requests: u64,
}

impl Interim {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request began: its sender, which may queue until the scope is dropped.
    pub(crate) fn open(self: &Arc<Self>) -> (InterimSender, InterimScope) {
        let mut state = self.state();
        state.requests += 1;
        let request = state.requests;
        state.open = Some(request);
        let sender = InterimSender {
            interim: Arc::clone(self),
            request,
        };
        let scope = InterimScope {
            interim: Arc::clone(self),
            request,
        };
        (sender, scope)
    }

    /// What is queued, taken; `waker` is the one to wake when more is.
    pub(crate) fn take(&self, waker: &Waker) -> Option<Vec<u8>> {
        self.waker.register(waker);
        if !self.queued.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.state();
        self.queued.store(false, Ordering::Release);
        (!state.queued.is_empty()).then(|| std::mem::take(&mut state.queued))
    }
}

/// Queues a request's interim responses on its connection (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct InterimSender {
    interim: Arc<Interim>,
    request: u64,
}

impl InterimSender {
    /// Queue an interim response, unless its request's final response is ready (then it
    /// is dropped), it is not one that passes, or the queue is full.
    pub(crate) fn send(&self, status: StatusCode, headers: &HeaderMap) {
        if !passes(status) {
            return;
        }
        let head = written(status, headers);
        let mut state = self.interim.state();
        if state.open != Some(self.request) || state.queued.len() + head.len() > MAX_QUEUED_BYTES {
            return;
        }
        state.queued.extend_from_slice(&head);
        self.interim.queued.store(true, Ordering::Release);
        drop(state);
        self.interim.waker.wake();
    }
}

/// A request's right to queue interim responses; dropped once its final response is ready.
#[derive(Debug)]
pub(crate) struct InterimScope {
    interim: Arc<Interim>,
    request: u64,
}

impl Drop for InterimScope {
    fn drop(&mut self) {
        let mut state = self.interim.state();
        if state.open == Some(self.request) {
            state.open = None;
        }
    }
}

/// Whether an interim status passes to the client: not `100 Continue` (hyper answers
/// `Expect` itself) nor `101 Switching Protocols` (an upgrade is never forwarded).
fn passes(status: StatusCode) -> bool {
    status.is_informational()
        && status != StatusCode::CONTINUE
        && status != StatusCode::SWITCHING_PROTOCOLS
}

/// An interim response as HTTP/1.1 writes it, without hop-by-hop fields (the fixed list
/// and those its `Connection` names) and without `Content-Length`, which a 1xx must not
/// carry (RFC 9110 section 8.6). Header values cannot hold CR or LF: `http` refuses them.
fn written(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut headers = headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(http::header::CONTENT_LENGTH);
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("Interim")
    )
    .into_bytes();
    for (name, value) in &headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.append("link", "</a.css>; rel=preload".parse().expect("v"));
        headers.append("connection", "keep-alive, x-secret".parse().expect("v"));
        headers.append("x-secret", "internal".parse().expect("v"));
        headers.append("content-length", "7".parse().expect("v"));
        headers
    }

    /// Hints of the open request are queued and written as HTTP/1.1 heads; those of a
    /// request whose answer is ready, 100 and 101 are not.
    #[test]
    fn only_the_open_request_queues() {
        let interim = Arc::new(Interim::default());
        let waker = futures::task::noop_waker();
        let (first, scope) = interim.open();
        first.send(StatusCode::from_u16(103).expect("103"), &hints());
        first.send(StatusCode::CONTINUE, &hints());
        first.send(StatusCode::SWITCHING_PROTOCOLS, &hints());
        let queued = interim.take(&waker).expect("queued");
        assert_eq!(
            String::from_utf8(queued).expect("text"),
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
        );
        drop(scope);
        first.send(StatusCode::PROCESSING, &HeaderMap::new());
        assert_eq!(interim.take(&waker), None, "closed with its answer");
        let (second, _scope) = interim.open();
        first.send(StatusCode::PROCESSING, &HeaderMap::new());
        assert_eq!(interim.take(&waker), None, "another request's");
        second.send(StatusCode::PROCESSING, &HeaderMap::new());
        assert!(interim.take(&waker).is_some());
    }

    /// An upstream sending endless hints fills the queue only so far.
    #[test]
    fn the_queue_is_bounded() {
        let interim = Arc::new(Interim::default());
        let (sender, _scope) = interim.open();
        for _ in 0..10_000 {
            sender.send(StatusCode::from_u16(103).expect("103"), &hints());
        }
        let queued = interim.take(&futures::task::noop_waker()).expect("queued");
        assert!(queued.len() <= MAX_QUEUED_BYTES, "{}", queued.len());
    }
}
