//! Store notices over the store's pub/sub: announcing that a key's load finished (its value
//! stored, or the load given up), and the one subscription per cache that wakes this
//! process's waiters.
//!
//! Delivery is at most once, so waiters never rely on it alone (they also poll). It must
//! never pass the breaker for subscribing: a subscription's failure says little about the
//! store's health.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::cache::handle::Cache;

/// Least time allowed for subscribing to store notices (a new connection).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed subscribe, waiters poll for this long before subscribing is tried again.
const SUBSCRIBE_BACKOFF: Duration = Duration::from_secs(5);

impl Cache {
    /// Wait registration for store notices of `full`, starting the cache's notice listener
    /// if needed.
    /// Without a listener (subscribing failed recently) waiters poll.
    pub(super) async fn notice_wait(&self, full: &str) -> crate::stampede::NoticeWait {
        let wait = self.inner.notices.register(full);
        let backing_off = self
            .inner
            .notice_listener_failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|failed| failed.elapsed() < SUBSCRIBE_BACKOFF);
        if !backing_off
            && let Err(err) = self
                .inner
                .notice_listener
                .get_or_try_init(|| self.start_notice_listener())
                .await
        {
            tracing::warn!(error = %err, "cannot subscribe to fill announcements; waiters poll instead");
            *self
                .inner
                .notice_listener_failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        }
        wait
    }

    /// Subscribe to store notices and forward them to this cache's waiters until the
    /// cache is dropped. Not through the breaker: a subscription opens its own connection,
    /// which may take longer than a command, and its failure says little about the store.
    async fn start_notice_listener(
        &self,
    ) -> crate::error::Result<tokio::sync::oneshot::Sender<()>> {
        let channel = self.notice_channel();
        let budget = self.inner.command_timeout.max(SUBSCRIBE_TIMEOUT);
        let mut subscription =
            match tokio::time::timeout(budget, self.inner.store.subscribe(&channel)).await {
                Ok(subscription) => subscription?,
                Err(_) => return Err(crate::cache::handle::timeout_error()),
            };
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let notices = Arc::downgrade(&self.inner.notices);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = subscription.recv() => message,
                    _ = &mut stopped => None,
                };
                let (Some(message), Some(notices)) = (message, notices.upgrade()) else {
                    return;
                };
                if let Ok(key) = std::str::from_utf8(&message) {
                    notices.notify(key);
                }
            }
        });
        Ok(stop)
    }

    /// Announce that `full`'s load finished, to waiters in every process.
    pub(super) async fn announce_stored(&self, full: &str) {
        let message = Bytes::copy_from_slice(full.as_bytes());
        let _ = self
            .call(
                "publish",
                self.inner.store.publish(&self.notice_channel(), message),
            )
            .await;
    }

    /// The pub/sub channel of this namespace's store notices (`<namespace>:fills` on the
    /// wire, unchanged so processes of different versions still hear each other).
    fn notice_channel(&self) -> String {
        format!("{}:fills", self.inner.namespace)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::FutureExt;

    use crate::cache::handle::Cache;
    use crate::store::{MemoryStore, Store};

    /// Bounds each wait, so a lost notice fails the test instead of hanging it.
    const BOUND: Duration = Duration::from_secs(5);

    /// Two caches on one store stand for two processes: a notice that one announces for a
    /// key wakes the other's waiter of that key, not a waiter of another key.
    #[tokio::test]
    async fn a_notice_wakes_the_waiters_of_its_key_in_another_cache() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::builder().build());
        let waiting = Cache::builder()
            .shared_store(Arc::clone(&store))
            .build()
            .expect("cache");
        let storing = Cache::builder().shared_store(store).build().expect("cache");
        let full = waiting.full_key("k");
        let mut wait = waiting.notice_wait(&full).await;
        let mut other = waiting.notice_wait(&waiting.full_key("other")).await;

        storing.announce_stored(&full).await;
        tokio::time::timeout(BOUND, wait.announced())
            .await
            .expect("the waiter of the announced key is woken");
        // The listener woke `wait` while handling the one message; a wrong wake-up of
        // `other` would have happened in the same step, so it shows now, without waiting.
        assert!(
            other.announced().now_or_never().is_none(),
            "a waiter of another key is not woken"
        );
    }
}
