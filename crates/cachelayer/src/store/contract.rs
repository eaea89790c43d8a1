//! What every store promises: the [`Store`] trait, the types it speaks in ([`StoreEntry`],
//! [`KeyTtl`], [`Subscription`], [`StoreKind`], [`KeyChange`]) and the TTL bounds all stores
//! share.
//!
//! This module must never name an implementation: `memory` and `redis` depend on it, never
//! the other way round.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::breaker::BreakerState;
use crate::error::{Error, Result};

/// Which implementation a [`Store`] is, for metrics, logs and health reports.
///
/// ```
/// use cachelayer::store::{MemoryStore, Store, StoreKind};
///
/// let store = MemoryStore::builder().build();
/// assert_eq!(store.kind(), StoreKind::Memory);
/// assert_eq!(store.kind().to_string(), "memory");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StoreKind {
    /// [`RedisStore`](super::RedisStore): shared by every instance of a service.
    Redis,
    /// [`MemoryStore`](super::MemoryStore): in this process only. Its calls never wait on
    /// I/O, so the cache does not bound them with `command_timeout`, does not guard them
    /// with its circuit breaker, and does not compress responses kept in it: a store of
    /// your own should say `Memory` only if that holds for it too.
    Memory,
}

impl StoreKind {
    /// Lower-case name: `"redis"` or `"memory"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Memory => "memory",
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a key has left to live, as Redis' `PTTL` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTtl {
    /// No such key (or it has expired).
    Missing,
    /// The key exists and never expires.
    Persistent,
    /// The key exists and expires after this long.
    ExpiresIn(Duration),
}

/// What a store reports about the keys under a tracked prefix (see
/// [`Store::track_changes`]). Reports arrive in the order the store made the changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyChange {
    /// Tracking is on: every change made from now on is reported.
    Watching,
    /// These keys were written, deleted, expired or evicted (by anyone).
    Keys(Vec<String>),
    /// Every key may have changed (`FLUSHALL`, `FLUSHDB`).
    All,
    /// Tracking is lost (the connection dropped or stopped answering): changes made from
    /// now until the next [`Watching`](Self::Watching) are not reported.
    Blind,
}

/// How a store places keys, which says whether one command may name any keys together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySpace {
    /// One place (one Redis, the in-process store): a command may name any keys.
    Single,
    /// Hash slots spread over nodes (a Redis Cluster): keys one command names together
    /// must share a slot, which a hash tag (`{...}`) in their names gives them.
    Slotted,
}

/// One node's circuit breaker, for a store that keeps one per node (see
/// [`Store::node_breakers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBreaker {
    /// The node's address (`host:port`).
    pub node: String,
    /// Its breaker's state.
    pub state: BreakerState,
}

/// Receives [`KeyChange`] reports. It is called on the store's connection task, so it must
/// return at once (no blocking, no waiting).
pub type ChangeListener = Arc<dyn Fn(KeyChange) + Send + Sync>;

/// Keeps change tracking running; dropping it stops the tracking and closes its connection.
#[derive(Debug)]
pub struct ChangeTracking {
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ChangeTracking {
    /// A handle whose drop resolves `stopped` (the tracking task's signal to end).
    pub fn new() -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        (Self { _stop: stop }, stopped)
    }
}

/// One entry of a batch write: a key, its bytes and its own TTL (batches carry per-entry TTLs
/// so jitter can spread their expiry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEntry {
    /// The full store key.
    pub key: String,
    /// The bytes to store.
    pub value: Bytes,
    /// How long the entry lives; must be non-zero.
    pub ttl: Duration,
}

/// What [`Store::claim`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key was free (absent or expired): the claim is written.
    Taken,
    /// The key held something no claim of this shape can be (a value of another length or
    /// type, or one without an expiry: garbage, or a foreign write): it was replaced.
    Replaced,
    /// A live claim holds the key: nothing was written.
    Held,
}

impl Claim {
    /// Whether the caller now holds the key.
    pub fn is_ours(self) -> bool {
        matches!(self, Self::Taken | Self::Replaced)
    }
}

