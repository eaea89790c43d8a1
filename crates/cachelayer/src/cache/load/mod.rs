//! Loads with stampede protection: the public load API (`get_with` and its fallible and
//! optional variants) and the types every part of a load shares.
//!
//! The order of events for one key:
//! 1. Read the entry. Fresh: serve it, and with the XFetch probability start one background
//!    refresh. Stale within `stale_while_revalidate`: serve it and start one background
//!    refresh. Otherwise it is a miss (a stale value is kept for `stale_if_error`).
//! 2. Join the key's in-process flight: one caller leads, the others wait for its outcome.
//! 3. The leader takes the fleet-wide lock (`SET NX PX` with a random token), or waits for the
//!    holder's store notice (polling as a fallback) up to `lock_max_wait`.
//! 4. Holding the lock, it re-checks the store, runs the loader while extending the lease,
//!    stores the value, releases the lock only if it still owns it and sends a store notice
//!    (announces it stored the key). "Fill" means loading a miss; the announcement is a
//!    store notice.
//!
//! The parts, one file each:
//! - `entry`: [`Cache::entry`], the same loads saying where their value came from.
//! - `flow`: the request flow (first read, lead or follow).
//! - `fill`: running the loader under the lease and storing its value.
//! - `wait`: waiting for another process's hold on the fleet-wide lock.
//! - `lock`: the fleet-wide lock itself, [`LockLease`](lock::LockLease).
//! - `refresh`: background (and foreground) refreshes of a value still being served.
//! - `notices`: store notices over the store's pub/sub.
//! - `run`: running a loader (panics contained, timing, bypass).
//!
//! Store trouble at any step degrades to a plain load (coalesced per process); it never
//! fails the caller. The loader must be `Send + 'static` because a background refresh runs
//! the loader of the read that triggered it, on its own task, after that read has returned.
//! This module holds the API and its types only; it must never talk to the store itself.

mod entry;
mod fill;
mod flow;
mod lock;
mod notices;
mod refresh;
mod run;
mod wait;

pub use self::entry::{Entry, EntrySelector, LoadSource};

use std::any::Any;
use std::future::Future;
use std::time::Duration;

pub(crate) use crate::payload::Value;

use crate::cache::handle::Cache;
use crate::error::LoadError;
use crate::key::Key;
use crate::stampede::{LoadOptions, OnLockTimeout};

/// What a load gives every caller that shared it.
type LoadResult<T, E> = Result<Option<T>, LoadError<E>>;

/// A load's outcome, plus the loader's panic payload for the caller whose task ran it.
pub(crate) struct Loaded<T, E> {
    outcome: LoadResult<T, E>,
    panic: Option<Box<dyn Any + Send>>,
    /// False when the loader asked for its value not to be stored.
    store: bool,
    /// The value's own fresh lifetime and grace, overriding the options'.
    lifetime: Option<(Duration, Duration)>,
    /// Where the outcome came from.
    source: LoadSource,
}

impl<T, E> Loaded<T, E> {
    fn value(value: Option<T>) -> Self {
        Self {
            outcome: Ok(value),
            panic: None,
            store: true,
            lifetime: None,
            source: LoadSource::Loaded,
        }
    }

    fn error(err: LoadError<E>) -> Self {
        Self {
            outcome: Err(err),
            panic: None,
            store: true,
            lifetime: None,
            source: LoadSource::Loaded,
        }
    }

    fn from(mut self, source: LoadSource) -> Self {
        self.source = source;
        self
    }

    /// The outcome, with a loader panic resumed in this (the loader's) task.
    pub(crate) fn resume_panic(self) -> LoadResult<T, E> {
        if let Some(payload) = self.panic {
            std::panic::resume_unwind(payload);
        }
        self.outcome
    }
}

/// What a loader produced: a value (or `None` for "not found"), and whether to store it.
/// Built by the `#[cached]` macro for its `unless` option.
///
/// ```
/// use cachelayer::Fetched;
///
/// let kept = Fetched::cacheable(Some(3));
/// let passed_on = Fetched::uncacheable(Some(4));
/// # let _ = (kept, passed_on);
/// ```
#[derive(Debug)]
pub struct Fetched<T> {
    /// The value, or `None` for "not found".
    pub(crate) value: Option<T>,
    /// Store it (false: return it to every caller of this load, but cache nothing).
    pub(crate) store: bool,
    /// Fresh lifetime and stale grace decided by the value itself (an HTTP response's
    /// headers), instead of the load's options.
    pub(crate) lifetime: Option<(Duration, Duration)>,
}

impl<T> Fetched<T> {
    /// A loaded value (`None`: not found) to store.
    pub fn cacheable(value: Option<T>) -> Self {
        Self {
            value,
            store: true,
            lifetime: None,
        }
    }

