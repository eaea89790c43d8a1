use cachelayer::{Cache, cached};

#[cached(key = "product-{id}")]
async fn get(cache: &Cache, id: u64) -> u64 {
    let _ = cache;
    id
}

fn main() {}
