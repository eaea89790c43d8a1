//! The near tier against real Redis servers: several instances (each its own `Cache` and
//! connections, as separate processes would have; the `os_process_*` test uses real child
//! processes) on one Redis, changes made through one instance or behind the cache's back
//! (`redis-cli`, expiry, eviction, `FLUSHALL`), and the tracking channel lost
//! (`CLIENT KILL`, a restart, a frozen server). Over a store that reports no change at all,
//! a cache's own writes are shown leaving its tier before they return.
//!
//! Staleness is asserted with bounded waits on the condition itself (`eventually`), never
//! with a sleep standing in for it.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cachelayer::near::NearState;
use cachelayer::store::{
    ChangeListener, ChangeTracking, KeyChange, KeyTtl, MemoryStore, RedisStore, Store, StoreEntry,
    StoreKind, Subscription, TRACKING_CLIENT_NAME,
};
use cachelayer::{Cache, Key};
use cachelayer_testkit::RedisServer;
use support::child::ChildProcess;
use support::redis_store;
use tokio::sync::oneshot;

const MINUTE: Duration = Duration::from_secs(60);
/// The longest a change may take to reach another instance in these tests: far above the
/// measured p99 (BENCHMARKS.md), so a loaded CI machine does not fail them, and far below
/// anything a user would call stale.
const PROPAGATION_BOUND: Duration = Duration::from_secs(2);
/// How long a dropped tracking connection may go unnoticed: it is seen at once (the
/// connection's end), far sooner than the heartbeat's 500 ms interval would see it.
const DROP_NOTICED_BOUND: Duration = Duration::from_millis(250);
/// How long a lost tracking connection may go unnoticed: the heartbeat's interval plus its
/// timeout, with the same margin.
const BLIND_BOUND: Duration = Duration::from_secs(4);

/// One instance of a service: its own store connections, tracking connection and near tier.
fn instance(url: &str) -> Cache {
    Cache::builder()
        .store(redis_store(url))
        .namespace("near")
        .ttl_jitter(0.0)
        .command_timeout(Duration::from_secs(2))
        .build()
        .expect("cache")
}

/// Instances whose near tiers are all watching.
async fn instances(url: &str, count: usize) -> Vec<Cache> {
    let caches: Vec<Cache> = (0..count).map(|_| instance(url)).collect();
    for cache in &caches {
        eventually("the near tier watches", PROPAGATION_BOUND, || {
            cache.near_stats().state == NearState::Watching
        })
        .await;
    }
    caches
}

