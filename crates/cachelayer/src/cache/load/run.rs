//! Running a loader: its panics contained (the payload kept for the task that ran it), its
//! time measured, and loads that bypass the cache.
//!
//! It runs the loader and reports what happened; it must never store or share the result.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;

use super::{Fetched, LoadSource, Loaded};
use crate::error::{LoadError, panic_message};
use crate::telemetry;

/// A load around the cache (zero TTL, invalid options): the loader alone.
pub(super) async fn bypass<T, E, F>(loader: F) -> Loaded<T, E>
where
    F: Future<Output = Result<Fetched<T>, E>>,
{
    run_loader(loader).await.0.from(LoadSource::Bypassed)
}

/// Run a loader, containing a panic, and time it.
pub(super) async fn run_loader<T, E, F>(loader: F) -> (Loaded<T, E>, Duration)
where
    F: Future<Output = Result<Fetched<T>, E>>,
{
    metrics::counter!(telemetry::LOADER_CALLS).increment(1);
    let started = Instant::now();
    let result = AssertUnwindSafe(loader).catch_unwind().await;
    let elapsed = started.elapsed();
    metrics::histogram!(telemetry::LOADER_DURATION).record(elapsed.as_secs_f64());
    let loaded = match result {
        Ok(Ok(fetched)) => Loaded {
            store: fetched.store,
            lifetime: fetched.lifetime,
            ..Loaded::value(fetched.value)
        },
        Ok(Err(err)) => {
            metrics::counter!(telemetry::LOADER_ERRORS, "kind" => "error").increment(1);
            Loaded::error(LoadError::loader(err))
        }
        Err(payload) => {
            metrics::counter!(telemetry::LOADER_ERRORS, "kind" => "panic").increment(1);
            let message = panic_message(payload.as_ref());
            tracing::error!(panic = %message, "a cache loader panicked; the panic was contained");
            Loaded {
                outcome: Err(LoadError::panicked(message)),
                panic: Some(payload),
                store: false,
                lifetime: None,
                source: LoadSource::Loaded,
            }
        }
    };
    (loaded, elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LoadErrorKind;

    /// A panicking loader is contained: the error keeps its message, the payload is kept for
    /// the task that ran it, and nothing is stored.
    #[tokio::test]
    async fn a_panic_is_contained_with_its_message() {
        let loader = async {
            if true {
                panic!("loader broke");
            }
            Ok::<Fetched<u32>, ()>(Fetched::cacheable(Some(1)))
        };
        let (loaded, _) = run_loader(loader).await;
        assert!(loaded.panic.is_some());
        assert!(!loaded.store);
        let err = loaded.outcome.expect_err("panicked");
        assert_eq!(err.kind(), LoadErrorKind::Panicked);
        assert_eq!(err.panic_message(), Some("loader broke"));
    }

    /// A loader error is reported as the loader's own; a value keeps its store choice.
    #[tokio::test]
    async fn errors_and_values_come_back_as_they_were() {
        let (failed, _) = run_loader(async { Err::<Fetched<u32>, _>("down") }).await;
        let err = failed.outcome.expect_err("loader error");
        assert_eq!(err.kind(), LoadErrorKind::Loader);
        assert_eq!(err.loader_error(), Some(&"down"));
        let (kept, _) = run_loader(async { Ok::<_, ()>(Fetched::uncacheable(Some(5u32))) }).await;
        assert!(!kept.store);
        assert_eq!(kept.outcome.ok(), Some(Some(5)));
    }

    /// A bypassing load runs the loader and says so.
    #[tokio::test]
    async fn bypass_runs_the_loader_alone() {
        let loaded = bypass(async { Ok::<_, ()>(Fetched::cacheable(Some(3u32))) }).await;
        assert_eq!(loaded.source, LoadSource::Bypassed);
        assert_eq!(loaded.outcome.ok(), Some(Some(3)));
    }
}
