//! Shared set-up for the integration tests: a store backend (a real Redis started for the
//! test, or the in-process store) and caches over it.

#![allow(dead_code, unreachable_pub)]

pub mod child;

use std::sync::Arc;
use std::time::Duration;

use cachelayer::store::{MemoryStore, RedisStore, Store};
use cachelayer::{Cache, CacheBuilder};
use cachelayer_testkit::{RedisCluster, RedisServer};

/// A store under test and, for Redis, the server process that backs it.
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub server: Option<RedisServer>,
}

impl Backend {
    /// A fresh `redis-server` on a free port and a store connected to it.
    pub async fn redis() -> Self {
        let server = RedisServer::start();
        let store = redis_store(&server.url());
        // Connect before the test starts, so its first call is not also the first dial.
        store.ping().await.expect("a fresh redis-server answers");
        Self {
            store: Arc::new(store),
            server: Some(server),
        }
    }

    /// A store on `cluster` (emptied first), which tests share: a cluster takes seconds
    /// to form.
    pub async fn cluster(cluster: &RedisCluster) -> Self {
        tokio::task::block_in_place(|| cluster.flush_all());
        let store = redis_store(&cluster.url());
        // Connect (to every primary) before the test starts.
        store
            .ping()
            .await
            .expect("every primary of a fresh cluster answers");
        Self {
            store: Arc::new(store),
            server: None,
        }
    }

    /// A fresh in-process store.
    pub fn memory() -> Self {
        Self {
            store: Arc::new(MemoryStore::builder().build()),
            server: None,
        }
    }

    /// A cache over this backend's store with test-friendly settings (no jitter).
    pub fn cache(&self) -> Cache {
        self.cache_builder().build().expect("cache")
    }

    /// A builder over this backend's store, for tests that tune settings.
    pub fn cache_builder(&self) -> CacheBuilder {
        // A generous timeout: these tests check behaviour, and a write dropped because a
        // loaded CI machine answered in 300 ms would fail them for the wrong reason.
        Cache::builder()
            .shared_store(self.store.clone())
            .namespace("test")
            .ttl_jitter(0.0)
            .command_timeout(Duration::from_secs(5))
    }

    /// The raw bytes stored under `key` in `cache`'s namespace, read past the typed API.
    pub async fn raw(
        &self,
        cache: &Cache,
        key: impl Into<cachelayer::Key>,
    ) -> Option<bytes::Bytes> {
        self.store
            .get(&cache.full_key(key))
            .await
            .expect("raw store read")
    }

    /// The Redis server, for tests that only make sense against Redis.
    pub fn server(&self) -> &RedisServer {
        self.server.as_ref().expect("a redis backend")
    }
}

/// Wait until `cache`'s near tier has heard its Redis connection drop (microseconds after
/// the server stops, but not before the next line of a test): until then it may still answer
/// with what Redis held when it died.
pub async fn until_near_tier_blind(cache: &Cache) {
    let started = std::time::Instant::now();
    while cache.near_stats().state == cachelayer::near::NearState::Watching {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never went blind"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A Redis store with timeouts short enough for tests that stop the server.
pub fn redis_store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_millis(500))
        .build()
        .expect("redis store")
}

/// Generates one `#[tokio::test]` per store backend for each named async test function
/// taking a [`Backend`], so every store passes the same behavioural tests: one Redis, the
/// in-process store, and a Redis Cluster. The cluster's tests run in turn in one test that
/// owns the cluster (three primaries, three replicas), each on the emptied cluster: forming
/// one takes seconds, and a test binary may not leave its processes behind.
#[macro_export]
macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        mod on_cluster {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_behaviour_on_one_cluster() {
                let cluster = tokio::task::block_in_place(cachelayer_testkit::RedisCluster::start);
                $(
                    eprintln!("on a Redis Cluster: {}", stringify!($test));
                    super::$test(super::support::Backend::cluster(&cluster).await).await;
                )*
            }
        }
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::support::Backend::redis().await).await;
                }
            )*
        }
        mod on_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::support::Backend::memory()).await;
                }
            )*
        }
    };
}
