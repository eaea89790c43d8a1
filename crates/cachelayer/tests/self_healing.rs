//! Faults a running fleet meets as ordinary events, against a real redis-server: keys the
//! cache writes for itself broken from outside (garbage, another type, no expiry), every
//! client connection cut at once, and Redis coming back after an outage. Each must heal by
//! itself, at once or within one probe, never by waiting out a timeout.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cachelayer::store::{Claim, KeyTtl, MemoryStore, Store};
use cachelayer::{BreakerState, Cache, LoadOptions, OnLockTimeout};
use cachelayer_testkit::RedisServer;
use support::redis_store;

const MINUTE: Duration = Duration::from_secs(60);
/// A bound on calls that must not wait at all, so a regression fails instead of hanging
/// for a minute. Not a speed assertion: the calls either return at once or wait a minute.
const HANG: Duration = Duration::from_secs(20);

fn cache_on(server: &RedisServer) -> Cache {
    Cache::builder()
        .store(redis_store(&server.url()))
        .namespace("heal")
        .command_timeout(Duration::from_secs(2))
        .build()
        .expect("cache")
}

/// What an operator's script or another program can leave under a lock key, written with
/// `redis-cli` (no client library), as `(what, commands)`.
fn broken_locks() -> Vec<(&'static str, Vec<Vec<String>>)> {
    let set = |value: &str| vec!["SET".to_owned(), "{key}".to_owned(), value.to_owned()];
    vec![
        ("garbage without a TTL", vec![set("garbage")]),
        (
            "a token-shaped value without a TTL",
            vec![set("0123456789abcdef0123456789abcdef")],
        ),
        (
            "garbage with a long TTL",
            vec![vec![
                "SET".to_owned(),
                "{key}".to_owned(),
                "x".to_owned(),
                "EX".to_owned(),
                "86400".to_owned(),
            ]],
        ),
        (
            "another type",
            vec![vec![
                "HSET".to_owned(),
                "{key}".to_owned(),
                "field".to_owned(),
                "value".to_owned(),
            ]],
        ),
    ]
}

fn break_key(server: &RedisServer, key: &str, commands: &[Vec<String>]) {
    for command in commands {
        let args: Vec<String> = command.iter().map(|a| a.replace("{key}", key)).collect();
        server.cli(&args);
    }
}

/// A lock key broken from outside neither makes a load wait for `lock_max_wait` nor stalls
/// a write's wait for loads: the load takes the lock over at once, runs once and stores,
/// and the lock it leaves is its own, released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_lock_keys_never_block_loads() {
    let server = RedisServer::start();
    let cache = cache_on(&server);
    for (round, (what, commands)) in broken_locks().into_iter().enumerate() {
        let key = format!("k{round}");
        let lock = cache.lock_key(key.as_str());
        break_key(&server, &lock, &commands);
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&loads);
        let options = LoadOptions::ttl(MINUTE)
            .lock_max_wait(MINUTE)
            .on_lock_timeout(OnLockTimeout::Fail);
        let loaded = tokio::time::timeout(
            HANG,
            cache.try_get_with(key.as_str(), options, async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(7u32)
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the load waited on a lock nobody holds"));
        assert_eq!(loaded.ok(), Some(7), "{what}");
        assert_eq!(loads.load(Ordering::SeqCst), 1, "{what}: one load");
        assert_eq!(
            cache.get::<u32>(key.as_str()).await,
            Some(7),
            "{what}: stored"
        );
        assert_eq!(server.cli(["EXISTS", &lock]), "0", "{what}: released");
    }
}

