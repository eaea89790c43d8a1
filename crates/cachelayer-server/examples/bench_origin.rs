//! The load benchmark's ceiling ("limit"): a minimal hyper server that answers every
//! `GET /products/{id}` with the same ~1 KB product document from memory, and nothing else.
//! It is also the upstream of the proxy scenario (its responses say `max-age=300`).
//!
//! `cargo run --release -p cachelayer-server --example bench_origin -- 127.0.0.1:9000 [workers]`
//!
//! It must never do more per request than a real service could not avoid (no logging, no
//! routing table, no allocation of the body), so that it measures the machine, not itself.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// A seeded product of `cachelayer serve`, as its API returns it (about 1 KB).
const PRODUCT: &str = r#"{"id":7,"name":"Garden linen item 7","description":"Made of linen, for garden. durable weatherproof adjustable stackable modular soft weatherproof. compact quiet quiet stackable light soft soft. modular. stackable classic. light handmade. soft. minimal soft compact minimal classic minimal quiet minimal washable classic sturdy. minimal handmade bright weatherproof adjustable minimal warm warm washable washable handmade soft. soft. compact weatherproof handmade quiet compact. durable modular bright sturdy classic light quiet. handmade weatherproof soft durable washable warm light. durable. minimal warm durable classic bright sturdy light modular soft. minimal compact washable soft. durable modular stackable warm washable classic modular washable warm classic compact light weatherproof light sturdy","price":436.56,"category":"garden","tags":["adjustable","stackable","soft"],"stock":466,"created_at":"2026-11-28T10:22:58.281400Z","updated_at":"2026-11-28T10:22:58.281400Z"}"#;

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if request.uri().path().starts_with("/products/") {
        Response::builder()
            .header("content-type", "application/json")
            .header("cache-control", "public, max-age=300")
            .body(Full::new(Bytes::from_static(PRODUCT.as_bytes())))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
    };
    Ok(response.unwrap_or_default())
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9000".to_owned())
        .parse()
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    let workers = args.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(address).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            // Small responses: send each as soon as it is written.
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let connection = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer));
                // A client closing its connection mid-request is not this server's error.
                drop(connection.await);
            });
        }
    })
}
