//! The catalogue: product reads through the cache, writes to the database followed by the
//! invalidation of everything they change, in every instance sharing the store.
//!
//! Reads of one product go through [`Cache::entry`] (stampede
//! protection, negative caching of unknown ids, stale-if-error); list pages are cached by the
//! HTTP layer in front of the list route and tagged [`LIST_TAG`]. A write commits first, then
//! drops the product's entry and every list page. This module must never answer a write
//! before its commit, nor let a failed invalidation go unrecorded: one that fails is retried
//! in the background, and until it succeeds this instance reads around the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::HeaderValue;
use bytes::Bytes;
use cachelayer::http::ResponseCacheLayer;
use cachelayer::http::conditional::strong_etag;
use cachelayer::{Cache, Key, LoadErrorKind, LoadOptions, LoadSource, Raw};
use tokio::time::Instant;

use super::db::{Database, Page};
use super::precondition::Precondition;
use super::product::{Product, ProductChanges};
use crate::error::ApiError;

/// The tag of every cached list page: any write can change any page (its items, or the
/// total and the page boundaries), so every write drops them all.
pub(crate) const LIST_TAG: &str = "products";
/// Counter of invalidations that failed (and were queued for retry), by `what`.
pub const INVALIDATION_FAILURES: &str = "cachelayer_invalidation_failures_total";
/// How often failed invalidations are retried. Until a retry lands, other instances may serve
/// what the write replaced, so the period bounds that window once the store is back; while it
/// is down, a retry costs a refusal by the circuit breaker.
pub(crate) const RETRY_EVERY: Duration = Duration::from_millis(100);
/// How often a write checks whether a load that may have read the old row still runs.
const FENCE_POLL: Duration = Duration::from_millis(5);

/// What became of a write of one product.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Written<T> {
    /// Done, committed, and its entries invalidated.
    Done(T),
    /// There is no such product.
    NoSuchProduct,
    /// The request's `If-Match` / `If-None-Match` does not hold for the product as it is
    /// (or it changed between the check and the write): nothing was written.
    PreconditionFailed,
}

impl<T> From<Option<T>> for Written<T> {
    fn from(done: Option<T>) -> Self {
        done.map_or(Self::NoSuchProduct, Self::Done)
    }
}

/// A write's precondition, judged.
enum Judged<T> {
    /// The request states none.
    Unconditional,
    /// It holds for the product as read: write only if the row is still `seen`.
    Holds(Product),
    /// It does not, or there is nothing to write: the answer.
    Refused(Written<T>),
}

/// Where a product read was answered from, for `X-Cache` and `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadSource {
    Cache(LoadSource),
    /// Around the cache: caching is off, or an invalidation of this product is pending.
    Bypassed(&'static str),
}

/// Invalidations that failed, retried until the store takes them. Each carries the
/// generation of its latest failure, so a retry that succeeds clears only what it retried,
/// never a newer failure of the same key that arrived meanwhile.
#[derive(Debug, Default)]
struct Pending {
    keys: HashMap<String, u64>,
    lists: Option<u64>,
    generation: u64,
}

impl Pending {
    fn next(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }
}

/// Products, cached. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Catalogue {
    db: Database,
    cache: Cache,
    lists: ResponseCacheLayer,
    options: Option<LoadOptions>,
    pending: Arc<Mutex<Pending>>,
}

/// A product's JSON exactly as the API sends it, with its strong entity tag. This, not the
/// `Product`, is what the cache holds (as [`Raw`] bytes, in the cache's binary layout: the
/// tag, then the JSON): a hit parses nothing, hashes nothing and copies nothing (from the
/// in-process store the body and the tag are slices of the stored entry), where a `Product`
/// would be parsed, timestamps included, and serialized back (measured in BENCHMARKS.md).
#[derive(Debug, Clone)]
pub(crate) struct ProductJson {
    etag: HeaderValue,
    json: Bytes,
}

/// Length of a stored tag: `"`, 32 hex digits, `"`.
const TAG_LEN: usize = 34;

impl ProductJson {
    /// The JSON of `product` and its tag (a SHA-256 of the JSON, made once per load).
    pub(crate) fn of(product: &Product) -> serde_json::Result<Self> {
        let json = Bytes::from(serde_json::to_vec(product)?);
        Ok(Self {
            etag: strong_etag(&json),
            json,
        })
    }

    /// The stored layout: the tag, then the JSON.
    fn into_stored(self) -> Raw {
        let mut stored = Vec::with_capacity(TAG_LEN + self.json.len());
        stored.extend_from_slice(self.etag.as_bytes());
        stored.extend_from_slice(&self.json);
        Raw::from(stored)
    }

