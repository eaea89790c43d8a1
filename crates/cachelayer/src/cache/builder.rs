//! `CacheBuilder`: a consuming builder that validates every setting in `build()`.
//!
//! It must never hand out a [`Cache`] with a setting it has not checked: a bad value is an
//! [`Error`] of kind `Config` from `build()`, never a panic or a silent clamp.

use std::sync::Arc;
use std::time::Duration;

use super::handle::{Cache, CacheInner, Guard};
use crate::breaker::{CircuitBreaker, DEFAULT_COOL_DOWN, DEFAULT_FAILURE_THRESHOLD};
use crate::codec::{
    Codec, DEFAULT_COMPRESSION_THRESHOLD_BYTES, DEFAULT_MAX_VALUE_BYTES, DEFAULT_ZSTD_LEVEL,
    Serialization,
};
use crate::error::{Error, Result};
use crate::near::{DEFAULT_NEAR_CAPACITY_BYTES, Near};
use crate::random::SeededRandom;
use crate::stampede::StampedeSettings;
use crate::store::{DEFAULT_COMMAND_TIMEOUT, MAX_TTL, MemoryStore, Store, StoreKind};

/// Default namespace prefix of every key.
pub const DEFAULT_NAMESPACE: &str = "cachelayer";
/// Default TTL of [`Cache::insert`] and [`Cache::insert_many`]: five minutes, long enough to
/// take most reads off the source, short enough that a missed invalidation heals soon.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Default jitter: each entry's TTL is cut by a random 0–10%, so entries written together
/// do not all expire (and reload) together.
pub const DEFAULT_TTL_JITTER: f64 = 0.1;
/// Longest breaker cool-down accepted: an hour without the cache is already an outage.
const MAX_COOL_DOWN: Duration = Duration::from_secs(60 * 60);
/// Longest namespace accepted.
const MAX_NAMESPACE_BYTES: usize = 64;

/// Builds a [`Cache`]. Every setting has a default; see the README's configuration table.
///
/// ```
/// use std::time::Duration;
/// use cachelayer::{Cache, Serialization};
/// use cachelayer::store::MemoryStore;
///
/// let cache = Cache::builder()
///     .store(MemoryStore::builder().max_capacity_bytes(64 << 20).build())
///     .namespace("catalogue")
///     .version(3)
///     .default_ttl(Duration::from_secs(60))
///     .ttl_jitter(0.05)
///     .serialization(Serialization::MessagePack)
///     .compression_threshold(Some(2048))
///     .build()
///     .unwrap();
/// assert_eq!(cache.full_key("product:1"), "catalogue:v3:product:1");
/// assert!(Cache::builder().ttl_jitter(1.5).build().is_err());
/// ```
#[derive(Debug)]
#[must_use]
pub struct CacheBuilder {
    store: Option<Arc<dyn Store>>,
    namespace: String,
    version: u32,
    default_ttl: Duration,
    ttl_jitter: f64,
    command_timeout: Duration,
    serialization: Serialization,
    compression_threshold: Option<usize>,
    zstd_level: i32,
    max_value_bytes: usize,
    breaker_failure_threshold: u32,
    breaker_cool_down: Duration,
    stampede: StampedeSettings,
    random_seed: Option<u64>,
    near_capacity_bytes: u64,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        Self {
            store: None,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            version: 1,
            default_ttl: DEFAULT_TTL,
            ttl_jitter: DEFAULT_TTL_JITTER,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            serialization: Serialization::Json,
            compression_threshold: Some(DEFAULT_COMPRESSION_THRESHOLD_BYTES),
            zstd_level: DEFAULT_ZSTD_LEVEL,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            breaker_failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            breaker_cool_down: DEFAULT_COOL_DOWN,
            stampede: StampedeSettings::default(),
            random_seed: None,
            near_capacity_bytes: DEFAULT_NEAR_CAPACITY_BYTES,
        }
    }
}

impl CacheBuilder {
    /// The store to use. Without one, an in-process [`MemoryStore`] with default capacity.
    pub fn store(self, store: impl Store) -> Self {
        self.shared_store(Arc::new(store))
    }

