//! The link to a Redis Cluster: the `redis` crate's cluster connection (which routes each
//! command to its slot's primary, and learns of slot migrations and failovers), with a
//! circuit breaker per primary, so a primary that is down is skipped at once while the
//! healthy shards keep serving.
//!
//! The breakers need to know which primary serves a key, which that connection keeps to
//! itself; so this module keeps its own copy of the slot table (`slots`: `CLUSTER SLOTS`,
//! read every [`REFRESH_INTERVAL`] and as soon as a node fails). A stale copy only puts a
//! call's outcome on the wrong node's breaker for a moment; routing never uses it. Until a
//! table is known (and for a dial), one breaker guards the whole cluster. The same table
//! tells change tracking which primaries to watch. Redirections are followed in `redirect`.
//!
//! This module must never send a command of several keys that live in different slots (the
//! cluster refuses them): batches are split into single-key commands, sent concurrently so
//! each node's connection still pipelines them. And it must never dial while the store is
//! built, nor dial more than once at a time: the first call dials, every caller waits on
//! that one dial.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared as SharedFuture};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use tokio::sync::{Notify, watch};

use super::deployment::ClusterSeeds;
use crate::breaker::{Admission, BreakerState, CircuitBreaker};
use crate::error::{Error, ErrorKind, Result};
use crate::telemetry;

mod redirect;
mod slots;

pub(super) use self::redirect::send;
pub(super) use self::slots::{NodeAddress, SlotTable, slot_of};

/// How often the slot table is read again when nothing failed.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The share of the command timeout after which a call its caller dropped counts against
/// its node (see [`NodeCall`]).
const SLOW_SHARE: f64 = 0.9;

