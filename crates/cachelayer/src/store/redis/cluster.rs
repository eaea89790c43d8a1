//! The link to a Redis Cluster: the `redis` crate's cluster connection (which routes each
//! command to its slot's primary and follows `MOVED`/`ASK` redirections, slot migrations and
//! failovers), with a circuit breaker per primary, so a primary that is down is skipped at
//! once while the healthy shards keep serving.
//!
//! The breakers need to know which primary serves a key, which that connection keeps to
//! itself; so this module keeps its own copy of the slot table (`CLUSTER SLOTS`), refreshed
//! every [`REFRESH_INTERVAL`] and as soon as a node fails. A stale copy only puts a call's
//! outcome on the wrong node's breaker for a moment; routing itself never uses it. The same
//! table tells change tracking which primaries to watch.
//!
//! This module must never send a command of several keys that live in different slots (the
//! cluster refuses them): batches are split into single-key commands, sent concurrently so
//! each node's connection still pipelines them. And it must never dial while the store is
//! built: the first call connects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use tokio::sync::{Notify, OnceCell, watch};
use tokio::time::Instant;

use super::deployment::ClusterSeeds;
use crate::breaker::{Admission, BreakerState, CircuitBreaker};
use crate::error::{Error, ErrorKind, Result};
use crate::telemetry;

/// How often the slot table is read again when nothing failed.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// A primary's address as the cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct NodeAddress {
    pub(super) host: String,
    pub(super) port: u16,
}

impl std::fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&super::deployment::host_port(&self.host, self.port))
    }
}

/// Which primary serves each slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SlotTable {
    /// For each slot, an index into `primaries`, or `u16::MAX` when no primary serves it.
    owners: Vec<u16>,
    /// Every primary that serves at least one slot, sorted.
    primaries: Vec<NodeAddress>,
}

impl SlotTable {
    /// The primary serving `key`'s slot, when known.
    fn primary_of(&self, key: &[u8]) -> Option<&NodeAddress> {
        let owner = *self.owners.get(usize::from(slot_of(key)))?;
        self.primaries.get(usize::from(owner))
    }

    /// Every primary serving a slot.
    pub(super) fn primaries(&self) -> &[NodeAddress] {
        &self.primaries
    }

