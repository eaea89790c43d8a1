//! Probabilistic early refresh, "XFetch" (Vattani, Chierichetti and Lowenstein, "Optimal
//! Probabilistic Cache Stampede Prevention", VLDB 2015).
//!
//! A reader refreshes a fresh value early when `delta * beta * -ln(u) >= time left`, with
//! `u` uniform in (0, 1] and `delta` the time the value took to compute. The chance rises
//! smoothly as expiry nears, and a value that is slow to compute starts refreshing earlier.
//! The draw comes from the cache's seedable random source, so tests and simulations are
//! reproducible. This module decides only; it must never start a refresh itself.

use std::time::Duration;

use crate::random::SeededRandom;

/// Whether this read should refresh a value with `left` before expiry, which took
/// `compute_time` to load. Never for values of unknown cost or with no time left by the
/// writer's clock (those are governed by the store's TTL alone).
pub(crate) fn should_refresh_early(
    left: Duration,
    compute_time: Duration,
    beta: f64,
    random: &SeededRandom,
) -> bool {
    if beta <= 0.0 || compute_time.is_zero() || left.is_zero() {
        return false;
    }
    let uniform = 1.0 - random.unit();
    let gap = compute_time.as_secs_f64() * beta * -uniform.ln();
    gap >= left.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(random: &SeededRandom, left_in_deltas: f64, beta: f64) -> f64 {
        let delta = Duration::from_millis(100);
        let left = delta.mul_f64(left_in_deltas);
        let draws = 20_000;
        let hits = (0..draws)
            .filter(|_| should_refresh_early(left, delta, beta, random))
            .count();
        hits as f64 / f64::from(draws)
    }

    /// The refresh probability is `exp(-left / (delta * beta))`: negligible far from expiry,
    /// likely close to it, and higher with a larger beta.
    #[test]
    fn probability_rises_as_expiry_nears() {
        let random = SeededRandom::new(Some(42));
        let far = share(&random, 10.0, 1.0);
        let mid = share(&random, 1.0, 1.0);
        let near = share(&random, 0.1, 1.0);
        assert!(far < 0.001, "far {far}");
        assert!((mid - (-1.0f64).exp()).abs() < 0.02, "mid {mid}");
        assert!((near - (-0.1f64).exp()).abs() < 0.02, "near {near}");
        let eager = share(&random, 1.0, 2.0);
        assert!((eager - (-0.5f64).exp()).abs() < 0.02, "eager {eager}");
    }

    /// Beta 0, an unknown compute time, or no time left never refresh early.
    #[test]
    fn off_cases_never_refresh() {
        let random = SeededRandom::new(Some(1));
        let second = Duration::from_secs(1);
        let millisecond = Duration::from_millis(1);
        for _ in 0..1000 {
            assert!(!should_refresh_early(millisecond, second, 0.0, &random));
            assert!(!should_refresh_early(
                millisecond,
                Duration::ZERO,
                1.0,
                &random
            ));
            assert!(!should_refresh_early(Duration::ZERO, second, 1.0, &random));
        }
    }

    /// The same seed makes the same decisions.
    #[test]
    fn seeded_decisions_repeat() {
        let run = || {
            let random = SeededRandom::new(Some(7));
            let (left, delta) = (Duration::from_millis(80), Duration::from_millis(100));
            (0..200)
                .map(|_| should_refresh_early(left, delta, 1.0, &random))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
