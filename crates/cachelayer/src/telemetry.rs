//! Metric names, emitted through the `metrics` facade so applications choose the exporter.
//!
//! Names are stable API: dashboards depend on them. This module must never install a
//! recorder or pick an exporter; that is the application's decision.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `cachelayer_hits_total` | counter | | typed reads answered from the store |
//! | `cachelayer_misses_total` | counter | | typed reads that found nothing usable |
//! | `cachelayer_store_errors_total` | counter | `op`, `kind` | store calls that failed, by [`ErrorKind`](crate::ErrorKind) label |
//! | `cachelayer_store_duration_seconds` | histogram | `op` | store call latency, failures included |
//! | `cachelayer_bytes_read_total` | counter | | bytes read from the store |
//! | `cachelayer_bytes_written_total` | counter | | bytes written to the store |
//! | `cachelayer_compression_ratio` | histogram | | uncompressed / stored payload size, per compressed write |
//! | `cachelayer_decode_failures_total` | counter | `reason` | unreadable entries, deleted and treated as misses |
//! | `cachelayer_writes_dropped_total` | counter | `reason` | writes skipped because the store failed or the breaker was open |
//! | `cachelayer_breaker_state` | gauge | | 0 closed, 1 half-open, 2 open |
//! | `cachelayer_breaker_transitions_total` | counter | `to` | breaker state changes |
//! | `cachelayer_subscription_dropped_total` | counter | | pub/sub messages dropped because a subscriber lagged |
//! | `cachelayer_subscription_reconnects_total` | counter | | pub/sub connections lost (each is then re-established in the background) |

/// Typed reads answered from the store.
pub const HITS: &str = "cachelayer_hits_total";
/// Typed reads that found nothing usable.
pub const MISSES: &str = "cachelayer_misses_total";
/// Store calls that failed.
pub const STORE_ERRORS: &str = "cachelayer_store_errors_total";
/// Store call latency.
pub const STORE_DURATION: &str = "cachelayer_store_duration_seconds";
/// Bytes read from the store.
pub const BYTES_READ: &str = "cachelayer_bytes_read_total";
/// Bytes written to the store.
pub const BYTES_WRITTEN: &str = "cachelayer_bytes_written_total";
/// Uncompressed / stored size of compressed payloads.
pub const COMPRESSION_RATIO: &str = "cachelayer_compression_ratio";
/// Unreadable entries found (and deleted).
pub const DECODE_FAILURES: &str = "cachelayer_decode_failures_total";
/// Writes skipped because the store failed or the breaker was open.
pub const WRITES_DROPPED: &str = "cachelayer_writes_dropped_total";
/// Breaker state: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "cachelayer_breaker_state";
/// Breaker state changes.
pub const BREAKER_TRANSITIONS: &str = "cachelayer_breaker_transitions_total";
/// Pub/sub messages dropped for a lagging subscriber.
pub const SUBSCRIPTION_DROPPED: &str = "cachelayer_subscription_dropped_total";
/// Pub/sub connections lost (each is then re-established in the background).
pub const SUBSCRIPTION_RECONNECTS: &str = "cachelayer_subscription_reconnects_total";