    /// A store already shared with other handles.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Prefix of every key (`[A-Za-z0-9_.-]`, at most 64 bytes), so services can share one
    /// Redis.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Schema version in every key: bump it when cached types change incompatibly, and the
    /// old entries are simply never read again (they expire by TTL).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// TTL of `insert` and `insert_many`. Must be non-zero.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Fraction in `[0, 1)` by which each entry's TTL is randomly shortened (0 turns it off).
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.ttl_jitter = fraction;
        self
    }

    /// Budget for one store call; past it the call counts as a failure and the cache fails
    /// open. Applies on top of the store's own timeouts, to stores that are not in this
    /// process (a store of [`StoreKind::Memory`] never waits on I/O and is not bounded).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Serialization of new entries (existing entries are read with their own).
    pub fn serialization(mut self, serialization: Serialization) -> Self {
        self.serialization = serialization;
        self
    }

    /// Compress payloads of at least this many bytes with zstd; `None` turns compression off.
    pub fn compression_threshold(mut self, bytes: Option<usize>) -> Self {
        self.compression_threshold = bytes;
        self
    }

    /// zstd level, 1 (fastest) to 22 (smallest).
    pub fn zstd_level(mut self, level: i32) -> Self {
        self.zstd_level = level;
        self
    }

    /// Largest serialized value written or read; larger stored values are misses.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Consecutive store failures that open the circuit breaker, and how long it stays open
    /// before one probe is let through.
    pub fn circuit_breaker(mut self, failure_threshold: u32, cool_down: Duration) -> Self {
        self.breaker_failure_threshold = failure_threshold;
        self.breaker_cool_down = cool_down;
        self
    }

    /// Stampede protection defaults for every load: the fleet-wide lock, early refresh,
    /// stale windows and negative caching. Each load can override them with
    /// [`LoadOptions`](crate::LoadOptions).
    pub fn stampede(mut self, settings: StampedeSettings) -> Self {
        self.stampede = settings;
        self
    }

    /// Seed every random choice of this cache (early refresh draws, TTL jitter, polling
    /// jitter), for reproducible tests and simulations. Lock tokens stay random.
    pub fn random_seed(mut self, seed: u64) -> Self {
        self.random_seed = Some(seed);
        self
    }

    /// Bytes the near tier may hold: hot entries of a shared store kept in this process's
    /// memory, coherent through the store's change tracking (see
    /// [`near`](crate::near)). 0 turns it off. It exists only over a store that tracks
    /// changes ([`RedisStore`](crate::store::RedisStore)); the in-process store needs none.
    pub fn near_capacity_bytes(mut self, bytes: u64) -> Self {
        self.near_capacity_bytes = bytes;
        self
    }

    /// Validate the settings and build the cache.
    pub fn build(self) -> Result<Cache> {
        validate_namespace(&self.namespace)?;
        if self.default_ttl.is_zero() || self.default_ttl > MAX_TTL {
            return Err(Error::config(
                "default_ttl must be non-zero and at most 10 years; pass a zero TTL per call to skip caching",
            ));
        }
        if !(0.0..1.0).contains(&self.ttl_jitter) {
            return Err(Error::config(format!(
                "ttl_jitter {} is out of range; use a fraction from 0 (off) to below 1",
                self.ttl_jitter
            )));
        }
        if self.command_timeout.is_zero() {
            return Err(Error::config("command_timeout must be non-zero"));
        }
        if self.breaker_failure_threshold == 0
            || self.breaker_cool_down.is_zero()
            || self.breaker_cool_down > MAX_COOL_DOWN
        {
            return Err(Error::config(
                "the circuit breaker needs a failure threshold of at least 1 and a cool-down between 1 ms and 1 hour",
            ));
        }
        self.stampede.validate()?;
        let codec = Codec::new(
            self.serialization,
            self.compression_threshold,
            self.zstd_level,
            self.max_value_bytes,
        )?;
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::builder().build()));
        // In this process's memory a compressed response would be decompressed into a copy
        // on every hit; uncompressed, every hit shares the stored bytes.
        let store_is_local = store.kind() == StoreKind::Memory;
        let codec = codec.compressing_binary(!store_is_local);
        let prefix = format!("{}:v{}:", self.namespace, self.version);
        let near = Near::start(store.as_ref(), &prefix, self.near_capacity_bytes);
        let breaker_label = store
            .address()
            .unwrap_or_else(|| store.kind().as_str().to_owned());
        let guard = if store_is_local {
            Guard::Local
        } else if store.node_breakers().is_some() {
            Guard::NodeBreakers
        } else {
            Guard::CacheBreaker
        };
        Ok(Cache {
            inner: Arc::new(CacheInner {
                store,
                prefix,
                namespace: self.namespace,
                default_ttl: self.default_ttl,
                ttl_jitter: self.ttl_jitter,
                command_timeout: self.command_timeout,
                guard,
                codec,
                breaker: CircuitBreaker::new(
                    self.breaker_failure_threshold,
                    self.breaker_cool_down,
                    breaker_label,
                ),
                stampede: self.stampede,
                flights: Arc::default(),
                refreshes: Arc::default(),
                notices: Arc::default(),
                notice_listener_failed: std::sync::Mutex::new(None),
                notice_listener: tokio::sync::OnceCell::new(),
                random: SeededRandom::new(self.random_seed),
                read_metrics: std::sync::OnceLock::new(),
                near,
            }),
        })
    }
}

/// Whether `namespace` is one [`CacheBuilder::namespace`] accepts, with the error saying
/// what is accepted; for applications that check their settings before building.
pub fn validate_namespace(namespace: &str) -> Result<()> {
    let valid = !namespace.is_empty()
        && namespace.len() <= MAX_NAMESPACE_BYTES
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(Error::config(format!(
            "namespace {namespace:?} is invalid; use 1 to {MAX_NAMESPACE_BYTES} characters of A-Z, a-z, 0-9, '_', '-', '.'"
        )))
    }
}

impl Cache {
    /// A builder with every default: in-process store, JSON, 300 s TTL, 10% jitter.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn kind_of(builder: CacheBuilder) -> Option<ErrorKind> {
        builder.build().err().map(|e| e.kind())
    }

    /// Each invalid setting is refused with a configuration error.
    #[test]
    fn invalid_settings_are_config_errors() {
        let config = Some(ErrorKind::Config);
        assert_eq!(kind_of(Cache::builder().namespace("")), config);
        assert_eq!(kind_of(Cache::builder().namespace("a:b")), config);
        assert_eq!(
            kind_of(Cache::builder().default_ttl(Duration::ZERO)),
            config
        );
        assert_eq!(kind_of(Cache::builder().ttl_jitter(-0.1)), config);
        assert_eq!(kind_of(Cache::builder().ttl_jitter(f64::NAN)), config);
        assert_eq!(
            kind_of(Cache::builder().command_timeout(Duration::ZERO)),
            config
        );
        assert_eq!(kind_of(Cache::builder().zstd_level(0)), config);
        assert_eq!(kind_of(Cache::builder().max_value_bytes(0)), config);
        assert_eq!(
            kind_of(Cache::builder().circuit_breaker(0, Duration::from_secs(1))),
            config
        );
        assert_eq!(kind_of(Cache::builder()), None);
    }
}
