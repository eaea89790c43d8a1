//! The near tier: hot entries of a shared store kept in this process's memory, so a hit costs
//! no network round trip, and kept coherent by the store's change tracking.
//!
//! The guarantee, as `docs/near-cache.md` states it for users:
//! - the tier holds only bytes the store held when they were read, and only while the store's
//!   change tracking is up ([`NearState::Watching`]); the moment tracking is in doubt the tier
//!   is emptied and bypassed ([`NearState::Blind`]) until tracking is back;
//! - a change reported by the store (a write or delete by anyone, an expiry, an eviction, a
//!   flush) removes the key; a write or invalidation through this process's [`Cache`] removes
//!   it before the call returns;
//! - a read that raced a change is never kept after the change was heard (see `guard`);
//! - an entry never outlives the TTL the store gave it when it was read.
//!
//! This module must never fill the tier from anything but a store read taken under a ticket,
//! and never serve while blind.
//!
//! [`Cache`]: crate::Cache

mod guard;

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::Counter;
use moka::Expiry;
use moka::notification::RemovalCause;

use self::guard::Generations;
pub(crate) use self::guard::Ticket;
use crate::store::{ChangeListener, ChangeTracking, KeyChange, KeyTtl, Store};
use crate::telemetry;

/// Default bound on the near tier: 64 MiB of keys and stored bytes per cache.
pub const DEFAULT_NEAR_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// Bookkeeping bytes charged per entry on top of key and value.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// Ends the name of a key's fence: a short-lived key written beside it by every
/// invalidation, because deleting a key that is absent changes nothing and so is reported to
/// nobody, yet a load elsewhere may be reading the source for it right now. A reported change
/// to a fence counts as a change to its key.
const FENCE_SUFFIX: &str = "\u{0}fence";
/// How long a fence lives: only its write matters, so as short as the store allows.
pub(crate) const FENCE_TTL: Duration = Duration::from_millis(1);

/// The fence of the store key `full`.
pub(crate) fn fence_of(full: &str) -> String {
    let mut fence = String::with_capacity(full.len() + FENCE_SUFFIX.len());
    fence.push_str(full);
    fence.push_str(FENCE_SUFFIX);
    fence
}

/// What the near tier is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NearState {
    /// No near tier: its capacity is 0, or the store cannot track changes (the in-process
    /// store, which needs none).
    Off,
    /// The store reports changes: hits are served from memory.
    Watching,
    /// Change tracking is down: the tier is empty and bypassed until it is back.
    Blind,
}

impl NearState {
    /// Lower-case name: `"off"`, `"watching"` or `"blind"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Watching => "watching",
            Self::Blind => "blind",
        }
    }
}

/// A snapshot of a cache's near tier, for health reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct NearStats {
    /// What the tier is doing.
    pub state: NearState,
    /// Entries held.
    pub entries: u64,
    /// Bytes held (keys, stored bytes and per-entry overhead; decoded copies not counted).
    pub bytes: u64,
    /// The bound on `bytes`.
    pub capacity_bytes: u64,
    /// Changes the store has reported so far (keys, flushes and losses of tracking).
    pub changes_heard: u64,
}

impl NearStats {
    pub(crate) fn off() -> Self {
        Self {
            state: NearState::Off,
            entries: 0,
            bytes: 0,
            capacity_bytes: 0,
            changes_heard: 0,
        }
    }
}

/// A cache's near tier and the change tracking that keeps it coherent; dropping it stops the
/// tracking.
pub(crate) struct Near {
    pub(crate) tier: Arc<NearTier>,
    _tracking: ChangeTracking,
}

impl Near {
    /// A near tier of `capacity_bytes` for the keys under `prefix`, if `store` can track
    /// changes to them.
    pub(crate) fn start(store: &dyn Store, prefix: &str, capacity_bytes: u64) -> Option<Self> {
        if capacity_bytes == 0 {
            return None;
        }
        let tier = Arc::new(NearTier::new(prefix, capacity_bytes));
        let tracking = store.track_changes(prefix, listener(&tier))?;
        Some(Self {
            tier,
            _tracking: tracking,
        })
    }
}

/// The store's reports, applied to the tier while it lives (a weak reference, so the
/// tracking task never keeps a dropped cache's tier alive).
fn listener(tier: &Arc<NearTier>) -> ChangeListener {
    let tier: Weak<NearTier> = Arc::downgrade(tier);
    Arc::new(move |change| {
        if let Some(tier) = tier.upgrade() {
            tier.apply(change);
        }
    })
}

/// The in-memory entries, the fill guard and the tracking state.
///
/// Every method takes full store keys; entries are held under the key without the cache's
/// prefix (every key of one tier has it), so a typed hit can look its key up before, or
/// without, building the full key.
pub(crate) struct NearTier {
    prefix: String,
    entries: moka::sync::Cache<String, Arc<NearEntry>>,
    generations: Generations,
    watching: AtomicBool,
    capacity_bytes: u64,
    changes_heard: AtomicU64,
    metrics: OnceLock<NearMetrics>,
}