/// The one dial in flight, which every caller waits on (its error as text: errors are not
/// `Clone`).
type Dial = SharedFuture<BoxFuture<'static, std::result::Result<ClusterConnection, String>>>;

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
    connection: OnceLock<ClusterConnection>,
    /// The dial in flight, if any.
    dialing: Mutex<Option<Dial>>,
    /// The whole cluster's breaker: it guards dials, and calls whose primary is not known
    /// yet (no slot table), so a cluster that is down is not called by every request.
    cluster_breaker: Arc<CircuitBreaker>,
    /// The slot table, with each of its primaries' breakers (in its primaries' order).
    current: RwLock<Arc<Current>>,
    /// Publishes each new slot table (change tracking re-opens on a new set of primaries).
    topology: watch::Sender<Arc<SlotTable>>,
    /// Every primary's breaker, kept across tables while the primary stays.
    breakers: Mutex<HashMap<NodeAddress, Arc<CircuitBreaker>>>,
    refresh: Notify,
    settings: BreakerSettings,
    command_timeout: Duration,
    /// How long an admitted call runs before its drop counts as a failure ([`NodeCall`]).
    slow_after: Duration,
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
                connection: OnceLock::new(),
                dialing: Mutex::new(None),
                cluster_breaker: Arc::new(CircuitBreaker::new(
                    settings.failure_threshold,
                    settings.cool_down,
                    redacted_url.clone(),
                )),
                current: RwLock::new(Arc::default()),
                topology,
                breakers: Mutex::new(HashMap::new()),
                refresh: Notify::new(),
                settings,
                command_timeout,
                slow_after: command_timeout.mul_f64(SLOW_SHARE),
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

    /// The cluster connection. The first call dials, on a task of its own that every
    /// concurrent caller waits on (so a caller that gives up abandons nothing, and a cluster
    /// that does not answer sees one dial at a time, as the whole cluster's breaker allows).
    pub(super) async fn connection(&self) -> Result<ClusterConnection> {
        if let Some(connection) = self.shared.connection.get() {
            return Ok(connection.clone());
        }
        let dial = {
            let mut dialing = lock(&self.shared.dialing);
            match dialing.as_ref() {
                Some(dial) => dial.clone(),
                None => {
                    if self.shared.cluster_breaker.admit() == Admission::Rejected {
                        return Err(Error::new(
                            ErrorKind::CircuitOpen,
                            "no Redis Cluster node answered; the next dial waits for the breaker's cool-down",
                        ));
                    }
                    let dial = spawn_dial(&self.shared);
                    *dialing = Some(dial.clone());
                    dial
                }
            }
        };
        dial.await
            .map_err(|message| Error::new(ErrorKind::Connection, message))
    }

    /// Admit a call for `key`: the breaker of the primary serving it decides, or the whole
    /// cluster's while that primary is not known.
    pub(super) fn admit(&self, key: Option<&[u8]>) -> Result<NodeCall> {
        let current = read(&self.shared.current);
        let owner = key.and_then(|key| current.table.owner_of(key));
        let breaker = match owner {
            Some(owner) => current.breakers[owner].clone(),
            None => self.shared.cluster_breaker.clone(),
        };
        match breaker.admit() {
            Admission::Allowed => Ok(NodeCall {
                breaker,
                refresh: Arc::downgrade(&self.shared),
                finished: false,
                slow_from: Instant::now() + self.shared.slow_after,
            }),
            admission => {
                let node = owner.map(|owner| current.table.primaries()[owner].clone());
                if admission == Admission::Probe {
                    self.spawn_probe(node.clone(), breaker);
                }
                let what = node.map_or_else(
                    || "The Redis Cluster".to_owned(),
                    |node| format!("Redis Cluster node {node}"),
                );
                Err(Error::new(
                    ErrorKind::CircuitOpen,
                    format!("{what} is failing and is bypassed until its breaker's cool-down ends"),
                ))
            }
        }
    }

    /// Each known primary's breaker state; while no primary is known, the whole cluster's.
    pub(super) fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        let current = read(&self.shared.current);
        if current.table.primaries().is_empty() {
            return vec![(
                self.shared.redacted_url.clone(),
                self.shared.cluster_breaker.state(),
            )];
        }
        current
            .table
            .primaries()
            .iter()
            .zip(&current.breakers)
            .map(|(node, breaker)| (node.to_string(), breaker.state()))
            .collect()
    }

    /// Probe `node` (or, unknown, any node) for its breaker, on a task of its own.
    fn spawn_probe(&self, node: Option<NodeAddress>, breaker: Arc<CircuitBreaker>) {
        let link = Self {
            shared: self.shared.clone(),
        };
        tokio::spawn(async move {
            let probe = async {
                let mut connection = link.connection().await?;
                let routing = RoutingInfo::SingleNode(match &node {
                    Some(node) => SingleNodeRoutingInfo::ByAddress {
                        host: node.host.clone(),
                        port: node.port,
                    },
                    None => SingleNodeRoutingInfo::Random,
                });
                connection
                    .route_command(redis::cmd("PING"), routing)
                    .await
                    .map(drop)
                    .map_err(Error::from)
            };
            let answered = tokio::time::timeout(link.shared.command_timeout, probe).await;
            if matches!(answered, Ok(Ok(()))) {
                breaker.record_success();
            } else {
                tracing::debug!(node = ?node.map(|node| node.to_string()), "Redis Cluster probe failed");
                breaker.record_failure();
                link.shared.refresh.notify_one();
            }
        });
    }
}