    /// A stored entry read back. An entry without a tag in front (none that this layout
    /// version writes; one put there by hand, say) gets its tag made here, so its tag
    /// still names its bytes.
    fn from_stored(Raw(stored): Raw) -> Self {
        let tagged = stored.len() >= TAG_LEN
            && stored[0] == b'"'
            && stored[TAG_LEN - 1] == b'"'
            && stored[1..TAG_LEN - 1].iter().all(u8::is_ascii_hexdigit);
        let etag = tagged
            .then(|| HeaderValue::from_maybe_shared(stored.slice(..TAG_LEN)).ok())
            .flatten();
        match etag {
            Some(etag) => Self {
                etag,
                json: stored.slice(TAG_LEN..),
            },
            None => Self {
                etag: strong_etag(&stored),
                json: stored,
            },
        }
    }

    /// The strong entity tag, for `ETag` and `If-None-Match`.
    pub(crate) fn etag(&self) -> &HeaderValue {
        &self.etag
    }

    /// The JSON, as the response body.
    pub(crate) fn into_json(self) -> Bytes {
        self.json
    }
}

type LoadError = Box<dyn std::error::Error + Send + Sync>;

/// One product from the database, as its JSON.
async fn product_json(db: &Database, id: i64) -> Result<Option<ProductJson>, LoadError> {
    match db.product(id).await? {
        Some(product) => Ok(Some(ProductJson::of(&product)?)),
        None => Ok(None),
    }
}

fn product_key(id: i64) -> Key {
    Key::new("product").part(id)
}

