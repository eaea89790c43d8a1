//! Stores: where cached bytes live. One async trait, [`Store`], with two implementations:
//! [`RedisStore`] (shared by every instance of a service: one Redis, a primary found through
//! Sentinels, or a Redis Cluster) and [`MemoryStore`] (in-process, the
//! embedded default).
//!
//! A store moves opaque bytes under string keys with a TTL. It must never know about types,
//! envelopes, namespaces or HTTP: those belong to the layers above, so any store can back any
//! of them. Every method reports store trouble as an [`Error`](crate::error::Error); deciding to fail
//! open is the [`Cache`](crate::Cache)'s job, not the store's.

mod contract;
mod memory;
mod redis;

pub(crate) use self::contract::check_ttl;
pub use self::contract::{
    ChangeListener, ChangeTracking, Claim, KeyChange, KeySpace, KeyTtl, MAX_TTL, NodeBreaker,
    SUBSCRIPTION_BUFFER, Store, StoreEntry, StoreKind, Subscription,
};
// Tag versions (the HTTP layer) read counters too.
#[cfg(feature = "http")]
pub(crate) use self::contract::parse_counter;
pub use self::memory::{DEFAULT_MEMORY_CAPACITY_BYTES, MemoryStore, MemoryStoreBuilder};
pub use self::redis::redact_url;
pub use self::redis::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_SIZE, RedisStore,
    RedisStoreBuilder, TRACKING_CLIENT_NAME,
};
