//! The metrics the cache emits, captured with a local recorder around real operations.

mod support;

use std::future::Future;
use std::time::Duration;

use cachelayer::telemetry;
use cachelayer::{Cache, ErrorKind, LoadOptions, OnLockTimeout};
use cachelayer_testkit::RedisServer;
use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::{Backend, redis_store};

const MINUTE: Duration = Duration::from_secs(60);

/// Runs `test` on a current-thread runtime with a recorder installed for this thread only,
/// so parallel tests do not see each other's metrics, then returns what was recorded.
fn record<F, Fut>(test: F) -> Recorded
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(test());
    });
    // A snapshot drains the recorder, so take exactly one.
    Recorded(snapshotter.snapshot().into_vec())
}

struct Recorded(Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>);

impl Recorded {
    fn values(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&DebugValue> {
        self.0
            .iter()
            .filter(|(key, ..)| {
                let key = key.key();
                key.name() == name
                    && labels.iter().all(|(k, v)| {
                        key.labels()
                            .any(|label| label.key() == *k && label.value() == *v)
                    })
            })
            .map(|(.., value)| value)
            .collect()
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.values(name, labels)
            .into_iter()
            .map(|value| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.values(name, labels)
            .into_iter()
            .flat_map(|value| match value {
                DebugValue::Histogram(samples) => samples.iter().map(|s| s.0).collect::<Vec<f64>>(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .collect()
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        self.values(name, &[])
            .into_iter()
            .last()
            .map(|value| match value {
                DebugValue::Gauge(g) => g.0,
                other => panic!("{name} is not a gauge: {other:?}"),
            })
    }
}

/// Hits, misses, bytes, latency, compression ratio and decode failures are counted.
#[test]
fn reads_and_writes_are_measured() {
    let backend = Backend::memory();
    let cache = backend.cache();
    let recorded = record(|| async {
        cache.insert("small", &1u32).await.expect("insert");
        cache
            .insert("large", &"z".repeat(4096))
            .await
            .expect("insert");
        assert_eq!(cache.get::<u32>("small").await, Some(1));
        assert_eq!(cache.get::<u32>("absent").await, None);
        backend
            .store
            .set(&cache.full_key("junk"), "junk".into(), MINUTE)
            .await
            .expect("set");
        assert_eq!(cache.get::<u32>("junk").await, None);
    });
    assert_eq!(recorded.counter(telemetry::HITS, &[]), 1);
    assert_eq!(recorded.counter(telemetry::MISSES, &[]), 2);
    assert_eq!(
        recorded.counter(telemetry::DECODE_FAILURES, &[("reason", "too_short")]),
        1
    );
    assert!(recorded.counter(telemetry::BYTES_WRITTEN, &[]) > 0);
    assert!(recorded.counter(telemetry::BYTES_READ, &[]) > 0);
    assert_eq!(
        recorded
            .histogram(telemetry::STORE_DURATION, &[("op", "get")])
            .len(),
        3
    );
    let ratios = recorded.histogram(telemetry::COMPRESSION_RATIO, &[]);
    assert_eq!(ratios.len(), 1, "only the large value is compressed");
    assert!(
        ratios[0] > 10.0,
        "4 KB of one letter compresses well: {ratios:?}"
    );
}

/// Store failures are counted by kind, dropped writes are counted, and breaker transitions
/// and state are published.
#[test]
fn failures_and_breaker_are_measured() {
    let mut server = RedisServer::start();
    server.stop();
    let recorded = record(|| async {
        // A generous command timeout, so a refused connection is reported as refused, not
        // as a timeout, however loaded the machine.
        let cache = Cache::builder()
            .store(redis_store(&server.url()))
            .command_timeout(Duration::from_secs(5))
            .circuit_breaker(2, MINUTE)
            .build()
            .expect("cache");
        assert_eq!(cache.get::<u32>("a").await, None);
        cache.insert("a", &1u32).await.expect("dropped");
        // The breaker is now open; this call is refused without reaching Redis.
        assert_eq!(cache.get::<u32>("a").await, None);
    });
    assert_eq!(
        recorded.counter(
            telemetry::STORE_ERRORS,
            &[("op", "get"), ("kind", ErrorKind::Connection.as_str())]
        ),
        1
    );
    assert_eq!(
        recorded.counter(
            telemetry::STORE_ERRORS,
            &[("op", "get"), ("kind", "circuit_open")]
        ),
        1
    );
    assert_eq!(
        recorded.counter(telemetry::WRITES_DROPPED, &[("reason", "connection")]),
        1
    );
    assert_eq!(
        recorded.counter(telemetry::BREAKER_TRANSITIONS, &[("to", "open")]),
        1
    );
    assert_eq!(recorded.gauge(telemetry::BREAKER_STATE), Some(2.0));
}

/// Waits until the background refresh of `key` has stored 2, so it runs inside the
/// recorder's scope (the refreshed value is the signal).
async fn wait_for_refresh(cache: &Cache, key: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cache.get::<u32>(key).await != Some(2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Stampede protection reports loader runs, durations and errors, coalesced waits, lock
/// events, refreshes, stale values served and negative hits.
#[test]
fn stampede_events_are_measured() {
    let backend = Backend::memory();
    let cache = backend
        .cache_builder()
        .random_seed(3)
        .build()
        .expect("cache");
    let recorded = record(|| async {
        // One leader, three coalesced followers, a lease extended while the loader runs.
        let gate = std::sync::Arc::new(tokio::sync::Notify::new());
        let slow = LoadOptions::ttl(MINUTE).lock_ttl(Duration::from_millis(60));
        let leader = tokio::spawn({
            let (cache, gate) = (cache.clone(), gate.clone());
            async move {
                cache
                    .get_with("k", slow, async move {
                        gate.notified().await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        1u32
                    })
                    .await
            }
        });
        let followers: Vec<_> = (0..3)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get_with("k", slow, async { 2u32 }).await })
            })
            .collect();
        while cache.coalesced_callers("k") < 3 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(leader.await.expect("leader"), 1);
        for follower in followers {
            assert_eq!(follower.await.expect("follower"), 1);
        }

        // Another holder past the maximum wait.
        backend
            .store
            .set(
                &cache.lock_key("held"),
                "0123456789abcdef0123456789abcdef".into(),
                MINUTE,
            )
            .await
            .expect("plant lock");
        let failing = LoadOptions::ttl(MINUTE)
            .lock_max_wait(Duration::from_millis(50))
            .on_lock_timeout(OnLockTimeout::Fail);
        let timed_out = cache
            .try_get_with("held", failing, async { Ok::<u32, String>(1) })
            .await;
        assert!(timed_out.is_err());

        // A loader error and a panic.
        let _ = cache
            .try_get_with::<u32, _, _>("err", MINUTE, async { Err("down") })
            .await;
        let _ = cache
            .try_get_with::<u32, String, _>("panic", MINUTE, async { panic!("bug") })
            .await;

        // A stale value served while one background refresh runs.
        let ttl = Duration::from_millis(150);
        let swr = LoadOptions::ttl(ttl).stale_while_revalidate(MINUTE);
        cache.get_with("stale", swr, async { 1u32 }).await;
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(cache.get_with("stale", swr, async { 2u32 }).await, 1);
        wait_for_refresh(&cache, "stale").await;

        // A cached "not found" served.
        let negative = LoadOptions::ttl(MINUTE).negative_ttl(Some(MINUTE));
        for _ in 0..2 {
            assert_eq!(
                cache
                    .optionally_get_with::<u32, _>("none", negative, async { None })
                    .await,
                None
            );
        }

        // Early refresh: a value that took 150 ms to load, read close to its 200 ms expiry.
        let early = Duration::from_millis(200);
        cache
            .get_with("early", early, async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                1u32
            })
            .await;
        for _ in 0..20 {
            cache.get_with("early", early, async { 2u32 }).await;
        }
        wait_for_refresh(&cache, "early").await;
    });
    assert_eq!(recorded.counter(telemetry::COALESCED_WAITS, &[]), 3);
    let lock = |event| recorded.counter(telemetry::LOCK_EVENTS, &[("event", event)]);
    assert!(lock("acquired") >= 6, "{}", lock("acquired"));
    assert!(lock("extended") >= 1, "{}", lock("extended"));
    assert_eq!(lock("contended"), 1);
    assert_eq!(lock("timed_out"), 1);
    assert_eq!(
        recorded.counter(telemetry::LOADER_ERRORS, &[("kind", "error")]),
        1
    );
    assert_eq!(
        recorded.counter(telemetry::LOADER_ERRORS, &[("kind", "panic")]),
        1
    );
    assert_eq!(
        recorded.counter(telemetry::STALE_SERVED, &[("reason", "revalidate")]),
        1
    );
    assert_eq!(
        recorded.counter(telemetry::REFRESHES, &[("trigger", "stale")]),
        1
    );
    assert!(recorded.counter(telemetry::REFRESHES, &[("trigger", "early")]) >= 1);
    assert_eq!(recorded.counter(telemetry::NEGATIVE_HITS, &[]), 1);
    let loads = recorded.counter(telemetry::LOADER_CALLS, &[]);
    assert_eq!(
        recorded.histogram(telemetry::LOADER_DURATION, &[]).len() as u64,
        loads
    );
    assert!(loads >= 8, "{loads} loader runs");
}
