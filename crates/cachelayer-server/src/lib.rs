//! The `cachelayer` binary, as a library so its tests and benchmarks can reach its parts.
//!
//! `cachelayer serve` runs a product catalogue API over a real SQL database (SQLite by
//! default, PostgreSQL by URL), cached end to end with the `cachelayer` library: single
//! products through `Cache::try_get_optional_with_source`, list pages through the HTTP cache
//! layer, with health checks, Prometheus metrics, admin invalidation and an OpenAPI
//! description. Nothing here is a stable API for other crates: it must never grow types
//! that the `cachelayer` library should own (stores, caching policy), only the service.
//!
//! # Layout
//!
//! Dependencies point one way: `server` → `app` (routes) → `api` / `health` / `admin` →
//! `catalogue` (cache and invalidation) → `db` (SQL) and `product` (the resource and its
//! validation).
//!
//! - [`config`]: the command line and environment, checked into a [`ServeConfig`].
//! - `server`: start-up, background tasks, graceful shutdown ([`serve`]).
//! - `app`: the router and its layers.
//! - `api`, `health`, `admin`, `openapi`: the routes.
//! - `catalogue`: reads through the cache; writes, then invalidation everywhere.
//! - `db`: SQLite and PostgreSQL behind one type, with embedded migrations.
//! - `product`: the product, its writable fields, and their validation.
//! - `observe`: metrics and request logs.
//! - `proxy`: `cachelayer proxy`, the HTTP cache in front of any upstream: forwarding
//!   (`proxy::forward`), per-path rules (`proxy::rules`) and the admin listener.
//! - `error`: [`Error`] (start-up) and the API's JSON errors.

mod admin;
mod api;
mod app;
mod catalogue;
pub mod config;
mod db;
mod error;
mod health;
mod observe;
mod openapi;
mod product;
mod proxy;
mod server;

pub use crate::catalogue::INVALIDATION_FAILURES;
pub use crate::config::{Cli, Command, ProxyConfig, ServeConfig};
pub use crate::db::DB_QUERIES;
pub use crate::error::{Error, ErrorKind};
pub use crate::observe::{HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS};
pub use crate::openapi::ApiDoc;
pub use crate::proxy::{Rule, RuleAction, proxy_main};
pub use crate::server::{init_logging, serve};
