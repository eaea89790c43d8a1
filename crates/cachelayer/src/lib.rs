//! cachelayer: a typed, fail-open cache-aside layer for web APIs, over Redis (shared by
//! every instance of a service) or an in-process store.
//!
//! A [`Cache`] stores any `Serialize + DeserializeOwned` value under a [`Key`]. Cache
//! faults never become user faults: with the store down, slow or holding garbage, reads
//! are misses and loaders' values are served. A cold key is loaded once across every
//! process sharing the store; hot keys are refreshed before they expire; stale values can
//! stand in while a refresh runs or when the source fails. The guides in the repository's
//! `docs/` folder (`docs/library.md` first) go further than this page; every example on
//! this page and in those guides is compiled by the doc tests.
//!
//! The crate is not on crates.io: depend on it by path (or by `git`) from a checkout of
//! its repository, with the features you use:
//!
//! ```toml
//! [dependencies]
//! cachelayer = { path = "../cachelayer/crates/cachelayer", features = ["macros", "http"] }
//! ```
//!
//! # Cache-aside
//!
//! [`Cache::get_with`] returns the cached value, or runs the loader on a miss and stores
//! its value; concurrent misses of one key share one loader run. [`Cache::try_get_with`]
//! takes a fallible loader (errors are returned as a [`LoadError`], never cached).
//!
//! ```
//! use std::time::Duration;
//!
//! use cachelayer::{Cache, Key};
//!
//! #[tokio::main]
//! async fn main() -> cachelayer::Result<()> {
//!     let cache = Cache::builder().namespace("shop").build()?;
//!     let key = Key::new("price").part("sku-1");
//!     let price: u32 = cache.get_with(&key, Duration::from_secs(30), async { 1299 }).await;
//!     assert_eq!(cache.get::<u32>("price:sku-1").await, Some(price));
//!
//!     // After a write to the source of truth; unlike reads, this reports store failures.
//!     cache.invalidate(&key).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Stampede protection and stale serving
//!
//! [`LoadOptions`] set, per call, what [`StampedeSettings`] set for the whole cache: the
//! fleet-wide lock, early refresh (XFetch), stale-while-revalidate, stale-if-error and
//! negative caching. A bare [`Duration`](std::time::Duration) is a `LoadOptions` with only a
//! TTL.
//!
//! ```
//! use std::time::Duration;
//!
//! use cachelayer::{Cache, LoadOptions};
//!
//! #[tokio::main]
//! async fn main() -> cachelayer::Result<()> {
//!     let cache = Cache::builder().build()?;
//!     let options = LoadOptions::ttl(Duration::from_secs(60))
//!         .stale_while_revalidate(Duration::from_secs(30)) // served at once, refreshed behind
//!         .stale_if_error(Duration::from_secs(600)); // served when the loader fails
//!     let name: String = cache
//!         .get_with("product:1:name", options, async { "lamp".to_owned() })
//!         .await;
//!     assert_eq!(name, "lamp");
//!     Ok(())
//! }
//! ```
//!
//! # Batches
//!
//! [`Cache::get_many`] and [`Cache::insert_many`] are one round trip each (`MGET`, and a
//! pipeline of `SET PX`).
//!
//! ```
//! use cachelayer::Cache;
//!
//! #[tokio::main]
//! async fn main() -> cachelayer::Result<()> {
//!     let cache = Cache::builder().build()?;
//!     cache.insert_many([("a", 1u32), ("b", 2)]).await?;
//!     let values: Vec<Option<u32>> = cache.get_many(["a", "b", "c"]).await;
//!     assert_eq!(values, [Some(1), Some(2), None]);
//!     Ok(())
//! }
//! ```
//!
//! # Caching a function: `#[cached]` (feature `macros`)
//!
//! The `cached` attribute wraps an async function in the same machinery, with stable keys,
//! a `<name>_key` and a `<name>_invalidate` helper beside it; its page lists every option.
//!
#![cfg_attr(feature = "macros", doc = "```")]
#![cfg_attr(not(feature = "macros"), doc = "```ignore")]
//! use cachelayer::{Cache, cached};
//!
//! #[cached(ttl = "5m", key = "greeting:{name}")]
//! async fn greeting(cache: &Cache, name: String) -> String {
//!     format!("hello, {name}") // the expensive part
//! }
//!
//! #[tokio::main]
//! async fn main() -> cachelayer::Result<()> {
//!     let cache = Cache::builder().build()?;
//!     assert_eq!(greeting(&cache, "ada".to_owned()).await, "hello, ada");
//!     greeting_invalidate(&cache, &"ada".to_owned()).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Caching HTTP responses (feature `http`)
//!
//! `http::ResponseCacheLayer` is a tower layer (for axum and any tower service) that caches
//! responses as an RFC 9111 shared cache, stores them through a [`Cache`], and says what it
//! did in `X-Cache` and `Cache-Status`.
//!
#![cfg_attr(feature = "http", doc = "```")]
#![cfg_attr(not(feature = "http"), doc = "```ignore")]
//! use std::time::Duration;
//!
//! use axum::Router;
//! use axum::body::Body;
//! use axum::http::{Request, header};
//! use axum::routing::get;
//! use cachelayer::Cache;
//! use cachelayer::http::ResponseCacheLayer;
//! use tower::ServiceExt;
//!
//! async fn list_products() -> ([(header::HeaderName, &'static str); 1], &'static str) {
//!     ([(header::CACHE_CONTROL, "public, max-age=60")], "[]")
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let layer = ResponseCacheLayer::new(Cache::builder().build()?)
//!         .allowed_hosts(["shop.example"])
//!         .stale_if_error(Duration::from_secs(600));
//!     let app: Router = Router::new().route("/products", get(list_products)).layer(layer);
//!
//!     let request = Request::get("/products")
//!         .header(header::HOST, "shop.example")
//!         .body(Body::empty())?;
//!     let response = app.oneshot(request).await?;
//!     assert_eq!(response.headers()["x-cache"], "MISS");
//!     Ok(())
//! }
//! ```
//!
//! # Redis
//!
//! Without a store, a cache uses the in-process [`MemoryStore`](store::MemoryStore). A
//! [`RedisStore`](store::RedisStore) shares it with every instance; building one never
//! dials, so a service starts while Redis is down. This example needs a Redis on
//! 127.0.0.1:6379.
//!
//! ```no_run
//! use cachelayer::Cache;
//! use cachelayer::store::RedisStore;
//!
//! #[tokio::main]
//! async fn main() -> cachelayer::Result<()> {
//!     let store = RedisStore::builder("redis://127.0.0.1:6379/0").build()?;
//!     let cache = Cache::builder().store(store).namespace("shop").build()?;
//!     println!("Redis answered in {:?}", cache.ping().await?);
//!     Ok(())
//! }
//! ```
//!
//! # Configuration
//!
//! Every setting has a default and a builder method; [`CacheConfig`] holds them all as plain
//! data for configuration files (serde; unknown fields are refused by name), and
//! [`CacheConfig::build`] makes the cache.
//!
//! ```
//! use cachelayer::CacheConfig;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config: CacheConfig =
//!         serde_json::from_str(r#"{ "namespace": "shop", "version": 2, "zstd_level": 3 }"#)?;
//!     let cache = config.build()?;
//!     assert_eq!(cache.full_key("price:sku-1"), "shop:v2:price:sku-1");
//!     Ok(())
//! }
//! ```
//!
//! # Layout
//!
//! Dependencies point one way: `http` → [`Cache`] → (stampede, codec, [`key`], breaker) →
//! [`store`].
//!
//! - [`store`]: the [`Store`](store::Store) trait (bytes in, bytes out) and its two
//!   implementations, [`RedisStore`](store::RedisStore) and [`MemoryStore`](store::MemoryStore).
//! - `codec` (internal): the versioned envelope every value is stored in (serialization,
//!   compression, metadata); unreadable bytes decode to a failure counted by reason, never a
//!   panic.
//! - [`key`]: keys that are safe to build from untrusted input.
//! - [`cache`]: the typed [`Cache`] handle, its [`CacheBuilder`], the failure policy, and loads
//!   with stampede protection ([`Cache::get_with`], [`Cache::entry`]).
//! - [`stampede`]: one load per key across the fleet: [`LoadOptions`], [`StampedeSettings`],
//!   in-process single flight, store notices and the early refresh decision (XFetch).
//! - [`breaker`]: the circuit breaker in front of the store ([`BreakerState`]).
//! - [`config`]: [`CacheConfig`], every setting as plain data, and [`Secret`](config::Secret).
//! - [`telemetry`]: the names of the metrics emitted through the `metrics` facade.
//! - [`error`]: the crate's [`Error`] and [`ErrorKind`], and [`LoadError`] for loads.
//! - `http` (feature `http`): `ResponseCacheLayer`, the tower/axum layer that caches HTTP
//!   responses as an RFC 9111 shared cache.
//! - `cached` (feature `macros`): the `#[cached]` attribute from `cachelayer-macros`; what its
//!   expansion calls lives in a hidden module, not a stable API.

