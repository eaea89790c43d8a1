//! Ten keys against a real redis-server: ten sequential commands versus one MGET versus one
//! pipeline (the common "5 ms -> 0.5 ms" claim for batching, measured as a ratio), through the store
//! and through the typed cache.
//!
//! Run with: `taskset -c 0 cargo bench -p cachelayer --bench redis_round_trips`
//! (the bench pins its redis-server to core 1, so client and server do not share a core).

#[path = "support/pinned_redis.rs"]
mod pinned_redis;
#[path = "support/product_docs.rs"]
mod product_docs;

use std::time::Duration;

use cachelayer::Cache;
use cachelayer::store::{RedisStore, Store, StoreEntry};
use criterion::{Criterion, criterion_group, criterion_main};
use pinned_redis::server;
use product_docs::{Product, products_of_json_size};

const KEYS: usize = 10;
const TTL: Duration = Duration::from_secs(600);

/// One client thread, so the client stays on the core `taskset` gives the bench.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn round_trips(c: &mut Criterion) {
    let server = server();
    let runtime = client_runtime();
    let _runtime_context = runtime.enter();
    let store = RedisStore::builder(server.url())
        .pool_size(1)
        .build()
        .expect("store");
    let keys: Vec<String> = (0..KEYS).map(|i| format!("bench:{i}")).collect();
    let value = serde_json::to_vec(&products_of_json_size(1024)).expect("json");
    let entries: Vec<StoreEntry> = keys
        .iter()
        .map(|key| StoreEntry {
            key: key.clone(),
            value: value.clone().into(),
            ttl: TTL,
        })
        .collect();
    runtime.block_on(store.set_many(&entries)).expect("seed");

    let mut group = c.benchmark_group("redis_10_keys");
    group.bench_function("get/sequential", |b| {
        b.to_async(&runtime).iter(|| async {
            for key in &keys {
                store.get(key).await.expect("get");
            }
        })
    });
    group.bench_function("get/mget", |b| {
        b.to_async(&runtime)
            .iter(|| async { store.get_many(&keys).await.expect("mget") })
    });
    let url = server.url();
    let raw = runtime
        .block_on(async {
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await
        })
        .expect("raw connection");
    group.bench_function("get/pipeline", |b| {
        b.to_async(&runtime).iter(|| {
            let mut connection = raw.clone();
            let keys = &keys;
            async move {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.get(key);
                }
                let values: Vec<Option<Vec<u8>>> =
                    pipe.query_async(&mut connection).await.expect("pipeline");
                values
            }
        })
    });
    group.bench_function("set/sequential", |b| {
        b.to_async(&runtime).iter(|| async {
            for entry in &entries {
                store
                    .set(&entry.key, entry.value.clone(), entry.ttl)
                    .await
                    .expect("set");
            }
        })
    });
    group.bench_function("set/pipeline", |b| {
        b.to_async(&runtime)
            .iter(|| async { store.set_many(&entries).await.expect("set_many") })
    });
    group.finish();

    let cache = Cache::builder()
        .store(store.clone())
        .namespace("bench")
        // Round trips are what this bench measures: no near tier to answer from memory.
        .near_capacity_bytes(0)
        .build()
        .expect("cache");
    let docs = products_of_json_size(1024);
    let typed: Vec<(String, &Vec<Product>)> = (0..KEYS).map(|i| (format!("p{i}"), &docs)).collect();
    runtime
        .block_on(cache.insert_many(typed.iter().map(|(k, v)| (k, *v))))
        .expect("seed typed");
    let typed_keys: Vec<&String> = typed.iter().map(|(k, _)| k).collect();
    let mut group = c.benchmark_group("cache_10_keys");
    group.bench_function("get/sequential", |b| {
        b.to_async(&runtime).iter(|| async {
            for key in &typed_keys {
                assert!(cache.get::<Vec<Product>>(*key).await.is_some());
            }
        })
    });
    group.bench_function("get_many", |b| {
        b.to_async(&runtime).iter(|| async {
            let values = cache
                .get_many::<Vec<Product>, _>(typed_keys.iter().copied())
                .await;
            assert!(values.iter().all(Option::is_some));
        })
    });
    group.finish();
}

/// 100 concurrent GETs from one task set, over pools of 1 and 4 multiplexed connections:
/// the figure behind the README's pool-sizing advice.
fn concurrent_gets(c: &mut Criterion) {
    let server = server();
    let runtime = client_runtime();
    let _runtime_context = runtime.enter();
    let value = serde_json::to_vec(&products_of_json_size(1024)).expect("json");
    let mut group = c.benchmark_group("concurrent_100_gets");
    for pool_size in [1, 4] {
        let store = RedisStore::builder(server.url())
            .pool_size(pool_size)
            .build()
            .expect("store");
        runtime
            .block_on(store.set("hot", value.clone().into(), TTL))
            .expect("seed");
        group.bench_function(format!("pool_{pool_size}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let gets = (0..100).map(|_| store.get("hot"));
                for result in futures::future::join_all(gets).await {
                    assert!(result.expect("get").is_some());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, round_trips, concurrent_gets);
criterion_main!(benches);
