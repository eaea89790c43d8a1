//! The typed `Cache` over both stores: round trips, the envelope on the wire, compression,
//! TTLs and jitter, namespaces, batch calls, and unreadable entries.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cachelayer::__private::codec::HEADER_LEN;
use cachelayer::cache::{Compression, EnvelopeHeader};
use cachelayer::store::KeyTtl;
use cachelayer::{Key, Raw, Serialization};
use serde::{Deserialize, Serialize};
use support::Backend;

const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u32,
    tags: Vec<String>,
    attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Availability {
    InStock { quantity: u32 },
    Backorder(String),
    Discontinued,
}

fn product(id: u64) -> Product {
    Product {
        id,
        name: format!("Product {id}"),
        price_cents: 1999,
        tags: vec!["a".into(), "b".into()],
        attributes: BTreeMap::from([("colour".into(), "red".into())]),
    }
}

/// Structs, enums, options, vectors and a 100 KB value come back equal.
async fn typed_values_round_trip(backend: Backend) {
    let cache = backend.cache();
    cache.insert("struct", &product(1)).await.expect("insert");
    cache
        .insert("enum1", &Availability::InStock { quantity: 3 })
        .await
        .expect("insert");
    cache
        .insert("enum2", &Availability::Backorder("june".into()))
        .await
        .expect("insert");
    cache
        .insert("enum3", &Availability::Discontinued)
        .await
        .expect("insert");
    cache.insert("some", &Some(5u8)).await.expect("insert");
    cache.insert("none", &None::<u8>).await.expect("insert");
    let list: Vec<Product> = (0..10).map(product).collect();
    cache.insert("vec", &list).await.expect("insert");
    let big = "x".repeat(100 * 1024);
    cache.insert("big", &big).await.expect("insert");

    assert_eq!(cache.get::<Product>("struct").await, Some(product(1)));
    assert_eq!(
        cache.get("enum1").await,
        Some(Availability::InStock { quantity: 3 })
    );
    assert_eq!(
        cache.get("enum2").await,
        Some(Availability::Backorder("june".into()))
    );
    assert_eq!(cache.get("enum3").await, Some(Availability::Discontinued));
    assert_eq!(cache.get::<Option<u8>>("some").await, Some(Some(5)));
    // A cached `None` is a hit, distinct from a miss.
    assert_eq!(cache.get::<Option<u8>>("none").await, Some(None));
    assert_eq!(cache.get::<Option<u8>>("never-written").await, None);
    assert_eq!(cache.get::<Vec<Product>>("vec").await, Some(list));
    assert_eq!(cache.get::<String>("big").await, Some(big));
}

/// MessagePack works as the serialization, and a JSON reader still reads its entries.
async fn messagepack_round_trips(backend: Backend) {
    let writer = backend
        .cache_builder()
        .serialization(Serialization::MessagePack)
        .build()
        .expect("cache");
    writer.insert("p", &product(9)).await.expect("insert");
    let raw = backend.raw(&writer, "p").await.expect("stored");
    let header = EnvelopeHeader::parse(&raw).expect("header");
    assert_eq!(header.serialization, Serialization::MessagePack);
    let json_reader = backend.cache();
    assert_eq!(json_reader.get::<Product>("p").await, Some(product(9)));
}

/// JSON entries are the header followed by plain JSON, readable from redis-cli.
async fn json_payload_is_readable(backend: Backend) {
    let cache = backend.cache();
    cache.insert("p", &product(2)).await.expect("insert");
    let raw = backend.raw(&cache, "p").await.expect("stored");
    assert_eq!(&raw[..2], b"CL");
    let json: serde_json::Value = serde_json::from_slice(&raw[HEADER_LEN..]).expect("plain JSON");
    assert_eq!(json["name"], "Product 2");
}

