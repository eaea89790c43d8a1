//! Loads with stampede protection: `get_with` and its fallible and optional variants.
//!
//! The order of events for one key:
//! 1. Read the entry. Fresh: serve it, and with the XFetch probability start one background
//!    refresh. Stale within `stale_while_revalidate`: serve it and start one background
//!    refresh. Otherwise it is a miss (a stale value is kept for `stale_if_error`).
//! 2. Join the key's in-process flight: one caller leads, the others wait for its outcome.
//! 3. The leader takes the fleet-wide lock (`SET NX PX` with a random token), or waits for the
//!    holder's fill announcement (polling as a fallback) up to `lock_max_wait`.
//! 4. Holding the lock, it re-checks the store, runs the loader while extending the lease,
//!    stores the value, announces the fill and releases the lock only if it still owns it.
//!
//! Store trouble at any step degrades to a plain load (coalesced per process); it never
//! fails the caller. The loader must be `Send + 'static` because a background refresh runs
//! the loader of the read that triggered it, on its own task, after that read has returned.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::Either;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::Cache;
use crate::codec::{Decoded, Freshness};
use crate::error::{LoadError, LoadErrorKind};
use crate::key::Key;
use crate::stampede::{LoadOptions, OnLockTimeout, Resolved, Role, lock_token};
use crate::telemetry;

/// First poll of a waiter whose fill announcement may have been lost.
const FIRST_POLL: Duration = Duration::from_millis(20);
/// Longest gap between polls: bounds how late a waiter notices a dead holder's lock expiry.
const MAX_POLL: Duration = Duration::from_millis(250);
/// Least time allowed for subscribing to fill announcements (a new connection).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed subscribe, waiters poll for this long before subscribing is tried again.
const SUBSCRIBE_BACKOFF: Duration = Duration::from_secs(5);

/// What a load gives every caller that shared it.
type Outcome<T, E> = Result<Option<T>, LoadError<E>>;

/// A load's outcome, plus the loader's panic payload for the caller whose task ran it.
pub(crate) struct Loaded<T, E> {
    outcome: Outcome<T, E>,
    panic: Option<Box<dyn Any + Send>>,
    /// False when the loader asked for its value not to be stored.
    store: bool,
    /// The value's own fresh lifetime and grace, overriding the options'.
    lifetime: Option<(Duration, Duration)>,
    /// Where the outcome came from.
    source: LoadSource,
}

/// Where the value of a load came from: what an `X-Cache` header reports.
///
/// ```
/// use std::time::Duration;
/// use cachelayer::{Cache, LoadSource};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache = Cache::builder().build().unwrap();
/// let load = || async { Ok::<_, std::io::Error>(Some(7u32)) };
/// let first = cache.try_get_optional_with_source("n", Duration::from_secs(60), load()).await;
/// assert_eq!(first.unwrap(), (Some(7), LoadSource::Loaded));
/// let second = cache.try_get_optional_with_source("n", Duration::from_secs(60), load()).await;
/// assert_eq!(second.unwrap(), (Some(7), LoadSource::Hit));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoadSource {
    /// A fresh stored value.
    Hit,
    /// A stored value past its TTL: within `stale_while_revalidate` (a refresh was
    /// started), within `stale_if_error` (the loader failed), or after a lock wait timed out.
    Stale,
    /// This caller's loader ran (or failed).
    Loaded,
    /// Another caller's load: in this process (coalesced), or in another process that held
    /// the fleet-wide lock and filled the key.
    Coalesced,
    /// The cache was bypassed (a zero TTL or invalid options): the loader ran uncached.
    Bypassed,
}

impl LoadSource {
    /// Lower-case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Loaded => "loaded",
            Self::Coalesced => "coalesced",
            Self::Bypassed => "bypassed",
        }
    }

    /// Whether the value came out of the store (fresh or stale) without any load.
    pub fn is_from_store(self) -> bool {
        matches!(self, Self::Hit | Self::Stale)
    }
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
    pub(crate) fn resume_panic(self) -> Outcome<T, E> {
        if let Some(payload) = self.panic {
            std::panic::resume_unwind(payload);
        }
        self.outcome
    }
}

/// What a loader produced: a value (or `None` for "not found"), and whether to store it.
/// Public for the `#[cached]` macro's `unless` option; not a stable API.
#[doc(hidden)]
#[derive(Debug)]
pub struct Fetched<T> {
    /// The value, or `None` for "not found".
    pub value: Option<T>,
    /// Store it (false: return it to every caller of this load, but cache nothing).
    pub store: bool,
    /// Fresh lifetime and stale grace decided by the value itself (an HTTP response's
    /// headers), instead of the load's options.
    pub(crate) lifetime: Option<(Duration, Duration)>,
}

