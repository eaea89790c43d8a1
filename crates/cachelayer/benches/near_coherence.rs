//! How long a write through one instance takes to leave another instance's near tier: from
//! the writer's `insert` returning to the old value's removal in each of two reader
//! processes, over real Redis on loopback.
//!
//! Each round, both readers hold the key in their near tiers; the writer overwrites it and
//! notes when its call returned; each reader watches its tier (`near_contains`, no Redis
//! traffic) and notes when the key left it. Both clocks are the machine's wall clock, read
//! in different processes. A reader checks every 20 µs, which bounds the resolution.
//!
//! Run with: `taskset -c 0 cargo bench -p cachelayer --bench near_coherence` (1,000 rounds;
//! the readers and Redis share core 0 with the writer, as the servers of one host would).
//! Under `cargo test` it runs 20 rounds, to prove it still works.

use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cachelayer::Cache;
use cachelayer::near::NearState;
use cachelayer::store::RedisStore;
use cachelayer_testkit::RedisServer;

const KEY: &str = "hot";
const READERS: usize = 2;
/// How often a reader looks at its near tier.
const CHECK_EVERY: Duration = Duration::from_micros(20);

fn main() {
    if let Ok(url) = std::env::var("NEAR_COHERENCE_READER") {
        reader(&url);
        return;
    }
    let rounds = if std::env::args().any(|arg| arg == "--bench") {
        1000
    } else {
        20
    };
    writer(rounds);
}

fn instance(url: &str) -> Cache {
    Cache::builder()
        .store(RedisStore::builder(url).build().expect("store"))
        .namespace("coherence")
        .ttl_jitter(0.0)
        .build()
        .expect("cache")
}

fn now_micros() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_micros()).expect("fits")
}

async fn until_watching(cache: &Cache) {
    while cache.near_stats().state != NearState::Watching {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A reader process: for each `WARM <value>` line, read the key until its near tier holds
/// `value`, print `WARM`, then watch the tier and print `GONE <µs>` when the key leaves it.
fn reader(url: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let cache = instance(url);
        until_watching(&cache).await;
        println!("READY");
        for line in std::io::stdin().lines() {
            let line = line.expect("stdin");
            let Some(value) = line.strip_prefix("WARM ") else {
                panic!("unknown request {line}");
            };
            let value: u64 = value.parse().expect("a number");
            loop {
                let held = cache.get::<u64>(KEY).await;
                if held == Some(value) && cache.near_contains(KEY) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            println!("WARM");
            while cache.near_contains(KEY) {
                // A blocking sleep: a timer of the runtime would round up to a millisecond.
                std::thread::sleep(CHECK_EVERY);
            }
            println!("GONE {}", now_micros());
        }
    });
}

struct Reader {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Reader {
    fn spawn(url: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("bench binary"))
            .env("NEAR_COHERENCE_READER", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn reader");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut reader = Self { child, lines };
        reader.expect("READY");
        reader
    }

    fn expect(&mut self, prefix: &str) -> String {
        let line = self
            .lines
            .next()
            .expect("reader exited")
            .expect("reader output");
        assert!(line.starts_with(prefix), "expected {prefix}, got {line}");
        line
    }

    fn ask(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to reader");
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn writer(rounds: u64) {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache = runtime.block_on(async {
        let cache = instance(&server.url());
        until_watching(&cache).await;
        cache
    });
    let mut readers: Vec<Reader> = (0..READERS).map(|_| Reader::spawn(&server.url())).collect();
    let mut delays: Vec<i64> = Vec::new();
    for round in 0..rounds {
        runtime.block_on(cache.insert(KEY, &round)).expect("insert");
        for reader in &mut readers {
            reader.ask(&format!("WARM {round}"));
            reader.expect("WARM");
        }
        runtime
            .block_on(cache.insert(KEY, &(round + 1_000_000)))
            .expect("insert");
        let returned = now_micros();
        for reader in &mut readers {
            let gone: i64 = reader.expect("GONE ")["GONE ".len()..]
                .parse()
                .expect("a time");
            delays.push(gone - returned);
        }
    }
    delays.sort_unstable();
    let at = |fraction: f64| {
        let index = ((delays.len() - 1) as f64 * fraction).round() as usize;
        delays[index].max(0)
    };
    let early = delays.iter().filter(|delay| **delay < 0).count();
    println!(
        "near_coherence: {} removals ({READERS} readers x {rounds} writes): median {} µs, p99 {} µs, max {} µs; {early} before the writer's call returned (counted as 0)",
        delays.len(),
        at(0.5),
        at(0.99),
        at(1.0),
    );
}