/// What a write waits on (`Cache::is_loading`) sees a live lease as a load, and a broken
/// lock key as none: a string is removed, a key of another type reads as absent (the next
/// load's claim replaces it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_lock_keys_never_stall_writes() {
    let server = RedisServer::start();
    let cache = cache_on(&server);
    for (round, (what, commands)) in broken_locks().into_iter().enumerate() {
        let key = format!("k{round}");
        let lock = cache.lock_key(key.as_str());
        break_key(&server, &lock, &commands);
        assert!(
            !cache.is_loading(key.as_str()).await.expect("redis answers"),
            "{what}: not a load"
        );
        if what != "another type" {
            assert_eq!(server.cli(["EXISTS", &lock]), "0", "{what}: removed");
        }
    }
    let lock = cache.lock_key("live");
    server.cli([
        "SET",
        &lock,
        "0123456789abcdef0123456789abcdef",
        "PX",
        "60000",
    ]);
    assert!(cache.is_loading("live").await.expect("redis answers"));
    assert_eq!(server.cli(["EXISTS", &lock]), "1", "a live lease stays");
}

/// `Store::claim` on both stores: free keys are taken, live leases held, anything else
/// replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_replace_only_what_no_lease_is() {
    let server = RedisServer::start();
    let redis = redis_store(&server.url());
    let memory = MemoryStore::builder().build();
    let stores: [(&str, &dyn Store); 2] = [("redis", &redis), ("memory", &memory)];
    let token = || bytes::Bytes::from("0123456789abcdef0123456789abcdef");
    for (name, store) in stores {
        assert_eq!(
            store.claim("free", token(), MINUTE).await.expect("claim"),
            Claim::Taken,
            "{name}"
        );
        assert_eq!(
            store.claim("free", token(), MINUTE).await.expect("claim"),
            Claim::Held,
            "{name}: a live lease"
        );
        store
            .set("short", "x".into(), MINUTE)
            .await
            .expect("set a foreign value");
        assert_eq!(
            store.claim("short", token(), MINUTE).await.expect("claim"),
            Claim::Replaced,
            "{name}: another length"
        );
        assert!(matches!(
            store.ttl("short").await.expect("ttl"),
            KeyTtl::ExpiresIn(_)
        ));
    }
    server.cli(["SET", "persistent", "0123456789abcdef0123456789abcdef"]);
    assert_eq!(
        redis
            .claim("persistent", token(), MINUTE)
            .await
            .expect("claim"),
        Claim::Replaced,
        "no expiry"
    );
    server.cli(["RPUSH", "list", "a"]);
    assert_eq!(
        redis.claim("list", token(), MINUTE).await.expect("claim"),
        Claim::Replaced,
        "another type"
    );
}

/// The counter behind tag invalidations only moves forward: from the store's clock when
/// missing or unreadable, by one otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_advance_past_loss_and_garbage() {
    let server = RedisServer::start();
    let redis = redis_store(&server.url());
    let memory = MemoryStore::builder().build();
    let stores: [(&str, &dyn Store); 2] = [("redis", &redis), ("memory", &memory)];
    let micros_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros() as u64
    };
    for (name, store) in stores {
        let before = micros_now();
        let first = store
            .advance_counter("c", MINUTE, &[])
            .await
            .expect("advance");
        // Redis's clock is this host's here; allow for its second-resolution rounding.
        assert!(first + 1_000_000 >= before, "{name}: starts at the clock");
        let second = store
            .advance_counter("c", MINUTE, &[])
            .await
            .expect("advance");
        assert!(second > first, "{name}");
        store.set("c", "garbage".into(), MINUTE).await.expect("set");
        let third = store
            .advance_counter("c", MINUTE, &[])
            .await
            .expect("advance");
        assert!(
            third > second,
            "{name}: garbage restarts past the old values"
        );
        store
            .set("c", "99999999999999999999999".into(), MINUTE)
            .await
            .expect("set");
        let fourth = store
            .advance_counter("c", MINUTE, &[])
            .await
            .expect("advance");
        assert!(fourth >= third, "{name}: an out-of-range value restarts");
        assert!(fourth < 1 << 53, "{name}");
        store
            .set("c", "10000000000000000000".into(), MINUTE)
            .await
            .expect("set");
        let fifth = store
            .advance_counter("c", MINUTE, &[])
            .await
            .expect("advance");
        assert!(fifth < 1 << 53, "{name}: past 2^53 restarts too");
        // Stamps are written with the advance: the new value, then each entry's bytes.
        let stamps = [cachelayer::store::StoreEntry {
            key: "stamped".to_owned(),
            value: "-x".into(),
            ttl: MINUTE,
        }];
        let sixth = store
            .advance_counter("c", MINUTE, &stamps)
            .await
            .expect("advance");
        assert_eq!(
            store.get("stamped").await.expect("get").as_deref(),
            Some(format!("{sixth}-x").as_bytes()),
            "{name}"
        );
    }
    server.cli(["HSET", "h", "f", "v"]);
    assert!(
        redis
            .advance_counter("h", MINUTE, &[])
            .await
            .expect("another type")
            > 0
    );
}

