//! Beyond one Redis: the store on a real local Redis Cluster (three primaries, three
//! replicas) and on a primary found through real Sentinels. What only these deployments can
//! show is here: near tiers kept coherent by every primary, slot migrations followed without
//! an error, a primary killed under load (no failed call, the healthy shards served
//! throughout, the cache back within seconds of the promotion), Sentinel failover followed,
//! and TLS and ACL on a cluster. The behaviour every store shares runs on a cluster too, in
//! each suite's `on_cluster` test (`support::on_every_store!`).
//!
//! Waits are bounded waits on the condition itself; the recovery bounds are generous for a
//! loaded CI machine, and the measured times are printed for BENCHMARKS.md.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachelayer::near::NearState;
use cachelayer::store::{RedisStore, Store};
use cachelayer::{BreakerState, Cache};
use cachelayer_testkit::{RedisCluster, RedisSentinel};
use futures::FutureExt;
use support::redis_store;

const MINUTE: Duration = Duration::from_secs(60);
/// The longest a change may take to reach another instance's near tier.
const PROPAGATION_BOUND: Duration = Duration::from_secs(2);
/// How long the cluster may take to promote a replica after its primary died (node timeout
/// of 1 s, then the election), with room for a loaded machine.
const PROMOTION_BOUND: Duration = Duration::from_secs(20);
/// How soon after the promotion the cache must serve the dead primary's keys again.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);

fn instance(url: &str) -> Cache {
    Cache::builder()
        .store(redis_store(url))
        .namespace("deploy")
        .ttl_jitter(0.0)
        .command_timeout(Duration::from_millis(500))
        .build()
        .expect("cache")
}

/// Wait until `condition` holds, failing after `bound`; returns how long it took.
async fn eventually(
    what: &str,
    bound: Duration,
    mut condition: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// One key (relative to `cache`) on each primary of `cluster`, in the primaries' order.
fn key_on_each_primary(cluster: &RedisCluster, cache: &Cache) -> Vec<String> {
    let primaries = cluster.primary_ports();
    primaries
        .iter()
        .map(|&port| {
            (0..)
                .map(|i| format!("k{i}"))
                .find(|key| cluster.primary_port_for(&cache.full_key(key.as_str())) == port)
                .expect("a key on every primary")
        })
        .collect()
}

/// Writes through one instance, and writes behind the cache's back on any node, reach the
/// other instance's near tier for keys on every primary: each primary reports its own keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_tiers_stay_coherent_on_every_primary() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let (writer, reader) = (instance(&cluster.url()), instance(&cluster.url()));
    for cache in [&writer, &reader] {
        eventually("the near tier watches", PROPAGATION_BOUND, async || {
            cache.near_stats().state == NearState::Watching
        })
        .await;
    }
    let keys = key_on_each_primary(&cluster, &writer);
    assert_eq!(keys.len(), 3);
    for key in &keys {
        writer.insert(key.as_str(), "v1").await.expect("insert");
        eventually("the reader keeps it", PROPAGATION_BOUND, async || {
            reader.get::<String>(key.as_str()).await.as_deref() == Some("v1")
                && reader.near_contains(key.as_str())
        })
        .await;
    }
    for key in &keys {
        writer.insert(key.as_str(), "v2").await.expect("insert");
        eventually(
            "the write reaches the reader",
            PROPAGATION_BOUND,
            async || reader.get::<String>(key.as_str()).await.as_deref() == Some("v2"),
        )
        .await;
    }
    // Behind the cache's back: a delete through redis-cli on the key's own node.
    for key in &keys {
        let full = writer.full_key(key.as_str());
        assert_eq!(cluster.cli_cluster(["DEL", full.as_str()]), "1");
        eventually(
            "the delete reaches the reader",
            PROPAGATION_BOUND,
            async || reader.get::<String>(key.as_str()).await.is_none(),
        )
        .await;
    }
}