// docs.rs builds with `--cfg docsrs` on nightly: mark feature-gated items with their feature.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __private;
pub mod breaker;
pub mod cache;
mod codec;
pub mod config;
pub mod error;
#[cfg(test)]
mod fuzz;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod key;
pub mod near;
mod payload;
mod random;
pub mod stampede;
pub mod store;
pub mod telemetry;
mod token;

pub use crate::breaker::BreakerState;
pub use crate::cache::{Cache, CacheBuilder, Entry, Fetched, LoadSource, Removal};
pub use crate::codec::Serialization;
pub use crate::config::CacheConfig;
pub use crate::error::{Error, ErrorKind, LoadError, LoadErrorKind, Result};
pub use crate::key::Key;
pub use crate::payload::{Raw, Value};
pub use crate::stampede::{LoadOptions, OnLockTimeout, StampedeSettings};
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
#[doc(inline)]
pub use cachelayer_macros::cached;

// The Rust blocks of the README and of the guides in docs/ are compiled (and run) as doc
// tests, one hidden struct per page, so what a reader copies cannot drift from the API.
// They use every feature, so they are compiled only when every feature is on.

/// The README's examples.
#[doc = include_str!("../../../README.md")]
#[cfg(all(doctest, feature = "macros", feature = "http"))]
pub struct ReadmeDoctests;

/// The library guide's examples.
#[doc = include_str!("../../../docs/library.md")]
#[cfg(all(doctest, feature = "macros", feature = "http"))]
pub struct LibraryGuideDoctests;

/// The HTTP layer guide's examples.
#[doc = include_str!("../../../docs/http-layer.md")]
#[cfg(all(doctest, feature = "macros", feature = "http"))]
pub struct HttpLayerGuideDoctests;

/// The near tier guide's examples.
#[doc = include_str!("../../../docs/near-cache.md")]
#[cfg(all(doctest, feature = "macros", feature = "http"))]
pub struct NearCacheGuideDoctests;

/// The Redis deployments guide's examples.
#[doc = include_str!("../../../docs/redis-deployments.md")]
#[cfg(all(doctest, feature = "macros", feature = "http"))]
pub struct RedisDeploymentsGuideDoctests;