    /// A `CLUSTER SLOTS` reply as a table; `None` for a reply of another shape.
    fn parse(reply: &redis::Value) -> Option<Self> {
        let redis::Value::Array(ranges) = reply else {
            return None;
        };
        let mut owners = vec![u16::MAX; SLOTS];
        let mut primaries: Vec<NodeAddress> = Vec::new();
        let mut ranges_of: Vec<(usize, usize, NodeAddress)> = Vec::new();
        for range in ranges {
            let redis::Value::Array(fields) = range else {
                return None;
            };
            let (Some(start), Some(end), Some(redis::Value::Array(node))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let start = usize::try_from(integer(start)?).ok()?;
            let end = usize::try_from(integer(end)?).ok()?;
            let host = match node.first()? {
                redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
                redis::Value::SimpleString(text) => text.clone(),
                _ => return None,
            };
            let port = u16::try_from(integer(node.get(1)?)?).ok()?;
            if start > end || end >= SLOTS || host.is_empty() {
                return None;
            }
            let address = NodeAddress { host, port };
            if !primaries.contains(&address) {
                primaries.push(address.clone());
            }
            ranges_of.push((start, end, address));
        }
        primaries.sort();
        for (start, end, address) in ranges_of {
            let index = primaries.binary_search(&address).ok()?;
            let index = u16::try_from(index).ok()?;
            owners[start..=end].fill(index);
        }
        Some(Self { owners, primaries })
    }
}

fn integer(value: &redis::Value) -> Option<i64> {
    match value {
        redis::Value::Int(number) => Some(*number),
        _ => None,
    }
}

/// A key's hash slot: CRC16 (XMODEM) of the key, or of its hash tag (the text between the
/// first `{` and the next `}`, when not empty), modulo 16384, as Redis Cluster defines it.
pub(super) fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// Circuit-breaker settings for each node.
#[derive(Debug, Clone, Copy)]
pub(super) struct BreakerSettings {
    pub(super) failure_threshold: u32,
    pub(super) cool_down: Duration,
}

/// The link to a cluster (see the module docs).
pub(super) struct ClusterLink {
    shared: Arc<Shared>,
}

struct Shared {
    client: ClusterClient,
    seeds: ClusterSeeds,
    connection: OnceCell<ClusterConnection>,
    /// Guards the first dial, so a cluster that is down at start is not dialled by every call.
    connect_breaker: CircuitBreaker,
    table: RwLock<Arc<SlotTable>>,
    /// Publishes each new slot table (change tracking re-opens on a new set of primaries).
    topology: watch::Sender<Arc<SlotTable>>,
    breakers: Mutex<HashMap<NodeAddress, Arc<CircuitBreaker>>>,
    refresh: Notify,
    settings: BreakerSettings,
    command_timeout: Duration,
    connect_timeout: Duration,
    redacted_url: String,
}

impl ClusterLink {
    pub(super) fn new(
        client: ClusterClient,
        seeds: ClusterSeeds,
        settings: BreakerSettings,
        command_timeout: Duration,
        connect_timeout: Duration,
        redacted_url: String,
    ) -> Self {
        let (topology, _) = watch::channel(Arc::new(SlotTable::default()));
        Self {
            shared: Arc::new(Shared {
                client,
                seeds,
                connection: OnceCell::new(),
                connect_breaker: CircuitBreaker::new(
                    settings.failure_threshold,
                    settings.cool_down,
                    redacted_url.clone(),
                ),
                table: RwLock::new(Arc::new(SlotTable::default())),
                topology,
                breakers: Mutex::new(HashMap::new()),
                refresh: Notify::new(),
                settings,
                command_timeout,
                connect_timeout,
                redacted_url,
            }),
        }
    }

    /// How to reach any node (for change tracking's own connections).
    pub(super) fn seeds(&self) -> &ClusterSeeds {
        &self.shared.seeds
    }

    /// Slot tables as they are read, starting with the current one.
    pub(super) fn topology(&self) -> watch::Receiver<Arc<SlotTable>> {
        self.shared.topology.subscribe()
    }

    /// The cluster connection, dialled by the first call (on a task of its own, so a caller
    /// that gives up does not abandon the dial half-way).
    pub(super) async fn connection(&self) -> Result<ClusterConnection> {
        if let Some(connection) = self.shared.connection.get() {
            return Ok(connection.clone());
        }
        if self.shared.connect_breaker.admit() == Admission::Rejected {
            return Err(Error::new(
                ErrorKind::CircuitOpen,
                "no Redis Cluster node answered yet; the next dial waits for the breaker's cool-down",
            ));
        }
        let shared = self.shared.clone();
        let dial = tokio::spawn(async move {
            let dialled = shared
                .connection
                .get_or_try_init(|| Shared::dial(&shared))
                .await
                .cloned();
            match &dialled {
                Ok(_) => shared.connect_breaker.record_success(),
                Err(_) => shared.connect_breaker.record_failure(),
            }
            dialled
        });
        match dial.await {
            Ok(dialled) => dialled,
            Err(panicked) => Err(Error::new(
                ErrorKind::Connection,
                format!("the Redis Cluster dial failed: {panicked}"),
            )),
        }
    }

    /// Admit a call for `key`: the breaker of the primary serving it decides. An unknown
    /// primary (no slot table yet) is admitted.
    pub(super) fn admit(&self, key: Option<&[u8]>) -> Result<NodeCall> {
        let node = key.and_then(|key| read(&self.shared.table).primary_of(key).cloned());
        let Some(node) = node else {
            return Ok(NodeCall::unguarded(self.shared.command_timeout));
        };
        let breaker = self.shared.breaker(&node);
        match breaker.admit() {
            Admission::Allowed => Ok(NodeCall {
                breaker: Some(breaker),
                refresh: Arc::downgrade(&self.shared),
                started: Instant::now(),
                timeout: self.shared.command_timeout,
                finished: false,
            }),
            admission => {
                if admission == Admission::Probe {
                    self.spawn_probe(node.clone(), breaker);
                }
                Err(Error::new(
                    ErrorKind::CircuitOpen,
                    format!(
                        "Redis Cluster node {node} is failing and is bypassed until its breaker's cool-down ends"
                    ),
                ))
            }
        }
    }

