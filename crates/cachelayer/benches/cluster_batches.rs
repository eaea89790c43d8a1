//! Batch reads on one Redis against a Redis Cluster of three primaries with one replica each,
//! in the same run: `Store::get_many` and the typed `Cache::get_many` of 10 and 100 keys of a
//! ~1.3 KB JSON value. On one Redis a batch is one `MGET`; on a cluster the store sends one
//! `GET` per key, all at once, so each primary's connection pipelines its share
//! (docs/redis-deployments.md, "Batches").
//!
//! Run with: `taskset -c 0 cargo bench -p cachelayer --bench cluster_batches`
//! (the one redis-server and the cluster's six nodes are all pinned to core 1, so the client
//! and the servers never share a core).

#[path = "support/pinned_redis.rs"]
mod pinned_redis;
#[path = "support/product_docs.rs"]
mod product_docs;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use cachelayer::Cache;
use cachelayer::store::{RedisStore, Store, StoreEntry};
use cachelayer_testkit::RedisCluster;
use criterion::{Criterion, criterion_group, criterion_main};
use pinned_redis::{online_cpus, server};
use product_docs::{Product, products_of_json_size};

/// The batch sizes compared.
const SIZES: [usize; 2] = [10, 100];
const TTL: Duration = Duration::from_secs(600);

/// One client thread, so the client stays on the core `taskset` gives the bench.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The default cluster (3 primaries, 3 replicas), every node (all its threads) moved to core 1
/// like the bench's single redis-server. The kit starts the nodes unpinned, so each is found
/// by the `process_id` its `INFO server` reports.
fn pinned_cluster() -> RedisCluster {
    let cluster = RedisCluster::start();
    if online_cpus() > 1 {
        for node in cluster.nodes() {
            let info = cluster.cli_on(node.port(), ["INFO", "server"]);
            let pid = info
                .lines()
                .find_map(|line| line.trim().strip_prefix("process_id:"))
                .unwrap_or_else(|| panic!("node {node} did not report its process_id"));
            let status = Command::new("taskset")
                .args(["-a", "-p", "-c", "1", pid])
                .stdout(std::process::Stdio::null())
                .status()
                .expect("run taskset");
            assert!(
                status.success(),
                "taskset of node {node} (pid {pid}) failed"
            );
        }
    }
    cluster
}

/// A store and a typed cache (no near tier: round trips are what this bench measures) on
/// `url`, with the 100 largest batch's keys stored through both.
fn seeded(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    value: &Bytes,
    docs: &[Product],
) -> (RedisStore, Cache) {
    let store = RedisStore::builder(url)
        .pool_size(1)
        .build()
        .expect("store");
    let entries: Vec<StoreEntry> = raw_keys()
        .into_iter()
        .map(|key| StoreEntry {
            key,
            value: value.clone(),
            ttl: TTL,
        })
        .collect();
    runtime.block_on(store.set_many(&entries)).expect("seed");
    let cache = Cache::builder()
        .store(store.clone())
        .namespace("bench")
        .near_capacity_bytes(0)
        .build()
        .expect("cache");
    runtime
        .block_on(cache.insert_many(typed_keys().iter().map(|key| (key, docs))))
        .expect("seed typed");
    (store, cache)
}

fn raw_keys() -> Vec<String> {
    (0..SIZES[1]).map(|i| format!("batch:{i}")).collect()
}

fn typed_keys() -> Vec<String> {
    (0..SIZES[1]).map(|i| format!("p{i}")).collect()
}

fn batches(c: &mut Criterion) {
    let single = server();
    let cluster = pinned_cluster();
    let runtime = client_runtime();
    let _runtime_context = runtime.enter();
    let docs = products_of_json_size(1024);
    let value: Bytes = serde_json::to_vec(&docs).expect("json").into();
    let deployments = [("one_redis", single.url()), ("cluster", cluster.url())]
        .map(|(name, url)| (name, seeded(&runtime, &url, &value, &docs)));
    let raw = raw_keys();
    let typed = typed_keys();
    for size in SIZES {
        let mut group = c.benchmark_group(format!("get_many_{size}"));
        for (name, (store, cache)) in &deployments {
            let keys = &raw[..size];
            group.bench_function(format!("store/{name}"), |b| {
                b.to_async(&runtime).iter(|| async {
                    let values = store.get_many(keys).await.expect("get_many");
                    // A cluster's batch reads a failed node's keys as misses: none may be.
                    assert!(values.iter().all(Option::is_some));
                })
            });
            let keys = &typed[..size];
            group.bench_function(format!("cache/{name}"), |b| {
                b.to_async(&runtime).iter(|| async {
                    let values = cache.get_many::<Vec<Product>, _>(keys).await;
                    assert!(values.iter().all(Option::is_some));
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, batches);
criterion_main!(benches);
