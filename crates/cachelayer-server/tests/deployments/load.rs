//! Request loops reading products through `serve` instances while a test breaks their
//! Redis: every answer that is not a 200 with the product asked for is recorded as a
//! failure, and requests, hits and the slowest answer are counted per phase of the test.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::time::{Duration, Instant};

use crate::support::{PATIENCE, Server, client, x_cache};

/// One GET of product `id` at `base`: its `X-Cache`, or what was wrong (anything but a 200
/// with that product).
pub(crate) async fn read_product(
    client: &reqwest::Client,
    base: &str,
    id: i64,
) -> Result<String, String> {
    let url = format!("{base}/products/{id}");
    let response = client.get(&url).send().await;
    let response = response.map_err(|err| format!("GET {url}: {err}"))?;
    let (status, cache) = (response.status(), x_cache(&response));
    match response.json::<Value>().await {
        Ok(body) if status == StatusCode::OK && body["id"] == id => Ok(cache),
        body => Err(format!("GET {url}: {status} {cache} {body:?}")),
    }
}

/// What the request loops of a load saw, per phase (before the kill, the outage, after the
/// promotion).
#[derive(Default)]
pub(crate) struct Tally {
    /// What the watched products are, for the report.
    watched: String,
    pub(crate) requests: [AtomicU64; 3],
    /// Hits of products not on the watched shard.
    pub(crate) other_hits: [AtomicU64; 3],
    /// Hits of products on the watched shard.
    watched_hits: [AtomicU64; 3],
    slowest_ms: [AtomicU64; 3],
    /// Every request that did not answer 200 with the product asked for.
    failures: Mutex<Vec<String>>,
}

/// Concurrent request loops reading products through the servers until stopped.
pub(crate) struct Load {
    /// 0 before the kill, 1 during the outage, 2 after the promotion; 3 stops the loops.
    phase: Arc<AtomicUsize>,
    pub(crate) tally: Arc<Tally>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `loops` loops, each reading every id of `ids` in turn, through each of `servers` in
    /// turn; hits of `watched` ids (described as `what`, for the report) are counted apart.
    pub(crate) fn start(
        servers: &[&Server],
        ids: &[i64],
        (what, watched): (&str, &BTreeSet<i64>),
        loops: usize,
    ) -> Self {
        let phase = Arc::new(AtomicUsize::new(0));
        let tally = Arc::new(Tally {
            watched: what.to_owned(),
            ..Tally::default()
        });
        let bases: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.base.clone()).collect());
        let ids: Arc<Vec<i64>> = Arc::new(ids.to_vec());
        let watched = Arc::new(watched.clone());
        let loops = (0..loops)
            .map(|n| {
                let (phase, tally) = (phase.clone(), tally.clone());
                let (bases, ids, watched) = (bases.clone(), ids.clone(), watched.clone());
                tokio::spawn(async move {
                    let client = client();
                    // Each loop starts elsewhere in the ids, so together they cover them all.
                    let mut turn = n * ids.len() / 4 + n;
                    loop {
                        let at = phase.load(Ordering::Relaxed);
                        if at == 3 {
                            break;
                        }
                        let id = ids[turn % ids.len()];
                        let base = &bases[(turn / ids.len() + n) % bases.len()];
                        turn += 1;
                        let started = Instant::now();
                        let outcome = read_product(&client, base, id).await;
                        let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                        tally.slowest_ms[at].fetch_max(took, Ordering::Relaxed);
                        tally.requests[at].fetch_add(1, Ordering::Relaxed);
                        match outcome {
                            Ok(cache) if cache == "HIT" => {
                                let hits = if watched.contains(&id) {
                                    &tally.watched_hits
                                } else {
                                    &tally.other_hits
                                };
                                hits[at].fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(failure) => {
                                let mut failures = tally.failures.lock().expect("failures");
                                failures.push(format!("phase {at}: {failure}"));
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            phase,
            tally,
            loops,
        }
    }

    /// Count what follows as the next phase.
    pub(crate) fn next_phase(&self) {
        self.phase.fetch_add(1, Ordering::Relaxed);
    }

    /// Wait until the loops have answered `more` requests beyond the count now (bounded).
    pub(crate) async fn until_more_requests(&self, more: u64) {
        let answered = || -> u64 {
            self.tally
                .requests
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .sum()
        };
        let (target, deadline) = (answered() + more, Instant::now() + PATIENCE);
        while answered() < target {
            assert!(Instant::now() < deadline, "the request loops stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop the loops, wait for them, and return the tally.
    pub(crate) async fn finish(self) -> Arc<Tally> {
        self.phase.store(3, Ordering::Relaxed);
        for request_loop in self.loops {
            request_loop.await.expect("a request loop panicked");
        }
        self.tally
    }
}

impl Tally {
    pub(crate) fn report(&self) -> String {
        let phases = ["before the kill", "outage", "after the promotion"];
        let at = |counts: &[AtomicU64; 3], p: usize| counts[p].load(Ordering::Relaxed);
        (0..3)
            .map(|p| {
                format!(
                    "{}: {} requests, {} hits {}, {} on the others, slowest {} ms",
                    phases[p],
                    at(&self.requests, p),
                    at(&self.watched_hits, p),
                    self.watched,
                    at(&self.other_hits, p),
                    at(&self.slowest_ms, p),
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("failures").clone()
    }
}
