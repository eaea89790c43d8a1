//! Compile-time guarantees of the public API: the handle is shareable across tasks, and its
//! futures are `Send`, so they can run in axum handlers and `tokio::spawn`.

use std::time::Duration;

use cachelayer::Cache;
use cachelayer::store::{MemoryStore, RedisStore};

fn assert_send<T: Send>(_: &T) {}
fn assert_shareable<T: Send + Sync + Clone + 'static>() {}

/// `Cache`, the stores and their futures can cross threads.
#[tokio::test]
async fn handles_and_futures_are_send() {
    assert_shareable::<Cache>();
    assert_shareable::<MemoryStore>();
    assert_shareable::<RedisStore>();
    let cache = Cache::builder().build().expect("cache");
    let ttl = Duration::from_secs(1);
    let get_with = cache.get_with("k", ttl, async { 1u8 });
    assert_send(&get_with);
    assert_eq!(get_with.await, 1);
    let try_get_with = cache.try_get_with("k2", ttl, async { Ok::<u8, String>(2) });
    assert_send(&try_get_with);
    assert_eq!(try_get_with.await, Ok(2));
    let get = cache.get::<u8>("k");
    assert_send(&get);
    assert_eq!(get.await, Some(1));
    let many = cache.get_many::<u8, _>(vec!["k", "k2"]);
    assert_send(&many);
    assert_eq!(many.await, vec![Some(1), Some(2)]);
    let store = cache.store().clone();
    let handle = tokio::spawn(async move { store.ping().await });
    handle.await.expect("join").expect("ping");
}
