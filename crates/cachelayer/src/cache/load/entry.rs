//! The entry API: every load form of [`Cache`], returning an [`Entry`] that says where its
//! value came from ([`LoadSource`]) as well as the value, in moka's vocabulary
//! (`cache.entry(key).or_insert_with(..)`).
//!
//! It only wraps the loads of the parent module; it must never load, coalesce or store in a
//! way of its own, so an entry load behaves exactly like the matching `*_get_with` call.

use std::future::Future;

use crate::cache::handle::Cache;
use crate::error::LoadError;
use crate::key::Key;
use crate::payload::Value;
use crate::stampede::LoadOptions;

/// A value loaded through [`Cache::entry`], with its key and where it came from.
///
/// ```
/// use std::time::Duration;
/// use cachelayer::{Cache, LoadSource};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache = Cache::builder().build().unwrap();
/// let ttl = Duration::from_secs(60);
/// let first = cache.entry("answer").or_insert_with(ttl, async { 42u32 }).await;
/// assert_eq!((first.key(), *first.value()), ("answer", 42));
/// assert_eq!(first.source(), LoadSource::Loaded);
/// assert!(first.is_fresh());
///
/// let second = cache.entry("answer").or_insert_with(ttl, async { 0u32 }).await;
/// assert_eq!(second.source(), LoadSource::Hit);
/// assert!(!second.is_fresh());
/// assert_eq!(second.into_value(), 42);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    key: String,
    value: T,
    source: LoadSource,
}

impl<T> Entry<T> {
    /// The key the value was loaded under (as given, without namespace or version).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The value, taken out of the entry.
    pub fn into_value(self) -> T {
        self.value
    }

    /// Where the value came from: what an `X-Cache` header reports.
    pub fn source(&self) -> LoadSource {
        self.source
    }

    /// True when a loader produced the value for this call or for the load it joined
    /// (in this process, or in another that held the fleet-wide lock); false when it was
    /// read from the store (a fresh or a stale hit).
    pub fn is_fresh(&self) -> bool {
        !self.source.is_from_store()
    }
}

/// The loads of one key that return an [`Entry`]: see [`Cache::entry`].
#[derive(Debug)]
#[must_use = "an entry selector loads nothing until one of its `or_*` methods is awaited"]
pub struct EntrySelector<'a> {
    cache: &'a Cache,
    key: Key,
}

impl Cache {
    /// The loads of `key` that also say where their value came from: each `or_*` method
    /// takes the same options and loader as the matching `*_get_with` method and behaves
    /// exactly like it.
    ///
    /// | method | like |
    /// |---|---|
    /// | [`or_insert_with`](EntrySelector::or_insert_with) | [`get_with`](Cache::get_with) |
    /// | [`or_try_insert_with`](EntrySelector::or_try_insert_with) | [`try_get_with`](Cache::try_get_with) |
    /// | [`or_optionally_insert_with`](EntrySelector::or_optionally_insert_with) | [`optionally_get_with`](Cache::optionally_get_with) |
    /// | [`or_try_optionally_insert_with`](EntrySelector::or_try_optionally_insert_with) | [`try_optionally_get_with`](Cache::try_optionally_get_with) |
    ///
    /// ```
    /// use std::time::Duration;
    /// use cachelayer::{Cache, LoadSource};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = Cache::builder().build().unwrap();
    /// let entry = cache
    ///     .entry("product:404")
    ///     .or_optionally_insert_with(Duration::from_secs(60), async { None::<String> })
    ///     .await;
    /// assert_eq!(entry.value(), &None);
    /// assert_eq!(entry.source(), LoadSource::Loaded);
    /// # }
    /// ```
    pub fn entry(&self, key: impl Into<Key>) -> EntrySelector<'_> {
        EntrySelector {
            cache: self,
            key: key.into(),
        }
    }
}

impl EntrySelector<'_> {
    /// [`Cache::get_with`], returning an [`Entry`].
    pub async fn or_insert_with<T, F>(self, options: impl Into<LoadOptions>, init: F) -> Entry<T>
    where
        T: Value,
        F: Future<Output = T> + Send + 'static,
    {
        let key = self.key.as_str().to_owned();
        let (value, source) = self.cache.load_value(self.key, options.into(), init).await;
        Entry { key, value, source }
    }

    /// [`Cache::try_get_with`], returning an [`Entry`].
    pub async fn or_try_insert_with<T, E, F>(
        self,
        options: impl Into<LoadOptions>,
        init: F,
    ) -> Result<Entry<T>, LoadError<E>>
    where
        T: Value,
        E: Send + Sync + 'static,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let key = self.key.as_str().to_owned();
        let (value, source) = self
            .cache
            .try_load_value(self.key, options.into(), init)
            .await?;
        Ok(Entry { key, value, source })
    }

    /// [`Cache::optionally_get_with`], returning an [`Entry`].
    pub async fn or_optionally_insert_with<T, F>(
        self,
        options: impl Into<LoadOptions>,
        init: F,
    ) -> Entry<Option<T>>
    where
        T: Value,
        F: Future<Output = Option<T>> + Send + 'static,
    {
        let key = self.key.as_str().to_owned();
        let (value, source) = self
            .cache
            .load_optional(self.key, options.into(), init)
            .await;
        Entry { key, value, source }
    }

    /// [`Cache::try_optionally_get_with`], returning an [`Entry`]. A loader error comes back
    /// as an error whatever its source.
    pub async fn or_try_optionally_insert_with<T, E, F>(
        self,
        options: impl Into<LoadOptions>,
        init: F,
    ) -> Result<Entry<Option<T>>, LoadError<E>>
    where
        T: Value,
        E: Send + Sync + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let key = self.key.as_str().to_owned();
        let (value, source) = self
            .cache
            .try_load_optional(self.key, options.into(), init)
            .await?;
        Ok(Entry { key, value, source })
    }
}

/// Where the value of a load came from: what an `X-Cache` header reports.
///
/// ```
/// use std::time::Duration;
/// use cachelayer::{Cache, LoadSource};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache = Cache::builder().build().unwrap();
/// let load = || async { Ok::<_, std::io::Error>(Some(7u32)) };
/// let first = cache.entry("n").or_try_optionally_insert_with(Duration::from_secs(60), load()).await;
/// assert_eq!(first.unwrap().source(), LoadSource::Loaded);
/// let second = cache.entry("n").or_try_optionally_insert_with(Duration::from_secs(60), load()).await;
/// assert_eq!(second.unwrap().source(), LoadSource::Hit);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoadSource {
    /// A fresh stored value.
    Hit,
    /// A stored value past its TTL: within `stale_while_revalidate` (a refresh was
    /// started), within `stale_if_error` (the loader failed), or after a lock wait timed out.
    Stale,
    /// This caller's loader ran (or failed).
    Loaded,
    /// Another caller's load: in this process (coalesced), or in another process that held
    /// the fleet-wide lock and filled the key.
    Coalesced,
    /// The cache was bypassed (a zero TTL or invalid options): the loader ran uncached.
    Bypassed,
}

impl LoadSource {
    /// Lower-case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Loaded => "loaded",
            Self::Coalesced => "coalesced",
            Self::Bypassed => "bypassed",
        }
    }

    /// Whether the value came out of the store (fresh or stale) without any load.
    pub fn is_from_store(self) -> bool {
        matches!(self, Self::Hit | Self::Stale)
    }
}
