//! End-to-end tests of `cachelayer serve`: the real binary, on a real socket, against real
//! `redis-server` processes (started on free ports by the testkit), SQLite files, and the
//! local PostgreSQL. They must never use the shared Redis on 6379 or a mock of anything.
//!
//! One suite, kept in one file past 600 lines on purpose: its tests share one set of
//! helpers and each reads on its own, so splitting it would only scatter the helpers.

mod support;

use std::time::Duration;

use cachelayer_testkit::RedisServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    PATIENCE, Server, TestDatabase, client, counter, get, metrics_text, refused_at_start,
    undescribed, x_cache,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const TOKEN: &str = "test-admin-token";

async fn send(server: &Server, method: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let response = client()
        .request(method, server.url(path))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `/health` until its status is `want` (an observable state; bounded).
async fn until_health(server: &Server, want: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, _, body) = get(server, "/health").await;
        if body["status"] == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lamp() -> Value {
    json!({
        "name": "Desk lamp",
        "description": "A lamp",
        "price": 24.5,
        "category": "lighting",
        "tags": ["desk", "led"],
        "stock": 3
    })
}

/// Create, read (MISS then HIT), list, replace, patch, delete, then 404 (negative-cached).
async fn crud(server: &Server) {
    let response = client()
        .post(server.url("/products"))
        .json(&lamp())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let created: Value = response.json().await.expect("json");
    let id = created["id"].as_i64().expect("id");
    assert_eq!(location, format!("/products/{id}"));
    assert_eq!(created["price"], 24.5);
    assert_eq!(created["tags"], json!(["desk", "led"]));
    assert_eq!(created["created_at"], created["updated_at"]);

    let (status, cache, body) = get(server, &location).await;
    assert_eq!((status, cache.as_str()), (StatusCode::OK, "MISS"));
    assert_eq!(body, created, "read back exactly as written");
    let (_, cache, _) = get(server, &location).await;
    assert_eq!(cache, "HIT");

    let (status, _, page) = get(server, "/products?category=lighting&limit=100").await;
    assert_eq!(status, StatusCode::OK);
    let items = page["items"].as_array().expect("items");
    assert!(items.iter().any(|p| p["id"] == id));
    assert_eq!(page["total"].as_u64(), Some(items.len() as u64));
    let (_, _, first) = get(server, "/products?limit=10&offset=0").await;
    assert_eq!(first["items"].as_array().map(Vec::len), Some(10));
    assert_eq!(first["total"], 51, "50 samples and the lamp");
    let (_, _, next) = get(server, "/products?limit=10&offset=10").await;
    assert_eq!(
        next["items"][0]["id"],
        first["items"][9]["id"].as_i64().unwrap_or(0) + 1
    );

    let mut replacement = lamp();
    replacement["name"] = json!("Floor lamp");
    replacement["price"] = json!(99.99);
    let (status, replaced) = send(server, "PUT", &location, &replacement).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replaced["name"], "Floor lamp");
    assert_eq!(replaced["price"], 99.99);
    assert_eq!(replaced["created_at"], created["created_at"]);
    let (_, cache, body) = get(server, &location).await;
    assert_eq!(
        (cache.as_str(), &body["name"]),
        ("MISS", &json!("Floor lamp"))
    );

    let (status, patched) = send(server, "PATCH", &location, &json!({"stock": 0})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&patched["stock"], &patched["name"]),
        (&json!(0), &json!("Floor lamp"))
    );
    let (_, _, body) = get(server, &location).await;
    assert_eq!(body, patched);

    let response = client()
        .delete(server.url(&location))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, cache, body) = get(server, &location).await;
    assert_eq!((status, cache.as_str()), (StatusCode::NOT_FOUND, "MISS"));
    assert_eq!(body["error"], "not_found");
    let (status, cache, _) = get(server, &location).await;
    assert_eq!(
        (status, cache.as_str()),
        (StatusCode::NOT_FOUND, "HIT"),
        "negative-cached"
    );
    let (status, _) = send(server, "PATCH", &location, &json!({"stock": 1})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let response = client()
        .delete(server.url(&location))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_redis_and_sqlite() {
    let redis = RedisServer::start();
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--redis-url", &redis.url()]);
    crud(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_redis_and_postgres() {
    let redis = RedisServer::start();
    let db = TestDatabase::postgres().await;
    let server = Server::start(&db, &["--redis-url", &redis.url()]);
    crud(&server).await;
    let (_, _, health) = get(&server, "/health").await;
    assert_eq!(health["database"]["kind"], "postgres");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_the_in_process_store() {
    let db = TestDatabase::sqlite();
    let mut server = Server::start(&db, &[]);
    crud(&server).await;
    let local = server.wait_for_log(
        "no Redis URL: the cache is local to this process; other instances neither share it nor see its invalidations",
    );
    assert_eq!(local["level"], "INFO");
}

/// Three instances starting at once on an empty PostgreSQL database (as `docker compose up`
/// starts them) migrate it once and seed it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_seed_once() {
    let db = TestDatabase::postgres().await;
    let mut servers: Vec<Server> = (0..3).map(|_| Server::spawn(&db, &[])).collect();
    for server in &mut servers {
        server.wait_until_listening();
    }
    let seeded: Vec<u64> = servers
        .iter_mut()
        .map(|server| {
            server.wait_for_log("database ready")["seeded"]
                .as_u64()
                .expect("seeded")
        })
        .collect();
    assert_eq!(seeded.iter().sum::<u64>(), 50, "{seeded:?}");
    for server in &servers {
        let (_, _, page) = get(server, "/products?limit=1").await;
        assert_eq!(page["total"], 50);
    }
}

fn field_names(body: &Value) -> Vec<String> {
    body["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f["field"].as_str().expect("field").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_errors_naming_each_field() {
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--max-body-bytes", "2048"]);
    let bad =
        json!({"name": "", "price": -1, "category": 7, "tags": "x", "stock": 1.5, "colour": "red"});
    let (status, body) = send(&server, "POST", "/products", &bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"], "validation_failed");
    let mut fields = field_names(&body);
    fields.sort();
    assert_eq!(
        fields,
        ["category", "colour", "name", "price", "stock", "tags"]
    );

    let (status, body) = send(&server, "POST", "/products", &json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field_names(&body), ["name", "price", "category"]);

    let (status, body) = send(&server, "PUT", "/products/abc", &json!({"name": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field_names(&body)[0], "id");

    let (status, body) = send(&server, "PATCH", "/products/1", &json!({})).await;
    assert_eq!(
        (status, field_names(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, vec!["body".to_owned()])
    );

    let response = client()
        .post(server.url("/products"))
        .body("{not json")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.expect("json");
    assert_eq!(field_names(&body), ["body"]);

    let (status, _, body) = get(&server, "/products/0").await;
    assert_eq!(
        (status, field_names(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, vec!["id".to_owned()])
    );
    let (status, _, body) = get(&server, "/products?limit=0&offset=x&category=").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut fields = field_names(&body);
    fields.sort();
    assert_eq!(fields, ["category", "limit", "offset"]);

    let huge = json!({"name": "x", "price": 1, "category": "c", "description": "d".repeat(4096)});
    let (status, body) = send(&server, "POST", "/products", &huge).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &json!("payload_too_large"))
    );

    let (status, _, body) = get(&server, "/no/such/route").await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
    let response = client()
        .delete(server.url("/products"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "method_not_allowed");
    let (status, _, _) = get(&server, "/admin/invalidate").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no admin routes without a token"
    );
}

/// Control characters every text input refuses: NUL (which PostgreSQL text cannot hold),
/// an escape, DEL and a C1 control (NEL).
const CONTROLS: [char; 4] = ['\u{0}', '\u{1b}', '\u{7f}', '\u{85}'];

/// Layout characters allowed in descriptions only.
const LAYOUT: [char; 3] = ['\t', '\n', '\r'];

/// Every byte of `text` percent-encoded, for a query value or a path segment.
fn percent_encoded(text: &str) -> String {
    text.bytes().map(|byte| format!("%{byte:02X}")).collect()
}

/// Asserts a 422 validation error naming `field`, and only it.
fn assert_refused(status: StatusCode, body: &Value, field: &str, what: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
    assert_eq!(body["error"], "validation_failed", "{what}: {body}");
    assert_eq!(field_names(body), [field], "{what}: {body}");
}

/// Sends `value` as `field` in a create, a replace and a patch; each must be refused naming
/// the field.
async fn assert_body_field_refused(server: &Server, field: &str, value: &Value) {
    let mut full = lamp();
    full[field] = value.clone();
    let mut partial = serde_json::Map::new();
    partial.insert(field.to_owned(), value.clone());
    let partial = Value::Object(partial);
    for (method, path, body) in [
        ("POST", "/products", &full),
        ("PUT", "/products/1", &full),
        ("PATCH", "/products/1", &partial),
    ] {
        let (status, answer) = send(server, method, path, body).await;
        assert_refused(status, &answer, field, &format!("{method} {field}={value}"));
    }
}

/// Every text field of a product body, every list parameter and the product id refuse
/// control characters with a 422 naming them, before the database sees them; descriptions
/// alone keep tabs and line breaks.
async fn control_characters_are_refused(server: &Server) {
    let (_, _, product_before) = get(server, "/products/1").await;
    let (_, _, page_before) = get(server, "/products?limit=1").await;
    for control in CONTROLS {
        let text = format!("a{control}b");
        for field in ["name", "description", "category"] {
            assert_body_field_refused(server, field, &json!(text)).await;
        }
        assert_body_field_refused(server, "tags", &json!(["desk", text])).await;
        let encoded = percent_encoded(&control.to_string());
        for (param, value) in [
            ("category", format!("a{encoded}b")),
            ("limit", format!("1{encoded}")),
            ("offset", format!("{encoded}0")),
        ] {
            let (status, _, body) = get(server, &format!("/products?{param}={value}")).await;
            assert_refused(status, &body, param, &format!("?{param}={value}"));
        }
        let path = format!("/products/1{encoded}");
        let (status, _, body) = get(server, &path).await;
        assert_refused(status, &body, "id", &format!("GET {path}"));
        for method in ["PUT", "PATCH", "DELETE"] {
            let (status, body) = send(server, method, &path, &lamp()).await;
            assert_refused(status, &body, "id", &format!("{method} {path}"));
        }
    }
    for layout in LAYOUT {
        let text = format!("a{layout}b");
        for field in ["name", "category"] {
            assert_body_field_refused(server, field, &json!(text)).await;
        }
        assert_body_field_refused(server, "tags", &json!([text])).await;
        let value = format!("a{}b", percent_encoded(&layout.to_string()));
        let (status, _, body) = get(server, &format!("/products?category={value}")).await;
        assert_refused(status, &body, "category", &format!("?category={value}"));
    }
    let (_, _, product_after) = get(server, "/products/1").await;
    assert_eq!(
        product_after, product_before,
        "no refused write reached the row"
    );
    let (_, _, page_after) = get(server, "/products?limit=1").await;
    assert_eq!(
        page_after["total"], page_before["total"],
        "no refused create"
    );

    let mut lamp = lamp();
    lamp["description"] = json!("First line,\tindented\r\nsecond line\n");
    let (status, created) = send(server, "POST", "/products", &lamp).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["description"],
        "First line,\tindented\r\nsecond line"
    );
    let path = format!("/products/{}", created["id"]);
    let (status, _, read) = get(server, &path).await;
    assert_eq!(
        (status, &read),
        (StatusCode::OK, &created),
        "read back as stored"
    );
    let patch = json!({"description": "one\ttwo\nthree"});
    let (status, patched) = send(server, "PATCH", &path, &patch).await;
    assert_eq!(
        (status, &patched["description"]),
        (StatusCode::OK, &json!("one\ttwo\nthree"))
    );
}

/// On SQLite, which would store them, control characters are refused all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_refused_on_sqlite() {
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &[]);
    control_characters_are_refused(&server).await;
}

/// On PostgreSQL, whose text cannot hold NUL, control characters get a 422 naming the
/// field, never a 503 from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_refused_on_postgres() {
    let db = TestDatabase::postgres().await;
    let server = Server::start(&db, &[]);
    control_characters_are_refused(&server).await;
}

/// Reads say MISS then HIT, for a product (through get_with) and a list page (through the
/// HTTP layer); a write makes both MISS with the new data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_report_miss_then_hit_and_writes_refresh_them() {
    let redis = RedisServer::start();
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--redis-url", &redis.url()]);
    for path in ["/products/7", "/products?limit=5"] {
        let (_, first, _) = get(&server, path).await;
        let (_, second, _) = get(&server, path).await;
        assert_eq!((first.as_str(), second.as_str()), ("MISS", "HIT"), "{path}");
    }
    let response = client()
        .get(server.url("/products?limit=5"))
        .send()
        .await
        .expect("GET");
    let status_header = response.headers()["cache-status"]
        .to_str()
        .expect("header")
        .to_owned();
    assert!(
        status_header.starts_with("cachelayer; hit"),
        "{status_header}"
    );
    let (status, _) = send(&server, "PATCH", "/products/3", &json!({"name": "Renamed"})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, cache, body) = get(&server, "/products/3").await;
    assert_eq!((cache.as_str(), &body["name"]), ("MISS", &json!("Renamed")));
    let (_, cache, page) = get(&server, "/products?limit=5").await;
    assert_eq!(
        (cache.as_str(), &page["items"][2]["name"]),
        ("MISS", &json!("Renamed"))
    );
    // The library's own metrics are exported: one hit through get_with, two page hits
    // through the HTTP layer.
    let hits = counter(&server, "cachelayer_hits_total", "").await;
    assert_eq!(hits, 1.0);
    let page_hits = counter(&server, "cachelayer_http_responses_total", "cache=\"HIT\"").await;
    assert_eq!(page_hits, 2.0);
}

/// A product read's `ETag` is the same from the database, from the store and from another
/// instance on the same Redis; a client holding it gets `304` (with the status headers and
/// no body), and a write changes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_reads_carry_etags_and_answer_304() {
    let redis = RedisServer::start();
    let db = TestDatabase::sqlite();
    let one = Server::start(&db, &["--redis-url", &redis.url()]);
    let other = Server::start(&db, &["--redis-url", &redis.url()]);
    let read = |server: &Server, if_none_match: Option<String>| {
        let mut request = client().get(server.url("/products/9"));
        if let Some(tag) = if_none_match {
            request = request.header("if-none-match", tag);
        }
        async move {
            let response = request.send().await.expect("GET");
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().expect("text").to_owned())
            };
            let (tag, cache) = (header("etag"), header("x-cache"));
            let status = response.status();
            let body = response.bytes().await.expect("body");
            (
                status,
                tag.unwrap_or_default(),
                cache.unwrap_or_default(),
                body,
            )
        }
    };
    let (status, tag, cache, body) = read(&one, None).await;
    assert_eq!((status, cache.as_str()), (StatusCode::OK, "MISS"));
    assert!(
        tag.len() == 34 && tag.starts_with('"') && tag.ends_with('"'),
        "{tag}"
    );
    let (_, hit_tag, cache, hit_body) = read(&one, None).await;
    assert_eq!((hit_tag.as_str(), cache.as_str()), (tag.as_str(), "HIT"));
    assert_eq!(hit_body, body, "the JSON alone, without the stored tag");
    let (_, other_tag, cache, _) = read(&other, None).await;
    assert_eq!((other_tag.as_str(), cache.as_str()), (tag.as_str(), "HIT"));
    for current in [
        tag.clone(),
        format!("W/{tag}"),
        format!("\"x\", {tag}"),
        "*".into(),
    ] {
        let (status, same, cache, body) = read(&one, Some(current.clone())).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{current}");
        assert_eq!((same.as_str(), cache.as_str()), (tag.as_str(), "HIT"));
        assert!(body.is_empty());
    }
    let (status, _, _, _) = read(&one, Some("\"not-it\"".into())).await;
    assert_eq!(status, StatusCode::OK);
    let written = client()
        .patch(one.url("/products/9"))
        .json(&json!({"stock": 77}))
        .send()
        .await
        .expect("PATCH");
    let written_tag = written.headers()["etag"].to_str().expect("tag").to_owned();
    assert_ne!(written_tag, tag);
    let (status, new_tag, cache, _) = read(&other, Some(tag.clone())).await;
    assert_eq!(
        (status, cache.as_str()),
        (StatusCode::OK, "MISS"),
        "the old tag is stale"
    );
    assert_eq!(new_tag, written_tag, "the tag the write announced");
}

