//! Reads through the near tier: the bytes of a key from this process's memory when the tier
//! holds them, else from the store (then kept, under a ticket); shared decoded copies; and
//! the hooks writes use to drop a key they changed. An `impl Cache` block, as `load` is.
//!
//! This module must never put into the near tier anything but bytes just read from the store
//! under a ticket taken before the read.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::handle::Cache;
use crate::codec::Decoded;
use crate::error::{Error, ErrorKind, Result};
use crate::key::Key;
use crate::near::{NearStats, Ticket};
use crate::payload::DecodePayload;
use crate::store::StoreEntry;

impl Cache {
    /// Like [`get`](Self::get), the value behind an [`Arc`]. With a near tier, a hot key is
    /// decoded once and every later read shares that copy: no decoding, no copy of the value.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cachelayer::Cache;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> cachelayer::Result<()> {
    /// let cache = Cache::builder().build()?;
    /// cache.insert("motd", "hello").await?;
    /// let shared: Option<Arc<String>> = cache.get_shared("motd").await;
    /// assert_eq!(shared.as_deref().map(String::as_str), Some("hello"));
    /// # Ok(()) }
    /// ```
    pub async fn get_shared<T>(&self, key: impl Into<Key>) -> Option<Arc<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let key = key.into().into_capped();
        // Looked up before the full key is built: a hit allocates nothing more.
        if let Some(value) = self.shared_near_hit::<T>(&key) {
            return value;
        }
        self.lookup::<T>(&self.prefixed(&key))
            .await
            .map(|decoded| Arc::new(decoded.value))
    }

    /// A near hit's shared decoded copy of `key` (capped, without the prefix): `Some(answer)`
    /// when the near tier settled the read.
    fn shared_near_hit<T>(&self, key: &str) -> Option<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let entry = self.inner.near.as_ref()?.tier.get_local(key)?;
        let codec = &self.inner.codec;
        let decoded = entry.decoded(|bytes| {
            let decoded = <T as DecodePayload>::decode_payload(codec, bytes).ok()?;
            Some(Decoded {
                value: decoded.value.map(Arc::new),
                header: decoded.header,
            })
        })?;
        let fresh = decoded.header.is_fresh_now();
        let value = decoded.value.as_ref().filter(|_| fresh).cloned();
        self.count_lookup(value.is_some());
        Some(value)
    }

    /// The bytes under `full`: from the near tier when it holds them, else from the store
    /// (and then kept in the near tier, unless a change was heard meanwhile).
    pub(super) async fn read(&self, full: &str) -> Option<Bytes> {
        let Some(near) = &self.inner.near else {
            return self.read_from_store(full).await;
        };
        if let Some(entry) = near.tier.get(full) {
            return Some(entry.bytes().clone());
        }
        let Some(ticket) = near.tier.ticket(full) else {
            return self.read_from_store(full).await;
        };
        let asked_at = Instant::now();
        let (bytes, ttl) = self
            .call("get", self.inner.store.get_with_ttl(full))
            .await
            .ok()
            .flatten()?;
        near.tier
            .keep(full, ticket, self.near_copy(&bytes), ttl, asked_at);
        Some(bytes)
    }

    /// The bytes under `full` in the store; a failure is a miss.
    async fn read_from_store(&self, full: &str) -> Option<Bytes> {
        self.call("get", self.inner.store.get(full))
            .await
            .ok()
            .flatten()
    }

    /// What the near tier keeps of stored bytes: uncompressed, so its hits never decompress.
    fn near_copy(&self, bytes: &Bytes) -> Bytes {
        self.inner
            .codec
            .uncompressed(bytes)
            .unwrap_or_else(|| bytes.clone())
    }

    /// The bytes under each of `full`, in order: near-tier hits from memory, the rest in one
    /// store round trip (kept in the near tier as [`read`](Self::read) keeps them). `op`
    /// names the store call in metrics.
    pub(crate) async fn read_many(
        &self,
        op: &'static str,
        full: &[String],
    ) -> Result<Vec<Option<Bytes>>> {
        let Some(near) = &self.inner.near else {
            return self.call(op, self.inner.store.get_many(full)).await;
        };
        let mut found: Vec<Option<Bytes>> = full
            .iter()
            .map(|key| near.tier.get(key).map(|entry| entry.bytes().clone()))
            .collect();
        let missing: Vec<usize> = (0..full.len()).filter(|&i| found[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let keys: Vec<String> = missing.iter().map(|&i| full[i].clone()).collect();
        let tickets: Vec<Option<Ticket>> = keys.iter().map(|key| near.tier.ticket(key)).collect();
        let asked_at = Instant::now();
        let read = self
            .call(op, self.inner.store.get_many_with_ttl(&keys))
            .await?;
        if read.len() != keys.len() {
            return Err(Error::new(
                ErrorKind::Server,
                "the store answered a batch read with the wrong number of values",
            ));
        }
        for (((index, key), ticket), value) in missing.into_iter().zip(&keys).zip(tickets).zip(read)
        {
            if let Some((bytes, ttl)) = value {
                if let Some(ticket) = ticket {
                    near.tier
                        .keep(key, ticket, self.near_copy(&bytes), ttl, asked_at);
                }
                found[index] = Some(bytes);
            }
        }
        Ok(found)
    }

    /// A ticket to tell, later, whether `full` changed meanwhile (see
    /// [`changed_since`](Self::changed_since)); `None` without a watching near tier.
    pub(crate) fn change_ticket(&self, full: &str) -> Option<Ticket> {
        self.inner.near.as_ref()?.tier.ticket(full)
    }

    /// Whether a change to the ticket's key (or to every key, or to tracking) was heard since
    /// it was taken.
    pub(crate) fn changed_since(&self, ticket: Ticket) -> bool {
        self.inner
            .near
            .as_ref()
            .is_some_and(|near| !near.tier.current(ticket))
    }

    /// Drop `full` from this process's near tier: this process just changed it in the store.
    pub(crate) fn forget_near(&self, full: &str) {
        if let Some(near) = &self.inner.near {
            near.tier.forget(full);
        }
    }

    /// A guard that drops the keys of `items` from this process's near tier when it is
    /// dropped: create it before a store call that changes them, so they are dropped once the
    /// call returned, failed, or was cancelled mid-way (the change may have reached the
    /// store in every case).
    pub(crate) fn forget_on_drop<'a, T>(
        &'a self,
        items: &'a [T],
        key_of: fn(&T) -> &str,
    ) -> ForgetOnDrop<'a, T> {
        ForgetOnDrop {
            cache: self,
            items,
            key_of,
        }
    }

    /// Whether this process's near tier holds `key` right now: a diagnostic, as
    /// [`coalesced_callers`](Self::coalesced_callers) is.
    pub fn near_contains(&self, key: impl Into<Key>) -> bool {
        let full = self.full_key(key);
        self.inner
            .near
            .as_ref()
            .is_some_and(|near| near.tier.contains(&full))
    }

    /// The near tier's state and size ([`NearState::Off`](crate::near::NearState::Off)
    /// without one).
    pub fn near_stats(&self) -> NearStats {
        self.inner
            .near
            .as_ref()
            .map_or_else(NearStats::off, |near| near.tier.stats())
    }
}

/// See [`Cache::forget_on_drop`].
pub(crate) struct ForgetOnDrop<'a, T> {
    cache: &'a Cache,
    items: &'a [T],
    key_of: fn(&T) -> &str,
}

impl<T> Drop for ForgetOnDrop<'_, T> {
    fn drop(&mut self) {
        for item in self.items {
            self.cache.forget_near((self.key_of)(item));
        }
    }
}

/// The key of a batch entry, for [`Cache::forget_on_drop`].
pub(crate) fn entry_key(entry: &StoreEntry) -> &str {
    &entry.key
}
