//! Change tracking on Redis: a dedicated RESP3 connection with
//! `CLIENT TRACKING ON BCAST PREFIX <prefix>`, whose invalidation pushes become
//! [`KeyChange`] reports.
//!
//! Why broadcast mode on a connection of its own, rather than tracking the keys each pooled
//! connection reads (Redis's default mode, or the `redis` crate's `cache-aio`): the pooled
//! connections reconnect by themselves, and a reconnected one has silently lost its tracking,
//! so the cache could not know which of its reads are still watched. One connection whose
//! only job is to hear changes has one state that is easy to know: while it is up and
//! answering, every change to a key under the prefix (a write by any client, a delete, an
//! expiry, an eviction, a flush) is pushed to it; when it is not, this module says so
//! ([`KeyChange::Blind`]) and the near tier stops trusting itself. Broadcast costs the server
//! no memory per key read, at the price of a message per write under the prefix, which for
//! a cache (written on misses, read on hits) is small.
//!
//! On a Redis Cluster each primary reports the changes to its own keys only, so a session
//! holds one such connection per primary, and ends when the cluster's set of primaries
//! changes (a failover, a node added or removed): the next session watches the new set. With
//! Sentinel, a session watches the primary they name now.
//!
//! This module must never report [`KeyChange::Watching`] before every server it needs
//! confirmed tracking, and must report `Blind` as soon as any connection is in doubt:
//! dropped, not answering a heartbeat in time, or no longer on a primary.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, try_join_all};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, PushInfo, PushKind};
use tokio::sync::{Notify, oneshot, watch};

use super::cluster::{ClusterLink, SlotTable};
use super::{Link, RedisStore};
use crate::error::{Error, ErrorKind, Result};
use crate::store::contract::{ChangeListener, ChangeTracking, KeyChange};
use crate::telemetry;

/// The tracking connection's name in `CLIENT LIST`.
pub const TRACKING_CLIENT_NAME: &str = "cachelayer-tracking";
/// How often the tracking connection is checked when no push arrives.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a heartbeat may take before the connection counts as lost. With the interval,
/// this bounds how long a silently dead connection goes unnoticed (about 1.5 s).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
/// First and longest pause between attempts to re-establish tracking.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(20);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Start tracking `prefix` in the background; the handle's drop stops it.
pub(super) fn start(store: &RedisStore, prefix: &str, listener: ChangeListener) -> ChangeTracking {
    let (handle, stopped) = ChangeTracking::new();
    store
        .inner
        .runtime
        .spawn(track(store.clone(), prefix.to_owned(), listener, stopped));
    handle
}

/// Reports `Blind` when dropped: however the tracking task ends (stopped, panicked, aborted,
/// or dropped with the runtime it ran on), the tier never stays `Watching` without it.
struct BlindOnDrop(ChangeListener);

impl Drop for BlindOnDrop {
    fn drop(&mut self) {
        (self.0)(KeyChange::Blind);
    }
}

