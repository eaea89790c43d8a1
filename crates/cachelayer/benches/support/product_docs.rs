//! Product documents of a chosen JSON size, shared by the benches (1 KB and the 4 KB of a
//! typical API response).

use serde::{Deserialize, Serialize};

/// One catalogue product, shaped like the demo API's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Product {
    id: u64,
    sku: String,
    name: String,
    description: String,
    price_cents: u32,
    tags: Vec<String>,
    updated_at: String,
}

/// A vocabulary of 150 pseudo-words (3 to 9 letters), the same on every run.
fn vocabulary() -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(42);
    (0..150)
        .map(|_| {
            let len = rng.usize(3..=9);
            (0..len).map(|_| rng.lowercase()).collect()
        })
        .collect()
}

/// Product `id`: ids, SKU, name, a 22-word description drawn at random from the
/// vocabulary, price, tags and a timestamp; seeded by `id`, so documents are reproducible.
fn product(id: u64, vocabulary: &[String]) -> Product {
    let mut rng = fastrand::Rng::with_seed(id);
    let description = (0..22)
        .map(|_| vocabulary[rng.usize(..vocabulary.len())].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let name_words = (0..3)
        .map(|_| vocabulary[rng.usize(..vocabulary.len())].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    Product {
        id,
        sku: format!("SKU-{:08}", rng.u32(..100_000_000)),
        name: name_words,
        description,
        price_cents: rng.u32(100..100_000),
        tags: (0..rng.usize(1..4))
            .map(|_| vocabulary[rng.usize(..vocabulary.len())].clone())
            .collect(),
        updated_at: format!(
            "2026-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            rng.u8(1..13),
            rng.u8(1..29),
            rng.u8(0..24),
            rng.u8(0..60),
            rng.u8(0..60)
        ),
    }
}

/// The shortest list of products whose JSON is at least `target_bytes` long.
pub(crate) fn products_of_json_size(target_bytes: usize) -> Vec<Product> {
    let vocabulary = vocabulary();
    let mut list = Vec::new();
    loop {
        list.push(product(list.len() as u64 + 1, &vocabulary));
        let len = serde_json::to_vec(&list).map_or(usize::MAX, |v| v.len());
        if len >= target_bytes {
            return list;
        }
    }
}