    /// Each known primary's breaker state.
    pub(super) fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        let table = read(&self.shared.table).clone();
        table
            .primaries()
            .iter()
            .map(|node| (node.to_string(), self.shared.breaker(node).state()))
            .collect()
    }

    /// Ping `node` for its breaker, on a task of its own.
    fn spawn_probe(&self, node: NodeAddress, breaker: Arc<CircuitBreaker>) {
        let link = Self {
            shared: self.shared.clone(),
        };
        tokio::spawn(async move {
            let probe = async {
                let mut connection = link.connection().await?;
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: node.host.clone(),
                    port: node.port,
                });
                connection
                    .route_command(redis::cmd("PING"), routing)
                    .await
                    .map(drop)
                    .map_err(Error::from)
            };
            match tokio::time::timeout(link.shared.command_timeout, probe).await {
                Ok(Ok(())) => breaker.record_success(),
                Ok(Err(err)) => {
                    tracing::debug!(node = %node, error = %err, "Redis Cluster node probe failed");
                    breaker.record_failure();
                    link.shared.refresh.notify_one();
                }
                Err(_) => {
                    breaker.record_failure();
                    link.shared.refresh.notify_one();
                }
            }
        });
    }
}

impl Shared {
    /// Dial the cluster and start keeping the slot table.
    async fn dial(shared: &Arc<Self>) -> Result<ClusterConnection> {
        let dial = shared.client.get_async_connection();
        let connection = match tokio::time::timeout(shared.connect_timeout * 2, dial).await {
            Ok(connection) => connection?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "no Redis Cluster seed node answered in time; check the URL's hosts",
                ));
            }
        };
        tracing::info!(cluster = %shared.redacted_url, "connected to the Redis Cluster");
        tokio::spawn(keep_slot_table(Arc::downgrade(shared), connection.clone()));
        Ok(connection)
    }

    fn breaker(&self, node: &NodeAddress) -> Arc<CircuitBreaker> {
        let mut breakers = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        breakers
            .entry(node.clone())
            .or_insert_with(|| {
                Arc::new(CircuitBreaker::for_node(
                    self.settings.failure_threshold,
                    self.settings.cool_down,
                    self.redacted_url.clone(),
                    node.to_string(),
                ))
            })
            .clone()
    }

    /// Put in a newly read table; say so when the set of primaries changed.
    fn install(&self, table: SlotTable) {
        let current = read(&self.table).clone();
        if *current == table {
            return;
        }
        if !current.primaries().is_empty() && current.primaries() != table.primaries() {
            metrics::counter!(telemetry::REDIS_CLUSTER_TOPOLOGY_CHANGES).increment(1);
            let primaries: Vec<String> =
                table.primaries().iter().map(ToString::to_string).collect();
            tracing::warn!(primaries = ?primaries, "Redis Cluster primaries changed");
        }
        let table = Arc::new(table);
        *self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = table.clone();
        self.breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|node, _| table.primaries().contains(node));
        self.topology.send_replace(table);
    }
}

/// Read the slot table now, then every [`REFRESH_INTERVAL`] or when a node fails, until the
/// store is dropped.
async fn keep_slot_table(shared: Weak<Shared>, mut connection: ClusterConnection) {
    loop {
        let Some(link) = shared.upgrade() else { return };
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let read = tokio::time::timeout(
            link.command_timeout,
            connection.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), routing),
        )
        .await;
        match read {
            Ok(Ok(reply)) => match SlotTable::parse(&reply) {
                Some(table) => link.install(table),
                None => tracing::warn!(
                    "Redis Cluster answered CLUSTER SLOTS with a reply of another shape"
                ),
            },
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "reading the Redis Cluster slot table failed")
            }
            Err(_) => tracing::debug!("reading the Redis Cluster slot table timed out"),
        }
        let refreshed = link.clone();
        drop(link);
        tokio::select! {
            () = tokio::time::sleep(REFRESH_INTERVAL) => {}
            () = refreshed.refresh.notified() => {}
        }
    }
}

