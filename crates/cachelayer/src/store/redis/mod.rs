//! `RedisStore`: the shared store, on the `redis` crate's multiplexed, self-reconnecting
//! connections; its change tracking (server-assisted invalidation) is in `tracking`.
//!
//! Pooling here is not checkout-style: each [`redis::aio::ConnectionManager`] multiplexes
//! every concurrent request over one socket and reconnects in the background, so the "pool"
//! is a small round-robin of them to spread load over a few sockets and parser tasks. This
//! module must never retry a write (a retry after an unseen success could reorder writes), and
//! must never block on connecting at build time, so a service starts while Redis is down.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::io::tcp::TcpSettings;
use redis::{Client, IntoConnectionInfo, Script, TlsCertificates};
use tokio::sync::mpsc;

mod tracking;

pub use self::tracking::TRACKING_CLIENT_NAME;

use super::contract::{
    ChangeListener, ChangeTracking, Claim, KeyTtl, Store, StoreEntry, StoreKind, Subscription,
    ttl_millis,
};
use crate::error::{Error, ErrorKind, Result};

/// Default number of multiplexed connections; see the README's "Pool sizing".
pub const DEFAULT_POOL_SIZE: usize = 1;
/// Default bound on establishing one connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on one command's reply. Small on purpose: a cache that answers slowly is
/// worse than a miss.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// Commands queued per connection before callers wait; the client's default of 50 is too
/// small for a busy web server.
const PIPELINE_BUFFER_SIZE: usize = 1024;
/// Idle time before TCP keepalive probes a connection, and the interval between probes.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// How long sent data may stay unacknowledged before the kernel drops the connection.
#[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between attempts to re-establish a dropped subscription.
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(2);

/// Deletes the key only while it holds the caller's value, so a lock owner whose lease ran
/// out cannot delete the next owner's lock.
const COMPARE_AND_DELETE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// [`Store::claim`]: free keys are taken (1); a same-length string that expires is a live
/// lease (0); anything else (another length or type, no expiry) is replaced (2).
const CLAIM_LUA: &str = r"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
if kind == 'string' and redis.call('PTTL', KEYS[1]) >= 0
    and redis.call('STRLEN', KEYS[1]) == string.len(ARGV[1]) then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
";

/// [`Store::advance_counter`] on Redis's clock (`TIME`, microseconds): KEYS[1] is the
/// counter (ARGV[1] its TTL in ms), then each stamped key with its suffix and TTL in ARGV.
/// A value that is not decimal digits below 2^53 (where Lua's numbers stop being exact)
/// counts as lost, as `parse_counter` reads it.
const ADVANCE_COUNTER_LUA: &str = r"
local now = redis.call('TIME')
local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
local raw = redis.pcall('GET', KEYS[1])
local current = nil
if type(raw) == 'string' and string.match(raw, '^%d+$') and string.len(raw) <= 16 then
    current = tonumber(raw)
    if current > 9007199254740991 then
        current = nil
    end
end
local advanced = clock
if current and current < 9007199254740991 and current + 1 > clock then
    advanced = current + 1
end
local stamp = string.format('%.0f', advanced)
redis.call('SET', KEYS[1], stamp, 'PX', ARGV[1])
for i = 2, #KEYS do
    redis.call('SET', KEYS[i], stamp .. ARGV[2 * i - 2], 'PX', ARGV[2 * i - 1])
end
return advanced
";

const COMPARE_AND_EXPIRE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// A [`Store`] on Redis (standalone server), shared by every instance of a service.
///
/// Build it with [`RedisStore::builder`]; building never connects, so it succeeds while
/// Redis is down, and commands fail (fast) until Redis is reachable.
///
/// ```no_run
/// use std::time::Duration;
/// use cachelayer::store::{RedisStore, Store};
///
/// # #[tokio::main] async fn main() -> cachelayer::Result<()> {
/// let store = RedisStore::builder("redis://cache-user:secret@10.0.0.5:6379/2")
///     .pool_size(4)
///     .command_timeout(Duration::from_millis(100))
///     .build()?;
/// store.ping().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<RedisInner>,
}

