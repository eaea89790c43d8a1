//! Stampede protection against real stores: one load per key per process and across
//! processes, lock safety, early refresh, stale serving, negative caching and degraded mode.
//!
//! Several `Cache` handles, each with its own Redis connections, stand for separate app
//! processes; the tests named `os_process_*` start real child processes (this test binary,
//! re-run as [`child_process_entry`]).
//!
//! One suite, kept in one file past 600 lines on purpose: its tests share one set of
//! helpers and each reads on its own, so splitting it would only scatter the helpers.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cachelayer::store::Store;
use cachelayer::{
    Cache, Entry, LoadError, LoadErrorKind, LoadOptions, LoadSource, OnLockTimeout,
    StampedeSettings,
};
use cachelayer_testkit::RedisServer;
use serde::{Deserialize, Serialize};
use support::child::ChildProcess;
use support::{Backend, redis_store};
use tokio::sync::{Barrier, Notify};
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);
/// A lock token of another process (locks hold 32 hex digits; anything else under a lock
/// key is no lock, and is taken over).
const OTHER_PROCESS: &[u8] = b"0123456789abcdef0123456789abcdef";
/// The token of a process that took a lapsed lock over.
const USURPER: &[u8] = b"fedcba9876543210fedcba9876543210";
/// Stands for a slow database query: long enough that every concurrent caller arrives while
/// the load runs.
const SLOW_LOAD: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
}

fn product(id: u64) -> Product {
    Product {
        id,
        name: format!("product {id}"),
    }
}

/// `n` caches on one Redis, each with its own connections, as `n` app processes would be.
fn instances(server: &RedisServer, n: usize, settings: StampedeSettings) -> Vec<Cache> {
    instances_on(&server.url(), n, settings)
}

/// `n` instances (each its own `Cache` and connections) on the Redis at `url`.
fn instances_on(url: &str, n: usize, settings: StampedeSettings) -> Vec<Cache> {
    (0..n)
        .map(|_| {
            Cache::builder()
                .store(redis_store(url))
                .namespace("test")
                .ttl_jitter(0.0)
                .command_timeout(Duration::from_secs(2))
                .stampede(settings)
                .build()
                .expect("cache")
        })
        .collect()
}

/// A loader that counts its runs, takes `delay`, and returns product 1.
fn counted_load(
    loads: &Arc<AtomicUsize>,
    delay: Duration,
) -> impl Future<Output = Product> + Send + 'static {
    let loads = Arc::clone(loads);
    async move {
        loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        product(1)
    }
}

