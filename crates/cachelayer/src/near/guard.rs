//! The fill guard: change counters that let the near tier refuse a value read before a change
//! it has since heard of.
//!
//! A reader takes a [`Ticket`] before it asks the store; the tier keeps what the store
//! answered only if no change to that key (or to every key) was counted since. The check and
//! the insert happen under the key's stripe lock, which counting a change and removing the
//! entry take too (and under the read side of a lock whose write side a change to every key
//! takes), so a change is either seen by the check or removes what was inserted: there is no
//! moment in which a stale value is visible after the change was counted. Counters and locks
//! are striped by key hash: a change to one key may also refuse a fill of another key in its
//! stripe, which costs a store read, never correctness. This module must never let a ticket
//! outlive a change it should have seen.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Counter stripes. A power of two; 32 KiB of counters per near tier.
const STRIPES: usize = 4096;

/// Change counters: one per stripe of keys, and one for changes to every key.
pub(super) struct Generations {
    stripes: Box<[AtomicU64]>,
    everything: AtomicU64,
    /// Held across "check, insert" and across "count a change to a key, remove it".
    stripe_locks: Box<[Mutex<()>]>,
    /// Read side with a stripe lock; write side across "count a change to everything, empty
    /// the tier".
    everything_lock: RwLock<()>,
}

/// Held while a fill checks its ticket and inserts: no change can be counted meanwhile.
pub(super) struct FillLock<'a> {
    _everything: RwLockReadGuard<'a, ()>,
    _stripe: MutexGuard<'a, ()>,
}

/// What a reader saw before asking the store: the counters its fill must still find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    stripe: usize,
    stripe_generation: u64,
    everything_generation: u64,
}

impl Generations {
    pub(super) fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            everything: AtomicU64::new(0),
            stripe_locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            everything_lock: RwLock::new(()),
        }
    }

    /// Lock out changes to the ticket's key while its fill checks and inserts.
    pub(super) fn lock_fill(&self, ticket: Ticket) -> FillLock<'_> {
        // Poisoning: the guarded sections only count and call moka; their state is whole.
        FillLock {
            _everything: self
                .everything_lock
                .read()
                .unwrap_or_else(PoisonError::into_inner),
            _stripe: self.stripe_locks[ticket.stripe]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Count a change to `key`, then run `remove` before any fill of its stripe can check.
    pub(super) fn changed_then(&self, key: &str, remove: impl FnOnce()) {
        let stripe = stripe_of(key);
        let _lock = self.stripe_locks[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.stripes[stripe].fetch_add(1, Ordering::SeqCst);
        remove();
    }

    /// Count a change to every key, then run `remove` before any fill can check.
    pub(super) fn changed_everything_then(&self, remove: impl FnOnce()) {
        let _lock: RwLockWriteGuard<'_, ()> = self
            .everything_lock
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.everything.fetch_add(1, Ordering::SeqCst);
        remove();
    }

    /// The counters `key`'s fill must still find.
    pub(super) fn ticket(&self, key: &str) -> Ticket {
        let stripe = stripe_of(key);
        Ticket {
            stripe,
            everything_generation: self.everything.load(Ordering::SeqCst),
            stripe_generation: self.stripes[stripe].load(Ordering::SeqCst),
        }
    }

    /// Whether no change the ticket covers was counted since it was taken.
    pub(super) fn unchanged(&self, ticket: Ticket) -> bool {
        self.everything.load(Ordering::SeqCst) == ticket.everything_generation
            && self.stripes[ticket.stripe].load(Ordering::SeqCst) == ticket.stripe_generation
    }
}

fn stripe_of(key: &str) -> usize {
    // A fixed hasher: stripes only spread keys, they need no protection from chosen keys
    // (a collision costs one store read).
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    (hash as usize) & (STRIPES - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change to the key, or to every key, voids a ticket; a change elsewhere does not.
    #[test]
    fn changes_void_tickets() {
        let generations = Generations::new();
        let ticket = generations.ticket("ns:v1:a");
        assert!(generations.unchanged(ticket));
        let other = (0..100)
            .map(|i| format!("ns:v1:other{i}"))
            .find(|key| stripe_of(key) != stripe_of("ns:v1:a"))
            .expect("a key in another stripe");
        generations.changed_then(&other, || {});
        assert!(generations.unchanged(ticket), "another stripe's change");
        generations.changed_then("ns:v1:a", || {});
        assert!(!generations.unchanged(ticket));
        let ticket = generations.ticket("ns:v1:a");
        generations.changed_everything_then(|| {});
        assert!(!generations.unchanged(ticket));
    }
}
