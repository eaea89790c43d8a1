//! Redis down, slow or coming back: reads and loads still succeed from the source of truth,
//! the circuit breaker opens and closes, and the cache recovers by itself.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachelayer::{BreakerState, Cache, ErrorKind};
use cachelayer_testkit::RedisServer;
use support::redis_store;

const MINUTE: Duration = Duration::from_secs(60);
const COOL_DOWN: Duration = Duration::from_millis(300);
/// Long enough that the open-state checks finish well inside it on a loaded machine.
const LONG_COOL_DOWN: Duration = Duration::from_secs(3);

fn cache_on(server: &RedisServer, failure_threshold: u32) -> Cache {
    cache_with_cool_down(server, failure_threshold, COOL_DOWN)
}

fn cache_with_cool_down(
    server: &RedisServer,
    failure_threshold: u32,
    cool_down: Duration,
) -> Cache {
    Cache::builder()
        .store(redis_store(&server.url()))
        .namespace("test")
        .command_timeout(Duration::from_millis(200))
        .circuit_breaker(failure_threshold, cool_down)
        .build()
        .expect("cache")
}

/// Calls `get_with` until the value is served from the cache rather than the loader, or
/// gives up after `deadline`. Recovery involves reconnect back-off and breaker cool-downs, so
/// this waits on the observable outcome, bounded.
async fn wait_until_cached(cache: &Cache, deadline: Duration) -> bool {
    let started = Instant::now();
    let loads = Arc::new(AtomicUsize::new(0));
    while started.elapsed() < deadline {
        let before = loads.load(Ordering::SeqCst);
        let counted = Arc::clone(&loads);
        cache
            .get_with("recovery", MINUTE, async move {
                counted.fetch_add(1, Ordering::SeqCst);
                7u32
            })
            .await;
        if loads.load(Ordering::SeqCst) == before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// With Redis stopped mid-test, every read is a miss, every load returns the loader's value,
/// writes are dropped without error, and invalidation reports the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_test_fails_open() {
    let mut server = RedisServer::start();
    let cache = cache_on(&server, 1000);
    cache.ping().await.expect("connected");
    cache.insert("k", &1u32).await.expect("insert");
    assert_eq!(cache.get::<u32>("k").await, Some(1));

    server.stop();
    support::until_near_tier_blind(&cache).await;
    assert_eq!(cache.get::<u32>("k").await, None);
    assert_eq!(cache.get_with("k", MINUTE, async { 2u32 }).await, 2);
    let loaded = cache
        .try_get_with("x", MINUTE, async { Ok::<u32, String>(3) })
        .await;
    assert_eq!(loaded, Ok(3));
    cache
        .insert("k", &4u32)
        .await
        .expect("a dropped write is not an error");
    cache
        .insert_many([("a", 1u32), ("b", 2)])
        .await
        .expect("dropped batch");
    assert_eq!(cache.get_many::<u32, _>(["a", "b"]).await, vec![None, None]);
    let err = cache
        .invalidate("k")
        .await
        .expect_err("invalidation must report failure");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(cache.ping().await.is_err());

    server.restart();
    assert!(
        wait_until_cached(&cache, Duration::from_secs(15)).await,
        "the cache did not recover after Redis restarted"
    );
    cache.ping().await.expect("ping after recovery");
}

/// A cache built while Redis is down starts, serves from the loader, and begins caching
/// once Redis is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down() {
    let mut server = RedisServer::start();
    server.stop();
    let cache = cache_on(&server, 3);
    assert_eq!(cache.get_with("k", MINUTE, async { 9u32 }).await, 9);
    assert_eq!(cache.get::<u32>("k").await, None);
    server.restart();
    assert!(wait_until_cached(&cache, Duration::from_secs(15)).await);
}

/// The breaker opens after the configured consecutive failures, stops calling Redis while
/// open (Redis sees no commands), then probes and closes once Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_skips_redis_and_closes() {
    let server = RedisServer::start();
    let cache = cache_with_cool_down(&server, 3, LONG_COOL_DOWN);
    assert_eq!(cache.breaker_state(), BreakerState::Closed);

    cache.ping().await.expect("connected before the pause");
    // Pause every client: commands time out, which counts as failure.
    server.cli(["CLIENT", "PAUSE", "1500", "ALL"]);
    for _ in 0..2 {
        assert_eq!(cache.get::<u32>("k").await, None);
    }
    assert_eq!(
        cache.breaker_state(),
        BreakerState::Closed,
        "two failures of three"
    );
    assert_eq!(cache.get::<u32>("k").await, None);
    assert_eq!(
        cache.breaker_state(),
        BreakerState::Open,
        "the third opens it"
    );
    assert_eq!(
        cache.get_with("k", MINUTE, async { 7u32 }).await,
        7,
        "open: served by the loader"
    );
    server.cli(["CLIENT", "UNPAUSE"]);
    // The three timed-out GETs are still queued in Redis; let them run before counting.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.command_calls("get") < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.reset_stats();
    for _ in 0..20 {
        assert_eq!(cache.get::<u32>("k").await, None);
    }
    let err = cache.invalidate("k").await.expect_err("breaker open");
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert_eq!(
        server.command_calls("get"),
        0,
        "an open breaker must not call Redis"
    );

    tokio::time::sleep(LONG_COOL_DOWN).await; // the cool-down is a policy duration, not a signal
    assert_eq!(cache.breaker_state(), BreakerState::HalfOpen);
    assert!(wait_until_cached(&cache, Duration::from_secs(10)).await);
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
}

/// A slow Redis (every client paused) costs about the command timeout per call, far less
/// than the pause, and the load still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_times_out_to_the_loader() {
    let server = RedisServer::start();
    let cache = cache_on(&server, 1000);
    cache.ping().await.expect("connected");
    cache.insert("k", &1u32).await.expect("insert");
    server.cli(["CLIENT", "PAUSE", "3000", "ALL"]);
    let err = cache.ping().await.expect_err("paused");
    assert!(err.is_timeout(), "{err:?}");
    let loads = Arc::new(AtomicUsize::new(0));
    let counted = loads.clone();
    let started = Instant::now();
    let value = cache
        .get_with("k", MINUTE, async move {
            counted.fetch_add(1, Ordering::SeqCst);
            5u32
        })
        .await;
    // A read and a write, each bounded by the 200 ms command timeout, against a 3 s pause.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        value, 5,
        "the loader's value, since the cached one could not be read"
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    server.cli(["CLIENT", "UNPAUSE"]);
}

/// Failures that are not about availability (the server refusing one command) do not open
/// the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_do_not_open_the_breaker() {
    let server = RedisServer::start();
    let cache = cache_on(&server, 2);
    cache.ping().await.expect("connected");
    // A list under the key makes GET fail with WRONGTYPE.
    let key = cache.full_key("list");
    server.cli(["RPUSH", key.as_str(), "x"]);
    for _ in 0..5 {
        assert_eq!(cache.get::<u32>("list").await, None);
    }
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
}
