//! Waiting for the fleet-wide lock while another process holds it: take it, or wait for the
//! holder's store notice (polling, bounded and jittered, as a fallback) until the key is
//! filled, the holder's lease lapses, or `lock_max_wait` runs out.
//!
//! It only waits and reports how the wait ended; it must never run a loader.

use std::time::Duration;

use tokio::time::Instant;

use super::Value;
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
    pub(super) async fn wait_for_lock<T: Value>(
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stampede::LoadOptions;

    const MINUTE: Duration = Duration::from_secs(60);

    fn waiting_up_to(cache: &Cache, max_wait: Duration) -> Resolved {
        cache
            .resolve(LoadOptions::ttl(MINUTE).lock_max_wait(max_wait))
            .expect("valid options")
    }

    /// A free lock is taken at once.
    #[tokio::test]
    async fn a_free_lock_is_taken() {
        let cache = Cache::builder().build().expect("cache");
        let full = cache.full_key("k");
        let wait = cache
            .wait_for_lock::<u32>(&full, waiting_up_to(&cache, MINUTE), false)
            .await;
        assert!(matches!(wait, LockWait::Acquired(_)));
    }

    /// While another lease holds the lock, a value it stored ends the wait with that value.
    #[tokio::test]
    async fn a_value_the_holder_stored_ends_the_wait() {
        let cache = Cache::builder().build().expect("cache");
        let full = cache.full_key("k");
        let mut holder = LockLease::new(&cache, &full);
        assert!(holder.try_take(MINUTE).await.expect("take"));
        cache.insert("k", &7u32).await.expect("insert");
        let wait = cache
            .wait_for_lock::<u32>(&full, waiting_up_to(&cache, MINUTE), false)
            .await;
        assert!(matches!(wait, LockWait::StoredByHolder(Some(7))));
    }

    /// A holder that neither stores nor releases makes the waiter give up at `lock_max_wait`.
    #[tokio::test(start_paused = true)]
    async fn a_silent_holder_makes_the_wait_time_out() {
        let cache = Cache::builder().build().expect("cache");
        let full = cache.full_key("k");
        let mut holder = LockLease::new(&cache, &full);
        assert!(holder.try_take(MINUTE).await.expect("take"));
        let started = Instant::now();
        let wait = cache
            .wait_for_lock::<u32>(&full, waiting_up_to(&cache, Duration::from_secs(2)), false)
            .await;
        assert!(matches!(wait, LockWait::TimedOut));
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    /// When the holder releases without storing (its loader failed) while a waiter waits,
    /// the waiter takes the lock on its next attempt instead of waiting out `lock_max_wait`.
    #[tokio::test(start_paused = true)]
    async fn a_released_lock_is_taken_over() {
        let cache = Cache::builder().build().expect("cache");
        let full = cache.full_key("k");
        let mut holder = LockLease::new(&cache, &full);
        assert!(holder.try_take(MINUTE).await.expect("take"));
        let waiter = {
            let (cache, full) = (cache.clone(), full.clone());
            tokio::spawn(async move {
                cache
                    .wait_for_lock::<u32>(&full, waiting_up_to(&cache, MINUTE), false)
                    .await
            })
        };
        // Release only once the waiter found the lock held and registered for notices.
        while !cache.inner.notices.is_waited_on(&full) {
            tokio::task::yield_now().await;
        }
        holder.release(false).await;
        let wait = waiter.await.expect("waiter");
        assert!(matches!(wait, LockWait::Acquired(_)));
    }
}
