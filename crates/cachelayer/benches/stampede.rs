//! Stampede simulation against a real redis-server: many concurrent readers in several
//! simulated app processes read one key that expires every second, with a loader that takes
//! 50 ms. For each protection level it reports loader calls per TTL period (the cold start and
//! each expiry) and read latency (p50, p99, p99.9), as ratios to no protection measured in
//! the same run.
//!
//! Run with: `taskset -c 0 cargo bench -p cachelayer --bench stampede`
//! (redis-server is pinned to core 1). Under `cargo test` it runs one short smoke round.

#[path = "support/pinned_redis.rs"]
mod pinned_redis;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cachelayer::store::RedisStore;
use cachelayer::{Cache, LoadOptions, StampedeSettings};
use tokio::time::Instant;

/// Simulated app processes, each a `Cache` with its own Redis connection.
const INSTANCES: usize = 4;
/// Concurrent readers per process.
const READERS: usize = 16;
/// Pause between one reader's reads (a request rate of ~200/s per reader, ~12,800/s total).
const THINK: Duration = Duration::from_millis(5);
/// The key's TTL: it expires this often.
const TTL: Duration = Duration::from_secs(1);
/// How long the loader (a database query) takes.
const LOAD: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Protection {
    /// Naive cache-aside: `get`, and on a miss load and `insert`, with no lock.
    None,
    /// `get_with` with in-process coalescing only.
    Coalescing,
    /// `get_with` with coalescing and the fleet-wide lock.
    Lock,
    /// `get_with` with coalescing, the lock and XFetch early refresh (beta 1).
    EarlyRefresh,
}

impl Protection {
    const ALL: [Protection; 4] = [
        Protection::None,
        Protection::Coalescing,
        Protection::Lock,
        Protection::EarlyRefresh,
    ];

    fn label(self) -> &'static str {
        match self {
            Protection::None => "no protection",
            Protection::Coalescing => "coalescing only",
            Protection::Lock => "coalescing + lock",
            Protection::EarlyRefresh => "coalescing + lock + early refresh",
        }
    }

    fn settings(self) -> StampedeSettings {
        StampedeSettings {
            lock: matches!(self, Protection::Lock | Protection::EarlyRefresh),
            early_refresh_beta: if self == Protection::EarlyRefresh {
                1.0
            } else {
                0.0
            },
            ..StampedeSettings::default()
        }
    }
}

struct Outcome {
    loads: usize,
    expiries: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    reads: usize,
}

impl Outcome {
    fn loads_per_period(&self) -> f64 {
        self.loads as f64 / self.expiries
    }
}

async fn simulate(url: &str, protection: Protection, run: Duration, round: usize) -> Outcome {
    let namespace = format!("stampede{round}{}", protection as u8);
    let caches: Vec<Cache> = (0..INSTANCES)
        .map(|_| {
            Cache::builder()
                .store(RedisStore::builder(url).build().expect("store"))
                .namespace(namespace.clone())
                .ttl_jitter(0.0)
                .command_timeout(Duration::from_secs(1))
                .stampede(protection.settings())
                .build()
                .expect("cache")
        })
        .collect();
    let loads = Arc::new(AtomicUsize::new(0));
    let begun = Instant::now();
    let mut readers = Vec::new();
    for cache in &caches {
        for _ in 0..READERS {
            let (cache, loads) = (cache.clone(), Arc::clone(&loads));
            readers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while begun.elapsed() < run {
                    let started = Instant::now();
                    let value = read(&cache, protection, &loads).await;
                    latencies.push(started.elapsed());
                    assert_eq!(value, 42);
                    tokio::time::sleep(THINK).await;
                }
                latencies
            }));
        }
    }
    let mut latencies = Vec::new();
    for reader in readers {
        latencies.extend(reader.await.expect("reader"));
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Outcome {
        loads: loads.load(Ordering::SeqCst),
        expiries: run.as_secs_f64() / TTL.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        reads: latencies.len(),
    }
}

async fn read(cache: &Cache, protection: Protection, loads: &Arc<AtomicUsize>) -> u64 {
    let load = {
        let loads = Arc::clone(loads);
        async move {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(LOAD).await;
            42u64
        }
    };
    match protection {
        Protection::None => match cache.get::<u64>("hot").await {
            Some(value) => value,
            None => {
                let value = load.await;
                let _ = cache.insert_with_ttl("hot", &value, TTL).await;
                value
            }
        },
        _ => cache.get_with("hot", LoadOptions::ttl(TTL), load).await,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs a smoke round.
    let full = std::env::args().any(|arg| arg == "--bench");
    let (run, rounds) = if full {
        (Duration::from_secs(8), 3)
    } else {
        (Duration::from_millis(1500), 1)
    };
    let server = pinned_redis::server();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut results: Vec<Vec<Outcome>> = Protection::ALL.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, protection) in Protection::ALL.into_iter().enumerate() {
            let outcome = runtime.block_on(simulate(&server.url(), protection, run, round));
            eprintln!(
                "round {} {:<34} loads/period {:>6.2}  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  reads {}",
                round + 1,
                protection.label(),
                outcome.loads_per_period(),
                ms(outcome.p50),
                ms(outcome.p99),
                ms(outcome.p999),
                outcome.reads,
            );
            results[i].push(outcome);
        }
    }
    let summary: Vec<[f64; 4]> = results
        .iter()
        .map(|outcomes| {
            [
                median(outcomes.iter().map(Outcome::loads_per_period).collect()),
                median(outcomes.iter().map(|o| ms(o.p50)).collect()),
                median(outcomes.iter().map(|o| ms(o.p99)).collect()),
                median(outcomes.iter().map(|o| ms(o.p999)).collect()),
            ]
        })
        .collect();
    let [base_loads, _, base_p99, base_p999] = summary[0];
    println!(
        "{INSTANCES} processes x {READERS} readers, TTL {} ms, loader {} ms, {} s per run, median of {rounds}",
        TTL.as_millis(),
        LOAD.as_millis(),
        run.as_secs_f64()
    );
    println!();
    println!(
        "| protection | loader calls per TTL period | p50 read | p99 read | p99.9 read | loader calls vs none | p99 vs none | p99.9 vs none |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (protection, [loads, p50, p99, p999]) in Protection::ALL.iter().zip(&summary) {
        println!(
            "| {} | {loads:.2} | {p50:.3} ms | {p99:.3} ms | {p999:.3} ms | {:.3}x | {:.2}x | {:.2}x |",
            protection.label(),
            loads / base_loads,
            p99 / base_p99,
            p999 / base_p999,
        );
    }
}
