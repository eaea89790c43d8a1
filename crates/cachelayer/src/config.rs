//! `CacheConfig`: every cache setting as plain data, for configuration files and the
//! environment. Applications deserialize it (serde) and call [`CacheConfig::build`].
//!
//! This module only maps settings onto the builders; it must never read files or the
//! environment itself, so the application owns its configuration sources and precedence.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::breaker::{DEFAULT_COOL_DOWN, DEFAULT_FAILURE_THRESHOLD};
use crate::cache::{Cache, DEFAULT_NAMESPACE, DEFAULT_TTL, DEFAULT_TTL_JITTER};
use crate::codec::{
    DEFAULT_COMPRESSION_THRESHOLD_BYTES, DEFAULT_MAX_VALUE_BYTES, DEFAULT_ZSTD_LEVEL, Serialization,
};
use crate::error::{Error, ErrorKind, Result};
use crate::near::DEFAULT_NEAR_CAPACITY_BYTES;
use crate::stampede::{
    DEFAULT_EARLY_REFRESH_BETA, DEFAULT_LOCK_MAX_WAIT, DEFAULT_LOCK_TTL, OnLockTimeout,
    StampedeSettings,
};
use crate::store::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MEMORY_CAPACITY_BYTES,
    DEFAULT_POOL_SIZE, MemoryStore, RedisStore,
};

/// A secret setting (a Redis URL with a password, an admin token): `Debug` and `Display`
/// show `***`, so logging a configuration never leaks it; serde reads and writes the plain
/// string.
///
/// ```
/// use cachelayer::config::Secret;
///
/// let token = Secret::new("s3cret".to_owned());
/// assert_eq!(token.expose(), "s3cret");
/// assert_eq!(format!("{token:?} {token}"), "*** ***");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Every cache setting, with the defaults of the README's configuration table. Durations
/// are written as `"250ms"`, `"60s"` or `"5m"` in files.
///
/// ```
/// use cachelayer::CacheConfig;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cachelayer::Result<()> {
/// let config: CacheConfig = serde_json::from_str(r#"{ "namespace": "shop", "default_ttl": "60s" }"#).unwrap();
/// assert_eq!(config.redis_url, None); // no Redis URL: the in-process store
/// let cache = config.build()?;
/// assert_eq!(cache.store().kind(), cachelayer::store::StoreKind::Memory);
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `redis://` or `rediss://` URL; `None` selects the in-process store.
    pub redis_url: Option<Secret>,
    /// Multiplexed Redis connections.
    pub redis_pool_size: usize,
    /// PEM file of a CA to trust for `rediss://`.
    pub redis_tls_ca_file: Option<std::path::PathBuf>,
    /// Bound on establishing a Redis connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on one store call.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Byte bound of the in-process store.
    pub memory_capacity_bytes: u64,
    /// Byte bound of the near tier in front of Redis; 0 turns it off.
    pub near_capacity_bytes: u64,
    /// Key prefix.
    pub namespace: String,
    /// Schema version in every key.
    pub version: u32,
    /// TTL of inserts without their own.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Fraction of each TTL randomly cut, in `[0, 1)`.
    pub ttl_jitter: f64,
    /// `json` or `messagepack`.
    pub serialization: Serialization,
    /// Compress payloads of at least this many bytes; 0 turns compression off.
    pub compression_threshold_bytes: usize,
    /// zstd level, 1 to 22.
    pub zstd_level: i32,
    /// Largest serialized value written or read.
    pub max_value_bytes: usize,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long the breaker stays open.
    #[serde(with = "humantime_serde")]
    pub breaker_cool_down: Duration,
    /// Take the fleet-wide load lock before loading (false: coalesce per process only).
    pub lock: bool,
    /// Initial lease of the load lock; renewed while the loader runs.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// Longest wait for another process's load.
    #[serde(with = "humantime_serde")]
    pub lock_max_wait: Duration,
    /// `load` (default) or `fail` when that wait runs out and nothing stale is cached.
    pub on_lock_timeout: OnLockTimeout,
    /// XFetch early refresh beta; 0 turns early refresh off.
    pub early_refresh_beta: f64,
    /// Serve values this long past their TTL while one background refresh runs.
    #[serde(with = "humantime_serde")]
    pub stale_while_revalidate: Duration,
    /// Serve values this long past their TTL when the loader fails.
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// TTL of a cached "not found"; zero (the default) caches none.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Configuration gets logged at start-up; the Redis password must not be, but the
        // rest of the URL helps.
        let url = self
            .redis_url
            .as_ref()
            .map(|url| crate::store::redact_url(url.expose()));
        f.debug_struct("CacheConfig")
            .field("redis_url", &url)
            .field("redis_pool_size", &self.redis_pool_size)
            .field("redis_tls_ca_file", &self.redis_tls_ca_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("memory_capacity_bytes", &self.memory_capacity_bytes)
            .field("near_capacity_bytes", &self.near_capacity_bytes)
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .field("default_ttl", &self.default_ttl)
            .field("ttl_jitter", &self.ttl_jitter)
            .field("serialization", &self.serialization)
            .field(
                "compression_threshold_bytes",
                &self.compression_threshold_bytes,
            )
            .field("zstd_level", &self.zstd_level)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("breaker_failure_threshold", &self.breaker_failure_threshold)
            .field("breaker_cool_down", &self.breaker_cool_down)
            .field("lock", &self.lock)
            .field("lock_ttl", &self.lock_ttl)
            .field("lock_max_wait", &self.lock_max_wait)
            .field("on_lock_timeout", &self.on_lock_timeout)
            .field("early_refresh_beta", &self.early_refresh_beta)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("stale_if_error", &self.stale_if_error)
            .field("negative_ttl", &self.negative_ttl)
            .finish()
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_pool_size: DEFAULT_POOL_SIZE,
            redis_tls_ca_file: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            memory_capacity_bytes: DEFAULT_MEMORY_CAPACITY_BYTES,
            near_capacity_bytes: DEFAULT_NEAR_CAPACITY_BYTES,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            version: 1,
            default_ttl: DEFAULT_TTL,
            ttl_jitter: DEFAULT_TTL_JITTER,
            serialization: Serialization::Json,
            compression_threshold_bytes: DEFAULT_COMPRESSION_THRESHOLD_BYTES,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            breaker_failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            breaker_cool_down: DEFAULT_COOL_DOWN,
            lock: true,
            lock_ttl: DEFAULT_LOCK_TTL,
            lock_max_wait: DEFAULT_LOCK_MAX_WAIT,
            on_lock_timeout: OnLockTimeout::Load,
            early_refresh_beta: DEFAULT_EARLY_REFRESH_BETA,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            negative_ttl: Duration::ZERO,
        }
    }
}

