//! The fleet-wide load lock: one process's lease on a key's lock (`SET NX PX` with a random
//! token), kept alive while its load runs and released by compare-and-delete.
//!
//! A lease must never release or extend a lock it does not own, and a lease dropped mid-way
//! (a cancelled caller) still releases what it may hold.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::cache::handle::Cache;
use crate::store::{Claim, KeyTtl};
use crate::telemetry::{self, RepairedKey};
use crate::token::{TOKEN_LEN, random_token};

impl Cache {
    /// The lock key of `full`: in the namespace, beside but never equal to any value key
    /// (value keys continue with `v<version>:`).
    pub(super) fn lock_key_of(&self, full: &str) -> String {
        let rest = full.strip_prefix(&self.inner.namespace).unwrap_or(full);
        format!("{}:lock{rest}", self.inner.namespace)
    }

    /// Whether a load of the store key `full` holds its fleet-wide lock now. A lock key
    /// holding what no lease writes (see [`LockLease::try_take`]) is no lock: it is removed
    /// (if unchanged) and reported as free.
    pub(super) async fn lock_is_held(&self, full: &str) -> crate::error::Result<bool> {
        let key = self.lock_key_of(full);
        let found = self
            .call("lock_check", self.inner.store.get_with_ttl(&key))
            .await?;
        let Some((held, ttl)) = found else {
            return Ok(false);
        };
        if is_lease(&held, ttl) {
            return Ok(true);
        }
        self.call("unlock", self.inner.store.compare_and_delete(&key, &held))
            .await?;
        RepairedKey::Lock.record(&key);
        Ok(false)
    }
}

/// Whether a lock key's value and TTL are what a lease writes: a token, with an expiry.
fn is_lease(value: &[u8], ttl: KeyTtl) -> bool {
    value.len() == TOKEN_LEN && matches!(ttl, KeyTtl::ExpiresIn(_))
}

/// What happened to a fleet-wide lock, as the `event` label of its metric counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LockEvent {
    /// This process took the lock.
    Acquired,
    /// Another process held it: this one waits.
    Contended,
    /// The holder renewed its lease.
    Extended,
    /// The holder found its lease taken over (it lapsed).
    Lost,
    /// A waiter gave up after `lock_max_wait`.
    TimedOut,
}

impl LockEvent {
    /// The metric label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Acquired => "acquired",
            Self::Contended => "contended",
            Self::Extended => "extended",
            Self::Lost => "lost",
            Self::TimedOut => "timed_out",
        }
    }

    /// Count it.
    pub(super) fn record(self) {
        metrics::counter!(telemetry::LOCK_EVENTS, "event" => self.as_str()).increment(1);
    }
}

/// This process's hold on a key's fleet-wide lock (once taken). Released by
/// compare-and-delete, so a lease that lapsed and was taken over is never released by us.
/// It counts as held from the moment `SET NX` is sent until an unlock is confirmed: a lock
/// whose `SET` or unlock was cut short (a timeout, a cancelled caller) is released on a
/// spawned task when the lease is dropped, which is harmless if we never held it.
pub(super) struct LockLease {
    cache: Cache,
    full: String,
    key: String,
    token: Bytes,
    held: bool,
}

/// What one attempt to extend a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// Still ours, for another TTL.
    Extended,
    /// Someone else's, or nobody's: the lease lapsed or was evicted.
    Lost,
    /// The store did not answer; the lease may still be alive.
    Unknown,
}

impl LockLease {
    pub(super) fn new(cache: &Cache, full: &str) -> Self {
        Self {
            cache: cache.clone(),
            full: full.to_owned(),
            key: cache.lock_key_of(full),
            token: Bytes::from(random_token()),
            held: false,
        }
    }

    /// Try once to take the lock. A lock key holding what no lease writes (garbage, a
    /// value without its expiry, another type) is taken over at once: its holder, if any,
    /// lost it when it was overwritten.
    pub(super) async fn try_take(&mut self, ttl: Duration) -> crate::error::Result<bool> {
        self.held = true;
        let claim = self
            .cache
            .call(
                "lock",
                self.cache
                    .inner
                    .store
                    .claim(&self.key, self.token.clone(), ttl),
            )
            .await;
        // After a timeout the claim may have landed: stay "held" so the drop releases it.
        self.held = match &claim {
            Ok(claim) => claim.is_ours(),
            Err(err) => err.is_timeout(),
        };
        if matches!(claim, Ok(Claim::Replaced)) {
            RepairedKey::Lock.record(&self.key);
        }
        if self.held && claim.is_ok() {
            LockEvent::Acquired.record();
        }
        claim.map(Claim::is_ours)
    }