/// A store of bytes under string keys, each with a time to live.
///
/// Semantics follow Redis: expired keys are absent; `set` replaces value and TTL;
/// `set_if_absent` writes only when the key is absent or expired; a TTL is never zero
/// (the callers skip the write instead, see [`Cache`](crate::Cache)).
///
/// ```
/// use std::time::Duration;
/// use cachelayer::store::{MemoryStore, Store};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cachelayer::Result<()> {
/// let store = MemoryStore::builder().build();
/// store.set("greeting", "hello".into(), Duration::from_secs(60)).await?;
/// assert_eq!(store.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
/// assert!(!store.set_if_absent("greeting", "other".into(), Duration::from_secs(60)).await?);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Which implementation this is (its `as_str()` labels metrics and logs).
    fn kind(&self) -> StoreKind;

    /// Where the store lives, for logs, with any credentials redacted (a Redis URL);
    /// `None` for a store inside the process.
    fn address(&self) -> Option<String> {
        None
    }

    /// The bytes under `key`, or `None` when absent.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// The bytes under each key, in order, in one round trip.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>>;

    /// The bytes under `key` and how long they have left to live, read together. The
    /// default makes two calls; a store that can should answer in one round trip.
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, KeyTtl)>> {
        let Some(value) = self.get(key).await? else {
            return Ok(None);
        };
        Ok(Some((value, self.ttl(key).await?)))
    }

    /// Like [`get_with_ttl`](Self::get_with_ttl) for many keys, in order.
    async fn get_many_with_ttl(&self, keys: &[String]) -> Result<Vec<Option<(Bytes, KeyTtl)>>> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.get_with_ttl(key).await?);
        }
        Ok(found)
    }

    /// Store `value` under `key` for `ttl`, replacing any value and TTL.
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()>;

    /// Store every entry, each with its own TTL, in one round trip. Not atomic: after an
    /// error some entries may have been written.
    async fn set_many(&self, entries: &[StoreEntry]) -> Result<()>;

    /// Remove `key`; true when it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Remove every key in one round trip; returns how many existed.
    async fn delete_many(&self, keys: &[String]) -> Result<u64>;

    /// Remove every key, saying for each, in order, whether it existed (a key named twice
    /// exists only the first time). The default makes one [`delete`](Self::delete) call per
    /// key; a store that can should answer in one round trip.
    async fn delete_each(&self, keys: &[String]) -> Result<Vec<bool>> {
        let mut existed = Vec::with_capacity(keys.len());
        for key in keys {
            existed.push(self.delete(key).await?);
        }
        Ok(existed)
    }

    /// Store `value` only when `key` is absent (Redis `SET NX PX`); true when written.
    async fn set_if_absent(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool>;

    /// Take `key` as a lease: write `value` for `ttl` unless a live lease holds it. A live
    /// lease is a string of the same length as `value` that expires; anything else under
    /// the key (garbage, a value without its expiry, another type) is replaced, so a lease
    /// key broken from outside heals at the next claim instead of blocking forever.
    ///
    /// The default is built from the other calls: atomic for each step, and safe (a value
    /// replaced meanwhile is never removed), but it takes up to four round trips where a
    /// store that can should take one.
    async fn claim(&self, key: &str, value: Bytes, ttl: Duration) -> Result<Claim> {
        if self.set_if_absent(key, value.clone(), ttl).await? {
            return Ok(Claim::Taken);
        }
        let Some((held, held_ttl)) = self.get_with_ttl(key).await? else {
            return self.set_if_absent(key, value, ttl).await.map(taken_or_held);
        };
        if held.len() == value.len() && matches!(held_ttl, KeyTtl::ExpiresIn(_)) {
            return Ok(Claim::Held);
        }
        self.compare_and_delete(key, &held).await?;
        let taken = self.set_if_absent(key, value, ttl).await?;
        Ok(if taken { Claim::Replaced } else { Claim::Held })
    }

    /// Advance the counter under `counter` and return its new value, which is greater than
    /// any value it returned before, even after the key was lost (evicted, flushed, or
    /// holding anything but decimal digits below 2^53): a lost counter restarts from the
    /// store's own clock in microseconds, not from zero. One clock (the store's) for every
    /// process, so callers can order events of different hosts without comparing their
    /// clocks. The counter lives for `ttl` from each advance.
    ///
    /// Atomically with the advance, each of `stamps` is written: its key gets the new value
    /// in decimal followed by the entry's bytes, for the entry's TTL. So two calls that stamp
    /// one key can never leave the lower value there.
    async fn advance_counter(
        &self,
        counter: &str,
        ttl: Duration,
        stamps: &[StoreEntry],
    ) -> Result<u64>;

    /// Remove `key` only while it still holds exactly `expected`, atomically; true when
    /// removed. This is how a lock owner releases its lock without removing someone else's.
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool>;

    /// Give `key` a new TTL only while it still holds exactly `expected`, atomically; true
    /// when extended. This is how a lock owner extends its lease while its work runs.
    async fn compare_and_expire(&self, key: &str, expected: &[u8], ttl: Duration) -> Result<bool>;

    /// How long `key` has left to live.
    async fn ttl(&self, key: &str) -> Result<KeyTtl>;

    /// Send `message` to every current subscriber of `channel`; returns how many received
    /// it. Delivery is at most once, as with Redis pub/sub: a subscriber that is
    /// disconnected or too slow misses messages, so callers must bound their waits.
    async fn publish(&self, channel: &str, message: Bytes) -> Result<u64>;

    /// Subscribe to `channel`. The subscription is active when this returns: a message
    /// published afterwards is delivered. It lasts until the [`Subscription`] is dropped.
    async fn subscribe(&self, channel: &str) -> Result<Subscription>;

    /// Round trip to the store, for health checks and breaker probes.
    async fn ping(&self) -> Result<()>;

    /// Report to `listener` every change to a key that starts with `prefix`, made by anyone,
    /// until the returned handle is dropped. `None` when this store cannot (the default):
    /// a near tier then stays off. The first report is [`KeyChange::Watching`] once
    /// tracking is on; a store reports [`KeyChange::Blind`] as soon as it can no longer
    /// promise to report changes, and `Watching` again when it can.
    fn track_changes(&self, prefix: &str, listener: ChangeListener) -> Option<ChangeTracking> {
        let _ = (prefix, listener);
        None
    }

    /// How the store places keys ([`KeySpace::Single`] by default).
    fn key_space(&self) -> KeySpace {
        KeySpace::Single
    }

    /// The store's own circuit breakers, one per node, when it keeps them (a Redis Cluster:
    /// one per primary); `None` (the default) when it keeps none. A store that keeps them
    /// fails a call at once, with [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen),
    /// when the node it needs is failing; the cache then keeps no breaker of its own for it,
    /// so one node down never stops calls to the others.
    fn node_breakers(&self) -> Option<Vec<NodeBreaker>> {
        None
    }
}