    /// A loaded value (`None`: not found) to return to every caller of this load without
    /// storing it.
    pub fn uncacheable(value: Option<T>) -> Self {
        Self {
            store: false,
            ..Self::cacheable(value)
        }
    }

    /// A value stored for its own fresh lifetime, kept `grace` longer for stale serving.
    #[cfg(feature = "http")]
    pub(crate) fn with_lifetime(value: T, fresh: Duration, grace: Duration) -> Self {
        Self {
            value: Some(value),
            store: true,
            lifetime: Some((fresh, grace)),
        }
    }
}

/// How callers of one load share it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadMode {
    /// The caller accepts "not found" (`None`), and cached "not found" entries.
    pub(crate) absent_ok: bool,
    /// Share a loader error with coalesced callers (false: they run their own loader, for
    /// error types the caller cannot clone out of the shared `Arc`).
    pub(crate) share_errors: bool,
}

impl LoadMode {
    const VALUE: Self = Self {
        absent_ok: false,
        share_errors: true,
    };
    const OPTIONAL: Self = Self {
        absent_ok: true,
        share_errors: true,
    };
}

impl<T> Loaded<T, std::convert::Infallible> {
    /// The value of an infallible load. A panic resumes in the task that ran the loader, and
    /// a shared one is raised again with its message in every caller that waited on it.
    fn unwrap_panics(self) -> Option<T> {
        match self.resume_panic() {
            Ok(value) => value,
            Err(err) => panic!("{err}"),
        }
    }
}

/// A loader as the load machinery sees it: `None` is "not found". Background refreshes need
/// it `Send + 'static` too; loads that refresh in the foreground do not.
pub(crate) trait LoadFuture<T, E>: Future<Output = Result<Fetched<T>, E>> {}
impl<T, E, F: Future<Output = Result<Fetched<T>, E>>> LoadFuture<T, E> for F {}

impl Cache {
    /// Cache-aside with stampede protection: the cached value, or the loader's, which is then
    /// stored. `options` is a TTL or [`LoadOptions`]; a zero TTL bypasses the cache.
    ///
    /// Concurrent calls for one key share one loader run in this process, and with the
    /// fleet-wide lock (on by default) across every process sharing the store. Hot keys are
    /// refreshed early in the background (XFetch), and within `stale_while_revalidate` a
    /// stale value is served at once while one background refresh runs. Store trouble never
    /// reaches the caller. If the loader panics, the panic resumes in the caller whose task
    /// ran it and every caller that shared the load panics with its message, as each would
    /// have without coalescing; use [`try_get_with`](Self::try_get_with) to get it as an
    /// error instead. [`entry`](Self::entry) also says where the value came from.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cachelayer::{Cache, LoadOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = Cache::builder().build().unwrap();
    /// let options = LoadOptions::ttl(Duration::from_secs(60))
    ///     .stale_while_revalidate(Duration::from_secs(10));
    /// let name: String = cache.get_with("product:1:name", options, async { "lamp".to_owned() }).await;
    /// assert_eq!(name, "lamp");
    /// # }
    /// ```
    pub async fn get_with<T, F>(
        &self,
        key: impl Into<Key>,
        options: impl Into<LoadOptions>,
        init: F,
    ) -> T
    where
        T: Value,
        F: Future<Output = T> + Send + 'static,
    {
        self.load_value(key.into(), options.into(), init).await.0
    }

