//! The `cachelayer` binary, as a library so its tests and benchmarks can reach its parts.
//!
//! Two commands: `cachelayer serve` runs a product catalogue API over a real SQL database
//! (SQLite by default, PostgreSQL by URL), cached end to end with the `cachelayer` library;
//! `cachelayer proxy` puts the library's HTTP cache layer in front of any existing API.
//! Nothing here is a stable API for other crates: it must never grow types that the
//! `cachelayer` library should own (stores, caching policy), only the two services.
//!
//! # Layout
//!
//! One folder per command, and beside them what both use, each module named for what it
//! does:
//!
//! - [`cli`]: the command line and its dispatch; the only module that knows both commands.
//! - [`serve`]: `cachelayer serve`: its flags (`serve::config`), the router and its state,
//!   the product routes, its `/health` report, the catalogue (reads through the cache;
//!   writes, then invalidation everywhere), the database, the product and its validation,
//!   and the OpenAPI description.
//! - [`proxy`]: `cachelayer proxy`: its flags and rules file, the dispatch of client
//!   requests (a cache layer or a bypass), forwarding upstream, its `/health` report and
//!   its admin listener.
//! - [`flags`]: the flags both commands take (cache, Redis, admin token, logging) and the
//!   parsers of durations, addresses and worker counts.
//! - `listen`: binding, serving, and the one graceful shutdown and drain sequence.
//! - [`logging`]: the log subscriber. `metrics`: the Prometheus recorder and `/metrics`.
//!   `observe`: the per-request metrics, cache outcomes and log line.
//! - `health`: health statuses, time-boxed checks, Redis's health, liveness and the one
//!   readiness handler.
//! - `admin`: `POST /admin/invalidate`.
//! - `error`: [`Error`] (start-up) and the JSON error answers.
//!
//! # Dependency direction
//!
//! `main.rs` → `cli` → `serve` and `proxy` → the shared modules (`admin`, `health`,
//! `listen`, `observe`, `metrics`, `flags`, `logging`) → `error`. `serve` and `proxy`
//! never import each other; the shared modules import neither. Inside a command folder,
//! `mod.rs` runs the command and its files never import `mod.rs`. There is no import cycle
//! between any two modules.

mod admin;
pub mod cli;
mod error;
pub mod flags;
mod health;
mod listen;
pub mod logging;
mod metrics;
mod observe;
pub mod proxy;
pub mod serve;

pub use crate::error::{Error, ErrorKind};
pub use crate::listen::{LimitArgs, Limits};
pub use crate::observe::{HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS};
pub use crate::serve::{ApiDoc, DB_QUERIES, INVALIDATION_FAILURES};
