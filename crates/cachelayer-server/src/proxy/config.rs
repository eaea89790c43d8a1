//! The settings of `cachelayer proxy`: its flags ([`ProxyArgs`], with those both commands
//! take flattened in), checked into a [`ProxyConfig`], the upstream URL and the rules file
//! included. Invalid settings are refused here, with a message naming the flag and its
//! variable, before anything starts.
//!
//! This module must never log secrets: [`ProxyConfig`]'s `Debug` redacts the admin token
//! and the Redis password, because the effective configuration is logged at start.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cachelayer::CacheConfig;
use cachelayer::http::HostPort;
use cachelayer::http::policy::SetCookieResponses;
use clap::{Args, ValueEnum};

use super::rules::{Rule, load_rules};
use crate::error::Error;
use crate::listen::Limits;
use cachelayer::config::Secret;

use crate::flags::{CommonArgs, Stale, duration, parse_address, worker_count, workers_or_default};
use crate::logging::LogFormat;

/// `--listen`, as errors name it.
pub(super) const LISTEN_FLAG: &str = "--listen (CACHELAYER_LISTEN)";
/// `--admin-listen`, as errors name it.
pub(super) const ADMIN_LISTEN_FLAG: &str = "--admin-listen (CACHELAYER_ADMIN_LISTEN)";

/// Default `--upstream-max-concurrency`: the idle connections kept to the upstream, so every
/// request let through finds a pooled connection.
pub(crate) const DEFAULT_UPSTREAM_MAX_CONCURRENCY: usize = 256;

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
    /// Longest wait for the upstream's response headers, a wait for a place under
    /// --upstream-max-concurrency included; past it, 504 (503 while still waiting).
    #[arg(long, env = "CACHELAYER_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub upstream_timeout: Duration,
    /// Longest wait for a connection to the upstream; past it, 502.
    #[arg(long, env = "CACHELAYER_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub upstream_connect_timeout: Duration,
    /// Longest pause in the upstream's response body; past it, the response is cut.
    #[arg(long, env = "CACHELAYER_UPSTREAM_BODY_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub upstream_body_timeout: Duration,
    /// Most requests in flight to the upstream at once (until each response body ends);
    /// more wait, within --upstream-timeout, then get 503.
    #[arg(long, env = "CACHELAYER_UPSTREAM_MAX_CONCURRENCY", default_value_t = DEFAULT_UPSTREAM_MAX_CONCURRENCY)]
    pub upstream_max_concurrency: usize,
    /// Largest response body stored; larger ones stream through unstored.
    #[arg(long, env = "CACHELAYER_MAX_CACHED_BODY_BYTES", default_value_t = cachelayer::http::DEFAULT_MAX_BODY_BYTES)]
    pub max_cached_body_bytes: usize,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long, env = "CACHELAYER_WORKERS", allow_negative_numbers = true, value_parser = worker_count)]
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
    /// Targeted cache-control fields obeyed before `Cache-Control` and `Expires` (RFC 9213),
    /// first match first, comma-separated; an empty value obeys `Cache-Control` only.
    #[arg(
        long,
        env = "CACHELAYER_TARGETED_CACHE_CONTROL",
        default_value = "cachelayer-cache-control,cdn-cache-control",
        value_delimiter = ','
    )]
    pub targeted_cache_control: Vec<String>,
    /// Longest freshness guessed from `Last-Modified` for responses that give none (a tenth
    /// of the time since they were modified, RFC 9111 section 4.2.2); 0s turns it off.
    #[arg(long, env = "CACHELAYER_HEURISTIC_FRESHNESS_LIMIT", default_value = "24h", value_parser = duration)]
    pub heuristic_freshness_limit: Duration,
    /// Responses that set a cookie without marking it `no-cache="Set-Cookie"` or
    /// `private="Set-Cookie"`: not stored (`refuse`), stored without the cookie (`strip`),
    /// or stored and served with it to everyone (`store`, for origins that mark per-user
    /// responses `private` themselves).
    #[arg(long, env = "CACHELAYER_SET_COOKIE_RESPONSES", value_enum, default_value_t = SetCookieMode::Refuse)]
    pub set_cookie_responses: SetCookieMode,
    /// The key space of this proxy's entries: proxies with the same scope on one Redis
    /// share entries, others never do (default: the upstream's origin, http://HOST:PORT).
    #[arg(long, env = "CACHELAYER_KEY_SCOPE")]
    pub key_scope: Option<String>,
    /// Cache, Redis, admin and logging settings.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `--set-cookie-responses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SetCookieMode {
    /// Not stored.
    Refuse,
    /// Stored without `Set-Cookie`.
    Strip,
    /// Stored with `Set-Cookie`, served to every client.
    Store,
}

