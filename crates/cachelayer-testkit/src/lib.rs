//! Test support for cachelayer: real `redis-server` processes on free ports, in temporary
//! directories, killed when dropped.
//!
//! Tests must never touch a shared Redis (such as one on 6379): every server here is started
//! for the test that owns it. Readiness is signalled by the server's own "Ready to accept
//! connections" log line, not by sleeping. This crate must never depend on the library it
//! tests, so a broken library cannot break its own harness.

mod redis_server;
mod tls;

pub use redis_server::{RedisServer, RedisServerBuilder};
pub use tls::TestCertificates;
