//! HTTP response caching as a shared cache (RFC 9111), for tower and axum:
//! `Router::new()....layer(ResponseCacheLayer::new(cache))`.
//!
//! The layer, one concept per module:
//! - `layer`: the builder ([`ResponseCacheLayer`]) and purges; `settings`: what it hands to
//!   each service;
//! - `service`: the tower service ([`ResponseCache`]) and the flow of one request;
//! - `lookup`: judging what was stored for a request, a pure function to a phase;
//! - `collapse`: one origin call for concurrent misses of a key; `forward`: origin calls
//!   that wait on no one;
//! - `vary`: `Vary` markers, variant keys, reading and writing entries; `selecting`: the
//!   normal form of the request values they compare;
//! - `revalidate`: conditional requests to the origin and refreshing from a 304;
//! - `admit`: what of an origin's response is stored; `lifetime`: for how long;
//! - `respond`: responses the cache makes itself; `range`: `206`s and `416`s from stored
//!   responses; `body`: bodies, buffered and boxed;
//! - `refresh`: background refresh; `write`: other methods, and `POST` responses reused
//!   for GET; `invalidate`: invalidation after writes.
//!
//! What the layer builds on, public where a server needs it too:
//! - [`policy`]: what may be stored, for how long, and whether a request accepts it;
//! - [`key`]: keys from the layer's scope, host (checked against an allow-list), path and
//!   normalized query, and the request values a response's `Vary` names;
//! - [`path`]: the one normal form of a path, for keys, the origin and invalidation;
//! - `escapes`: percent-encodings in their normal form, for paths and query keys alike;
//! - [`headers`]: the hop-by-hop fields, never stored, forwarded, nor judged;
//! - [`status`]: `X-Cache` and `Cache-Status`, rendered from how a response was produced;
//! - `stored`: the stored form of a response; `tags`: tags on responses and their
//!   invalidation across instances.
//!
//! This module must never depend on a particular server: it speaks `http` and `tower` types
//! only, and stores through [`Cache`](crate::Cache) like every other value.

mod admit;
mod body;
mod collapse;
pub mod conditional;
mod escapes;
mod forward;
pub mod headers;
pub(crate) mod invalidate;
pub mod key;
mod layer;
mod lifetime;
mod lookup;
pub mod path;
pub mod policy;
pub(crate) mod range;
mod refresh;
pub(crate) mod respond;
mod revalidate;
pub(crate) mod selecting;
mod service;
mod settings;
pub mod status;
pub(crate) mod stored;
pub(crate) mod tags;
mod vary;
mod write;

pub use self::body::{BoxError, CacheBody};
pub use self::invalidate::Purged;
pub use self::key::HostPort;
pub use self::layer::{DEFAULT_MAX_BODY_BYTES, DEFAULT_PASS_TTL, ResponseCacheLayer};
pub use self::service::ResponseCache;
pub use self::tags::{CacheTags, TAG_HEADERS, tag_version_key};
