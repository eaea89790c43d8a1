//! Configuration: the command line (clap), each flag falling back to an environment
//! variable, checked into a [`ServeConfig`]. Invalid settings are refused here, with a
//! message naming the flag and its variable, before anything starts.
//!
//! This module must never log secrets: [`ServeConfig`]'s `Debug` redacts the admin token
//! and the passwords in URLs, because the effective configuration is logged at start.

use std::net::SocketAddr;
use std::time::Duration;

use cachelayer::{CacheConfig, OnLockTimeout};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::Error;

/// The default database: an SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://cachelayer.db";

/// `cachelayer`: a shared cache for web APIs.
#[derive(Debug, Parser)]
#[command(name = "cachelayer", version, about, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the product catalogue API, cached end to end.
    Serve(Box<ServeArgs>),
}

/// Flags of `cachelayer serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CACHELAYER_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Database: `sqlite://PATH` (created if missing) or `postgres://USER:PASS@HOST/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Database connections in the pool.
    #[arg(long, env = "CACHELAYER_DB_POOL_SIZE", default_value_t = 10)]
    pub db_pool_size: u32,
    /// Sample products created in an empty database (0: none).
    #[arg(long, env = "CACHELAYER_SEED", default_value_t = 1000)]
    pub seed: u32,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long, env = "CACHELAYER_WORKERS")]
    pub workers: Option<usize>,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "CACHELAYER_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests (e.g. `30s`).
    #[arg(long, env = "CACHELAYER_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub shutdown_timeout: Duration,
    /// Cache, Redis, admin and logging settings.
    #[command(flatten)]
    pub common: CommonArgs,
}

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
    /// Bound on one Redis command; past it the request goes to the database.
    #[arg(long, env = "CACHELAYER_REDIS_COMMAND_TIMEOUT", default_value = "250ms", value_parser = duration)]
    pub redis_command_timeout: Duration,
    /// Bytes the in-process store may hold (without --redis-url).
    #[arg(long, env = "CACHELAYER_MEMORY_CAPACITY_BYTES", default_value_t = cachelayer::store::DEFAULT_MEMORY_CAPACITY_BYTES)]
    pub memory_capacity_bytes: u64,
    /// Key prefix in the store; instances sharing a cache must agree on it.
    #[arg(long, env = "CACHELAYER_NAMESPACE", default_value = "cachelayer")]
    pub namespace: String,
    /// How long a cached product stays fresh (`0s` turns the cache off).
    #[arg(long, env = "CACHELAYER_CACHE_TTL", default_value = "5m", value_parser = duration)]
    pub cache_ttl: Duration,
    /// How long a cached list page stays fresh (writes invalidate it at once).
    #[arg(long, env = "CACHELAYER_LIST_TTL", default_value = "60s", value_parser = duration)]
    pub list_ttl: Duration,
    /// How long a "not found" is cached (`0s`: never).
    #[arg(long, env = "CACHELAYER_NEGATIVE_TTL", default_value = "5s", value_parser = duration)]
    pub negative_ttl: Duration,
    /// Compress cached values of at least this many bytes (0: never).
    #[arg(long, env = "CACHELAYER_COMPRESSION_THRESHOLD", default_value_t = 1024)]
    pub compression_threshold: usize,
    /// Take the fleet-wide lock so one instance loads a missing key for all.
    #[arg(long, env = "CACHELAYER_LOCK", default_value_t = true, action = clap::ArgAction::Set)]
    pub lock: bool,
    /// Initial lease of the load lock (renewed while loading).
    #[arg(long, env = "CACHELAYER_LOCK_TTL", default_value = "5s", value_parser = duration)]
    pub lock_ttl: Duration,
    /// Longest wait for another instance's load.
    #[arg(long, env = "CACHELAYER_LOCK_MAX_WAIT", default_value = "5s", value_parser = duration)]
    pub lock_max_wait: Duration,
    /// What a wait past --lock-max-wait does when nothing stale is cached.
    #[arg(long, env = "CACHELAYER_ON_LOCK_TIMEOUT", value_enum, default_value_t = LockTimeoutPolicy::Load)]
    pub on_lock_timeout: LockTimeoutPolicy,
    /// XFetch early-refresh beta (0: off; 1: the usual).
    #[arg(long, env = "CACHELAYER_EARLY_REFRESH_BETA", default_value_t = cachelayer::DEFAULT_EARLY_REFRESH_BETA)]
    pub early_refresh_beta: f64,
    /// Serve a value this long past its TTL while one refresh runs.
    #[arg(long, env = "CACHELAYER_STALE_WHILE_REVALIDATE", default_value = "0s", value_parser = duration)]
    pub stale_while_revalidate: Duration,
    /// Serve a value this long past its TTL when the database fails.
    #[arg(long, env = "CACHELAYER_STALE_IF_ERROR", default_value = "5m", value_parser = duration)]
    pub stale_if_error: Duration,
    /// Hosts whose list pages are cached (comma-separated, without ports); requests for
    /// other hosts are answered uncached. Empty: every host, each with its own entries.
    #[arg(long, env = "CACHELAYER_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Token for the admin routes (`Authorization: Bearer ...`); without it they do not exist.
    #[arg(long, env = "CACHELAYER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Log format.
    #[arg(long, env = "CACHELAYER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` directives (e.g. `info`, `cachelayer=debug`).
    #[arg(long, env = "CACHELAYER_LOG", default_value = "info")]
    pub log: String,
}

