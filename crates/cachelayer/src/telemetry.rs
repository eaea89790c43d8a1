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
//! | `cachelayer_breaker_state` | gauge | `node` (Redis Cluster only) | 0 closed, 1 half-open, 2 open; on a Redis Cluster one per primary |
//! | `cachelayer_breaker_transitions_total` | counter | `to`, `node` (Redis Cluster only) | breaker state changes |
//! | `cachelayer_subscription_dropped_total` | counter | | pub/sub messages dropped because a subscriber lagged |
//! | `cachelayer_subscription_reconnects_total` | counter | | pub/sub connections lost (each is then re-established in the background) |
//! | `cachelayer_loader_calls_total` | counter | | loader runs (foreground and background) |
//! | `cachelayer_loader_duration_seconds` | histogram | | loader run time, failures included |
//! | `cachelayer_loader_errors_total` | counter | `kind` (`error`, `panic`) | loader runs that failed |
//! | `cachelayer_coalesced_waits_total` | counter | | callers that waited on another caller's load in the same process |
//! | `cachelayer_lock_events_total` | counter | `event` (`acquired`, `contended`, `timed_out`, `extended`, `lost`) | fleet-wide load lock activity |
//! | `cachelayer_refreshes_total` | counter | `trigger` (`early`, `stale`) | background refreshes started |
//! | `cachelayer_stale_served_total` | counter | `reason` (`revalidate`, `error`, `lock_timeout`) | values served past their TTL |
//! | `cachelayer_negative_hits_total` | counter | | cached "not found" entries served |
//! | `cachelayer_http_responses_total` | counter | `cache` (`HIT`, `STALE`, `MISS`, `BYPASS`) | responses through the HTTP layer |
//! | `cachelayer_http_not_stored_total` | counter | `reason` | cacheable-looking responses the HTTP layer did not store |
//! | `cachelayer_near_hits_total` | counter | | reads answered from the near tier |
//! | `cachelayer_near_misses_total` | counter | | near-tier reads that went on to the store |
//! | `cachelayer_near_evictions_total` | counter | | near-tier entries evicted for space |
//! | `cachelayer_near_invalidations_total` | counter | `scope` (`key`, `all`) | changes reported by the store's tracking |
//! | `cachelayer_near_fills_refused_total` | counter | | store reads not kept because a change was heard meanwhile |
//! | `cachelayer_near_loads_not_stored_total` | counter | | loaded values returned but not stored because their key changed during the load |
//! | `cachelayer_near_tracking_lost_total` | counter | | times change tracking was lost (the tier is then emptied and bypassed) |
//! | `cachelayer_near_watching` | gauge | | 1 while change tracking is up, 0 while blind |
//! | `cachelayer_redis_primary_changes_total` | counter | | the Sentinels named a new primary and the store moved to it |
//! | `cachelayer_redis_cluster_topology_changes_total` | counter | | the Redis Cluster's set of primaries changed |
//! | `cachelayer_keys_repaired_total` | counter | `kind` (`lock`, `tag_version`, `tag_counter`, `marker`) | keys the cache writes for itself found broken (garbage, another type, no expiry) and replaced |
//! | `cachelayer_invalidation_retries_total` | counter | `outcome` (`succeeded`, `failed`) | invalidations retried at once after a dropped connection |

/// How a metric is recorded, for [`describe_metric`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A counter.
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram.
    Histogram,
}

/// The metrics of the table above: name, kind and meaning (links and code marks removed).
/// The table in this module's documentation is the one list: this reads it, so the
/// descriptions an exporter shows and the documentation never disagree.
fn documented() -> Vec<(String, MetricKind, String)> {
    include_str!("telemetry.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//! | `cachelayer_"))
        .filter_map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (name, kind, meaning) = (cells.first()?, cells.get(1)?, cells.get(3)?);
            let name = name.strip_suffix('`')?;
            let kind = match *kind {
                "counter" => MetricKind::Counter,
                "gauge" => MetricKind::Gauge,
                "histogram" => MetricKind::Histogram,
                _ => return None,
            };
            let meaning = plain(meaning);
            Some((format!("cachelayer_{name}"), kind, meaning))
        })
        .collect()
}