impl Catalogue {
    /// `ttl` zero turns product caching off.
    pub(crate) fn new(
        db: Database,
        cache: Cache,
        lists: ResponseCacheLayer,
        ttl: Duration,
    ) -> Self {
        let options = (!ttl.is_zero()).then(|| LoadOptions::ttl(ttl));
        Self {
            db,
            cache,
            lists,
            options,
            pending: Arc::default(),
        }
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    pub(crate) fn lists(&self) -> &ResponseCacheLayer {
        &self.lists
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether list pages must be read around the cache (their invalidation is pending).
    pub(crate) fn lists_pending(&self) -> bool {
        self.pending().lists.is_some()
    }

    /// Whether any failed invalidation is still being retried.
    pub(crate) fn invalidations_pending(&self) -> bool {
        let pending = self.pending();
        !pending.keys.is_empty() || pending.lists.is_some()
    }

    /// One product, and where it came from.
    pub(crate) async fn product(
        &self,
        id: i64,
    ) -> Result<(Option<ProductJson>, ReadSource), ApiError> {
        let key = product_key(id);
        // The database paths are boxed: a hit's future then holds pointers to them, not
        // their whole state, and is cheap to create and move.
        let Some(options) = self.options else {
            return Box::pin(self.uncached(id, "off")).await;
        };
        if self.pending().keys.contains_key(key.as_str()) {
            return Box::pin(self.uncached(id, "pending-invalidation")).await;
        }
        let db = self.db.clone();
        let load = Box::pin(async move {
            let product = product_json(&db, id).await?;
            Ok::<_, LoadError>(product.map(ProductJson::into_stored))
        });
        let loaded = self
            .cache
            .entry(key)
            .or_try_optionally_insert_with(options, load)
            .await;
        match loaded {
            Ok(entry) => {
                let source = ReadSource::Cache(entry.source());
                Ok((entry.into_value().map(ProductJson::from_stored), source))
            }
            Err(err) => match err.kind() {
                LoadErrorKind::Loader => {
                    let cause = err.loader_error().map(ToString::to_string);
                    tracing::error!(product = id, error = ?cause, "product read failed");
                    Err(ApiError::unavailable("the database"))
                }
                LoadErrorKind::LockWaitTimedOut => Err(ApiError::unavailable(
                    "this product (another instance is loading it)",
                )),
                _ => {
                    tracing::error!(error = %err, product = id, "product load panicked");
                    Err(ApiError::internal())
                }
            },
        }
    }

    async fn uncached(
        &self,
        id: i64,
        reason: &'static str,
    ) -> Result<(Option<ProductJson>, ReadSource), ApiError> {
        match product_json(&self.db, id).await {
            Ok(product) => Ok((product, ReadSource::Bypassed(reason))),
            Err(err) => {
                tracing::error!(product = id, error = %err, "product read failed");
                Err(ApiError::unavailable("the database"))
            }
        }
    }

    /// A page of products (the HTTP layer in front caches it).
    pub(crate) async fn page(
        &self,
        category: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Page, ApiError> {
        Ok(self.db.page(category, limit, offset).await?)
    }

    /// Run a write and its invalidation on their own task, so that a client going away
    /// (which drops the request's future) cannot leave a committed row with its old copies
    /// in the cache.
    async fn detached<T: Send + 'static>(
        work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
    ) -> Result<T, ApiError> {
        tokio::spawn(work).await.unwrap_or_else(|err| {
            tracing::error!(error = %err, "a write task failed");
            Err(ApiError::internal())
        })
    }

    /// Create a product; its id's "not found" entry and every list page are dropped.
    pub(crate) async fn create(&self, changes: ProductChanges) -> Result<Product, ApiError> {
        let this = self.clone();
        Self::detached(async move {
            let product = this.db.insert(&changes).await?;
            this.invalidate(product.id).await;
            Ok(product)
        })
        .await
    }

    /// Change a product, if `precondition` holds for it.
    pub(crate) async fn update(
        &self,
        id: i64,
        changes: ProductChanges,
        precondition: Precondition,
    ) -> Result<Written<Product>, ApiError> {
        let this = self.clone();
        Self::detached(async move {
            let written = match this.judged(id, &precondition).await? {
                Judged::Unconditional => this.db.update(id, &changes).await?.into(),
                Judged::Holds(seen) => this
                    .db
                    .update_unchanged(&seen, &changes)
                    .await?
                    .map_or(Written::PreconditionFailed, Written::Done),
                Judged::Refused(refused) => refused,
            };
            if matches!(written, Written::Done(_)) {
                this.invalidate(id).await;
            }
            Ok(written)
        })
        .await
    }

    /// Delete a product, if `precondition` holds for it.
    pub(crate) async fn delete(
        &self,
        id: i64,
        precondition: Precondition,
    ) -> Result<Written<()>, ApiError> {
        let this = self.clone();
        Self::detached(async move {
            let deleted = match this.judged(id, &precondition).await? {
                Judged::Unconditional => this.db.delete(id).await?,
                Judged::Holds(seen) => this.db.delete_unchanged(&seen).await?,
                Judged::Refused(refused) => return Ok(refused),
            };
            let written = match (deleted, precondition.is_none()) {
                (true, _) => Written::Done(()),
                (false, true) => Written::NoSuchProduct,
                // Changed or deleted since it was judged.
                (false, false) => Written::PreconditionFailed,
            };
            if deleted {
                this.invalidate(id).await;
            }
            Ok(written)
        })
        .await
    }

    /// A write's precondition judged against the product as the database holds it now.
    async fn judged<T>(&self, id: i64, precondition: &Precondition) -> Result<Judged<T>, ApiError> {
        if precondition.is_none() {
            return Ok(Judged::Unconditional);
        }
        let current = self.db.product(id).await?;
        let json = current
            .as_ref()
            .map(ProductJson::of)
            .transpose()
            .map_err(|err| {
                tracing::error!(error = %err, "a product could not be written as JSON");
                ApiError::internal()
            })?;
        let tag = json.as_ref().and_then(|json| json.etag().to_str().ok());
        Ok(match (precondition.holds(tag), current) {
            (false, _) => Judged::Refused(Written::PreconditionFailed),
            (true, None) => Judged::Refused(Written::NoSuchProduct),
            (true, Some(seen)) => Judged::Holds(seen),
        })
    }

    /// After a committed write of product `id`: drop its entry and every list page, in every
    /// instance sharing the store. What fails is queued for retry (and read around here).
    async fn invalidate(&self, id: i64) {
        let key = product_key(id);
        if let Err(err) = self.invalidate_fenced(&key).await {
            metrics::counter!(INVALIDATION_FAILURES, "what" => "product").increment(1);
            tracing::warn!(error = %err, key = key.as_str(), "invalidation failed; retrying in the background");
            let mut pending = self.pending();
            let generation = pending.next();
            pending.keys.insert(key.as_str().to_owned(), generation);
        }
        if let Err(err) = self.lists.invalidate_tags([LIST_TAG]).await {
            metrics::counter!(INVALIDATION_FAILURES, "what" => "lists").increment(1);
            tracing::warn!(error = %err, "list invalidation failed; retrying in the background");
            let mut pending = self.pending();
            pending.lists = Some(pending.next());
        }
    }

    /// Drop `key`; wait until no load of it runs (a load holds the key's lock, and may have
    /// read the row before the commit); drop it again. Loads read the database only while
    /// holding the lock and release it only after storing, so what the second delete leaves
    /// cannot be the old row. A lock held past two lock TTLs counts as a failure (retried).
    async fn invalidate_fenced(&self, key: &Key) -> Result<(), String> {
        self.cache
            .invalidate(key)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.cache.stampede_settings().lock_ttl * 2;
        while self
            .cache
            .is_loading(key)
            .await
            .map_err(|e| e.to_string())?
        {
            if Instant::now() >= deadline {
                return Err(format!(
                    "a load of {} held its lock past the deadline",
                    key.as_str()
                ));
            }
            tokio::time::sleep(FENCE_POLL).await;
        }
        // Unconditional: a load may have stored and released between the first delete and
        // the look at its lock.
        self.cache.invalidate(key).await.map_err(|e| e.to_string())
    }

    /// Retry failed invalidations; returns whether any remain.
    pub(crate) async fn retry_pending(&self) -> bool {
        let (keys, lists) = {
            let pending = self.pending();
            let keys: Vec<(String, u64)> =
                pending.keys.iter().map(|(k, g)| (k.clone(), *g)).collect();
            (keys, pending.lists)
        };
        for (key, generation) in keys {
            if self
                .invalidate_fenced(&Key::from(key.as_str()))
                .await
                .is_ok()
            {
                let mut pending = self.pending();
                if pending.keys.get(&key) == Some(&generation) {
                    pending.keys.remove(&key);
                }
                tracing::info!(key, "pending invalidation done");
            }
        }
        if let Some(generation) = lists
            && self.lists.invalidate_tags([LIST_TAG]).await.is_ok()
        {
            let mut pending = self.pending();
            if pending.lists == Some(generation) {
                pending.lists = None;
            }
            tracing::info!("pending list invalidation done");
        }
        self.invalidations_pending()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// A load elsewhere took the lock and read the old row before our commit; it stores
    /// after our first delete. The write must wait for its lock and delete again.
    #[tokio::test]
    async fn a_write_outlasts_a_load_that_read_the_old_row() {
        let db = Database::open("sqlite::memory:", 1).await.expect("db");
        let cache = Cache::builder().build().expect("cache");
        let lists = ResponseCacheLayer::new(cache.clone());
        let catalogue = Catalogue::new(db, cache.clone(), lists, Duration::from_secs(60));
        let key = product_key(1);
        cache.insert(&key, "before").await.expect("insert");
        let lock = cache.lock_key(&key);
        let token = Bytes::from_static(b"0123456789abcdef0123456789abcdef");
        let lease = Duration::from_secs(5);
        cache
            .store()
            .set(&lock, token.clone(), lease)
            .await
            .expect("lock");

        let write = tokio::spawn({
            let catalogue = catalogue.clone();
            async move { catalogue.invalidate(1).await }
        });
        while cache.get::<String>(&key).await.is_some() {
            tokio::task::yield_now().await;
        }
        assert!(
            !write.is_finished(),
            "the write waits while the load holds the lock"
        );
        cache
            .insert(&key, "old row")
            .await
            .expect("the load stores");
        let released = cache.store().compare_and_delete(&lock, &token).await;
        assert!(released.expect("release"));
        write.await.expect("write");
        assert_eq!(
            cache.get::<String>(&key).await,
            None,
            "the old row was dropped"
        );
        assert!(!catalogue.invalidations_pending());
    }
}

#[cfg(test)]
mod product_json_tests {
    use super::*;

    fn sample() -> Product {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        Product {
            id: 7,
            name: "Lamp".into(),
            description: String::new(),
            price: 12.5,
            category: "lighting".into(),
            tags: vec!["oak".into()],
            stock: 3,
            created_at: at,
            updated_at: at,
        }
    }

    /// What is stored reads back as the same JSON and tag; the tag is the JSON's.
    #[test]
    fn a_stored_product_reads_back_with_its_tag() {
        let product = ProductJson::of(&sample()).expect("json");
        let (tag, json) = (product.etag().clone(), product.json.clone());
        assert_eq!(tag, strong_etag(&json));
        let read = ProductJson::from_stored(product.into_stored());
        assert_eq!(read.etag(), &tag);
        assert_eq!(read.into_json(), json);
    }

    /// An entry of the JSON alone (as stored before tags were) is served with a tag made
    /// on the spot; so is one whose front is not a tag.
    #[test]
    fn an_untagged_entry_gets_its_tag_made() {
        let json = serde_json::to_vec(&sample()).expect("json");
        let read = ProductJson::from_stored(Raw::from(json.clone()));
        assert_eq!(read.etag(), &strong_etag(&json));
        assert_eq!(read.into_json(), json);
        let odd = b"\"not hex, but 34 bytes long......\"{}".to_vec();
        let read = ProductJson::from_stored(Raw::from(odd.clone()));
        assert_eq!(read.into_json(), odd);
    }
}
