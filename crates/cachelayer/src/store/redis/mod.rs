//! `RedisStore`: the shared store, on one Redis server, a primary found through Sentinels
//! (`node`, `sentinel`), or a Redis Cluster (`cluster`, `shard_channel`), as its URL says
//! (`deployment`); its change tracking (server-assisted invalidation) is in `tracking`.
//!
//! Every [`Store`] call is written once here, over a connection of either link; only the
//! batches differ, since a cluster refuses commands whose keys live in different slots. This
//! module must never retry a write (a retry after an unseen success could reorder writes),
//! and must never block on connecting at build time, so a service starts while Redis is down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Client, IntoConnectionInfo, Script, TlsCertificates};
use tokio::sync::mpsc;

mod cluster;
mod deployment;
mod node;
mod sentinel;
mod shard_channel;
mod tracking;

pub use self::tracking::TRACKING_CLIENT_NAME;

use self::cluster::{BreakerSettings, ClusterLink};
use self::deployment::Deployment;
use self::node::{NodeClients, NodeLink, NodeSource};
use super::contract::{
    ChangeListener, ChangeTracking, Claim, KeySpace, KeyTtl, NodeBreaker, Store, StoreEntry,
    StoreKind, Subscription, ttl_millis,
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

/// A [`Store`] on Redis, shared by every instance of a service: one server, a primary
/// found through Sentinels, or a Redis Cluster, as the URL says (see
/// [`RedisStore::builder`]).
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
///
/// // The same store on a Redis Cluster, reached through any of its nodes:
/// let cluster = RedisStore::builder("redis+cluster://cache-user:secret@10.0.0.5:7000,10.0.0.6:7000")
///     .build()?;
/// # drop(cluster);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<RedisInner>,
}

struct RedisInner {
    link: Link,
    factory: ClientFactory,
    /// The runtime the store was built in, where tracking tasks run.
    runtime: tokio::runtime::Handle,
    redacted_url: String,
    connect_timeout: Duration,
    compare_and_delete: Script,
    compare_and_expire: Script,
    claim: Script,
    advance_counter: Script,
}

/// How the store reaches Redis.
enum Link {
    /// One server: fixed, or the primary Sentinels name.
    Node(Box<NodeLink>),
    /// A Redis Cluster.
    Cluster(ClusterLink),
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.redacted_url)
            .field("pool_size", &self.pool_size())
            .finish()
    }
}

