use cachelayer::{Cache, cached};

struct Pool;

#[cached(ttl = "1m")]
async fn get(cache: &Cache, pool: &Pool, id: u64) -> u64 {
    let _ = (cache, pool);
    id
}

fn main() {}