struct RedisInner {
    client: Client,
    /// The same server spoken to in RESP3, which change tracking's pushes need.
    tracking_client: Client,
    /// The runtime the store was built in, where tracking tasks run.
    runtime: tokio::runtime::Handle,
    manager_config: ConnectionManagerConfig,
    connections: Vec<RwLock<Slot>>,
    next: AtomicUsize,
    redacted_url: String,
    connect_timeout: Duration,
    compare_and_delete: Script,
    compare_and_expire: Script,
    claim: Script,
    advance_counter: Script,
    /// Counts redials of the whole pool after a dropped connection: a call redials only
    /// if none happened since it started, so a burst of calls failing together redials once.
    redials: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.redacted_url)
            .field("pool_size", &self.inner.connections.len())
            .finish()
    }
}

/// One pooled connection and a generation that changes when it is replaced, so a late
/// error from a replaced connection cannot throw away its successor.
struct Slot {
    generation: u64,
    connection: ConnectionManager,
}

/// Builds a [`RedisStore`].
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    pool_size: usize,
    connect_timeout: Duration,
    command_timeout: Duration,
    tls_root_cert_pem: Option<Vec<u8>>,
    tls_client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password or the client key.
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("tls_root_cert", &self.tls_root_cert_pem.is_some())
            .field("tls_client_cert", &self.tls_client_cert_pem.is_some())
            .finish()
    }
}

impl RedisStoreBuilder {
    /// Number of multiplexed connections to spread commands over (at least 1).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Bound on establishing one connection (TCP, TLS and AUTH).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on one command's reply.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Trust this CA (PEM) for `rediss://` instead of the system's roots.
    pub fn tls_root_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert_pem = Some(pem.into());
        self
    }

    /// Present this client certificate and key (PEM) for mutual TLS.
    pub fn tls_client_cert_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_client_cert_pem = Some((cert.into(), key.into()));
        self
    }

    /// Validate the settings and create the connections (lazily: nothing is dialled yet).
    /// Must run inside a Tokio runtime, which the connections' background tasks need.
    pub fn build(self) -> Result<RedisStore> {
        if self.pool_size == 0 {
            return Err(Error::config("redis pool_size must be at least 1"));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Error::config(
                "RedisStore must be built inside a Tokio runtime (its connections run as tasks); build it from async code or after Runtime::enter",
            ));
        };
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return Err(Error::config(
                "redis connect_timeout and command_timeout must be non-zero",
            ));
        }
        let redacted_url = redact_url(&self.url);
        let client = self
            .client(None)
            .map_err(|err| invalid_url(&self.url, err))?;
        let tracking_client = self
            .client(Some(redis::ProtocolVersion::RESP3))
            .map_err(|err| invalid_url(&self.url, err))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_pipeline_buffer_size(PIPELINE_BUFFER_SIZE)
            // One connection attempt per reconnect: retries with back-off would hold the
            // callers waiting on the reconnect for seconds while Redis refuses. The next
            // command after a failure starts a new attempt.
            .set_number_of_retries(0);
        let connections = (0..self.pool_size)
            .map(|_| {
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone()).map(
                    |connection| {
                        RwLock::new(Slot {
                            generation: 0,
                            connection,
                        })
                    },
                )
            })
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok(RedisStore {
            inner: Arc::new(RedisInner {
                client,
                tracking_client,
                runtime,
                manager_config,
                connections,
                next: AtomicUsize::new(0),
                redacted_url,
                connect_timeout: self.connect_timeout,
                compare_and_delete: Script::new(COMPARE_AND_DELETE_LUA),
                compare_and_expire: Script::new(COMPARE_AND_EXPIRE_LUA),
                claim: Script::new(CLAIM_LUA),
                advance_counter: Script::new(ADVANCE_COUNTER_LUA),
                redials: AtomicU64::new(0),
            }),
        })
    }

    /// A client for the URL; `protocol` overrides the URL's protocol version.
    fn client(&self, protocol: Option<redis::ProtocolVersion>) -> redis::RedisResult<Client> {
        let mut info = self
            .url
            .as_str()
            .into_connection_info()?
            .set_tcp_settings(tcp_settings());
        if let Some(protocol) = protocol {
            let settings = info.redis_settings().clone().set_protocol(protocol);
            info = info.set_redis_settings(settings);
        }
        if self.tls_root_cert_pem.is_none() && self.tls_client_cert_pem.is_none() {
            return Client::open(info);
        }
        let certificates = TlsCertificates {
            client_tls: self
                .tls_client_cert_pem
                .clone()
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
            root_cert: self.tls_root_cert_pem.clone(),
        };
        Client::build_with_tls(info, certificates)
    }
}

