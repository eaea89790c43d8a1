//! A client's socket as hyper sees it, with the connection's deadlines enforced where hyper
//! waits on it: a read that waits past the header, idle or send deadline
//! ([`super::activity::Activity::read_deadline`]) and a write that makes no progress for
//! `--send-timeout` fail with `TimedOut`, which ends the connection. hyper's own answers to
//! heads it cannot take (400, 414, 431, sent with an empty body) are rewritten to the
//! JSON every other error has. A connection the server ends is closed lingeringly (its
//! write side shut first, what the client still sends read and dropped for a moment) so that
//! a request racing the close gets an end of stream rather than a reset.
//!
//! Interim responses queued for the connection ([`super::interim`]) are written before
//! anything hyper writes next.
//!
//! hyper offers none of this for a server socket: its header-read timeout also cuts idle
//! connections at the same bound and knows nothing of HTTP/2, and it has no write timeout,
//! hence this wrapper. It must never parse or change anything but hyper's error heads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::activity::{Activity, Timeout};
use super::interim::Interim;
use crate::error::ApiError;

/// How long a closed connection keeps reading what the client still sends.
const LINGER_FOR: Duration = Duration::from_secs(1);
/// How much it reads at most while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// Bytes written ahead of hyper's, and how many of them are written.
type Ahead = Option<(Vec<u8>, usize)>;

/// A client's socket with its deadlines. See the module documentation.
pub(crate) struct Guarded {
    /// `None` once handed to the lingering close.
    tcp: Option<TcpStream>,
    activity: Arc<Activity>,
    listener: &'static str,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    /// When writes began to wait on the client, while they do.
    write_blocked_since: Option<Instant>,
    /// A JSON answer replacing hyper's empty one, and how much of it is written.
    rewrite: Ahead,
    /// The connection's queue of interim responses.
    interim: Arc<Interim>,
    /// Interim responses taken from the queue, and how much of them is written.
    interim_out: Ahead,
    /// Whether the head now being written was checked (hyper repeats a write that waited).
    head_checked: bool,
    /// How the connection ended, which decides whether to linger.
    ending: Ending,
}

/// How a connection is ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Still open, or closed by the server after an answer: linger.
    Open,
    /// The client closed its side: nothing more will come, no need to linger.
    ClientClosed,
    /// A deadline passed: the client gets no more of our time.
    TimedOut,
}

