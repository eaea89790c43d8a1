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

fn main() {
    let _ = by_template_key(&1);
    let _ = optional_key(&1, &HashMap::new());
    let _ = plain_key(&1);
    let _ = Service::method_key("q");
    let _ = Service::associated_key(&1);
    let _ = no_arguments_key();
    let cache = Cache::builder().build().expect("cache");
    let _ = by_template_invalidate(&cache, &1);
}