impl<T> Fetched<T> {
    /// A loaded value (`None`: not found), stored or not.
    pub fn new(value: Option<T>, store: bool) -> Self {
        Self {
            value,
            store,
            lifetime: None,
        }
    }

    fn stored(value: Option<T>) -> Self {
        Self::new(value, true)
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

/// What the first read of a load found.
enum Lookup<T> {
    /// A value to serve now (a hit, or stale within `stale_while_revalidate`), perhaps with
    /// a refresh to start (`seen` is the stored-at of the entry served, and the trigger its
    /// metric label).
    Served {
        value: Option<T>,
        source: LoadSource,
        refresh: Option<(SystemTime, &'static str)>,
    },
    /// Nothing usable: load, keeping what is stale for `stale_if_error`.
    Miss(Option<StaleValue<T>>),
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

/// A value past its TTL that the store still holds, kept in case the load fails.
struct StaleValue<T> {
    value: Option<T>,
    by: Duration,
}

/// What a follower does with its leader's error.
enum FollowerError<T, E> {
    Return(Loaded<T, E>),
    /// The leader gave up waiting for another process's lock; this caller's policy is to load
    /// anyway.
    LoadUnlocked(Option<StaleValue<T>>),
}

/// Whether `by` falls in a stale window; a zero window is off.
fn within(by: Duration, window: Duration) -> bool {
    !window.is_zero() && by <= window
}

/// How waiting for the fleet-wide lock ended.
enum LockWait<T> {
    Acquired(LockLease),
    /// Another process filled the key meanwhile.
    Filled(Option<T>),
    /// The store cannot coordinate (down, breaker open): load without the lock.
    Unavailable,
    TimedOut,
}

/// A loader as the load machinery sees it: `None` is "not found". Background refreshes need
/// it `Send + 'static` too; loads that refresh in the foreground do not.
pub(crate) trait LoadFuture<T, E>: Future<Output = Result<Fetched<T>, E>> {}
impl<T, E, F: Future<Output = Result<Fetched<T>, E>>> LoadFuture<T, E> for F {}

/// Bounds shared by every loaded value type.
pub(crate) trait Loadable:
    Serialize + DeserializeOwned + Clone + Send + Sync + 'static
{
}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Loadable for T {}

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
    /// error instead.
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
        loader: F,
    ) -> T
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        // `get_with` cannot return an error, so it never takes the `Fail` policy.
        let options = options.into().on_lock_timeout(OnLockTimeout::Load);
        let loader =
            async move { Ok::<_, std::convert::Infallible>(Fetched::stored(Some(loader.await))) };
        match self
            .load(key.into(), options, loader, LoadMode::VALUE)
            .await
            .unwrap_panics()
        {
            Some(value) => value,
            None => unreachable!("value loads never produce a \"not found\""),
        }
    }

    /// Like [`get_with`](Self::get_with) for fallible loaders. A loader error is shared
    /// (as an `Arc`) with every caller of the same load and never cached; within
    /// `stale_if_error` the stale value is returned instead. A loader panic is contained and
    /// returned as [`LoadErrorKind::Panicked`](crate::LoadErrorKind::Panicked).
    pub async fn try_get_with<T, E, F>(
        &self,
        key: impl Into<Key>,
        options: impl Into<LoadOptions>,
        loader: F,
    ) -> Result<T, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let loader = async move { loader.await.map(|value| Fetched::stored(Some(value))) };
        match self
            .load(key.into(), options.into(), loader, LoadMode::VALUE)
            .await
            .outcome
        {
            Ok(Some(value)) => Ok(value),
            Err(err) => Err(err),
            Ok(None) => unreachable!("value loads never produce a \"not found\""),
        }
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
    /// let missing: Option<String> = cache.get_optional_with("product:404", options, async { None }).await;
    /// assert_eq!(missing, None);
    /// // Served from the cache for 5 s: this loader does not run.
    /// let again: Option<String> = cache
    ///     .get_optional_with("product:404", options, async { Some("never".to_owned()) })
    ///     .await;
    /// assert_eq!(again, None);
    /// # }
    /// ```
    pub async fn get_optional_with<T, F>(
        &self,
        key: impl Into<Key>,
        options: impl Into<LoadOptions>,
        loader: F,
    ) -> Option<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: Future<Output = Option<T>> + Send + 'static,
    {
        let options = options.into().on_lock_timeout(OnLockTimeout::Load);
        let loader =
            async move { Ok::<_, std::convert::Infallible>(Fetched::stored(loader.await)) };
        self.load(key.into(), options, loader, LoadMode::OPTIONAL)
            .await
            .unwrap_panics()
    }

    /// The fallible form of [`get_optional_with`](Self::get_optional_with).
    pub async fn try_get_optional_with<T, E, F>(
        &self,
        key: impl Into<Key>,
        options: impl Into<LoadOptions>,
        loader: F,
    ) -> Result<Option<T>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let loader = async move { loader.await.map(Fetched::stored) };
        self.load(key.into(), options.into(), loader, LoadMode::OPTIONAL)
            .await
            .outcome
    }

