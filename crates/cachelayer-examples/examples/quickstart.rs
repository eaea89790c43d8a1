//! A tour of the cache against the embedded in-process store (or Redis, when
//! `CACHELAYER_REDIS_URL` is set): cache-aside over a slow "database", batch reads and
//! writes, a stampede of 100 concurrent misses that load once, invalidation, and the
//! circuit breaker's state.
//!
//! Run with: `cargo run --release --example quickstart`
//! Against Redis: `CACHELAYER_REDIS_URL=redis://127.0.0.1:6379/0 cargo run --release --example quickstart`

use std::time::{Duration, Instant};

use cachelayer::config::Secret;
use cachelayer::{CacheConfig, Key};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u32,
}

/// Stands in for a database query that takes 50 ms.
async fn load_product(id: u64) -> Product {
    tokio::time::sleep(Duration::from_millis(50)).await;
    Product {
        id,
        name: format!("Product {id}"),
        price_cents: 999 + id as u32,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let config = CacheConfig {
        redis_url: std::env::var("CACHELAYER_REDIS_URL").ok().map(Secret::new),
        namespace: "quickstart".into(),
        ..CacheConfig::default()
    };
    let cache = config.build()?;
    println!("store: {}", cache.store().kind());

    let key = Key::new("product").part(1);
    cache.invalidate(&key).await?;
    let ttl = Duration::from_secs(60);
    for attempt in ["miss", "hit"] {
        let started = Instant::now();
        let product = cache.get_with(&key, ttl, load_product(1)).await;
        println!("{attempt}: {product:?} in {:?}", started.elapsed());
    }

    // A stampede: 100 concurrent requests for a cold key share one 50 ms load.
    let loads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stampede_key = Key::new("product").part(100);
    cache.invalidate(&stampede_key).await?;
    let started = Instant::now();
    let callers = (0..100).map(|_| {
        let (cache, key, loads) = (cache.clone(), stampede_key.clone(), loads.clone());
        tokio::spawn(async move {
            cache
                .get_with(&key, ttl, async move {
                    loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    load_product(100).await
                })
                .await
        })
    });
    let served = futures::future::join_all(callers).await.len();
    println!(
        "stampede: {served} callers served by {} load in {:?}",
        loads.load(std::sync::atomic::Ordering::SeqCst),
        started.elapsed()
    );

    let products: Vec<(Key, Product)> = futures::future::join_all((2..12).map(load_product))
        .await
        .into_iter()
        .map(|p| (Key::new("product").part(p.id), p))
        .collect();
    cache
        .insert_many(products.iter().map(|(k, p)| (k, p)))
        .await?;
    let started = Instant::now();
    let keys: Vec<&Key> = products.iter().map(|(k, _)| k).collect();
    let batch = cache.get_many::<Product, _>(keys).await;
    let hits = batch.iter().filter(|p| p.is_some()).count();
    println!(
        "batch read: {hits}/{} hits in {:?}",
        batch.len(),
        started.elapsed()
    );

    cache.invalidate(&key).await?;
    println!(
        "after invalidate: {:?}",
        cache.get::<Product>(&key).await.map(|p| p.name)
    );
    println!("store round trip: {:?}", cache.ping().await?);
    println!("circuit breaker: {}", cache.breaker_state().as_str());
    Ok(())
}
