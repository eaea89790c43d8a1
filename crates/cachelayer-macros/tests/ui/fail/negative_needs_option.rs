use cachelayer::{Cache, cached};

#[cached(ttl = "1m", negative = "10s")]
async fn get(cache: &Cache, id: u64) -> u64 {
    let _ = cache;
    id
}

fn main() {}