/// Nagle's algorithm adds up to 40 ms to small request/reply exchanges, so it is off. A peer
/// that vanishes without resetting the connection (a host lost, a failover behind a
/// virtual IP) would otherwise keep every pooled socket, and every breaker probe, waiting
/// on it for the kernel's default of about 15 minutes: keepalive finds idle dead sockets
/// (subscriptions), and TCP_USER_TIMEOUT bounds how long sent commands may go unacknowledged.
fn tcp_settings() -> TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_IDLE);
    let settings = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let settings = settings.set_user_timeout(TCP_USER_TIMEOUT);
    settings
}

/// `ConnectionManager` reconnects only after I/O errors. A connection whose handshake was
/// refused (a wrong or rotated password: AuthenticationFailed, or `WRONGPASS` under RESP3)
/// or that is left on a demoted primary (`READONLY` after a failover) would fail forever, so
/// those errors replace it; the circuit breaker bounds how often.
fn needs_new_connection(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "READONLY"))
}

/// A connection cut under us (reset, closed, broken pipe), as a failover, a restart, an idle
/// timeout or `CLIENT KILL` does to every connection at once; not a refused dial.
fn is_dropped_connection(err: &redis::RedisError) -> bool {
    err.is_connection_dropped() && !err.is_connection_refusal()
}

/// A read of a key holding another type (a foreign write) sees nothing there, as `MGET` does;
/// the next write replaces it.
fn absent_if_wrong_type<T>(result: redis::RedisResult<Option<T>>) -> redis::RedisResult<Option<T>> {
    match result {
        Err(err) if is_wrong_type(&err) => Ok(None),
        other => other,
    }
}

/// `WRONGTYPE`, alone or from a command of a pipeline.
fn is_wrong_type(err: &redis::RedisError) -> bool {
    err.code() == Some("WRONGTYPE")
        || err
            .clone()
            .into_server_errors()
            .is_some_and(|failures| failures.iter().any(|(_, e)| e.code() == "WRONGTYPE"))
}

fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Writers only swap in a whole new value, so a poisoned lock still holds a usable one.
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The configuration error for a URL the client cannot read, with the password redacted.
fn invalid_url(url: &str, err: redis::RedisError) -> Error {
    Error::with_source(
        ErrorKind::Config,
        format!(
            "invalid redis URL {}; expected redis://[user:password@]host[:port][/db] or rediss://...",
            redact_url(url)
        ),
        err,
    )
}

/// The URL with any password (user info, or a `pass`/`password` query parameter as
/// `redis+unix` URLs carry it) replaced, for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparseable url>".to_owned();
    };
    // User info ends at the last '@' (a password may itself hold '?', '/' or '@').
    let (userinfo, location) = match rest.rsplit_once('@') {
        Some((userinfo, location)) => (Some(userinfo), location),
        None => (None, rest),
    };
    let mut redacted = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        // A user without a password stays as given: `***` would say there is one.
        match userinfo.split_once(':') {
            Some((user, _)) => {
                redacted.push_str(user);
                redacted.push_str(":***@");
            }
            None => {
                redacted.push_str(userinfo);
                redacted.push('@');
            }
        }
    }
    match location.split_once('?') {
        None => redacted.push_str(location),
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) if matches!(name, "pass" | "password") => {
                        format!("{name}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            redacted.push_str(path);
            redacted.push('?');
            redacted.push_str(&params.join("&"));
        }
    }
    redacted
}

