//! The link to one Redis server: a small round-robin of self-reconnecting multiplexed
//! connections to a fixed address, or to the primary that Sentinels name, followed when they
//! fail it over.
//!
//! Pooling here is not checkout-style: each [`ConnectionManager`] multiplexes every
//! concurrent request over one socket and reconnects in the background, so the "pool" is a
//! few of them to spread load over a few sockets and parser tasks. This module must never
//! retry a command (a retry after an unseen success could reorder writes), never block on
//! connecting while building, and never ask the Sentinels more than once per
//! [`LOOKUP_INTERVAL`] however many calls fail together.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

use redis::Client;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::ClientFactory;
use super::deployment::SentinelSet;
use crate::error::{Error, ErrorKind, Result};

/// The shortest time between two Sentinel lookups.
const LOOKUP_INTERVAL: Duration = Duration::from_millis(50);

/// Where the server is.
pub(super) enum NodeSource {
    /// At the URL's address, always.
    Fixed,
    /// Wherever the Sentinels say the primary is.
    Sentinel(SentinelSet),
}

/// The clients for the server's current address.
#[derive(Clone)]
pub(super) struct NodeClients {
    /// RESP2 (or as the URL says), for commands and pub/sub.
    pub(super) client: Client,
    /// The same server in RESP3, which change tracking's pushes need.
    pub(super) tracking_client: Client,
    /// `host:port`, for logs (no credentials).
    pub(super) address: String,
}

/// When to ask the Sentinels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Only if no primary is known (another call may have found it meanwhile).
    IfUnknown,
    /// Again: the known primary may have moved.
    Again,
}

/// One pooled connection and a generation that changes when it is replaced, so a late
/// error from a replaced connection cannot throw away its successor.
struct PoolSlot {
    generation: u64,
    connection: Option<ConnectionManager>,
}

/// The link to one server (see the module docs).
pub(super) struct NodeLink {
    source: NodeSource,
    clients: RwLock<Option<NodeClients>>,
    manager_config: ConnectionManagerConfig,
    slots: Vec<RwLock<PoolSlot>>,
    next: AtomicUsize,
    /// Counts redials of the whole pool after a dropped connection: a call redials only
    /// if none happened since it started, so a burst of calls failing together redials once.
    redials: AtomicU64,
    /// One Sentinel lookup at a time, and when the last one ended.
    lookup: tokio::sync::Mutex<Option<Instant>>,
    connect_timeout: Duration,
}

/// A connection taken from the pool, with what is needed to replace it if it fails.
pub(super) struct Taken {
    pub(super) connection: ConnectionManager,
    slot: usize,
    generation: u64,
    redials: u64,
}

impl NodeLink {
    /// A link to `clients` (a fixed server), or to the primary `source` will name.
    pub(super) fn new(
        source: NodeSource,
        clients: Option<NodeClients>,
        manager_config: ConnectionManagerConfig,
        pool_size: usize,
        connect_timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let slots = (0..pool_size)
            .map(|_| {
                let connection = clients
                    .as_ref()
                    .map(|clients| {
                        ConnectionManager::new_lazy_with_config(
                            clients.client.clone(),
                            manager_config.clone(),
                        )
                    })
                    .transpose()?;
                Ok(RwLock::new(PoolSlot {
                    generation: 0,
                    connection,
                }))
            })
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok(Self {
            source,
            clients: RwLock::new(clients),
            manager_config,
            slots,
            next: AtomicUsize::new(0),
            redials: AtomicU64::new(0),
            lookup: tokio::sync::Mutex::new(None),
            connect_timeout,
        })
    }

    pub(super) fn pool_size(&self) -> usize {
        self.slots.len()
    }