/// Counters of every near read, resolved at the first one (as the cache's read metrics are).
struct NearMetrics {
    hits: Counter,
    misses: Counter,
}

/// One entry: the stored bytes, when the store would have expired them, and a decoded copy
/// made at the first typed read that asks for one.
pub(crate) struct NearEntry {
    bytes: Bytes,
    deadline: Option<Instant>,
    decoded: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl NearEntry {
    /// The stored bytes.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The decoded copy of type `M`, made by `decode` at the first call. `None` when
    /// `decode` gives nothing or the entry already keeps a copy of another type (the
    /// caller then decodes on its own).
    pub(crate) fn decoded<M: Any + Send + Sync>(
        &self,
        decode: impl FnOnce(&Bytes) -> Option<M>,
    ) -> Option<&M> {
        if self.decoded.get().is_none() {
            let made = decode(&self.bytes)?;
            // A racing reader may have set it first; either copy is the same value.
            let _ = self.decoded.set(Box::new(made));
        }
        self.decoded.get()?.downcast_ref()
    }
}

/// Expires each entry when the store would have.
struct StoreDeadline;

impl Expiry<String, Arc<NearEntry>> for StoreDeadline {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &Arc<NearEntry>,
        created_at: Instant,
    ) -> Option<Duration> {
        entry
            .deadline
            .map(|deadline| deadline.saturating_duration_since(created_at))
    }

    /// A replaced entry takes the new entry's deadline. moka's default keeps the old one's,
    /// and an entry dropped lazily (by `invalidate_all`) but not yet swept is replaced, not
    /// created: the new value would live as long as the old one did.
    fn expire_after_update(
        &self,
        key: &String,
        entry: &Arc<NearEntry>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, entry, updated_at)
    }
}

impl NearTier {
    fn new(prefix: &str, capacity_bytes: u64) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, entry: &Arc<NearEntry>| {
                let weight = key.len() + entry.bytes.len() + ENTRY_OVERHEAD_BYTES;
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(StoreDeadline)
            .eviction_listener(|_key, _entry, cause| {
                if cause == RemovalCause::Size {
                    metrics::counter!(telemetry::NEAR_EVICTIONS).increment(1);
                }
            })
            .build();
        Self {
            prefix: prefix.to_owned(),
            entries,
            generations: Generations::new(),
            watching: AtomicBool::new(false),
            capacity_bytes,
            changes_heard: AtomicU64::new(0),
            metrics: OnceLock::new(),
        }
    }

    fn metrics(&self) -> &NearMetrics {
        self.metrics.get_or_init(|| NearMetrics {
            hits: metrics::counter!(telemetry::NEAR_HITS),
            misses: metrics::counter!(telemetry::NEAR_MISSES),
        })
    }

