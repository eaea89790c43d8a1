//! `#[cached]` behaviour against a real redis-server and the in-process store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cachelayer::store::{MemoryStore, RedisStore, Store};
use cachelayer::{Cache, cached};
use cachelayer_testkit::RedisServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
}

fn product(id: u64) -> Product {
    Product {
        id,
        name: format!("product {id}"),
    }
}

/// Not `Clone`: waiting callers of a failed load run the body themselves.
#[derive(Debug, PartialEq)]
struct DbError(&'static str);

/// A store shared by every cache a test builds, and the server behind it, if any.
struct Backend {
    store: Arc<dyn Store>,
    _server: Option<RedisServer>,
}

impl Backend {
    fn redis() -> Self {
        let server = RedisServer::start();
        let store = RedisStore::builder(server.url())
            .command_timeout(Duration::from_secs(2))
            .build()
            .expect("store");
        Self {
            store: Arc::new(store),
            _server: Some(server),
        }
    }

    fn memory() -> Self {
        Self {
            store: Arc::new(MemoryStore::builder().build()),
            _server: None,
        }
    }

    /// A separately built cache handle on this backend's store, as another process would
    /// build its own.
    fn cache(&self) -> Cache {
        Cache::builder()
            .shared_store(Arc::clone(&self.store))
            .namespace("macros")
            .ttl_jitter(0.0)
            .command_timeout(Duration::from_secs(2))
            .build()
            .expect("cache")
    }
}

#[cached(ttl = "1m", key = "product:{id}", ignore(calls))]
async fn get_product(cache: &Cache, calls: &AtomicUsize, id: u64) -> Result<Product, DbError> {
    calls.fetch_add(1, Ordering::SeqCst);
    // Stands for a query: long enough for concurrent callers to arrive during it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if id == 0 {
        return Err(DbError("no product 0"));
    }
    Ok(product(id))
}

/// A cloneable error, shared with every waiting caller.
#[derive(Debug, Clone, PartialEq)]
struct SharedError(String);

#[cached(ttl = 60, ignore(calls))]
async fn flaky(cache: &Cache, calls: &AtomicUsize, id: u64) -> Result<u64, SharedError> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Err(SharedError(format!("{id} failed")))
}

#[cached(ttl = "1m", negative = "1m", ignore(calls))]
async fn find(cache: &Cache, calls: &AtomicUsize, id: u64) -> Option<Product> {
    calls.fetch_add(1, Ordering::SeqCst);
    (id != 404).then(|| product(id))
}

#[cached(ttl = "1m", unless = |p: &Product| p.name.is_empty(), ignore(calls))]
async fn draft_or_product(cache: &Cache, calls: &AtomicUsize, id: u64) -> Product {
    calls.fetch_add(1, Ordering::SeqCst);
    if id == 1 {
        Product {
            id,
            name: String::new(),
        }
    } else {
        product(id)
    }
}

/// Request context: the cache comes from it, and it is not part of any key.
struct AppState {
    cache: Cache,
    calls: AtomicUsize,
}

/// A catalogue service: a method with a receiver, the default key, and the cache taken from
/// an expression.
struct Catalog {
    calls: AtomicUsize,
}

impl Catalog {
    #[cached(ttl = "1m", cache = state.cache)]
    async fn search(&self, state: &AppState, query: &str, page: u32) -> Vec<String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        state.calls.fetch_add(1, Ordering::SeqCst);
        vec![format!("{query} #{page}")]
    }
}

