//! The fill guard: change counters that let the near tier refuse a value read before a change
//! it has since heard of.
//!
//! A reader takes a [`Ticket`] before it asks the store; the tier keeps what the store
//! answered only if no change to that key (or to every key) was counted since. Counting a
//! change always comes before removing the entry, and a fill checks again after inserting, so
//! whichever of the two runs last wins the right way: the stale value is never left behind.
//! Counters are striped by key hash: a change to one key may also refuse a fill of another
//! key in its stripe, which costs a store read, never correctness. This module must never let
//! a ticket outlive a change it should have seen.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Counter stripes. A power of two; 32 KiB of counters per near tier.
const STRIPES: usize = 4096;

/// Change counters: one per stripe of keys, and one for changes to every key.
pub(super) struct Generations {
    stripes: Box<[AtomicU64]>,
    everything: AtomicU64,
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
        }
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

    /// Count a change to `key`.
    pub(super) fn changed(&self, key: &str) {
        self.stripes[stripe_of(key)].fetch_add(1, Ordering::SeqCst);
    }

    /// Count a change to every key.
    pub(super) fn changed_everything(&self) {
        self.everything.fetch_add(1, Ordering::SeqCst);
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
        generations.changed(&other);
        assert!(generations.unchanged(ticket), "another stripe's change");
        generations.changed("ns:v1:a");
        assert!(!generations.unchanged(ticket));
        let ticket = generations.ticket("ns:v1:a");
        generations.changed_everything();
        assert!(!generations.unchanged(ticket));
    }
}
