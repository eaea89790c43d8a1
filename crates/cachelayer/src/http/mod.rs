//! HTTP response caching as a shared cache (RFC 9111), for tower and axum:
//! `Router::new()....layer(ResponseCacheLayer::new(cache))`.
//!
//! - `policy`: what may be stored, for how long, and whether a request accepts it;
//! - `key`: keys from host (checked against an allow-list), path and normalized query, and
//!   the request values a response's `Vary` names;
//! - `stored`: the stored form of a response;
//! - `tags`: tags on responses and their invalidation across instances;
//! - `headers`: the hop-by-hop fields, never stored nor forwarded;
//! - `status`: `X-Cache` and `Cache-Status`, rendered from how a response was produced;
//! - `layer`: the tower layer and service.
//!
//! This module must never depend on a particular server: it speaks `http` and `tower` types
//! only, and stores through [`Cache`](crate::Cache) like every other value.

pub mod headers;
pub mod key;
mod layer;
pub mod policy;
pub mod status;
mod stored;
mod tags;

pub use self::layer::{
    BoxError, CacheBody, DEFAULT_MAX_BODY_BYTES, DEFAULT_PASS_TTL, ResponseCache,
    ResponseCacheLayer,
};
pub use self::tags::CacheTags;
