//! A hot typed read of a 1 KB document, beside moka's own `get` in the same run: what the
//! near tier costs over the map it is built on.
//!
//! - `moka_get_arc`: a `moka::sync::Cache<String, Arc<T>>` lookup, the floor;
//! - `moka_get_arc_like_the_tier`: the same with the tier's policies (a weigher and a
//!   per-entry expiry), which make moka read its clock and keep its timer queues;
//! - `moka_get_then_decode`: a moka lookup of the JSON bytes, then `serde_json`;
//! - `memory_store_get`: `Cache::get` on the in-process store (decodes every read);
//! - `near_get`: `Cache::get` over Redis, answered by the near tier (decodes every read);
//! - `near_get_shared`: `Cache::get_shared` over Redis, answered by the near tier from its
//!   decoded copy: no decoding, no copy of the value.
//!
//! Run with: `taskset -c 0 cargo bench -p cachelayer --bench near_tier` (its redis-server,
//! idle during the measurement, goes to core 1).

#[path = "support/pinned_redis.rs"]
mod pinned_redis;
#[path = "support/product_docs.rs"]
mod product_docs;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cachelayer::Cache;
use cachelayer::near::NearState;
use cachelayer::store::RedisStore;
use criterion::{Criterion, criterion_group, criterion_main};
use pinned_redis::server;
use product_docs::{Product, products_of_json_size};

const KEY: &str = "product:7";

fn near_tier(c: &mut Criterion) {
    let server = server();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _runtime_context = runtime.enter();
    let doc: Vec<Product> = products_of_json_size(1024);
    let json = Bytes::from(serde_json::to_vec(&doc).expect("json"));

    let moka_arc: moka::sync::Cache<String, Arc<Vec<Product>>> = moka::sync::Cache::new(1000);
    moka_arc.insert(KEY.to_owned(), Arc::new(doc.clone()));
    let moka_like_tier: moka::sync::Cache<String, Arc<Vec<Product>>> = moka::sync::Cache::builder()
        .max_capacity(64 << 20)
        .weigher(|key: &String, _value: &Arc<Vec<Product>>| {
            u32::try_from(key.len() + 1024 + 96).unwrap_or(u32::MAX)
        })
        .expire_after(UntilDeadline)
        .build();
    moka_like_tier.insert(KEY.to_owned(), Arc::new(doc.clone()));
    let moka_bytes: moka::sync::Cache<String, Bytes> = moka::sync::Cache::new(1000);
    moka_bytes.insert(KEY.to_owned(), json);
    let key = KEY.to_owned();

    let memory = Cache::builder().build().expect("cache");
    let near = Cache::builder()
        .store(RedisStore::builder(server.url()).build().expect("store"))
        .namespace("bench")
        .build()
        .expect("cache");
    runtime.block_on(async {
        memory.insert(KEY, &doc).await.expect("insert");
        while near.near_stats().state != NearState::Watching {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        near.insert(KEY, &doc).await.expect("insert");
        while !near.near_contains(KEY) {
            near.get::<Vec<Product>>(KEY).await.expect("stored");
        }
    });

    let mut group = c.benchmark_group("hot_typed_read_1kb");
    group.bench_function("moka_get_arc", |b| {
        b.to_async(&runtime)
            .iter(|| async { moka_arc.get(&key).expect("held") })
    });
    group.bench_function("moka_get_arc_like_the_tier", |b| {
        b.to_async(&runtime)
            .iter(|| async { moka_like_tier.get(&key).expect("held") })
    });
    group.bench_function("moka_get_then_decode", |b| {
        b.to_async(&runtime).iter(|| async {
            let bytes = moka_bytes.get(&key).expect("held");
            serde_json::from_slice::<Vec<Product>>(&bytes).expect("json")
        })
    });
    group.bench_function("memory_store_get", |b| {
        b.to_async(&runtime)
            .iter(|| async { memory.get::<Vec<Product>>(KEY).await.expect("hit") })
    });
    group.bench_function("near_get", |b| {
        b.to_async(&runtime)
            .iter(|| async { near.get::<Vec<Product>>(KEY).await.expect("hit") })
    });
    group.bench_function("near_get_shared", |b| {
        b.to_async(&runtime)
            .iter(|| async { near.get_shared::<Vec<Product>>(KEY).await.expect("hit") })
    });
    group.finish();
    assert!(
        near.near_contains(KEY),
        "the near reads were answered from memory"
    );
}

/// A per-entry expiry, as the near tier's (which expires each entry with its Redis TTL).
struct UntilDeadline;

impl moka::Expiry<String, Arc<Vec<Product>>> for UntilDeadline {
    fn expire_after_create(
        &self,
        _key: &String,
        _value: &Arc<Vec<Product>>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(600))
    }
}

criterion_group!(benches, near_tier);
criterion_main!(benches);
