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
    /// Put the HTTP cache in front of an existing API (a shared caching reverse proxy).
    Proxy(Box<ProxyArgs>),
}

/// Flags of `cachelayer proxy`.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// The API to cache: `http://HOST:PORT` (requests keep their path and query).
    #[arg(long, env = "CACHELAYER_UPSTREAM")]
    pub upstream: String,
    /// Address to listen on for clients.
    #[arg(long, env = "CACHELAYER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Address of /metrics, /health and /admin, apart from the upstream's paths.
    #[arg(
        long,
        env = "CACHELAYER_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: String,
    /// TOML file of per-path rules: default TTLs for responses without cache headers, and
    /// paths that bypass the cache.
    #[arg(long, env = "CACHELAYER_PROXY_RULES")]
    pub rules: Option<std::path::PathBuf>,
    /// The `Host` sent upstream: the client's (`forward`) or the upstream's (`rewrite`).
    #[arg(long, env = "CACHELAYER_HOST_MODE", value_enum, default_value_t = HostMode::Forward)]
    pub host_mode: HostMode,
    /// Longest wait for the upstream's response headers; past it, 504.
    #[arg(long, env = "CACHELAYER_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub upstream_timeout: Duration,
    /// Longest wait for a connection to the upstream; past it, 502.
    #[arg(long, env = "CACHELAYER_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub upstream_connect_timeout: Duration,
    /// Largest response body stored; larger ones stream through unstored.
    #[arg(long, env = "CACHELAYER_MAX_CACHED_BODY_BYTES", default_value_t = cachelayer::http::DEFAULT_MAX_BODY_BYTES)]
    pub max_cached_body_bytes: usize,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long, env = "CACHELAYER_WORKERS")]
    pub workers: Option<usize>,
    /// How long shutdown waits for in-flight requests.
    #[arg(long, env = "CACHELAYER_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub shutdown_timeout: Duration,
    /// Serve a stored response this long past its freshness while one request refreshes
    /// it, for responses that do not say (default 0: only when the upstream says so).
    #[arg(long, env = "CACHELAYER_STALE_WHILE_REVALIDATE", default_value = "0s", value_parser = duration)]
    pub stale_while_revalidate: Duration,
    /// Serve a stored response this long past its freshness when the upstream fails, for
    /// responses that do not say (default 0: only when the upstream says so).
    #[arg(long, env = "CACHELAYER_STALE_IF_ERROR", default_value = "0s", value_parser = duration)]
    pub stale_if_error: Duration,
    /// Cache, Redis, admin and logging settings.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `--host-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HostMode {
    /// Send the client's `Host` upstream unchanged.
    Forward,
    /// Send the upstream's own host and port (the client's goes in `X-Forwarded-Host`).
    Rewrite,
}

/// The checked settings of `cachelayer proxy`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The upstream's base URI (scheme and authority).
    pub upstream: http::Uri,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where /metrics, /health and /admin are.
    pub admin_listen: SocketAddr,
    /// Per-path rules.
    pub rules: Vec<crate::proxy::Rule>,
    /// `Host` handling.
    pub host_mode: HostMode,
    /// Upstream response-header deadline.
    pub upstream_timeout: Duration,
    /// Upstream connect deadline.
    pub upstream_connect_timeout: Duration,
    /// Largest stored body.
    pub max_cached_body_bytes: usize,
    /// Runtime worker threads.
    pub workers: usize,
    /// Drain deadline at shutdown.
    pub shutdown_timeout: Duration,
    /// The cache (its Debug redacts the Redis password).
    pub cache: CacheConfig,
    /// Hosts served (others get 421), empty: any.
    pub allowed_hosts: Vec<String>,
    /// Serve stale responses this long when the upstream fails.
    pub stale_if_error: Duration,
    /// Serve stale responses this long while one refresh runs.
    pub stale_while_revalidate: Duration,
    /// Admin token (redacted in Debug by `Secret`).
    pub admin_token: Option<Secret>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
}

/// A secret setting: shown as `***` by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl ProxyArgs {
    /// Check every setting; the first invalid one is named in the error.
    pub fn into_config(self) -> Result<ProxyConfig, Error> {
        let upstream = parse_upstream(&self.upstream)?;
        let listen = parse_address("--listen (CACHELAYER_LISTEN)", &self.listen)?;
        let admin_listen = parse_address(
            "--admin-listen (CACHELAYER_ADMIN_LISTEN)",
            &self.admin_listen,
        )?;
        let rules = match &self.rules {
            Some(path) => crate::proxy::load_rules(path)?,
            None => Vec::new(),
        };
        let workers = check_workers(self.workers)?;
        let common = self.common;
        let cache =
            common.cache_config(cachelayer::DEFAULT_TTL, Duration::ZERO, Stale::default())?;
        Ok(ProxyConfig {
            upstream,
            listen,
            admin_listen,
            rules,
            host_mode: self.host_mode,
            upstream_timeout: self.upstream_timeout,
            upstream_connect_timeout: self.upstream_connect_timeout,
            max_cached_body_bytes: self.max_cached_body_bytes,
            workers,
            shutdown_timeout: self.shutdown_timeout,
            cache,
            allowed_hosts: common.hosts(),
            stale_if_error: self.stale_if_error,
            stale_while_revalidate: self.stale_while_revalidate,
            admin_token: common.token().map(Secret),
            log_format: common.log_format,
            log: common.log,
        })
    }
}