    /// The next connection of the round-robin; with Sentinel, the first call asks them
    /// where the primary is.
    pub(super) async fn take(&self, factory: &ClientFactory) -> Result<Taken> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        if let Some(taken) = self.taken(slot) {
            return Ok(taken);
        }
        self.follow_primary(factory, Lookup::IfUnknown).await?;
        self.taken(slot).ok_or_else(|| {
            Error::new(
                ErrorKind::Connection,
                "no primary is known yet; the Sentinels did not name one",
            )
        })
    }

    fn taken(&self, slot: usize) -> Option<Taken> {
        let current = read_lock(&self.slots[slot]);
        Some(Taken {
            connection: current.connection.clone()?,
            slot,
            generation: current.generation,
            redials: self.redials.load(Ordering::Acquire),
        })
    }

    /// The clients for the current address (asking the Sentinels first if none is known).
    pub(super) async fn clients(&self, factory: &ClientFactory) -> Result<NodeClients> {
        if let Some(clients) = read_lock(&self.clients).clone() {
            return Ok(clients);
        }
        self.follow_primary(factory, Lookup::IfUnknown).await?;
        read_lock(&self.clients).clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Connection,
                "no primary is known yet; the Sentinels did not name one",
            )
        })
    }

    /// After `err` on `taken`: replace connections that cannot recover by themselves, and
    /// with Sentinel, ask where the primary is now when the error says it may have moved.
    pub(super) async fn after_error(
        &self,
        factory: &ClientFactory,
        taken: &Taken,
        err: &redis::RedisError,
    ) {
        if needs_new_connection(err) {
            self.replace(taken.slot, taken.generation);
        } else if is_dropped_connection(err) {
            // This slot's manager redials by itself; the others were most likely cut
            // too, and would each fail one more call before noticing.
            self.redial_others(taken.slot, taken.redials);
        }
        if primary_may_have_moved(err) {
            self.suspect_moved(factory).await;
        }
    }

    /// Whether the server is the primary Sentinels name (rather than a fixed address).
    pub(super) fn follows_sentinels(&self) -> bool {
        matches!(self.source, NodeSource::Sentinel(_))
    }

    /// With Sentinel, ask where the primary is now: a connection to it failed in a way that
    /// says nothing more (a dial, a timeout).
    pub(super) async fn suspect_moved(&self, factory: &ClientFactory) {
        if matches!(self.source, NodeSource::Sentinel(_))
            && let Err(lookup) = self.follow_primary(factory, Lookup::Again).await
        {
            tracing::debug!(error = %lookup, "Sentinel lookup failed");
        }
    }

    /// Ask the Sentinels where the primary is, and move every connection there if it moved.
    async fn follow_primary(&self, factory: &ClientFactory, lookup: Lookup) -> Result<()> {
        let NodeSource::Sentinel(set) = &self.source else {
            return Ok(());
        };
        let mut last_lookup = self.lookup.lock().await;
        let known = read_lock(&self.clients)
            .as_ref()
            .map(|clients| clients.address.clone());
        if lookup == Lookup::IfUnknown && known.is_some() {
            return Ok(());
        }
        // However many calls fail together, the Sentinels are asked once per interval.
        if last_lookup.is_some_and(|at| at.elapsed() < LOOKUP_INTERVAL) {
            return match known {
                Some(_) => Ok(()),
                None => Err(Error::new(
                    ErrorKind::Connection,
                    "no Sentinel named the primary yet; asking again shortly",
                )),
            };
        }
        let found = super::sentinel::primary_address(set, factory, self.connect_timeout).await;
        *last_lookup = Some(Instant::now());
        let (host, port) = found?;
        let address = super::deployment::host_port(&host, port);
        if known.as_deref() == Some(address.as_str()) {
            return Ok(());
        }
        let url = set.node_url(&host, port);
        let clients = NodeClients {
            client: factory.client(&url, None)?,
            tracking_client: factory.client(&url, Some(redis::ProtocolVersion::RESP3))?,
            address: address.clone(),
        };
        match &known {
            Some(old) => {
                metrics::counter!(crate::telemetry::REDIS_PRIMARY_CHANGES).increment(1);
                tracing::warn!(from = %old, to = %address, master = %set.master, "Sentinel named a new primary; following it");
            }
            None => {
                tracing::info!(primary = %address, master = %set.master, "Sentinel named the primary")
            }
        }
        *self
            .clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(clients);
        for slot in 0..self.slots.len() {
            let generation = read_lock(&self.slots[slot]).generation;
            self.replace(slot, generation);
        }
        Ok(())
    }

    /// Replace every connection but `slot`'s with a fresh (lazy) one, unless the pool was
    /// redialled since the failed call started (`redials` is what it read then). Calls
    /// already sent on the old connections finish there.
    fn redial_others(&self, slot: usize, redials: u64) {
        if self.slots.len() < 2
            || self
                .redials
                .compare_exchange(redials, redials + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        for other in (0..self.slots.len()).filter(|&other| other != slot) {
            let generation = read_lock(&self.slots[other]).generation;
            self.replace(other, generation);
        }
    }

    /// Replace the connection in `slot` with a fresh lazy one to the current address, unless
    /// it was already replaced since `generation` was read (the next call then dials again).
    fn replace(&self, slot: usize, generation: u64) {
        let Some(client) = read_lock(&self.clients)
            .as_ref()
            .map(|clients| clients.client.clone())
        else {
            return;
        };
        let mut current = self.slots[slot]
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.generation != generation {
            return;
        }
        match ConnectionManager::new_lazy_with_config(client, self.manager_config.clone()) {
            Ok(fresh) => {
                current.connection = Some(fresh);
                current.generation += 1;
            }
            Err(rebuild) => tracing::warn!(error = %rebuild, "cannot rebuild a redis connection"),
        }
    }
}

/// `ConnectionManager` reconnects only after I/O errors. A connection whose handshake was
/// refused (a wrong or rotated password: AuthenticationFailed, or `WRONGPASS` under RESP3)
/// or that is left on a demoted primary (`READONLY` after a failover) would fail forever, so
/// those errors replace it; the circuit breaker bounds how often.
pub(super) fn needs_new_connection(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "READONLY"))
}

/// A connection cut under us (reset, closed, broken pipe), as a failover, a restart, an idle
/// timeout or `CLIENT KILL` does to every connection at once; not a refused dial.
fn is_dropped_connection(err: &redis::RedisError) -> bool {
    err.is_connection_dropped() && !err.is_connection_refusal()
}

/// Errors after which the Sentinels may name another primary: the server is gone, or it
/// says it is no longer (or not yet) a writable primary.
fn primary_may_have_moved(err: &redis::RedisError) -> bool {
    err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || matches!(err.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Writers only swap in a whole new value, so a poisoned lock still holds a usable one.
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// With Sentinel, the errors that say the primary may be elsewhere now ask them again;
    /// a refusal of one command does not.
    #[test]
    fn errors_that_send_us_to_the_sentinels() {
        let reply = crate::error::error_reply;
        for code in ["READONLY", "MASTERDOWN", "LOADING"] {
            assert!(primary_may_have_moved(&reply(code)), "{code}");
        }
        assert!(!primary_may_have_moved(&reply("WRONGTYPE")));
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(primary_may_have_moved(&refused));
    }
}
