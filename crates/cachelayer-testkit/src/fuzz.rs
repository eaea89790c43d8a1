//! The one configuration of every fuzz target in the workspace (property tests run as
//! fuzzers, named `fuzz_<what>`): how many cases they run and how they report.
//!
//! This module must never write failure files into a source tree (a finding fixed becomes
//! a named regression test instead), nor quietly run the default when asked for a number
//! it cannot read.

use proptest::test_runner::Config;

/// The environment variable that sets how many cases each target runs.
pub const CASES_VAR: &str = "CACHELAYER_FUZZ_CASES";
/// Cases per target when `CACHELAYER_FUZZ_CASES` is unset: enough to catch a regression in
/// the ordinary test run, few enough to keep it short.
pub const DEFAULT_CASES: u32 = 256;

/// The number of cases each target runs: `CACHELAYER_FUZZ_CASES`, else [`DEFAULT_CASES`].
///
/// # Panics
/// If the variable is set to something that is not a count (a campaign must not run the
/// default unnoticed).
pub fn cases() -> u32 {
    match std::env::var(CASES_VAR) {
        Ok(text) => text.trim().replace('_', "").parse().unwrap_or_else(|_| {
            panic!("{CASES_VAR}={text:?} is not a whole number of cases (write 1000000)")
        }),
        Err(_) => DEFAULT_CASES,
    }
}

/// The proptest configuration of every target: [`cases`] cases, no failure files written
/// into the source tree, and enough shrinking to make a finding readable.
pub fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    }
}
