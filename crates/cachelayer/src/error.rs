//! The crate's one error type: an opaque [`Error`] with a [`kind()`](Error::kind), the
//! [`LoadError`] of loads, and [`panic_message`] for turning a panic payload into text.
//!
//! Reads and loads through [`Cache`](crate::Cache) never return these for store trouble (they
//! fail open); errors reach the caller only for bad configuration, a value that cannot be
//! encoded, an invalidation that could not be delivered, or direct use of a
//! [`Store`](crate::store::Store). This module must never expose the underlying client's error
//! types in its public API, so the Redis client can change without breaking callers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The broad class of an [`Error`], for deciding what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A builder or URL was given a value it cannot use. Fix the configuration.
    Config,
    /// The store could not be reached (refused, reset, DNS, TLS handshake, authentication).
    Connection,
    /// The store did not answer within the configured command or connect timeout.
    Timeout,
    /// The store answered with an error reply (for example `OOM` or `WRONGTYPE`).
    Server,
    /// The circuit breaker is open: the store failed repeatedly and is not being called.
    CircuitOpen,
    /// A value could not be serialized, or is larger than the configured maximum.
    Encode,
    /// An argument is out of range (an empty key, a zero TTL handed to a store).
    InvalidInput,
}

impl ErrorKind {
    /// A short, stable label for metrics and logs (`"timeout"`, `"connection"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Server => "server",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Encode => "encode",
            ErrorKind::InvalidInput => "invalid_input",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from cachelayer. Match on [`Error::kind`]; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// What class of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when the store did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// True when the store could not be reached at all.
    pub fn is_connection(&self) -> bool {
        self.kind == ErrorKind::Connection
    }

    /// True when the failure says the store is unhealthy (unreachable, slow, or shed by the
    /// circuit breaker) rather than that this one request was wrong.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::CircuitOpen
        )
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        let kind = if err.is_timeout() {
            ErrorKind::Timeout
        } else if is_not_ready(&err) {
            // The server is there but cannot serve: count it against the breaker.
            ErrorKind::Connection
        } else if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error()
        {
            ErrorKind::Connection
        } else {
            match err.kind() {
                redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::Io => {
                    ErrorKind::Connection
                }
                redis::ErrorKind::InvalidClientConfig => ErrorKind::Config,
                _ => ErrorKind::Server,
            }
        };
        let message = match kind {
            ErrorKind::Timeout => {
                "redis did not answer in time; check the server's load or raise command_timeout"
            }
            ErrorKind::Connection => {
                "cannot reach redis; check the URL, credentials, TLS settings and that the server is up"
            }
            ErrorKind::Config => "the redis URL or client settings are invalid",
            _ => "redis answered with an error",
        };
        Error::with_source(kind, message, err)
    }
}

/// Replies meaning "this server cannot serve now" (loading, no primary, busy with a script,
/// a demoted primary, credentials refused): for a cache the same as unreachable.
fn is_not_ready(err: &redis::RedisError) -> bool {
    use redis::ServerErrorKind::{BusyLoading, MasterDown, ReadOnly, TryAgain};
    matches!(
        err.kind(),
        redis::ErrorKind::Server(BusyLoading | MasterDown | TryAgain | ReadOnly)
    ) || matches!(
        err.code(),
        Some("BUSY" | "LOADING" | "MASTERDOWN" | "READONLY" | "WRONGPASS" | "NOAUTH")
    )
}

/// An error reply with `code`, parsed from the wire as the client sees it (for tests).
/// Why [`Cache::try_get_with`](crate::Cache::try_get_with) returned no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// The loader returned an error ([`LoadError::loader_error`] has it).
    Loader,
    /// The loader panicked. The panic was contained: every caller that shared the load gets
    /// this error, and the cache stays usable.
    Panicked,
    /// Another process held the load lock past the maximum wait, nothing stale was
    /// available, and the policy is [`OnLockTimeout::Fail`](crate::OnLockTimeout::Fail).
    LockWaitTimedOut,
}

impl LoadErrorKind {
    /// A short, stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadErrorKind::Loader => "loader",
            LoadErrorKind::Panicked => "panicked",
            LoadErrorKind::LockWaitTimedOut => "lock_wait_timed_out",
        }
    }
}

/// The error of a load: the loader's own error, shared (as an [`Arc`]) by every caller that
/// waited on the same load, or a failure of the load itself. Match on
/// [`kind`](Self::kind).
///
/// ```
/// use std::time::Duration;
/// use cachelayer::{Cache, LoadErrorKind};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache = Cache::builder().build().unwrap();
/// let err = cache
///     .try_get_with::<u32, _, _>("k", Duration::from_secs(60), async { Err("database down") })
///     .await
///     .unwrap_err();
/// assert_eq!(err.kind(), LoadErrorKind::Loader);
/// assert_eq!(err.loader_error(), Some(&"database down"));
/// # }
/// ```
pub struct LoadError<E> {
    repr: LoadErrorRepr<E>,
}

enum LoadErrorRepr<E> {
    Loader(Arc<E>),
    Panicked(Arc<str>),
    LockWaitTimedOut(Duration),
}

impl<E> LoadError<E> {
    pub(crate) fn loader(err: E) -> Self {
        Self {
            repr: LoadErrorRepr::Loader(Arc::new(err)),
        }
    }