/// Markdown made plain: `[text](target)` becomes `text`, code marks go.
fn plain(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut rest = markdown;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](").and_then(|close| {
            let end = after[close..].find(')')? + close;
            Some((close, end))
        }) {
            Some((close, end)) => {
                out.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace('`', "")
}

/// Describes every metric of the table above to the installed recorder (`# HELP` lines in
/// Prometheus's format). Call it once the application has installed its recorder; metrics
/// recorded before or after are described alike.
pub fn describe_metrics() {
    for (name, kind, meaning) in documented() {
        describe_metric(name, kind, meaning);
    }
}

/// Describes one metric to the installed recorder, for applications that record their own
/// beside this crate's.
pub fn describe_metric(
    name: impl Into<metrics::KeyName>,
    kind: MetricKind,
    help: impl Into<metrics::SharedString>,
) {
    match kind {
        MetricKind::Counter => metrics::describe_counter!(name, help),
        MetricKind::Gauge => metrics::describe_gauge!(name, help),
        MetricKind::Histogram => metrics::describe_histogram!(name, help),
    }
}

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
/// Times the Sentinels named a new primary and the store moved its connections there.
pub const REDIS_PRIMARY_CHANGES: &str = "cachelayer_redis_primary_changes_total";
/// Redis Cluster topology changes the store saw (primaries added, lost or replaced).
pub const REDIS_CLUSTER_TOPOLOGY_CHANGES: &str = "cachelayer_redis_cluster_topology_changes_total";
/// Pub/sub messages dropped for a lagging subscriber.
pub const SUBSCRIPTION_DROPPED: &str = "cachelayer_subscription_dropped_total";
/// Pub/sub connections lost (each is then re-established in the background).
pub const SUBSCRIPTION_RECONNECTS: &str = "cachelayer_subscription_reconnects_total";
/// Loader runs.
pub const LOADER_CALLS: &str = "cachelayer_loader_calls_total";
/// Loader run time.
pub const LOADER_DURATION: &str = "cachelayer_loader_duration_seconds";
/// Loader runs that failed, by `kind`.
pub const LOADER_ERRORS: &str = "cachelayer_loader_errors_total";
/// Callers that waited on another caller's load in the same process.
pub const COALESCED_WAITS: &str = "cachelayer_coalesced_waits_total";
/// Fleet-wide load lock activity, by `event`.
pub const LOCK_EVENTS: &str = "cachelayer_lock_events_total";
/// Background refreshes started, by `trigger`.
pub const REFRESHES: &str = "cachelayer_refreshes_total";
/// Values served past their TTL, by `reason`.
pub const STALE_SERVED: &str = "cachelayer_stale_served_total";
/// Cached "not found" entries served.
pub const NEGATIVE_HITS: &str = "cachelayer_negative_hits_total";
/// Responses through the HTTP layer, by `cache` status.
pub const HTTP_RESPONSES: &str = "cachelayer_http_responses_total";
/// Responses the HTTP layer did not store, by `reason`.
pub const HTTP_NOT_STORED: &str = "cachelayer_http_not_stored_total";
/// Reads answered from the near tier.
pub const NEAR_HITS: &str = "cachelayer_near_hits_total";
/// Near-tier reads that went on to the store.
pub const NEAR_MISSES: &str = "cachelayer_near_misses_total";
/// Near-tier entries evicted for space.
pub const NEAR_EVICTIONS: &str = "cachelayer_near_evictions_total";
/// Changes reported by the store's tracking, by `scope`.
pub const NEAR_INVALIDATIONS: &str = "cachelayer_near_invalidations_total";
/// Store reads not kept in the near tier because a change was heard meanwhile.
pub const NEAR_FILLS_REFUSED: &str = "cachelayer_near_fills_refused_total";
/// Loaded values not stored because their key changed during the load.
pub const NEAR_LOADS_NOT_STORED: &str = "cachelayer_near_loads_not_stored_total";
/// Times change tracking was lost.
pub const NEAR_TRACKING_LOST: &str = "cachelayer_near_tracking_lost_total";
/// 1 while change tracking is up, 0 while blind.
pub const NEAR_WATCHING: &str = "cachelayer_near_watching";
/// Keys the cache writes for itself found broken and replaced, by `kind`.
pub const KEYS_REPAIRED: &str = "cachelayer_keys_repaired_total";
/// Invalidations retried at once after a dropped connection, by `outcome`.
pub const INVALIDATION_RETRIES: &str = "cachelayer_invalidation_retries_total";

/// Which of the keys the cache writes for itself was found broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Tags and markers belong to the HTTP layer.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) enum RepairedKey {
    /// A load lock.
    Lock,
    /// A tag's version.
    TagVersion,
    /// The counter that orders tag invalidations.
    TagCounter,
    /// A `Vary` or pass marker of the HTTP layer.
    Marker,
}

impl RepairedKey {
    fn as_str(self) -> &'static str {
        match self {
            Self::Lock => "lock",
            Self::TagVersion => "tag_version",
            Self::TagCounter => "tag_counter",
            Self::Marker => "marker",
        }
    }

    /// Count it and say so: something outside the cache wrote to one of its keys.
    pub(crate) fn record(self, key: &str) {
        metrics::counter!(KEYS_REPAIRED, "kind" => self.as_str()).increment(1);
        tracing::warn!(
            key,
            kind = self.as_str(),
            "a cache key held something the cache never writes there (garbage, another type, or no expiry); replaced"
        );
    }
}

#[cfg(test)]
mod tests {
    /// Every metric this crate names is in the table, described in plain words.
    #[test]
    fn every_metric_is_documented() {
        let documented = super::documented();
        let names: Vec<&str> = documented
            .iter()
            .map(|(name, _, _)| name.as_str())
            .collect();
        let source = include_str!("telemetry.rs");
        let consts: Vec<&str> = source
            .lines()
            .filter(|line| line.starts_with("pub const "))
            .filter_map(|line| line.split('"').nth(1))
            .collect();
        for name in &consts {
            assert!(names.contains(name), "{name} is not in the table");
        }
        assert_eq!(names.len(), consts.len(), "{names:?}");
        let (_, _, errors) = documented
            .iter()
            .find(|(name, _, _)| name == "cachelayer_store_errors_total")
            .expect("documented");
        assert_eq!(errors, "store calls that failed, by ErrorKind label");
    }
}
