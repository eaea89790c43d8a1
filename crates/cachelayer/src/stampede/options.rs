//! Load options: the per-call [`LoadOptions`] and the cache-wide [`StampedeSettings`] they
//! fall back to.
//!
//! Options are plain data, resolved against the settings once per load; this module must
//! never touch the store or start a load itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::MAX_TTL;

/// Default initial lease of the fleet-wide load lock; extended while the loader runs.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(5);
/// Default longest wait for another process's load before the [`OnLockTimeout`] policy.
pub const DEFAULT_LOCK_MAX_WAIT: Duration = Duration::from_secs(5);
/// Default XFetch beta: the paper's recommended 1.0.
pub const DEFAULT_EARLY_REFRESH_BETA: f64 = 1.0;
/// Largest beta accepted: beyond it nearly every read would refresh.
const MAX_BETA: f64 = 100.0;

/// What a caller does when another process's load has not finished within the maximum
/// wait and no stale value is available (a stale one is always served first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnLockTimeout {
    /// Run the loader without the lock (the default): the caller gets a value, at the cost
    /// of a second load.
    #[default]
    Load,
    /// Return [`LoadErrorKind::LockWaitTimedOut`](crate::LoadErrorKind::LockWaitTimedOut)
    /// from `try_get_with`, protecting the source from extra loads. `get_with`, which cannot
    /// return an error, loads instead.
    Fail,
}

impl OnLockTimeout {
    /// Lower-case name, as in configuration: `"load"` or `"fail"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Fail => "fail",
        }
    }
}

impl std::fmt::Display for OnLockTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `"load"` or `"fail"`, so a command line can take the policy as it is.
///
/// ```
/// use cachelayer::OnLockTimeout;
///
/// assert_eq!("fail".parse::<OnLockTimeout>().unwrap(), OnLockTimeout::Fail);
/// assert_eq!(OnLockTimeout::Load.to_string(), "load");
/// assert!("wait".parse::<OnLockTimeout>().is_err());
/// ```
impl std::str::FromStr for OnLockTimeout {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "load" => Ok(Self::Load),
            "fail" => Ok(Self::Fail),
            other => Err(Error::new(
                crate::error::ErrorKind::Config,
                format!("unknown lock timeout policy `{other}`; use `load` or `fail`"),
            )),
        }
    }
}

/// Whether `by` (how long past its TTL a value is) falls in a stale window; a zero window
/// is off.
pub(crate) fn within(by: Duration, window: Duration) -> bool {
    !window.is_zero() && by <= window
}

/// Cache-wide stampede settings: the defaults every [`LoadOptions`] falls back to. Set them
/// with [`CacheBuilder::stampede`](crate::CacheBuilder::stampede).
///
/// ```
/// use std::time::Duration;
/// use cachelayer::{Cache, OnLockTimeout, StampedeSettings};
///
/// let settings = StampedeSettings {
///     lock_ttl: Duration::from_secs(2),
///     lock_max_wait: Duration::from_secs(1),
///     on_lock_timeout: OnLockTimeout::Fail,
///     stale_while_revalidate: Duration::from_secs(30),
///     ..StampedeSettings::default()
/// };
/// let cache = Cache::builder().stampede(settings).build().unwrap();
/// # drop(cache);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StampedeSettings {
    /// Take the fleet-wide lock in the store before loading (default true). Without it,
    /// loads are coalesced per process only.
    pub lock: bool,
    /// Initial lease of the lock; the holder extends it every third of this while its loader
    /// runs, so a holder that dies frees the key within one lease.
    pub lock_ttl: Duration,
    /// Longest a caller waits for another process's load.
    pub lock_max_wait: Duration,
    /// What to do when that wait runs out and nothing stale is available.
    pub on_lock_timeout: OnLockTimeout,
    /// XFetch beta: above 1 refreshes earlier, below 1 later; 0 turns early refresh off.
    pub early_refresh_beta: f64,
    /// How long past its TTL a value is served at once while one background refresh runs
    /// (RFC 5861 `stale-while-revalidate`). Zero turns it off.
    pub stale_while_revalidate: Duration,
    /// How long past its TTL a value is served when the loader fails (RFC 5861
    /// `stale-if-error`). Zero turns it off.
    pub stale_if_error: Duration,
    /// TTL of a cached "not found" (`optionally_get_with`); `None` (the default) caches none.
    pub negative_ttl: Option<Duration>,
}

