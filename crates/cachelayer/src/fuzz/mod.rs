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
//! misread. Every target runs `cachelayer_testkit::fuzz::cases()` cases: a few hundred by
//! default, so `cargo test` stays quick, and as many as `CACHELAYER_FUZZ_CASES` says for a
//! long campaign (`docs/testing.md`, "Fuzzing").
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

/// The configuration every target shares (`cachelayer_testkit::fuzz`), for the targets'
/// `proptest_config`.
pub(crate) use cachelayer_testkit::fuzz::config;