/// Keep one tracking session alive at a time, reporting `Watching` when one starts and
/// `Blind` when it ends, until stopped.
async fn track(
    store: RedisStore,
    prefix: String,
    listener: ChangeListener,
    mut stopped: oneshot::Receiver<()>,
) {
    let _blind_when_gone = BlindOnDrop(listener.clone());
    let mut delay = FIRST_RETRY_DELAY;
    let mut failures_in_a_row = 0u32;
    loop {
        let lost = Arc::new(Notify::new());
        let opened = tokio::select! {
            _ = &mut stopped => return,
            opened = open(&store, &prefix, &listener, &lost) => opened,
        };
        match opened {
            Ok(session) => {
                listener(KeyChange::Watching);
                tracing::info!(
                    prefix,
                    servers = session.connections.len(),
                    "redis change tracking on"
                );
                delay = FIRST_RETRY_DELAY;
                failures_in_a_row = 0;
                let ended = watch(session, &lost, &mut stopped).await;
                listener(KeyChange::Blind);
                if ended == SessionEnd::Stopped {
                    return;
                }
                metrics::counter!(telemetry::NEAR_TRACKING_LOST).increment(1);
                tracing::warn!(
                    prefix,
                    "redis change tracking lost; the near tier is emptied and bypassed until it is back"
                );
            }
            Err(err) => {
                failures_in_a_row += 1;
                // Once per outage at warn: a Redis older than 6, or an ACL without the CLIENT
                // command, keeps the near tier off for good, and says so here.
                if failures_in_a_row == 1 {
                    tracing::warn!(prefix, error = %err, "redis change tracking not established; the near tier is bypassed until it is");
                } else {
                    tracing::debug!(prefix, error = %err, "redis change tracking not established");
                }
            }
        }
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// The connections of one tracking session, and for a cluster, the slot tables to come
/// (the session ends when the primaries change).
struct Session {
    connections: Vec<MultiplexedConnection>,
    topology: Option<(watch::Receiver<Arc<SlotTable>>, Arc<SlotTable>)>,
    watched: Watched,
}

/// What the session's servers must stay for its reports to be complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    /// The one server the URL names, whatever its role.
    Server,
    /// Primaries: a demoted one (a failover that left it alive) no longer sees the writes,
    /// so the heartbeat asks `ROLE`, not `PING`.
    Primaries,
}

/// Turn tracking on at every server the store needs watched: the one server, or every
/// primary of the cluster.
async fn open(
    store: &RedisStore,
    prefix: &str,
    listener: &ChangeListener,
    lost: &Arc<Notify>,
) -> Result<Session> {
    match &store.inner.link {
        Link::Node(node) => {
            let factory = &store.inner.factory;
            let clients = node.clients(factory).await?;
            let opened = open_one(store, &clients.tracking_client, prefix, listener, lost).await;
            let opened = match opened {
                // A primary demoted while alive still accepts connections, and would
                // report nothing of the writes on its successor.
                Ok(mut connection) if node.follows_sentinels() => {
                    confirm_primary(&mut connection).await.map(|()| connection)
                }
                other => other.map_err(Error::from),
            };
            match opened {
                Ok(connection) => Ok(Session {
                    connections: vec![connection],
                    topology: None,
                    watched: if node.follows_sentinels() {
                        Watched::Primaries
                    } else {
                        Watched::Server
                    },
                }),
                Err(err) => {
                    node.suspect_moved(factory).await;
                    Err(err)
                }
            }
        }
        Link::Cluster(cluster) => open_on_primaries(store, cluster, prefix, listener, lost).await,
    }
}

/// One tracking connection per primary of the cluster's current slot table.
async fn open_on_primaries(
    store: &RedisStore,
    cluster: &ClusterLink,
    prefix: &str,
    listener: &ChangeListener,
    lost: &Arc<Notify>,
) -> Result<Session> {
    cluster.connection().await?;
    let mut topology = cluster.topology();
    let mut table = topology.borrow_and_update().clone();
    if table.primaries().is_empty() {
        // The first slot table is read right after the first dial.
        let _ = tokio::time::timeout(store.inner.connect_timeout, topology.changed()).await;
        table = topology.borrow_and_update().clone();
    }
    if table.primaries().is_empty() {
        return Err(Error::new(
            ErrorKind::Connection,
            "the Redis Cluster's slot table is not known yet",
        ));
    }
    if !table.is_complete() {
        return Err(Error::new(
            ErrorKind::Connection,
            "some Redis Cluster primaries announce no address, so their changes cannot be watched",
        ));
    }
    let clients = table
        .primaries()
        .iter()
        .map(|node| {
            let url = cluster.seeds().node_url(&node.host, node.port);
            store
                .inner
                .factory
                .client(&url, Some(redis::ProtocolVersion::RESP3))
        })
        .collect::<redis::RedisResult<Vec<Client>>>()?;
    let connections = try_join_all(clients.iter().map(|client| async {
        let mut connection = open_one(store, client, prefix, listener, lost).await?;
        // The table may be a moment old: a node it names may have been demoted.
        confirm_primary(&mut connection).await?;
        Ok::<_, Error>(connection)
    }))
    .await?;
    Ok(Session {
        connections,
        topology: Some((topology, table)),
        watched: Watched::Primaries,
    })
}

/// Connect to one server in RESP3 and turn broadcast tracking on. Pushes go straight to the
/// listener; a disconnection wakes `lost`.
async fn open_one(
    store: &RedisStore,
    client: &Client,
    prefix: &str,
    listener: &ChangeListener,
    lost: &Arc<Notify>,
) -> redis::RedisResult<MultiplexedConnection> {
    let pushes = {
        let listener = listener.clone();
        let lost = lost.clone();
        move |push: PushInfo| -> std::result::Result<(), std::convert::Infallible> {
            match push.kind {
                PushKind::Invalidate => listener(invalidated(push.data)),
                PushKind::Disconnection => lost.notify_one(),
                _ => {}
            }
            Ok(())
        }
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(store.inner.connect_timeout))
        .set_response_timeout(Some(HEARTBEAT_TIMEOUT))
        .set_push_sender(pushes);
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    // Named, so an operator can tell it apart in `CLIENT LIST` (and kill it to test).
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(TRACKING_CLIENT_NAME)
        .query_async::<()>(&mut connection)
        .await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(prefix)
        .query_async::<()>(&mut connection)
        .await?;
    Ok(connection)
}

/// Why a tracking session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// The connection dropped or stopped answering.
    Lost,
    /// The tracking handle was dropped.
    Stopped,
}