/// Waits until `count()` reaches `want`, polling an observable state (bounded at 10 s).
async fn until(what: &str, want: usize, count: impl Fn() -> usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() < want {
        assert!(Instant::now() < deadline, "{what}: {} of {want}", count());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `per_cache` callers on each cache, released together, all asking for the cold key "cold"
/// with a slow loader counted in `loads`; asserts every caller got the value.
async fn stampede(caches: &[Cache], per_cache: usize, loads: &Arc<AtomicUsize>) {
    let start = Arc::new(Barrier::new(caches.len() * per_cache));
    let mut callers = Vec::new();
    for cache in caches {
        for _ in 0..per_cache {
            let (cache, start) = (cache.clone(), Arc::clone(&start));
            let load = counted_load(loads, SLOW_LOAD);
            callers.push(tokio::spawn(async move {
                start.wait().await;
                cache.get_with("cold", MINUTE, load).await
            }));
        }
    }
    for caller in callers {
        assert_eq!(caller.await.expect("caller"), product(1));
    }
}

/// 3 instances x 100 concurrent callers on a cold key: exactly one loader run, 300 values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_hundred_callers_load_once() {
    let server = RedisServer::start();
    let caches = instances(&server, 3, StampedeSettings::default());
    let loads = Arc::new(AtomicUsize::new(0));
    stampede(&caches, 100, &loads).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // The lock was released after the fill.
    assert_eq!(server.cli(["EXISTS", &caches[0].lock_key("cold")]), "0");
}

/// Concurrent callers in one process share one loader run, on either store, with the
/// fleet-wide lock turned off (coalescing alone).
async fn in_process_callers_share_one_load(backend: Backend) {
    let cache = backend
        .cache_builder()
        .stampede(StampedeSettings {
            lock: false,
            ..StampedeSettings::default()
        })
        .build()
        .expect("cache");
    let loads = Arc::new(AtomicUsize::new(0));
    stampede(&[cache], 100, &loads).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

/// A loader slower than the lock's initial lease still runs once: the holder extends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loader_keeps_the_lock_by_extending_it() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let caches = instances(
        &server,
        2,
        StampedeSettings {
            lock_ttl: lease,
            ..StampedeSettings::default()
        },
    );
    let loads = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    let first = {
        let (cache, loads, started) = (caches[0].clone(), Arc::clone(&loads), Arc::clone(&started));
        tokio::spawn(async move {
            cache
                .get_with("slow", MINUTE, async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    started.notify_one();
                    // Four leases long.
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    product(1)
                })
                .await
        })
    };
    started.notified().await;
    let others: Vec<_> = (0..20)
        .map(|_| {
            let cache = caches[1].clone();
            let load = counted_load(&loads, Duration::ZERO);
            tokio::spawn(async move { cache.get_with("slow", MINUTE, load).await })
        })
        .collect();
    assert_eq!(first.await.expect("holder"), product(1));
    for other in others {
        assert_eq!(other.await.expect("waiter"), product(1));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

/// A lock held by someone else is never deleted: not by a caller that gives up waiting and
/// loads without it, and not by a holder whose lease lapsed and was taken over mid-load.
async fn foreign_locks_are_never_deleted(backend: Backend) {
    let cache = backend
        .cache_builder()
        .stampede(StampedeSettings {
            lock_max_wait: Duration::from_millis(200),
            ..StampedeSettings::default()
        })
        .build()
        .expect("cache");
    let store = backend.store.clone();
    let lock = cache.lock_key("k");
    store
        .set(&lock, Bytes::from_static(OTHER_PROCESS), MINUTE)
        .await
        .expect("plant lock");
    let loaded = cache.get_with("k", MINUTE, async { 1u32 }).await;
    assert_eq!(loaded, 1, "loads without the lock after the maximum wait");
    assert_eq!(
        store.get(&lock).await.expect("get").as_deref(),
        Some(OTHER_PROCESS)
    );

    // Our lease "lapses" mid-load and another process takes the lock over.
    let (usurping_store, usurped) = (store.clone(), cache.lock_key("k2"));
    let value = cache
        .get_with("k2", MINUTE, async move {
            usurping_store
                .set(&usurped, Bytes::from_static(USURPER), MINUTE)
                .await
                .expect("take over");
            2u32
        })
        .await;
    assert_eq!(value, 2);
    assert_eq!(
        store
            .get(&cache.lock_key("k2"))
            .await
            .expect("get")
            .as_deref(),
        Some(USURPER)
    );
}

/// Waiters in other processes are woken by the fill announcement, not by their next poll:
/// every one of 8 returns within 100 ms of the loader's end, where polls 125-375 ms apart
/// would let each do so with a chance of about 0.4 (all 8: under 0.1%).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_the_fill_announcement() {
    let server = RedisServer::start();
    waiters_woken_by_the_fill_announcement(&server.url()).await;
}

/// The same on a Redis Cluster, where the announcement travels by sharded pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_the_fill_announcement_on_a_cluster() {
    let cluster = tokio::task::block_in_place(cachelayer_testkit::RedisCluster::start);
    waiters_woken_by_the_fill_announcement(&cluster.url()).await;
}

