//! The `Store` contract: the same behaviour from `RedisStore` (against a real redis-server)
//! and `MemoryStore`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use cachelayer::store::{KeyTtl, StoreEntry};
use support::Backend;

const MINUTE: Duration = Duration::from_secs(60);
/// Long enough that a loaded CI machine still reads the key before it expires.
const SHORT_TTL: Duration = Duration::from_secs(1);

/// Waits past `ttl`: expiry has no signal to wait for, so this is time passing, not
/// synchronisation.
async fn outlive(ttl: Duration) {
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
}

/// Bytes written come back unchanged, including binary and empty values.
async fn set_then_get_round_trips_bytes(backend: Backend) {
    let store = &backend.store;
    let binary = Bytes::from((0..=255u8).collect::<Vec<_>>());
    store.set("bin", binary.clone(), MINUTE).await.expect("set");
    store.set("empty", Bytes::new(), MINUTE).await.expect("set");
    assert_eq!(store.get("bin").await.expect("get"), Some(binary));
    assert_eq!(store.get("empty").await.expect("get"), Some(Bytes::new()));
    assert_eq!(store.get("absent").await.expect("get"), None);
}

/// A key is gone after its TTL, and `set` replaces both value and TTL.
async fn entries_expire_after_their_ttl(backend: Backend) {
    let store = &backend.store;
    store.set("k", "v1".into(), SHORT_TTL).await.expect("set");
    store.set("kept", "v".into(), MINUTE).await.expect("set");
    assert!(store.get("k").await.expect("get").is_some());
    outlive(SHORT_TTL).await;
    assert_eq!(store.get("k").await.expect("get"), None);
    assert_eq!(store.ttl("k").await.expect("ttl"), KeyTtl::Missing);
    assert!(store.get("kept").await.expect("get").is_some());

    store
        .set("r", "short".into(), SHORT_TTL)
        .await
        .expect("set");
    store
        .set("r", "long".into(), MINUTE)
        .await
        .expect("replace");
    outlive(SHORT_TTL).await;
    assert_eq!(
        store.get("r").await.expect("get").as_deref(),
        Some(&b"long"[..])
    );
}

/// TTL lookup reports missing keys and the time left on live ones.
async fn ttl_reports_time_left(backend: Backend) {
    let store = &backend.store;
    assert_eq!(store.ttl("nope").await.expect("ttl"), KeyTtl::Missing);
    store.set("k", "v".into(), MINUTE).await.expect("set");
    match store.ttl("k").await.expect("ttl") {
        KeyTtl::ExpiresIn(left) => {
            assert!(left <= MINUTE && left > Duration::from_secs(50), "{left:?}")
        }
        other => panic!("expected a TTL, got {other:?}"),
    }
}

/// A zero TTL is refused rather than stored forever or rejected by the server later.
async fn zero_ttl_is_invalid_input(backend: Backend) {
    let err = backend
        .store
        .set("k", "v".into(), Duration::ZERO)
        .await
        .expect_err("zero ttl");
    assert_eq!(err.kind(), cachelayer::ErrorKind::InvalidInput);
    assert_eq!(backend.store.get("k").await.expect("get"), None);
}

/// Batch reads return values in key order, with gaps for missing keys.
async fn get_many_keeps_order(backend: Backend) {
    let store = &backend.store;
    store.set("a", "1".into(), MINUTE).await.expect("set");
    store.set("c", "3".into(), MINUTE).await.expect("set");
    let keys = ["a", "b", "c"].map(String::from);
    let values = store.get_many(&keys).await.expect("get_many");
    assert_eq!(
        values,
        vec![Some(Bytes::from("1")), None, Some(Bytes::from("3"))]
    );
    assert!(store.get_many(&[]).await.expect("empty").is_empty());
}

/// Batch writes store every entry, each with its own TTL.
async fn set_many_applies_per_entry_ttls(backend: Backend) {
    let store = &backend.store;
    let entries = vec![
        StoreEntry {
            key: "short".into(),
            value: "s".into(),
            ttl: SHORT_TTL,
        },
        StoreEntry {
            key: "long".into(),
            value: "l".into(),
            ttl: MINUTE,
        },
    ];
    store.set_many(&entries).await.expect("set_many");
    assert!(store.get("short").await.expect("get").is_some());
    outlive(SHORT_TTL).await;
    assert_eq!(store.get("short").await.expect("get"), None);
    assert_eq!(
        store.get("long").await.expect("get").as_deref(),
        Some(&b"l"[..])
    );
    store.set_many(&[]).await.expect("empty batch");
}