/// Payloads of 1023 bytes are stored plain; 1024 and 1025 bytes are compressed; reads do
/// not depend on the reader's threshold.
async fn compression_threshold_boundary(backend: Backend) {
    let cache = backend.cache();
    for (len, expected) in [
        (1023, Compression::None),
        (1024, Compression::Zstd),
        (1025, Compression::Zstd),
    ] {
        // A JSON string of n - 2 characters serializes to exactly n bytes.
        let value = "a".repeat(len - 2);
        let key = format!("len{len}");
        cache.insert(key.as_str(), &value).await.expect("insert");
        let raw = backend.raw(&cache, key.as_str()).await.expect("stored");
        let header = EnvelopeHeader::parse(&raw).expect("header");
        assert_eq!(header.payload_len as usize, len);
        assert_eq!(header.compression, expected, "payload of {len} bytes");
        if expected == Compression::Zstd {
            assert!(raw.len() < HEADER_LEN + len);
        }
        let no_compression = backend
            .cache_builder()
            .compression_threshold(None)
            .build()
            .expect("cache");
        assert_eq!(
            no_compression.get::<String>(key.as_str()).await,
            Some(value)
        );
    }
}

/// With compression off, large values are stored plain.
async fn compression_can_be_off(backend: Backend) {
    let cache = backend
        .cache_builder()
        .compression_threshold(None)
        .build()
        .expect("cache");
    cache
        .insert("big", &"b".repeat(10_000))
        .await
        .expect("insert");
    let raw = backend.raw(&cache, "big").await.expect("stored");
    assert_eq!(
        EnvelopeHeader::parse(&raw).expect("header").compression,
        Compression::None
    );
}

/// Entries disappear after their TTL.
async fn entries_expire(backend: Backend) {
    let cache = backend.cache();
    // Long enough that a loaded machine still reads it back before expiry.
    cache
        .insert_with_ttl("k", &1u8, Duration::from_secs(1))
        .await
        .expect("insert");
    assert_eq!(cache.get::<u8>("k").await, Some(1));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(cache.get::<u8>("k").await, None);
}

/// A zero TTL caches nothing: inserts write nothing and `get_with` neither reads nor writes.
async fn zero_ttl_means_do_not_cache(backend: Backend) {
    let cache = backend.cache();
    cache
        .insert_with_ttl("k", &1u8, Duration::ZERO)
        .await
        .expect("insert");
    assert_eq!(backend.raw(&cache, "k").await, None);

    cache.insert("cached", &1u8).await.expect("insert");
    let value = cache
        .get_with("cached", Duration::ZERO, async { 2u8 })
        .await;
    assert_eq!(value, 2, "zero TTL bypasses the cached value");
    assert_eq!(
        cache.get::<u8>("cached").await,
        Some(1),
        "and does not overwrite it"
    );

    cache
        .insert_many_with_ttl([("m", 1u8)], Duration::ZERO)
        .await
        .expect("insert_many");
    assert_eq!(cache.get::<u8>("m").await, None);
}

/// Jitter shortens each TTL by up to the configured fraction, and spreads entries written
/// together over that window.
async fn ttl_jitter_spreads_expiry(backend: Backend) {
    let cache = backend
        .cache_builder()
        .ttl_jitter(0.5)
        .build()
        .expect("cache");
    let ttl = Duration::from_secs(100);
    let entries: Vec<(String, u32)> = (0..50).map(|i| (format!("j{i}"), i)).collect();
    cache
        .insert_many_with_ttl(entries, ttl)
        .await
        .expect("insert_many");
    let mut ttls = Vec::new();
    for i in 0..50 {
        match backend
            .store
            .ttl(&cache.full_key(format!("j{i}")))
            .await
            .expect("ttl")
        {
            KeyTtl::ExpiresIn(left) => ttls.push(left),
            other => panic!("expected a TTL, got {other:?}"),
        }
    }
    assert!(
        ttls.iter()
            .all(|t| *t <= ttl && *t >= Duration::from_secs(49)),
        "{ttls:?}"
    );
    let min = ttls.iter().min().expect("some");
    let max = ttls.iter().max().expect("some");
    // 50 uniform draws over a 50 s window: a spread under 10 s has negligible probability.
    assert!(
        *max - *min > Duration::from_secs(10),
        "not spread: {min:?}..{max:?}"
    );
    // The header records the jittered lifetime the store was given, so readers and early
    // refresh see the entry's real expiry.
    let raw = backend.raw(&cache, "j0").await.expect("stored");
    let recorded = EnvelopeHeader::parse(&raw).expect("header").ttl;
    assert!(
        recorded <= ttl && recorded >= ttls[0],
        "{recorded:?} vs {:?}",
        ttls[0]
    );
}

