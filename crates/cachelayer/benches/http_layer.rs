//! The HTTP cache layer in-process, on the in-process store: a hit, a miss (a new URL each
//! time, stored) and a bypass (a request with a cookie), against the same router without the
//! layer. Each response is a ~1 KB JSON document.
//!
//! Run with: `taskset -c 0 cargo bench -p cachelayer --features http --bench http_layer`

#[path = "support/product_docs.rs"]
mod product_docs;

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, header};
use axum::routing::get;
use cachelayer::Cache;
use cachelayer::http::ResponseCacheLayer;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use product_docs::products_of_json_size;
use tower::ServiceExt;

fn router() -> Router {
    let document = serde_json::to_string(&products_of_json_size(1024)).expect("json");
    Router::new().route(
        "/products",
        get(move || {
            let document = document.clone();
            async move {
                Response::builder()
                    .header(header::CACHE_CONTROL, "max-age=600")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(document))
                    .expect("response")
            }
        }),
    )
}

async fn call(app: &Router, uri: &str, cookie: bool) -> usize {
    let mut request = Request::get(uri).header(header::HOST, "shop.example");
    if cookie {
        request = request.header(header::COOKIE, "session=1");
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .len()
}

fn layer_overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let plain = router();
    let cache = Cache::builder().build().expect("cache");
    let cached = router().layer(ResponseCacheLayer::new(cache).allowed_hosts(["shop.example"]));
    runtime.block_on(call(&cached, "/products", false));
    let unique = AtomicU64::new(0);

    let mut group = c.benchmark_group("http_layer");
    group.bench_function("no_layer", |b| {
        b.to_async(&runtime)
            .iter(|| call(&plain, "/products", false));
    });
    group.bench_function("hit", |b| {
        b.to_async(&runtime)
            .iter(|| call(&cached, "/products", false));
    });
    group.bench_function("miss_and_store", |b| {
        b.to_async(&runtime).iter(|| {
            let uri = format!("/products?page={}", unique.fetch_add(1, Ordering::Relaxed));
            let cached = &cached;
            async move { call(cached, &uri, false).await }
        });
    });
    group.bench_function("bypass", |b| {
        b.to_async(&runtime)
            .iter(|| call(&cached, "/products", true));
    });
    group.finish();
}

criterion_group!(benches, layer_overhead);
criterion_main!(benches);