fn taken_or_held(taken: bool) -> Claim {
    if taken { Claim::Taken } else { Claim::Held }
}

/// The largest counter value: 2^53 - 1, past which Lua's numbers (Redis scripts) stop being
/// exact.
pub(crate) const MAX_COUNTER: u64 = (1 << 53) - 1;

/// A counter's value, if the bytes are one: decimal digits, at most [`MAX_COUNTER`].
pub(crate) fn parse_counter(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes)
        .ok()?
        .parse()
        .ok()
        .filter(|&value| value <= MAX_COUNTER)
}

/// A counter's next value: one past `current`, or the clock's reading when that is later
/// (a lost counter restarts there, past every value it held, as those were clock readings
/// or followed them).
pub(crate) fn next_counter(current: Option<u64>, clock_micros: u64) -> u64 {
    match current {
        Some(current) if current < MAX_COUNTER => (current + 1).max(clock_micros),
        _ => clock_micros,
    }
}

/// How many messages a subscription buffers before newer ones are dropped.
pub const SUBSCRIPTION_BUFFER: usize = 1024;

/// Messages of one subscribed channel, in publish order.
#[derive(Debug)]
pub struct Subscription {
    channel: String,
    receiver: mpsc::Receiver<Bytes>,
}

impl Subscription {
    pub(super) fn channel_pair(channel: &str) -> (mpsc::Sender<Bytes>, Self) {
        let (sender, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let subscription = Self {
            channel: channel.to_owned(),
            receiver,
        };
        (sender, subscription)
    }

    /// The channel this subscription listens to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next message; `None` only when the store has shut the subscription down.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.receiver.recv().await
    }
}

/// Longest TTL accepted: ten years. Longer ones are almost surely a unit mistake, and Redis
/// refuses expiry times past what its clock can represent.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Store TTLs are whole milliseconds, at least one, as `PX` takes them.
pub(crate) fn ttl_millis(ttl: Duration) -> Result<u64> {
    check_ttl(ttl)?;
    let millis = ttl.as_millis().max(1);
    Ok(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// A TTL a store can take: non-zero and at most [`MAX_TTL`].
pub(crate) fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::invalid_input(
            "a store TTL must be non-zero; skip the write to mean \"do not cache\"",
        ));
    }
    if ttl > MAX_TTL {
        return Err(Error::invalid_input(format!(
            "a TTL of {} s is over the 10-year maximum; check its unit",
            ttl.as_secs()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sub-millisecond TTLs round up instead of becoming "no expiry" or an error.
    #[test]
    fn ttl_millis_rounds_up_and_rejects_zero() {
        assert_eq!(ttl_millis(Duration::from_micros(10)).ok(), Some(1));
        assert_eq!(ttl_millis(Duration::from_secs(2)).ok(), Some(2000));
        assert!(ttl_millis(Duration::ZERO).is_err());
        assert!(ttl_millis(MAX_TTL).is_ok());
        assert!(ttl_millis(MAX_TTL + Duration::from_millis(1)).is_err());
        assert!(ttl_millis(Duration::MAX).is_err());
    }
}