/// Without jitter, the store TTL is the one asked for.
async fn no_jitter_keeps_exact_ttl(backend: Backend) {
    let cache = backend.cache();
    cache
        .insert_with_ttl("k", &1u8, MINUTE)
        .await
        .expect("insert");
    match backend.store.ttl(&cache.full_key("k")).await.expect("ttl") {
        KeyTtl::ExpiresIn(left) => assert!(left > Duration::from_secs(58), "{left:?}"),
        other => panic!("expected a TTL, got {other:?}"),
    }
}

/// Namespaces and versions isolate entries: bumping the version hides old entries.
async fn namespace_and_version_isolate(backend: Backend) {
    let v1 = backend.cache_builder().version(1).build().expect("cache");
    let v2 = backend.cache_builder().version(2).build().expect("cache");
    let other = backend
        .cache_builder()
        .namespace("other")
        .build()
        .expect("cache");
    v1.insert("k", &1u8).await.expect("insert");
    assert_eq!(v1.full_key("k"), "test:v1:k");
    assert_eq!(v2.get::<u8>("k").await, None);
    assert_eq!(other.get::<u8>("k").await, None);
    assert_eq!(v1.get::<u8>("k").await, Some(1));
}

/// Untrusted key parts cannot reach another key, and secret parts are not readable.
async fn untrusted_key_parts_are_contained(backend: Backend) {
    let cache = backend.cache();
    cache
        .insert(Key::new("user").part(1).part("admin"), &"secret")
        .await
        .expect("insert");
    let forged = Key::new("user").part("1:admin");
    assert_eq!(cache.get::<String>(forged).await, None);
    let email_key = cache.full_key(Key::new("session").hashed_part("ann@example.com"));
    assert!(!email_key.contains("ann"));
    cache
        .insert(Key::new("session").hashed_part("ann@example.com"), &1u8)
        .await
        .expect("insert");
    assert!(backend.store.get(&email_key).await.expect("get").is_some());
}

/// `get_with` loads once on a miss, then serves the cached value; the header records how
/// long the load took.
async fn get_with_is_cache_aside(backend: Backend) {
    let cache = backend.cache();
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let loads = loads.clone();
        let value = cache
            .get_with("p", MINUTE, async move {
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                product(5)
            })
            .await;
        assert_eq!(value, product(5));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let entry = cache.get_entry::<Product>("p").await.expect("cached");
    assert!(entry.header.compute_time >= Duration::from_millis(20));
    assert_eq!(entry.header.ttl, MINUTE);
}

/// A failing loader's error reaches the caller and nothing is cached.
async fn loader_errors_are_not_cached(backend: Backend) {
    let cache = backend.cache();
    let result = cache
        .try_get_with::<u8, _, _>("k", MINUTE, async { Err("db down") })
        .await;
    assert_eq!(result.expect_err("failed").loader_error(), Some(&"db down"));
    assert_eq!(backend.raw(&cache, "k").await, None);
    let result = cache
        .try_get_with("k", MINUTE, async { Ok::<u8, &str>(4) })
        .await;
    assert_eq!(result, Ok(4));
    assert_eq!(cache.get::<u8>("k").await, Some(4));
}

/// Invalidation removes single keys and batches.
async fn invalidate_removes_entries(backend: Backend) {
    let cache = backend.cache();
    cache
        .insert_many([("a", 1u8), ("b", 2), ("c", 3)])
        .await
        .expect("insert_many");
    cache.invalidate("a").await.expect("invalidate");
    cache
        .invalidate_many(["b", "c"])
        .await
        .expect("invalidate_many");
    let values = cache.get_many::<u8, _>(["a", "b", "c"]).await;
    assert_eq!(values, vec![None, None, None]);
}