async fn waiters_woken_by_the_fill_announcement(url: &str) {
    let caches = instances_on(url, 9, StampedeSettings::default());
    let started = Arc::new(Notify::new());
    let loaded_at = Arc::new(std::sync::Mutex::new(None));
    let holder = {
        let (cache, started, loaded_at) = (
            caches[0].clone(),
            Arc::clone(&started),
            Arc::clone(&loaded_at),
        );
        tokio::spawn(async move {
            cache
                .get_with("k", MINUTE, async move {
                    started.notify_one();
                    // Long enough for the waiters' polls to back off to 250 ms.
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    *loaded_at.lock().expect("lock") = Some(Instant::now());
                    product(1)
                })
                .await
        })
    };
    started.notified().await;
    let waiters: Vec<_> = caches[1..]
        .iter()
        .map(|cache| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let value = cache.get_with("k", MINUTE, async { product(2) }).await;
                (value, Instant::now())
            })
        })
        .collect();
    assert_eq!(holder.await.expect("holder"), product(1));
    let loaded_at = loaded_at.lock().expect("lock").expect("loaded");
    for waiter in waiters {
        let (value, returned_at) = waiter.await.expect("waiter");
        assert_eq!(value, product(1), "served the holder's value");
        let after = returned_at.saturating_duration_since(loaded_at);
        assert!(
            after < Duration::from_millis(100),
            "woken {after:?} after the fill"
        );
    }
}

/// Loader errors reach every caller in every instance, and nothing is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_errors_reach_every_caller_and_are_not_cached() {
    let server = RedisServer::start();
    let caches = instances(&server, 3, StampedeSettings::default());
    let loads = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(60));
    let mut callers = Vec::new();
    for cache in &caches {
        for _ in 0..20 {
            let (cache, start, loads) = (cache.clone(), Arc::clone(&start), Arc::clone(&loads));
            callers.push(tokio::spawn(async move {
                start.wait().await;
                cache
                    .try_get_with::<u32, _, _>("failing", MINUTE, async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err("database unavailable")
                    })
                    .await
            }));
        }
    }
    for caller in callers {
        let err = caller
            .await
            .expect("caller")
            .expect_err("every caller fails");
        assert_eq!(err.kind(), LoadErrorKind::Loader);
        assert_eq!(err.loader_error(), Some(&"database unavailable"));
    }
    // One run per process at most: callers of one process share their leader's error.
    let runs = loads.load(Ordering::SeqCst);
    assert!((1..=3).contains(&runs), "{runs} loader runs");
    assert_eq!(server.cli(["EXISTS", &caches[0].full_key("failing")]), "0");
    assert_eq!(server.cli(["EXISTS", &caches[0].lock_key("failing")]), "0");
}

/// Waits until `cache`'s entry for `key` is past its TTL. Expiry has no signal: this is
/// time passing, not synchronisation.
async fn outlive(ttl: Duration) {
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
}

/// Within stale-if-error a failed load serves the stale value; past it, the error.
async fn stale_if_error_serves_the_stale_value(backend: Backend) {
    let cache = backend.cache();
    let ttl = Duration::from_millis(300);
    let options = LoadOptions::ttl(ttl).stale_if_error(MINUTE);
    let first = cache
        .try_get_with("p", options, async { Ok::<_, String>(product(1)) })
        .await;
    assert_eq!(first, Ok(product(1)));
    outlive(ttl).await;
    // Plain reads do not serve stale values.
    assert_eq!(cache.get::<Product>("p").await, None);
    assert_eq!(cache.get_many::<Product, _>(["p"]).await, vec![None]);
    assert!(cache.get_entry::<Product>("p").await.is_none());
    let failed = cache
        .try_get_with("p", options, async { Err::<Product, _>("down".to_owned()) })
        .await;
    assert_eq!(failed, Ok(product(1)), "stale value instead of the error");
    let strict = cache
        .try_get_with("p", options.stale_if_error(Duration::ZERO), async {
            Err::<Product, _>("down".to_owned())
        })
        .await;
    assert_eq!(
        strict.expect_err("no stale window").kind(),
        LoadErrorKind::Loader
    );
}