impl Guarded {
    pub(crate) fn new(
        tcp: TcpStream,
        activity: Arc<Activity>,
        interim: Arc<Interim>,
        listener: &'static str,
    ) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            tcp: Some(tcp),
            activity,
            listener,
            read_timer: Box::pin(tokio::time::sleep_until(now)),
            write_timer: Box::pin(tokio::time::sleep_until(now)),
            write_blocked_since: None,
            rewrite: None,
            interim,
            interim_out: None,
            head_checked: false,
            ending: Ending::Open,
        }
    }

    fn tcp(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.tcp.as_mut().expect("the socket is held until drop"))
    }

    fn timed_out(&mut self, why: Timeout) -> io::Error {
        self.ending = Ending::TimedOut;
        why.count(self.listener);
        tracing::debug!(
            listener = self.listener,
            reason = why.as_str(),
            "closing a connection past its deadline"
        );
        io::Error::new(io::ErrorKind::TimedOut, why.as_str())
    }

    /// Whether `deadline` has passed, arming `timer` to wake this task when it does.
    fn expired(timer: &mut Pin<Box<Sleep>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::from_std(deadline);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// A write that waits on the client: an error once it has waited `--send-timeout`.
    fn write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let since = *self.write_blocked_since.get_or_insert_with(Instant::now);
        let deadline = since + self.activity.limits().send_timeout;
        if Self::expired(&mut self.write_timer, deadline, cx) {
            return Poll::Ready(self.timed_out(Timeout::Send));
        }
        Poll::Pending
    }

    /// Whether `first`, the start of a write, is hyper's own error head: if so, its JSON
    /// replacement is made ready to write instead.
    fn check_head(&mut self, first: &[u8]) -> bool {
        if self.rewrite.is_none() && !self.head_checked && first.starts_with(b"HTTP/1.") {
            self.head_checked = true;
            if self.activity.head_written_is_protocol_error()
                && let Some(status) = protocol_error_status(first)
            {
                self.rewrite = Some((json_answer(status), 0));
            }
        }
        self.rewrite.is_some()
    }

    /// The outcome of a write to the socket, with the send deadline checked if it waits.
    fn wrote(
        &mut self,
        result: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(result) => {
                self.write_blocked_since = None;
                self.head_checked = false;
                Poll::Ready(result)
            }
            Poll::Pending => self.write_pending(cx).map(Err),
        }
    }

    /// Write what is left of a rewritten answer; ready once all of it is out.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_ahead(cx, |guarded| &mut guarded.rewrite)
    }

    /// Write the interim responses queued for the connection; ready once all are out. Only
    /// where a message begins (`boundary`): before a head hyper writes, or at a flush, when
    /// hyper's own buffer is empty; never between the bytes of a message.
    fn poll_interim(&mut self, cx: &mut Context<'_>, boundary: bool) -> Poll<io::Result<()>> {
        if self.interim_out.is_none() && boundary {
            self.interim_out = self.interim.take(cx.waker()).map(|bytes| (bytes, 0));
        }
        self.poll_ahead(cx, |guarded| &mut guarded.interim_out)
    }

    /// Write what is left of the bytes in `slot` (written ahead of hyper's); ready once all
    /// of them are out.
    fn poll_ahead(
        &mut self,
        cx: &mut Context<'_>,
        slot: fn(&mut Self) -> &mut Ahead,
    ) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = slot(self).take() {
            if written == bytes.len() {
                return Poll::Ready(Ok(()));
            }
            match self.tcp().poll_write(cx, &bytes[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    // Progress: the send deadline counts from the next write that waits.
                    self.write_blocked_since = None;
                    *slot(self) = Some((bytes, written + n));
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    *slot(self) = Some((bytes, written));
                    return match self.write_pending(cx) {
                        Poll::Ready(err) => Poll::Ready(Err(err)),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper's own answer to a head it could not take, if `head` is exactly one: a 400, 414 or
/// 431 status line, then only `connection: close`, `content-length: 0` and `date`, then the
/// end of the head. That is what hyper writes for a parse error, and nothing else it writes
/// looks like it.
fn protocol_error_status(head: &[u8]) -> Option<StatusCode> {
    let head = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?.strip_prefix("HTTP/1.")?;
    let status = StatusCode::from_bytes(status_line.get(2..5)?.as_bytes()).ok()?;
    let theirs = [
        StatusCode::BAD_REQUEST,
        StatusCode::URI_TOO_LONG,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    ];
    let only_theirs = lines.all(|line| {
        matches!(line, "connection: close" | "content-length: 0") || line.starts_with("date: ")
    });
    (theirs.contains(&status) && only_theirs).then_some(status)
}

/// The JSON answer that replaces hyper's empty one for `status`.
fn json_answer(status: StatusCode) -> Vec<u8> {
    let body = ApiError::from_protocol_status(status).body_bytes();
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        match this.tcp().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.bytes_read();
                } else if room {
                    this.ending = Ending::ClientClosed;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                this.activity.wake_on_deadline(cx.waker());
                match this.activity.read_deadline() {
                    Some((deadline, why)) if Self::expired(&mut this.read_timer, deadline, cx) => {
                        Poll::Ready(Err(this.timed_out(why)))
                    }
                    _ => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_interim(cx, buf.starts_with(b"HTTP/1.")))?;
        if this.check_head(buf) {
            // hyper is told its head went out once ours has.
            ready!(this.poll_rewrite(cx))?;
            return this.wrote(Poll::Ready(Ok(buf.len())), cx);
        }
        let result = this.tcp().poll_write(cx, buf);
        this.wrote(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        ready!(this.poll_interim(cx, first.starts_with(b"HTTP/1.")))?;
        if this.check_head(first) {
            ready!(this.poll_rewrite(cx))?;
            let all = bufs.iter().map(|b| b.len()).sum();
            return this.wrote(Poll::Ready(Ok(all)), cx);
        }
        let result = this.tcp().poll_write_vectored(cx, bufs);
        this.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_rewrite(cx))?;
        // hyper flushes on every turn of its loop, its buffer written out first, so queued
        // interim responses go out while the final response is still being made.
        ready!(this.poll_interim(cx, true))?;
        match this.tcp().poll_flush(cx) {
            Poll::Ready(result) => {
                // An HTTP/1 answer just went out: arm the deadline of what comes next (idle,
                // or the next head), which the read that waits now was armed without.
                if let Some((deadline, _)) = this.activity.read_deadline() {
                    Self::expired(&mut this.read_timer, deadline, cx);
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.write_pending(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_rewrite(cx))?;
        this.tcp().poll_shutdown(cx)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let Some(tcp) = self.tcp.take() else { return };
        if self.ending != Ending::Open {
            return;
        }
        // Outside a runtime (a test dropping it late) the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(tcp));
        }
    }
}

/// Close `tcp` without a reset: shut our side, then read and drop what the client still
/// sends for a moment. Closing a socket with unread bytes makes the kernel send a reset,
/// which can destroy the answer the client has not read yet.
async fn linger(mut tcp: TcpStream) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0_u8; 4096];
    let mut read = 0;
    let drain = async {
        while read < LINGER_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    };
    drop(tokio::time::timeout(LINGER_FOR, drain).await);
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    #[test]
    fn only_hypers_empty_error_heads_are_rewritten() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(
            protocol_error_status(head),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        assert_eq!(
            protocol_error_status(b"HTTP/1.1 414 URI Too Long\r\n\r\n"),
            Some(StatusCode::URI_TOO_LONG)
        );
        assert_eq!(protocol_error_status(b"HTTP/1.1 200 OK\r\n\r\n"), None);
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\r\n";
        assert_eq!(
            protocol_error_status(ours),
            None,
            "a head with other fields"
        );
        let mid_body = b"HTTP/1.1 400 Bad Request\r\n\r\ntrailing";
        assert_eq!(
            protocol_error_status(mid_body),
            None,
            "bytes after the head"
        );
        assert_eq!(
            protocol_error_status(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            None
        );
        assert_eq!(
            protocol_error_status(b"HTTP/1.1 400 Bad"),
            None,
            "not a whole head"
        );
    }

    /// Interim bytes written are progress, as hyper's are: a client that keeps reading,
    /// however slowly, is never cut at the send timeout while hints stream to it; only a
    /// write that waits the whole timeout is.
    #[tokio::test]
    async fn interim_bytes_written_count_as_progress() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = tokio::net::TcpSocket::new_v4().expect("socket");
        client.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let address = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(client.connect(address), listener.accept());
        let (mut client, (server, _)) = (client.expect("connect"), accepted.expect("accept"));
        // Small buffers: each read of the client frees room at once, so the writer sees
        // progress every 50 ms and waits on it in between.
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .expect("SO_SNDBUF");
        let limits = super::super::limits::Limits {
            send_timeout: Duration::from_millis(300),
            ..super::super::limits::defaults()
        };
        let interim = Arc::new(Interim::default());
        let mut guarded = Guarded::new(server, Activity::new(limits), Arc::clone(&interim), "test");
        let (sender, _scope) = interim.open();
        let mut hints = HeaderMap::new();
        hints.insert(
            "link",
            http::HeaderValue::from_str(&"a".repeat(2000)).expect("v"),
        );
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            // Time passing: a slow client, reading a little every 50 ms, never stopping.
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        });
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut outcome = Ok(());
        while tokio::time::Instant::now() < deadline {
            sender.send(StatusCode::from_u16(103).expect("103"), &hints);
            match tokio::time::timeout_at(deadline, guarded.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    outcome = Err(err);
                    break;
                }
                Err(_) => break,
            }
        }
        drop(guarded);
        let read = reader.await.expect("the reader");
        assert!(
            outcome.is_ok(),
            "{outcome:?} after {:?}, {read} bytes read",
            started.elapsed()
        );
    }

    #[test]
    fn the_rewrite_is_json_and_closes() {
        let answer = String::from_utf8(json_answer(StatusCode::URI_TOO_LONG)).expect("text");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["error"], "uri_too_long");
    }
}
