use cachelayer::{Cache, cached};

#[cached(ttl = 0)]
async fn get(cache: &Cache, id: u64) -> u64 {
    let _ = cache;
    id
}

fn main() {}