impl From<SetCookieMode> for SetCookieResponses {
    fn from(mode: SetCookieMode) -> Self {
        match mode {
            SetCookieMode::Refuse => Self::Refuse,
            SetCookieMode::Strip => Self::Strip,
            SetCookieMode::Store => Self::Store,
        }
    }
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
    pub rules: Vec<Rule>,
    /// `Host` handling.
    pub host_mode: HostMode,
    /// Upstream response-header deadline.
    pub upstream_timeout: Duration,
    /// Upstream connect deadline.
    pub upstream_connect_timeout: Duration,
    /// Longest pause in an upstream response body.
    pub upstream_body_timeout: Duration,
    /// Most requests in flight to the upstream at once.
    pub upstream_max_concurrency: usize,
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
    /// Whether the `Host`'s port is part of keys.
    pub key_host_port: HostPort,
    /// Serve stale responses this long when the upstream fails.
    pub stale_if_error: Duration,
    /// Serve stale responses this long while one refresh runs.
    pub stale_while_revalidate: Duration,
    /// The key space of the cached responses (`--key-scope`, else the upstream's origin).
    pub key_scope: String,
    /// Targeted cache-control fields obeyed, first match first (lowercase field names).
    pub targeted_cache_control: Vec<String>,
    /// Longest heuristic freshness; zero: no heuristic freshness.
    pub heuristic_freshness_limit: Duration,
    /// Responses that set a cookie.
    pub set_cookie_responses: SetCookieResponses,
    /// Admin token (redacted in Debug by `Secret`).
    pub admin_token: Option<Secret>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
    /// What one client may hold of a listener.
    pub limits: Limits,
}

impl ProxyArgs {
    /// Check every setting; the first invalid one is named in the error.
    pub fn into_config(self) -> Result<ProxyConfig, Error> {
        let upstream = parse_upstream(&self.upstream)?;
        let key_scope = key_scope(self.key_scope.as_deref(), &upstream)?;
        let listen = parse_address(LISTEN_FLAG, &self.listen)?;
        let admin_listen = parse_address(ADMIN_LISTEN_FLAG, &self.admin_listen)?;
        check_apart(listen, admin_listen)?;
        let rules = match &self.rules {
            Some(path) => load_rules(path)?,
            None => Vec::new(),
        };
        let workers = workers_or_default(self.workers);
        let common = self.common;
        let mut cache = common.cache_config(
            cachelayer::cache::DEFAULT_TTL,
            Duration::ZERO,
            Stale::default(),
        )?;
        if common.lock_max_wait.is_none() {
            // Waiters on a collapsed upstream call wait as long as the call may take.
            cache.lock_max_wait = self.upstream_timeout;
        }
        Ok(ProxyConfig {
            upstream,
            listen,
            admin_listen,
            rules,
            host_mode: self.host_mode,
            upstream_timeout: self.upstream_timeout,
            upstream_connect_timeout: self.upstream_connect_timeout,
            upstream_body_timeout: check_upstream_body_timeout(self.upstream_body_timeout)?,
            upstream_max_concurrency: check_upstream_max_concurrency(
                self.upstream_max_concurrency,
            )?,
            max_cached_body_bytes: self.max_cached_body_bytes,
            workers,
            shutdown_timeout: self.shutdown_timeout,
            cache,
            allowed_hosts: common.hosts(),
            key_host_port: common.key_host_port.into(),
            stale_if_error: self.stale_if_error,
            stale_while_revalidate: self.stale_while_revalidate,
            key_scope,
            targeted_cache_control: targeted_fields(self.targeted_cache_control)?,
            heuristic_freshness_limit: self.heuristic_freshness_limit,
            set_cookie_responses: self.set_cookie_responses.into(),
            admin_token: common.token(),
            log_format: common.log_format,
            log: common.log,
            limits: common.limits.limits()?,
        })
    }
}

/// `--admin-listen` apart from `--listen`: both on one address would fail to bind (or, with
/// a wildcard, leave one listener answering the other's clients).
fn check_apart(listen: SocketAddr, admin_listen: SocketAddr) -> Result<(), Error> {
    if !collide(listen, admin_listen) {
        return Ok(());
    }
    Err(Error::config(
        ADMIN_LISTEN_FLAG,
        format!(
            "{admin_listen} collides with {LISTEN_FLAG} {listen}; give the admin listener a port of its own"
        ),
    ))
}

/// Whether two listeners would contend for one port: the same port (not 0, which picks a
/// free one for each) and the same address, or a wildcard covering the other's.
fn collide(a: SocketAddr, b: SocketAddr) -> bool {
    let (a_ip, b_ip) = (a.ip().to_canonical(), b.ip().to_canonical());
    a.port() == b.port()
        && a.port() != 0
        && (a_ip == b_ip || covers(a_ip, b_ip) || covers(b_ip, a_ip))
}

/// Whether a listener on `wildcard` takes connections to `ip`: `0.0.0.0` those to every IPv4
/// address, `::` those to every address (a dual-stack socket, Linux's default).
fn covers(wildcard: IpAddr, ip: IpAddr) -> bool {
    match wildcard {
        IpAddr::V4(v4) => v4.is_unspecified() && ip.is_ipv4(),
        IpAddr::V6(v6) => v6.is_unspecified(),
    }
}