impl RedisStore {
    /// A builder for the server at `url`: `redis://[user:password@]host[:port][/db]`, or
    /// `rediss://` for TLS (append `#insecure` to skip certificate checks in development).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            tls_root_cert_pem: None,
            tls_client_cert_pem: None,
        }
    }

    /// Check `url` as [`RedisStoreBuilder::build`] reads it, without connecting and outside
    /// any runtime, so a program can refuse a malformed URL before it starts anything.
    pub fn check_url(url: &str) -> Result<()> {
        Self::builder(url)
            .client(None)
            .map(drop)
            .map_err(|err| invalid_url(url, err))
    }

    /// Number of multiplexed connections.
    pub fn pool_size(&self) -> usize {
        self.inner.connections.len()
    }

    /// Run one command on the next connection of the round-robin.
    async fn run<T, F, Fut>(&self, command: F) -> Result<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let slot = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.connections.len();
        let (generation, connection) = {
            let current = read_lock(&self.inner.connections[slot]);
            (current.generation, current.connection.clone())
        };
        let redials = self.inner.redials.load(Ordering::Acquire);
        let result = command(connection).await;
        if let Err(err) = &result {
            if needs_new_connection(err) {
                self.replace(slot, generation);
            } else if is_dropped_connection(err) {
                // This slot's manager redials by itself; the others were most likely cut
                // too, and would each fail one more call before noticing.
                self.redial_others(slot, redials);
            }
        }
        Ok(result?)
    }

    /// Replace every connection but `slot`'s with a fresh (lazy) one, unless the pool was
    /// redialled since the failed call started (`redials` is what it read then). Calls
    /// already sent on the old connections finish there.
    fn redial_others(&self, slot: usize, redials: u64) {
        if self.inner.connections.len() < 2
            || self
                .inner
                .redials
                .compare_exchange(redials, redials + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        for other in (0..self.inner.connections.len()).filter(|&other| other != slot) {
            let generation = read_lock(&self.inner.connections[other]).generation;
            self.replace(other, generation);
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T> {
        self.run(|mut connection| async move { command.query_async(&mut connection).await })
            .await
    }

    /// Run a pipeline (one write, one round trip) on the next connection of the round-robin.
    async fn query_pipeline<T: redis::FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T> {
        self.run(|mut connection| async move { pipeline.query_async(&mut connection).await })
            .await
    }

    /// Replace the connection in `slot` with a fresh lazy one, unless it was already
    /// replaced since `generation` was read (the next call then dials again).
    fn replace(&self, slot: usize, generation: u64) {
        let mut current = self.inner.connections[slot]
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.generation != generation {
            return;
        }
        match ConnectionManager::new_lazy_with_config(
            self.inner.client.clone(),
            self.inner.manager_config.clone(),
        ) {
            Ok(fresh) => {
                current.connection = fresh;
                current.generation += 1;
            }
            Err(rebuild) => tracing::warn!(error = %rebuild, "cannot rebuild a redis connection"),
        }
    }

    async fn open_pubsub(&self, channel: &str) -> Result<PubSub> {
        let connect = async {
            let mut pubsub = self.inner.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(self.inner.connect_timeout, connect).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                "redis did not accept the subscription in time; check that the server is up",
            )),
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }

    fn address(&self) -> Option<String> {
        Some(self.inner.redacted_url.clone())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let command = redis::cmd("GET").arg(key).clone();
        let value: Option<Vec<u8>> = self
            .run(|mut connection| async move {
                absent_if_wrong_type(command.query_async(&mut connection).await)
            })
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(keys)).await?;
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, KeyTtl)>> {
        // One round trip. Not atomic: a change between the two commands is reported by change
        // tracking, which is what callers that keep the value rely on.
        let mut pipeline = redis::pipe();
        pipeline.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let found: Option<(Option<Vec<u8>>, i64)> = self
            .run(|mut connection| async move {
                absent_if_wrong_type(pipeline.query_async(&mut connection).await.map(Some))
            })
            .await?;
        Ok(found.and_then(|(value, millis)| Some((Bytes::from(value?), key_ttl(millis)))))
    }

    async fn get_many_with_ttl(&self, keys: &[String]) -> Result<Vec<Option<(Bytes, KeyTtl)>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = redis::pipe();
        pipeline.cmd("MGET").arg(keys);
        for key in keys {
            pipeline.cmd("PTTL").arg(key);
        }
        let mut replies: Vec<redis::Value> = self.query_pipeline(&pipeline).await?;
        if replies.len() != keys.len() + 1 {
            return Err(Error::new(
                ErrorKind::Server,
                "redis answered a pipeline of MGET and PTTL with the wrong number of replies",
            ));
        }
        let ttls = replies.split_off(1);
        let values: Vec<Option<Vec<u8>>> =
            redis::from_redis_value(replies.remove(0)).map_err(redis::RedisError::from)?;
        values
            .into_iter()
            .zip(ttls)
            .map(|(value, ttl)| {
                let millis: i64 = redis::from_redis_value(ttl).map_err(redis::RedisError::from)?;
                Ok(value.map(|value| (Bytes::from(value), key_ttl(millis))))
            })
            .collect()
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        let millis = ttl_millis(ttl)?;
        self.query::<()>(
            redis::cmd("SET")
                .arg(key)
                .arg(value.as_ref())
                .arg("PX")
                .arg(millis),
        )
        .await
    }

    async fn set_many(&self, entries: &[StoreEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // MSET takes no TTL, and each entry has its own (jittered) one, so this is a pipeline
        // of SET PX: one write, one round trip.
        let mut pipeline = redis::pipe();
        for entry in entries {
            pipeline
                .cmd("SET")
                .arg(&entry.key)
                .arg(entry.value.as_ref())
                .arg("PX")
                .arg(ttl_millis(entry.ttl)?)
                .ignore();
        }
        self.query_pipeline(&pipeline).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.delete_many(&[key.to_owned()]).await? > 0)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        // UNLINK frees large values off Redis' main thread.
        self.query(redis::cmd("UNLINK").arg(keys)).await
    }

    async fn delete_each(&self, keys: &[String]) -> Result<Vec<bool>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One UNLINK per key, pipelined: one round trip, and a count for each key.
        let mut pipeline = redis::pipe();
        for key in keys {
            pipeline.cmd("UNLINK").arg(key);
        }
        let removed: Vec<u64> = self.query_pipeline(&pipeline).await?;
        if removed.len() != keys.len() {
            return Err(Error::new(
                ErrorKind::Server,
                "redis answered a pipeline of UNLINKs with the wrong number of replies",
            ));
        }
        Ok(removed.into_iter().map(|count| count > 0).collect())
    }

    async fn set_if_absent(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        let millis = ttl_millis(ttl)?;
        let reply: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value.as_ref())
                    .arg("NX")
                    .arg("PX")
                    .arg(millis),
            )
            .await?;
        Ok(reply.is_some())
    }

    async fn claim(&self, key: &str, value: Bytes, ttl: Duration) -> Result<Claim> {
        let millis = ttl_millis(ttl)?;
        let script = &self.inner.claim;
        let outcome: u8 = self
            .run(|mut connection| async move {
                script
                    .key(key)
                    .arg(value.as_ref())
                    .arg(millis)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok(match outcome {
            1 => Claim::Taken,
            2 => Claim::Replaced,
            _ => Claim::Held,
        })
    }

    async fn advance_counter(
        &self,
        counter: &str,
        ttl: Duration,
        stamps: &[StoreEntry],
    ) -> Result<u64> {
        let millis = ttl_millis(ttl)?;
        let mut invocation = self.inner.advance_counter.key(counter);
        invocation.arg(millis);
        for stamp in stamps {
            invocation
                .key(&stamp.key)
                .arg(stamp.value.as_ref())
                .arg(ttl_millis(stamp.ttl)?);
        }
        self.run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        let script = &self.inner.compare_and_delete;
        let removed: u64 = self
            .run(|mut connection| async move {
                script
                    .key(key)
                    .arg(expected)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok(removed > 0)
    }

    async fn compare_and_expire(&self, key: &str, expected: &[u8], ttl: Duration) -> Result<bool> {
        let millis = ttl_millis(ttl)?;
        let script = &self.inner.compare_and_expire;
        let extended: u64 = self
            .run(|mut connection| async move {
                script
                    .key(key)
                    .arg(expected)
                    .arg(millis)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok(extended > 0)
    }

    async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let millis: i64 = self.query(redis::cmd("PTTL").arg(key)).await?;
        Ok(key_ttl(millis))
    }

    async fn publish(&self, channel: &str, message: Bytes) -> Result<u64> {
        self.query(redis::cmd("PUBLISH").arg(channel).arg(message.as_ref()))
            .await
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription> {
        let pubsub = self.open_pubsub(channel).await?;
        let (sender, subscription) = Subscription::channel_pair(channel);
        tokio::spawn(forward_messages(
            self.clone(),
            channel.to_owned(),
            pubsub,
            sender,
        ));
        Ok(subscription)
    }

    async fn ping(&self) -> Result<()> {
        self.query::<()>(&redis::cmd("PING")).await
    }

    fn track_changes(&self, prefix: &str, listener: ChangeListener) -> Option<ChangeTracking> {
        Some(tracking::start(self, prefix, listener))
    }
}

/// A `PTTL` reply as a [`KeyTtl`].
fn key_ttl(millis: i64) -> KeyTtl {
    match millis {
        -2 => KeyTtl::Missing,
        -1 => KeyTtl::Persistent,
        ms => KeyTtl::ExpiresIn(Duration::from_millis(ms.max(0).unsigned_abs())),
    }
}

/// Pub/sub needs a dedicated (non-multiplexed) connection; this task owns it, forwards its
/// messages, and re-subscribes after a disconnect until the subscriber goes away.
async fn forward_messages(
    store: RedisStore,
    channel: String,
    first: PubSub,
    sender: mpsc::Sender<Bytes>,
) {
    let mut pubsub = Some(first);
    let mut delay = Duration::from_millis(50);
    loop {
        let connection = match pubsub.take() {
            Some(connection) => connection,
            None => {
                tokio::select! {
                    () = sender.closed() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                match store.open_pubsub(&channel).await {
                    Ok(connection) => {
                        tracing::info!(channel, "redis subscription re-established");
                        delay = Duration::from_millis(50);
                        connection
                    }
                    Err(err) => {
                        tracing::debug!(channel, error = %err, "redis resubscribe failed");
                        delay = (delay * 2).min(MAX_RESUBSCRIBE_DELAY);
                        continue;
                    }
                }
            }
        };
        let mut messages = connection.into_on_message();
        loop {
            tokio::select! {
                () = sender.closed() => return,
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                    match sender.try_send(payload) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            metrics::counter!(crate::telemetry::SUBSCRIPTION_DROPPED).increment(1);
                        }
                    }
                }
            }
        }
        metrics::counter!(crate::telemetry::SUBSCRIPTION_RECONNECTS).increment(1);
        tracing::warn!(
            channel,
            "redis subscription lost; messages published until it is re-established are missed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords never reach logs or `Debug` output.
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://app:s3cret@host:6379/2"),
            "redis://app:***@host:6379/2"
        );
        assert_eq!(redact_url("rediss://:s3cret@host"), "rediss://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/db"),
            "postgres://postgres@127.0.0.1:5432/db",
            "no password given: none invented"
        );
        assert_eq!(redact_url("redis://u:pa?ss@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://u:p@ss@h"), "redis://u:***@h");
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=2&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=2&pass=***"
        );
        let builder =
            RedisStore::builder("redis://u:s3cret@h/1").tls_client_cert_pem("CERT", "KEY");
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("KEY"),
            "{shown}"
        );
    }

    /// Bad settings are refused at build time with a config error, not at the first command.
    #[tokio::test]
    async fn rejects_bad_settings() {
        let err = RedisStore::builder("redis://127.0.0.1:1")
            .pool_size(0)
            .build();
        assert_eq!(
            err.map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::Config)
        );
        let err = RedisStore::builder("http://nope").build();
        assert_eq!(
            err.map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::Config)
        );
    }

    /// Errors that leave a connection unusable for good are the ones that replace it.
    #[test]
    fn stuck_connection_errors() {
        let reply = crate::error::error_reply;
        for code in ["WRONGPASS", "NOAUTH", "READONLY"] {
            assert!(needs_new_connection(&reply(code)), "{code}");
        }
        assert!(!needs_new_connection(&reply("WRONGTYPE")));
        let refused = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "refused"));
        assert!(needs_new_connection(&refused));
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(
            !needs_new_connection(&io),
            "the manager itself reconnects after I/O errors"
        );
    }

    /// Outside a runtime, building is a configuration error rather than a panic.
    #[test]
    fn needs_a_runtime() {
        let err = RedisStore::builder("redis://127.0.0.1:1")
            .build()
            .expect_err("no runtime");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("Tokio runtime"));
    }

    /// URLs are checked as `build` reads them, outside a runtime and without a server, and
    /// the refusal never shows the password.
    #[test]
    fn checks_urls_without_a_runtime() {
        for good in [
            "redis://127.0.0.1:1/0",
            "rediss://u:p%40ss@cache",
            "redis://[::1]:6379",
        ] {
            assert!(RedisStore::check_url(good).is_ok(), "{good}");
        }
        for bad in [
            "redis://[::1",
            "redis://h:s3cret:notaport",
            "redis://h/db",
            "http://h",
        ] {
            let err = RedisStore::check_url(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
        }
        let err = RedisStore::check_url("redis://u:s3cret@h:port").expect_err("bad port");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    /// Building never dials, so a service can start while Redis is down.
    #[tokio::test]
    async fn builds_without_a_server() {
        let store = RedisStore::builder("redis://127.0.0.1:1")
            .connect_timeout(Duration::from_millis(100))
            .build()
            .expect("lazy build");
        assert_eq!(store.pool_size(), DEFAULT_POOL_SIZE);
        let err = store.ping().await.expect_err("nothing listens on port 1");
        assert!(err.is_unavailable(), "{err:?}");
    }
}
