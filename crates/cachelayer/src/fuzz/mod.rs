//! Fuzz targets (property tests run as fuzzers) for everything in this crate that parses
//! bytes from outside the process: the envelope of stored entries (`codec`), the layout of
//! stored HTTP responses (`stored`), the HTTP layer's header parsers (`policy` for
//! `Cache-Control`, targeted fields and the dates, `fields` for the rest), the normal form of
//! request paths (`path`) and ranges answered from stored bodies (`range`).
//!
//! Each target is a `proptest` test named `fuzz_<what>`, fed arbitrary bytes and
//! structure-aware inputs (valid encodings, then mutated, so the parsers are exercised past
//! their first checks), asserting that nothing panics and, where there is one, a real
//! property: round trips, totality, idempotent normal forms, garbage refused rather than
//! misread. Every target runs [`cases`] cases: a few hundred by default, so `cargo test`
//! stays quick, and as many as `CACHELAYER_FUZZ_CASES` says for a long campaign
//! (`docs/testing.md`, "Fuzzing").
//!
//! These modules must never touch a store, the network or the file system (proptest's
//! failure files are off: a finding fixed becomes a named regression test instead), and
//! never loosen a property to hide a finding: one that cannot be fixed in these files is
//! excepted by a `known_*` item that describes it, to be removed with the fix.

mod codec;
#[cfg(feature = "http")]
mod fields;
mod mutate;
#[cfg(feature = "http")]
mod path;
#[cfg(feature = "http")]
mod policy;
#[cfg(feature = "http")]
mod range;
#[cfg(feature = "http")]
mod stored;

use proptest::test_runner::Config;

/// The environment variable that sets how many cases each target runs.
pub(crate) const CASES_VAR: &str = "CACHELAYER_FUZZ_CASES";
/// Cases per target when `CACHELAYER_FUZZ_CASES` is unset: enough to catch a regression in
/// the ordinary test run, few enough to keep it short.
pub(crate) const DEFAULT_CASES: u32 = 256;

/// The number of cases each target runs: `CACHELAYER_FUZZ_CASES`, else [`DEFAULT_CASES`].
/// A value that is not a count fails loudly rather than silently running the default.
pub(crate) fn cases() -> u32 {
    match std::env::var(CASES_VAR) {
        Ok(text) => text.trim().replace('_', "").parse().unwrap_or_else(|_| {
            panic!("{CASES_VAR}={text:?} is not a whole number of cases (write 1000000)")
        }),
        Err(_) => DEFAULT_CASES,
    }
}

/// The proptest configuration of every target: [`cases`] cases, no failure files written
/// into the source tree, and enough shrinking to make a finding readable.
pub(crate) fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    }
}
