//! Envelope encode/decode of 1 KB and 4 KB JSON product documents, with and without zstd,
//! and the stored sizes (compare with the often quoted 4 KB -> 800 B).
//!
//! Run with: `taskset -c 0 cargo bench -p cachelayer --bench envelope`

#[path = "support/product_docs.rs"]
mod product_docs;

use std::hint::black_box;
use std::time::Duration;

use cachelayer::__private::codec::{Codec, DEFAULT_MAX_VALUE_BYTES, EntryMeta};
use cachelayer::Serialization;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use product_docs::{Product, products_of_json_size};

const META: EntryMeta = EntryMeta::new(Duration::from_secs(300), Duration::ZERO);

fn codecs() -> [(&'static str, Codec); 2] {
    let plain = Codec::new(Serialization::Json, None, 1, DEFAULT_MAX_VALUE_BYTES);
    let zstd = Codec::new(Serialization::Json, Some(1024), 1, DEFAULT_MAX_VALUE_BYTES);
    [
        ("plain", plain.expect("codec")),
        ("zstd1", zstd.expect("codec")),
    ]
}

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for target in [1024, 4096] {
        let doc = products_of_json_size(target);
        let json_len = serde_json::to_vec(&doc).expect("json").len();
        group.throughput(Throughput::Bytes(json_len as u64));
        for (name, codec) in codecs() {
            let stored = codec.encode(&doc, META).expect("encode").bytes;
            // Sizes are exact, not timed: printed so BENCHMARKS.md can quote them.
            println!(
                "size: json={json_len} B, {name} stored={} B (header included)",
                stored.len()
            );
            let id = format!("{name}/{json_len}B");
            group.bench_with_input(BenchmarkId::new("encode", &id), &doc, |b, doc| {
                b.iter(|| codec.encode(black_box(doc), META).expect("encode"))
            });
            group.bench_with_input(BenchmarkId::new("decode", &id), &stored, |b, stored| {
                b.iter(|| {
                    codec
                        .decode::<Vec<Product>>(black_box(stored))
                        .expect("decode")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, envelope);
criterion_main!(benches);