    /// [`try_get_optional_with`](Self::try_get_optional_with), also saying where the value
    /// came from ([`LoadSource`]), for responses that report it (`X-Cache`). A loader error
    /// comes back as an error whatever its source.
    pub async fn try_get_optional_with_source<T, E, F>(
        &self,
        key: impl Into<Key>,
        options: impl Into<LoadOptions>,
        loader: F,
    ) -> Result<(Option<T>, LoadSource), LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let loader = async move { loader.await.map(Fetched::stored) };
        let loaded = self
            .load(key.into(), options.into(), loader, LoadMode::OPTIONAL)
            .await;
        loaded.outcome.map(|value| (value, loaded.source))
    }

    /// The store key of `key`'s fleet-wide load lock (`<namespace>:lock:v<version>:<key>`),
    /// for operators asking who is loading what. Its value is the holder's random token.
    pub fn lock_key(&self, key: impl Into<Key>) -> String {
        self.lock_key_of(&self.full_key(key))
    }

    /// How many callers in this process are waiting on another caller's load of `key`
    /// right now: a diagnostic of coalescing.
    pub fn coalesced_callers(&self, key: impl Into<Key>) -> usize {
        self.inner.flights.followers(&self.full_key(key))
    }

    /// A load whose loader can run on its own task: refreshes run in the background.
    async fn load<T, E, F>(
        &self,
        key: Key,
        options: LoadOptions,
        loader: F,
        mode: LoadMode,
    ) -> Loaded<T, E>
    where
        T: Loadable,
        E: Send + Sync + 'static,
        F: LoadFuture<T, E> + Send + 'static,
    {
        let Some(options) = self.resolve(options) else {
            return bypass(loader).await;
        };
        let full = self.full_key(key);
        match self.first_read::<T>(&full, options, mode).await {
            Lookup::Served {
                value,
                source,
                refresh,
            } => {
                if let Some((seen, trigger)) = refresh {
                    self.refresh_in_background(&full, options, loader, seen, trigger);
                }
                Loaded::value(value).from(source)
            }
            Lookup::Miss(stale) => self.load_missing(&full, options, loader, stale, mode).await,
        }
    }

    /// A load whose loader borrows from its caller (the `#[cached]` macro's case): a
    /// refresh runs in the foreground of the read that starts it, which then returns the
    /// value it read; other readers keep being served at once meanwhile.
    pub(crate) async fn load_borrowed<T, E, F>(
        &self,
        key: Key,
        options: LoadOptions,
        loader: F,
        mode: LoadMode,
    ) -> Loaded<T, E>
    where
        T: Loadable,
        E: Send + Sync + 'static,
        F: LoadFuture<T, E>,
    {
        let Some(options) = self.resolve(options) else {
            return bypass(loader).await;
        };
        let full = self.full_key(key);
        match self.first_read::<T>(&full, options, mode).await {
            Lookup::Served {
                value,
                source,
                refresh,
            } => {
                if let Some((seen, trigger)) = refresh
                    && let Role::Leader(_refreshing) = self.inner.refreshes.join(&full)
                {
                    self.refresh::<T, E, F>(&full, options, loader, seen, trigger)
                        .await;
                }
                Loaded::value(value).from(source)
            }
            Lookup::Miss(stale) => self.load_missing(&full, options, loader, stale, mode).await,
        }
    }

    /// A miss that its caller has already established (it read and judged the entry itself,
    /// as the HTTP layer does): coalesce, take the lock, load and store.
    #[cfg(feature = "http")]
    pub(crate) async fn fill<T, E, F>(
        &self,
        full: &str,
        options: LoadOptions,
        loader: F,
        mode: LoadMode,
    ) -> Loaded<T, E>
    where
        T: Loadable,
        E: Send + Sync + 'static,
        F: LoadFuture<T, E>,
    {
        let Some(options) = self.resolve(options) else {
            return bypass(loader).await;
        };
        self.load_missing(full, options, loader, None, mode).await
    }

    /// The options of one load, or `None` when it must bypass the cache (a zero TTL, or
    /// invalid options, which are logged).
    fn resolve(&self, options: LoadOptions) -> Option<Resolved> {
        match options.resolve(&self.inner.stampede) {
            Ok(options) if options.ttl.is_zero() => None,
            Ok(options) => Some(options),
            Err(err) => {
                tracing::warn!(error = %err, "invalid load options; loading without the cache");
                None
            }
        }
    }

    /// The first read: serve a fresh value (perhaps asking for an early refresh), a stale one
    /// within `stale_while_revalidate` (asking for a refresh), or report a miss.
    async fn first_read<T: Loadable>(
        &self,
        full: &str,
        options: Resolved,
        mode: LoadMode,
    ) -> Lookup<T> {
        let Some(entry) = self.fetch_entry::<T>(full).await else {
            metrics::counter!(telemetry::MISSES).increment(1);
            return Lookup::Miss(None);
        };
        if entry.value.is_none() && !mode.absent_ok {
            metrics::counter!(telemetry::MISSES).increment(1);
            return Lookup::Miss(None);
        }
        let seen = entry.header.stored_at;
        match entry.header.freshness(SystemTime::now()) {
            Freshness::Fresh { left } => {
                count_served(&entry);
                let early = self.inner.early.should_refresh(
                    left,
                    entry.header.compute_time,
                    options.settings.early_refresh_beta,
                );
                Lookup::Served {
                    value: entry.value,
                    source: LoadSource::Hit,
                    refresh: early.then_some((seen, "early")),
                }
            }
            Freshness::Stale { by } if within(by, options.settings.stale_while_revalidate) => {
                count_served(&entry);
                metrics::counter!(telemetry::STALE_SERVED, "reason" => "revalidate").increment(1);
                Lookup::Served {
                    value: entry.value,
                    source: LoadSource::Stale,
                    refresh: Some((seen, "stale")),
                }
            }
            Freshness::Stale { by } => {
                metrics::counter!(telemetry::MISSES).increment(1);
                Lookup::Miss(Some(StaleValue {
                    value: entry.value,
                    by,
                }))
            }
        }
    }

    /// A miss: join the key's flight, and lead it or wait for its leader.
    async fn load_missing<T, E, F>(
        &self,
        full: &str,
        options: Resolved,
        loader: F,
        stale: Option<StaleValue<T>>,
        mode: LoadMode,
    ) -> Loaded<T, E>
    where
        T: Loadable,
        E: Send + Sync + 'static,
        F: LoadFuture<T, E>,
    {
        let leader = loop {
            match self.inner.flights.join(full) {
                Role::Leader(leader) => break leader,
                Role::Follower(follower) => {
                    metrics::counter!(telemetry::COALESCED_WAITS).increment(1);
                    let shared = follower.outcome().await;
                    let shared = shared
                        .as_deref()
                        .and_then(|any| any.downcast_ref::<(Outcome<T, E>, LoadSource)>());
                    let (outcome, source) = match shared {
                        Some((outcome, source)) => (Some(outcome), *source),
                        None => (None, LoadSource::Coalesced),
                    };
                    match outcome {
                        Some(Ok(value)) if value.is_some() || mode.absent_ok => {
                            // A stale value stays stale for every caller it is shared with.
                            let source = match source {
                                LoadSource::Stale => LoadSource::Stale,
                                _ => LoadSource::Coalesced,
                            };
                            return Loaded::value(value.clone()).from(source);
                        }
                        // This caller cannot take a shared loader error out of its `Arc`
                        // (another kind of caller shared it): it loads itself.
                        Some(Err(err))
                            if !mode.share_errors && err.kind() == LoadErrorKind::Loader => {}
                        Some(Err(err)) => match self.follower_error(err, stale, options) {
                            FollowerError::Return(loaded) => return loaded,
                            FollowerError::LoadUnlocked(stale) => {
                                return self
                                    .load_and_store(full, options, loader, None, stale)
                                    .await;
                            }
                        },
                        // The leader was dropped, or loaded something this caller cannot
                        // use: join again, and lead if nobody else does.
                        _ => {}
                    }
                }
            }
        };
        let (loaded, lease) = self
            .lead(full, options, loader, stale, mode.absent_ok)
            .await;
        let withheld = !mode.share_errors
            && loaded
                .outcome
                .as_ref()
                .is_err_and(|err| err.kind() == LoadErrorKind::Loader);
        if withheld {
            // Followers cannot use it, and must not hold the only other reference to it:
            // they see an outcome of another type and load themselves.
            leader.finish(Arc::new(()));
        } else {
            leader.finish(Arc::new((loaded.outcome.clone(), loaded.source)));
        }
        // Only now, with this process's flight closed: a writer that waits for the lock to
        // be free (to drop what this load stored) must not be followed by a caller that
        // joins the flight and gets the value it dropped.
        if let Some(lease) = lease {
            lease.release(true).await;
        }
        loaded
    }

    /// A follower's answer to its leader's error, by its own options (callers of one key may
    /// differ): its own stale value within its `stale_if_error`, or on a lock timeout, its
    /// own policy.
    fn follower_error<T, E>(
        &self,
        err: &LoadError<E>,
        stale: Option<StaleValue<T>>,
        options: Resolved,
    ) -> FollowerError<T, E> {
        let timed_out = err.kind() == LoadErrorKind::LockWaitTimedOut;
        match stale {
            Some(stale) if timed_out => {
                metrics::counter!(telemetry::STALE_SERVED, "reason" => "lock_timeout").increment(1);
                FollowerError::Return(Loaded::value(stale.value).from(LoadSource::Stale))
            }
            Some(stale) if within(stale.by, options.settings.stale_if_error) => {
                metrics::counter!(telemetry::STALE_SERVED, "reason" => "error").increment(1);
                FollowerError::Return(Loaded::value(stale.value).from(LoadSource::Stale))
            }
            stale if timed_out && options.settings.on_lock_timeout == OnLockTimeout::Load => {
                FollowerError::LoadUnlocked(stale)
            }
            _ => FollowerError::Return(Loaded::error(err.clone())),
        }
    }

    /// The in-process leader's part: the fleet-wide lock, then the load.
    async fn lead<T, E, F>(
        &self,
        full: &str,
        options: Resolved,
        loader: F,
        stale: Option<StaleValue<T>>,
        absent_ok: bool,
    ) -> (Loaded<T, E>, Option<LockLease>)
    where
        T: Loadable,
        E: Send + Sync + 'static,
        F: LoadFuture<T, E>,
    {
        if !options.settings.lock {
            let loaded = self
                .load_and_store(full, options, loader, None, stale)
                .await;
            return (loaded, None);
        }
        match self.wait_for_lock::<T>(full, options, absent_ok).await {
            LockWait::Acquired(lease) => {
                // Someone may have filled the key between our miss and our win.
                if let Some(value) = self.fresh_value::<T>(full, absent_ok).await {
                    lease.release(false).await;
                    return (Loaded::value(value).from(LoadSource::Coalesced), None);
                }
                let loaded = self
                    .load_and_store(full, options, loader, Some(&lease), stale)
                    .await;
                (loaded, Some(lease))
            }
            LockWait::Filled(value) => (Loaded::value(value).from(LoadSource::Coalesced), None),
            LockWait::Unavailable => {
                let loaded = self
                    .load_and_store(full, options, loader, None, stale)
                    .await;
                (loaded, None)
            }
            LockWait::TimedOut => {
                lock_event("timed_out");
                let waited = options.settings.lock_max_wait;
                tracing::warn!(
                    key = full,
                    waited_ms = waited.as_millis() as u64,
                    "another process held the load lock past lock_max_wait"
                );
                if let Some(stale) = stale {
                    metrics::counter!(telemetry::STALE_SERVED, "reason" => "lock_timeout")
                        .increment(1);
                    return (Loaded::value(stale.value).from(LoadSource::Stale), None);
                }
                let loaded = match options.settings.on_lock_timeout {
                    OnLockTimeout::Load => {
                        self.load_and_store(full, options, loader, None, None).await
                    }
                    OnLockTimeout::Fail => Loaded::error(LoadError::lock_wait_timed_out(waited)),
                };
                (loaded, None)
            }
        }
    }

    /// Take the fleet-wide lock, or wait until the holder fills the key, the holder's lease
    /// lapses (then take the lock), or `lock_max_wait` runs out.
    async fn wait_for_lock<T: Loadable>(
        &self,
        full: &str,
        options: Resolved,
        absent_ok: bool,
    ) -> LockWait<T> {
        let mut lease = LockLease::new(self, full);
        let deadline = Instant::now() + options.settings.lock_max_wait;
        let mut poll = FIRST_POLL;
        let mut fills = None;
        loop {
            match lease.try_take(options.settings.lock_ttl).await {
                Ok(true) => return LockWait::Acquired(lease),
                Ok(false) => {}
                Err(_) => return LockWait::Unavailable,
            }
            if Instant::now() >= deadline {
                return LockWait::TimedOut;
            }
            if fills.is_none() {
                lock_event("contended");
                // Register before re-checking, so a fill announced in between still wakes us.
                fills = Some(self.fill_wait(full).await);
            }
            if let Some(value) = self.fresh_value::<T>(full, absent_ok).await {
                return LockWait::Filled(value);
            }
            let nap = poll
                .mul_f64(0.5 + self.inner.early.unit())
                .min(deadline.saturating_duration_since(Instant::now()));
            if let Some(fills) = fills.as_mut() {
                tokio::select! {
                    () = fills.filled() => {}
                    () = tokio::time::sleep(nap) => {}
                }
            }
            poll = (poll * 2).min(MAX_POLL);
            if let Some(value) = self.fresh_value::<T>(full, absent_ok).await {
                return LockWait::Filled(value);
            }
        }
    }

    /// Run the loader (extending the lease meanwhile) and store what it returns; the caller
    /// releases the lock (announcing the fill). A failed load serves the stale value within
    /// `stale_if_error`.
    async fn load_and_store<T, E, F>(
        &self,
        full: &str,
        options: Resolved,
        loader: F,
        lease: Option<&LockLease>,
        stale: Option<StaleValue<T>>,
    ) -> Loaded<T, E>
    where
        T: Loadable,
        E: Send + Sync + 'static,
        F: LoadFuture<T, E>,
    {
        let (loaded, compute_time) = match lease {
            Some(lease) => {
                let keep_alive = lease.keep_alive(options.settings.lock_ttl);
                match futures::future::select(Box::pin(run_loader(loader)), Box::pin(keep_alive))
                    .await
                {
                    Either::Left((loaded, _)) => loaded,
                    Either::Right(((), load)) => load.await,
                }
            }
            None => run_loader(loader).await,
        };
        match loaded.outcome {
            Ok(value) => {
                if loaded.store {
                    let options = match loaded.lifetime {
                        Some((fresh, grace)) => options.with_lifetime(fresh, grace),
                        None => options,
                    };
                    self.store_loaded(full, value.as_ref(), options, compute_time)
                        .await;
                }
                Loaded::value(value)
            }
            Err(err) => match stale {
                Some(stale) if within(stale.by, options.settings.stale_if_error) => {
                    tracing::warn!(key = full, error = ?err.kind(), "load failed; serving the stale value (stale-if-error)");
                    metrics::counter!(telemetry::STALE_SERVED, "reason" => "error").increment(1);
                    Loaded::value(stale.value).from(LoadSource::Stale)
                }
                _ => Loaded {
                    outcome: Err(err),
                    panic: loaded.panic,
                    store: false,
                    lifetime: None,
                    source: LoadSource::Loaded,
                },
            },
        }
    }

    /// Refresh `full` on a background task, unless a refresh of it already runs here. Misses
    /// never wait on a background refresh (they have their own flight), so a loader that
    /// hangs here cannot hang a caller.
    fn refresh_in_background<T, E, F>(
        &self,
        full: &str,
        options: Resolved,
        loader: F,
        seen: SystemTime,
        trigger: &'static str,
    ) where
        T: Loadable,
        E: Send + Sync + 'static,
        F: LoadFuture<T, E> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Role::Leader(refreshing) = self.inner.refreshes.join(full) else {
            return;
        };
        let cache = self.clone();
        let full = full.to_owned();
        runtime.spawn(async move {
            let _refreshing = refreshing;
            cache
                .refresh::<T, E, F>(&full, options, loader, seen, trigger)
                .await;
        });
    }

    /// Reload `full` under the lock, unless someone in the fleet is loading it already or
    /// it changed since `seen`. Failures are logged; the current value stays.
    async fn refresh<T, E, F>(
        &self,
        full: &str,
        options: Resolved,
        loader: F,
        seen: SystemTime,
        trigger: &'static str,
    ) where
        T: Loadable,
        E: Send + Sync + 'static,
        F: LoadFuture<T, E>,
    {
        let mut lease = None;
        if options.settings.lock {
            let mut candidate = LockLease::new(self, full);
            // Not taken: someone in the fleet is loading it already. Failed: the store is
            // unreachable, so a refreshed value could not be stored anyway.
            if !matches!(
                candidate.try_take(options.settings.lock_ttl).await,
                Ok(true)
            ) {
                return;
            }
            lease = Some(candidate);
        }
        // Someone may have refreshed it between our read and now. Inequality, not "newer":
        // the writer's clock may be behind ours.
        let current = self.fetch_entry::<T>(full).await;
        if current.is_some_and(|entry| entry.header.stored_at != seen) {
            if let Some(lease) = lease {
                lease.release(false).await;
            }
            return;
        }
        metrics::counter!(telemetry::REFRESHES, "trigger" => trigger).increment(1);
        let loaded: Loaded<T, E> = self
            .load_and_store(full, options, loader, lease.as_ref(), None)
            .await;
        if let Some(lease) = lease {
            lease.release(true).await;
        }
        if let Err(err) = &loaded.outcome {
            tracing::warn!(key = full, error = ?err.kind(), "refresh failed; the current value is kept");
        }
    }

    /// The value under `full` if the store holds a fresh, usable one.
    async fn fresh_value<T: Loadable>(&self, full: &str, absent_ok: bool) -> Option<Option<T>> {
        let entry = self.fetch_entry::<T>(full).await?;
        let usable = entry.value.is_some() || absent_ok;
        let fresh = matches!(
            entry.header.freshness(SystemTime::now()),
            Freshness::Fresh { .. }
        );
        (usable && fresh).then_some(entry.value)
    }

    /// Store a loaded value (or, with a negative TTL, a "not found") for the options' TTL
    /// plus their stale grace.
    async fn store_loaded<T: Serialize>(
        &self,
        full: &str,
        value: Option<&T>,
        options: Resolved,
        compute_time: Duration,
    ) {
        let result = match value {
            Some(value) => self
                .store_value(
                    full.to_owned(),
                    value,
                    options.ttl,
                    options.grace(),
                    compute_time,
                )
                .await
                .map(drop),
            None => match options.settings.negative_ttl {
                Some(ttl) => self.store_absent(full.to_owned(), ttl, compute_time).await,
                None => Ok(()),
            },
        };
        if let Err(err) = result {
            tracing::warn!(key = full, error = %err, "loaded value returned but not cached");
        }
    }

    /// Wait registration for fills of `full`, starting the cache's fill listener if needed.
    /// Without a listener (subscribing failed recently) waiters poll.
    async fn fill_wait(&self, full: &str) -> crate::stampede::FillWait {
        let wait = self.inner.fills.register(full);
        let backing_off = self
            .inner
            .fill_listener_failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|failed| failed.elapsed() < SUBSCRIBE_BACKOFF);
        if !backing_off
            && let Err(err) = self
                .inner
                .fill_listener
                .get_or_try_init(|| self.start_fill_listener())
                .await
        {
            tracing::warn!(error = %err, "cannot subscribe to fill announcements; waiters poll instead");
            *self
                .inner
                .fill_listener_failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        }
        wait
    }

    /// Subscribe to fill announcements and forward them to this cache's waiters until the
    /// cache is dropped. Not through the breaker: a subscription opens its own connection,
    /// which may take longer than a command, and its failure says little about the store.
    async fn start_fill_listener(&self) -> crate::Result<tokio::sync::oneshot::Sender<()>> {
        let channel = self.fill_channel();
        let budget = self.inner.command_timeout.max(SUBSCRIBE_TIMEOUT);
        let mut subscription =
            match tokio::time::timeout(budget, self.inner.store.subscribe(&channel)).await {
                Ok(subscription) => subscription?,
                Err(_) => return Err(super::timeout_error()),
            };
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let fills = Arc::downgrade(&self.inner.fills);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = subscription.recv() => message,
                    _ = &mut stopped => None,
                };
                let (Some(message), Some(fills)) = (message, fills.upgrade()) else {
                    return;
                };
                if let Ok(key) = std::str::from_utf8(&message) {
                    fills.notify(key);
                }
            }
        });
        Ok(stop)
    }

    /// Announce that `full`'s load finished, to waiters in every process.
    async fn announce_fill(&self, full: &str) {
        let message = Bytes::copy_from_slice(full.as_bytes());
        let _ = self
            .call(
                "publish",
                self.inner.store.publish(&self.fill_channel(), message),
            )
            .await;
    }

    fn fill_channel(&self) -> String {
        format!("{}:fills", self.inner.namespace)
    }

    /// The lock key of `full`: in the namespace, beside but never equal to any value key
    /// (value keys continue with `v<version>:`).
    fn lock_key_of(&self, full: &str) -> String {
        let rest = full.strip_prefix(&self.inner.namespace).unwrap_or(full);
        format!("{}:lock{rest}", self.inner.namespace)
    }
}