/// Callers sharing a failed load each apply their own stale-if-error window.
async fn followers_apply_their_own_stale_if_error(backend: Backend) {
    let cache = backend.cache();
    let ttl = Duration::from_millis(300);
    cache
        .get_with("p", LoadOptions::ttl(ttl).stale_if_error(MINUTE), async {
            product(1)
        })
        .await;
    outlive(ttl).await;
    let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let strict = {
        let (cache, started, gate) = (cache.clone(), Arc::clone(&started), Arc::clone(&gate));
        tokio::spawn(async move {
            cache
                .try_get_with("p", LoadOptions::ttl(ttl), async move {
                    started.notify_one();
                    gate.notified().await;
                    Err::<Product, _>("down")
                })
                .await
        })
    };
    started.notified().await;
    let tolerant = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .try_get_with("p", LoadOptions::ttl(ttl).stale_if_error(MINUTE), async {
                    Ok::<_, &str>(product(2))
                })
                .await
        })
    };
    until("follower waiting", 1, || cache.coalesced_callers("p")).await;
    gate.notify_one();
    let strict = strict.await.expect("leader");
    assert_eq!(strict.expect_err("no window").loader_error(), Some(&"down"));
    assert_eq!(tolerant.await.expect("follower"), Ok(product(1)));
}

