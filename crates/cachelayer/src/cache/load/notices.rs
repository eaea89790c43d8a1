//! Fill announcements over the store's pub/sub: announcing that a key's load finished, and
//! the one subscription per cache that wakes this process's waiters.
//!
//! Delivery is at most once, so waiters never rely on it alone (they also poll). It must
//! never pass the breaker for subscribing: a subscription's failure says little about the
//! store's health.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::cache::Cache;

/// Least time allowed for subscribing to fill announcements (a new connection).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed subscribe, waiters poll for this long before subscribing is tried again.
const SUBSCRIBE_BACKOFF: Duration = Duration::from_secs(5);

impl Cache {
    /// Wait registration for fills of `full`, starting the cache's fill listener if needed.
    /// Without a listener (subscribing failed recently) waiters poll.
    pub(super) async fn fill_wait(&self, full: &str) -> crate::stampede::FillWait {
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
                Err(_) => return Err(crate::cache::timeout_error()),
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
    pub(super) async fn announce_fill(&self, full: &str) {
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
}