/// A slot moved from one primary to another while it is read and written (`ASK`, then
/// `MOVED` redirections): no call fails, no value is lost, and the near tiers follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migration_is_followed_without_errors() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let store = redis_store(&cluster.url());
    store.ping().await.expect("ping");
    let reader = instance(&cluster.url());
    eventually("the near tier watches", PROPAGATION_BOUND, async || {
        reader.near_stats().state == NearState::Watching
    })
    .await;
    // Keys of one slot (a hash tag), some written before the move.
    let keys: Vec<String> = (0..50)
        .map(|i| format!("deploy:v1:{{moving}}:{i}"))
        .collect();
    for key in &keys[..25] {
        store.set(key, "before".into(), MINUTE).await.expect("set");
    }
    let slot = cluster.cli_cluster(["CLUSTER", "KEYSLOT", keys[0].as_str()]);
    let source = cluster.primary_port_for(&keys[0]);
    let target = *cluster
        .primary_ports()
        .iter()
        .find(|&&port| port != source)
        .expect("another primary");
    let id_of = |port| cluster.cli_on(port, ["CLUSTER", "MYID"]);
    let (source_id, target_id) = (id_of(source), id_of(target));

    // Calls run throughout the move; any error fails the test.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (store, keys, stop, calls) = (store.clone(), keys.clone(), stop.clone(), calls.clone());
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                for key in &keys[25..] {
                    store
                        .set(key, format!("during {round}").into(), MINUTE)
                        .await
                        .expect("a write during the move");
                    let read = store.get(key).await.expect("a read during the move");
                    assert_eq!(read.as_deref(), Some(format!("during {round}").as_bytes()));
                    calls.fetch_add(2, Ordering::Relaxed);
                }
                let read = store
                    .get_many(&keys[..25])
                    .await
                    .expect("a batch read during the move");
                assert!(
                    read.iter()
                        .all(|value| value.as_deref() == Some(&b"before"[..])),
                    "{read:?}"
                );
            }
        })
    };
    tokio::task::block_in_place(|| {
        assert_eq!(
            cluster.cli_on(
                target,
                [
                    "CLUSTER",
                    "SETSLOT",
                    slot.as_str(),
                    "IMPORTING",
                    source_id.as_str()
                ]
            ),
            "OK"
        );
        assert_eq!(
            cluster.cli_on(
                source,
                [
                    "CLUSTER",
                    "SETSLOT",
                    slot.as_str(),
                    "MIGRATING",
                    target_id.as_str()
                ]
            ),
            "OK"
        );
        loop {
            let batch = cluster.cli_on(source, ["CLUSTER", "GETKEYSINSLOT", slot.as_str(), "10"]);
            let moving: Vec<&str> = batch.lines().filter(|line| !line.is_empty()).collect();
            if moving.is_empty() {
                break;
            }
            let target_port = target.to_string();
            let mut migrate = vec![
                "MIGRATE",
                "127.0.0.1",
                target_port.as_str(),
                "",
                "0",
                "5000",
                "KEYS",
            ];
            migrate.extend(moving);
            assert_eq!(cluster.cli_on(source, migrate), "OK");
        }
        // The new owner first, then the old one (as `redis-cli --cluster` does): the other
        // order has each send clients to the other until the target takes the slot.
        let mut owners = vec![target, source];
        owners.extend(
            cluster
                .primary_ports()
                .into_iter()
                .filter(|port| ![target, source].contains(port)),
        );
        for port in owners {
            assert_eq!(
                cluster.cli_on(
                    port,
                    [
                        "CLUSTER",
                        "SETSLOT",
                        slot.as_str(),
                        "NODE",
                        target_id.as_str()
                    ]
                ),
                "OK"
            );
        }
    });
    // A few more rounds on the new owner, then stop.
    let moved_at = calls.load(Ordering::Relaxed);
    eventually(
        "calls go on after the move",
        Duration::from_secs(10),
        async || calls.load(Ordering::Relaxed) > moved_at + 100,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("no call failed during the move");
    assert_eq!(cluster.primary_port_for(&keys[0]), target);
    // The near tier follows keys to their new node: a write there reaches it.
    let key = "{moving}:near";
    reader.insert(key, "v1").await.expect("insert");
    assert_eq!(reader.get::<String>(key).await.as_deref(), Some("v1"));
    let full = reader.full_key(key);
    cluster.cli_cluster(["SET", full.as_str(), "garbage-from-outside"]);
    eventually(
        "the outside write reaches the near tier",
        PROPAGATION_BOUND,
        async || reader.get::<String>(key).await.is_none(),
    )
    .await;
}

