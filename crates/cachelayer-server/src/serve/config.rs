//! The settings of `cachelayer serve`: its flags ([`ServeArgs`], with those both commands
//! take flattened in), checked into a [`ServeConfig`]. Invalid settings are refused here,
//! with a message naming the flag and its variable, before anything starts.
//!
//! This module must never log secrets: [`ServeConfig`]'s `Debug` redacts the admin token
//! and the passwords in URLs, because the effective configuration is logged at start.

use std::net::SocketAddr;
use std::time::Duration;

use cachelayer::CacheConfig;
use cachelayer::config::Secret;
use cachelayer::http::HostPort;
use clap::Args;

use crate::error::Error;
use crate::flags::{
    CommonArgs, Stale, duration, parse_address, within_max_ttl, worker_count, workers_or_default,
};
use crate::listen::Limits;
use crate::logging::LogFormat;

/// The default database: an SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://cachelayer.db";
/// `--listen`, as errors name it.
pub(super) const LISTEN_FLAG: &str = "--listen (CACHELAYER_LISTEN)";

/// The version in every key `serve` writes: 2 since product entries hold their `ETag` in
/// front of the JSON. An instance of another version neither reads these entries nor
/// serves them as its own (it would send the tag as part of the body).
pub(crate) const ENTRY_LAYOUT_VERSION: u32 = 2;

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
    #[arg(long, env = "CACHELAYER_WORKERS", allow_negative_numbers = true, value_parser = worker_count)]
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
    /// Whether the `Host`'s port is part of list pages' keys.
    pub key_host_port: HostPort,
    /// Admin token, if the admin routes are on.
    pub admin_token: Option<Secret>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
    /// What one client may hold of a listener.
    pub limits: Limits,
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
            .field("key_host_port", &self.key_host_port)
            .field("admin_token", &self.admin_token)
            .field("log_format", &self.log_format)
            .field("cache", &self.cache)
            .field("limits", &self.limits)
            .finish()
    }
}

impl ServeArgs {
    /// Check every setting; the first invalid one is named in the error.
    pub fn into_config(self) -> Result<ServeConfig, Error> {
        let listen = parse_address(LISTEN_FLAG, &self.listen)?;
        check_database_url(&self.database_url)?;
        if self.db_pool_size == 0 {
            return Err(Error::config(
                "--db-pool-size (CACHELAYER_DB_POOL_SIZE)",
                "must be at least 1",
            ));
        }
        let workers = workers_or_default(self.workers);
        if self.max_body_bytes == 0 {
            return Err(Error::config(
                "--max-body-bytes (CACHELAYER_MAX_BODY_BYTES)",
                "must be at least 1",
            ));
        }
        for (flag, value) in [
            ("--cache-ttl (CACHELAYER_CACHE_TTL)", self.cache_ttl),
            ("--list-ttl (CACHELAYER_LIST_TTL)", self.list_ttl),
            (
                "--negative-ttl (CACHELAYER_NEGATIVE_TTL)",
                self.negative_ttl,
            ),
            (
                "--stale-while-revalidate (CACHELAYER_STALE_WHILE_REVALIDATE)",
                self.stale_while_revalidate,
            ),
            (
                "--stale-if-error (CACHELAYER_STALE_IF_ERROR)",
                self.stale_if_error,
            ),
        ] {
            within_max_ttl(flag, value)?;
        }
        let common = self.common;
        let stale = Stale {
            while_revalidate: self.stale_while_revalidate,
            if_error: self.stale_if_error,
        };
        let mut cache = common.cache_config(self.cache_ttl, self.negative_ttl, stale)?;
        cache.version = ENTRY_LAYOUT_VERSION;
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
            key_host_port: common.key_host_port.into(),
            admin_token: common.token(),
            log_format: common.log_format,
            log: common.log,
            limits: common.limits.limits()?,
        })
    }
}

fn check_database_url(url: &str) -> Result<(), Error> {
    let supported = url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://");
    if supported {
        return Ok(());
    }
    let flag = "--database-url (DATABASE_URL)";
    if !url.contains("://") {
        // A bare path: the user meant an SQLite file.
        return Err(Error::config(
            flag,
            format!("{url:?} is not a URL; for an SQLite file write sqlite://{url}"),
        ));
    }
    Err(Error::config(
        flag,
        format!(
            "{} is not supported; use sqlite://PATH or postgres://USER:PASSWORD@HOST/DATABASE",
            cachelayer::store::redact_url(url)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cachelayer serve`'s flags alone, as the command line parses them.
    #[derive(Debug, clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeConfig, String> {
        let mut argv = vec!["serve"];
        argv.extend_from_slice(args);
        let serve = <Serve as clap::Parser>::try_parse_from(argv).map_err(|err| err.to_string())?;
        serve.args.into_config().map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_are_sqlite_and_the_in_process_store() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.database_url, DEFAULT_DATABASE_URL);
        assert!(config.cache.redis_url.is_none());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(config.seed, 1000);
    }

    #[test]
    fn invalid_settings_are_named() {
        let err = parse(&["--database-url", "mysql://x"]).expect_err("refused");
        assert!(err.contains("--database-url (DATABASE_URL)"), "{err}");
        let err = parse(&["--database-url", "cachelayer.db"]).expect_err("refused");
        assert!(err.contains("sqlite://cachelayer.db"), "{err}");
        for url in [
            "http://x",
            "redis://[::1",
            "redis://cache:notaport",
            "redis://cache/db",
        ] {
            let err = parse(&["--redis-url", url]).expect_err("refused");
            assert!(err.contains("--redis-url (REDIS_URL)"), "{url}: {err}");
        }
        let err = parse(&["--redis-url", "redis://u:s3cret@cache:port"]).expect_err("refused");
        assert!(!err.contains("s3cret"), "{err}");
        let redis = ["--redis-url", "redis://cache", "--redis-pool-size", "0"];
        let err = parse(&redis).expect_err("refused");
        assert!(err.contains("--redis-pool-size"), "{err}");
        // Settings the cache itself would refuse are named by their flags, not as "cache
        // settings".
        for (args, flag) in [
            (
                &["--namespace", "a:b"][..],
                "--namespace (CACHELAYER_NAMESPACE)",
            ),
            (
                &["--namespace", "a b"],
                "--namespace (CACHELAYER_NAMESPACE)",
            ),
            (
                &["--cache-ttl", "11years"],
                "--cache-ttl (CACHELAYER_CACHE_TTL)",
            ),
            (
                &["--list-ttl", "11years"],
                "--list-ttl (CACHELAYER_LIST_TTL)",
            ),
            (&["--stale-if-error", "11years"], "--stale-if-error"),
        ] {
            let err = parse(args).expect_err("refused");
            assert!(err.contains(flag), "{args:?}: {err}");
        }
        // Only its form is checked: nothing listens on port 1, and that is no error at start.
        parse(&["--redis-url", "redis://127.0.0.1:1/0"]).expect("a well-formed URL");
        let err = parse(&["--cache-ttl", "soon"]).expect_err("refused");
        assert!(err.contains("--cache-ttl"), "{err}");
        let err = parse(&["--listen", "localhost"]).expect_err("refused");
        assert!(err.contains("--listen (CACHELAYER_LISTEN)"), "{err}");
        for workers in ["0", "-3", "two"] {
            let err = parse(&["--workers", workers]).expect_err("refused");
            assert!(
                err.contains("--workers") && err.contains("at least 1"),
                "{workers}: {err}"
            );
        }
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
