//! Refreshes of a value that is still being served: on a background task after an early
//! (XFetch) or stale-while-revalidate read, or in the foreground for loaders that borrow.
//!
//! A refresh never makes a caller wait and never replaces a value someone else refreshed
//! meanwhile; it must never fail or block the read that started it.

use std::time::SystemTime;

use super::lock::LockLease;
use super::{LoadFuture, Loaded, Value};
use crate::cache::handle::Cache;
use crate::stampede::{Resolved, Role};
use crate::telemetry;

/// Why a value is refreshed while it is still served, as the `trigger` label of the refresh
/// metric counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefreshTrigger {
    /// XFetch decided to refresh a fresh value early.
    Early,
    /// The value is past its TTL, within `stale_while_revalidate`.
    StaleWhileRevalidate,
}

impl RefreshTrigger {
    /// The metric label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Early => "early",
            Self::StaleWhileRevalidate => "stale",
        }
    }
}

impl Cache {
    /// Refresh `full` on a background task, unless a refresh of it already runs here. Misses
    /// never wait on a background refresh (they have their own flight), so a loader that
    /// hangs here cannot hang a caller.
    pub(super) fn refresh_in_background<T, E, F>(
        &self,
        full: &str,
        options: Resolved,
        loader: F,
        seen: SystemTime,
        trigger: RefreshTrigger,
    ) where
        T: Value,
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
    pub(super) async fn refresh<T, E, F>(
        &self,
        full: &str,
        options: Resolved,
        loader: F,
        seen: SystemTime,
        trigger: RefreshTrigger,
    ) where
        T: Value,
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
        metrics::counter!(telemetry::REFRESHES, "trigger" => trigger.as_str()).increment(1);
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
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::cache::load::Fetched;
    use crate::stampede::LoadOptions;

    const MINUTE: Duration = Duration::from_secs(60);

    fn counted(
        runs: &Arc<AtomicUsize>,
        value: u32,
    ) -> impl Future<Output = Result<Fetched<u32>, ()>> {
        let runs = Arc::clone(runs);
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(Fetched::cacheable(Some(value)))
        }
    }

    /// A cache holding 1 under "k", the key's full name, its load options, and when the
    /// value was stored.
    async fn cache_with_value() -> (Cache, String, Resolved, SystemTime) {
        let cache = Cache::builder().build().expect("cache");
        let full = cache.full_key("k");
        let options = cache.resolve(LoadOptions::ttl(MINUTE)).expect("options");
        cache
            .store_value(full.clone(), &1u32, MINUTE, Duration::ZERO, Duration::ZERO)
            .await
            .expect("stored");
        let entry = cache.fetch_entry::<u32>(&full).await.expect("entry");
        (cache, full, options, entry.header.stored_at)
    }

    /// A refresh replaces the value it read, but not one that changed since it was read.
    #[tokio::test]
    async fn a_refresh_never_replaces_a_newer_value() {
        let (cache, full, options, seen) = cache_with_value().await;
        let runs = Arc::new(AtomicUsize::new(0));
        let earlier = seen.checked_sub(Duration::from_secs(1)).expect("earlier");
        cache
            .refresh::<u32, (), _>(
                &full,
                options,
                counted(&runs, 2),
                earlier,
                RefreshTrigger::Early,
            )
            .await;
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        assert_eq!(cache.get::<u32>("k").await, Some(1));
        cache
            .refresh::<u32, (), _>(
                &full,
                options,
                counted(&runs, 3),
                seen,
                RefreshTrigger::Early,
            )
            .await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get::<u32>("k").await, Some(3));
    }

    /// While someone in the fleet holds the key's lock, a refresh leaves the load to them.
    #[tokio::test]
    async fn a_refresh_defers_to_the_lock_holder() {
        let (cache, full, options, seen) = cache_with_value().await;
        let mut holder = LockLease::new(&cache, &full);
        assert!(holder.try_take(MINUTE).await.expect("take"));
        let runs = Arc::new(AtomicUsize::new(0));
        cache
            .refresh::<u32, (), _>(
                &full,
                options,
                counted(&runs, 2),
                seen,
                RefreshTrigger::StaleWhileRevalidate,
            )
            .await;
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        assert_eq!(cache.get::<u32>("k").await, Some(1));
    }
}