/// A batch of 1,000 keys round-trips, in order, with gaps for missing keys.
async fn batch_of_a_thousand(backend: Backend) {
    let cache = backend.cache();
    let entries: Vec<(Key, Product)> = (0..1000)
        .map(|i| (Key::new("p").part(i), product(i)))
        .collect();
    cache
        .insert_many(entries.iter().map(|(k, v)| (k, v)))
        .await
        .expect("insert_many");
    let mut keys: Vec<Key> = entries.iter().map(|(k, _)| k.clone()).collect();
    keys.push(Key::new("p").part("missing"));
    let values = cache.get_many::<Product, _>(&keys).await;
    assert_eq!(values.len(), 1001);
    for (i, value) in values.iter().take(1000).enumerate() {
        assert_eq!(value.as_ref(), Some(&product(i as u64)));
    }
    assert_eq!(values[1000], None);
}

/// Garbage, truncated, unknown-version and wrong-type entries are misses, and deleted.
async fn unreadable_entries_are_misses_and_deleted(backend: Backend) {
    let cache = backend.cache();
    cache.insert("good", &product(1)).await.expect("insert");
    let good = backend.raw(&cache, "good").await.expect("stored");
    let mut newer_version = good.to_vec();
    newer_version[2] = 99;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\xffnot an envelope at all".to_vec()),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("version", newer_version),
        ("plain-json", br#"{"id":1}"#.to_vec()),
    ];
    for (key, bytes) in &cases {
        backend
            .store
            .set(&cache.full_key(*key), bytes.clone().into(), MINUTE)
            .await
            .expect("set raw");
        assert_eq!(cache.get::<Product>(*key).await, None, "{key}");
        assert_eq!(backend.raw(&cache, *key).await, None, "{key} deleted");
    }
    // Another type's shape: a valid envelope that is not a `Product`.
    assert_eq!(cache.get::<Vec<u32>>("good").await, None);
    assert_eq!(backend.raw(&cache, "good").await, None);
    // And the loader replaces an unreadable entry with a good one.
    backend
        .store
        .set(&cache.full_key("p"), "junk".into(), MINUTE)
        .await
        .expect("set");
    assert_eq!(
        cache.get_with("p", MINUTE, async { product(3) }).await,
        product(3)
    );
    assert_eq!(cache.get::<Product>("p").await, Some(product(3)));
}

/// Unreadable entries in a batch are misses too, and the readable ones are still returned.
async fn unreadable_entries_in_a_batch(backend: Backend) {
    let cache = backend.cache();
    cache.insert("ok", &1u32).await.expect("insert");
    backend
        .store
        .set(&cache.full_key("bad"), "junk".into(), MINUTE)
        .await
        .expect("set");
    let values = cache.get_many::<u32, _>(["ok", "bad"]).await;
    assert_eq!(values, vec![Some(1), None]);
    assert_eq!(backend.raw(&cache, "bad").await, None);
}

/// Values that cannot be serialized are an encode error, and nothing is written.
async fn unserializable_values_are_encode_errors(backend: Backend) {
    let cache = backend.cache();
    // JSON object keys must be strings.
    let map: BTreeMap<(u8, u8), u8> = BTreeMap::from([((1, 2), 3)]);
    let err = cache.insert("m", &map).await.expect_err("not JSON-able");
    assert_eq!(err.kind(), cachelayer::ErrorKind::Encode);
    let err = cache
        .insert_many([("ok", BTreeMap::new()), ("bad", map.clone())])
        .await
        .expect_err("batch with a bad value");
    assert_eq!(err.kind(), cachelayer::ErrorKind::Encode);
    assert_eq!(
        cache.get::<BTreeMap<String, u8>>("ok").await,
        None,
        "nothing written"
    );
    // The loader's value is still returned when it cannot be cached.
    let loaded = map.clone();
    assert_eq!(
        cache.get_with("m", MINUTE, async move { loaded }).await,
        map
    );
}