/// One call to a node, whose outcome goes to that node's breaker. A call dropped before it
/// finished, after the command timeout, counts as a failure (the caller's own timeout
/// cancelled it); one dropped sooner says nothing of the node.
pub(super) struct NodeCall {
    breaker: Option<Arc<CircuitBreaker>>,
    refresh: Weak<Shared>,
    started: Instant,
    timeout: Duration,
    finished: bool,
}

impl NodeCall {
    fn unguarded(timeout: Duration) -> Self {
        Self {
            breaker: None,
            refresh: Weak::new(),
            started: Instant::now(),
            timeout,
            finished: false,
        }
    }

    /// The call never reached the node (no connection): its breaker learns nothing.
    pub(super) fn abandon(mut self) {
        self.finished = true;
    }

    /// Record how the call ended.
    pub(super) fn finish<T>(mut self, result: &Result<T>) {
        self.finished = true;
        match result {
            Ok(_) => self.succeeded(),
            Err(err) if err.is_unavailable() => self.failed(),
            // The node answered, even if it refused this command.
            Err(err) if err.kind() == ErrorKind::Server => self.succeeded(),
            Err(_) => {}
        }
    }

    fn succeeded(&self) {
        if let Some(breaker) = &self.breaker {
            breaker.record_success();
        }
    }

    fn failed(&self) {
        if let Some(breaker) = &self.breaker {
            breaker.record_failure();
        }
        if let Some(shared) = self.refresh.upgrade() {
            shared.refresh.notify_one();
        }
    }
}

impl Drop for NodeCall {
    fn drop(&mut self) {
        if !self.finished && self.started.elapsed() >= self.timeout {
            self.failed();
        }
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots as Redis Cluster's specification computes them, hash tags included.
    #[test]
    fn slots_follow_the_specification() {
        assert_eq!(
            slot_of(b"123456789"),
            12739,
            "the specification's CRC16 example"
        );
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(
            slot_of(b"foo{}{bar}"),
            slot_of(b"foo{}{bar}"),
            "empty tag: whole key"
        );
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
    }

    fn node(host: &str, port: i64) -> redis::Value {
        redis::Value::Array(vec![
            redis::Value::BulkString(host.as_bytes().to_vec()),
            redis::Value::Int(port),
            redis::Value::BulkString(b"id".to_vec()),
        ])
    }

    /// A `CLUSTER SLOTS` reply maps every slot to its primary; replicas are not primaries.
    #[test]
    fn reads_cluster_slots() {
        let reply = redis::Value::Array(vec![
            redis::Value::Array(vec![
                redis::Value::Int(0),
                redis::Value::Int(8191),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
            redis::Value::Array(vec![
                redis::Value::Int(8192),
                redis::Value::Int(16383),
                node("127.0.0.1", 7002),
            ]),
        ]);
        let table = SlotTable::parse(&reply).expect("a table");
        assert_eq!(table.primaries().len(), 2);
        let key_in = |port| {
            (0..)
                .map(|i: u32| format!("k{i}"))
                .find(|key| table.primary_of(key.as_bytes()).map(|n| n.port) == Some(port))
                .expect("some key")
        };
        assert!(usize::from(slot_of(key_in(7001).as_bytes())) < 8192);
        assert!(usize::from(slot_of(key_in(7002).as_bytes())) >= 8192);
        assert!(SlotTable::parse(&redis::Value::Int(1)).is_none());
        let out_of_range = redis::Value::Array(vec![redis::Value::Array(vec![
            redis::Value::Int(0),
            redis::Value::Int(16384),
            node("h", 1),
        ])]);
        assert!(SlotTable::parse(&out_of_range).is_none());
    }
}
