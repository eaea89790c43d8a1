//! The flags both commands take, and their checks: the cache and Redis, the admin token,
//! logging, allowed hosts and hosts' ports in keys ([`CommonArgs`]), and the parsers of
//! durations, addresses and worker counts. Each flag falls back to an environment variable;
//! a bad value is refused with a message naming the flag and its variable, before anything
//! starts.
//!
//! Each command's own flags live in its `config` module. This module must never hold a flag
//! only one command reads, nor show a secret in `Debug` output (the effective configuration
//! is logged at start).

use std::net::SocketAddr;
use std::time::Duration;

use cachelayer::config::Secret;
use cachelayer::http::HostPort;
use cachelayer::{CacheConfig, OnLockTimeout};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};

use crate::error::Error;
use crate::listen::LimitArgs;
use crate::logging::LogFormat;

/// Settings shared by every subcommand that caches: Redis, the cache, admin and logging.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Redis to share the cache with other instances (`redis://`, `rediss://` for TLS);
    /// without it the cache is in this process only.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Multiplexed Redis connections.
    #[arg(long, env = "CACHELAYER_REDIS_POOL_SIZE", default_value_t = cachelayer::store::DEFAULT_POOL_SIZE)]
    pub redis_pool_size: usize,
    /// Bound on connecting to Redis.
    #[arg(long, env = "CACHELAYER_REDIS_CONNECT_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub redis_connect_timeout: Duration,
    /// Bound on one Redis command; past it the request goes on without the cache.
    #[arg(long, env = "CACHELAYER_REDIS_COMMAND_TIMEOUT", default_value = "250ms", value_parser = duration)]
    pub redis_command_timeout: Duration,
    /// Bytes the in-process store may hold (without --redis-url).
    #[arg(long, env = "CACHELAYER_MEMORY_CAPACITY_BYTES", default_value_t = cachelayer::store::DEFAULT_MEMORY_CAPACITY_BYTES)]
    pub memory_capacity_bytes: u64,
    /// Bytes of hot Redis entries kept in this process's memory, coherent through Redis's
    /// change tracking (0 turns the near tier off).
    #[arg(long, env = "CACHELAYER_NEAR_CAPACITY_BYTES", default_value_t = cachelayer::near::DEFAULT_NEAR_CAPACITY_BYTES)]
    pub near_capacity_bytes: u64,
    /// Key prefix in the store; instances sharing a cache must agree on it.
    #[arg(long, env = "CACHELAYER_NAMESPACE", default_value = "cachelayer")]
    pub namespace: String,
    /// Compress cached values of at least this many bytes (0: never).
    #[arg(long, env = "CACHELAYER_COMPRESSION_THRESHOLD", default_value_t = 1024)]
    pub compression_threshold: usize,
    /// Take the fleet-wide lock so one instance loads a missing key for all.
    #[arg(long, env = "CACHELAYER_LOCK", default_value_t = true, action = clap::ArgAction::Set)]
    pub lock: bool,
    /// Initial lease of the load lock (renewed while loading).
    #[arg(long, env = "CACHELAYER_LOCK_TTL", default_value = "5s", value_parser = duration)]
    pub lock_ttl: Duration,
    /// Longest wait for another instance's load (default: 5s for serve; for proxy, its
    /// --upstream-timeout, so waiters never give up on an upstream call still in time).
    #[arg(long, env = "CACHELAYER_LOCK_MAX_WAIT", value_parser = duration)]
    pub lock_max_wait: Option<Duration>,
    /// What a wait past --lock-max-wait does when nothing stale is cached.
    #[arg(long, env = "CACHELAYER_ON_LOCK_TIMEOUT", default_value = "load", value_parser = lock_timeout_policy())]
    pub on_lock_timeout: OnLockTimeout,
    /// XFetch early-refresh beta (0: off; 1: the usual).
    #[arg(long, env = "CACHELAYER_EARLY_REFRESH_BETA", default_value_t = cachelayer::stampede::DEFAULT_EARLY_REFRESH_BETA)]
    pub early_refresh_beta: f64,
    /// Comma-separated hosts, without ports. `serve`: list pages are cached only for these
    /// (others are answered uncached); `proxy`: only these are served (others get 421).
    /// Empty: every host, each with its own entries.
    #[arg(long, env = "CACHELAYER_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Whether the port of a request's `Host` is part of the HTTP cache's keys (default
    /// ports, 80 and 443, never are): `keep` (`localhost:8080` and `localhost` are
    /// different entries) or `ignore` (every port of a host shares its entries: instances on
    /// different ports behind one name, whose responses do not depend on the port). URL
    /// purges follow the same rule.
    #[arg(long, env = "CACHELAYER_KEY_HOST_PORT", value_enum, default_value_t = KeyHostPort::Keep)]
    pub key_host_port: KeyHostPort,
    /// Token for the admin routes (`Authorization: Bearer ...`); without it they do not exist.
    #[arg(long, env = "CACHELAYER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Log format.
    #[arg(long, env = "CACHELAYER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` directives (e.g. `info`, `cachelayer=debug`).
    #[arg(long, env = "CACHELAYER_LOG", default_value = "info")]
    pub log: String,
    /// What one client may hold of a listener.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `--key-host-port`: the library's [`HostPort`], as the flag spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyHostPort {
    /// The port is part of the key.
    Keep,
    /// Every port of a host shares its entries.
    Ignore,
}

