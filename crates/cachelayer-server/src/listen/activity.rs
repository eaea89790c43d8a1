//! What one connection is doing, shared by its socket ([`super::io`]) and its requests
//! ([`super::gate`]): requests in flight, responses waiting on the client, when the
//! connection last went idle or began a request head. From that it gives the one deadline
//! the socket enforces, and why.
//!
//! This module must never touch the socket or a request; it only keeps the account, under a
//! lock held for a few instructions at a time.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use futures::task::AtomicWaker;
use http::Version;

use super::limits::Limits;

/// The metric counting connections (and request bodies) cut by a deadline, by `reason`.
pub(crate) const CONNECTIONS_TIMED_OUT: &str = "cachelayer_connections_timed_out_total";

/// Why a connection was closed by its deadline (the `reason` label of the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// A request head took longer than `--header-timeout`.
    Header,
    /// The connection sat idle between requests longer than `--idle-timeout`.
    Idle,
    /// A response made no progress towards the client for `--send-timeout`.
    Send,
    /// A request body gave nothing for `--request-body-timeout`.
    RequestBody,
}

impl Timeout {
    /// Count a connection or request body cut for this reason on `listener`.
    pub(crate) fn count(self, listener: &'static str) {
        metrics::counter!(CONNECTIONS_TIMED_OUT, "listener" => listener, "reason" => self.as_str())
            .increment(1);
    }

    /// The metric label and log word.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header_timeout",
            Self::Idle => "idle_timeout",
            Self::Send => "send_timeout",
            Self::RequestBody => "request_body_timeout",
        }
    }
}

/// The HTTP version a connection speaks, once its first request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// No request yet.
    Unknown,
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
}

/// One connection's account. Cheap to share (`Arc`).
#[derive(Debug)]
pub(crate) struct Activity {
    state: Mutex<State>,
    limits: Limits,
    /// The connection's task, woken when a deadline starts to apply (the last request
    /// ended, or a response began to wait on the client): its socket then re-arms its timer.
    /// Only on HTTP/2, where responses end in their own tasks; an HTTP/1 response ends in the
    /// connection's task, which then writes it, and a write re-arms the timer (`io`) without
    /// waking the task once more for every request.
    reader: AtomicWaker,
}

#[derive(Debug)]
struct State {
    protocol: Protocol,
    /// Requests handed to the service whose responses have not finished.
    in_flight: usize,
    /// Responses whose next frame is up to the client (hyper has not asked for it because
    /// the client is not reading), as opposed to up to their source, each with the last time
    /// it moved. Each has its own clock: on HTTP/2, a stream the client keeps moving must not
    /// cover the ones it leaves stalled. A handful at most (one per stream).
    waiting_on_client: Vec<(u64, Instant)>,
    /// The number the next request's response gets.
    next_response: u64,
    /// When the connection last had nothing in flight.
    idle_since: Instant,
    /// When the first byte of the next request head arrived (HTTP/1 only).
    head_started: Option<Instant>,
    /// Requests handed to the service so far.
    requests: u64,
    /// HTTP/1 responses produced whose head has not been written yet.
    heads_pending: usize,
}

impl Activity {
    /// A fresh connection, accepted now.
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            state: Mutex::new(State {
                protocol: Protocol::Unknown,
                in_flight: 0,
                waiting_on_client: Vec::new(),
                next_response: 0,
                idle_since: now,
                head_started: None,
                requests: 0,
                heads_pending: 0,
            }),
            limits,
            reader: AtomicWaker::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only counters behind: keep using them.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bounds this connection is held to.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The protocol, once known.
    pub(crate) fn protocol(&self) -> Protocol {
        self.state().protocol
    }

    /// Bytes arrived from the client: while nothing is in flight on HTTP/1, they begin a
    /// request head, which must then complete within the header timeout.
    pub(crate) fn bytes_read(&self) {
        let mut state = self.state();
        if state.in_flight == 0 && state.protocol != Protocol::Http2 {
            state.head_started.get_or_insert_with(Instant::now);
        }
    }

    /// Wake `waker` when a deadline starts to apply (the socket registers it while a read
    /// waits).
    pub(crate) fn wake_on_deadline(&self, waker: &Waker) {
        self.reader.register(waker);
    }

