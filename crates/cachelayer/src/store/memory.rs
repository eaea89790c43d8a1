//! `MemoryStore`: an in-process store on moka, bounded by total bytes, with Redis' expiry and
//! set-if-absent semantics. It is the embedded default when no Redis URL is configured.
//!
//! It is a product feature for single-instance deployments, not a test double: it must never
//! relax a semantic that [`RedisStore`](super::RedisStore) has (expired keys are absent,
//! conditional writes are atomic per key), so code tested on one behaves the same on the other.
//! Like Redis under `maxmemory` with an eviction policy, it may evict any entry when full,
//! lock keys included: callers of `set_if_absent` must stay safe when their key vanishes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::Expiry;
use moka::future::Cache as MokaCache;
use moka::ops::compute::{CompResult, Op};
use tokio::sync::mpsc;

use super::contract::{
    Claim, KeyTtl, Store, StoreEntry, StoreKind, Subscription, next_counter, parse_counter,
    ttl_millis,
};
use crate::error::Result;

/// Default bound on the bytes held (keys plus values plus per-entry overhead): 256 MiB, the
/// `maxmemory` our Redis deployment uses (docker-compose.yml).
pub const DEFAULT_MEMORY_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

/// Bookkeeping bytes charged per entry on top of key and value, so that many tiny entries
/// cannot exceed the bound by far.
const ENTRY_OVERHEAD_BYTES: usize = 64;

#[derive(Debug, Clone)]
struct MemoryEntry {
    value: Bytes,
    expires_at: Instant,
}

impl MemoryEntry {
    fn new(value: Bytes, ttl: Duration) -> Result<Self> {
        let ttl = Duration::from_millis(ttl_millis(ttl)?);
        Ok(Self {
            value,
            expires_at: Instant::now() + ttl,
        })
    }

    fn is_live(&self, now: Instant) -> bool {
        self.expires_at > now
    }
}

/// Expires each entry at the instant stored in it, so a TTL survives replacement exactly as
/// `SET ... PX` does.
struct EntryExpiry;

impl Expiry<String, MemoryEntry> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &MemoryEntry,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &MemoryEntry,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(updated_at))
    }
}

type Subscribers = HashMap<String, Vec<mpsc::Sender<Bytes>>>;

/// An in-process [`Store`] bounded by total bytes.
///
/// Cloning is cheap and clones share the same entries.
///
/// ```
/// use std::time::Duration;
/// use cachelayer::store::{KeyTtl, MemoryStore, Store};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cachelayer::Result<()> {
/// let store = MemoryStore::builder().max_capacity_bytes(1024 * 1024).build();
/// store.set("k", "v".into(), Duration::from_secs(30)).await?;
/// assert!(matches!(store.ttl("k").await?, KeyTtl::ExpiresIn(left) if left <= Duration::from_secs(30)));
/// assert_eq!(store.ttl("absent").await?, KeyTtl::Missing);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    entries: MokaCache<String, MemoryEntry>,
    subscribers: Arc<Mutex<Subscribers>>,
    /// Held through one counter advance and its stamps.
    advancing: Arc<tokio::sync::Mutex<()>>,
    capacity_bytes: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    capacity_bytes: u64,
}

impl MemoryStoreBuilder {
    /// Bound on the bytes held; the least valuable entries are evicted beyond it.
    pub fn max_capacity_bytes(mut self, bytes: u64) -> Self {
        self.capacity_bytes = bytes;
        self
    }