impl From<KeyHostPort> for HostPort {
    fn from(flag: KeyHostPort) -> Self {
        match flag {
            KeyHostPort::Keep => Self::Kept,
            KeyHostPort::Ignore => Self::Ignored,
        }
    }
}

/// Stale-serving windows of cached values (zero: off).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stale {
    /// While one refresh runs.
    pub while_revalidate: Duration,
    /// When the loader fails.
    pub if_error: Duration,
}

/// `--on-lock-timeout`: the library's [`OnLockTimeout`], parsed by the library itself; the
/// values are listed here only so `--help` can say what each one does.
fn lock_timeout_policy() -> impl TypedValueParser<Value = OnLockTimeout> {
    PossibleValuesParser::new([
        PossibleValue::new("load").help("Load anyway"),
        PossibleValue::new("fail").help("Answer 503"),
    ])
    .try_map(|policy| policy.parse::<OnLockTimeout>())
}

/// A duration flag (`250ms`, `30s`, `5m`), with a hint of the format when it is not one.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{err}; write a duration such as 250ms, 30s or 5m"))
}

/// `--redis-url`: a URL of one Redis (`redis://`, `rediss://`), a Sentinel set-up
/// (`redis+sentinel://`) or a Redis Cluster (`redis+cluster://`), which the store can read,
/// checked by its own parser (hosts, ports, database number, master name) without dialling:
/// an unreachable Redis is no error at start (the cache fails open), a malformed URL is.
fn check_redis_url(url: &str) -> Result<(), Error> {
    let flag = "--redis-url (REDIS_URL)";
    let shown = cachelayer::store::redact_url(url);
    const SCHEMES: [&str; 6] = [
        "redis://",
        "rediss://",
        "redis+sentinel://",
        "rediss+sentinel://",
        "redis+cluster://",
        "rediss+cluster://",
    ];
    if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
        return Err(Error::config(
            flag,
            format!(
                "{shown} is not a Redis URL; use redis://HOST:PORT/DB (rediss:// for TLS), redis+sentinel://HOST:PORT,.../MASTER or redis+cluster://HOST:PORT,..."
            ),
        ));
    }
    // The store's refusal names the URL (redacted) and what is wrong with it.
    cachelayer::store::RedisStore::check_url(url)
        .map_err(|err| Error::config(flag, err.to_string()))
}

/// Refuses a duration past the longest TTL a store keeps (ten years), naming `flag`.
pub(crate) fn within_max_ttl(flag: &str, value: Duration) -> Result<(), Error> {
    if value > cachelayer::store::MAX_TTL {
        return Err(Error::config(flag, "must be at most 10 years"));
    }
    Ok(())
}