/// Builds the `redis` crate's clients for any node of the deployment, with the same TLS
/// material and TCP settings.
#[derive(Clone)]
struct ClientFactory {
    tls_root_cert_pem: Option<Vec<u8>>,
    tls_client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientFactory {
    /// A client for the node at `url`; `protocol` overrides the URL's protocol version.
    fn client(
        &self,
        url: &str,
        protocol: Option<redis::ProtocolVersion>,
    ) -> redis::RedisResult<Client> {
        let mut info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
        if let Some(protocol) = protocol {
            let settings = info.redis_settings().clone().set_protocol(protocol);
            info = info.set_redis_settings(settings);
        }
        match self.certificates() {
            None => Client::open(info),
            Some(certificates) => Client::build_with_tls(info, certificates),
        }
    }

    /// A cluster client for the seed nodes at `seeds`.
    fn cluster_client(
        &self,
        seeds: &[String],
        timeouts: (Duration, Duration),
        pushes: Option<mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> redis::RedisResult<ClusterClient> {
        let (connect_timeout, command_timeout) = timeouts;
        let mut builder = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .connection_timeout(connect_timeout)
            .response_timeout(command_timeout)
            .tcp_settings(tcp_settings())
            // No retries of the connection's own: it would send again commands that may
            // have run (after an I/O error). `cluster::send` follows the redirections,
            // which say the command did not run.
            .retries(0);
        if let Some(certificates) = self.certificates() {
            builder = builder.certs(certificates);
        }
        if let Some(pushes) = pushes {
            builder = builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushes);
        }
        builder.build()
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        if self.tls_root_cert_pem.is_none() && self.tls_client_cert_pem.is_none() {
            return None;
        }
        Some(TlsCertificates {
            client_tls: self
                .tls_client_cert_pem
                .clone()
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
            root_cert: self.tls_root_cert_pem.clone(),
        })
    }
}

/// Builds a [`RedisStore`].
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    pool_size: usize,
    connect_timeout: Duration,
    command_timeout: Duration,
    node_breaker: BreakerSettings,
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
    /// Number of multiplexed connections to spread commands over (at least 1). A Redis
    /// Cluster keeps one per node instead.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Bound on establishing one connection (TCP, TLS and AUTH).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on one command's reply. On a Redis Cluster it also judges calls their callers
    /// drop: one dropped after 90% of it counts against its node's breaker, one dropped
    /// sooner (a cancelled request) does not. So keep the cache's command timeout no shorter
    /// than this one ([`CacheConfig`](crate::CacheConfig) sets both to one value).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// For a Redis Cluster: consecutive failures that open one node's circuit breaker, and
    /// how long it stays open (defaults as the cache's own breaker). Each primary has its
    /// own, so the cache keeps none for the whole store: a primary that is down is skipped
    /// while the others keep serving.
    pub fn node_circuit_breaker(mut self, failure_threshold: u32, cool_down: Duration) -> Self {
        self.node_breaker = BreakerSettings {
            failure_threshold,
            cool_down,
        };
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
        if self.node_breaker.failure_threshold == 0 || self.node_breaker.cool_down.is_zero() {
            return Err(Error::config(
                "a node circuit breaker needs a failure threshold of at least 1 and a non-zero cool-down",
            ));
        }
        let link = self.link()?;
        Ok(RedisStore {
            inner: Arc::new(RedisInner {
                link,
                factory: self.factory(),
                runtime,
                redacted_url: redact_url(&self.url),
                connect_timeout: self.connect_timeout,
                compare_and_delete: Script::new(COMPARE_AND_DELETE_LUA),
                compare_and_expire: Script::new(COMPARE_AND_EXPIRE_LUA),
                claim: Script::new(CLAIM_LUA),
                advance_counter: Script::new(ADVANCE_COUNTER_LUA),
            }),
        })
    }

    fn factory(&self) -> ClientFactory {
        ClientFactory {
            tls_root_cert_pem: self.tls_root_cert_pem.clone(),
            tls_client_cert_pem: self.tls_client_cert_pem.clone(),
        }
    }

    /// The link the URL names, checked but not dialled.
    fn link(&self) -> Result<Link> {
        let factory = self.factory();
        let invalid = |err| invalid_url(&self.url, err);
        match Deployment::parse(&self.url)? {
            Deployment::Server(url) => {
                let clients = NodeClients {
                    client: factory.client(&url, None).map_err(invalid)?,
                    tracking_client: factory
                        .client(&url, Some(redis::ProtocolVersion::RESP3))
                        .map_err(invalid)?,
                    address: redact_url(&url),
                };
                let link = NodeLink::new(
                    NodeSource::Fixed,
                    Some(clients),
                    self.manager_config(),
                    self.pool_size,
                    self.connect_timeout,
                )?;
                Ok(Link::Node(Box::new(link)))
            }
            Deployment::Sentinel(set) => {
                for sentinel in &set.sentinels {
                    factory.client(sentinel, None).map_err(invalid)?;
                }
                // The data nodes' URL, checked on an address of the right shape.
                factory
                    .client(&set.node_url("127.0.0.1", 6379), None)
                    .map_err(invalid)?;
                let link = NodeLink::new(
                    NodeSource::Sentinel(set),
                    None,
                    self.manager_config(),
                    self.pool_size,
                    self.connect_timeout,
                )?;
                Ok(Link::Node(Box::new(link)))
            }
            Deployment::Cluster(seeds) => {
                let client = factory
                    .cluster_client(
                        &seeds.seeds,
                        (self.connect_timeout, self.command_timeout),
                        None,
                    )
                    .map_err(invalid)?;
                Ok(Link::Cluster(ClusterLink::new(
                    client,
                    seeds,
                    self.node_breaker,
                    self.command_timeout,
                    self.connect_timeout,
                    redact_url(&self.url),
                )))
            }
        }
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_pipeline_buffer_size(PIPELINE_BUFFER_SIZE)
            // One connection attempt per reconnect: retries with back-off would hold the
            // callers waiting on the reconnect for seconds while Redis refuses. The next
            // command after a failure starts a new attempt.
            .set_number_of_retries(0)
    }
}