fn parse_upstream(raw: &str) -> Result<http::Uri, Error> {
    let flag = "--upstream (CACHELAYER_UPSTREAM)";
    let uri: http::Uri = raw.parse().map_err(|_| {
        Error::config(
            flag,
            format!("{raw:?} is not a URL; write http://HOST:PORT"),
        )
    })?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(Error::config(
            flag,
            format!(
                "{raw:?} must be http://HOST[:PORT] (the proxy speaks plain HTTP/1.1 upstream)"
            ),
        ));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(Error::config(
            flag,
            "must not carry user information (user:password@); the upstream sees the client's own headers",
        ));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(Error::config(
            flag,
            format!("{raw:?} has a path; give only http://HOST[:PORT]"),
        ));
    }
    Ok(uri)
}

fn parse_address(flag: &str, raw: &str) -> Result<SocketAddr, Error> {
    raw.parse().map_err(|_| {
        Error::config(
            flag,
            format!("{raw:?} is not an address; write IP:PORT, e.g. 127.0.0.1:8000"),
        )
    })
}

fn check_workers(workers: Option<usize>) -> Result<usize, Error> {
    match workers {
        Some(0) => Err(Error::config(
            "--workers (CACHELAYER_WORKERS)",
            "must be at least 1",
        )),
        Some(workers) => Ok(workers),
        None => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
    }
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
    /// How long a cached product stays fresh (`0s` turns the cache off).
    #[arg(long, env = "CACHELAYER_CACHE_TTL", default_value = "5m", value_parser = duration)]
    pub cache_ttl: Duration,
    /// How long a cached list page stays fresh (writes invalidate it at once).
    #[arg(long, env = "CACHELAYER_LIST_TTL", default_value = "60s", value_parser = duration)]
    pub list_ttl: Duration,
    /// How long a "not found" is cached (`0s`: never).
    #[arg(long, env = "CACHELAYER_NEGATIVE_TTL", default_value = "5s", value_parser = duration)]
    pub negative_ttl: Duration,
    /// Serve a product this long past its TTL while one refresh runs.
    #[arg(long, env = "CACHELAYER_STALE_WHILE_REVALIDATE", default_value = "0s", value_parser = duration)]
    pub stale_while_revalidate: Duration,
    /// Serve a product this long past its TTL when the database fails.
    #[arg(long, env = "CACHELAYER_STALE_IF_ERROR", default_value = "5m", value_parser = duration)]
    pub stale_if_error: Duration,
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
    /// Comma-separated hosts, without ports. `serve`: list pages are cached only for these
    /// (others are answered uncached); `proxy`: only these are served (others get 421).
    /// Empty: every host, each with its own entries.
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

/// Stale-serving windows of cached values (zero: off).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stale {
    /// While one refresh runs.
    pub while_revalidate: Duration,
    /// When the loader fails.
    pub if_error: Duration,
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
        let listen = parse_address("--listen (CACHELAYER_LISTEN)", &self.listen)?;
        check_database_url(&self.database_url)?;
        if self.db_pool_size == 0 {
            return Err(Error::config(
                "--db-pool-size (CACHELAYER_DB_POOL_SIZE)",
                "must be at least 1",
            ));
        }
        let workers = check_workers(self.workers)?;
        if self.max_body_bytes == 0 {
            return Err(Error::config(
                "--max-body-bytes (CACHELAYER_MAX_BODY_BYTES)",
                "must be at least 1",
            ));
        }
        let common = self.common;
        let stale = Stale {
            while_revalidate: self.stale_while_revalidate,
            if_error: self.stale_if_error,
        };
        let cache = common.cache_config(self.cache_ttl, self.negative_ttl, stale)?;
        Ok(ServeConfig {
            listen,
            database_url: self.database_url,
            db_pool_size: self.db_pool_size,
            seed: self.seed,
            workers,
            max_body_bytes: self.max_body_bytes,
            shutdown_timeout: self.shutdown_timeout,
            cache,
            cache_ttl: self.cache_ttl,
            list_ttl: self.list_ttl,
            allowed_hosts: common.hosts(),
            admin_token: common.token(),
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
    /// The allowed hosts, lowercase, without empty entries.
    fn hosts(&self) -> Vec<String> {
        self.allowed_hosts
            .iter()
            .map(|host| host.trim().to_ascii_lowercase())
            .filter(|host| !host.is_empty())
            .collect()
    }

    /// The admin token, unless empty.
    fn token(&self) -> Option<String> {
        self.admin_token.clone().filter(|token| !token.is_empty())
    }

    /// The library's cache settings these flags describe, checked, with the cache's
    /// default TTL and the TTL of cached "not found" results (zero: none).
    pub fn cache_config(
        &self,
        default_ttl: Duration,
        negative_ttl: Duration,
        stale: Stale,
    ) -> Result<CacheConfig, Error> {
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
            default_ttl_ms: millis(default_ttl).max(1),
            compression_threshold_bytes: self.compression_threshold,
            lock: self.lock,
            lock_ttl_ms: millis(self.lock_ttl),
            lock_max_wait_ms: millis(self.lock_max_wait),
            on_lock_timeout: match self.on_lock_timeout {
                LockTimeoutPolicy::Load => OnLockTimeout::Load,
                LockTimeoutPolicy::Fail => OnLockTimeout::Fail,
            },
            early_refresh_beta: self.early_refresh_beta,
            stale_while_revalidate_ms: millis(stale.while_revalidate),
            stale_if_error_ms: millis(stale.if_error),
            negative_ttl_ms: millis(negative_ttl),
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
        match cli.command {
            Command::Serve(args) => args.into_config().map_err(|err| err.to_string()),
            Command::Proxy(_) => Err("not serve".to_owned()),
        }
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
