//! Probabilistic early refresh, "XFetch" (Vattani, Chierichetti and Lowenstein, "Optimal
//! Probabilistic Cache Stampede Prevention", VLDB 2015).
//!
//! A reader refreshes a fresh value early when `delta * beta * -ln(u) >= time left`, with
//! `u` uniform in (0, 1] and `delta` the time the value took to compute. The chance rises
//! smoothly as expiry nears, and a value that is slow to compute starts refreshing earlier.
//! The randomness is seedable so tests and simulations are reproducible. This module decides
//! only; it must never start a refresh itself.

use std::sync::Mutex;
use std::time::Duration;

/// The early refresh decision, with its random source.
#[derive(Debug)]
pub(crate) struct EarlyRefresh {
    rng: Mutex<fastrand::Rng>,
}

impl EarlyRefresh {
    /// Seeded for reproducible runs, or from the OS when `seed` is `None`.
    pub(crate) fn new(seed: Option<u64>) -> Self {
        let rng = seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Self {
            rng: Mutex::new(rng),
        }
    }

    /// Whether this read should refresh a value with `left` before expiry, which took
    /// `compute_time` to load. Never for values of unknown cost or with no time left by the
    /// writer's clock (those are governed by the store's TTL alone).
    pub(crate) fn should_refresh(&self, left: Duration, compute_time: Duration, beta: f64) -> bool {
        if beta <= 0.0 || compute_time.is_zero() || left.is_zero() {
            return false;
        }
        let uniform = 1.0 - self.unit();
        let gap = compute_time.as_secs_f64() * beta * -uniform.ln();
        gap >= left.as_secs_f64()
    }

    /// A fraction in [0, 1), also used for TTL and polling jitter so one seed governs every
    /// random choice of a cache.
    pub(crate) fn unit(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(early: &EarlyRefresh, left_in_deltas: f64, beta: f64) -> f64 {
        let delta = Duration::from_millis(100);
        let left = delta.mul_f64(left_in_deltas);
        let draws = 20_000;
        let hits = (0..draws)
            .filter(|_| early.should_refresh(left, delta, beta))
            .count();
        hits as f64 / f64::from(draws)
    }

    /// The refresh probability is `exp(-left / (delta * beta))`: negligible far from expiry,
    /// likely close to it, and higher with a larger beta.
    #[test]
    fn probability_rises_as_expiry_nears() {
        let early = EarlyRefresh::new(Some(42));
        let far = share(&early, 10.0, 1.0);
        let mid = share(&early, 1.0, 1.0);
        let near = share(&early, 0.1, 1.0);
        assert!(far < 0.001, "far {far}");
        assert!((mid - (-1.0f64).exp()).abs() < 0.02, "mid {mid}");
        assert!((near - (-0.1f64).exp()).abs() < 0.02, "near {near}");
        let eager = share(&early, 1.0, 2.0);
        assert!((eager - (-0.5f64).exp()).abs() < 0.02, "eager {eager}");
    }

    /// Beta 0, an unknown compute time, or no time left never refresh early.
    #[test]
    fn off_cases_never_refresh() {
        let early = EarlyRefresh::new(Some(1));
        let second = Duration::from_secs(1);
        for _ in 0..1000 {
            assert!(!early.should_refresh(Duration::from_millis(1), second, 0.0));
            assert!(!early.should_refresh(Duration::from_millis(1), Duration::ZERO, 1.0));
            assert!(!early.should_refresh(Duration::ZERO, second, 1.0));
        }
    }

    /// The same seed makes the same decisions.
    #[test]
    fn seeded_decisions_repeat() {
        let run = || {
            let early = EarlyRefresh::new(Some(7));
            (0..200)
                .map(|_| {
                    early.should_refresh(Duration::from_millis(80), Duration::from_millis(100), 1.0)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