/// A connection of either link, for commands written once for both.
#[derive(Clone)]
enum Connection {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Node(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => Box::pin(cluster::send(connection, cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Node(connection) => connection.req_packed_commands(cmd, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
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

/// The configuration error for a URL the client cannot read, with the password redacted.
fn invalid_url(url: &str, err: redis::RedisError) -> Error {
    Error::with_source(
        ErrorKind::Config,
        format!(
            "invalid redis URL {}; expected redis://[user:password@]host[:port][/db], rediss://..., redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/db] or redis+cluster://[user:password@]host:port[,host:port...]",
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
    /// A builder for the Redis the URL names:
    /// - one server: `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS
    ///   (append `#insecure` to skip certificate checks in development);
    /// - a primary found through Sentinels, and followed when they fail it over:
    ///   `redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/db]`
    ///   (`rediss+sentinel://` for TLS to the Sentinels and the data nodes; the credentials
    ///   are the data nodes');
    /// - a Redis Cluster, first reached through any of the nodes named:
    ///   `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://`
    ///   for TLS).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            node_breaker: BreakerSettings {
                failure_threshold: crate::breaker::DEFAULT_FAILURE_THRESHOLD,
                cool_down: crate::breaker::DEFAULT_COOL_DOWN,
            },
            tls_root_cert_pem: None,
            tls_client_cert_pem: None,
        }
    }

    /// Check `url` as [`RedisStoreBuilder::build`] reads it, without connecting and outside
    /// any runtime, so a program can refuse a malformed URL before it starts anything.
    pub fn check_url(url: &str) -> Result<()> {
        let builder = Self::builder(url);
        let factory = builder.factory();
        let check = |node: &str| {
            factory
                .client(node, None)
                .map(drop)
                .map_err(|err| invalid_url(url, err))
        };
        match Deployment::parse(url)? {
            Deployment::Server(server) => check(&server),
            Deployment::Sentinel(set) => {
                set.sentinels
                    .iter()
                    .try_for_each(|sentinel| check(sentinel))?;
                check(&set.node_url("127.0.0.1", 6379))
            }
            Deployment::Cluster(seeds) => seeds.seeds.iter().try_for_each(|seed| check(seed)),
        }
    }

    /// Number of multiplexed connections (for a Redis Cluster: one per node, kept by the
    /// cluster connection, reported as 1).
    pub fn pool_size(&self) -> usize {
        match &self.inner.link {
            Link::Node(node) => node.pool_size(),
            Link::Cluster(_) => 1,
        }
    }

    /// Run one command: on the next connection of the round-robin, or on the cluster
    /// connection after the breaker of the primary serving `key` admitted it.
    async fn run<T, F, Fut>(&self, key: Option<&str>, command: F) -> Result<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match &self.inner.link {
            Link::Node(node) => {
                let taken = node.take(&self.inner.factory).await?;
                let result = command(Connection::Node(taken.connection.clone())).await;
                if let Err(err) = &result {
                    node.after_error(&self.inner.factory, &taken, err).await;
                }
                Ok(result?)
            }
            Link::Cluster(cluster) => {
                let call = cluster.admit(key.map(str::as_bytes))?;
                let connection = match cluster.connection().await {
                    Ok(connection) => connection,
                    Err(err) => {
                        call.abandon();
                        return Err(err);
                    }
                };
                let result = command(Connection::Cluster(connection))
                    .await
                    .map_err(Error::from);
                call.finish(&result);
                result
            }
        }
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        key: Option<&str>,
        command: &redis::Cmd,
    ) -> Result<T> {
        self.run(key, |mut connection| async move {
            command.query_async(&mut connection).await
        })
        .await
    }

    /// Run a pipeline (one write, one round trip), on one Redis only: a cluster follows
    /// redirections of single commands, so batches go to it as those.
    async fn query_pipeline<T: redis::FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T> {
        debug_assert!(self.cluster().is_none(), "pipelines are for one Redis");
        self.run(None, |mut connection| async move {
            pipeline.query_async(&mut connection).await
        })
        .await
    }

    async fn open_pubsub(&self, node: &NodeLink, channel: &str) -> Result<PubSub> {
        let connect = async {
            let clients = node.clients(&self.inner.factory).await?;
            let mut pubsub = clients.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, Error>(pubsub)
        };
        match tokio::time::timeout(self.inner.connect_timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                "redis did not accept the subscription in time; check that the server is up",
            )),
        }
    }

    /// The cluster link, when the store is on a Redis Cluster.
    fn cluster(&self) -> Option<&ClusterLink> {
        match &self.inner.link {
            Link::Cluster(cluster) => Some(cluster),
            Link::Node(_) => None,
        }
    }
}

/// For a batch on a cluster: the answers of the keys whose node answered, as `None` for the
/// others, unless no node answered (then the first failure). A batch read is a cache's
/// lookup, so a shard that is down costs misses for its keys only.
fn answered_or_absent<T>(
    op: &'static str,
    results: Vec<Result<Option<T>>>,
) -> Result<Vec<Option<T>>> {
    if !results.is_empty() && results.iter().all(Result::is_err) {
        return results
            .into_iter()
            .find_map(Result::err)
            .map_or_else(|| Ok(Vec::new()), Err);
    }
    Ok(results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|err| {
                metrics::counter!(crate::telemetry::STORE_ERRORS, "op" => op, "kind" => err.kind().as_str())
                    .increment(1);
                tracing::debug!(op, error = %err, "a key of a batch read is a miss: its cluster node failed");
                None
            })
        })
        .collect())
}