/// After every client connection was killed (`CLIENT KILL TYPE normal`, as a failover or
/// an idle timeout does), an invalidation still succeeds before it returns, with one or
/// several pooled connections, instead of failing over to a later retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_survive_cut_connections() {
    let server = RedisServer::start();
    for pool_size in [1, 4] {
        let store = cachelayer::store::RedisStore::builder(server.url())
            .pool_size(pool_size)
            .build()
            .expect("store");
        let cache = Cache::builder()
            .store(store)
            .namespace(format!("cut{pool_size}"))
            .near_capacity_bytes(0)
            .build()
            .expect("cache");
        for round in 0..3 {
            let key = format!("k{round}");
            cache.insert(key.as_str(), &1u32).await.expect("insert");
            // Every pooled connection has been used, so each has a socket to lose.
            for _ in 0..pool_size {
                assert_eq!(cache.get::<u32>(key.as_str()).await, Some(1));
            }
            let killed: u64 = server
                .cli(["CLIENT", "KILL", "TYPE", "normal"])
                .parse()
                .expect("a count");
            assert!(killed >= 1, "pool {pool_size}: connections killed");
            cache
                .invalidate(key.as_str())
                .await
                .unwrap_or_else(|err| panic!("pool {pool_size}, round {round}: {err}"));
            assert_eq!(
                server.cli(["EXISTS", &cache.full_key(key.as_str())]),
                "0",
                "pool {pool_size}: removed"
            );
        }
    }
}

/// After an outage, one probe lets traffic back: the first call after the cool-down starts
/// a background read (it does not wait on it), and the breaker closes on that probe alone,
/// even though the probe's first dial only finds the failure left by the last attempt made
/// while Redis was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_probe_closes_the_breaker_after_an_outage() {
    let mut server = RedisServer::start();
    let cool_down = Duration::from_millis(300);
    let cache = Cache::builder()
        .store(redis_store(&server.url()))
        .namespace("probe")
        .near_capacity_bytes(0)
        .circuit_breaker(1, cool_down)
        .build()
        .expect("cache");
    cache.ping().await.expect("connected");
    server.stop();
    assert_eq!(cache.get::<u32>("k").await, None);
    assert_eq!(cache.breaker_state(), BreakerState::Open);
    // A probe while Redis is down fails and re-opens the breaker.
    until_state(&cache, BreakerState::HalfOpen).await;
    assert_eq!(cache.get::<u32>("k").await, None);
    until_state(&cache, BreakerState::Open).await;

    server.restart();
    until_state(&cache, BreakerState::HalfOpen).await;
    assert_eq!(
        cache.get::<u32>("k").await,
        None,
        "the probe's caller is not held"
    );
    until_state(&cache, BreakerState::Closed).await;
    cache.insert("k", &3u32).await.expect("insert");
    assert_eq!(cache.get::<u32>("k").await, Some(3), "traffic is back");
}

/// Wait (bounded) for the breaker to reach `state`, making no store calls meanwhile.
async fn until_state(cache: &Cache, state: BreakerState) {
    let started = std::time::Instant::now();
    while cache.breaker_state() != state {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the breaker never became {state:?} (it is {:?})",
            cache.breaker_state()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