/// Two instances on one Redis and one database: a write through one is seen at once
/// through the other, for the product and for every list page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_is_read_fresh_on_another() {
    let redis = RedisServer::start();
    let db = TestDatabase::sqlite();
    let a = Server::start(&db, &["--redis-url", &redis.url()]);
    let b = Server::start(&db, &["--redis-url", &redis.url()]);
    let pages = [
        "/products?limit=20",
        "/products?category=garden",
        "/products?limit=5&offset=5",
    ];
    for path in std::iter::once("/products/9").chain(pages) {
        get(&b, path).await;
        let (_, cache, _) = get(&b, path).await;
        assert_eq!(cache, "HIT", "{path} cached on b");
    }
    let (status, _) = send(
        &a,
        "PUT",
        "/products/9",
        &json!({
            "name": "Moved", "price": 1.25, "category": "garden", "stock": 9
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, cache, body) = get(&b, "/products/9").await;
    assert_eq!((cache.as_str(), &body["name"]), ("MISS", &json!("Moved")));
    for path in pages {
        let (_, cache, page) = get(&b, path).await;
        assert_eq!(cache, "MISS", "{path} dropped on b");
        let items = page["items"].as_array().expect("items");
        if let Some(item) = items.iter().find(|p| p["id"] == 9) {
            assert_eq!(item["name"], "Moved", "{path}");
        }
    }
    let (_, _, garden) = get(&b, "/products?category=garden").await;
    assert!(
        garden["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|p| p["id"] == 9)
    );
    let (status, created) = send(&a, "POST", "/products", &lamp()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, _, page) = get(&b, "/products?limit=20").await;
    assert_eq!(page["total"], 51, "the count on b includes a's new product");
    let (status, _) = send(
        &a,
        "DELETE",
        &format!("/products/{}", created["id"]),
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// List pages never depend on instances' clocks agreeing: writes go through an instance
/// whose clock runs 30 s behind (under libfaketime) while list pages are read through
/// another without pause, and once a burst of writes has returned, the other instance's
/// list page shows the last. Before the tag clock, a page whose query ran during a write
/// was stored with the old row after about one burst in seven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_stay_fresh_when_instance_clocks_disagree() {
    let redis = RedisServer::start();
    let db = TestDatabase::postgres().await;
    let behind = Server::start_with_env(
        &db,
        &[("LD_PRELOAD", support::libfaketime()), ("FAKETIME", "-30s")],
        &["--redis-url", &redis.url()],
    );
    let reader = Server::start(&db, &["--redis-url", &redis.url()]);
    let page = "/products?limit=50";
    let price_on = |page: &Value| {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|p| p["id"] == 1)
            .map(|p| p["price"].clone())
            .expect("product 1 on the page")
    };
    // Readers keep a query of the page running on the reader almost all the time, so each
    // write lands in the middle of one.
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (url, reading) = (reader.url(page), std::sync::Arc::clone(&reading));
            tokio::spawn(async move {
                let mut hits = 0;
                while reading.load(std::sync::atomic::Ordering::Relaxed) {
                    let response = client().get(&url).send().await.expect("GET");
                    assert_eq!(response.status(), StatusCode::OK);
                    hits += usize::from(x_cache(&response) == "HIT");
                }
                hits
            })
        })
        .collect();
    let mut stale = Vec::new();
    for round in 0..40 {
        // A burst: each write after the first lands while queries started after the one
        // before it still run.
        let mut price = json!(0);
        for write in 0..3 {
            price = json!(100.0 + f64::from(round * 3 + write));
            let (status, _) =
                send(&behind, "PATCH", "/products/1", &json!({ "price": price })).await;
            assert_eq!(status, StatusCode::OK, "round {round}");
        }
        let (_, cache, body) = get(&reader, page).await;
        if price_on(&body) != price {
            stale.push(format!("round {round}: {} ({cache})", price_on(&body)));
        }
    }
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut hits = 0;
    for reader in readers {
        hits += reader.await.expect("reader");
    }
    assert!(stale.is_empty(), "stale list pages after writes: {stale:?}");
    assert!(hits > 0, "list pages were cached between the writes");
}

