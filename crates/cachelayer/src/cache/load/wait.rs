//! Waiting for the fleet-wide lock while another process holds it: take it, or wait for the
//! holder's store notice (polling, bounded and jittered, as a fallback) until the key is
//! filled, the holder's lease lapses, or `lock_max_wait` runs out.
//!
//! It only waits and reports how the wait ended; it must never run a loader.

use std::time::Duration;

use tokio::time::Instant;

use super::Loadable;
use super::lock::{LockEvent, LockLease};
use crate::cache::handle::Cache;
use crate::stampede::Resolved;

/// First poll of a waiter whose store notice may have been lost.
const FIRST_POLL: Duration = Duration::from_millis(20);
/// Longest gap between polls: bounds how late a waiter notices a dead holder's lock expiry.
const MAX_POLL: Duration = Duration::from_millis(250);

/// How waiting for the fleet-wide lock ended.
pub(super) enum LockWait<T> {
    Acquired(LockLease),
    /// The holder stored the key meanwhile: its value.
    StoredByHolder(Option<T>),
    /// The store cannot coordinate (down, breaker open): load without the lock.
    Unavailable,
    TimedOut,
}

impl Cache {
    /// Take the fleet-wide lock, or wait until the holder fills the key, the holder's lease
    /// lapses (then take the lock), or `lock_max_wait` runs out.
    pub(super) async fn wait_for_lock<T: Loadable>(
        &self,
        full: &str,
        options: Resolved,
        absent_ok: bool,
    ) -> LockWait<T> {
        let mut lease = LockLease::new(self, full);
        let deadline = Instant::now() + options.settings.lock_max_wait;
        let mut poll = FIRST_POLL;
        let mut notices = None;
        loop {
            match lease.try_take(options.settings.lock_ttl).await {
                Ok(true) => return LockWait::Acquired(lease),
                Ok(false) => {}
                Err(_) => return LockWait::Unavailable,
            }
            if Instant::now() >= deadline {
                return LockWait::TimedOut;
            }
            if notices.is_none() {
                LockEvent::Contended.record();
                // Register before re-checking, so a notice sent in between still wakes us.
                notices = Some(self.notice_wait(full).await);
            }
            if let Some(value) = self.fresh_value::<T>(full, absent_ok).await {
                return LockWait::StoredByHolder(value);
            }
            let nap = poll
                .mul_f64(0.5 + self.inner.random.unit())
                .min(deadline.saturating_duration_since(Instant::now()));
            if let Some(notices) = notices.as_mut() {
                tokio::select! {
                    () = notices.announced() => {}
                    () = tokio::time::sleep(nap) => {}
                }
            }
            poll = (poll * 2).min(MAX_POLL);
            if let Some(value) = self.fresh_value::<T>(full, absent_ok).await {
                return LockWait::StoredByHolder(value);
            }
        }
    }
}