/// Within stale-while-revalidate readers get the stale value at once, and one background
/// refresh replaces it.
async fn stale_while_revalidate_refreshes_once_in_background(backend: Backend) {
    let cache = backend.cache();
    let ttl = Duration::from_millis(300);
    let options = LoadOptions::ttl(ttl).stale_while_revalidate(MINUTE);
    cache.get_with("p", options, async { product(1) }).await;
    outlive(ttl).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let readers: Vec<_> = (0..20)
        .map(|_| {
            let (cache, loads) = (cache.clone(), Arc::clone(&loads));
            let (started, gate) = (Arc::clone(&started), Arc::clone(&gate));
            tokio::spawn(async move {
                cache
                    .get_with("p", options, async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        started.notify_one();
                        gate.notified().await;
                        product(2)
                    })
                    .await
            })
        })
        .collect();
    // Every reader returns while the refresh is still held at the gate (a reader that
    // waited for the refresh would time out here instead of hanging the test).
    for reader in readers {
        let served = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("served without waiting for the refresh");
        assert_eq!(served.expect("reader"), product(1));
    }
    started.notified().await;
    gate.notify_one();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.get::<Product>("p").await != Some(product(2)) {
        assert!(Instant::now() < deadline, "refresh never landed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

/// Negative caching: a "not found" is cached for its own TTL only when asked for.
async fn not_found_is_cached_only_with_a_negative_ttl(backend: Backend) {
    let cache = backend.cache();
    let loads = Arc::new(AtomicUsize::new(0));
    let missing = |loads: &Arc<AtomicUsize>| {
        let loads = Arc::clone(loads);
        async move {
            loads.fetch_add(1, Ordering::SeqCst);
            None::<Product>
        }
    };
    let plain = LoadOptions::ttl(MINUTE);
    assert_eq!(
        cache.optionally_get_with("a", plain, missing(&loads)).await,
        None
    );
    assert_eq!(
        cache.optionally_get_with("a", plain, missing(&loads)).await,
        None
    );
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "not cached without a negative TTL"
    );
    assert_eq!(backend.raw(&cache, "a").await, None);

    let negative = Duration::from_millis(400);
    let options = plain.negative_ttl(Some(negative));
    assert_eq!(
        cache
            .optionally_get_with("b", options, missing(&loads))
            .await,
        None
    );
    assert_eq!(
        cache
            .optionally_get_with("b", options, missing(&loads))
            .await,
        None
    );
    assert_eq!(
        loads.load(Ordering::SeqCst),
        3,
        "second lookup served from the cache"
    );
    // A plain read sees a miss, and leaves the "not found" entry in place.
    assert_eq!(cache.get::<Product>("b").await, None);
    assert!(backend.raw(&cache, "b").await.is_some());
    // A value load treats it as a miss and replaces it.
    assert_eq!(
        cache.get_with("b", MINUTE, async { product(9) }).await,
        product(9)
    );
    assert_eq!(
        cache
            .optionally_get_with("b", options, missing(&loads))
            .await,
        Some(product(9))
    );
    assert_eq!(loads.load(Ordering::SeqCst), 3);

    assert_eq!(
        cache
            .optionally_get_with("c", options, missing(&loads))
            .await,
        None
    );
    outlive(negative).await;
    assert_eq!(
        cache
            .optionally_get_with("c", options, missing(&loads))
            .await,
        None
    );
    assert_eq!(
        loads.load(Ordering::SeqCst),
        5,
        "reloaded after the negative TTL"
    );
}

/// With another holder past the maximum wait: a stale value is served if there is one,
/// else `Fail` returns an error without loading and `Load` loads.
async fn lock_wait_timeout_follows_the_policy(backend: Backend) {
    let cache = backend.cache();
    let wait = Duration::from_millis(200);
    for key in ["fresh-miss", "stale"] {
        backend
            .store
            .set(
                &cache.lock_key(key),
                Bytes::from_static(OTHER_PROCESS),
                MINUTE,
            )
            .await
            .expect("plant lock");
    }
    let loads = Arc::new(AtomicUsize::new(0));
    let failing = LoadOptions::ttl(MINUTE)
        .lock_max_wait(wait)
        .on_lock_timeout(OnLockTimeout::Fail);
    let started = Instant::now();
    let load = counted_load(&loads, Duration::ZERO);
    let err = cache
        .try_get_with(
            "fresh-miss",
            failing,
            async move { Ok::<_, String>(load.await) },
        )
        .await
        .expect_err("timed out");
    assert_eq!(err.kind(), LoadErrorKind::LockWaitTimedOut);
    assert_eq!(loads.load(Ordering::SeqCst), 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // A stale value wins over both policies.
    let ttl = Duration::from_millis(300);
    let stale_options = LoadOptions::ttl(ttl).stale_if_error(MINUTE);
    backend
        .store
        .delete(&cache.lock_key("stale"))
        .await
        .expect("unlock");
    cache
        .get_with("stale", stale_options, async { product(1) })
        .await;
    backend
        .store
        .set(
            &cache.lock_key("stale"),
            Bytes::from_static(OTHER_PROCESS),
            MINUTE,
        )
        .await
        .expect("plant lock");
    outlive(ttl).await;
    let load = counted_load(&loads, Duration::ZERO);
    let served = cache
        .try_get_with(
            "stale",
            stale_options
                .lock_max_wait(wait)
                .on_lock_timeout(OnLockTimeout::Fail),
            async move { Ok::<_, String>(load.await) },
        )
        .await;
    assert_eq!(served, Ok(product(1)));
    assert_eq!(loads.load(Ordering::SeqCst), 0);

    // `Load` (the default) loads without the lock.
    let load = counted_load(&loads, Duration::ZERO);
    let loaded = cache
        .get_with(
            "fresh-miss",
            LoadOptions::ttl(MINUTE).lock_max_wait(wait),
            load,
        )
        .await;
    assert_eq!(loaded, product(1));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

/// The leader's future is dropped mid-load: its followers are released and exactly one of
/// them loads.
async fn cancelled_leader_hands_over(backend: Backend) {
    let cache = backend.cache();
    let started = Arc::new(Notify::new());
    let leader = {
        let (cache, started) = (cache.clone(), Arc::clone(&started));
        tokio::spawn(async move {
            cache
                .get_with("k", MINUTE, async move {
                    started.notify_one();
                    std::future::pending::<Product>().await
                })
                .await
        })
    };
    started.notified().await;
    let loads = Arc::new(AtomicUsize::new(0));
    let followers: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            let load = counted_load(&loads, Duration::from_millis(50));
            tokio::spawn(async move { cache.get_with("k", MINUTE, load).await })
        })
        .collect();
    until("followers waiting", 10, || cache.coalesced_callers("k")).await;
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    for follower in followers {
        assert_eq!(follower.await.expect("follower"), product(1));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

/// A panicking loader is contained: every caller of the load gets `Panicked`, the lock is
/// released, and the key loads normally afterwards.
async fn panicking_leader_is_reported_to_every_waiter(backend: Backend) {
    let cache = backend.cache();
    let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let leader = {
        let (cache, started, gate) = (cache.clone(), Arc::clone(&started), Arc::clone(&gate));
        tokio::spawn(async move {
            cache
                .try_get_with::<u32, String, _>("k", MINUTE, async move {
                    started.notify_one();
                    gate.notified().await;
                    panic!("loader bug");
                })
                .await
        })
    };
    started.notified().await;
    let followers: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .try_get_with::<u32, String, _>("k", MINUTE, async { Ok(1) })
                    .await
            })
        })
        .collect();
    until("followers waiting", 10, || cache.coalesced_callers("k")).await;
    gate.notify_one();
    let err = leader.await.expect("contained").expect_err("panicked");
    assert_eq!(err.kind(), LoadErrorKind::Panicked);
    assert!(err.to_string().contains("loader bug"), "{err}");
    for follower in followers {
        let err = follower.await.expect("contained").expect_err("shared");
        assert_eq!(err.kind(), LoadErrorKind::Panicked);
    }
    assert_eq!(
        cache
            .try_get_with::<u32, String, _>("k", MINUTE, async { Ok(2) })
            .await,
        Ok(2)
    );

    // `get_with` cannot return the error: the panic resumes in the task that ran the loader.
    let panicking = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_with::<u32, _>("other", MINUTE, async { panic!("loader bug") })
                .await
        }
    });
    assert!(panicking.await.expect_err("panicked").is_panic());
}

