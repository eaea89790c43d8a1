//! What one client may hold of a listener, as flags both commands take ([`LimitArgs`]),
//! checked into [`Limits`]: how long a client may take to send a request head, sit idle
//! between requests, stall a response or a request body; how many connections a listener
//! holds at once; how large a request head may be; how many HTTP/2 streams a connection may
//! open.
//!
//! Every default is finite: a listener facing the internet must never wait on a client
//! without a deadline, nor let clients hold more descriptors than the process has. This
//! module must never read a socket; it only says what the bounds are.

use std::time::Duration;

use clap::Args;

use crate::error::Error;
use crate::flags::duration;

/// Descriptors kept back from clients, as a share of the open-file limit: Redis, the
/// database and upstream connections, log files and the listeners themselves need theirs.
const RESERVED_SHARE: u64 = 4;
/// Descriptors kept back at the least, however low the open-file limit.
const RESERVED_AT_LEAST: u64 = 64;

/// Flags bounding what clients may hold, on every listener of a command.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Longest a client may take to send a request's head (request line and headers),
    /// counted from its first byte, or from connecting for a connection's first request;
    /// past it the connection is closed (slow-header attacks).
    #[arg(long, env = "CACHELAYER_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,
    /// Longest a keep-alive connection may sit idle between requests before it is closed.
    #[arg(long, env = "CACHELAYER_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// Longest a response may wait on a client that does not read it (a full socket, or an
    /// HTTP/2 flow-control window left shut) before the connection is closed.
    #[arg(long, env = "CACHELAYER_SEND_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub send_timeout: Duration,
    /// Longest gap between two reads of a request body that a handler is waiting for.
    #[arg(long, env = "CACHELAYER_REQUEST_BODY_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub request_body_timeout: Duration,
    /// Connections each listener holds at once; past it, new ones wait in the kernel's
    /// queue until one closes. Lowered to three quarters of the open-file limit.
    /// (The proxy's admin listener holds at most 64.)
    #[arg(long, env = "CACHELAYER_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Longest request target (path and query) accepted, in bytes; longer ones get 414.
    #[arg(long, env = "CACHELAYER_MAX_URI_BYTES", default_value_t = 8 * 1024)]
    pub max_uri_bytes: usize,
    /// Largest request head (header names and values) accepted, in bytes; larger ones get
    /// 431.
    #[arg(long, env = "CACHELAYER_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Most header fields in one request; more get 431.
    #[arg(long, env = "CACHELAYER_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,
    /// Concurrent streams one HTTP/2 connection may open.
    #[arg(long, env = "CACHELAYER_HTTP2_MAX_STREAMS", default_value_t = 100)]
    pub http2_max_streams: u32,
}

/// The checked bounds of one command's listeners (see [`LimitArgs`] for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // Each field is its flag's, documented there.
pub struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) send_timeout: Duration,
    pub(crate) request_body_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_uri_bytes: usize,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) http2_max_streams: u32,
}

impl LimitArgs {
    /// Check every bound; a zero is refused, naming the flag (zero would mean "close every
    /// connection at once" or "accept none", never what an operator wants).
    pub(crate) fn limits(&self) -> Result<Limits, Error> {
        let durations = [
            (
                "--header-timeout (CACHELAYER_HEADER_TIMEOUT)",
                self.header_timeout,
            ),
            (
                "--idle-timeout (CACHELAYER_IDLE_TIMEOUT)",
                self.idle_timeout,
            ),
            (
                "--send-timeout (CACHELAYER_SEND_TIMEOUT)",
                self.send_timeout,
            ),
            (
                "--request-body-timeout (CACHELAYER_REQUEST_BODY_TIMEOUT)",
                self.request_body_timeout,
            ),
        ];
        for (flag, value) in durations {
            if value.is_zero() {
                return Err(Error::config(flag, "must be more than 0"));
            }
        }
        let counts = [
            (
                "--max-connections (CACHELAYER_MAX_CONNECTIONS)",
                self.max_connections,
            ),
            (
                "--max-uri-bytes (CACHELAYER_MAX_URI_BYTES)",
                self.max_uri_bytes,
            ),
            (
                "--max-header-bytes (CACHELAYER_MAX_HEADER_BYTES)",
                self.max_header_bytes,
            ),
            ("--max-headers (CACHELAYER_MAX_HEADERS)", self.max_headers),
            (
                "--http2-max-streams (CACHELAYER_HTTP2_MAX_STREAMS)",
                usize::try_from(self.http2_max_streams).unwrap_or(usize::MAX),
            ),
        ];
        for (flag, value) in counts {
            if value == 0 {
                return Err(Error::config(flag, "must be at least 1"));
            }
        }
        // The cap is a semaphore's permits, taken back all at once when draining.
        let most = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
        if self.max_connections > most {
            return Err(Error::config(
                "--max-connections (CACHELAYER_MAX_CONNECTIONS)",
                format!("must be at most {most}"),
            ));
        }
        Ok(Limits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            send_timeout: self.send_timeout,
            request_body_timeout: self.request_body_timeout,
            max_connections: self.max_connections,
            max_uri_bytes: self.max_uri_bytes,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            http2_max_streams: self.http2_max_streams,
        })
    }
}