/// A cold product requested concurrently through two instances reaches the database once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_key_through_two_instances_is_loaded_once() {
    let redis = RedisServer::start();
    let db = TestDatabase::sqlite();
    let a = Server::start(&db, &["--redis-url", &redis.url()]);
    let b = Server::start(&db, &["--redis-url", &redis.url()]);
    let before = counter(&a, "cachelayer_db_queries_total", "query=\"get\"").await
        + counter(&b, "cachelayer_db_queries_total", "query=\"get\"").await;
    assert_eq!(before, 0.0);
    let requests: Vec<_> = (0..60)
        .map(|n| {
            let url = if n % 2 == 0 {
                a.url("/products/11")
            } else {
                b.url("/products/11")
            };
            tokio::spawn(async move {
                let response = client().get(url).send().await.expect("GET");
                assert_eq!(response.status(), StatusCode::OK);
                response.json::<Value>().await.expect("json")["id"].clone()
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.expect("request"), 11);
    }
    let queries = counter(&a, "cachelayer_db_queries_total", "query=\"get\"").await
        + counter(&b, "cachelayer_db_queries_total", "query=\"get\"").await;
    assert_eq!(
        queries, 1.0,
        "one database query for 60 concurrent requests on 2 instances"
    );
}

/// Redis stopped mid-test: every request still succeeds, /health says degraded; when Redis
/// returns, the instance is healthy again and caches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_test_degrades_and_recovers() {
    let mut redis = RedisServer::start();
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--redis-url", &redis.url()]);
    get(&server, "/products/4").await;
    until_health(&server, "healthy").await;
    redis.stop();
    for path in [
        "/products/4",
        "/products/5",
        "/products?limit=3",
        "/products/999",
    ] {
        let (status, _, _) = get(&server, path).await;
        assert!(
            status == StatusCode::OK || status == StatusCode::NOT_FOUND,
            "{path}: {status}"
        );
    }
    let (status, patched) = send(&server, "PATCH", "/products/4", &json!({"stock": 42})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = get(&server, "/products/4").await;
    assert_eq!(body, patched);
    let health = until_health(&server, "degraded").await;
    assert_eq!(health["cache"]["redis"]["reachable"], false);
    let response = client()
        .get(server.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "degraded still answers 200"
    );
    redis.restart();
    let health = until_health(&server, "healthy").await;
    assert_eq!(health["cache"]["redis"]["reachable"], true);
    // Caching works again: a read is stored, then hit.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, cache, body) = get(&server, "/products/4").await;
        assert_eq!(body["stock"], 42);
        if cache == "HIT" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never cached again after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis hung (SIGSTOP): reads and writes still succeed, from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_succeed_while_redis_hangs() {
    let redis = RedisServer::start();
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--redis-url", &redis.url()]);
    get(&server, "/products/6").await;
    redis.pause();
    let (status, patched) = send(&server, "PATCH", "/products/6", &json!({"stock": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = get(&server, "/products/6").await;
    assert_eq!((status, &body), (StatusCode::OK, &patched));
    let (status, _, _) = get(&server, "/products?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    redis.resume();
}

/// Redis refusing writes (a demoted replica answers READONLY) during a write: the write
/// succeeds, its invalidation fails and is retried, and meanwhile this instance reads around
/// the stale entries that Redis still serves; once Redis takes writes again, the retry drops
/// them for every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_invalidation_fails_is_not_served_stale() {
    let redis = RedisServer::start();
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--redis-url", &redis.url()]);
    let other = Server::start(&db, &["--redis-url", &redis.url()]);
    for _ in 0..2 {
        get(&server, "/products/6").await;
        get(&server, "/products?limit=7").await;
    }
    // A replica of an unreachable primary keeps its data, serves reads, refuses writes.
    assert_eq!(redis.cli(["REPLICAOF", "127.0.0.1", "1"]), "OK");
    let (status, patched) = send(
        &server,
        "PATCH",
        "/products/6",
        &json!({"name": "During outage"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let failures = counter(&server, "cachelayer_invalidation_failures_total", "").await;
    assert_eq!(failures, 2.0, "the product and list invalidations failed");
    let (_, cache, body) = get(&server, "/products/6").await;
    assert_eq!(
        (cache.as_str(), &body),
        ("BYPASS", &patched),
        "read around the stale entry"
    );
    let (_, cache, page) = get(&server, "/products?limit=7").await;
    assert_eq!(page["items"][5]["name"], "During outage", "X-Cache {cache}");
    assert_eq!(redis.cli(["REPLICAOF", "NO", "ONE"]), "OK");
    until_pending_cleared(&server).await;
    let (_, _, body) = get(&other, "/products/6").await;
    assert_eq!(body["name"], "During outage");
    let (_, _, page) = get(&other, "/products?limit=7").await;
    assert_eq!(page["items"][5]["name"], "During outage");
}

async fn until_pending_cleared(server: &Server) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, _, health) = get(server, "/health").await;
        if health["cache"]["invalidations_pending"] == false && health["status"] == "healthy" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "invalidations still pending: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis down at start: the server starts and serves, degraded, and picks Redis up when it
/// appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_redis_down_and_picks_it_up() {
    let mut redis = RedisServer::start();
    redis.stop();
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--redis-url", &redis.url()]);
    let (status, cache, _) = get(&server, "/products/2").await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(cache, "HIT");
    until_health(&server, "degraded").await;
    redis.restart();
    until_health(&server, "healthy").await;
    let deadline = Instant::now() + PATIENCE;
    while get(&server, "/products/2").await.1 != "HIT" {
        assert!(
            Instant::now() < deadline,
            "never cached after Redis appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_invalidation_needs_the_token() {
    let redis = RedisServer::start();
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--redis-url", &redis.url(), "--admin-token", TOKEN]);
    for path in ["/products/8", "/products?limit=4"] {
        get(&server, path).await;
        assert_eq!(get(&server, path).await.1, "HIT");
    }
    let request = json!({"tags": ["products"], "keys": ["product:8"]});
    for auth in [None, Some("Bearer wrong-token"), Some("Basic dGVzdA==")] {
        let mut builder = client()
            .post(server.url("/admin/invalidate"))
            .json(&request);
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        let response = builder.send().await.expect("admin");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    assert_eq!(
        get(&server, "/products/8").await.1,
        "HIT",
        "refused requests changed nothing"
    );
    let response = client()
        .post(server.url("/admin/invalidate"))
        .bearer_auth(TOKEN)
        .json(&request)
        .send()
        .await
        .expect("admin");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body,
        json!({"tags": 1, "keys": 1, "urls": 0, "not_found": {"keys": [], "urls": []}})
    );
    for path in ["/products/8", "/products?limit=4"] {
        assert_eq!(get(&server, path).await.1, "MISS", "{path} invalidated");
    }
    assert_eq!(get(&server, "/products?limit=4").await.1, "HIT");
    // The scheme is case-insensitive and may be followed by several spaces (RFC 9110 11.1).
    let response = client()
        .post(server.url("/admin/invalidate"))
        .header("authorization", format!("bearer  {TOKEN}"))
        .json(&json!({"urls": ["/products?limit=4"]}))
        .send()
        .await
        .expect("admin");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        get(&server, "/products?limit=4").await.1,
        "MISS",
        "purged by URL"
    );
    let response = client()
        .post(server.url("/admin/invalidate"))
        .bearer_auth(TOKEN)
        .json(&json!({"tags": "products"}))
        .send()
        .await
        .expect("admin");
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let logs = serde_json::to_string(&server.logs()).expect("logs");
    assert!(!logs.contains(TOKEN), "the token never reaches the logs");
}

/// SIGTERM with a request in flight: the request completes, then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let db = TestDatabase::sqlite();
    let mut server = Server::start(&db, &[]);
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut connection = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let body = serde_json::to_vec(&lamp()).expect("json");
    let head = format!(
        "POST /products HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    connection.write_all(head.as_bytes()).await.expect("head");
    connection
        .write_all(&body[..10])
        .await
        .expect("half a body");
    // In flight: the server counts it (the /metrics request itself is the other one).
    let deadline = Instant::now() + PATIENCE;
    while counter(&server, "cachelayer_http_requests_in_flight", "").await < 2.0 {
        assert!(Instant::now() < deadline, "the request never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.terminate();
    server.wait_for_log("shutting down: draining in-flight requests");
    connection
        .write_all(&body[10..])
        .await
        .expect("rest of the body");
    let mut response = Vec::new();
    let read = tokio::time::timeout(PATIENCE, connection.read_to_end(&mut response)).await;
    read.expect("answered before the deadline").expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let status = server.wait();
    assert!(status.success(), "exit status {status}");
    let logs = server.logs();
    let messages: Vec<&str> = logs.iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(
        messages.contains(&"all in-flight requests finished"),
        "{messages:?}"
    );
    assert_eq!(messages.last(), Some(&"stopped"));
    // The write was committed: a new server on the same database has it.
    let server = Server::start(&db, &[]);
    let (_, _, page) = get(&server, "/products?category=lighting&limit=100").await;
    let names: Vec<&Value> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert!(names.contains(&&json!("Desk lamp")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_openapi_describe_the_service() {
    let db = TestDatabase::sqlite();
    let server = Server::start(&db, &["--admin-token", TOKEN]);
    get(&server, "/products/1").await;
    get(&server, "/products/1").await;
    let text = metrics_text(&server).await;
    for needle in [
        "cachelayer_http_requests_total{method=\"GET\",route=\"/products/{id}\",status=\"200\"} 2",
        "cachelayer_http_request_duration_seconds_bucket{method=\"GET\",route=\"/products/{id}\",status=\"200\",le=\"0.001\"}",
        "cachelayer_db_queries_total{query=\"get\"} 1",
        "cachelayer_hits_total 1",
        "cachelayer_loader_calls_total 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // Every family says what it counts.
    assert!(
        text.contains("# TYPE cachelayer_hits_total counter"),
        "{text}"
    );
    assert_eq!(undescribed(&text), Vec::<String>::new(), "{text}");
    let (status, _, health) = get(&server, "/health").await;
    assert_eq!(
        (status, &health["status"]),
        (StatusCode::OK, &json!("healthy"))
    );
    assert_eq!(health["cache"]["store"], "memory");
    assert_eq!(health["cache"]["stats"]["hits"], 1);
    assert_eq!(health["cache"]["stats"]["misses"], 1);
    assert_eq!(health["cache"]["stats"]["hit_ratio"], 0.5);
    assert_eq!(health["database"]["reachable"], true);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(get(&server, "/health/live").await.0, StatusCode::OK);
    assert_eq!(get(&server, "/health/ready").await.0, StatusCode::OK);

    let (status, _, spec) = get(&server, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let paths = spec["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/products", &["get", "post"][..]),
        ("/products/{id}", &["get", "put", "patch", "delete"][..]),
        ("/health", &["get"][..]),
        ("/health/live", &["get"][..]),
        ("/health/ready", &["get"][..]),
        ("/metrics", &["get"][..]),
        ("/openapi.json", &["get"][..]),
        ("/admin/invalidate", &["post"][..]),
    ] {
        for method in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path}"
            );
        }
    }
    let schemas = spec["components"]["schemas"].as_object().expect("schemas");
    for schema in [
        "Product",
        "ProductInput",
        "ProductPatch",
        "ProductPage",
        "ErrorBody",
        "Health",
    ] {
        assert!(schemas.contains_key(schema), "schema {schema}");
    }
}

#[test]
fn invalid_configuration_exits_naming_the_setting() {
    for (args, named) in [
        (
            &["--database-url", "mysql://db"][..],
            "--database-url (DATABASE_URL)",
        ),
        (
            &["--redis-url", "localhost:6379"][..],
            "--redis-url (REDIS_URL)",
        ),
        (&["--cache-ttl", "forever"][..], "--cache-ttl"),
        (&["--log-format", "xml"][..], "--log-format"),
    ] {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let stderr = refused_at_start(&all);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

/// Requests that would only fill the cache with copies get none: a `Host` off the
/// allow-list is answered uncached, and unknown or oddly written list parameters are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_hosts_and_query_noise_create_no_entries() {
    let redis = RedisServer::start();
    let db = TestDatabase::sqlite();
    let server = Server::start(
        &db,
        &["--redis-url", &redis.url(), "--allowed-hosts", "127.0.0.1"],
    );
    for _ in 0..2 {
        let response = client()
            .get(server.url("/products?limit=3"))
            .header("host", "evil.example")
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(x_cache(&response), "BYPASS");
    }
    get(&server, "/products?limit=3").await;
    assert_eq!(
        get(&server, "/products?limit=3").await.1,
        "HIT",
        "the allowed host is cached"
    );
    for path in [
        "/products?limit=03",
        "/products?limit=3&cachebuster=1",
        "/products/+3",
    ] {
        let response = client().get(server.url(path)).send().await.expect("GET");
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}"
        );
        let status = response.headers().get("cache-status").cloned();
        let status = status.map(|v| v.to_str().unwrap_or_default().to_owned());
        assert!(
            !status.unwrap_or_default().contains("stored"),
            "{path}: nothing stored"
        );
    }
    let (status, _, body) = get(&server, "/products/%FF").await;
    assert_eq!(
        (status, &body["error"]),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!("validation_failed")
        )
    );
}

/// A failure after logging has started is said once, in the log (on stdout, where the rest
/// of the run's story is), not again on stderr.
#[test]
fn a_failure_at_start_is_said_once() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cachelayer"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args([
            "--database-url",
            "sqlite:///nonexistent-dir/sub/cachelayer.db",
        ])
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the cachelayer binary");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = stdout
        .lines()
        .filter(|line| line.contains("unable to open database file"))
        .count();
    assert_eq!(said, 1, "{stdout}");
    assert!(stderr.trim().is_empty(), "said again on stderr: {stderr}");
}

/// A Redis unreachable at start is said once, naming it (its URL without a password) and
/// the error, and said again when it answers; the service runs from the database meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_at_start_is_named_and_so_is_its_return() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.stop();
    let db = TestDatabase::sqlite();
    let mut server = Server::start(&db, &["--redis-url", &url]);
    let down = server.wait_for_log(
        "Redis unreachable at start; serving from the source of truth until it answers",
    );
    assert_eq!(down["store"], url.as_str(), "{down}");
    assert!(
        down["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    let (status, _, _) = get(&server, "/products/1").await;
    assert_eq!(status, StatusCode::OK, "served from the database meanwhile");
    redis.restart();
    let up = server.wait_for_log("Redis answers again");
    assert_eq!(up["store"], url.as_str(), "{up}");
}

/// With caching off, every read still says where it came from: list pages as product reads
/// do, `BYPASS` with `detail=off`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_with_caching_off_say_bypass() {
    let db = TestDatabase::sqlite();
    for flags in [&["--list-ttl", "0s"][..], &["--cache-ttl", "0s"]] {
        let server = Server::start(&db, flags);
        for path in ["/products", "/products/1"] {
            let response = client().get(server.url(path)).send().await.expect("GET");
            assert_eq!(response.status(), StatusCode::OK, "{flags:?} {path}");
            let cache_status = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let label = x_cache(&response);
            if path == "/products" || flags[0] == "--cache-ttl" {
                assert_eq!(label, "BYPASS", "{flags:?} {path}");
                assert!(
                    cache_status.contains("fwd=bypass; detail=off"),
                    "{flags:?} {path}: {cache_status}"
                );
            } else {
                assert_ne!(label, "-", "{flags:?} {path}: product reads say how");
            }
        }
    }
}