/// A primary killed while every shard is read: no call fails (each returns the loader's
/// value), the other primaries keep serving hits throughout (their breakers stay closed),
/// the dead one's breaker opens, and the cache serves its keys again within seconds of the
/// replica's promotion; the near tier watches the new set of primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_costs_only_its_own_keys() {
    let mut cluster = tokio::task::block_in_place(RedisCluster::start);
    let cache = Cache::builder()
        .store(
            RedisStore::builder(cluster.url())
                .connect_timeout(Duration::from_millis(200))
                .command_timeout(Duration::from_millis(200))
                .node_circuit_breaker(3, Duration::from_millis(250))
                .build()
                .expect("store"),
        )
        .namespace("deploy")
        .ttl_jitter(0.0)
        .command_timeout(Duration::from_millis(200))
        // Without the near tier, every read reaches Redis: a hit says the shard served it.
        .near_capacity_bytes(0)
        .build()
        .expect("cache");
    let keys = key_on_each_primary(&cluster, &cache);
    for key in &keys {
        cache.insert(key.as_str(), key).await.expect("insert");
    }
    // Let the replicas copy the keys, so the promoted one has them.
    for port in cluster.primary_ports() {
        cluster.cli_on(port, ["WAIT", "1", "2000"]);
    }
    eventually(
        "the store knows the slot table",
        Duration::from_secs(5),
        async || {
            cache
                .store()
                .node_breakers()
                .is_some_and(|nodes| nodes.len() == 3)
        },
    )
    .await;
    // An instance with a near tier, watching every primary before the kill.
    let tracked = instance(&cluster.url());
    eventually("the near tier watches", PROPAGATION_BOUND, async || {
        tracked.near_stats().state == NearState::Watching
    })
    .await;
    let doomed = cluster.primary_ports()[0];
    let doomed_key = &keys[0];

    // Readers of every shard, counting the hits of the healthy shards' keys and any miss.
    let stop = Arc::new(AtomicBool::new(false));
    let healthy_misses = Arc::new(AtomicU64::new(0));
    let healthy_hits = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (cache, keys, stop) = (cache.clone(), keys.clone(), stop.clone());
            let (misses, hits) = (healthy_misses.clone(), healthy_hits.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // Calls refused at once never wait: yield, so the runtime can stop us.
                    tokio::task::yield_now().await;
                    for (i, key) in keys.iter().enumerate() {
                        let loaded = Arc::new(AtomicBool::new(false));
                        let flag = loaded.clone();
                        let value: String = cache
                            .get_with(key.as_str(), MINUTE, {
                                let key = key.clone();
                                async move {
                                    flag.store(true, Ordering::Relaxed);
                                    key
                                }
                            })
                            .await;
                        assert_eq!(&value, key, "every call answers with the right value");
                        if i > 0 {
                            let counter = if loaded.load(Ordering::Relaxed) {
                                &misses
                            } else {
                                &hits
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    eventually("readers run", Duration::from_secs(5), async || {
        healthy_hits.load(Ordering::Relaxed) > 100
    })
    .await;

    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.kill_node(doomed));
    let doomed_node = format!("127.0.0.1:{doomed}");
    eventually(
        "the dead primary's breaker opens",
        Duration::from_secs(5),
        async || {
            cache.store().node_breakers().is_some_and(|nodes| {
                nodes
                    .iter()
                    .any(|node| node.node == doomed_node && node.state != BreakerState::Closed)
            })
        },
    )
    .await;
    let hits_before = healthy_hits.load(Ordering::Relaxed);
    let promotion = tokio::task::block_in_place(|| cluster.wait_healthy(PROMOTION_BOUND));
    let hits_during_outage = healthy_hits.load(Ordering::Relaxed) - hits_before;
    let recovery = eventually(
        "the dead primary's keys are hits again",
        RECOVERY_BOUND,
        async || {
            let full = cache.full_key(doomed_key.as_str());
            matches!(cache.store().get(&full).await, Ok(Some(_)))
                && cache.get::<String>(doomed_key.as_str()).await.as_deref()
                    == Some(doomed_key.as_str())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader
            .await
            .expect("no call failed and every value was right");
    }
    eprintln!(
        "cluster failover: promotion {promotion:?} after the kill ({:?} in all), cache back {recovery:?} after the promotion; healthy-shard hits during the outage: {hits_during_outage}, misses: {}",
        killed_at.elapsed() - recovery,
        healthy_misses.load(Ordering::Relaxed)
    );
    assert!(
        hits_during_outage > 0,
        "the healthy shards kept serving hits"
    );
    assert_eq!(
        healthy_misses.load(Ordering::Relaxed),
        0,
        "no key of a healthy shard missed"
    );
    // The same instance's change tracking watches the new primaries.
    eventually(
        "the near tier watches the new primaries",
        PROPAGATION_BOUND * 2,
        async || tracked.near_stats().state == NearState::Watching,
    )
    .await;
    for cache in [&cache, &tracked] {
        eventually("every breaker closes", RECOVERY_BOUND, async || {
            cache.breaker_state() == BreakerState::Closed
        })
        .await;
    }
}

/// TLS and an ACL user on a cluster, as on one Redis: every node is reached over TLS with
/// the user's credentials, batches span the nodes, and change tracking runs on each primary.
/// A wrong password is an error of the call, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_an_acl_user() {
    let cluster = tokio::task::block_in_place(|| {
        RedisCluster::builder()
            .tls()
            .acl_user("app", "s3cret-pass")
            .require_auth()
            .start()
    });
    let ca = cluster
        .certificates()
        .expect("certificates")
        .ca_cert_pem
        .clone();
    let store = RedisStore::builder(cluster.url())
        .tls_root_cert_pem(ca.clone())
        .build()
        .expect("store");
    // The first call dials every node (TLS, then AUTH): on a loaded machine that can take
    // longer than the command timeout, and the cache would fail open (drop the writes).
    store.ping().await.expect("ping over TLS with the ACL user");
    let cache = Cache::builder()
        .store(store)
        .namespace("deploy")
        .build()
        .expect("cache");
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    cache
        .insert_many(keys.iter().map(|key| (key.as_str(), key.clone())))
        .await
        .expect("a batch write over TLS");
    let read: Vec<Option<String>> = cache.get_many(keys.iter().map(String::as_str)).await;
    assert!(
        read.iter()
            .zip(&keys)
            .all(|(value, key)| value.as_ref() == Some(key))
    );
    eventually(
        "tracking runs on every primary",
        PROPAGATION_BOUND,
        async || cache.near_stats().state == NearState::Watching,
    )
    .await;

    let wrong = cluster.url().replace("s3cret-pass", "wrong");
    let refused = RedisStore::builder(wrong)
        .tls_root_cert_pem(ca)
        .build()
        .expect("a lazy store");
    let err = refused
        .get("k0")
        .await
        .expect_err("a wrong password is refused");
    assert!(!err.to_string().contains("s3cret-pass"), "{err}");
}

/// Through Sentinels: the store finds the primary, and when it is killed and a replica
/// promoted, the store follows: no call fails meanwhile (each returns the loader's value),
/// and the cache stores and hits again within seconds of the failover. With an ACL user on
/// the data nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed() {
    let mut sentinels = tokio::task::block_in_place(|| {
        RedisSentinel::builder()
            .acl_user("app", "s3cret-pass")
            .require_auth()
            .start()
    });
    let cache = Cache::builder()
        .store(redis_store(&sentinels.url()))
        .namespace("deploy")
        .ttl_jitter(0.0)
        .command_timeout(Duration::from_millis(500))
        .build()
        .expect("cache");
    cache
        .insert("k", "v1")
        .await
        .expect("insert through the Sentinels' primary");
    assert_eq!(cache.get::<String>("k").await.as_deref(), Some("v1"));
    eventually(
        "tracking watches the primary",
        PROPAGATION_BOUND,
        async || cache.near_stats().state == NearState::Watching,
    )
    .await;

    // Calls all through the failover: each answers with the right value, and none waits
    // longer than the command timeout and a Sentinel lookup (fail fast, not hang).
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (cache, stop) = (cache.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut calls, mut slowest) = (0u64, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let key = format!("during:{}", calls % 20);
                let expected = key.clone();
                let value: String = cache
                    .get_with(key.as_str(), MINUTE, async move { expected })
                    .await;
                assert_eq!(value, key);
                slowest = slowest.max(started.elapsed());
                calls += 1;
                tokio::task::yield_now().await;
            }
            (calls, slowest)
        })
    };
    let old = tokio::task::block_in_place(|| sentinels.kill_primary());
    let failing_over = Instant::now();
    let (new, failover) =
        tokio::task::block_in_place(|| sentinels.wait_for_failover(old, PROMOTION_BOUND));
    assert_ne!(new, old);
    let recovery = eventually(
        "the cache stores and hits on the new primary",
        RECOVERY_BOUND,
        async || {
            cache.insert("after", "v2").await.is_ok()
                && matches!(
                    cache.store().get(&cache.full_key("after")).await,
                    Ok(Some(_))
                )
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (calls, slowest) = caller
        .await
        .expect("every call answered with the right value");
    assert!(calls > 10, "calls ran through the failover: {calls}");
    assert!(
        slowest < Duration::from_secs(2),
        "a call waited {slowest:?}"
    );
    report_sentinel_failover(failover, recovery, failing_over.elapsed());
    eventually(
        "tracking watches the new primary",
        PROPAGATION_BOUND * 2,
        async || cache.near_stats().state == NearState::Watching,
    )
    .await;
    // Writes on the new primary reach the near tier: coherence holds after the failover.
    cache.insert("k", "v3").await.expect("insert");
    assert_eq!(cache.get::<String>("k").await.as_deref(), Some("v3"));
    let full = cache.full_key("k");
    sentinels.cli_on(new, ["DEL", full.as_str()]);
    eventually(
        "an outside delete reaches the near tier",
        PROPAGATION_BOUND,
        async || cache.get::<String>("k").await.is_none(),
    )
    .await;
}

fn report_sentinel_failover(failover: Duration, recovery: Duration, total: Duration) {
    eprintln!(
        "sentinel failover: promoted {failover:?} after the kill; cache back {recovery:?} after the promotion ({total:?} in all)"
    );
}

/// A command that may have run is never sent again: a node that executes a `GET` and then
/// drops the connection (its reply is over the client output limit) sees that `GET` once,
/// and the call fails (a miss for the cache), rather than running again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_may_have_run_are_not_sent_again() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let store = redis_store(&cluster.url());
    store.ping().await.expect("ping");
    let key = "deploy:v1:big";
    store
        .set(key, vec![b'x'; 64 * 1024].into(), MINUTE)
        .await
        .expect("set");
    let node = cluster.primary_port_for(key);
    assert_eq!(
        cluster.cli_on(
            node,
            [
                "CONFIG",
                "SET",
                "client-output-buffer-limit",
                "normal 1024 1024 0"
            ]
        ),
        "OK"
    );
    cluster.reset_stats(node);
    let read = store.get(key).await;
    assert!(read.is_err(), "the node dropped the connection: {read:?}");
    assert_eq!(
        cluster.command_calls(node, "get"),
        1,
        "the GET ran once and was not sent again"
    );
}

