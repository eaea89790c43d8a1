use std::collections::HashSet;

use cachelayer::{Cache, cached};

#[cached(ttl = "1m")]
async fn get(cache: &Cache, ids: Option<Vec<HashSet<u64>>>) -> usize {
    let _ = cache;
    ids.map_or(0, |sets| sets.len())
}

fn main() {}
