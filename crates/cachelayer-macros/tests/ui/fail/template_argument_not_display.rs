use cachelayer::{Cache, cached};

#[derive(serde::Serialize)]
struct Filter {
    category: String,
}

#[cached(key = "search:{filter}")]
async fn search(cache: &Cache, filter: Filter) -> Vec<u64> {
    let _ = (cache, filter);
    Vec::new()
}

fn main() {}