    pub(crate) fn panicked(message: impl Into<Arc<str>>) -> Self {
        Self {
            repr: LoadErrorRepr::Panicked(message.into()),
        }
    }

    pub(crate) fn lock_wait_timed_out(waited: Duration) -> Self {
        Self {
            repr: LoadErrorRepr::LockWaitTimedOut(waited),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> LoadErrorKind {
        match self.repr {
            LoadErrorRepr::Loader(_) => LoadErrorKind::Loader,
            LoadErrorRepr::Panicked(_) => LoadErrorKind::Panicked,
            LoadErrorRepr::LockWaitTimedOut(_) => LoadErrorKind::LockWaitTimedOut,
        }
    }

    /// The loader's error, when the loader failed.
    pub fn loader_error(&self) -> Option<&E> {
        match &self.repr {
            LoadErrorRepr::Loader(err) => Some(err),
            _ => None,
        }
    }

    /// The panic's message, when the loader panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.repr {
            LoadErrorRepr::Panicked(message) => Some(message),
            _ => None,
        }
    }

    /// The loader's error as shared with every caller of the same load.
    pub fn into_loader_error(self) -> Option<Arc<E>> {
        match self.repr {
            LoadErrorRepr::Loader(err) => Some(err),
            _ => None,
        }
    }
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        let repr = match &self.repr {
            LoadErrorRepr::Loader(err) => LoadErrorRepr::Loader(Arc::clone(err)),
            LoadErrorRepr::Panicked(message) => LoadErrorRepr::Panicked(Arc::clone(message)),
            LoadErrorRepr::LockWaitTimedOut(waited) => LoadErrorRepr::LockWaitTimedOut(*waited),
        };
        Self { repr }
    }
}

impl<E: PartialEq> PartialEq for LoadError<E> {
    fn eq(&self, other: &Self) -> bool {
        match (&self.repr, &other.repr) {
            (LoadErrorRepr::Loader(a), LoadErrorRepr::Loader(b)) => a == b,
            (LoadErrorRepr::Panicked(a), LoadErrorRepr::Panicked(b)) => a == b,
            (LoadErrorRepr::LockWaitTimedOut(a), LoadErrorRepr::LockWaitTimedOut(b)) => a == b,
            _ => false,
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            LoadErrorRepr::Loader(err) => f.debug_tuple("Loader").field(err).finish(),
            LoadErrorRepr::Panicked(message) => f.debug_tuple("Panicked").field(message).finish(),
            LoadErrorRepr::LockWaitTimedOut(waited) => {
                f.debug_tuple("LockWaitTimedOut").field(waited).finish()
            }
        }
    }
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            LoadErrorRepr::Loader(err) => write!(f, "the loader failed: {err}"),
            LoadErrorRepr::Panicked(message) => write!(
                f,
                "the loader panicked ({message}); the panic was contained, fix the loader"
            ),
            LoadErrorRepr::LockWaitTimedOut(waited) => write!(
                f,
                "another process held the load lock for over {} ms and nothing stale was cached; raise lock_max_wait or use OnLockTimeout::Load",
                waited.as_millis()
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.repr {
            LoadErrorRepr::Loader(err) => Some(&**err),
            _ => None,
        }
    }
}

/// The message of a panic payload (what `catch_unwind` or a `JoinError` gives back): the
/// `&str` or `String` it was raised with, or a placeholder for any other payload.
///
/// ```
/// use cachelayer::error::panic_message;
///
/// let payload = std::panic::catch_unwind(|| panic!("broke at {}", 7)).expect_err("panicked");
/// assert_eq!(panic_message(payload.as_ref()), "broke at 7");
/// ```
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
pub(crate) fn error_reply(code: &str) -> redis::RedisError {
    match redis::parse_redis_value(format!("-{code} detail\r\n").as_bytes()) {
        Ok(redis::Value::ServerError(err)) => err.into(),
        other => panic!("not an error reply: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kinds render as the stable labels used in metrics.
    #[test]
    fn kind_labels_are_stable() {
        assert_eq!(ErrorKind::Timeout.as_str(), "timeout");
        assert_eq!(ErrorKind::CircuitOpen.to_string(), "circuit_open");
    }

    /// "Not ready" replies are connection errors (they trip the breaker); other error
    /// replies are server errors.
    #[test]
    fn not_ready_replies_map_to_connection() {
        let reply = error_reply;
        for code in [
            "LOADING",
            "BUSY",
            "MASTERDOWN",
            "READONLY",
            "WRONGPASS",
            "NOAUTH",
        ] {
            assert_eq!(
                Error::from(reply(code)).kind(),
                ErrorKind::Connection,
                "{code}"
            );
        }
        assert_eq!(Error::from(reply("WRONGTYPE")).kind(), ErrorKind::Server);
    }

    /// Unavailability covers exactly the failures that should trip the breaker.
    #[test]
    fn unavailable_predicate() {
        assert!(Error::new(ErrorKind::Timeout, "t").is_unavailable());
        assert!(Error::new(ErrorKind::Connection, "c").is_unavailable());
        assert!(!Error::new(ErrorKind::Server, "s").is_unavailable());
        assert!(!Error::config("x").is_unavailable());
    }
}
