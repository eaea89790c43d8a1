//! The typed cache-aside handle, [`Cache`]: namespaced keys, envelopes, TTL jitter, and the
//! failure policy.
//!
//! Failure policy: a store that is down, slow or holding garbage never fails a read or a
//! load. `get` becomes a miss, `insert` is dropped, `get_with` returns the loader's value;
//! each such event is counted and logged. Every store call is bounded by the command timeout
//! and passes the circuit breaker. The one exception is invalidation, which reports failure:
//! a lost invalidation means stale data later, and only the caller can decide what to do.
//!
//! This module only declares and re-exports; each part depends on `handle` (the [`Cache`]
//! itself), never on this facade. The envelope's metadata types are re-exported here because
//! [`Cache::get_entry`] returns a [`Decoded`] value with its header; the envelope's encoding
//! itself stays private.

mod builder;
mod handle;
mod load;
mod near_reads;

pub use self::builder::{
    CacheBuilder, DEFAULT_NAMESPACE, DEFAULT_TTL, DEFAULT_TTL_JITTER, validate_namespace,
};
pub use self::handle::{Cache, Removal};
pub(crate) use self::load::LoadMode;
pub use self::load::{Entry, EntrySelector, Fetched, LoadSource};
#[cfg(feature = "http")]
pub(crate) use self::near_reads::entry_key;
pub use crate::codec::{
    Compression, DEFAULT_COMPRESSION_THRESHOLD_BYTES, DEFAULT_MAX_VALUE_BYTES, DEFAULT_ZSTD_LEVEL,
    DecodeFailure, Decoded, EnvelopeHeader, Freshness,
};