    /// The next read deadline and what it stands for; `None` when nothing bounds reading
    /// (requests in flight bound their own bodies, and a slow handler is not the client's
    /// fault).
    pub(crate) fn read_deadline(&self) -> Option<(Instant, Timeout)> {
        let state = self.state();
        let limits = &self.limits;
        let send = state
            .waiting_on_client
            .iter()
            .map(|&(_, moved)| moved)
            .min()
            .map(|moved| (moved + limits.send_timeout, Timeout::Send));
        let read = if state.in_flight > 0 {
            None
        } else if let Some(started) = state.head_started {
            Some((started + limits.header_timeout, Timeout::Header))
        } else if state.requests == 0 {
            Some((state.idle_since + limits.header_timeout, Timeout::Header))
        } else {
            Some((state.idle_since + limits.idle_timeout, Timeout::Idle))
        };
        match (send, read) {
            (Some(send), Some(read)) => Some(if send.0 <= read.0 { send } else { read }),
            (one, other) => one.or(other),
        }
    }

    /// A request was handed to the service; it counts as in flight until the returned
    /// guard is dropped (with its response body, or with the call if the client left).
    pub(crate) fn request_started(self: &Arc<Self>, version: Version) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.requests += 1;
        state.head_started = None;
        if state.protocol == Protocol::Unknown {
            state.protocol = if version == Version::HTTP_2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
        }
        let response = state.next_response;
        state.next_response += 1;
        let clock = if version == Version::HTTP_2 {
            SendClock::PerResponse
        } else {
            SendClock::Socket
        };
        InFlight {
            activity: Arc::clone(self),
            response,
            clock,
            waiting: Waiting::NoResponse,
        }
    }

    /// Whether a write starting with an HTTP/1 status line may be hyper's own answer to a
    /// head it could not take: bytes of a new head were read and no request reached the
    /// service from them, nothing is in flight, and no answer of ours is still to be written
    /// (takes note of one of ours otherwise). A response body that happens to hold such a
    /// line is written before the client sends its next head, so it never qualifies.
    pub(crate) fn head_written_is_protocol_error(&self) -> bool {
        let mut state = self.state();
        if state.heads_pending > 0 {
            state.heads_pending -= 1;
            return false;
        }
        state.in_flight == 0 && state.head_started.is_some() && state.protocol != Protocol::Http2
    }
}

/// Whose turn it is to move a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The service has not answered yet.
    NoResponse,
    /// hyper has not asked for the next frame: the client is not taking what was sent.
    OnClient,
    /// The body's source has not produced the next frame.
    OnSource,
}

/// What times a response that waits on the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendClock {
    /// HTTP/1: one response at a time, written by the connection's task, so a client that
    /// does not read blocks the socket's write, which the socket times itself (`io`).
    Socket,
    /// HTTP/2: a stream can stall on its flow-control window while the socket moves, so
    /// each response keeps its own clock in the account.
    PerResponse,
}

/// One request in flight; dropping it ends the request's account.
#[derive(Debug)]
pub(crate) struct InFlight {
    activity: Arc<Activity>,
    /// Its number among the connection's responses.
    response: u64,
    clock: SendClock,
    waiting: Waiting,
}

impl InFlight {
    /// The service answered; the response's head and body are now up to the client.
    pub(crate) fn responded(&mut self) {
        match self.clock {
            SendClock::Socket => self.activity.state().heads_pending += 1,
            SendClock::PerResponse => self.moved(),
        }
    }

    /// hyper took a frame of the body: the response moved, and its clock starts again.
    pub(crate) fn sent(&mut self) {
        if self.clock == SendClock::PerResponse {
            self.moved();
        }
    }

    /// The body's source has nothing yet: waiting is not the client's fault.
    pub(crate) fn waiting_on_source(&mut self) {
        if self.waiting == Waiting::OnClient {
            self.stop_waiting_on_client(&mut self.activity.state());
        }
        self.waiting = Waiting::OnSource;
    }

    /// The bounds of this request's connection.
    pub(crate) fn limits(&self) -> &Limits {
        &self.activity.limits
    }

