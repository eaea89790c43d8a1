//! The cache's seedable random source: every random choice one cache makes (the XFetch
//! draw, TTL jitter, the jitter of lock-wait polls) comes from it, so a seed makes a run
//! reproducible.
//!
//! It must never produce tokens that must differ between processes (lock tokens, tag
//! versions): two caches seeded alike draw alike. Those come from [`crate::token`].

use std::sync::{Mutex, PoisonError};

/// A random source, seeded for reproducible runs or from the OS.
#[derive(Debug)]
pub(crate) struct SeededRandom {
    rng: Mutex<fastrand::Rng>,
}

impl SeededRandom {
    /// Seeded with `seed`, or from the OS when it is `None`.
    pub(crate) fn new(seed: Option<u64>) -> Self {
        let rng = seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Self {
            rng: Mutex::new(rng),
        }
    }

    /// A fraction in [0, 1).
    pub(crate) fn unit(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed draws the same fractions, all in [0, 1).
    #[test]
    fn seeded_draws_repeat() {
        let draws = |seed| {
            let random = SeededRandom::new(Some(seed));
            (0..100).map(|_| random.unit()).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        assert!(draws(1).iter().all(|unit| (0.0..1.0).contains(unit)));
    }
}
