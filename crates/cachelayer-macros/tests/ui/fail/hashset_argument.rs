use std::collections::HashSet;

use cachelayer::{Cache, cached};

#[cached(ttl = "1m")]
async fn get(cache: &Cache, ids: HashSet<u64>) -> usize {
    let _ = cache;
    ids.len()
}

fn main() {}