/// `--on-lock-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockTimeoutPolicy {
    /// Load anyway.
    Load,
    /// Answer 503.
    Fail,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{err}; write a duration such as 250ms, 30s or 5m"))
}

/// The checked settings of `cachelayer serve`.
#[derive(Clone)]
pub struct ServeConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Database URL.
    pub database_url: String,
    /// Database pool size.
    pub db_pool_size: u32,
    /// Sample products for an empty database.
    pub seed: u32,
    /// Runtime worker threads.
    pub workers: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Drain deadline at shutdown.
    pub shutdown_timeout: Duration,
    /// The cache.
    pub cache: CacheConfig,
    /// Fresh lifetime of cached products (zero: no caching).
    pub cache_ttl: Duration,
    /// Fresh lifetime of cached list pages.
    pub list_ttl: Duration,
    /// Hosts whose responses the HTTP cache stores (empty: any).
    pub allowed_hosts: Vec<String>,
    /// Admin token, if the admin routes are on.
    pub admin_token: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field(
                "database_url",
                &cachelayer::store::redact_url(&self.database_url),
            )
            .field("db_pool_size", &self.db_pool_size)
            .field("seed", &self.seed)
            .field("workers", &self.workers)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("cache_ttl", &self.cache_ttl)
            .field("list_ttl", &self.list_ttl)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("log_format", &self.log_format)
            .field("cache", &self.cache)
            .finish()
    }
}

