//! End-to-end tests of the binary on a real local Redis Cluster (three primaries, three
//! replicas) and on a primary found through real Sentinels (`--redis-url redis+cluster://`,
//! `redis+sentinel://`), over HTTP: `serve` caches on a cluster, shared by two instances,
//! never read stale through one after a write through the other, healthy with change
//! tracking on; a primary killed (or the Sentinels' primary) under load costs no request,
//! and the lost shard is hits again within seconds of the promotion; `proxy` on a cluster
//! shares its cache and its URL and tag purges. The library's own tests of these
//! deployments are `crates/cachelayer/tests/redis_deployments.rs`; refusals of malformed
//! URLs at start are in `startup.rs`. No mocks; waits are bounded waits on the condition
//! itself; failover and recovery times are printed (`--nocapture`).

mod support;

// The request loops the failover tests run, and what they saw.
#[path = "deployments/load.rs"]
mod load;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use cachelayer_testkit::origin::{Scripted, ScriptedOrigin};
use cachelayer_testkit::{RedisCluster, RedisSentinel};
use load::{Load, read_product};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{PATIENCE, Server, TestDatabase, client, counter, get, get_via, metric_once};
use tokio::time::Instant;

/// How long the cluster may take to promote a replica after its primary died (node timeout
/// of 1 s, then the election), or the Sentinels to fail over, with room for a loaded machine.
const PROMOTION_BOUND: Duration = Duration::from_secs(20);
/// How soon after the promotion the cache must serve the dead primary's products again.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);
/// The sample products every `serve` here seeds (`--seed 50` in the support module).
const PRODUCTS: i64 = 50;
const TOKEN: &str = "deployments-admin-token";

/// Polls `/health` until `wanted` holds of its body (an observable state; bounded by
/// [`PATIENCE`]); the body then.
async fn until_health(server: &Server, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, _, body) = get(server, "/health").await;
        if wanted(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "health never {what}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/health` says healthy, with Redis reachable and its breaker closed.
fn healthy(body: &Value) -> bool {
    body["status"] == "healthy"
        && body["cache"]["redis"]["reachable"] == true
        && body["cache"]["redis"]["breaker"] == "closed"
}

/// The product id a value key of `serve` names (`<namespace>:v<version>:product:<id>`; not
/// a load lock's `<namespace>:lock:v<version>:product:<id>`).
fn product_of(key: &str) -> Option<i64> {
    match key.split(':').collect::<Vec<_>>()[..] {
        [_namespace, version, "product", id] if version.starts_with('v') => id.parse().ok(),
        _ => None,
    }
}

/// Each cached product's store key and the port of the primary holding it, read from every
/// primary (`KEYS` on a test's own cluster, where the products are all there is).
fn product_keys_by_primary(cluster: &RedisCluster) -> BTreeMap<i64, (String, u16)> {
    let mut found = BTreeMap::new();
    for port in cluster.primary_ports() {
        for key in cluster.cli_on(port, ["KEYS", "*product:*"]).lines() {
            if let Some(id) = product_of(key) {
                found.insert(id, (key.to_owned(), port));
            }
        }
    }
    found
}

/// `serve` on a Redis Cluster, two instances sharing it and one PostgreSQL database: reads
/// are MISS then HIT, and a read through the other instance is a HIT too, for products on
/// every primary; `/health` is healthy with change tracking watching; a PATCH through one
/// instance is read fresh through the other as soon as it has returned (never the cached
/// copy), for a product on each primary, round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_a_cluster_caches_and_stays_coherent_across_instances() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let db = TestDatabase::postgres().await;
    let a = Server::start(&db, &["--redis-url", &cluster.url()]);
    let b = Server::start(&db, &["--redis-url", &cluster.url()]);
    for server in [&a, &b] {
        let body = until_health(server, "healthy and watching", |body| {
            healthy(body) && body["cache"]["redis"]["near"]["state"] == "watching"
        })
        .await;
        assert_eq!(body["cache"]["store"], "redis", "{body}");
    }

    for id in 1..=12 {
        let path = format!("/products/{id}");
        let (status, first, body) = get(&a, &path).await;
        assert_eq!((status, first.as_str()), (StatusCode::OK, "MISS"), "{path}");
        assert_eq!(body["id"], id);
        let (_, second, again) = get(&a, &path).await;
        assert_eq!((second.as_str(), &again), ("HIT", &body), "{path} on a");
        let (_, other, shared) = get(&b, &path).await;
        assert_eq!((other.as_str(), &shared), ("HIT", &body), "{path} on b");
    }
    let keys = tokio::task::block_in_place(|| product_keys_by_primary(&cluster));
    // One product on each primary (12 ids spread over 16384 slots; checked, not assumed).
    let mut one_per_primary: BTreeMap<u16, i64> = BTreeMap::new();
    for (&id, (_, port)) in &keys {
        one_per_primary.entry(*port).or_insert(id);
    }
    assert_eq!(
        one_per_primary.len(),
        3,
        "products on every primary: {keys:?}"
    );

    let mut price = 500.0;
    for round in 0..5 {
        for &id in one_per_primary.values() {
            let path = format!("/products/{id}");
            let (_, cache, _) = get(&b, &path).await;
            if cache != "HIT" {
                let (_, cache, _) = get(&b, &path).await;
                assert_eq!(cache, "HIT", "{path} cached on b before round {round}");
            }
            price += 1.25;
            let request = client()
                .patch(a.url(&path))
                .json(&json!({ "price": price }));
            let response = request.send().await.expect("PATCH");
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let patched: Value = response.json().await.expect("json");
            assert_eq!(patched["price"], price);
            let (status, cache, read) = get(&b, &path).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                read, patched,
                "round {round}: {path} read through b ({cache}) right after a's PATCH returned"
            );
            assert_eq!(cache, "MISS", "round {round}: {path} dropped on b");
        }
    }
    for server in [&a, &b] {
        let body = until_health(server, "healthy", healthy).await;
        assert_eq!(
            body["cache"]["invalidations_pending"], false,
            "every invalidation reached the cluster: {body}"
        );
    }
}

