//! HTTP response caching as a shared cache (RFC 9111), for tower and axum. Work in progress:
//! so far the caching rules (`policy`); the layer itself builds on them.
//!
//! This module must never depend on a particular server: it speaks `http` types only, and
//! stores through [`Cache`](crate::Cache) like every other value.

pub mod policy;