impl ServeArgs {
    /// Check every setting; the first invalid one is named in the error.
    pub fn into_config(self) -> Result<ServeConfig, Error> {
        let listen = self.listen.parse().map_err(|_| {
            Error::config(
                "--listen (CACHELAYER_LISTEN)",
                format!(
                    "{:?} is not an address; write IP:PORT, e.g. 127.0.0.1:8000",
                    self.listen
                ),
            )
        })?;
        check_database_url(&self.database_url)?;
        if self.db_pool_size == 0 {
            return Err(Error::config(
                "--db-pool-size (CACHELAYER_DB_POOL_SIZE)",
                "must be at least 1",
            ));
        }
        let workers = match self.workers {
            Some(0) => {
                return Err(Error::config(
                    "--workers (CACHELAYER_WORKERS)",
                    "must be at least 1",
                ));
            }
            Some(workers) => workers,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if self.max_body_bytes == 0 {
            return Err(Error::config(
                "--max-body-bytes (CACHELAYER_MAX_BODY_BYTES)",
                "must be at least 1",
            ));
        }
        let common = self.common;
        let cache = common.cache_config()?;
        Ok(ServeConfig {
            listen,
            database_url: self.database_url,
            db_pool_size: self.db_pool_size,
            seed: self.seed,
            workers,
            max_body_bytes: self.max_body_bytes,
            shutdown_timeout: self.shutdown_timeout,
            cache,
            cache_ttl: common.cache_ttl,
            list_ttl: common.list_ttl,
            allowed_hosts: common
                .allowed_hosts
                .iter()
                .map(|host| host.trim().to_ascii_lowercase())
                .filter(|host| !host.is_empty())
                .collect(),
            admin_token: common.admin_token.filter(|token| !token.is_empty()),
            log_format: common.log_format,
            log: common.log,
        })
    }
}

fn check_database_url(url: &str) -> Result<(), Error> {
    let supported = url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://");
    if supported {
        Ok(())
    } else {
        Err(Error::config(
            "--database-url (DATABASE_URL)",
            format!(
                "{} is not supported; use sqlite://PATH or postgres://USER:PASSWORD@HOST/DATABASE",
                cachelayer::store::redact_url(url)
            ),
        ))
    }
}

impl CommonArgs {
    /// The library's cache settings these flags describe, checked.
    pub fn cache_config(&self) -> Result<CacheConfig, Error> {
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(Error::config(
                "--redis-url (REDIS_URL)",
                format!(
                    "{} is not a Redis URL; use redis://HOST:PORT/DB or rediss:// for TLS",
                    cachelayer::store::redact_url(url)
                ),
            ));
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
        if self.namespace.is_empty() || self.namespace.contains(char::is_whitespace) {
            return Err(Error::config(
                "--namespace (CACHELAYER_NAMESPACE)",
                "must be a non-empty word without spaces",
            ));
        }
        Ok(CacheConfig {
            redis_url: self.redis_url.clone(),
            redis_pool_size: self.redis_pool_size,
            connect_timeout_ms: millis(self.redis_connect_timeout),
            command_timeout_ms: millis(self.redis_command_timeout),
            memory_capacity_bytes: self.memory_capacity_bytes,
            namespace: self.namespace.clone(),
            default_ttl_ms: millis(self.cache_ttl).max(1),
            compression_threshold_bytes: self.compression_threshold,
            lock: self.lock,
            lock_ttl_ms: millis(self.lock_ttl),
            lock_max_wait_ms: millis(self.lock_max_wait),
            on_lock_timeout: match self.on_lock_timeout {
                LockTimeoutPolicy::Load => OnLockTimeout::Load,
                LockTimeoutPolicy::Fail => OnLockTimeout::Fail,
            },
            early_refresh_beta: self.early_refresh_beta,
            stale_while_revalidate_ms: millis(self.stale_while_revalidate),
            stale_if_error_ms: millis(self.stale_if_error),
            negative_ttl_ms: millis(self.negative_ttl),
            ..CacheConfig::default()
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServeConfig, String> {
        let mut argv = vec!["cachelayer", "serve"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|err| err.to_string())?;
        let Command::Serve(args) = cli.command;
        args.into_config().map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_are_sqlite_and_the_in_process_store() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(config.cache.redis_url, None);
        assert_eq!(config.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(config.seed, 1000);
    }

    #[test]
    fn invalid_settings_are_named() {
        let err = parse(&["--database-url", "mysql://x"]).expect_err("refused");
        assert!(err.contains("--database-url (DATABASE_URL)"), "{err}");
        let err = parse(&["--redis-url", "http://x"]).expect_err("refused");
        assert!(err.contains("--redis-url (REDIS_URL)"), "{err}");
        let err = parse(&["--cache-ttl", "soon"]).expect_err("refused");
        assert!(err.contains("--cache-ttl"), "{err}");
        let err = parse(&["--listen", "localhost"]).expect_err("refused");
        assert!(err.contains("--listen (CACHELAYER_LISTEN)"), "{err}");
        let err = parse(&["--workers", "0"]).expect_err("refused");
        assert!(err.contains("--workers"), "{err}");
        let err = parse(&["--early-refresh-beta=-1"]).expect_err("refused");
        assert!(err.contains("--early-refresh-beta"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let config = parse(&[
            "--admin-token",
            "s3cret-token",
            "--database-url",
            "postgres://app:dbpass@db/cat",
            "--redis-url",
            "redis://:redispass@cache:6379/0",
        ])
        .expect("valid");
        let shown = format!("{config:?}");
        for secret in ["s3cret-token", "dbpass", "redispass"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
    }
}