/// An absurd TTL is the caller's error, not a panic; `get_with` still returns the value.
async fn absurd_ttls_are_refused(backend: Backend) {
    let cache = backend.cache();
    let err = cache
        .insert_with_ttl("k", &1u8, Duration::MAX)
        .await
        .expect_err("ttl too long");
    assert_eq!(err.kind(), cachelayer::ErrorKind::InvalidInput);
    let err = cache
        .insert_many_with_ttl([("k", 1u8)], Duration::MAX)
        .await
        .expect_err("ttl too long");
    assert_eq!(err.kind(), cachelayer::ErrorKind::InvalidInput);
    assert_eq!(cache.get_with("k", Duration::MAX, async { 2u8 }).await, 2);
    assert_eq!(cache.get::<u8>("k").await, None);
    let longest = cachelayer::store::MAX_TTL;
    cache
        .insert_with_ttl("max", &3u8, longest)
        .await
        .expect("10 years is allowed");
    assert_eq!(cache.get::<u8>("max").await, Some(3));
}

/// `Raw` bytes are stored as they are (envelope serialization `b`, the payload the bytes
/// themselves) and loaded once; a value of another kind under the key is a miss, not an
/// error, and the other way round, and it is left in place for the reader it was written
/// for.
async fn raw_bytes_are_stored_as_they_are(backend: Backend) {
    let cache = backend.cache();
    let body = Bytes::from_static(br#"{"id":7,"name":"lamp"}"#);
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let (loads, loaded) = (loads.clone(), body.clone());
        let value = cache
            .get_with("raw", MINUTE, async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Raw(loaded)
            })
            .await;
        assert_eq!(value, Raw(body.clone()));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let stored = backend.raw(&cache, "raw").await.expect("stored");
    assert_eq!(stored[3], b'b');
    assert_eq!(&stored[HEADER_LEN..], &body[..]);
    // A serialized value read as raw bytes, and raw bytes read as a typed value: misses.
    cache.insert("typed", &"text").await.expect("insert");
    let reloaded = cache
        .get_with("typed", MINUTE, async { Raw::from(b"new".as_slice()) })
        .await;
    assert_eq!(reloaded, Raw::from(b"new".as_slice()));
    assert_eq!(cache.get::<String>("raw").await, None);
    // Read by the wrong kind of reader, an entry is a miss, not damage: it is not deleted.
    assert!(backend.raw(&cache, "raw").await.is_some());
}

on_every_store!(
    absurd_ttls_are_refused,
    typed_values_round_trip,
    messagepack_round_trips,
    json_payload_is_readable,
    compression_threshold_boundary,
    compression_can_be_off,
    entries_expire,
    zero_ttl_means_do_not_cache,
    ttl_jitter_spreads_expiry,
    no_jitter_keeps_exact_ttl,
    namespace_and_version_isolate,
    untrusted_key_parts_are_contained,
    get_with_is_cache_aside,
    loader_errors_are_not_cached,
    invalidate_removes_entries,
    batch_of_a_thousand,
    unreadable_entries_are_misses_and_deleted,
    unreadable_entries_in_a_batch,
    unserializable_values_are_encode_errors,
    raw_bytes_are_stored_as_they_are,
);

/// Redis only: a batch read of 1,000 keys is one MGET, not 1,000 GETs, as Redis' own
/// command statistics show; a batch write is 1,000 SET PX (sent as one pipeline, whose single
/// round trip `benches/redis_round_trips.rs` measures).
#[tokio::test]
async fn batches_use_one_round_trip_on_redis() {
    let backend = Backend::redis().await;
    let cache = backend.cache();
    let server = backend.server();
    server.reset_stats();
    let entries: Vec<(String, u32)> = (0..1000).map(|i| (format!("k{i}"), i)).collect();
    cache.insert_many(entries).await.expect("insert_many");
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let values = cache.get_many::<u32, _>(&keys).await;
    assert!(values.iter().all(Option::is_some));
    assert_eq!(server.command_calls("mget"), 1);
    assert_eq!(server.command_calls("get"), 0);
    assert_eq!(server.command_calls("set"), 1000);
}

/// Redis only: garbage written straight into Redis by another client reads as a miss and
/// is deleted.
#[tokio::test]
async fn garbage_written_by_redis_cli_is_deleted() {
    let backend = Backend::redis().await;
    let cache = backend.cache();
    let key = cache.full_key("product:1");
    backend.server().set_raw(&key, b"\x01\x02garbage\xff");
    assert_eq!(cache.get::<Product>("product:1").await, None);
    assert_eq!(backend.server().cli(["EXISTS", key.as_str()]), "0");
}