/// For a batch write on a cluster: every answer, or the first failure once all are done.
fn all_answered<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    results.into_iter().collect()
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
        let command = &redis::cmd("GET").arg(key).clone();
        let value: Option<Vec<u8>> = self
            .run(Some(key), |mut connection| async move {
                absent_if_wrong_type(command.query_async(&mut connection).await)
            })
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.cluster().is_some() {
            let reads = join_all(keys.iter().map(|key| self.get(key))).await;
            return answered_or_absent("get_many", reads);
        }
        let values: Vec<Option<Vec<u8>>> = self.query(None, redis::cmd("MGET").arg(keys)).await?;
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, KeyTtl)>> {
        // One round trip. Not atomic: a change between the two commands is reported by change
        // tracking, which is what callers that keep the value rely on.
        if self.cluster().is_some() {
            // Two commands sent together (a cluster redirects commands, not pipelines): the
            // node's connection still pipelines them.
            let (value, ttl) = futures::join!(self.get(key), self.ttl(key));
            return Ok(match value? {
                Some(value) => Some((value, ttl?)),
                None => None,
            });
        }
        let mut pipeline = redis::pipe();
        pipeline.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let pipeline = &pipeline;
        let found: Option<(Option<Vec<u8>>, i64)> = self
            .run(Some(key), |mut connection| async move {
                absent_if_wrong_type(pipeline.query_async(&mut connection).await.map(Some))
            })
            .await?;
        Ok(found.and_then(|(value, millis)| Some((Bytes::from(value?), key_ttl(millis)))))
    }

    async fn get_many_with_ttl(&self, keys: &[String]) -> Result<Vec<Option<(Bytes, KeyTtl)>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.cluster().is_some() {
            let reads = join_all(keys.iter().map(|key| self.get_with_ttl(key))).await;
            return answered_or_absent("get_many", reads);
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
            Some(key),
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
        if self.cluster().is_some() {
            let writes = join_all(
                entries
                    .iter()
                    .map(|entry| self.set(&entry.key, entry.value.clone(), entry.ttl)),
            )
            .await;
            return all_answered(writes).map(drop);
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
        // UNLINK frees large values off Redis' main thread.
        let removed: u64 = self.query(Some(key), redis::cmd("UNLINK").arg(key)).await?;
        Ok(removed > 0)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        if self.cluster().is_some() {
            let existed = self.delete_each(keys).await?;
            return Ok(existed.into_iter().filter(|&existed| existed).count() as u64);
        }
        self.query(None, redis::cmd("UNLINK").arg(keys)).await
    }

    async fn delete_each(&self, keys: &[String]) -> Result<Vec<bool>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.cluster().is_some() {
            // Concurrently, each on its own node: a key named twice is removed by one of
            // its two calls, so its first mention takes the removal.
            let removals = all_answered(join_all(keys.iter().map(|key| self.delete(key))).await)?;
            let mut seen = std::collections::HashSet::new();
            let mut removed_by_key: std::collections::HashMap<&str, bool> =
                std::collections::HashMap::new();
            for (key, removed) in keys.iter().zip(&removals) {
                *removed_by_key.entry(key).or_default() |= removed;
            }
            return Ok(keys
                .iter()
                .map(|key| seen.insert(key.as_str()) && removed_by_key[key.as_str()])
                .collect());
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
                Some(key),
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
        let value = value.as_ref();
        let outcome: u8 = self
            .run(Some(key), |mut connection| async move {
                script
                    .key(key)
                    .arg(value)
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
        if self.cluster().is_some() {
            let slot = cluster::slot_of(counter.as_bytes());
            if let Some(apart) = stamps
                .iter()
                .find(|stamp| cluster::slot_of(stamp.key.as_bytes()) != slot)
            {
                return Err(Error::invalid_input(format!(
                    "on a Redis Cluster a counter and the keys it stamps must share a slot (a hash tag); {:?} is not in {counter:?}'s",
                    apart.key
                )));
            }
        }
        let mut invocation = self.inner.advance_counter.key(counter);
        invocation.arg(millis);
        for stamp in stamps {
            invocation
                .key(&stamp.key)
                .arg(stamp.value.as_ref())
                .arg(ttl_millis(stamp.ttl)?);
        }
        let invocation = &invocation;
        self.run(Some(counter), |mut connection| async move {
            invocation.invoke_async(&mut connection).await
        })
        .await
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        let script = &self.inner.compare_and_delete;
        let removed: u64 = self
            .run(Some(key), |mut connection| async move {
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
            .run(Some(key), |mut connection| async move {
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
        let millis: i64 = self.query(Some(key), redis::cmd("PTTL").arg(key)).await?;
        Ok(key_ttl(millis))
    }

    async fn publish(&self, channel: &str, message: Bytes) -> Result<u64> {
        // On a cluster, sharded pub/sub: the message goes to the channel's shard only,
        // rather than over the cluster bus to every node.
        let verb = if self.cluster().is_some() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        self.query(
            Some(channel),
            redis::cmd(verb).arg(channel).arg(message.as_ref()),
        )
        .await
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription> {
        match &self.inner.link {
            Link::Node(node) => {
                let pubsub = self.open_pubsub(node, channel).await?;
                let (sender, subscription) = Subscription::channel_pair(channel);
                tokio::spawn(forward_messages(
                    self.clone(),
                    channel.to_owned(),
                    pubsub,
                    sender,
                ));
                Ok(subscription)
            }
            Link::Cluster(cluster) => {
                shard_channel::subscribe(
                    &self.inner.factory,
                    cluster.seeds(),
                    channel,
                    self.inner.connect_timeout,
                )
                .await
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        // On a cluster, every primary answers (the connection sends it to each).
        self.query::<()>(None, &redis::cmd("PING")).await
    }

    fn track_changes(&self, prefix: &str, listener: ChangeListener) -> Option<ChangeTracking> {
        Some(tracking::start(self, prefix, listener))
    }

    fn key_space(&self) -> KeySpace {
        match self.inner.link {
            Link::Node(_) => KeySpace::Single,
            Link::Cluster(_) => KeySpace::Slotted,
        }
    }

    fn node_breakers(&self) -> Option<Vec<NodeBreaker>> {
        self.cluster().map(|cluster| {
            cluster
                .breaker_states()
                .into_iter()
                .map(|(node, state)| NodeBreaker { node, state })
                .collect()
        })
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
                let Link::Node(node) = &store.inner.link else {
                    return;
                };
                match store.open_pubsub(node, &channel).await {
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