/// With Redis down, callers are still coalesced per process: one loader run per instance,
/// and nobody hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_still_coalesces_per_process() {
    let mut server = RedisServer::start();
    let caches = instances(&server, 2, StampedeSettings::default());
    server.stop();
    let loads = Arc::new(AtomicUsize::new(0));
    let begun = Instant::now();
    stampede(&caches, 50, &loads).await;
    assert_eq!(loads.load(Ordering::SeqCst), 2, "one load per instance");
    // Connect attempts are bounded by the 500 ms connect timeout.
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "{:?}",
        begun.elapsed()
    );
}

/// Early refresh (XFetch): under steady reads across several expiries, the key never goes
/// missing and the loader runs about once per TTL. Seeded, so the draws repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_keeps_a_hot_key_present() {
    let server = RedisServer::start();
    let ttl = Duration::from_secs(1);
    let cache = Cache::builder()
        .store(redis_store(&server.url()))
        .namespace("test")
        .ttl_jitter(0.0)
        .command_timeout(Duration::from_secs(2))
        .random_seed(7)
        .build()
        .expect("cache");
    let loads = Arc::new(AtomicUsize::new(0));
    // 50 ms of compute at ~800 reads/s: XFetch refreshes ~180 ms before expiry, and the
    // chance of no refresh starting before the last 50 ms is about 4e-7 per period.
    let compute = Duration::from_millis(50);
    let load = || counted_load(&loads, compute);
    cache.get_with("hot", ttl, load()).await;
    let run = Duration::from_secs(4);
    let begun = Instant::now();
    let full = cache.full_key("hot");
    let raw = redis_store(&server.url());
    let mut readers = Vec::new();
    for _ in 0..4 {
        let cache = cache.clone();
        let loads = Arc::clone(&loads);
        readers.push(tokio::spawn(async move {
            while begun.elapsed() < run {
                let value = cache
                    .get_with("hot", ttl, counted_load(&loads, compute))
                    .await;
                assert_eq!(value, product(1));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let mut samples = 0;
    while begun.elapsed() < run {
        let present = raw.get(&full).await.expect("raw read").is_some();
        assert!(present, "the key went missing after {:?}", begun.elapsed());
        samples += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for reader in readers {
        reader.await.expect("reader");
    }
    assert!(samples > 100, "{samples} samples");
    // The first fill, then about one refresh per TTL (each ~0.2 s early) over the 4 s run.
    let runs = loads.load(Ordering::SeqCst);
    assert!((4..=7).contains(&runs), "{runs} loader runs in {run:?}");
}

/// Re-runs this test binary as a child process playing `role` against the Redis at `url`.
fn spawn_child(role: &str, url: &str) -> ChildProcess {
    ChildProcess::spawn(
        "child_process_entry",
        &[("STAMPEDE_CHILD_ROLE", role), ("STAMPEDE_REDIS_URL", url)],
    )
}

/// The cache every child process builds: a 1 s lock lease.
fn child_cache(url: &str) -> Cache {
    Cache::builder()
        .store(redis_store(url))
        .namespace("test")
        .ttl_jitter(0.0)
        .command_timeout(Duration::from_secs(2))
        .stampede(StampedeSettings {
            lock_ttl: Duration::from_secs(1),
            lock_max_wait: Duration::from_secs(5),
            ..StampedeSettings::default()
        })
        .build()
        .expect("cache")
}

/// Not a test on its own: the child process of the `os_process_*` tests, started by them with
/// `STAMPEDE_CHILD_ROLE` set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, run by the os_process_* tests"]
async fn child_process_entry() {
    let role = std::env::var("STAMPEDE_CHILD_ROLE").expect("run by an os_process_* test");
    let url = std::env::var("STAMPEDE_REDIS_URL").expect("run by an os_process_* test");
    let cache = child_cache(&url);
    match role.as_str() {
        // Take the lock on a cold key and hang in the loader until killed.
        "hold" => {
            cache
                .get_with("cold", MINUTE, async {
                    println!("LOADING");
                    std::future::pending::<Product>().await
                })
                .await;
        }
        // 100 concurrent callers on a cold key; loads are counted in Redis.
        "callers" => {
            let client = redis::Client::open(url.as_str()).expect("client");
            let start = Arc::new(Barrier::new(100));
            let callers: Vec<_> = (0..100)
                .map(|_| {
                    let (cache, start, client) =
                        (cache.clone(), Arc::clone(&start), client.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        cache
                            .get_with("cold", MINUTE, async move {
                                let mut connection = client
                                    .get_multiplexed_async_connection()
                                    .await
                                    .expect("connect");
                                let _: u64 = redis::cmd("INCR")
                                    .arg("loader-runs")
                                    .query_async(&mut connection)
                                    .await
                                    .expect("count");
                                tokio::time::sleep(SLOW_LOAD).await;
                                product(1)
                            })
                            .await
                    })
                })
                .collect();
            let mut correct = 0;
            for caller in callers {
                if caller.await.expect("caller") == product(1) {
                    correct += 1;
                }
            }
            println!("CORRECT {correct}");
        }
        other => panic!("unknown child role {other}"),
    }
}

/// The lock holder's process is killed mid-load: a caller elsewhere completes within the
/// lock's lease plus a margin, well inside the maximum wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_process_killed_holder_frees_the_key_within_the_lease() {
    let server = RedisServer::start();
    let cache = child_cache(&server.url());
    let mut holder = spawn_child("hold", &server.url());
    holder.line_from("LOADING");
    let lock = cache.lock_key("cold");
    assert_eq!(
        server.cli(["STRLEN", &lock]),
        "32",
        "the child holds the lock"
    );
    drop(holder); // SIGKILL: no release, no more extensions.
    let begun = Instant::now();
    let loads = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            let load = counted_load(&loads, Duration::ZERO);
            tokio::spawn(async move { cache.get_with("cold", MINUTE, load).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.expect("caller"), product(1));
    }
    let waited = begun.elapsed();
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // Lease 1 s, polls at most 375 ms apart; the maximum wait is 5 s.
    assert!(waited < Duration::from_millis(2500), "waited {waited:?}");
}

/// Three real processes x 100 callers on a cold key: one loader run in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_process_three_processes_load_once() {
    let server = RedisServer::start();
    let mut children: Vec<_> = (0..3)
        .map(|_| spawn_child("callers", &server.url()))
        .collect();
    for child in &mut children {
        assert_eq!(child.line_from("CORRECT"), "CORRECT 100");
    }
    assert_eq!(server.cli(["GET", "loader-runs"]), "1");
}

/// The entry API says where each value came from: the caller's own load,
/// another caller's, a fresh hit, a stale value, a cached "not found", or no cache at all.
async fn load_source_reports_where_the_value_came_from(backend: Backend) {
    /// An entry as the value and its source, and whether it is fresh as its source says.
    fn parts<T>(
        entry: Result<Entry<Option<T>>, LoadError<String>>,
    ) -> Result<(Option<T>, LoadSource), LoadError<String>> {
        entry.map(|entry| {
            let source = entry.source();
            assert_eq!(entry.is_fresh(), !source.is_from_store());
            (entry.into_value(), source)
        })
    }
    let cache = backend.cache();
    // Long enough that the hit below is fresh on a loaded machine; no early refresh, which
    // would replace the value the stale step expects.
    let ttl = Duration::from_secs(1);
    let options = LoadOptions::ttl(ttl)
        .early_refresh_beta(0.0)
        .stale_while_revalidate(MINUTE)
        .negative_ttl(Some(MINUTE));
    let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let leader = {
        let (cache, started, gate) = (cache.clone(), Arc::clone(&started), Arc::clone(&gate));
        tokio::spawn(async move {
            cache
                .entry("p")
                .or_try_optionally_insert_with(options, async move {
                    started.notify_one();
                    gate.notified().await;
                    Ok::<_, String>(Some(product(1)))
                })
                .await
        })
    };
    started.notified().await;
    let follower = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .entry("p")
                .or_try_optionally_insert_with(options, async { Ok::<_, String>(Some(product(9))) })
                .await
        })
    };
    until("follower waiting", 1, || cache.coalesced_callers("p")).await;
    gate.notify_one();
    let leader = leader.await.expect("leader");
    let follower = follower.await.expect("follower");
    assert_eq!(parts(leader), Ok((Some(product(1)), LoadSource::Loaded)));
    assert_eq!(
        parts(follower),
        Ok((Some(product(1)), LoadSource::Coalesced))
    );
    let never = async { Ok::<Option<Product>, String>(Some(product(9))) };
    let hit = cache
        .entry("p")
        .or_try_optionally_insert_with(options, never)
        .await;
    assert_eq!(parts(hit), Ok((Some(product(1)), LoadSource::Hit)));
    outlive(ttl).await;
    let refreshed = async { Ok::<_, String>(Some(product(2))) };
    let stale = cache
        .entry("p")
        .or_try_optionally_insert_with(options, refreshed)
        .await;
    assert_eq!(parts(stale), Ok((Some(product(1)), LoadSource::Stale)));
    let absent = async { Ok::<Option<Product>, String>(None) };
    let loaded = cache
        .entry("gone")
        .or_try_optionally_insert_with(options, absent)
        .await;
    assert_eq!(parts(loaded), Ok((None, LoadSource::Loaded)));
    let never = async { Ok::<Option<Product>, String>(Some(product(9))) };
    let negative = cache
        .entry("gone")
        .or_try_optionally_insert_with(options, never)
        .await;
    assert_eq!(parts(negative), Ok((None, LoadSource::Hit)));
    let uncached = async { Ok::<_, String>(Some(product(3))) };
    let bypassed = cache
        .entry("p")
        .or_try_optionally_insert_with(Duration::ZERO, uncached)
        .await;
    assert_eq!(
        parts(bypassed),
        Ok((Some(product(3)), LoadSource::Bypassed))
    );
}

on_every_store!(
    load_source_reports_where_the_value_came_from,
    in_process_callers_share_one_load,
    foreign_locks_are_never_deleted,
    stale_if_error_serves_the_stale_value,
    followers_apply_their_own_stale_if_error,
    stale_while_revalidate_refreshes_once_in_background,
    not_found_is_cached_only_with_a_negative_ttl,
    lock_wait_timeout_follows_the_policy,
    cancelled_leader_hands_over,
    panicking_leader_is_reported_to_every_waiter,
);
