//! Every supported form: free functions and methods, each result shape, every option.

use std::collections::HashMap;

use cachelayer::{Cache, cached};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct Product {
    id: u64,
    draft: bool,
}

struct Db;

#[derive(Debug)]
struct DbError;

#[cached(ttl = "5m", key = "product:{id}", ignore(db))]
async fn by_template(cache: &Cache, db: &Db, id: u64) -> Result<Product, DbError> {
    let _ = db;
    Ok(Product { id, draft: false })
}

#[cached(ttl = 30, ignore(db), negative = "10s", stale = "1m")]
async fn optional(cache: &Cache, db: &Db, id: u64, filters: HashMap<String, String>) -> Option<Product> {
    let _ = (db, filters);
    Some(Product { id, draft: true })
}

#[cached(unless = |p: &Product| p.draft, early_refresh_beta = 2.0, lock = false, lock_ttl = "2s", lock_max_wait = "1s")]
async fn plain(id: u64) -> Product {
    Product { id, draft: false }
}

struct AppState {
    cache: std::sync::Arc<Cache>,
}

struct Service;

impl Service {
    #[cached(cache = state.cache, stale_while_revalidate = "30s", stale_if_error = "1h")]
    async fn method(&self, state: &AppState, query: &str) -> Vec<String> {
        vec![query.to_owned()]
    }

    #[cached(ttl = "1m")]
    async fn associated(cache: Cache, id: u64) -> std::io::Result<u64> {
        let _ = &cache;
        Ok(id)
    }
}

#[cached]
async fn no_arguments(cache: &Cache) -> u32 {
    let _ = cache;
    1
}

#[cached(ttl = "1ms")]
pub(crate) async fn generic<'a, T: Serialize + Send + Sync>(
    cache: &Cache,
    name: &'a str,
    label: std::borrow::Cow<'a, str>,
    mut extra: T,
    filter: impl Serialize + Send + Sync,
) -> Result<usize, std::io::Error> {
    let _ = (cache, &mut extra, filter);
    if name.is_empty() {
        return Err(std::io::Error::other("empty"));
    }
    let parsed: usize = label.len().to_string().parse().map_err(std::io::Error::other)?;
    Ok(parsed)
}

struct Counter(u64);

impl Counter {
    #[cached(ttl = 60, key = "counter:{step}")]
    async fn by_value(self, cache: &Cache, step: u64) -> u64 {
        let _ = cache;
        self.0 + step
    }

    #[cached(ttl = 60, ignore(extra))]
    async fn by_mut(&mut self, cache: &Cache, step: &mut u64, extra: &mut Vec<u8>) -> u64 {
        let _ = cache;
        extra.push(1);
        *step += 1;
        self.0 += *step;
        self.0
    }
}

#[cached(cache = state.cache, key = "pair:{second}:{first}")]
async fn template_order(state: &AppState, first: u64, second: u64) -> u64 {
    let _ = state;
    first + second
}

fn main() {
    let _ = by_template_key(&1);
    let _ = optional_key(&1, &HashMap::new());
    let _ = plain_key(&1);
    let _ = Service::method_key("q");
    let _ = Service::associated_key(&1);
    let _ = no_arguments_key();
    let cache = Cache::builder().build().expect("cache");
    let _ = by_template_invalidate(&cache, &1);
    let _ = generic_key::<u8>(&"n", &std::borrow::Cow::Borrowed("l"), &1u8, &(1, 2));
    let _ = Counter::by_value_key(&1);
    let _ = Counter::by_mut_key(&1);
    // Signature order, whatever the template's order.
    let _ = template_order_key(&1, &2);
    let mut counter = Counter(0);
    let _ = counter.by_mut(&cache, &mut 1, &mut Vec::new());
    let _ = Counter(0).by_value(&cache, 1);
}
