//! The [`Cache`] handle itself: its shared state, reads, writes, invalidation and the
//! failure policy every store call goes through (timeouts, the circuit breaker, metrics).
//! Reads through the near tier are in `near_reads`.
//!
//! Loads with stampede protection are `impl Cache` blocks in `load`, the builder in `builder`;
//! both depend on this module, never the other way round. This module must never let store
//! trouble fail a read or a write (only invalidation reports it), and must never let a write
//! or invalidation return while this process's near tier still holds the key.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{Counter, Histogram};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::breaker::{Admission, BreakerState, CircuitBreaker};
use crate::codec::{Codec, DecodeFailure, Decoded, EntryMeta};
use crate::error::{Error, ErrorKind, Result};
use crate::key::Key;
use crate::near::{FENCE_TTL, Near, fence_of};

use super::near_reads::entry_key;
use crate::payload::{DecodePayload, EncodePayload};
use crate::random::SeededRandom;
use crate::stampede::{Flights, NoticeWaiters, StampedeSettings};
use crate::store::{KeySpace, MAX_TTL, Store, StoreEntry, check_ttl};
use crate::telemetry;

/// What [`Cache::invalidate_reporting`] found: the keys it was given, by whether the store
/// held an entry under them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    /// Keys that held an entry: removed, in every instance sharing the store.
    pub removed: Vec<Key>,
    /// Keys that held none (never stored, expired or evicted): nothing to remove.
    pub not_found: Vec<Key>,
}

impl Removal {
    /// How many keys held an entry (and no longer do).
    pub fn count(&self) -> usize {
        self.removed.len()
    }
}

/// The process-wide cache of [`Cache::set_global`].
static GLOBAL: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();

/// A typed cache over a [`Store`]. Cheap to clone; clones share everything.
///
/// ```
/// use std::time::Duration;
/// use cachelayer::Cache;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Product { id: u64, name: String }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cachelayer::Result<()> {
/// let cache = Cache::builder().namespace("shop").build()?; // in-process store
/// let key = cachelayer::Key::new("product").part(7);
///
/// // Cache-aside: the loader runs on a miss, and its value is stored for 60 s.
/// let loaded = cache
///     .get_with(&key, Duration::from_secs(60), async { Product { id: 7, name: "lamp".into() } })
///     .await;
/// assert_eq!(cache.get::<Product>(&key).await, Some(loaded));
///
/// cache.invalidate(&key).await?;
/// assert_eq!(cache.get::<Product>(&key).await, None);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(super) inner: Arc<CacheInner>,
}

/// Which circuit breaker guards the store's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Guard {
    /// None: the store is in this process, so its calls never wait on I/O.
    Local,
    /// The cache's own breaker, for the whole store.
    CacheBreaker,
    /// The store's breakers, one per node (see [`Store::node_breakers`]).
    NodeBreakers,
}

pub(super) struct CacheInner {
    pub(super) store: Arc<dyn Store>,
    pub(super) namespace: String,
    pub(super) prefix: String,
    pub(super) default_ttl: Duration,
    pub(super) ttl_jitter: f64,
    pub(super) command_timeout: Duration,
    /// Which circuit breaker guards the store's calls (none for a store in this process,
    /// [`StoreKind::Memory`](crate::store::StoreKind)).
    pub(super) guard: Guard,
    pub(super) codec: Codec,
    pub(super) breaker: CircuitBreaker,
    pub(super) stampede: StampedeSettings,
    pub(super) flights: Arc<Flights>,
    /// Background refreshes running here, kept apart from `flights` so a caller never waits
    /// on one.
    pub(super) refreshes: Arc<Flights>,
    /// Waiters for store notices (another process announcing it stored a key).
    pub(super) notices: Arc<NoticeWaiters>,
    /// When subscribing to store notices last failed (waiters then poll for a while).
    pub(super) notice_listener_failed: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Set once store notices are subscribed; dropping it stops the listener task.
    pub(super) notice_listener: tokio::sync::OnceCell<tokio::sync::oneshot::Sender<()>>,
    /// Every random choice of this cache (XFetch, jitter), seedable for reproducible runs.
    pub(super) random: SeededRandom,
    /// The metrics of every read, resolved at the first one.
    pub(super) read_metrics: std::sync::OnceLock<ReadMetrics>,
    /// Hot entries in this process's memory, kept coherent by the store's change tracking.
    pub(super) near: Option<Near>,
}