/// `--targeted-cache-control`: field names (empty entries dropped), lowercase.
fn targeted_fields(names: Vec<String>) -> Result<Vec<String>, Error> {
    let mut fields = Vec::new();
    for name in names
        .iter()
        .map(|name| name.trim())
        .filter(|n| !n.is_empty())
    {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(Error::config(
                "--targeted-cache-control (CACHELAYER_TARGETED_CACHE_CONTROL)",
                format!("{name:?} is not a field name; list names like cdn-cache-control"),
            ));
        }
        fields.push(name.to_ascii_lowercase());
    }
    Ok(fields)
}

/// `--upstream-body-timeout`: zero would cut every body that is not already there.
fn check_upstream_body_timeout(timeout: Duration) -> Result<Duration, Error> {
    if timeout.is_zero() {
        return Err(Error::config(
            "--upstream-body-timeout (CACHELAYER_UPSTREAM_BODY_TIMEOUT)",
            "must be more than 0s",
        ));
    }
    Ok(timeout)
}

/// `--upstream-max-concurrency`: zero would forward nothing.
fn check_upstream_max_concurrency(max: usize) -> Result<usize, Error> {
    if max == 0 || max > tokio::sync::Semaphore::MAX_PERMITS {
        return Err(Error::config(
            "--upstream-max-concurrency (CACHELAYER_UPSTREAM_MAX_CONCURRENCY)",
            format!("must be from 1 to {}", tokio::sync::Semaphore::MAX_PERMITS),
        ));
    }
    Ok(max)
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

/// `--key-scope`, else the upstream's origin as `http://host:port` (lowercase, the port
/// always written), so two spellings of one upstream share a scope and two upstreams never do.
fn key_scope(given: Option<&str>, upstream: &http::Uri) -> Result<String, Error> {
    if let Some(scope) = given {
        if scope.trim().is_empty() {
            return Err(Error::config(
                "--key-scope (CACHELAYER_KEY_SCOPE)",
                "must not be empty; leave it out to scope entries to the upstream",
            ));
        }
        return Ok(scope.to_owned());
    }
    let host = upstream.host().unwrap_or_default().to_ascii_lowercase();
    let port = upstream.port_u16().unwrap_or(80);
    Ok(format!("http://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cachelayer proxy`'s flags alone, as the command line parses them.
    #[derive(Debug, clap::Parser)]
    struct Proxy {
        #[command(flatten)]
        args: ProxyArgs,
    }

    fn parse(args: &[&str]) -> ProxyConfig {
        let mut argv = vec!["proxy", "--upstream", "http://127.0.0.1:5000"];
        argv.extend_from_slice(args);
        let proxy = <Proxy as clap::Parser>::try_parse_from(argv).expect("flags");
        proxy.args.into_config().expect("valid settings")
    }

    /// The defaults agree with one another: waiters on a collapsed upstream call wait as
    /// long as the call may take, unless told otherwise.
    #[test]
    fn lock_waits_default_to_the_upstream_timeout() {
        let defaults = parse(&[]);
        assert_eq!(defaults.cache.lock_max_wait, defaults.upstream_timeout);
        let slower = parse(&["--upstream-timeout", "45s"]);
        assert_eq!(slower.cache.lock_max_wait, Duration::from_secs(45));
        let told = parse(&["--lock-max-wait", "2s"]);
        assert_eq!(told.cache.lock_max_wait, Duration::from_secs(2));
    }

    /// The listeners must not contend for one port: refused naming both flags, whether the
    /// addresses are equal or one is a wildcard covering the other.
    #[test]
    fn listeners_on_one_port_are_refused() {
        for (listen, admin) in [
            ("127.0.0.1:9000", "127.0.0.1:9000"),
            ("0.0.0.0:9000", "127.0.0.1:9000"),
            ("127.0.0.1:9000", "0.0.0.0:9000"),
            ("[::]:9000", "127.0.0.1:9000"),
            ("[::ffff:127.0.0.1]:9000", "127.0.0.1:9000"),
        ] {
            let argv = ["proxy", "--upstream", "http://127.0.0.1:5000"];
            let argv = argv
                .into_iter()
                .chain(["--listen", listen, "--admin-listen", admin]);
            let proxy = <Proxy as clap::Parser>::try_parse_from(argv).expect("flags");
            let err = proxy.args.into_config().expect_err("refused").to_string();
            assert!(
                err.contains(ADMIN_LISTEN_FLAG) && err.contains(LISTEN_FLAG),
                "{listen} {admin}: {err}"
            );
        }
        for (listen, admin) in [
            ("127.0.0.1:9000", "127.0.0.1:9001"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("127.0.0.1:9000", "127.0.0.2:9000"),
            ("0.0.0.0:9000", "[::1]:9000"),
        ] {
            parse(&["--listen", listen, "--admin-listen", admin]);
        }
    }
}