    /// Like [`get_with`](Self::get_with) for fallible loaders. A loader error is shared
    /// (as an `Arc`) with every caller of the same load and never cached; within
    /// `stale_if_error` the stale value is returned instead. A loader panic is contained and
    /// returned as [`LoadErrorKind::Panicked`](crate::LoadErrorKind::Panicked).
    pub async fn try_get_with<T, E, F>(
        &self,
        key: impl Into<Key>,
        options: impl Into<LoadOptions>,
        init: F,
    ) -> Result<T, LoadError<E>>
    where
        T: Value,
        E: Send + Sync + 'static,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.try_load_value(key.into(), options.into(), init)
            .await
            .map(|(value, _)| value)
    }

    /// Like [`get_with`](Self::get_with) for loaders that may find nothing: with a
    /// `negative_ttl` set, a `None` is cached for that long (negative caching), so repeated
    /// lookups of a missing id do not each reach the source.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cachelayer::{Cache, LoadOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = Cache::builder().build().unwrap();
    /// let options = LoadOptions::ttl(Duration::from_secs(60)).negative_ttl(Some(Duration::from_secs(5)));
    /// let missing: Option<String> = cache.optionally_get_with("product:404", options, async { None }).await;
    /// assert_eq!(missing, None);
    /// // Served from the cache for 5 s: this loader does not run.
    /// let again: Option<String> = cache
    ///     .optionally_get_with("product:404", options, async { Some("never".to_owned()) })
    ///     .await;
    /// assert_eq!(again, None);
    /// # }
    /// ```
    pub async fn optionally_get_with<T, F>(
        &self,
        key: impl Into<Key>,
        options: impl Into<LoadOptions>,
        init: F,
    ) -> Option<T>
    where
        T: Value,
        F: Future<Output = Option<T>> + Send + 'static,
    {
        self.load_optional(key.into(), options.into(), init).await.0
    }

    /// The fallible form of [`optionally_get_with`](Self::optionally_get_with).
    pub async fn try_optionally_get_with<T, E, F>(
        &self,
        key: impl Into<Key>,
        options: impl Into<LoadOptions>,
        init: F,
    ) -> Result<Option<T>, LoadError<E>>
    where
        T: Value,
        E: Send + Sync + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        self.try_load_optional(key.into(), options.into(), init)
            .await
            .map(|(value, _)| value)
    }

    /// [`get_with`](Self::get_with), with where the value came from.
    async fn load_value<T, F>(&self, key: Key, options: LoadOptions, init: F) -> (T, LoadSource)
    where
        T: Value,
        F: Future<Output = T> + Send + 'static,
    {
        // `get_with` cannot return an error, so it never takes the `Fail` policy.
        let options = options.on_lock_timeout(OnLockTimeout::Load);
        let loader =
            async move { Ok::<_, std::convert::Infallible>(Fetched::cacheable(Some(init.await))) };
        let loaded = self.load(key, options, loader, LoadMode::VALUE).await;
        let source = loaded.source;
        match loaded.unwrap_panics() {
            Some(value) => (value, source),
            None => unreachable!("value loads never produce a \"not found\""),
        }
    }

    /// [`try_get_with`](Self::try_get_with), with where the value came from.
    async fn try_load_value<T, E, F>(
        &self,
        key: Key,
        options: LoadOptions,
        init: F,
    ) -> Result<(T, LoadSource), LoadError<E>>
    where
        T: Value,
        E: Send + Sync + 'static,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let loader = async move { init.await.map(|value| Fetched::cacheable(Some(value))) };
        let loaded = self.load(key, options, loader, LoadMode::VALUE).await;
        match loaded.outcome {
            Ok(Some(value)) => Ok((value, loaded.source)),
            Err(err) => Err(err),
            Ok(None) => unreachable!("value loads never produce a \"not found\""),
        }
    }

    /// [`optionally_get_with`](Self::optionally_get_with), with where the value came from.
    async fn load_optional<T, F>(
        &self,
        key: Key,
        options: LoadOptions,
        init: F,
    ) -> (Option<T>, LoadSource)
    where
        T: Value,
        F: Future<Output = Option<T>> + Send + 'static,
    {
        let options = options.on_lock_timeout(OnLockTimeout::Load);
        let loader =
            async move { Ok::<_, std::convert::Infallible>(Fetched::cacheable(init.await)) };
        let loaded = self.load(key, options, loader, LoadMode::OPTIONAL).await;
        let source = loaded.source;
        (loaded.unwrap_panics(), source)
    }

    /// [`try_optionally_get_with`](Self::try_optionally_get_with), with where the value
    /// came from.
    async fn try_load_optional<T, E, F>(
        &self,
        key: Key,
        options: LoadOptions,
        init: F,
    ) -> Result<(Option<T>, LoadSource), LoadError<E>>
    where
        T: Value,
        E: Send + Sync + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let loader = async move { init.await.map(Fetched::cacheable) };
        let loaded = self.load(key, options, loader, LoadMode::OPTIONAL).await;
        loaded.outcome.map(|value| (value, loaded.source))
    }

    /// The store key of `key`'s fleet-wide load lock (`<namespace>:lock:v<version>:<key>`),
    /// for operators asking who is loading what. Its value is the holder's random token.
    pub fn lock_key(&self, key: impl Into<Key>) -> String {
        self.lock_key_of(&self.full_key(key))
    }

    /// Whether a load of `key` (in any instance sharing the store) holds its lock now: what
    /// a write waits on before its second delete, so no load that read the old data can
    /// store it afterwards. A lock key holding anything a load never writes there is no
    /// load, so it cannot stall writes: garbage or a value stripped of its expiry is removed
    /// (if unchanged), and a key of another type reads as absent (the next load's claim
    /// replaces it). Reports store failure.
    pub async fn is_loading(&self, key: impl Into<Key>) -> crate::error::Result<bool> {
        self.lock_is_held(&self.full_key(key)).await
    }

    /// How many callers in this process are waiting on another caller's load of `key`
    /// right now: a diagnostic of coalescing.
    pub fn coalesced_callers(&self, key: impl Into<Key>) -> usize {
        self.inner.flights.followers(&self.full_key(key))
    }
}