async fn hit_returns_the_cached_value_without_running_the_body(backend: Backend) {
    let cache = backend.cache();
    let calls = AtomicUsize::new(0);
    assert_eq!(get_product(&cache, &calls, 7).await, Ok(product(7)));
    assert_eq!(get_product(&cache, &calls, 7).await, Ok(product(7)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get::<Product>("product:7").await, Some(product(7)));
}

async fn different_arguments_are_different_entries(backend: Backend) {
    let cache = backend.cache();
    let calls = AtomicUsize::new(0);
    assert_eq!(get_product(&cache, &calls, 1).await, Ok(product(1)));
    assert_eq!(get_product(&cache, &calls, 2).await, Ok(product(2)));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_ne!(
        get_product_key(&1).expect("key"),
        get_product_key(&2).expect("key")
    );

    let catalog = Catalog {
        calls: AtomicUsize::new(0),
    };
    let state = AppState {
        cache: cache.clone(),
        calls: AtomicUsize::new(0),
    };
    assert_eq!(catalog.search(&state, "lamp", 1).await, ["lamp #1"]);
    assert_eq!(catalog.search(&state, "lamp", 2).await, ["lamp #2"]);
    assert_eq!(catalog.search(&state, "lamp", 1).await, ["lamp #1"]);
    assert_eq!(catalog.calls.load(Ordering::SeqCst), 2);
    let key = Catalog::search_key("lamp", &1).expect("key");
    assert!(key.as_str().starts_with("cached.Catalog.search:#"), "{key}");
}

async fn keys_are_the_same_in_separately_built_caches(backend: Backend) {
    let (first, second) = (backend.cache(), backend.cache());
    let calls = AtomicUsize::new(0);
    assert_eq!(get_product(&first, &calls, 3).await, Ok(product(3)));
    assert_eq!(get_product(&second, &calls, 3).await, Ok(product(3)));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the second handle hit");

    let catalog = Catalog {
        calls: AtomicUsize::new(0),
    };
    for cache in [&first, &second] {
        let state = AppState {
            cache: cache.clone(),
            calls: AtomicUsize::new(0),
        };
        assert_eq!(catalog.search(&state, "desk", 1).await, ["desk #1"]);
    }
    assert_eq!(
        catalog.calls.load(Ordering::SeqCst),
        1,
        "default keys match too"
    );
}

async fn invalidate_drops_exactly_one_call(backend: Backend) {
    let cache = backend.cache();
    let calls = AtomicUsize::new(0);
    for id in [4, 5] {
        assert_eq!(get_product(&cache, &calls, id).await, Ok(product(id)));
    }
    get_product_invalidate(&cache, &4)
        .await
        .expect("invalidate");
    assert_eq!(cache.get::<Product>("product:4").await, None);
    assert_eq!(cache.get::<Product>("product:5").await, Some(product(5)));
    assert_eq!(get_product(&cache, &calls, 4).await, Ok(product(4)));
    assert_eq!(get_product(&cache, &calls, 5).await, Ok(product(5)));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "only 4 was loaded again");

    let catalog = Catalog {
        calls: AtomicUsize::new(0),
    };
    let state = AppState {
        cache: cache.clone(),
        calls: AtomicUsize::new(0),
    };
    catalog.search(&state, "chair", 1).await;
    catalog.search(&state, "chair", 2).await;
    Catalog::search_invalidate(&cache, "chair", &1)
        .await
        .expect("invalidate");
    catalog.search(&state, "chair", 1).await;
    catalog.search(&state, "chair", 2).await;
    assert_eq!(state.calls.load(Ordering::SeqCst), 3);
}