impl CacheConfig {
    /// The stampede settings these fields describe.
    pub fn stampede_settings(&self) -> StampedeSettings {
        StampedeSettings {
            lock: self.lock,
            lock_ttl: self.lock_ttl,
            lock_max_wait: self.lock_max_wait,
            on_lock_timeout: self.on_lock_timeout,
            early_refresh_beta: self.early_refresh_beta,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            negative_ttl: Some(self.negative_ttl).filter(|ttl| !ttl.is_zero()),
        }
    }

    /// Build the store and the cache. Never connects: a Redis that is down at start-up is
    /// handled by the failure policy like one that goes down later.
    pub fn build(&self) -> Result<Cache> {
        let command_timeout = self.command_timeout;
        let builder = Cache::builder()
            .namespace(self.namespace.clone())
            .version(self.version)
            .default_ttl(self.default_ttl)
            .ttl_jitter(self.ttl_jitter)
            .command_timeout(command_timeout)
            .serialization(self.serialization)
            .compression_threshold(
                Some(self.compression_threshold_bytes).filter(|bytes| *bytes > 0),
            )
            .zstd_level(self.zstd_level)
            .max_value_bytes(self.max_value_bytes)
            .circuit_breaker(self.breaker_failure_threshold, self.breaker_cool_down)
            .near_capacity_bytes(self.near_capacity_bytes)
            .stampede(self.stampede_settings());
        let builder = match &self.redis_url {
            None => builder.store(
                MemoryStore::builder()
                    .max_capacity_bytes(self.memory_capacity_bytes)
                    .build(),
            ),
            Some(url) => {
                let mut redis = RedisStore::builder(url.expose().to_owned())
                    .pool_size(self.redis_pool_size)
                    .connect_timeout(self.connect_timeout)
                    .command_timeout(command_timeout)
                    .node_circuit_breaker(self.breaker_failure_threshold, self.breaker_cool_down);
                if let Some(path) = &self.redis_tls_ca_file {
                    let pem = std::fs::read(path).map_err(|err| {
                        Error::with_source(
                            ErrorKind::Config,
                            format!("cannot read redis_tls_ca_file {}", path.display()),
                            err,
                        )
                    })?;
                    redis = redis.tls_root_cert_pem(pem);
                }
                builder.store(redis.build()?)
            }
        };
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debug output (often logged at start-up) never shows the Redis password.
    #[test]
    fn debug_redacts_the_password() {
        let config = CacheConfig {
            redis_url: Some("redis://app:s3cret@cache:6379/1".into()),
            ..CacheConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis://app:***@cache:6379/1"), "{shown}");
    }

    /// Durations read and write as human-readable text, and secrets as their plain string.
    #[test]
    fn durations_and_secrets_in_files() {
        let config: CacheConfig = serde_json::from_str(
            r#"{"redis_url": "redis://:pw@cache:6379", "command_timeout": "250ms", "default_ttl": "5m"}"#,
        )
        .expect("parse");
        assert_eq!(config.command_timeout, Duration::from_millis(250));
        assert_eq!(config.default_ttl, Duration::from_secs(300));
        assert_eq!(
            config.redis_url.as_ref().map(Secret::expose),
            Some("redis://:pw@cache:6379")
        );
        let written = serde_json::to_value(&config).expect("write");
        assert_eq!(written["command_timeout"], "250ms");
        assert_eq!(written["redis_url"], "redis://:pw@cache:6379");
        assert!(serde_json::from_str::<CacheConfig>(r#"{"lock_ttl": 5}"#).is_err());
    }

    /// A misspelt setting is an error naming the field, not silently ignored.
    #[test]
    fn unknown_fields_are_rejected() {
        let err =
            serde_json::from_str::<CacheConfig>(r#"{"comand_timeout_ms": 5}"#).expect_err("typo");
        assert!(err.to_string().contains("comand_timeout_ms"), "{err}");
    }

    /// The defaults build, and a Redis URL selects the Redis store without connecting.
    #[tokio::test]
    async fn defaults_and_redis_selection() {
        let cache = CacheConfig::default().build().expect("defaults");
        assert_eq!(cache.store().kind(), crate::store::StoreKind::Memory);
        let config = CacheConfig {
            redis_url: Some("redis://127.0.0.1:1".into()),
            ..CacheConfig::default()
        };
        assert_eq!(
            config.build().expect("lazy").store().kind(),
            crate::store::StoreKind::Redis
        );
    }

    /// Stampede settings map onto the cache, and bad ones are configuration errors.
    #[test]
    fn stampede_settings_are_applied_and_checked() {
        let config: CacheConfig = serde_json::from_str(
            r#"{"lock_ttl": "2s", "on_lock_timeout": "fail", "stale_if_error": "1m", "negative_ttl": "5000ms"}"#,
        )
        .expect("parse");
        let cache = config.build().expect("valid");
        let settings = cache.stampede_settings();
        assert_eq!(settings.lock_ttl, Duration::from_secs(2));
        assert_eq!(settings.on_lock_timeout, OnLockTimeout::Fail);
        assert_eq!(settings.stale_if_error, Duration::from_secs(60));
        assert_eq!(settings.negative_ttl, Some(Duration::from_secs(5)));
        assert!(settings.lock);
        let bad = CacheConfig {
            early_refresh_beta: -1.0,
            ..CacheConfig::default()
        };
        assert_eq!(bad.build().expect_err("beta").kind(), ErrorKind::Config);
    }

    /// A missing CA file is a configuration error that names the file.
    #[test]
    fn missing_ca_file_is_config_error() {
        let config = CacheConfig {
            redis_url: Some("rediss://127.0.0.1:1".into()),
            redis_tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..CacheConfig::default()
        };
        let err = config.build().expect_err("missing file");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("/nonexistent/ca.pem"));
    }
}
