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