impl Limits {
    /// The bytes hyper may buffer for one request head: room for the largest target and
    /// head we accept, so that those limits answer in JSON before hyper's own (which
    /// answers a head that overflows this buffer).
    pub(crate) fn read_buffer_bytes(&self) -> usize {
        // hyper refuses a buffer under 8 KiB.
        (self.max_uri_bytes + self.max_header_bytes + 1024).max(8 * 1024)
    }

    /// These limits with the connection cap lowered to `max` (never raised).
    pub(crate) fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = self.max_connections.min(max);
        self
    }

    /// These limits with the connection cap lowered to fit `open_files`, the process's
    /// open-file limit (unchanged when it is unknown): a listener that accepts until
    /// `accept` fails with "too many open files" also starves Redis, the database and the
    /// upstream of descriptors.
    pub(crate) fn within_open_files(mut self, open_files: Option<u64>) -> Self {
        let Some(open_files) = open_files else {
            return self;
        };
        let reserved = (open_files / RESERVED_SHARE).max(RESERVED_AT_LEAST);
        let fits =
            usize::try_from(open_files.saturating_sub(reserved).max(1)).unwrap_or(usize::MAX);
        if fits < self.max_connections {
            tracing::warn!(
                configured = self.max_connections,
                open_file_limit = open_files,
                max_connections = fits,
                "--max-connections lowered to fit the open-file limit; raise the limit (ulimit -n) to hold more"
            );
            self.max_connections = fits;
        }
        self
    }
}

/// Raise the process's open-file limit to its hard limit (a service's soft limit is often
/// 1,024 while the hard one is far higher), and return the limit now in force; `None` where
/// it cannot be read.
pub(crate) fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(err) => {
            tracing::warn!(error = %err, "could not read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The limits the flags give by default (unit tests of what reads them).
#[cfg(test)]
pub(crate) fn defaults() -> Limits {
    tests::parse(&[]).expect("the defaults are valid")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitArgs,
    }

    pub(super) fn parse(args: &[&str]) -> Result<Limits, Error> {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).expect("parses").limits.limits()
    }

    #[test]
    fn defaults_are_finite() {
        let limits = parse(&[]).expect("defaults are valid");
        assert_eq!(limits.header_timeout, Duration::from_secs(10));
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.max_connections, 10_000);
        assert_eq!(limits.http2_max_streams, 100);
    }

    #[test]
    fn zero_is_refused_naming_the_flag() {
        for (args, flag) in [
            (["--header-timeout", "0s"], "--header-timeout"),
            (["--idle-timeout", "0s"], "--idle-timeout"),
            (["--max-connections", "0"], "--max-connections"),
            (["--http2-max-streams", "0"], "--http2-max-streams"),
            (["--max-connections", "99999999999"], "--max-connections"),
        ] {
            let err = parse(&args).expect_err("zero");
            assert!(err.to_string().contains(flag), "{err}");
        }
    }

    #[test]
    fn the_cap_fits_the_open_file_limit() {
        let limits = parse(&[]).expect("defaults");
        let cap = |files| limits.within_open_files(files).max_connections;
        assert_eq!(cap(Some(1024)), 768);
        assert_eq!(cap(Some(100)), 36);
        assert_eq!(cap(Some(1_000_000)), 10_000);
        assert_eq!(cap(Some(10)), 1);
        assert_eq!(cap(None), 10_000);
    }
}
