//! Store notices: wake the callers of this process that wait on another process's load of
//! a key, when that process announces it stored the key.
//!
//! One pub/sub subscription per cache feeds [`NoticeWaiters::notify`]; waiters register
//! before they re-check the store, so a notice between the check and the wait is not lost. Delivery is
//! at most once, so waiters also poll (bounded and jittered). This module keeps only the
//! in-process registry; it must never subscribe or poll itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// Waiters by full key.
#[derive(Debug, Default)]
pub(crate) struct NoticeWaiters {
    waiting: Mutex<HashMap<String, watch::Sender<()>>>,
}

impl NoticeWaiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Start listening for store notices of `key`.
    pub(crate) fn register(self: &Arc<Self>, key: &str) -> NoticeWait {
        let receiver = self
            .lock()
            .entry(key.to_owned())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        NoticeWait {
            waiters: Arc::clone(self),
            key: key.to_owned(),
            receiver: Some(receiver),
        }
    }

    /// Whether a caller is registered for `key` (tests synchronise on it).
    #[cfg(test)]
    pub(crate) fn is_waited_on(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    /// Wake every waiter of `key`.
    pub(crate) fn notify(&self, key: &str) {
        if let Some(sender) = self.lock().get(key) {
            sender.send_replace(());
        }
    }
}

/// One caller's registration; dropping it deregisters.
pub(crate) struct NoticeWait {
    waiters: Arc<NoticeWaiters>,
    key: String,
    receiver: Option<watch::Receiver<()>>,
}

impl NoticeWait {
    /// Resolves once the key is announced stored after registration (or after the last
    /// call).
    pub(crate) async fn announced(&mut self) {
        if let Some(receiver) = self.receiver.as_mut()
            && receiver.changed().await.is_err()
        {
            // The sender lives as long as any registration, ours included.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for NoticeWait {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        drop(self.receiver.take());
        if waiting
            .get(&self.key)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            waiting.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notice sent after registration wakes the waiter even if it was not yet waiting;
    /// registrations are removed when the last waiter leaves.
    #[tokio::test]
    async fn notify_wakes_registered_waiters() {
        let waiters = Arc::new(NoticeWaiters::default());
        let mut first = waiters.register("k");
        let mut second = waiters.register("k");
        waiters.notify("other");
        waiters.notify("k");
        first.announced().await;
        second.announced().await;
        drop(first);
        assert_eq!(waiters.lock().len(), 1);
        drop(second);
        assert!(waiters.lock().is_empty());
    }
}