/// Handles of the metrics every read records. Registering a series looks its key up in the
/// recorder, a cost per read that showed in the profile of hits; a handle is resolved once,
/// at the first read (after the application installed its recorder).
///
/// A library user who installs a metrics recorder after the first read keeps handles to
/// no recorder: install it first, as the `metrics` crate asks of every application.
pub(super) struct ReadMetrics {
    pub(super) hits: Counter,
    misses: Counter,
    pub(super) bytes_read: Counter,
    get_duration: Histogram,
}

impl ReadMetrics {
    fn resolve() -> Self {
        Self {
            hits: metrics::counter!(telemetry::HITS),
            misses: metrics::counter!(telemetry::MISSES),
            bytes_read: metrics::counter!(telemetry::BYTES_READ),
            get_duration: metrics::histogram!(telemetry::STORE_DURATION, "op" => "get"),
        }
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("store", &self.inner.store)
            .field("prefix", &self.inner.prefix)
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Make this the process-wide cache, used by `#[cached]` functions that have no
    /// `cache` argument or option. Set once at start-up; a second call returns the cache it
    /// was given, unchanged.
    ///
    /// ```
    /// use cachelayer::Cache;
    ///
    /// let cache = Cache::builder().build().unwrap();
    /// assert!(Cache::set_global(cache.clone()).is_ok());
    /// assert!(Cache::global().is_some());
    /// assert!(Cache::set_global(cache).is_err());
    /// ```
    pub fn set_global(cache: Cache) -> std::result::Result<(), Cache> {
        GLOBAL.set(cache)
    }

    /// The process-wide cache, if one was set.
    pub fn global() -> Option<&'static Cache> {
        GLOBAL.get()
    }

    /// The store key for `key`: namespace, version, then the key.
    pub fn full_key(&self, key: impl Into<Key>) -> String {
        self.prefixed(&key.into().into_capped())
    }

