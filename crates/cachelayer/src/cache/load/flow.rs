//! The request flow of one load: the first read, leading or following the key's in-process
//! flight, the leader's fleet-wide lock, and loading and storing the value.
//!
//! It decides the order of store calls; it must never call a store except through the
//! cache (`call`, `fetch_entry`, `store_value`), so every call passes the breaker and the
//! command timeout.

use std::sync::Arc;
use std::time::SystemTime;

use super::fill::StaleValue;
use super::lock::{LockEvent, LockLease};
use super::refresh::RefreshTrigger;
use super::run::bypass;
use super::wait::LockWait;
use super::{LoadFuture, LoadMode, LoadResult, LoadSource, Loaded, Value};
use crate::cache::handle::Cache;
use crate::codec::{Decoded, Freshness};
use crate::error::{LoadError, LoadErrorKind};
use crate::key::Key;
use crate::stampede::{LoadOptions, OnLockTimeout, Resolved, Role, should_refresh_early, within};
use crate::telemetry;

/// What the first read of a load found.
enum Lookup<T> {
    /// A value to serve now (a hit, or stale within `stale_while_revalidate`), perhaps with
    /// a refresh to start (`seen` is the stored-at of the entry served, and the trigger its
    /// metric label).
    Served {
        value: Option<T>,
        source: LoadSource,
        refresh: Option<(SystemTime, RefreshTrigger)>,
    },
    /// Nothing usable: load, keeping what is stale for `stale_if_error`.
    Miss(Option<StaleValue<T>>),
}

/// What a follower does with its leader's error.
enum FollowerError<T, E> {
    Return(Loaded<T, E>),
    /// The leader gave up waiting for another process's lock; this caller's policy is to load
    /// anyway.
    LoadUnlocked(Option<StaleValue<T>>),
}

impl Cache {
    /// A load whose loader can run on its own task: refreshes run in the background.
    pub(super) async fn load<T, E, F>(
        &self,
        key: Key,
        options: LoadOptions,
        loader: F,
        mode: LoadMode,
    ) -> Loaded<T, E>
    where
        T: Value,
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
            // Boxed: a hit's future then holds a pointer, not the whole miss machinery, so
            // creating and moving it per read costs little.
            Lookup::Miss(stale) => {
                Box::pin(self.load_missing(&full, options, loader, stale, mode)).await
            }
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
        T: Value,
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
                    Box::pin(self.refresh::<T, E, F>(&full, options, loader, seen, trigger)).await;
                }
                Loaded::value(value).from(source)
            }
            Lookup::Miss(stale) => {
                Box::pin(self.load_missing(&full, options, loader, stale, mode)).await
            }
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
        T: Value,
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
    pub(super) fn resolve(&self, options: LoadOptions) -> Option<Resolved> {
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
    async fn first_read<T: Value>(
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
                count_served(self, &entry);
                let early = should_refresh_early(
                    left,
                    entry.header.compute_time,
                    options.settings.early_refresh_beta,
                    &self.inner.random,
                );
                Lookup::Served {
                    value: entry.value,
                    source: LoadSource::Hit,
                    refresh: early.then_some((seen, RefreshTrigger::Early)),
                }
            }
            Freshness::Stale { by } if within(by, options.settings.stale_while_revalidate) => {
                count_served(self, &entry);
                metrics::counter!(telemetry::STALE_SERVED, "reason" => "revalidate").increment(1);
                Lookup::Served {
                    value: entry.value,
                    source: LoadSource::Stale,
                    refresh: Some((seen, RefreshTrigger::StaleWhileRevalidate)),
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
        T: Value,
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
                        .and_then(|any| any.downcast_ref::<(LoadResult<T, E>, LoadSource)>());
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
        T: Value,
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
            LockWait::StoredByHolder(value) => {
                (Loaded::value(value).from(LoadSource::Coalesced), None)
            }
            LockWait::Unavailable => {
                let loaded = self
                    .load_and_store(full, options, loader, None, stale)
                    .await;
                (loaded, None)
            }
            LockWait::TimedOut => {
                LockEvent::TimedOut.record();
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
}

fn count_served<T>(cache: &Cache, entry: &Decoded<Option<T>>) {
    cache.read_metrics().hits.increment(1);
    if entry.value.is_none() {
        metrics::counter!(telemetry::NEGATIVE_HITS).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn options(cache: &Cache, load: LoadOptions) -> Resolved {
        cache.resolve(load).expect("valid options")
    }

    fn stale(by: Duration) -> Option<StaleValue<u32>> {
        Some(StaleValue { value: Some(1), by })
    }

    fn served(answer: FollowerError<u32, ()>) -> Option<(Option<u32>, LoadSource)> {
        match answer {
            FollowerError::Return(loaded) => loaded.outcome.ok().map(|v| (v, loaded.source)),
            FollowerError::LoadUnlocked(_) => None,
        }
    }

    /// A follower serves its own stale value on its leader's lock timeout, and on a loader
    /// error only within its own `stale_if_error`.
    #[test]
    fn followers_fall_back_to_their_own_stale_value() {
        let cache = Cache::builder().build().expect("cache");
        let timed_out = LoadError::<()>::lock_wait_timed_out(MINUTE);
        let failed = LoadError::loader(());
        let plain = options(&cache, LoadOptions::ttl(MINUTE));
        let tolerant = options(&cache, LoadOptions::ttl(MINUTE).stale_if_error(MINUTE));
        let stale_hit = Some((Some(1), LoadSource::Stale));
        let second = Duration::from_secs(1);
        assert_eq!(
            served(cache.follower_error(&timed_out, stale(second), plain)),
            stale_hit
        );
        assert_eq!(
            served(cache.follower_error(&failed, stale(second), tolerant)),
            stale_hit
        );
        assert_eq!(
            served(cache.follower_error(&failed, stale(second), plain)),
            None
        );
        let too_old = stale(MINUTE * 2);
        assert_eq!(
            served(cache.follower_error(&failed, too_old, tolerant)),
            None
        );
    }

    /// Without a stale value, a lock timeout makes a follower load by its own policy; a
    /// loader error is shared as it is.
    #[test]
    fn followers_apply_their_own_lock_timeout_policy() {
        let cache = Cache::builder().build().expect("cache");
        let timed_out = LoadError::<()>::lock_wait_timed_out(MINUTE);
        let load = options(&cache, LoadOptions::ttl(MINUTE));
        let fail = options(
            &cache,
            LoadOptions::ttl(MINUTE).on_lock_timeout(OnLockTimeout::Fail),
        );
        assert!(matches!(
            cache.follower_error::<u32, ()>(&timed_out, None, load),
            FollowerError::LoadUnlocked(None)
        ));
        let FollowerError::Return(loaded) = cache.follower_error::<u32, ()>(&timed_out, None, fail)
        else {
            panic!("a Fail policy returns the error");
        };
        let err = loaded.outcome.expect_err("timed out");
        assert_eq!(err.kind(), LoadErrorKind::LockWaitTimedOut);
        let FollowerError::Return(loaded) =
            cache.follower_error::<u32, ()>(&LoadError::loader(()), None, load)
        else {
            panic!("a loader error is returned");
        };
        assert_eq!(
            loaded.outcome.expect_err("shared").kind(),
            LoadErrorKind::Loader
        );
    }
}