impl Default for StampedeSettings {
    fn default() -> Self {
        Self {
            lock: true,
            lock_ttl: DEFAULT_LOCK_TTL,
            lock_max_wait: DEFAULT_LOCK_MAX_WAIT,
            on_lock_timeout: OnLockTimeout::Load,
            early_refresh_beta: DEFAULT_EARLY_REFRESH_BETA,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            negative_ttl: None,
        }
    }
}

impl StampedeSettings {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.lock_ttl < Duration::from_millis(30) || self.lock_ttl > MAX_TTL {
            return Err(Error::config(
                "lock_ttl must be between 30 ms and 10 years; it is renewed every third of itself, so a few seconds suits most loaders",
            ));
        }
        if self.lock_max_wait > MAX_TTL {
            return Err(Error::config("lock_max_wait must be at most 10 years"));
        }
        if !(0.0..=MAX_BETA).contains(&self.early_refresh_beta) {
            return Err(Error::config(format!(
                "early_refresh_beta {} is out of range; use 0 (off) to {MAX_BETA} (1.0 is the XFetch default)",
                self.early_refresh_beta
            )));
        }
        if self.stale_while_revalidate > MAX_TTL || self.stale_if_error > MAX_TTL {
            return Err(Error::config(
                "stale_while_revalidate and stale_if_error must be at most 10 years",
            ));
        }
        if self
            .negative_ttl
            .is_some_and(|ttl| ttl.is_zero() || ttl > MAX_TTL)
        {
            return Err(Error::config(
                "negative_ttl must be non-zero and at most 10 years; leave it unset to cache no \"not found\"",
            ));
        }
        Ok(())
    }
}

/// Options of one load: a TTL, and overrides of the cache's [`StampedeSettings`]. A bare
/// [`Duration`] converts into options with that TTL and every other setting from the cache.
///
/// ```
/// use std::time::Duration;
/// use cachelayer::LoadOptions;
///
/// let options = LoadOptions::ttl(Duration::from_secs(60))
///     .stale_while_revalidate(Duration::from_secs(10))
///     .stale_if_error(Duration::from_secs(300))
///     .early_refresh_beta(2.0);
/// # drop(options);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[must_use]
pub struct LoadOptions {
    ttl: Duration,
    lock: Option<bool>,
    lock_ttl: Option<Duration>,
    lock_max_wait: Option<Duration>,
    on_lock_timeout: Option<OnLockTimeout>,
    early_refresh_beta: Option<f64>,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    negative_ttl: Option<Option<Duration>>,
}

impl From<Duration> for LoadOptions {
    fn from(ttl: Duration) -> Self {
        Self::ttl(ttl)
    }
}