    /// Build the store.
    pub fn build(self) -> MemoryStore {
        let entries = MokaCache::builder()
            .max_capacity(self.capacity_bytes)
            .weigher(|key: &String, entry: &MemoryEntry| {
                let weight = key.len() + entry.value.len() + ENTRY_OVERHEAD_BYTES;
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry)
            .build();
        MemoryStore {
            entries,
            subscribers: Arc::default(),
            advancing: Arc::default(),
            capacity_bytes: self.capacity_bytes,
        }
    }
}

impl MemoryStore {
    /// A builder with [`DEFAULT_MEMORY_CAPACITY_BYTES`].
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            capacity_bytes: DEFAULT_MEMORY_CAPACITY_BYTES,
        }
    }

    /// The bound on bytes held.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Bytes currently charged against the bound (settles after pending maintenance).
    pub async fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.weighted_size()
    }

    /// Every write goes through moka's per-key compute queue: plain `insert` and `remove`
    /// bypass that queue, which would let a `set` land between a conditional write's check
    /// and its action (a lost `SET NX` or a lock deleted from its new owner).
    async fn compute(
        &self,
        key: &str,
        decide: impl FnOnce(Option<&MemoryEntry>) -> Op<MemoryEntry>,
    ) -> CompResult<String, MemoryEntry> {
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|existing| {
                let now = Instant::now();
                let live = existing
                    .as_ref()
                    .map(|e| e.value())
                    .filter(|e| e.is_live(now));
                std::future::ready(decide(live))
            })
            .await
    }

    async fn live_entry(&self, key: &str) -> Option<MemoryEntry> {
        self.entries
            .get(key)
            .await
            .filter(|entry| entry.is_live(Instant::now()))
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Memory
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.live_entry(key).await.map(|entry| entry.value))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.live_entry(key).await.map(|entry| entry.value));
        }
        Ok(values)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        let entry = MemoryEntry::new(value, ttl)?;
        self.compute(key, |_| Op::Put(entry)).await;
        Ok(())
    }

    async fn set_many(&self, entries: &[StoreEntry]) -> Result<()> {
        // Validate every TTL first so a bad entry cannot leave half a batch written.
        let prepared = entries
            .iter()
            .map(|e| Ok((e.key.clone(), MemoryEntry::new(e.value.clone(), e.ttl)?)))
            .collect::<Result<Vec<_>>>()?;
        for (key, entry) in prepared {
            self.compute(&key, |_| Op::Put(entry)).await;
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let outcome = self
            .compute(key, |live| match live {
                Some(_) => Op::Remove,
                None => Op::Nop,
            })
            .await;
        Ok(matches!(outcome, CompResult::Removed(_)))
    }

    async fn delete_many(&self, keys: &[String]) -> Result<u64> {
        let mut removed = 0;
        for key in keys {
            if self.delete(key).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn set_if_absent(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        let entry = MemoryEntry::new(value, ttl)?;
        let outcome = self
            .compute(key, |live| match live {
                Some(_) => Op::Nop,
                None => Op::Put(entry),
            })
            .await;
        Ok(matches!(
            outcome,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        ))
    }

    async fn claim(&self, key: &str, value: Bytes, ttl: Duration) -> Result<Claim> {
        // Every entry here expires, so only the length can tell a foreign value.
        let length = value.len();
        let entry = MemoryEntry::new(value, ttl)?;
        let mut claim = Claim::Held;
        self.compute(key, |live| match live {
            Some(held) if held.value.len() == length => Op::Nop,
            Some(_) => {
                claim = Claim::Replaced;
                Op::Put(entry)
            }
            None => {
                claim = Claim::Taken;
                Op::Put(entry)
            }
        })
        .await;
        Ok(claim)
    }

    async fn advance_counter(
        &self,
        counter: &str,
        ttl: Duration,
        stamps: &[StoreEntry],
    ) -> Result<u64> {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let clock = u64::try_from(clock).unwrap_or(u64::MAX);
        let ttl = Duration::from_millis(ttl_millis(ttl)?);
        let lifetimes = stamps
            .iter()
            .map(|stamp| Ok(Duration::from_millis(ttl_millis(stamp.ttl)?)))
            .collect::<Result<Vec<_>>>()?;
        // One advance and its stamps at a time, as Redis runs the script.
        let _advancing = self.advancing.lock().await;
        let mut advanced = 0;
        self.compute(counter, |live| {
            let current = live.and_then(|held| parse_counter(&held.value));
            advanced = next_counter(current, clock);
            Op::Put(MemoryEntry {
                value: Bytes::from(advanced.to_string()),
                expires_at: Instant::now() + ttl,
            })
        })
        .await;
        for (stamp, life) in stamps.iter().zip(lifetimes) {
            let mut value = advanced.to_string().into_bytes();
            value.extend_from_slice(&stamp.value);
            let entry = MemoryEntry {
                value: Bytes::from(value),
                expires_at: Instant::now() + life,
            };
            self.compute(&stamp.key, |_| Op::Put(entry)).await;
        }
        Ok(advanced)
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        let outcome = self
            .compute(key, |live| match live {
                Some(entry) if entry.value.as_ref() == expected => Op::Remove,
                _ => Op::Nop,
            })
            .await;
        Ok(matches!(outcome, CompResult::Removed(_)))
    }

    async fn compare_and_expire(&self, key: &str, expected: &[u8], ttl: Duration) -> Result<bool> {
        let extended = MemoryEntry::new(Bytes::copy_from_slice(expected), ttl)?;
        let outcome = self
            .compute(key, |live| match live {
                Some(entry) if entry.value.as_ref() == expected => Op::Put(extended),
                _ => Op::Nop,
            })
            .await;
        Ok(matches!(outcome, CompResult::ReplacedWith(_)))
    }

    async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let now = Instant::now();
        Ok(match self.live_entry(key).await {
            Some(entry) => KeyTtl::ExpiresIn(entry.expires_at.saturating_duration_since(now)),
            None => KeyTtl::Missing,
        })
    }

    async fn publish(&self, channel: &str, message: Bytes) -> Result<u64> {
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(senders) = subscribers.get_mut(channel) else {
            return Ok(0);
        };
        senders.retain(|sender| !sender.is_closed());
        let mut delivered = 0;
        for sender in senders.iter() {
            // A full buffer drops the message for that subscriber, as Redis drops output to
            // a client past its output-buffer limit.
            if sender.try_send(message.clone()).is_ok() {
                delivered += 1;
            }
        }
        if senders.is_empty() {
            subscribers.remove(channel);
        }
        Ok(delivered)
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription> {
        let (sender, subscription) = Subscription::channel_pair(channel);
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(channel.to_owned())
            .or_default()
            .push(sender);
        Ok(subscription)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte bound holds: writing far more than the capacity keeps the weighted size under it.
    #[tokio::test]
    async fn stays_within_byte_bound() {
        let store = MemoryStore::builder().max_capacity_bytes(64 * 1024).build();
        let value = Bytes::from(vec![7u8; 1024]);
        for i in 0..1000 {
            store
                .set(&format!("k{i}"), value.clone(), Duration::from_secs(60))
                .await
                .expect("set");
        }
        let size = store.weighted_size().await;
        assert!(size <= 64 * 1024, "weighted size {size} exceeds the bound");
        assert!(size > 0);
    }

    /// A closed subscription is pruned and no longer counted as a receiver.
    #[tokio::test]
    async fn dropped_subscriptions_are_not_counted() {
        let store = MemoryStore::builder().build();
        let sub = store.subscribe("c").await.expect("subscribe");
        assert_eq!(store.publish("c", "1".into()).await.ok(), Some(1));
        drop(sub);
        assert_eq!(store.publish("c", "2".into()).await.ok(), Some(0));
    }
}
