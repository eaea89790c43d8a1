//! Test support for cachelayer: real `redis-server` processes on free ports, in temporary
//! directories, killed when dropped — a single server ([`RedisServer`]), a Redis Cluster
//! ([`RedisCluster`]) and a Sentinel set-up ([`RedisSentinel`]); an HTTP origin scripted per
//! path ([`origin`]); and RFC 9111 conformance cases with the driver that runs them against
//! any cache ([`rfc9111`]); and the configuration every fuzz target shares ([`fuzz`]).
//!
//! Tests must never touch a shared Redis (such as one on 6379): every server here is started
//! for the test that owns it. Readiness is signalled by the server's own "Ready to accept
//! connections" log line, not by sleeping; only states Redis signals nowhere (a cluster having
//! formed, a failover having finished) are polled, and always with a bound. This crate must
//! never depend on the library it tests, so a broken library cannot break its own harness.

pub mod fuzz;
pub mod origin;
mod redis_cluster;
mod redis_sentinel;
mod redis_server;
pub mod rfc9111;
mod tls;

pub use redis_cluster::{RedisCluster, RedisClusterBuilder};
pub use redis_sentinel::{RedisSentinel, RedisSentinelBuilder};
pub use redis_server::{RedisServer, RedisServerBuilder};
pub use tls::TestCertificates;