/// Start the one dial: on success the connection is kept and the slot table read.
fn spawn_dial(shared: &Arc<Shared>) -> Dial {
    let link = Arc::downgrade(shared);
    let client = shared.client.clone();
    let timeout = shared.connect_timeout * 2;
    let breaker = shared.cluster_breaker.clone();
    let task = tokio::spawn(async move {
        let dialled = match tokio::time::timeout(timeout, client.get_async_connection()).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(err)) => Err(format!("cannot reach the Redis Cluster: {err}")),
            Err(_) => {
                Err("no Redis Cluster seed node answered in time; check the URL's hosts".to_owned())
            }
        };
        match &dialled {
            Ok(_) => breaker.record_success(),
            Err(_) => breaker.record_failure(),
        }
        if let Some(shared) = link.upgrade() {
            if let Ok(connection) = &dialled
                && shared.connection.set(connection.clone()).is_ok()
            {
                tracing::info!(cluster = %shared.redacted_url, "connected to the Redis Cluster");
                tokio::spawn(keep_slot_table(Arc::downgrade(&shared), connection.clone()));
            }
            *lock(&shared.dialing) = None;
        }
        dialled
    });
    async move {
        task.await
            .unwrap_or_else(|panicked| Err(format!("the Redis Cluster dial failed: {panicked}")))
    }
    .boxed()
    .shared()
}

impl Shared {
    fn breaker(&self, node: &NodeAddress) -> Arc<CircuitBreaker> {
        lock(&self.breakers)
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
        let current = read(&self.current).table.clone();
        if *current == table {
            return;
        }
        if !current.primaries().is_empty() && current.primaries() != table.primaries() {
            metrics::counter!(telemetry::REDIS_CLUSTER_TOPOLOGY_CHANGES).increment(1);
            let primaries: Vec<String> =
                table.primaries().iter().map(ToString::to_string).collect();
            tracing::warn!(primaries = ?primaries, "Redis Cluster primaries changed");
        }
        if !table.is_complete() {
            tracing::warn!(
                "some Redis Cluster primaries announce no address (cluster-preferred-endpoint-type); their keys have no breaker of their own, and the near tier stays off"
            );
        }
        let table = Arc::new(table);
        let breakers = table
            .primaries()
            .iter()
            .map(|node| self.breaker(node))
            .collect();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Current {
            table: table.clone(),
            breakers,
        });
        lock(&self.breakers).retain(|node, breaker| {
            let kept = table.primaries().contains(node);
            if !kept {
                breaker.retire();
            }
            kept
        });
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
        // The wait holds the link, so a dropped store ends this loop within one interval.
        tokio::select! {
            () = tokio::time::sleep(REFRESH_INTERVAL) => {}
            () = link.refresh.notified() => {}
        }
    }
}

/// A slot table and its primaries' breakers, read together on every call.
#[derive(Default)]
struct Current {
    table: Arc<SlotTable>,
    breakers: Vec<Arc<CircuitBreaker>>,
}

/// One admitted call, whose outcome goes to its breaker.
///
/// A call dropped before it finished was given up by its caller. When it had run for most of
/// the command timeout ([`SLOW_SHARE`] of it), it counts as a failure: a node that makes
/// callers give up is failing, and the cache's own timer, equal to the store's but started a
/// moment before it, usually fires first. A call dropped sooner says nothing of its node: a
/// client that disconnects cancels its request, and must not open the breaker for everyone.
pub(super) struct NodeCall {
    breaker: Arc<CircuitBreaker>,
    refresh: Weak<Shared>,
    finished: bool,
    /// From when a drop counts as a failure.
    slow_from: Instant,
}

impl NodeCall {
    /// The call never reached the cluster (no connection): its breaker learns nothing.
    pub(super) fn abandon(mut self) {
        self.finished = true;
    }

    /// Record how the call ended.
    pub(super) fn finish<T>(mut self, result: &Result<T>) {
        self.finished = true;
        match result {
            Ok(_) => self.breaker.record_success(),
            Err(err) if err.is_unavailable() => self.failed(),
            // The node answered, even if it refused this command.
            Err(err) if err.kind() == ErrorKind::Server => self.breaker.record_success(),
            Err(_) => {}
        }
    }

    fn failed(&self) {
        self.breaker.record_failure();
        if let Some(shared) = self.refresh.upgrade() {
            shared.refresh.notify_one();
        }
    }
}

impl Drop for NodeCall {
    fn drop(&mut self) {
        if !self.finished && Instant::now() >= self.slow_from {
            self.failed();
        }
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
