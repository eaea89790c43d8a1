//! Filling a key: running its loader (while keeping the fleet-wide lock's lease alive) and
//! storing what the loader returned, plus the re-check for a value someone else stored.
//!
//! Used by the leader of a miss and by refreshes alike. It never decides whether to load;
//! it must never take or release the lock itself (the caller holds the lease).

use std::time::Duration;

use crate::payload::EncodePayload;
use futures::future::Either;

use super::lock::LockLease;
use super::run::run_loader;
use super::{LoadFuture, LoadSource, Loaded, Value};
use crate::cache::handle::Cache;
use crate::stampede::{Resolved, within};
use crate::telemetry;

/// A value past its TTL that the store still holds, kept in case the load fails.
pub(super) struct StaleValue<T> {
    pub(super) value: Option<T>,
    pub(super) by: Duration,
}

impl Cache {
    /// Run the loader (extending the lease meanwhile) and store what it returns; the caller
    /// releases the lock (sending the store notice). A failed load serves the stale value within
    /// `stale_if_error`.
    pub(super) async fn load_and_store<T, E, F>(
        &self,
        full: &str,
        options: Resolved,
        loader: F,
        lease: Option<&LockLease>,
        stale: Option<StaleValue<T>>,
    ) -> Loaded<T, E>
    where
        T: Value,
        E: Send + Sync + 'static,
        F: LoadFuture<T, E>,
    {
        // Taken before the loader reads the source: a change to the key heard by the time it
        // returns may be a write the loader did not see.
        let ticket = self.change_ticket(full);
        let (loaded, compute_time) = match lease {
            Some(lease) => {
                let keep_alive = lease.keep_alive(options.settings.lock_ttl);
                match futures::future::select(Box::pin(run_loader(loader)), Box::pin(keep_alive))
                    .await
                {
                    Either::Left((loaded, _)) => loaded,
                    Either::Right(((), load)) => load.await,
                }
            }
            None => run_loader(loader).await,
        };
        match loaded.outcome {
            Ok(value) => {
                if loaded.store && ticket.is_some_and(|ticket| self.changed_since(ticket)) {
                    metrics::counter!(telemetry::NEAR_LOADS_NOT_STORED).increment(1);
                    tracing::debug!(
                        key = full,
                        "the key changed while it loaded; the value is returned, not stored"
                    );
                } else if loaded.store {
                    let options = match loaded.lifetime {
                        Some((fresh, grace)) => options.with_lifetime(fresh, grace),
                        None => options,
                    };
                    self.store_loaded(full, value.as_ref(), options, compute_time)
                        .await;
                }
                Loaded::value(value)
            }
            Err(err) => match stale {
                Some(stale) if within(stale.by, options.settings.stale_if_error) => {
                    tracing::warn!(key = full, error = ?err.kind(), "load failed; serving the stale value (stale-if-error)");
                    metrics::counter!(telemetry::STALE_SERVED, "reason" => "error").increment(1);
                    Loaded::value(stale.value).from(LoadSource::Stale)
                }
                _ => Loaded {
                    outcome: Err(err),
                    panic: loaded.panic,
                    store: false,
                    lifetime: None,
                    source: LoadSource::Loaded,
                },
            },
        }
    }
    /// The value under `full` if the store holds a fresh, usable one.
    pub(super) async fn fresh_value<T: Value>(
        &self,
        full: &str,
        absent_ok: bool,
    ) -> Option<Option<T>> {
        let entry = self.fetch_entry::<T>(full).await?;
        let usable = entry.value.is_some() || absent_ok;
        (usable && entry.header.is_fresh_now()).then_some(entry.value)
    }

    /// Store a loaded value (or, with a negative TTL, a "not found") for the options' TTL
    /// plus their stale grace.
    async fn store_loaded<T: EncodePayload>(
        &self,
        full: &str,
        value: Option<&T>,
        options: Resolved,
        compute_time: Duration,
    ) {
        let result = match value {
            Some(value) => self
                .store_value(
                    full.to_owned(),
                    value,
                    options.ttl,
                    options.grace(),
                    compute_time,
                )
                .await
                .map(drop),
            None => match options.settings.negative_ttl {
                Some(ttl) => self.store_absent(full.to_owned(), ttl, compute_time).await,
                None => Ok(()),
            },
        };
        if let Err(err) = result {
            tracing::warn!(key = full, error = %err, "loaded value returned but not cached");
        }
    }
}
