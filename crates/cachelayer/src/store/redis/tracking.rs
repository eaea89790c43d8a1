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
//! This module must never report [`KeyChange::Watching`] before the server confirmed
//! tracking, and must report `Blind` as soon as the connection is in doubt: dropped, or not
//! answering a heartbeat in time.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind};
use tokio::sync::{Notify, oneshot};

use super::RedisStore;
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
            Ok(connection) => {
                listener(KeyChange::Watching);
                tracing::info!(prefix, "redis change tracking on");
                delay = FIRST_RETRY_DELAY;
                failures_in_a_row = 0;
                let ended = watch(connection, &lost, &mut stopped).await;
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

/// Connect in RESP3 and turn broadcast tracking on. Pushes go straight to the listener;
/// a disconnection wakes `lost`.
async fn open(
    store: &RedisStore,
    prefix: &str,
    listener: &ChangeListener,
    lost: &Arc<Notify>,
) -> redis::RedisResult<MultiplexedConnection> {
    let pushes = {
        let listener = listener.clone();
        let lost = lost.clone();
        move |push: PushInfo| -> Result<(), std::convert::Infallible> {
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
    let mut connection = store
        .inner
        .tracking_client
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

/// Heartbeat the connection until it is lost or tracking is stopped.
async fn watch(
    mut connection: MultiplexedConnection,
    lost: &Notify,
    stopped: &mut oneshot::Receiver<()>,
) -> SessionEnd {
    let ping = redis::cmd("PING");
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut *stopped => return SessionEnd::Stopped,
            () = lost.notified() => return SessionEnd::Lost,
            _ = heartbeat.tick() => {
                let answer = ping.query_async::<()>(&mut connection);
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, answer).await {
                    Ok(Ok(())) => {}
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