impl LoadOptions {
    /// Options with this fresh TTL (zero means "do not cache": the loader runs every time).
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            ..Self::default()
        }
    }

    /// Take the fleet-wide lock before loading, or only coalesce within this process.
    pub fn lock(mut self, lock: bool) -> Self {
        self.lock = Some(lock);
        self
    }

    /// Initial lease of the fleet-wide lock.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = Some(ttl);
        self
    }

    /// Longest wait for another process's load.
    pub fn lock_max_wait(mut self, wait: Duration) -> Self {
        self.lock_max_wait = Some(wait);
        self
    }

    /// What to do when the wait runs out and nothing stale is available.
    pub fn on_lock_timeout(mut self, policy: OnLockTimeout) -> Self {
        self.on_lock_timeout = Some(policy);
        self
    }

    /// XFetch beta (0 turns early refresh off).
    pub fn early_refresh_beta(mut self, beta: f64) -> Self {
        self.early_refresh_beta = Some(beta);
        self
    }

    /// Serve the value this long past its TTL while one background refresh runs.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// Serve the value this long past its TTL when the loader fails.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// Cache a "not found" for this long (`None`: do not cache it).
    pub fn negative_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// These options over the cache's settings, checked.
    pub(crate) fn resolve(&self, settings: &StampedeSettings) -> Result<Resolved> {
        let merged = StampedeSettings {
            lock: self.lock.unwrap_or(settings.lock),
            lock_ttl: self.lock_ttl.unwrap_or(settings.lock_ttl),
            lock_max_wait: self.lock_max_wait.unwrap_or(settings.lock_max_wait),
            on_lock_timeout: self.on_lock_timeout.unwrap_or(settings.on_lock_timeout),
            early_refresh_beta: self
                .early_refresh_beta
                .unwrap_or(settings.early_refresh_beta),
            stale_while_revalidate: self
                .stale_while_revalidate
                .unwrap_or(settings.stale_while_revalidate),
            stale_if_error: self.stale_if_error.unwrap_or(settings.stale_if_error),
            negative_ttl: self.negative_ttl.unwrap_or(settings.negative_ttl),
        };
        merged.validate()?;
        if self.ttl > MAX_TTL {
            return Err(Error::invalid_input(format!(
                "a TTL of {} s is over the 10-year maximum; check its unit",
                self.ttl.as_secs()
            )));
        }
        Ok(Resolved {
            ttl: self.ttl,
            settings: merged,
        })
    }
}

/// Options of one load with every setting decided.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved {
    pub(crate) ttl: Duration,
    pub(crate) settings: StampedeSettings,
}

impl Resolved {
    /// These options with a fresh lifetime and stale grace fixed by the value itself.
    pub(crate) fn with_lifetime(mut self, fresh: Duration, grace: Duration) -> Self {
        self.ttl = fresh;
        self.settings.stale_while_revalidate = grace;
        self.settings.stale_if_error = Duration::ZERO;
        self
    }

    /// How long the store keeps an entry past its TTL: the longer stale window.
    pub(crate) fn grace(&self) -> Duration {
        self.settings
            .stale_while_revalidate
            .max(self.settings.stale_if_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-call options override the cache's settings; unset ones inherit them.
    #[test]
    fn a_stale_window_includes_its_end_and_zero_is_off() {
        assert!(!within(Duration::from_secs(1), Duration::ZERO));
        assert!(within(Duration::from_secs(1), Duration::from_secs(1)));
        assert!(!within(Duration::from_secs(2), Duration::from_secs(1)));
    }

    #[test]
    fn options_override_settings() {
        let settings = StampedeSettings {
            stale_if_error: Duration::from_secs(9),
            ..StampedeSettings::default()
        };
        let resolved = LoadOptions::ttl(Duration::from_secs(60))
            .stale_while_revalidate(Duration::from_secs(3))
            .lock(false)
            .resolve(&settings)
            .expect("valid");
        assert_eq!(resolved.ttl, Duration::from_secs(60));
        assert!(!resolved.settings.lock);
        assert_eq!(
            resolved.settings.stale_while_revalidate,
            Duration::from_secs(3)
        );
        assert_eq!(resolved.settings.stale_if_error, Duration::from_secs(9));
        assert_eq!(resolved.grace(), Duration::from_secs(9));
        assert_eq!(resolved.settings.lock_ttl, DEFAULT_LOCK_TTL);
    }

    /// Out-of-range settings are refused whether they come from the cache or the call.
    #[test]
    fn out_of_range_options_are_refused() {
        let defaults = StampedeSettings::default();
        let bad = [
            LoadOptions::ttl(Duration::from_secs(1)).early_refresh_beta(-1.0),
            LoadOptions::ttl(Duration::from_secs(1)).early_refresh_beta(f64::NAN),
            LoadOptions::ttl(Duration::from_secs(1)).lock_ttl(Duration::from_millis(1)),
            LoadOptions::ttl(Duration::from_secs(1)).negative_ttl(Some(Duration::ZERO)),
            LoadOptions::ttl(Duration::MAX),
        ];
        for options in bad {
            assert!(options.resolve(&defaults).is_err(), "{options:?}");
        }
        assert!(LoadOptions::ttl(Duration::ZERO).resolve(&defaults).is_ok());
    }
}