    /// `full` without the cache's prefix: the name entries and counters use.
    fn local<'k>(&self, full: &'k str) -> &'k str {
        full.strip_prefix(self.prefix.as_str()).unwrap_or(full)
    }

    /// The entry under the full key `full`, if the tier holds it and tracking is up.
    pub(crate) fn get(&self, full: &str) -> Option<Arc<NearEntry>> {
        self.get_local(self.local(full))
    }

    /// The entry under `key`, the full key without the cache's prefix.
    pub(crate) fn get_local(&self, key: &str) -> Option<Arc<NearEntry>> {
        if !self.watching.load(Ordering::SeqCst) {
            return None;
        }
        let found = self.entries.get(key);
        let metrics = self.metrics();
        match &found {
            Some(_) => metrics.hits.increment(1),
            None => metrics.misses.increment(1),
        }
        found
    }

    /// A ticket to keep what the store is about to answer for `key`; `None` while blind.
    pub(crate) fn ticket(&self, key: &str) -> Option<Ticket> {
        // Counters first, then the state: a ticket taken across a change of state is void.
        let ticket = self.generations.ticket(self.local(key));
        self.watching.load(Ordering::SeqCst).then_some(ticket)
    }

    /// Whether a fill under `ticket` may still be kept.
    pub(crate) fn current(&self, ticket: Ticket) -> bool {
        self.watching.load(Ordering::SeqCst) && self.generations.unchanged(ticket)
    }

    /// Keep what the store answered for `key` (read under `ticket`, asked at `asked_at`,
    /// with `ttl` left), unless a change was heard since the ticket was taken.
    pub(crate) fn keep(
        &self,
        key: &str,
        ticket: Ticket,
        bytes: Bytes,
        ttl: KeyTtl,
        asked_at: Instant,
    ) {
        let deadline = match ttl {
            KeyTtl::Missing => return,
            KeyTtl::Persistent => None,
            // From when the read was sent: never later than the store's own expiry. A TTL
            // past what an Instant can hold is as good as none.
            KeyTtl::ExpiresIn(left) => asked_at.checked_add(left),
        };
        let entry = NearEntry {
            bytes,
            deadline,
            decoded: OnceLock::new(),
        };
        let key = self.local(key).to_owned();
        let _fill = self.generations.lock_fill(ticket);
        if !self.current(ticket) {
            metrics::counter!(telemetry::NEAR_FILLS_REFUSED).increment(1);
            return;
        }
        self.entries.insert(key, Arc::new(entry));
    }

    /// Whether the tier holds `key` now (without counting a hit or a miss).
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.watching.load(Ordering::SeqCst) && self.entries.contains_key(self.local(key))
    }

    /// Drop `key` and void every ticket taken for it: this process changed it.
    pub(crate) fn forget(&self, key: &str) {
        let key = self.local(key);
        self.generations
            .changed_then(key, || self.entries.invalidate(key));
    }

    /// Apply a report of the store's change tracking.
    pub(crate) fn apply(&self, change: KeyChange) {
        if change != KeyChange::Watching {
            self.changes_heard.fetch_add(1, Ordering::SeqCst);
        }
        match change {
            KeyChange::Watching => {
                self.generations.changed_everything_then(|| {});
                self.watching.store(true, Ordering::SeqCst);
                metrics::gauge!(telemetry::NEAR_WATCHING).set(1.0);
            }
            KeyChange::Blind => {
                self.watching.store(false, Ordering::SeqCst);
                self.forget_everything();
                metrics::gauge!(telemetry::NEAR_WATCHING).set(0.0);
            }
            KeyChange::All => {
                self.forget_everything();
                metrics::counter!(telemetry::NEAR_INVALIDATIONS, "scope" => "all").increment(1);
            }
            KeyChange::Keys(keys) => {
                for key in &keys {
                    // A fence's change is its key's; a key of that name is forgotten too.
                    if let Some(fenced) = key.strip_suffix(FENCE_SUFFIX) {
                        self.forget(fenced);
                    }
                    self.forget(key);
                }
                metrics::counter!(telemetry::NEAR_INVALIDATIONS, "scope" => "key")
                    .increment(keys.len() as u64);
            }
        }
    }

    fn forget_everything(&self) {
        self.generations
            .changed_everything_then(|| self.entries.invalidate_all());
    }

    /// A snapshot for health reports.
    pub(crate) fn stats(&self) -> NearStats {
        self.entries.run_pending_tasks();
        NearStats {
            state: if self.watching.load(Ordering::SeqCst) {
                NearState::Watching
            } else {
                NearState::Blind
            },
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
            capacity_bytes: self.capacity_bytes,
            changes_heard: self.changes_heard.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ns:v1:k";
    const MINUTE: KeyTtl = KeyTtl::ExpiresIn(Duration::from_secs(60));

    fn watching_tier() -> NearTier {
        let tier = NearTier::new("ns:v1:", 1 << 20);
        tier.apply(KeyChange::Watching);
        tier
    }

    /// Keep `value` for `KEY`, read under `ticket` just now, for a minute.
    fn fill(tier: &NearTier, ticket: Ticket, value: &'static [u8]) {
        tier.keep(
            KEY,
            ticket,
            Bytes::from_static(value),
            MINUTE,
            Instant::now(),
        );
    }

    fn held(tier: &NearTier) -> Option<Bytes> {
        tier.get(KEY).map(|entry| entry.bytes().clone())
    }

    /// A read taken before a change is refused once the change is heard, whichever comes
    /// first of the fill and the change report.
    #[test]
    fn a_read_older_than_a_change_is_never_kept() {
        let tier = watching_tier();
        let ticket = tier.ticket(KEY).expect("watching");
        tier.apply(KeyChange::Keys(vec![KEY.to_owned()]));
        fill(&tier, ticket, b"old");
        assert_eq!(held(&tier), None, "change heard before the fill");

        let ticket = tier.ticket(KEY).expect("watching");
        fill(&tier, ticket, b"old");
        assert_eq!(held(&tier).as_deref(), Some(&b"old"[..]));
        tier.apply(KeyChange::Keys(vec![KEY.to_owned()]));
        assert_eq!(held(&tier), None, "change heard after the fill");

        let ticket = tier.ticket(KEY).expect("watching");
        tier.forget(KEY);
        fill(&tier, ticket, b"old");
        assert_eq!(held(&tier), None, "a change made in this process");

        let ticket = tier.ticket(KEY).expect("watching");
        tier.apply(KeyChange::Keys(vec![fence_of(KEY)]));
        assert!(!tier.current(ticket), "a fence's change is its key's");

        let ticket = tier.ticket(KEY).expect("watching");
        fill(&tier, ticket, b"v");
        assert!(tier.get_local("k").is_some(), "held without its prefix");
        tier.apply(KeyChange::Keys(vec!["ns:v10:k".to_owned()]));
        assert!(
            tier.get(KEY).is_some(),
            "another version's key is another key"
        );
    }

    /// While blind, nothing is served or kept; a read from before the blind spot stays
    /// refused after tracking is back, and a flush empties the tier.
    #[test]
    fn blind_means_empty_and_bypassed() {
        let tier = watching_tier();
        let ticket = tier.ticket(KEY).expect("watching");
        fill(&tier, ticket, b"v");
        let old_ticket = tier.ticket(KEY).expect("watching");
        tier.apply(KeyChange::Blind);
        assert_eq!(held(&tier), None);
        assert_eq!(tier.ticket(KEY), None);
        assert_eq!(tier.stats().state, NearState::Blind);
        tier.apply(KeyChange::Watching);
        assert_eq!(held(&tier), None, "emptied, not just hidden");
        fill(&tier, old_ticket, b"v");
        assert_eq!(held(&tier), None, "read before the blind spot");

        let ticket = tier.ticket(KEY).expect("watching");
        fill(&tier, ticket, b"v");
        assert!(held(&tier).is_some());
        tier.apply(KeyChange::All);
        assert_eq!(held(&tier), None);
    }

    /// An entry lives no longer than the TTL the store reported, counted from when it was
    /// asked; a missing key is not kept.
    #[test]
    fn entries_expire_with_the_store() {
        let tier = watching_tier();
        let ticket = tier.ticket(KEY).expect("watching");
        let long_ago = Instant::now() - Duration::from_secs(2);
        let one_second = KeyTtl::ExpiresIn(Duration::from_secs(1));
        tier.keep(KEY, ticket, Bytes::from_static(b"v"), one_second, long_ago);
        assert_eq!(held(&tier), None, "expired by the time it was kept");
        let ticket = tier.ticket(KEY).expect("watching");
        tier.keep(
            KEY,
            ticket,
            Bytes::from_static(b"v"),
            KeyTtl::Missing,
            Instant::now(),
        );
        assert_eq!(held(&tier), None);
    }

    /// A value kept again after the tier was emptied lazily (a flush, a blind spot) takes its
    /// own deadline, not the one of the entry it replaces.
    #[test]
    fn a_replaced_entry_takes_the_new_deadline() {
        for (old, reset) in [
            (KeyTtl::Persistent, KeyChange::All),
            (MINUTE, KeyChange::All),
            (KeyTtl::Persistent, KeyChange::Blind),
        ] {
            let tier = watching_tier();
            let ticket = tier.ticket(KEY).expect("watching");
            tier.keep(KEY, ticket, Bytes::from_static(b"old"), old, Instant::now());
            tier.apply(reset);
            tier.apply(KeyChange::Watching);
            let ticket = tier.ticket(KEY).expect("watching");
            let gone = KeyTtl::ExpiresIn(Duration::from_millis(1));
            let long_ago = Instant::now() - Duration::from_secs(1);
            tier.keep(KEY, ticket, Bytes::from_static(b"new"), gone, long_ago);
            assert_eq!(held(&tier), None, "kept past its deadline after {old:?}");
        }
    }

    /// Once `forget` has returned, no fill with an older ticket is ever visible, however the
    /// two interleave (each round races a fill against a forget on another thread).
    #[test]
    fn nothing_older_than_a_forget_is_visible_after_it() {
        let tier = Arc::new(watching_tier());
        for _ in 0..2_000 {
            let ticket = tier.ticket(KEY).expect("watching");
            let writer = std::thread::spawn({
                let tier = Arc::clone(&tier);
                move || {
                    tier.forget(KEY);
                    (0..50).any(|_| tier.entries.get("k").is_some())
                }
            });
            fill(&tier, ticket, b"old");
            assert!(!writer.join().expect("writer"), "stale after the forget");
            tier.forget(KEY);
        }
    }

    /// A decoded copy is made once and shared; another type is refused, not mixed up.
    #[test]
    fn decoded_copies_are_made_once() {
        let tier = watching_tier();
        let ticket = tier.ticket(KEY).expect("watching");
        fill(&tier, ticket, b"42");
        let entry = tier.get(KEY).expect("held");
        let parse = |bytes: &Bytes| std::str::from_utf8(bytes).ok()?.parse::<u32>().ok();
        assert_eq!(entry.decoded(parse), Some(&42));
        assert_eq!(entry.decoded::<u32>(|_| panic!("decoded twice")), Some(&42));
        assert_eq!(entry.decoded::<String>(|_| Some("x".into())), None);
    }
}