/// A call its caller drops at once (a client that disconnects cancels its request) says
/// nothing of its node, however many there are; calls dropped once they have run for most of
/// the command timeout (the cache's own timer fires first on a node that hangs) open their
/// node's breaker, and only that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_calls_given_up_for_being_slow_open_a_breaker() {
    let mut cluster = tokio::task::block_in_place(|| {
        RedisCluster::builder()
            .primaries(3)
            .replicas_per_primary(0)
            .start()
    });
    let command_timeout = Duration::from_millis(200);
    let store = RedisStore::builder(cluster.url())
        .command_timeout(command_timeout)
        .node_circuit_breaker(3, MINUTE)
        .build()
        .expect("store");
    let key = "deploy:v1:k";
    store.set(key, "v".into(), MINUTE).await.expect("set");
    let node = cluster.primary_port_for(key);
    let breaker_of = |store: &RedisStore, port: u16| {
        let breakers = store.node_breakers().expect("a breaker per primary");
        assert_eq!(breakers.len(), 3, "{breakers:?}");
        breakers
            .into_iter()
            .find(|breaker| breaker.node.ends_with(&format!(":{port}")))
            .unwrap_or_else(|| panic!("no breaker for node {port}"))
            .state
    };

    // Admitted and sent on the first poll, then abandoned.
    let mut abandoned = 0;
    for _ in 0..100 {
        if store.get(key).now_or_never().is_none() {
            abandoned += 1;
        }
    }
    assert!(
        abandoned >= 50,
        "only {abandoned} of 100 calls were in flight when dropped"
    );
    assert_eq!(breaker_of(&store, node), BreakerState::Closed);
    let read = store.get(key).await.expect("get after the cancelled calls");
    assert_eq!(read.as_deref(), Some(&b"v"[..]));

    // Given up for being slow, before the store's own timeout fires.
    cluster.pause_node(node);
    let give_up = command_timeout.mul_f64(0.95);
    let calls = (0..3).map(|_| tokio::time::timeout(give_up, store.get(key)));
    for outcome in futures::future::join_all(calls).await {
        assert!(outcome.is_err(), "a paused node answered: {outcome:?}");
    }
    let states: Vec<(bool, BreakerState)> = cluster
        .primary_ports()
        .into_iter()
        .map(|port| (port == node, breaker_of(&store, port)))
        .collect();
    cluster.resume_node(node);
    for (paused, state) in states {
        let expected = if paused {
            BreakerState::Open
        } else {
            BreakerState::Closed
        };
        assert_eq!(state, expected, "paused: {paused}");
    }
}
