//! Stampede protection: the pieces that let a cold or expiring key be loaded once, per process
//! and across the fleet, without anyone waiting when a usable value exists.
//!
//! - [`LoadOptions`] and [`StampedeSettings`]: what a load may do (TTL, stale windows, negative
//!   caching, the fleet-wide lock and its wait policy, early refresh).
//! - `flight`: in-process single flight. Concurrent loads of one key share one loader run; a
//!   leader that is dropped or panics releases its followers instead of stranding them.
//! - `notices`: store notices, the wake-ups for callers waiting on another process's load,
//!   fed by one pub/sub subscription per cache.
//! - `xfetch`: the probabilistic early refresh decision (XFetch).
//!
//! The orchestration (which store calls happen in which order) lives in the cache, which owns
//! the failure policy. This module must never call a store itself, so every store call passes
//! the cache's circuit breaker and timeouts.

mod flight;
mod notices;
mod options;
mod xfetch;

pub(crate) use self::flight::{Flights, Role};
pub(crate) use self::notices::{NoticeWait, NoticeWaiters};
pub use self::options::{
    DEFAULT_EARLY_REFRESH_BETA, DEFAULT_LOCK_MAX_WAIT, DEFAULT_LOCK_TTL, LoadOptions,
    OnLockTimeout, StampedeSettings,
};
pub(crate) use self::options::{Resolved, within};
pub(crate) use self::xfetch::should_refresh_early;