/// Heartbeat the session's connections until one is lost, the cluster's primaries change,
/// or tracking is stopped.
async fn watch(session: Session, lost: &Notify, stopped: &mut oneshot::Receiver<()>) -> SessionEnd {
    let Session {
        mut connections,
        topology,
        watched,
    } = session;
    let heartbeat_command = match watched {
        Watched::Server => redis::cmd("PING"),
        Watched::Primaries => redis::cmd("ROLE"),
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let primaries_changed = primaries_changed(topology);
    tokio::pin!(primaries_changed);
    loop {
        tokio::select! {
            _ = &mut *stopped => return SessionEnd::Stopped,
            () = lost.notified() => return SessionEnd::Lost,
            () = &mut primaries_changed => return SessionEnd::Lost,
            _ = heartbeat.tick() => {
                let answers = join_all(connections.iter_mut().map(|connection| {
                    tokio::time::timeout(HEARTBEAT_TIMEOUT, heartbeat_command.query_async::<redis::Value>(connection))
                }))
                .await;
                for answer in answers {
                    match answer {
                        Ok(Ok(reply)) if watched == Watched::Server || is_primary(&reply) => {}
                        Ok(Ok(_)) => {
                            tracing::info!("a tracked redis server is no longer a primary");
                            return SessionEnd::Lost;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, "redis change tracking heartbeat failed");
                            return SessionEnd::Lost;
                        }
                        Err(_) => return SessionEnd::Lost,
                    }
                }
            }
        }
    }
}

/// Fails unless the server says it is a primary.
async fn confirm_primary(connection: &mut MultiplexedConnection) -> Result<()> {
    let role: redis::Value = redis::cmd("ROLE").query_async(connection).await?;
    if is_primary(&role) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Connection,
            "the server to watch is no longer a primary",
        ))
    }
}

/// Whether a `ROLE` reply says "master".
fn is_primary(reply: &redis::Value) -> bool {
    let redis::Value::Array(fields) = reply else {
        return false;
    };
    match fields.first() {
        Some(redis::Value::BulkString(role)) => role == b"master",
        Some(redis::Value::SimpleString(role)) => role == "master",
        _ => false,
    }
}

/// Resolves when a slot table with other primaries than the session's arrives; never
/// without a cluster.
async fn primaries_changed(topology: Option<(watch::Receiver<Arc<SlotTable>>, Arc<SlotTable>)>) {
    let Some((mut tables, watched)) = topology else {
        return std::future::pending().await;
    };
    loop {
        if tables.changed().await.is_err() {
            return std::future::pending().await;
        }
        if tables.borrow_and_update().primaries() != watched.primaries() {
            return;
        }
    }
}

/// The keys of an `invalidate` push; a null list (a flush) or anything unexpected means
/// every key.
fn invalidated(data: Vec<redis::Value>) -> KeyChange {
    let Some(redis::Value::Array(keys)) = data.into_iter().next() else {
        return KeyChange::All;
    };
    let mut names = Vec::with_capacity(keys.len());
    for key in keys {
        match key {
            // A name that is not UTF-8 is no key of a cache (keys are text), so its lossy
            // form, which matches none, is as good as the name.
            redis::Value::BulkString(bytes) => {
                names.push(String::from_utf8_lossy(&bytes).into_owned());
            }
            redis::Value::SimpleString(name) => names.push(name),
            _ => return KeyChange::All,
        }
    }
    KeyChange::Keys(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invalidation pushes become key lists; a flush (null) or a shape this module does not
    /// know becomes "every key", never "nothing"; a name that is not text stays one name.
    #[test]
    fn reads_invalidation_pushes() {
        let keys = vec![redis::Value::Array(vec![
            redis::Value::BulkString(b"ns:v1:a".to_vec()),
            redis::Value::BulkString(b"ns:v1:b".to_vec()),
        ])];
        assert_eq!(
            invalidated(keys),
            KeyChange::Keys(vec!["ns:v1:a".into(), "ns:v1:b".into()])
        );
        assert_eq!(invalidated(vec![redis::Value::Nil]), KeyChange::All);
        assert_eq!(invalidated(Vec::new()), KeyChange::All);
        let odd = vec![redis::Value::Array(vec![redis::Value::Int(3)])];
        assert_eq!(invalidated(odd), KeyChange::All);
        let binary = vec![redis::Value::Array(vec![redis::Value::BulkString(vec![
            0xff,
        ])])];
        assert_eq!(
            invalidated(binary),
            KeyChange::Keys(vec!["\u{fffd}".into()])
        );
    }
}