/// Deletes report whether the key existed; batch deletes count them.
async fn delete_reports_existence(backend: Backend) {
    let store = &backend.store;
    store.set("a", "1".into(), MINUTE).await.expect("set");
    store.set("b", "2".into(), MINUTE).await.expect("set");
    assert!(store.delete("a").await.expect("delete"));
    assert!(!store.delete("a").await.expect("delete again"));
    let keys = ["a", "b", "zz"].map(String::from);
    assert_eq!(store.delete_many(&keys).await.expect("delete_many"), 1);
    assert_eq!(store.get("b").await.expect("get"), None);
    assert_eq!(store.delete_many(&[]).await.expect("empty"), 0);
}

/// Deletes key by key say, in order, which keys existed; a key named twice exists once.
async fn delete_each_reports_each_key(backend: Backend) {
    let store = &backend.store;
    store.set("a", "1".into(), MINUTE).await.expect("set");
    store.set("b", "2".into(), MINUTE).await.expect("set");
    let keys = ["b", "zz", "a", "b"].map(String::from);
    assert_eq!(
        store.delete_each(&keys).await.expect("delete_each"),
        [true, false, true, false]
    );
    assert_eq!(store.get("a").await.expect("get"), None);
    assert_eq!(
        store.delete_each(&[]).await.expect("empty"),
        Vec::<bool>::new()
    );
}

/// Set-if-absent writes only when the key is absent, including after expiry.
async fn set_if_absent_respects_live_keys(backend: Backend) {
    let store = &backend.store;
    assert!(
        store
            .set_if_absent("lock", "a".into(), SHORT_TTL)
            .await
            .expect("nx")
    );
    assert!(
        !store
            .set_if_absent("lock", "b".into(), MINUTE)
            .await
            .expect("nx")
    );
    assert_eq!(
        store.get("lock").await.expect("get").as_deref(),
        Some(&b"a"[..])
    );
    outlive(SHORT_TTL).await;
    assert!(
        store
            .set_if_absent("lock", "c".into(), MINUTE)
            .await
            .expect("nx after expiry")
    );
    assert_eq!(
        store.get("lock").await.expect("get").as_deref(),
        Some(&b"c"[..])
    );
}