/// Reads each product of `waiting` through its server (an index into `servers`) until each
/// has been a hit, failing past [`RECOVERY_BOUND`] after `since`, or at any answer but a 200
/// with the product; how long after `since` the last hit came.
async fn until_hits(
    servers: &[&Server],
    mut waiting: BTreeSet<(usize, i64)>,
    since: Instant,
    load: &Load,
) -> Duration {
    let client = client();
    while !waiting.is_empty() {
        assert!(
            since.elapsed() < RECOVERY_BOUND,
            "not hits again within {RECOVERY_BOUND:?}: (server, product) {waiting:?}; {}",
            load.tally.report()
        );
        for (server, id) in waiting.clone() {
            let read = read_product(&client, &servers[server].base, id).await;
            if read.unwrap_or_else(|failure| panic!("{failure}")) == "HIT" {
                waiting.remove(&(server, id));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    since.elapsed()
}

/// A primary of the cluster killed while two `serve` instances (one SQLite database) answer
/// concurrent reads of all 50 products, spread over every shard: no request fails (each
/// is a 200 with the product asked for) during the outage or after; the other shards keep
/// serving hits through the outage; once a replica is promoted, every product of the dead
/// primary's shard is a hit again through both instances within [`RECOVERY_BOUND`], stored
/// on the promoted primary; and `/health` is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_fails_no_request() {
    let mut cluster = tokio::task::block_in_place(RedisCluster::start);
    let db = TestDatabase::sqlite();
    let a = Server::start(&db, &["--redis-url", &cluster.url()]);
    let b = Server::start(&db, &["--redis-url", &cluster.url()]);
    for server in [&a, &b] {
        until_health(server, "healthy", healthy).await;
    }
    // Every product cached through a, and read back through b as a hit.
    for id in 1..=PRODUCTS {
        let path = format!("/products/{id}");
        let (status, _, _) = get(&a, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let (_, cache, body) = get(&b, &path).await;
        assert_eq!((cache.as_str(), &body["id"]), ("HIT", &json!(id)), "{path}");
    }
    let keys = tokio::task::block_in_place(|| product_keys_by_primary(&cluster));
    assert_eq!(keys.len(), 50, "every product stored: {keys:?}");
    let doomed = keys[&1].1;
    let on_doomed: BTreeSet<i64> = keys
        .iter()
        .filter(|(_, (_, port))| *port == doomed)
        .map(|(&id, _)| id)
        .collect();

    let ids: Vec<i64> = (1..=PRODUCTS).collect();
    let load = Load::start(&[&a, &b], &ids, ("on the killed shard", &on_doomed), 4);
    load.until_more_requests(200).await;

    let killed = Instant::now();
    load.next_phase();
    tokio::task::block_in_place(|| cluster.kill_node(doomed));
    let promotion = tokio::task::block_in_place(|| cluster.wait_healthy(PROMOTION_BOUND));
    load.next_phase();
    let promoted = Instant::now();

    // Every product of the dead primary's shard, through both instances, until each has
    // been a hit since the promotion.
    let waiting = (0..2)
        .flat_map(|server| on_doomed.iter().map(move |&id| (server, id)))
        .collect();
    let recovery = until_hits(&[&a, &b], waiting, promoted, &load).await;
    // The hits come from the promoted primary: it holds the dead one's keys.
    tokio::task::block_in_place(|| {
        for id in &on_doomed {
            let key = &keys[id].0;
            let now_on = cluster.primary_port_for(key);
            assert_ne!(now_on, doomed, "{key} moved to the promoted primary");
            assert_eq!(cluster.cli_on(now_on, ["EXISTS", key]), "1", "{key}");
        }
    });
    for server in [&a, &b] {
        until_health(server, "healthy again", healthy).await;
    }
    let health_back = promoted.elapsed();
    // The loops run on past the recovery: the cluster as it is now serves them too.
    load.until_more_requests(200).await;
    let tally = load.finish().await;
    // Each instance saw the outage (its store calls to the dead primary failed) and the
    // topology change; the answers above were not spared by luck.
    let mut seen = Vec::new();
    for server in [&a, &b] {
        let errors = counter(server, "cachelayer_store_errors_total", "").await;
        let changes = metric_once(
            server,
            "cachelayer_redis_cluster_topology_changes_total",
            "",
            |n| n >= 1.0,
        )
        .await;
        seen.push((errors, changes));
    }
    eprintln!(
        "serve on a cluster, primary {doomed} killed ({} of {PRODUCTS} products on it): promoted {promotion:?} after the kill; its products hits again on both instances {recovery:?} after the promotion, /health healthy {health_back:?} after it ({:?} in all); {}; failed requests: {}; (store errors, topology changes) per instance: {seen:?}",
        on_doomed.len(),
        killed.elapsed(),
        tally.report(),
        tally.failures().len()
    );
    assert_eq!(tally.failures(), Vec::<String>::new(), "no request failed");
    for &(errors, changes) in &seen {
        assert!(errors > 0.0, "store errors during the outage: {seen:?}");
        assert!(changes >= 1.0, "the promotion seen: {seen:?}");
    }
    assert!(
        tally.other_hits[1].load(Ordering::Relaxed) > 0,
        "the other shards served hits during the outage: {}",
        tally.report()
    );
    assert!(
        tally.requests[2].load(Ordering::Relaxed) > 0,
        "requests after the promotion: {}",
        tally.report()
    );
}

/// `POST /admin/invalidate` on `proxy`'s admin listener; the answer.
async fn purge(proxy: &Server, body: Value) -> Value {
    let response = client()
        .post(proxy.admin_url("/admin/invalidate"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin");
    assert_eq!(response.status(), StatusCode::OK, "purge {body}");
    response.json().await.expect("json")
}

/// Two `proxy` instances on one Redis Cluster in front of a scripted origin: responses
/// under several paths (their keys spread over the primaries) are MISS then HIT, and hits
/// through the other proxy too; a URL purge through one proxy's admin listener is seen by
/// the other (its next request goes upstream) and leaves the other paths cached; a tag
/// purge (`Cache-Tag`, whose versions live in one slot) drops every tagged response for
/// both. The origin's call counts show what reached it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_on_a_cluster_shares_the_cache_and_the_purges() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let origin = ScriptedOrigin::new();
    let paths: Vec<String> = (1..=6).map(|n| format!("/items/{n}")).collect();
    for path in &paths {
        origin.script(
            path,
            [Scripted::ok(format!("item {path}"))
                .header("cache-control", "public, max-age=60")
                .header("cache-tag", "items")],
        );
    }
    let upstream = origin.serve().await;
    let args = ["--redis-url", &cluster.url(), "--admin-token", TOKEN];
    let a = Server::proxy(&upstream.url(), &args);
    let b = Server::proxy(&upstream.url(), &args);

    for path in &paths {
        let (status, cache, body) = get_via(&a, path).await;
        assert_eq!(
            (status, cache.as_str(), body.as_str()),
            (StatusCode::OK, "MISS", format!("item {path}").as_str())
        );
        assert_eq!(get_via(&a, path).await.1, "HIT", "{path} on a");
        assert_eq!(get_via(&b, path).await.1, "HIT", "{path} on b");
        assert_eq!(origin.calls(path), 1, "{path}");
    }

    let purged = purge(&a, json!({"urls": ["http://api.example/items/1"]})).await;
    assert_eq!(
        (&purged["urls"], &purged["not_found"]["urls"]),
        (&json!(1), &json!([])),
        "{purged}"
    );
    assert_eq!(get_via(&b, "/items/1").await.1, "MISS", "purged for b");
    assert_eq!(get_via(&a, "/items/1").await.1, "HIT", "stored again");
    assert_eq!(origin.calls("/items/1"), 2);
    for path in &paths[1..] {
        assert_eq!(get_via(&b, path).await.1, "HIT", "{path} kept");
    }

    let purged = purge(&b, json!({"tags": ["items"]})).await;
    assert_eq!(purged["tags"], 1, "{purged}");
    for path in &paths {
        assert_eq!(get_via(&a, path).await.1, "MISS", "{path} tag-purged");
        assert_eq!(get_via(&b, path).await.1, "HIT", "{path} stored again");
    }
    assert_eq!(origin.calls("/items/1"), 3);
    for path in &paths[1..] {
        assert_eq!(origin.calls(path), 2, "{path}");
    }
}

/// `serve` through Sentinels: MISS then HIT on the primary they name; the primary killed
/// while request loops read products: no request fails (each a 200 with the product asked
/// for) meanwhile or after; once the Sentinels have promoted the replica, a product cached
/// before the kill and one never read before are hits within [`RECOVERY_BOUND`], stored on
/// the new primary; and `/health` is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_follows_a_sentinel_failover_without_failing_a_request() {
    let mut sentinels = tokio::task::block_in_place(RedisSentinel::start);
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--redis-url", &sentinels.url()]);
    until_health(&server, "healthy", healthy).await;
    let (status, first, body) = get(&server, "/products/1").await;
    assert_eq!((status, first.as_str()), (StatusCode::OK, "MISS"));
    let (_, second, again) = get(&server, "/products/1").await;
    assert_eq!((second.as_str(), &again), ("HIT", &body));

    let ids: Vec<i64> = (1..=20).collect();
    let every: BTreeSet<i64> = ids.iter().copied().collect();
    let load = Load::start(&[&server], &ids, ("in all", &every), 2);
    load.until_more_requests(100).await;

    let killed = Instant::now();
    load.next_phase();
    let old = tokio::task::block_in_place(|| sentinels.kill_primary());
    let (new, failover) =
        tokio::task::block_in_place(|| sentinels.wait_for_failover(old, PROMOTION_BOUND));
    assert_ne!(new, old);
    load.next_phase();
    let promoted = Instant::now();

    // Product 1 was cached before the kill; product 30 was never read.
    let waiting = [(0, 1), (0, 30)].into();
    let recovery = until_hits(&[&server], waiting, promoted, &load).await;
    let stored = tokio::task::block_in_place(|| sentinels.cli_on(new, ["KEYS", "*product:30"]));
    assert_eq!(
        stored.lines().filter_map(product_of).collect::<Vec<_>>(),
        [30],
        "product 30 stored on the new primary: {stored:?}"
    );
    until_health(&server, "healthy again", healthy).await;
    let health_back = promoted.elapsed();
    load.until_more_requests(100).await;
    let tally = load.finish().await;
    let errors = counter(&server, "cachelayer_store_errors_total", "").await;
    let changes = metric_once(&server, "cachelayer_redis_primary_changes_total", "", |n| {
        n >= 1.0
    })
    .await;
    eprintln!(
        "serve through Sentinels, primary {old} killed: {new} promoted {failover:?} after the kill; hits again {recovery:?} after the failover, /health healthy {health_back:?} after it ({:?} in all); {}; failed requests: {}; store errors {errors}, primary changes {changes}",
        killed.elapsed(),
        tally.report(),
        tally.failures().len()
    );
    assert_eq!(tally.failures(), Vec::<String>::new(), "no request failed");
    assert!(errors > 0.0, "store errors during the outage");
    assert!(changes >= 1.0, "the new primary followed");
    assert!(
        tally.requests[1].load(Ordering::Relaxed) > 0,
        "requests during the failover: {}",
        tally.report()
    );
}