    /// Extend the lease every third of its TTL while the load runs (the caller stops polling
    /// this when the load ends). Returns if the lease is lost: it lapsed (the store was
    /// unreachable for a whole lease) or was evicted, and someone else may hold it now.
    pub(super) async fn keep_alive(&self, ttl: Duration) {
        let period = ttl / 3;
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            ticks.tick().await;
            match self.renew(ttl).await {
                Renewal::Extended => LockEvent::Extended.record(),
                Renewal::Lost => {
                    LockEvent::Lost.record();
                    tracing::warn!(
                        key = self.full,
                        "the load lock lapsed or was evicted while loading; another process may load too"
                    );
                    return;
                }
                // Counted by `call`; the lease may still be alive, so keep trying.
                Renewal::Unknown => {}
            }
        }
    }

    /// Extend the lease once to `ttl`, only if this lease still owns the lock.
    async fn renew(&self, ttl: Duration) -> Renewal {
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
            Ok(true) => Renewal::Extended,
            Ok(false) => Renewal::Lost,
            Err(_) => Renewal::Unknown,
        }
    }

    /// Release the lock, then (when `announce`) send the store notice that tells waiters the
    /// load finished. In that
    /// order, so a woken waiter that finds no value (the load failed) can take the lock
    /// at once.
    pub(super) async fn release(mut self, announce: bool) {
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
            self.cache.announce_stored(&self.full).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    async fn holder(cache: &Cache, key: &str) -> Option<Bytes> {
        cache.inner.store.get(key).await.expect("memory store")
    }

    /// One lease takes the lock, a second cannot while it is held, and renewing works only
    /// for the owner.
    #[tokio::test]
    async fn a_lease_takes_and_renews_only_its_own_lock() {
        let cache = Cache::builder().build().expect("cache");
        let mut first = LockLease::new(&cache, "ns:v1:k");
        let mut second = LockLease::new(&cache, "ns:v1:k");
        assert_ne!(first.token, second.token);
        assert!(first.try_take(TTL).await.expect("take"));
        assert!(!second.try_take(TTL).await.expect("contended"));
        assert!(!second.held);
        assert_eq!(holder(&cache, &first.key).await, Some(first.token.clone()));
        assert_eq!(first.renew(TTL).await, Renewal::Extended);
        assert_eq!(second.renew(TTL).await, Renewal::Lost);
    }

    /// Releasing a lease that does not own the lock leaves the owner's lock in place; the
    /// owner's release removes it.
    #[tokio::test]
    async fn release_removes_only_what_the_lease_owns() {
        let cache = Cache::builder().build().expect("cache");
        let mut owner = LockLease::new(&cache, "ns:v1:k");
        let mut other = LockLease::new(&cache, "ns:v1:k");
        assert!(owner.try_take(TTL).await.expect("take"));
        assert!(!other.try_take(TTL).await.expect("contended"));
        let key = owner.key.clone();
        other.release(false).await;
        assert_eq!(holder(&cache, &key).await, Some(owner.token.clone()));
        owner.release(false).await;
        assert_eq!(holder(&cache, &key).await, None);
    }

    /// A lease dropped while held (a cancelled caller) releases its lock on a spawned task.
    #[tokio::test]
    async fn a_dropped_lease_releases_its_lock() {
        let cache = Cache::builder().build().expect("cache");
        let mut lease = LockLease::new(&cache, "ns:v1:k");
        assert!(lease.try_take(TTL).await.expect("take"));
        let key = lease.key.clone();
        drop(lease);
        for _ in 0..100 {
            if holder(&cache, &key).await.is_none() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the dropped lease's lock is still held");
    }

    /// Lock keys sit in the namespace beside, never on, value keys.
    #[test]
    fn lock_keys_are_beside_value_keys() {
        let cache = Cache::builder().namespace("shop").build().expect("cache");
        let full = cache.full_key("p:1");
        let lock = cache.lock_key_of(&full);
        assert!(lock.starts_with("shop:lock:"), "{lock}");
        assert_ne!(lock, full);
    }
}