/// Exactly one of many concurrent set-if-absent callers wins.
async fn set_if_absent_has_one_winner(backend: Backend) {
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = backend.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .set_if_absent("race", Bytes::from(format!("{i}")), MINUTE)
                .await
                .expect("nx")
        }));
    }
    let mut winners = 0;
    for task in tasks {
        if task.await.expect("join") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

/// A plain `set` racing a `set_if_absent` on an absent key must win in every interleaving:
/// either the NX write came first and was replaced, or the set came first and NX refused.
/// The NX value surviving would mean NX overwrote a concurrent write (or ignored a live
/// key). Each round checks whichever interleaving happened; a narrow race may need many
/// rounds to show, so this is a guard, not a proof.
async fn set_if_absent_never_overwrites_a_concurrent_set(backend: Backend) {
    for round in 0..300 {
        let key = format!("nx-race-{round}");
        let (a, b) = (backend.store.clone(), backend.store.clone());
        let (k1, k2) = (key.clone(), key.clone());
        let set = tokio::spawn(async move { a.set(&k1, "set".into(), MINUTE).await });
        let nx = tokio::spawn(async move { b.set_if_absent(&k2, "nx".into(), MINUTE).await });
        set.await.expect("join").expect("set");
        nx.await.expect("join").expect("nx");
        let value = backend.store.get(&key).await.expect("get");
        assert_eq!(value.as_deref(), Some(&b"set"[..]), "round {round}");
    }
}

/// A compare-and-delete racing a `set` of a new value must never delete the new value
/// (checked over whichever interleavings the rounds produce, like the test above).
async fn compare_and_delete_never_removes_a_concurrent_set(backend: Backend) {
    for round in 0..300 {
        let key = format!("cad-race-{round}");
        backend
            .store
            .set(&key, "old".into(), MINUTE)
            .await
            .expect("set");
        let (a, b) = (backend.store.clone(), backend.store.clone());
        let (k1, k2) = (key.clone(), key.clone());
        let set = tokio::spawn(async move { a.set(&k1, "new".into(), MINUTE).await });
        let cad = tokio::spawn(async move { b.compare_and_delete(&k2, b"old").await });
        set.await.expect("join").expect("set");
        cad.await.expect("join").expect("cad");
        let value = backend.store.get(&key).await.expect("get");
        assert_eq!(value.as_deref(), Some(&b"new"[..]), "round {round}");
    }
}

/// Compare-and-delete removes the key only while it holds the expected value.
async fn compare_and_delete_checks_the_value(backend: Backend) {
    let store = &backend.store;
    store
        .set("lock", "owner-1".into(), MINUTE)
        .await
        .expect("set");
    assert!(
        !store
            .compare_and_delete("lock", b"owner-2")
            .await
            .expect("cad")
    );
    assert!(store.get("lock").await.expect("get").is_some());
    assert!(
        store
            .compare_and_delete("lock", b"owner-1")
            .await
            .expect("cad")
    );
    assert_eq!(store.get("lock").await.expect("get"), None);
    assert!(
        !store
            .compare_and_delete("lock", b"owner-1")
            .await
            .expect("cad absent")
    );
}

/// Compare-and-expire sets a new TTL only while the key holds the expected value.
async fn compare_and_expire_checks_the_value(backend: Backend) {
    let store = &backend.store;
    store
        .set("lease", "owner-1".into(), SHORT_TTL)
        .await
        .expect("set");
    assert!(
        !store
            .compare_and_expire("lease", b"owner-2", MINUTE)
            .await
            .expect("cae other")
    );
    assert!(
        matches!(store.ttl("lease").await.expect("ttl"), KeyTtl::ExpiresIn(left) if left <= SHORT_TTL)
    );
    assert!(
        store
            .compare_and_expire("lease", b"owner-1", MINUTE)
            .await
            .expect("cae owner")
    );
    assert!(
        matches!(store.ttl("lease").await.expect("ttl"), KeyTtl::ExpiresIn(left) if left > SHORT_TTL)
    );
    assert_eq!(
        store.get("lease").await.expect("get").as_deref(),
        Some(&b"owner-1"[..])
    );
    assert!(
        !store
            .compare_and_expire("absent", b"owner-1", MINUTE)
            .await
            .expect("cae absent")
    );
    assert_eq!(store.get("absent").await.expect("get"), None);
}

/// A message published after `subscribe` returns reaches the subscriber; other channels'
/// messages do not.
async fn publish_reaches_subscribers(backend: Backend) {
    let store = &backend.store;
    let mut subscription = store.subscribe("events").await.expect("subscribe");
    assert_eq!(subscription.channel(), "events");
    assert_eq!(
        store.publish("other", "x".into()).await.expect("publish"),
        0
    );
    assert_eq!(
        store
            .publish("events", "hello".into())
            .await
            .expect("publish"),
        1
    );
    let message = tokio::time::timeout(Duration::from_secs(5), subscription.recv())
        .await
        .expect("delivered in time");
    assert_eq!(message.as_deref(), Some(&b"hello"[..]));
}

/// The store answers pings.
async fn ping_succeeds(backend: Backend) {
    backend.store.ping().await.expect("ping");
}

on_every_store!(
    set_then_get_round_trips_bytes,
    entries_expire_after_their_ttl,
    ttl_reports_time_left,
    zero_ttl_is_invalid_input,
    get_many_keeps_order,
    set_many_applies_per_entry_ttls,
    delete_reports_existence,
    delete_each_reports_each_key,
    set_if_absent_respects_live_keys,
    set_if_absent_has_one_winner,
    compare_and_delete_checks_the_value,
    compare_and_expire_checks_the_value,
    set_if_absent_never_overwrites_a_concurrent_set,
    compare_and_delete_never_removes_a_concurrent_set,
    publish_reaches_subscribers,
    ping_succeeds,
);