async fn errors_are_not_cached(backend: Backend) {
    let cache = backend.cache();
    let calls = AtomicUsize::new(0);
    assert_eq!(
        get_product(&cache, &calls, 0).await,
        Err(DbError("no product 0"))
    );
    assert_eq!(
        get_product(&cache, &calls, 0).await,
        Err(DbError("no product 0"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.get::<Product>("product:0").await, None);
}

async fn concurrent_calls_on_a_cold_key_run_the_body_once(backend: Backend) {
    let cache = backend.cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, calls) = (cache.clone(), Arc::clone(&calls));
            tokio::spawn(async move { get_product(&cache, &calls, 9).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.expect("caller"), Ok(product(9)));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn shared_errors_reach_waiting_callers(backend: Backend) {
    let cache = backend.cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let (cache, calls) = (cache.clone(), Arc::clone(&calls));
            tokio::spawn(async move { flaky(&cache, &calls, 1).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(
            caller.await.expect("caller"),
            Err(SharedError("1 failed".into()))
        );
    }
    // One run per wave of waiters: far fewer than 20 (without sharing each caller would run
    // the body in turn).
    let runs = calls.load(Ordering::SeqCst);
    assert!(runs < 5, "{runs} runs for 20 callers");
}

async fn uncloneable_errors_reach_every_caller(backend: Backend) {
    let cache = backend.cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (cache, calls) = (cache.clone(), Arc::clone(&calls));
            tokio::spawn(async move { get_product(&cache, &calls, 0).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(
            caller.await.expect("caller"),
            Err(DbError("no product 0")),
            "each caller gets its own error"
        );
    }
    assert_eq!(cache.get::<Product>("product:0").await, None);
}

#[cached(ttl = "1s", stale_while_revalidate = "1m", ignore(calls))]
async fn versioned(cache: &Cache, calls: &AtomicUsize) -> usize {
    calls.fetch_add(1, Ordering::SeqCst) + 1
}

/// Within the stale window the call that finds a stale value refreshes it in its own
/// foreground and returns the value it read; the next call gets the refreshed one.
async fn stale_values_are_refreshed_by_the_reader(backend: Backend) {
    let cache = backend.cache();
    let calls = AtomicUsize::new(0);
    assert_eq!(versioned(&cache, &calls).await, 1);
    // Expiry has no signal: this is time passing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(versioned(&cache, &calls).await, 1, "the stale value");
    assert_eq!(versioned(&cache, &calls).await, 2, "refreshed");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

async fn not_found_is_cached_with_negative(backend: Backend) {
    let cache = backend.cache();
    let calls = AtomicUsize::new(0);
    assert_eq!(find(&cache, &calls, 404).await, None);
    assert_eq!(find(&cache, &calls, 404).await, None);
    assert_eq!(find(&cache, &calls, 8).await, Some(product(8)));
    assert_eq!(find(&cache, &calls, 8).await, Some(product(8)));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

async fn unless_skips_storing(backend: Backend) {
    let cache = backend.cache();
    let calls = AtomicUsize::new(0);
    for _ in 0..2 {
        assert_eq!(draft_or_product(&cache, &calls, 1).await.name, "");
        assert_eq!(draft_or_product(&cache, &calls, 2).await, product(2));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the draft is loaded every time"
    );
}

#[cached(ttl = "1m")]
async fn decode_as<T>(cache: &Cache, id: u64) -> Vec<T>
where
    T: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + Default + 'static,
{
    let _ = cache;
    vec![T::default(); usize::try_from(id).unwrap_or(0)]
}

/// Instances of a generic function have their own entries.
async fn generic_instances_have_their_own_keys(backend: Backend) {
    let cache = backend.cache();
    assert_eq!(decode_as::<u8>(&cache, 2).await, vec![0u8, 0]);
    assert_eq!(decode_as::<String>(&cache, 2).await, vec![String::new(); 2]);
    assert_ne!(
        decode_as_key::<u8>(&2).expect("key"),
        decode_as_key::<String>(&2).expect("key")
    );
    assert_eq!(
        cache
            .get::<Vec<u8>>(decode_as_key::<u8>(&2).expect("key"))
            .await,
        Some(vec![0, 0])
    );
}

/// Policy differs per call: with a `cache` option, an argument named `cache` is key
/// material like any other.
#[cached(ttl = "1m", cache = state.cache)]
async fn with_policy(state: &AppState, cache: &str, id: u64) -> String {
    state.calls.fetch_add(1, Ordering::SeqCst);
    format!("{cache}:{id}")
}

async fn a_cache_named_argument_is_key_material_with_the_cache_option(backend: Backend) {
    let state = AppState {
        cache: backend.cache(),
        calls: AtomicUsize::new(0),
    };
    assert_eq!(with_policy(&state, "hot", 1).await, "hot:1");
    assert_eq!(with_policy(&state, "cold", 1).await, "cold:1");
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
}

macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::redis()).await;
                }
            )*
        }
        mod on_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::memory()).await;
                }
            )*
        }
    };
}

on_every_store!(
    hit_returns_the_cached_value_without_running_the_body,
    different_arguments_are_different_entries,
    keys_are_the_same_in_separately_built_caches,
    invalidate_drops_exactly_one_call,
    errors_are_not_cached,
    concurrent_calls_on_a_cold_key_run_the_body_once,
    shared_errors_reach_waiting_callers,
    uncloneable_errors_reach_every_caller,
    stale_values_are_refreshed_by_the_reader,
    not_found_is_cached_with_negative,
    unless_skips_storing,
    generic_instances_have_their_own_keys,
    a_cache_named_argument_is_key_material_with_the_cache_option,
);

#[cached(ttl = 60, ignore(calls))]
async fn with_global_cache(calls: &AtomicUsize, x: u32) -> u32 {
    calls.fetch_add(1, Ordering::SeqCst);
    x * 2
}

/// Without a `cache` argument or option, the process-wide cache is used once it is set;
/// before, calls run uncached.
#[tokio::test]
async fn global_cache_is_used_when_set() {
    let calls = AtomicUsize::new(0);
    assert_eq!(with_global_cache(&calls, 2).await, 4);
    assert_eq!(with_global_cache(&calls, 2).await, 4);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "no global cache yet");
    let cache = Backend::memory().cache();
    Cache::set_global(cache.clone()).expect("first global");
    assert_eq!(with_global_cache(&calls, 2).await, 4);
    assert_eq!(with_global_cache(&calls, 2).await, 4);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let key = with_global_cache_key(&2).expect("key");
    assert_eq!(cache.get::<u32>(key).await, Some(4));
}