/// An `IP:PORT` flag, or an error naming `flag`.
pub(crate) fn parse_address(flag: &str, raw: &str) -> Result<SocketAddr, Error> {
    raw.parse().map_err(|_| {
        Error::config(
            flag,
            format!("{raw:?} is not an address; write IP:PORT, e.g. 127.0.0.1:8000"),
        )
    })
}

/// `--workers`: a whole number, at least 1 (`-3` reaches here as a value, so the message
/// names the rule rather than calling it an unknown flag).
pub(crate) fn worker_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(workers) if workers >= 1 => Ok(workers),
        _ => Err(format!(
            "{text:?} is not a number of threads; give a whole number, at least 1"
        )),
    }
}

/// `--workers`, else one per CPU.
pub(crate) fn workers_or_default(workers: Option<usize>) -> usize {
    workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

impl CommonArgs {
    /// The allowed hosts, lowercase, without empty entries.
    pub(crate) fn hosts(&self) -> Vec<String> {
        self.allowed_hosts
            .iter()
            .map(|host| host.trim().to_ascii_lowercase())
            .filter(|host| !host.is_empty())
            .collect()
    }

    /// The admin token, unless empty.
    pub(crate) fn token(&self) -> Option<Secret> {
        self.admin_token
            .clone()
            .filter(|token| !token.is_empty())
            .map(Secret::new)
    }

    /// The library's cache settings these flags describe, checked, with the cache's
    /// default TTL and the TTL of cached "not found" results (zero: none).
    pub fn cache_config(
        &self,
        default_ttl: Duration,
        negative_ttl: Duration,
        stale: Stale,
    ) -> Result<CacheConfig, Error> {
        if let Some(url) = &self.redis_url {
            check_redis_url(url)?;
            // Read only with Redis, and refused by the store only then.
            if self.redis_pool_size == 0 {
                return Err(Error::config(
                    "--redis-pool-size (CACHELAYER_REDIS_POOL_SIZE)",
                    "must be at least 1",
                ));
            }
        }
        if !(self.early_refresh_beta.is_finite() && self.early_refresh_beta >= 0.0) {
            return Err(Error::config(
                "--early-refresh-beta (CACHELAYER_EARLY_REFRESH_BETA)",
                "must be a number of 0 or more (0 turns early refresh off)",
            ));
        }
        for (flag, value) in [
            ("--lock-ttl (CACHELAYER_LOCK_TTL)", self.lock_ttl),
            (
                "--redis-command-timeout (CACHELAYER_REDIS_COMMAND_TIMEOUT)",
                self.redis_command_timeout,
            ),
            (
                "--redis-connect-timeout (CACHELAYER_REDIS_CONNECT_TIMEOUT)",
                self.redis_connect_timeout,
            ),
        ] {
            if value < Duration::from_millis(1) {
                return Err(Error::config(flag, "must be at least 1ms"));
            }
        }
        if let Err(err) = cachelayer::cache::validate_namespace(&self.namespace) {
            return Err(Error::config(
                "--namespace (CACHELAYER_NAMESPACE)",
                err.to_string(),
            ));
        }
        Ok(CacheConfig {
            redis_url: self.redis_url.clone().map(Secret::new),
            redis_pool_size: self.redis_pool_size,
            connect_timeout: self.redis_connect_timeout,
            command_timeout: self.redis_command_timeout,
            memory_capacity_bytes: self.memory_capacity_bytes,
            near_capacity_bytes: self.near_capacity_bytes,
            namespace: self.namespace.clone(),
            // `--cache-ttl 0s` turns caching off for serve's loads; the cache's own default
            // TTL must still be positive.
            default_ttl: default_ttl.max(Duration::from_millis(1)),
            compression_threshold_bytes: self.compression_threshold,
            lock: self.lock,
            lock_ttl: self.lock_ttl,
            lock_max_wait: self
                .lock_max_wait
                .unwrap_or(cachelayer::stampede::DEFAULT_LOCK_MAX_WAIT),
            on_lock_timeout: self.on_lock_timeout,
            early_refresh_beta: self.early_refresh_beta,
            stale_while_revalidate: stale.while_revalidate,
            stale_if_error: stale.if_error,
            negative_ttl,
            ..CacheConfig::default()
        })
    }
}
