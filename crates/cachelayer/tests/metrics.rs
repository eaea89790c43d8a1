//! The metrics the cache emits, captured with a local recorder around real operations.

mod support;

use std::future::Future;
use std::time::Duration;

use cachelayer::telemetry;
use cachelayer::{Cache, ErrorKind};
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