    /// The response moved now, and its next move is up to the client.
    fn moved(&mut self) {
        let now = Instant::now();
        let mut state = self.activity.state();
        let deadline_begins = state.waiting_on_client.is_empty();
        let response = self.response;
        match state
            .waiting_on_client
            .iter_mut()
            .find(|(waiting, _)| *waiting == response)
        {
            Some((_, moved)) => *moved = now,
            None => state.waiting_on_client.push((response, now)),
        }
        drop(state);
        self.waiting = Waiting::OnClient;
        if deadline_begins {
            self.activity.reader.wake();
        }
    }

    fn stop_waiting_on_client(&self, state: &mut State) {
        let response = self.response;
        if let Some(at) = state
            .waiting_on_client
            .iter()
            .position(|(waiting, _)| *waiting == response)
        {
            state.waiting_on_client.swap_remove(at);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.activity.state();
        if self.waiting == Waiting::OnClient {
            self.stop_waiting_on_client(&mut state);
        }
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            let other_task = state.protocol == Protocol::Http2;
            drop(state);
            if other_task {
                self.activity.reader.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity() -> Arc<Activity> {
        Activity::new(crate::listen::limits::defaults())
    }

    #[test]
    fn deadlines_follow_an_http1_connection() {
        let activity = activity();
        let (_, why) = activity
            .read_deadline()
            .expect("a fresh connection is bounded");
        assert_eq!(why, Timeout::Header);
        let mut request = activity.request_started(Version::HTTP_11);
        assert_eq!(
            activity.read_deadline(),
            None,
            "a handler may take its time"
        );
        request.responded();
        assert_eq!(
            activity.read_deadline(),
            None,
            "the socket's write times a client that does not read"
        );
        drop(request);
        let (_, why) = activity.read_deadline().expect("idle");
        assert_eq!(why, Timeout::Idle);
        activity.bytes_read();
        let (_, why) = activity.read_deadline().expect("a head began");
        assert_eq!(why, Timeout::Header);
    }

    #[test]
    fn http2_responses_waiting_on_the_client_are_timed() {
        let activity = activity();
        let mut request = activity.request_started(Version::HTTP_2);
        assert_eq!(
            activity.read_deadline(),
            None,
            "a handler may take its time"
        );
        request.responded();
        let (_, why) = activity
            .read_deadline()
            .expect("a response waits on the client");
        assert_eq!(why, Timeout::Send);
        request.waiting_on_source();
        assert_eq!(activity.read_deadline(), None, "waiting on the source");
        drop(request);
        let (_, why) = activity.read_deadline().expect("idle");
        assert_eq!(why, Timeout::Idle);
    }

    /// On HTTP/2, a response the client keeps moving does not cover one it leaves stalled:
    /// the deadline is the stalled one's.
    #[test]
    fn each_response_has_its_own_send_clock() {
        let activity = activity();
        let mut stalled = activity.request_started(Version::HTTP_2);
        let mut moving = activity.request_started(Version::HTTP_2);
        stalled.responded();
        let (first, why) = activity.read_deadline().expect("waits on the client");
        assert_eq!(why, Timeout::Send);
        moving.responded();
        std::thread::sleep(std::time::Duration::from_millis(5));
        moving.sent();
        let (deadline, _) = activity.read_deadline().expect("still waiting");
        assert_eq!(deadline, first, "the other stream's progress moves nothing");
        drop(stalled);
        let (deadline, _) = activity.read_deadline().expect("the moving one");
        assert!(deadline > first, "now the moving stream's clock");
        drop(moving);
    }

    #[test]
    fn only_heads_without_a_response_are_protocol_errors() {
        let activity = activity();
        assert!(
            !activity.head_written_is_protocol_error(),
            "nothing read yet"
        );
        activity.bytes_read();
        assert!(
            activity.head_written_is_protocol_error(),
            "a head never dispatched"
        );
        let mut request = activity.request_started(Version::HTTP_11);
        request.responded();
        drop(request);
        assert!(!activity.head_written_is_protocol_error(), "our own answer");
        assert!(
            !activity.head_written_is_protocol_error(),
            "the rest of our answer, before the client sent more"
        );
        activity.bytes_read();
        assert!(
            activity.head_written_is_protocol_error(),
            "after a new head that never reached the service"
        );
    }
}