    /// The store key of `key` in the slot group `group`: on a store of hash slots (a Redis
    /// Cluster) every key of a group shares one slot, for the commands that need them
    /// together (its hash tag, `{<namespace>:v<version>:<group>}`, follows the prefix);
    /// elsewhere the key is named as any other, so releases from before groups share it.
    /// User input never chooses a group: a key's parts never hold braces.
    // Only the HTTP layer's tags group keys today.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn grouped_key(&self, group: &str, key: impl Into<Key>) -> String {
        match self.inner.store.key_space() {
            KeySpace::Slotted => {
                let prefix = &self.inner.prefix;
                let capped = key.into().into_capped();
                format!("{prefix}{{{prefix}{group}}}:{capped}")
            }
            _ => self.full_key(key),
        }
    }

    /// The store key of a capped key.
    pub(super) fn prefixed(&self, capped: &str) -> String {
        let mut full = String::with_capacity(self.inner.prefix.len() + capped.len());
        full.push_str(&self.inner.prefix);
        full.push_str(capped);
        full
    }

    /// The underlying store, for operations the typed API does not cover.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The TTL used by [`insert`](Self::insert) and [`insert_many`](Self::insert_many).
    pub fn default_ttl(&self) -> Duration {
        self.inner.default_ttl
    }

    /// The circuit breaker's state: `Open` means the store is being bypassed. For a store
    /// with a breaker per node (a Redis Cluster), the worst of its nodes': `Open` then means
    /// part of the store is bypassed.
    pub fn breaker_state(&self) -> BreakerState {
        if self.inner.guard != Guard::NodeBreakers {
            return self.inner.breaker.state();
        }
        let states = self.inner.store.node_breakers().unwrap_or_default();
        let worst = |state| states.iter().any(|node| node.state == state);
        if worst(BreakerState::Open) {
            BreakerState::Open
        } else if worst(BreakerState::HalfOpen) {
            BreakerState::HalfOpen
        } else {
            BreakerState::Closed
        }
    }

    /// Round-trip time to the store, bounded by the command timeout. Bypasses the breaker,
    /// so a health check always sees the store's real state.
    pub async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        match tokio::time::timeout(self.inner.command_timeout, self.inner.store.ping()).await {
            Ok(result) => result.map(|()| started.elapsed()),
            Err(_) => Err(timeout_error()),
        }
    }

    /// Probe the store for the breaker on a task of its own, so no caller waits on a store
    /// that may still be down. The probe is a read (a `PING` can succeed where reads fail:
    /// a replica answering `MASTERDOWN`), tried twice: after a failed dial the first only
    /// finds that failure (and starts a new dial), the second waits for the new dial.
    fn spawn_probe(&self) {
        let cache = self.clone();
        tokio::spawn(async move {
            let key = cache.full_key("breaker-probe");
            let probe = || async {
                let read = cache.inner.store.get(&key);
                match tokio::time::timeout(cache.inner.command_timeout, read).await {
                    Ok(result) => result.map(drop),
                    Err(_) => Err(timeout_error()),
                }
            };
            let mut answered = probe().await;
            if answered
                .as_ref()
                .is_err_and(|err| err.kind() == ErrorKind::Connection)
            {
                answered = probe().await;
            }
            match answered {
                Ok(_) => cache.inner.breaker.record_success(),
                Err(err) => {
                    tracing::debug!(error = %err, "circuit breaker probe failed");
                    cache.inner.breaker.record_failure();
                }
            }
        });
    }

    /// The stampede settings every load falls back to.
    pub fn stampede_settings(&self) -> &StampedeSettings {
        &self.inner.stampede
    }

    /// The fresh value under `key`, or `None` on a miss. Store failures and unreadable
    /// entries are misses (unreadable ones are deleted); so are values past their TTL that
    /// are kept only for stale serving, and cached "not found" entries.
    pub async fn get<T: DeserializeOwned>(&self, key: impl Into<Key>) -> Option<T> {
        self.get_entry(key).await.map(|entry| entry.value)
    }

    /// Like [`get`](Self::get), with the entry's header (when it was stored, its TTL, how
    /// long it took to compute).
    pub async fn get_entry<T: DeserializeOwned>(&self, key: impl Into<Key>) -> Option<Decoded<T>> {
        self.lookup(&self.full_key(key)).await
    }

    /// The entry under `full` whatever its freshness, or `None` (unreadable ones deleted).
    pub(crate) async fn fetch_entry<T: DecodePayload>(
        &self,
        full: &str,
    ) -> Option<Decoded<Option<T>>> {
        let bytes = self.read(full).await?;
        self.decode_or_discard(full, bytes).await
    }

    pub(super) async fn lookup<T: DeserializeOwned>(&self, full: &str) -> Option<Decoded<T>> {
        let decoded = self.fetch_entry::<T>(full).await.and_then(plain_read);
        self.count_lookup(decoded.is_some());
        decoded
    }

    /// Values for many keys, in order, in one store round trip (`MGET`).
    pub async fn get_many<T: DeserializeOwned, K: Into<Key>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Vec<Option<T>> {
        let full: Vec<String> = keys.into_iter().map(|k| self.full_key(k)).collect();
        if full.is_empty() {
            return Vec::new();
        }
        let raw = match self.read_many("get_many", &full).await {
            Ok(raw) if raw.len() == full.len() => raw,
            _ => vec![None; full.len()],
        };
        let mut values = Vec::with_capacity(full.len());
        for (key, bytes) in full.iter().zip(raw) {
            let value = match bytes {
                Some(bytes) => self
                    .decode_or_discard::<T>(key, bytes)
                    .await
                    .and_then(plain_read)
                    .map(|d| d.value),
                None => None,
            };
            self.count_lookup(value.is_some());
            values.push(value);
        }
        values
    }

    /// Store `value` under `key` with the default TTL. See
    /// [`insert_with_ttl`](Self::insert_with_ttl).
    pub async fn insert<T: Serialize + ?Sized>(
        &self,
        key: impl Into<Key>,
        value: &T,
    ) -> Result<()> {
        self.insert_with_ttl(key, value, self.inner.default_ttl)
            .await
    }

    /// Store `value` under `key` for `ttl` (jittered). A zero TTL means "do not cache" and
    /// writes nothing. Errors only for the caller's mistakes (a value that cannot be encoded,
    /// a TTL over [`MAX_TTL`]); a store failure drops the write
    /// (counted and logged).
    pub async fn insert_with_ttl<T: Serialize + ?Sized>(
        &self,
        key: impl Into<Key>,
        value: &T,
        ttl: Duration,
    ) -> Result<()> {
        self.store_value(
            self.full_key(key),
            value,
            ttl,
            Duration::ZERO,
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    /// Store many values with the default TTL in one round trip.
    pub async fn insert_many<K: Into<Key>, T: Serialize>(
        &self,
        entries: impl IntoIterator<Item = (K, T)>,
    ) -> Result<()> {
        self.insert_many_with_ttl(entries, self.inner.default_ttl)
            .await
    }

    /// Store many values for `ttl` (each jittered on its own) in one round trip. Nothing is
    /// written if any value cannot be encoded.
    pub async fn insert_many_with_ttl<K: Into<Key>, T: Serialize>(
        &self,
        entries: impl IntoIterator<Item = (K, T)>,
        ttl: Duration,
    ) -> Result<()> {
        if ttl.is_zero() {
            return Ok(());
        }
        check_ttl(ttl)?;
        let batch = entries
            .into_iter()
            .map(|(key, value)| {
                let fresh = self.jittered(ttl);
                let meta = EntryMeta::new(fresh, Duration::ZERO);
                let encoded = self.inner.codec.encode(&value, meta)?;
                Ok(StoreEntry {
                    key: self.full_key(key),
                    value: encoded.bytes,
                    ttl: fresh,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if batch.is_empty() {
            return Ok(());
        }
        let written: usize = batch.iter().map(|e| e.value.len()).sum();
        let _forget = self.forget_on_drop(&batch, entry_key);
        match self
            .call("set_many", self.inner.store.set_many(&batch))
            .await
        {
            Ok(()) => metrics::counter!(telemetry::BYTES_WRITTEN).increment(written as u64),
            Err(err) => drop_write(&err, batch.len()),
        }
        Ok(())
    }

    /// Remove `key`. Unlike reads and writes this reports store failure, because a lost
    /// invalidation leaves a stale value to be served later.
    pub async fn invalidate(&self, key: impl Into<Key>) -> Result<()> {
        self.remove(&self.full_key(key)).await
    }

    /// Remove the entry under the store key `full`, here and in the store; reports store
    /// failure.
    pub(crate) async fn remove(&self, full: &str) -> Result<()> {
        self.remove_many(std::slice::from_ref(&full.to_owned()))
            .await
    }

    /// Remove the entries under the store keys `full`, here and in the store, with their
    /// fences over a store that tracks changes, whether this cache keeps a near tier or not
    /// (so every instance's near tier hears of it, present or not); reports the delete's
    /// failure (a failed fence is counted as a store error, and only weakens the load guard).
    async fn remove_many(&self, full: &[String]) -> Result<()> {
        let delete = || self.inner.store.delete_many(full);
        self.retry_once_if_cut(|| self.remove_many_once(full, "delete_many", delete()))
            .await
            .map(drop)
    }

    /// [`remove_many`](Self::remove_many), saying for each key, in order, whether the store
    /// held it. After a cut connection's retry, a key the first try removed says false.
    pub(crate) async fn remove_each(&self, full: &[String]) -> Result<Vec<bool>> {
        let delete = || self.inner.store.delete_each(full);
        self.retry_once_if_cut(|| self.remove_many_once(full, "delete_each", delete()))
            .await
    }

    /// Run an invalidation; when the store's connection was cut under it (a failover, an
    /// idle timeout, `CLIENT KILL`: ordinary events), run it once more at once, on the
    /// store's fresh connection, rather than leave it to a later retry while stale data is
    /// served. Only for invalidations: they are idempotent, and a repeat can only cost a
    /// miss. A store that is down fails the retry as fast as the first try.
    pub(crate) async fn retry_once_if_cut<T, F, Fut>(&self, invalidation: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        match invalidation().await {
            Err(err) if err.kind() == ErrorKind::Connection => {
                let retried = invalidation().await;
                let outcome = if retried.is_ok() {
                    "succeeded"
                } else {
                    "failed"
                };
                metrics::counter!(telemetry::INVALIDATION_RETRIES, "outcome" => outcome)
                    .increment(1);
                retried
            }
            done => done,
        }
    }

    /// One try of an invalidation: `delete` (the store call `op` removing `full`), with the
    /// fences and the near tier's forgetting every invalidation has; the delete's result.
    async fn remove_many_once<T>(
        &self,
        full: &[String],
        op: &'static str,
        delete: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let _forget = self.forget_on_drop(full, String::as_str);
        let delete = self.call(op, delete);
        if self.inner.guard == Guard::Local {
            delete.await
        } else {
            let fences: Vec<StoreEntry> = full
                .iter()
                .map(|key| StoreEntry {
                    key: fence_of(key),
                    value: Bytes::new(),
                    ttl: FENCE_TTL,
                })
                .collect();
            // Sent together: the delete's round trip and the fence's overlap.
            let fence = self.call("fence", self.inner.store.set_many(&fences));
            futures::future::join(delete, fence).await.0
        }
    }

    /// Remove many keys in one round trip; reports store failure like
    /// [`invalidate`](Self::invalidate).
    pub async fn invalidate_many<K: Into<Key>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<()> {
        let full: Vec<String> = keys.into_iter().map(|k| self.full_key(k)).collect();
        self.remove_many(&full).await
    }

    /// [`invalidate_many`](Self::invalidate_many) that reports what it found: which keys
    /// held an entry (fresh, or kept for stale serving), now removed everywhere, and which
    /// held none. One round trip; a key named twice is removed and reported once. Reports
    /// store failure like [`invalidate`](Self::invalidate). When the store's connection was
    /// cut under the call it is retried, and a key the first try removed then counts as not
    /// found.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> cachelayer::Result<()> {
    /// let cache = cachelayer::Cache::builder().build()?;
    /// cache.insert("product:7", "lamp").await?;
    /// let removal = cache.invalidate_reporting(["product:7", "product:99"]).await?;
    /// assert_eq!(removal.count(), 1);
    /// assert_eq!(removal.not_found, [cachelayer::Key::from("product:99")]);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_reporting<K: Into<Key>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Removal> {
        let mut seen = std::collections::HashSet::new();
        let keys: Vec<Key> = keys
            .into_iter()
            .map(Into::into)
            .filter(|key: &Key| seen.insert(key.clone()))
            .collect();
        let full: Vec<String> = keys.iter().map(|k| self.full_key(k)).collect();
        let held = self.remove_each(&full).await?;
        let (removed, not_found): (Vec<_>, Vec<_>) =
            keys.into_iter().zip(held).partition(|(_, held)| *held);
        Ok(Removal {
            removed: removed.into_iter().map(|(key, _)| key).collect(),
            not_found: not_found.into_iter().map(|(key, _)| key).collect(),
        })
    }

    /// Store `value` fresh for `ttl` (jittered), kept `grace` longer for stale serving.
    pub(crate) async fn store_value<T: EncodePayload + ?Sized>(
        &self,
        full: String,
        value: &T,
        ttl: Duration,
        grace: Duration,
        compute_time: Duration,
    ) -> Result<bool> {
        if ttl.is_zero() {
            return Ok(false);
        }
        check_ttl(ttl)?;
        let fresh = self.jittered(ttl);
        let meta = EntryMeta {
            kept_stale: !grace.is_zero(),
            ..EntryMeta::new(fresh, compute_time)
        };
        let encoded = value.encode_payload(&self.inner.codec, meta)?;
        let written = self
            .write_entry(
                full,
                encoded.bytes,
                fresh.saturating_add(grace).min(MAX_TTL),
            )
            .await;
        Ok(written)
    }

    /// Store a "not found" for `ttl` (jittered).
    pub(super) async fn store_absent(
        &self,
        full: String,
        ttl: Duration,
        compute_time: Duration,
    ) -> Result<()> {
        check_ttl(ttl)?;
        let fresh = self.jittered(ttl);
        let encoded = self
            .inner
            .codec
            .encode_absent(EntryMeta::new(fresh, compute_time));
        self.write_entry(full, encoded.bytes, fresh).await;
        Ok(())
    }

    /// Write an encoded entry; false when the store failed (counted as a dropped write).
    async fn write_entry(&self, full: String, bytes: Bytes, ttl: Duration) -> bool {
        let len = bytes.len() as u64;
        let _forget = self.forget_on_drop(std::slice::from_ref(&full), String::as_str);
        match self
            .call("set", self.inner.store.set(&full, bytes, ttl))
            .await
        {
            Ok(()) => {
                metrics::counter!(telemetry::BYTES_WRITTEN).increment(len);
                true
            }
            Err(err) => {
                drop_write(&err, 1);
                false
            }
        }
    }

    /// Decode stored bytes; unreadable ones are counted and removed (only if unchanged, so
    /// a good value written meanwhile survives).
    async fn decode_or_discard<T: DecodePayload>(
        &self,
        full: &str,
        bytes: Bytes,
    ) -> Option<Decoded<Option<T>>> {
        self.read_metrics().bytes_read.increment(bytes.len() as u64);
        match T::decode_payload(&self.inner.codec, &bytes) {
            Ok(decoded) => Some(decoded),
            Err(reason) => {
                self.discard(full, &bytes, reason).await;
                None
            }
        }
    }

    async fn discard(&self, full: &str, bytes: &[u8], reason: DecodeFailure) {
        metrics::counter!(telemetry::DECODE_FAILURES, "reason" => reason.as_str()).increment(1);
        if reason == DecodeFailure::Layout {
            // Sound, but for another kind of reader: an older release's entry during a
            // rolling upgrade, which the next write replaces. Deleting it would empty the
            // shared store under the instances still running that release.
            tracing::debug!(key = full, "cache entry of another layout; a miss");
            return;
        }
        tracing::warn!(
            key = full,
            reason = reason.as_str(),
            "unreadable cache entry; deleting it"
        );
        let _ = self
            .call(
                "compare_and_delete",
                self.inner.store.compare_and_delete(full, bytes),
            )
            .await;
        self.forget_near(full);
    }

    /// `ttl` shortened by a random fraction up to the jitter, never below 1 ms.
    pub(super) fn jittered(&self, ttl: Duration) -> Duration {
        if self.inner.ttl_jitter == 0.0 {
            return ttl;
        }
        let cut = ttl.mul_f64(self.inner.ttl_jitter * self.inner.random.unit());
        ttl.saturating_sub(cut).max(Duration::from_millis(1))
    }

    /// The metrics every read records.
    pub(super) fn read_metrics(&self) -> &ReadMetrics {
        self.inner.read_metrics.get_or_init(ReadMetrics::resolve)
    }

    pub(super) fn count_lookup(&self, hit: bool) {
        let metrics = self.read_metrics();
        if hit {
            metrics.hits.increment(1);
        } else {
            metrics.misses.increment(1);
        }
    }

    /// Run one store call through the breaker and the command timeout, recording latency,
    /// errors and breaker outcomes. The in-process store is never unavailable and never
    /// waits on I/O: its calls skip the breaker and the timer (two lock operations, a clock
    /// read and a timer per hit otherwise).
    pub(crate) async fn call<R>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<R>>,
    ) -> Result<R> {
        let local = self.inner.guard == Guard::Local;
        let guarded = self.inner.guard == Guard::CacheBreaker;
        let breaker = &self.inner.breaker;
        let admission = if guarded {
            breaker.admit()
        } else {
            Admission::Allowed
        };
        if admission == Admission::Probe {
            self.spawn_probe();
        }
        if admission != Admission::Allowed {
            metrics::counter!(telemetry::STORE_ERRORS, "op" => op, "kind" => ErrorKind::CircuitOpen.as_str())
                .increment(1);
            return Err(Error::new(
                ErrorKind::CircuitOpen,
                "the cache store is failing and is bypassed until the circuit breaker's cool-down ends",
            ));
        }
        let started = Instant::now();
        let result = if local {
            call.await
        } else {
            match tokio::time::timeout(self.inner.command_timeout, call).await {
                Ok(result) => result,
                Err(_) => Err(timeout_error()),
            }
        };
        let elapsed = started.elapsed().as_secs_f64();
        if op == "get" {
            self.read_metrics().get_duration.record(elapsed);
        } else {
            metrics::histogram!(telemetry::STORE_DURATION, "op" => op).record(elapsed);
        }
        match &result {
            Ok(_) if !guarded => {}
            Ok(_) => breaker.record_success(),
            Err(err) => {
                metrics::counter!(telemetry::STORE_ERRORS, "op" => op, "kind" => err.kind().as_str())
                    .increment(1);
                if err.kind() == ErrorKind::CircuitOpen {
                    // A node's open breaker refused it (the store's own breakers): the
                    // breaker said so once when it opened; a line per call would flood.
                    tracing::debug!(op, store = breaker.store(), error = %err, "cache store call refused by an open breaker; failing open");
                } else {
                    tracing::warn!(op, kind = err.kind().as_str(), store = breaker.store(), error = %err, "cache store call failed; failing open");
                }
                if !guarded {
                    // Not the cache's breaker to judge: the store is local (a failure is
                    // no sign of an outage), or the store's own node breakers judged it.
                } else if err.is_unavailable() {
                    breaker.record_failure();
                } else if err.kind() == ErrorKind::Server {
                    // The store answered, so it is up, even if it refused this request.
                    breaker.record_success();
                }
                // Other kinds (invalid input) never reached the store and say nothing of it.
            }
        }
        result
    }
}

pub(super) fn timeout_error() -> Error {
    Error::new(
        ErrorKind::Timeout,
        "the cache store did not answer within command_timeout; check its load or raise the timeout",
    )
}

/// A decoded entry as a plain read sees it: only fresh values (stale ones and cached "not
/// found" entries are for loads).
fn plain_read<T>(entry: Decoded<Option<T>>) -> Option<Decoded<T>> {
    let fresh = entry.header.is_fresh_now();
    let value = entry.value.filter(|_| fresh)?;
    Some(Decoded {
        value,
        header: entry.header,
    })
}

fn drop_write(err: &Error, entries: usize) {
    metrics::counter!(telemetry::WRITES_DROPPED, "reason" => err.kind().as_str())
        .increment(entries as u64);
}