/// A load around the cache (zero TTL, invalid options): the loader alone.
async fn bypass<T, E, F>(loader: F) -> Loaded<T, E>
where
    F: Future<Output = Result<Fetched<T>, E>>,
{
    run_loader(loader).await.0.from(LoadSource::Bypassed)
}

/// Run a loader, containing a panic, and time it.
async fn run_loader<T, E, F>(loader: F) -> (Loaded<T, E>, Duration)
where
    F: Future<Output = Result<Fetched<T>, E>>,
{
    metrics::counter!(telemetry::LOADER_CALLS).increment(1);
    let started = Instant::now();
    let result = AssertUnwindSafe(loader).catch_unwind().await;
    let elapsed = started.elapsed();
    metrics::histogram!(telemetry::LOADER_DURATION).record(elapsed.as_secs_f64());
    let loaded = match result {
        Ok(Ok(fetched)) => Loaded {
            store: fetched.store,
            lifetime: fetched.lifetime,
            ..Loaded::value(fetched.value)
        },
        Ok(Err(err)) => {
            metrics::counter!(telemetry::LOADER_ERRORS, "kind" => "error").increment(1);
            Loaded::error(LoadError::loader(err))
        }
        Err(payload) => {
            metrics::counter!(telemetry::LOADER_ERRORS, "kind" => "panic").increment(1);
            let message = panic_message(payload.as_ref());
            tracing::error!(panic = %message, "a cache loader panicked; the panic was contained");
            Loaded {
                outcome: Err(LoadError::panicked(message)),
                panic: Some(payload),
                store: false,
                lifetime: None,
                source: LoadSource::Loaded,
            }
        }
    };
    (loaded, elapsed)
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

fn count_served<T>(entry: &Decoded<Option<T>>) {
    metrics::counter!(telemetry::HITS).increment(1);
    if entry.value.is_none() {
        metrics::counter!(telemetry::NEGATIVE_HITS).increment(1);
    }
}

fn lock_event(event: &'static str) {
    metrics::counter!(telemetry::LOCK_EVENTS, "event" => event).increment(1);
}

/// This process's hold on a key's fleet-wide lock (once taken). Released by
/// compare-and-delete, so a lease that lapsed and was taken over is never released by us.
/// It counts as held from the moment `SET NX` is sent until an unlock is confirmed: a lock
/// whose `SET` or unlock was cut short (a timeout, a cancelled caller) is released on a
/// spawned task when the lease is dropped, which is harmless if we never held it.
struct LockLease {
    cache: Cache,
    full: String,
    key: String,
    token: Bytes,
    held: bool,
}

impl LockLease {
    fn new(cache: &Cache, full: &str) -> Self {
        Self {
            cache: cache.clone(),
            full: full.to_owned(),
            key: cache.lock_key_of(full),
            token: Bytes::from(lock_token()),
            held: false,
        }
    }

    /// Try once to take the lock (`SET NX PX`).
    async fn try_take(&mut self, ttl: Duration) -> crate::Result<bool> {
        self.held = true;
        let taken = self
            .cache
            .call(
                "lock",
                self.cache
                    .inner
                    .store
                    .set_if_absent(&self.key, self.token.clone(), ttl),
            )
            .await;
        // After a timeout the SET may have landed: stay "held" so the drop releases it.
        self.held = match &taken {
            Ok(taken) => *taken,
            Err(err) => err.is_timeout(),
        };
        if matches!(taken, Ok(true)) {
            lock_event("acquired");
        }
        taken
    }

    /// Extend the lease every third of its TTL while the load runs (the caller stops polling
    /// this when the load ends). Returns if the lease is lost: it lapsed (the store was
    /// unreachable for a whole lease) or was evicted, and someone else may hold it now.
    async fn keep_alive(&self, ttl: Duration) {
        let period = ttl / 3;
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            ticks.tick().await;
            let extended = self
                .cache
                .call(
                    "lock_extend",
                    self.cache
                        .inner
                        .store
                        .compare_and_expire(&self.key, &self.token, ttl),
                )
                .await;
            match extended {
                Ok(true) => lock_event("extended"),
                Ok(false) => {
                    lock_event("lost");
                    tracing::warn!(
                        key = self.full,
                        "the load lock lapsed or was evicted while loading; another process may load too"
                    );
                    return;
                }
                // Counted by `call`; the lease may still be alive, so keep trying.
                Err(_) => {}
            }
        }
    }

    /// Release the lock, then (when `announce`) tell waiters the load finished. In that
    /// order, so a woken waiter that finds no value (the load failed) can take the lock
    /// at once.
    async fn release(mut self, announce: bool) {
        let released = self
            .cache
            .call(
                "unlock",
                self.cache
                    .inner
                    .store
                    .compare_and_delete(&self.key, &self.token),
            )
            .await;
        if released.is_ok() {
            self.held = false;
        }
        if announce {
            self.cache.announce_fill(&self.full).await;
        }
    }
}

impl Drop for LockLease {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // The lease lapses by its TTL.
        };
        let cache = self.cache.clone();
        let key = std::mem::take(&mut self.key);
        let token = self.token.clone();
        runtime.spawn(async move {
            let _ = cache
                .call("unlock", cache.inner.store.compare_and_delete(&key, &token))
                .await;
        });
    }
}
