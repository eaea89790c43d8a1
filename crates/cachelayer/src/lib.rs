//! cachelayer: a typed, fail-open cache-aside layer for web APIs, over Redis (shared by
//! every instance of a service) or an in-process store.
//!
//! ```
//! use std::time::Duration;
//! use cachelayer::{Cache, Key};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> cachelayer::Result<()> {
//! let cache = Cache::builder().namespace("shop").build()?;
//! let price: u32 = cache
//!     .get_with(Key::new("price").part("sku-1"), Duration::from_secs(30), async { 1299 })
//!     .await;
//! assert_eq!(cache.get::<u32>("price:sku-1").await, Some(price));
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! Dependencies point one way: `http` → [`Cache`] → (stampede, [`codec`], [`key`],
//! breaker) → [`store`].
//!
//! - [`store`]: the [`Store`](store::Store) trait (bytes in, bytes out) and its two
//!   implementations, [`RedisStore`](store::RedisStore) and [`MemoryStore`](store::MemoryStore).
//! - [`codec`]: the versioned envelope every value is stored in (serialization, compression,
//!   metadata); unreadable bytes decode to a [`DecodeFailure`](codec::DecodeFailure), never a
//!   panic.
//! - [`key`]: keys that are safe to build from untrusted input.
//! - `cache`: the typed [`Cache`] handle, its [`CacheBuilder`] and the failure policy.
//! - `stampede`: one load per key across the fleet: [`LoadOptions`], [`StampedeSettings`],
//!   in-process single flight, fill announcements and the early refresh decision (XFetch).
//! - `breaker`: the circuit breaker in front of the store ([`BreakerState`]).
//! - [`config`]: [`CacheConfig`], every setting as plain data.
//! - [`telemetry`]: the names of the metrics emitted through the `metrics` facade.
//! - `error`: the crate's [`Error`] and [`ErrorKind`], and [`LoadError`] for loads.
//! - `http` (feature `http`): `ResponseCacheLayer`, the tower/axum layer that caches HTTP
//!   responses as an RFC 9111 shared cache.
//! - `cached` (feature `macros`): the `#[cached]` attribute from `cachelayer-macros`; what its
//!   expansion calls lives in a hidden module, not a stable API.

#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __private;
pub mod breaker;
pub mod cache;
mod codec;
pub mod config;
pub mod error;
#[cfg(feature = "http")]
pub mod http;
pub mod key;
mod random;
pub mod stampede;
pub mod store;
pub mod telemetry;
mod token;

pub use crate::breaker::BreakerState;
pub use crate::cache::{Cache, CacheBuilder, Entry, Fetched, LoadSource};
pub use crate::codec::Serialization;
pub use crate::config::CacheConfig;
pub use crate::error::{Error, ErrorKind, LoadError, LoadErrorKind, Result};
pub use crate::key::Key;
pub use crate::stampede::{LoadOptions, OnLockTimeout, StampedeSettings};
/// Caches an async function: see the `cachelayer-macros` crate's documentation.
#[cfg(feature = "macros")]
pub use cachelayer_macros::cached;

/// Compiles the README's examples as doc tests, so they cannot drift from the API.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