/// Wait until `condition` holds, failing after `bound`; returns how long it took.
async fn eventually(what: &str, bound: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

/// Wait until `cache` answers `expected` for `key`, failing after `bound`.
async fn reads_eventually(cache: &Cache, key: &str, expected: Option<&str>, bound: Duration) {
    let started = Instant::now();
    loop {
        let value = cache.get::<String>(key).await;
        if value.as_deref() == expected {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "{key}: still {value:?}, not {expected:?}, after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Read `key` through `cache` until the near tier holds it. The first read usually fills
/// it; a report of the key's last write arriving during that read voids the fill, and the
/// next read fills it.
async fn warm(cache: &Cache, key: &str, expected: &str) {
    let started = Instant::now();
    while !cache.near_contains(key) {
        assert_eq!(cache.get::<String>(key).await.as_deref(), Some(expected));
        assert!(
            started.elapsed() < PROPAGATION_BOUND,
            "{key} never kept in the near tier"
        );
    }
}

/// Reads store commands executed by the server, for "no command per hit" checks.
fn read_commands(server: &RedisServer) -> u64 {
    ["get", "mget", "pttl"]
        .iter()
        .map(|command| server.command_calls(command))
        .sum()
}

/// The in-process store, reporting change tracking as on and never reporting a change: a
/// near tier over it hears nothing from outside, so whatever it drops after a write, the
/// cache dropped itself. With `hang_after_write` set, a `set` writes and then never answers,
/// as a store whose reply is lost.
#[derive(Debug)]
struct SilentTracking(MemoryStore, std::sync::atomic::AtomicBool);

impl Default for SilentTracking {
    fn default() -> Self {
        Self(MemoryStore::builder().build(), Default::default())
    }
}

impl SilentTracking {
    fn hang_after_write(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Store for SilentTracking {
    fn kind(&self) -> StoreKind {
        self.0.kind()
    }
    async fn get(&self, key: &str) -> cachelayer::Result<Option<Bytes>> {
        self.0.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> cachelayer::Result<Vec<Option<Bytes>>> {
        self.0.get_many(keys).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> cachelayer::Result<()> {
        self.0.set(key, value, ttl).await?;
        if self.hang_after_write() {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
    async fn set_many(&self, entries: &[StoreEntry]) -> cachelayer::Result<()> {
        self.0.set_many(entries).await
    }
    async fn delete(&self, key: &str) -> cachelayer::Result<bool> {
        self.0.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> cachelayer::Result<u64> {
        self.0.delete_many(keys).await
    }
    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> cachelayer::Result<bool> {
        self.0.set_if_absent(key, value, ttl).await
    }
    async fn advance_counter(
        &self,
        counter: &str,
        ttl: Duration,
        stamps: &[StoreEntry],
    ) -> cachelayer::Result<u64> {
        self.0.advance_counter(counter, ttl, stamps).await
    }
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> cachelayer::Result<bool> {
        self.0.compare_and_delete(key, expected).await
    }
    async fn compare_and_expire(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> cachelayer::Result<bool> {
        self.0.compare_and_expire(key, expected, ttl).await
    }
    async fn ttl(&self, key: &str) -> cachelayer::Result<KeyTtl> {
        self.0.ttl(key).await
    }
    async fn publish(&self, channel: &str, message: Bytes) -> cachelayer::Result<u64> {
        self.0.publish(channel, message).await
    }
    async fn subscribe(&self, channel: &str) -> cachelayer::Result<Subscription> {
        self.0.subscribe(channel).await
    }
    async fn ping(&self) -> cachelayer::Result<()> {
        self.0.ping().await
    }
    fn track_changes(&self, _prefix: &str, listener: ChangeListener) -> Option<ChangeTracking> {
        listener(KeyChange::Watching);
        Some(ChangeTracking::new().0)
    }
}

/// A cache's own writes and invalidations leave its near tier before they return: with a
/// store that never reports a change, the next read still sees them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caches_own_writes_leave_its_near_tier_before_returning() {
    let cache = Cache::builder()
        .store(SilentTracking::default())
        .namespace("near")
        .build()
        .expect("cache");
    assert_eq!(cache.near_stats().state, NearState::Watching);
    cache.insert("k", "v1").await.expect("insert");
    warm(&cache, "k", "v1").await;
    cache.insert("k", "v2").await.expect("insert");
    assert_eq!(cache.get::<String>("k").await.as_deref(), Some("v2"));
    warm(&cache, "k", "v2").await;
    cache.invalidate("k").await.expect("invalidate");
    assert_eq!(cache.get::<String>("k").await, None);

    cache
        .insert_many([("a", "1"), ("b", "1")])
        .await
        .expect("insert");
    warm(&cache, "a", "1").await;
    warm(&cache, "b", "1").await;
    cache
        .insert_many([("a", "2"), ("b", "2")])
        .await
        .expect("insert");
    let both: Vec<Option<String>> = cache.get_many(["a", "b"]).await;
    assert_eq!(both, vec![Some("2".to_owned()), Some("2".to_owned())]);
    warm(&cache, "a", "2").await;
    cache.invalidate_many(["a", "b"]).await.expect("invalidate");
    let both: Vec<Option<String>> = cache.get_many(["a", "b"]).await;
    assert_eq!(both, vec![None, None]);

    // A load's store, too.
    cache.insert("row", "old").await.expect("insert");
    warm(&cache, "row", "old").await;
    cache.invalidate("row").await.expect("invalidate");
    let loaded = cache
        .get_with("row", MINUTE, async { "new".to_owned() })
        .await;
    assert_eq!(loaded, "new");
    assert_eq!(cache.get::<String>("row").await.as_deref(), Some("new"));
}

/// A write cancelled after it reached the store (its caller gave up waiting for the reply)
/// still leaves the cache's near tier: the next read there sees the store's new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_still_leaves_the_near_tier() {
    let store = Arc::new(SilentTracking::default());
    let cache = Cache::builder()
        .shared_store(store.clone())
        .namespace("near")
        .build()
        .expect("cache");
    cache.insert("k", "v1").await.expect("insert");
    warm(&cache, "k", "v1").await;
    store.1.store(true, std::sync::atomic::Ordering::SeqCst);
    let write = tokio::time::timeout(Duration::from_millis(50), cache.insert("k", "v2")).await;
    assert!(write.is_err(), "the store never answered the write");
    assert_eq!(cache.get::<String>("k").await.as_deref(), Some("v2"));
}

/// A hot key is served from memory: repeated reads issue no Redis command at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_are_read_without_redis() {
    let server = RedisServer::start();
    let caches = instances(&server.url(), 1).await;
    let cache = &caches[0];
    cache.insert("hot", "value").await.expect("insert");
    warm(cache, "hot", "value").await;
    server.reset_stats();
    for _ in 0..200 {
        assert_eq!(cache.get::<String>("hot").await.as_deref(), Some("value"));
        let shared = cache.get_shared::<String>("hot").await;
        assert_eq!(shared.as_deref().map(String::as_str), Some("value"));
    }
    let many: Vec<Option<String>> = cache.get_many(["hot", "hot"]).await;
    assert_eq!(
        many,
        vec![Some("value".to_owned()), Some("value".to_owned())]
    );
    assert_eq!(read_commands(&server), 0, "hot reads reached Redis");
}

/// Inserts, invalidations and batch writes through one instance reach the others' near
/// tiers; the writer's own near tier never serves the old value once the call returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_instance_reach_the_others() {
    let server = RedisServer::start();
    let caches = instances(&server.url(), 3).await;
    let (writer, readers) = caches.split_first().expect("three");
    writer.insert("k", "v1").await.expect("insert");
    for cache in &caches {
        warm(cache, "k", "v1").await;
    }

    writer.insert("k", "v2").await.expect("insert");
    assert_eq!(writer.get::<String>("k").await.as_deref(), Some("v2"));
    for reader in readers {
        reads_eventually(reader, "k", Some("v2"), PROPAGATION_BOUND).await;
    }

    writer.invalidate("k").await.expect("invalidate");
    assert_eq!(writer.get::<String>("k").await, None);
    for reader in readers {
        reads_eventually(reader, "k", None, PROPAGATION_BOUND).await;
    }

    writer
        .insert_many([("a", "1"), ("b", "1")])
        .await
        .expect("insert");
    for reader in readers {
        warm(reader, "a", "1").await;
        warm(reader, "b", "1").await;
    }
    writer
        .insert_many([("a", "2"), ("b", "2")])
        .await
        .expect("insert");
    for reader in readers {
        reads_eventually(reader, "a", Some("2"), PROPAGATION_BOUND).await;
        reads_eventually(reader, "b", Some("2"), PROPAGATION_BOUND).await;
    }
    writer
        .invalidate_many(["a", "b"])
        .await
        .expect("invalidate");
    for reader in readers {
        reads_eventually(reader, "a", None, PROPAGATION_BOUND).await;
        reads_eventually(reader, "b", None, PROPAGATION_BOUND).await;
    }
}

/// Changes made behind the cache's back reach the near tier too: another client's `SET`
/// and `DEL`, and `FLUSHALL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_by_other_clients_reach_the_near_tier() {
    let server = RedisServer::start();
    let caches = instances(&server.url(), 1).await;
    let cache = &caches[0];
    let full = cache.full_key("k");
    cache.insert("k", "mine").await.expect("insert");
    warm(cache, "k", "mine").await;

    // Another writer with the same encoding, bypassing this cache entirely.
    let other = Cache::builder()
        .store(redis_store(&server.url()))
        .namespace("near")
        .near_capacity_bytes(0)
        .build()
        .expect("cache");
    other.insert("k", "theirs").await.expect("insert");
    reads_eventually(cache, "k", Some("theirs"), PROPAGATION_BOUND).await;

    server.cli(["DEL", &full]);
    reads_eventually(cache, "k", None, PROPAGATION_BOUND).await;

    cache.insert("k", "mine").await.expect("insert");
    warm(cache, "k", "mine").await;
    server.set_raw(&full, b"garbage written by redis-cli");
    reads_eventually(cache, "k", None, PROPAGATION_BOUND).await;

    cache.insert("k", "mine").await.expect("insert");
    warm(cache, "k", "mine").await;
    assert_eq!(server.cli(["FLUSHALL"]), "OK");
    reads_eventually(cache, "k", None, PROPAGATION_BOUND).await;
}

/// An entry never outlives its Redis TTL in the near tier: the moment Redis no longer has
/// the key, neither does the near tier, whether Redis expired it or not yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_never_outlive_their_redis_ttl() {
    let server = RedisServer::builder()
        .arg("enable-debug-command", "yes")
        .start();
    // Active expiry off: Redis then drops an expired key only when a command touches it, so
    // no change report comes, and only the near tier's own deadline can remove the entry.
    assert_eq!(server.cli(["DEBUG", "SET-ACTIVE-EXPIRE", "0"]), "OK");
    let caches = instances(&server.url(), 1).await;
    let cache = &caches[0];
    let ttl = Duration::from_millis(300);
    cache
        .insert_with_ttl("short", "v", ttl)
        .await
        .expect("insert");
    // Redis counts the TTL from when it ran the SET, before the insert returned.
    let expired_by = tokio::time::Instant::now() + ttl;
    warm(cache, "short", "v").await;
    let heard = cache.near_stats().changes_heard;
    // Time itself is what this test is about: wait until Redis's expiry has passed.
    tokio::time::sleep_until(expired_by).await;
    assert_eq!(
        cache.near_stats().changes_heard,
        heard,
        "no report came, so only the entry's own deadline can have removed it"
    );
    assert_eq!(cache.get::<String>("short").await, None);
}

/// A key Redis evicts under memory pressure leaves the near tier too, long before its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_evicted_by_redis_leave_the_near_tier() {
    let server = RedisServer::start();
    let caches = instances(&server.url(), 1).await;
    let cache = &caches[0];
    cache.insert("k", "v").await.expect("insert");
    warm(cache, "k", "v").await;
    let full = cache.full_key("k");
    // volatile-ttl evicts the key nearest its expiry first: ours, among fillers kept for a day.
    let used: u64 = server
        .cli(["INFO", "memory"])
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|bytes| bytes.trim().parse().ok())
        .expect("used_memory");
    let limit = (used + 512 * 1024).to_string();
    assert_eq!(server.cli(["CONFIG", "SET", "maxmemory", &limit]), "OK");
    assert_eq!(
        server.cli(["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"]),
        "OK"
    );
    let filler = "x".repeat(8 * 1024);
    let mut written = 0;
    while server.cli(["EXISTS", &full]) == "1" {
        assert!(written < 1000, "Redis never evicted the key");
        server.cli(["SET", &format!("filler:{written}"), &filler, "EX", "86400"]);
        written += 1;
    }
    reads_eventually(cache, "k", None, PROPAGATION_BOUND).await;
}

/// The id of the near tier's tracking connection in `CLIENT LIST`, if connected.
fn tracking_client_ids(server: &RedisServer) -> Vec<String> {
    server
        .cli(["CLIENT", "LIST"])
        .lines()
        .filter(|line| line.contains(&format!("name={TRACKING_CLIENT_NAME}")))
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|field| field.strip_prefix("id="))
        .map(str::to_owned)
        .collect()
}

/// Killing the tracking connection empties and bypasses the near tier at once; a write
/// made while it is down is never hidden by memory; tracking comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_empties_and_bypasses_the_tier() {
    let server = RedisServer::start();
    let caches = instances(&server.url(), 2).await;
    let (writer, reader) = (&caches[0], &caches[1]);
    writer.insert("k", "v1").await.expect("insert");
    warm(reader, "k", "v1").await;

    let ids = tracking_client_ids(&server);
    assert_eq!(ids.len(), 2, "one tracking connection per instance");
    for id in &ids {
        server.cli(["CLIENT", "KILL", "ID", id]);
    }
    // Well inside the heartbeat's 500 ms interval: the drop itself is what is noticed.
    eventually("the reader goes blind", DROP_NOTICED_BOUND, || {
        reader.near_stats().state != NearState::Watching || reader.near_stats().entries == 0
    })
    .await;
    writer.insert("k", "v2").await.expect("insert");
    // Blind or back already: either way the new value, never the one in memory.
    assert_eq!(reader.get::<String>("k").await.as_deref(), Some("v2"));

    eventually("tracking is back", PROPAGATION_BOUND, || {
        reader.near_stats().state == NearState::Watching
    })
    .await;
    warm(reader, "k", "v2").await;
    writer.insert("k", "v3").await.expect("insert");
    reads_eventually(reader, "k", Some("v3"), PROPAGATION_BOUND).await;
}

/// A Redis restart (which loses every key here) never leaves old values in memory, and
/// tracking resumes against the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_never_leaves_old_values_in_memory() {
    let mut server = RedisServer::start();
    let caches = instances(&server.url(), 2).await;
    let (writer, reader) = (&caches[0], &caches[1]);
    writer.insert("k", "before").await.expect("insert");
    warm(reader, "k", "before").await;

    server.restart();
    reads_eventually(reader, "k", None, PROPAGATION_BOUND).await;
    eventually("tracking is back", BLIND_BOUND, || {
        reader.near_stats().state == NearState::Watching
    })
    .await;
    // The writer's first write after the restart may be dropped while its connection is
    // re-established (fail-open); write until Redis has it.
    let started = Instant::now();
    loop {
        writer.insert("k", "after").await.expect("insert");
        if reader.get::<String>("k").await.as_deref() == Some("after") {
            break;
        }
        assert!(
            started.elapsed() < BLIND_BOUND,
            "writes never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warm(reader, "k", "after").await;
    writer.insert("k", "later").await.expect("insert");
    reads_eventually(reader, "k", Some("later"), PROPAGATION_BOUND).await;
}

/// A frozen Redis (connections open, nothing answered) is noticed by the heartbeat: the
/// near tier goes blind within its bound instead of trusting a silent channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_makes_the_tier_blind() {
    let server = RedisServer::start();
    let caches = instances(&server.url(), 1).await;
    let cache = &caches[0];
    cache.insert("k", "v").await.expect("insert");
    warm(cache, "k", "v").await;
    // The server is killed on drop, paused or not, if an assertion below fails.
    server.pause();
    eventually("the tier goes blind", BLIND_BOUND, || {
        cache.near_stats().state == NearState::Blind
    })
    .await;
    assert_eq!(cache.near_stats().entries, 0, "emptied");
    server.resume();
    eventually("tracking is back", BLIND_BOUND, || {
        cache.near_stats().state == NearState::Watching
    })
    .await;
}

/// The forced interleaving: a load reads the source (the old row), another instance then
/// changes the row and invalidates the key, and only then does the load finish. Its old value
/// is returned to its caller but stored nowhere: not in Redis, not in any near tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_older_than_an_invalidation_is_not_stored() {
    let server = RedisServer::start();
    let caches = instances(&server.url(), 2).await;
    let (loader_side, writer) = (caches[0].clone(), &caches[1]);
    let (read_source, source_read) = oneshot::channel::<()>();
    let (finish, finished) = oneshot::channel::<()>();
    let load = tokio::spawn(async move {
        loader_side
            .get_with("row", MINUTE, async move {
                let _ = read_source.send(());
                let _ = finished.await;
                "old row".to_owned()
            })
            .await
    });
    source_read.await.expect("the loader ran");
    let heard = caches[0].near_stats().changes_heard;
    writer.invalidate("row").await.expect("invalidate");
    eventually(
        "the loading instance hears the change",
        PROPAGATION_BOUND,
        || caches[0].near_stats().changes_heard > heard,
    )
    .await;
    finish.send(()).expect("the load waits");
    assert_eq!(
        load.await.expect("load"),
        "old row",
        "returned to its caller"
    );

    let raw = RedisStore::builder(server.url())
        .build()
        .expect("store")
        .get(&caches[0].full_key("row"))
        .await
        .expect("raw read");
    assert_eq!(raw, None, "the old row is not in Redis");
    for cache in &caches {
        assert_eq!(cache.get::<String>("row").await, None);
    }

    // Without a change during the load, the value is stored as always.
    let value = caches[0]
        .get_with("row", MINUTE, async { "new row".to_owned() })
        .await;
    assert_eq!(value, "new row");
    assert_eq!(
        caches[1].get::<String>("row").await.as_deref(),
        Some("new row")
    );
}

/// Stale-while-revalidate works unchanged through the near tier: a value past its TTL is
/// served while one refresh runs, and the refreshed value then reaches every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_works_through_the_near_tier() {
    let server = RedisServer::start();
    let caches = instances(&server.url(), 2).await;
    let ttl = Duration::from_millis(200);
    let options = cachelayer::LoadOptions::ttl(ttl).stale_while_revalidate(MINUTE);
    let first = caches[0]
        .get_with("swr", options, async { "v1".to_owned() })
        .await;
    assert_eq!(first, "v1");
    let stored_at = Instant::now();
    let stale = caches[1]
        .get_with("swr", options, async { "v1".to_owned() })
        .await;
    assert_eq!(stale, "v1");
    eventually("the value goes stale", PROPAGATION_BOUND, || {
        stored_at.elapsed() > ttl
    })
    .await;
    let served = caches[1]
        .get_with("swr", options, async { "v2".to_owned() })
        .await;
    assert_eq!(served, "v1", "stale value served while the refresh runs");
    for cache in &caches {
        let started = Instant::now();
        loop {
            let value = cache
                .get_with("swr", options, async { "v3".to_owned() })
                .await;
            if value != "v1" {
                assert!(value == "v2" || value == "v3", "{value}");
                break;
            }
            assert!(started.elapsed() < PROPAGATION_BOUND, "refresh not seen");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Re-runs this test binary as a child instance against the Redis at `url`.
fn spawn_child(url: &str) -> ChildProcess {
    ChildProcess::spawn("child_instance_entry", &[("NEAR_REDIS_URL", url)])
}

/// Not a test on its own: a child instance of `os_process_instances_see_each_others_writes`.
/// For each line `WAIT <key> <value>` on stdin it reads `key` (through its near tier) until
/// it sees `value` (or `-` for none), then prints `SAW <key>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, run by os_process_instances_see_each_others_writes"]
async fn child_instance_entry() {
    let url = std::env::var("NEAR_REDIS_URL").expect("run by an os_process_* test");
    let caches = instances(&url, 1).await;
    let cache = Arc::new(caches.into_iter().next().expect("one"));
    println!("READY");
    let (lines, mut asked) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    while let Some(line) = asked.recv().await {
        let mut words = line.split_whitespace();
        let (Some("WAIT"), Some(key), Some(value)) = (words.next(), words.next(), words.next())
        else {
            panic!("unknown request {line}");
        };
        let expected = (value != "-").then_some(value);
        reads_eventually(&cache, key, expected, PROPAGATION_BOUND).await;
        assert!(cache.near_stats().state == NearState::Watching);
        println!("SAW {key}");
    }
}

/// Three processes on one Redis: writes, overwrites and invalidations through this one are
/// seen by both children, which read through their own near tiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_process_instances_see_each_others_writes() {
    let server = RedisServer::start();
    let writer = &instances(&server.url(), 1).await[0];
    let mut children: Vec<ChildProcess> = (0..2).map(|_| spawn_child(&server.url())).collect();
    for child in &mut children {
        child.line_from("READY");
    }
    let steps: [(&str, Option<&str>); 4] = [
        ("k", Some("v1")),
        ("k", Some("v2")),
        ("k", None),
        ("other", Some("v1")),
    ];
    for (key, value) in steps {
        match value {
            Some(value) => writer.insert(Key::from(key), value).await.expect("insert"),
            None => writer.invalidate(key).await.expect("invalidate"),
        }
        for child in &mut children {
            child.ask(&format!("WAIT {key} {}", value.unwrap_or("-")));
            assert_eq!(child.line_from("SAW"), format!("SAW {key}"));
        }
    }
}
