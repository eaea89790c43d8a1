//! The API contract of `cachelayer serve`, held to its own `/openapi.json`: requests
//! generated from the description (proptest, over the schemas it publishes), each answer
//! checked against what the description declares for it (status, required headers, body
//! schema), and the rules in the schemas checked both ways: a request the schemas accept
//! is served, one they refuse is answered `422`. Also the links a create declares, the
//! description's own examples, and the answers of the router and the listener.
//!
//! Against the real binary, on SQLite and the in-process store.

#[path = "contract/generate.rs"]
mod generate;
#[path = "contract/spec.rs"]
mod spec;
mod support;

use std::cell::Cell;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};

use cachelayer_testkit::RedisServer;
use spec::{Answer, Operation, Spec};
use support::{Server, TestDatabase, client};

const TOKEN: &str = "contract-test-admin-token";

/// The server, its description, and a runtime to call it from proptest's synchronous
/// cases.
struct Contract {
    server: Server,
    _database: TestDatabase,
    spec: Spec,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Contract {
    fn start(args: &[&str]) -> Self {
        Self::start_on(TestDatabase::sqlite(), args)
    }

    fn start_on(database: TestDatabase, args: &[&str]) -> Self {
        let server = Server::start(&database, args);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = client();
        let doc: Value = runtime.block_on(async {
            let response = client
                .get(server.url("/openapi.json"))
                .send()
                .await
                .expect("description");
            response.json().await.expect("JSON")
        });
        Self {
            server,
            _database: database,
            spec: Spec::new(doc),
            runtime,
            client,
        }
    }

    fn send(&self, request: &Request) -> Answer {
        self.runtime.block_on(async {
            let mut builder = self
                .client
                .request(request.method.clone(), self.server.url(&request.target));
            for (name, value) in &request.headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            if let Some(body) = &request.body {
                builder = builder
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let response = builder.send().await.expect("answer");
            Answer {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: response.bytes().await.expect("body"),
            }
        })
    }
}

/// A request made from an operation, and whether its inputs are valid per the schemas.
#[derive(Debug, Clone)]
struct Request {
    method: Method,
    target: String,
    headers: Vec<(String, String)>,
    body: Option<Value>,
    valid: bool,
}

/// One parameter of a generated request: where it goes, its value (`None`: left out), and
/// whether the value is valid per its schema.
#[derive(Debug, Clone)]
struct Param {
    name: String,
    place: String,
    value: Option<Value>,
    valid: bool,
}

/// A query or path parameter's value as a client writes it: integers plainly, strings as
/// they are.
fn written(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.as_i64().is_none() && f.fract() == 0.0 && f.abs() < 9e15 => {
                (f as i64).to_string()
            }
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// `text` percent-encoded for a URL's path segment or query value.
fn encoded(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Requests for `op`, with what the schemas say of their inputs.
fn requests(spec: &Spec, op: &Operation) -> BoxedStrategy<Request> {
    let method = Method::from_bytes(op.method.as_bytes()).expect("method");
    let mut params: Vec<BoxedStrategy<Param>> = Vec::new();
    for param in spec.parameters(op) {
        let name = param["name"].as_str().expect("name").to_owned();
        let place = param["in"].as_str().expect("in").to_owned();
        let schema = generate::inline(spec, &param["schema"]);
        let required = param["required"] == true;
        let validator = Arc::new(spec.validator(&schema));
        let numeric = matches!(schema["type"].as_str(), Some("integer" | "number"));
        let values = generate::mixed(&schema);
        let values = if place == "header" {
            prop_oneof![
                Just(json!("*")),
                Just(json!("\"0123\"")),
                Just(json!("W/\"x\""))
            ]
            .boxed()
        } else {
            values
        };
        let values = match (required, place.as_str()) {
            (true, _) => values.prop_map(Some).boxed(),
            // Preconditions and validators now and then: most requests carry none.
            (false, "header") => prop::option::weighted(0.15, values).boxed(),
            (false, _) => prop::option::of(values).boxed(),
        };
        let strategy = values
            .prop_map(move |value| {
                let valid = value.as_ref().is_none_or(|v| {
                    let written = written(v);
                    // As the server reads it: a number where the schema wants one and the
                    // text is one, else the text.
                    let read = match numeric {
                        true => written
                            .parse::<i64>()
                            .ok()
                            .filter(|n| n.to_string() == written)
                            .map_or(Value::String(written), Value::from),
                        false => Value::String(written),
                    };
                    validator.is_valid(&read) || (place == "header")
                });
                Param {
                    name: name.clone(),
                    place: place.clone(),
                    value,
                    valid,
                }
            })
            .boxed();
        params.push(strategy);
    }
    let body = spec.body_schema(op).map(|schema| {
        let schema = generate::inline(spec, schema);
        let validator = Arc::new(spec.validator(&schema));
        generate::mixed(&schema)
            .prop_map(move |body| {
                let valid = validator.is_valid(&body);
                (body, valid)
            })
            .boxed()
    });
    let body = match body {
        Some(body) => body.prop_map(Some).boxed(),
        None => Just(None).boxed(),
    };
    let path = op.path.clone();
    let admin = op.path.starts_with("/admin");
    let token = prop_oneof![8 => Just(Some(TOKEN)), 1 => Just(None), 1 => Just(Some("wrong"))];
    (params, body, token)
        .prop_map(move |(params, body, token)| {
            let mut target = path.clone();
            let mut query = Vec::new();
            let mut headers = Vec::new();
            let mut valid = true;
            for Param {
                name,
                place,
                value,
                valid: param_valid,
            } in params
            {
                valid &= param_valid;
                let Some(value) = value else { continue };
                let text = written(&value);
                match place.as_str() {
                    "path" => target = target.replace(&format!("{{{name}}}"), &encoded(&text)),
                    "query" => query.push(format!("{}={}", encoded(&name), encoded(&text))),
                    _ => headers.push((name, text)),
                }
            }
            if !query.is_empty() {
                target = format!("{target}?{}", query.join("&"));
            }
            if admin && let Some(token) = token {
                headers.push(("authorization".to_owned(), format!("Bearer {token}")));
            }
            let body = body.map(|(body, body_valid)| {
                valid &= body_valid;
                body
            });
            Request {
                method: method.clone(),
                target,
                headers,
                body,
                valid,
            }
        })
        .boxed()
}

/// Every operation, many generated requests each: every answer is one the description
/// declares, no answer is a server error, and (for the catalogue's routes) valid inputs
/// are served and invalid ones refused with `422`. SQLite and the in-process store.
#[test]
fn every_answer_is_one_the_description_declares() {
    let contract = Contract::start(&["--admin-token", TOKEN]);
    holds_to_its_description(&contract, 300);
}

/// The same on PostgreSQL and Redis (where entries go through the store's binary layout
/// and timestamps through PostgreSQL's precision), with fewer cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_one_the_description_declares_on_postgres_and_redis() {
    let redis = RedisServer::start();
    let database = TestDatabase::postgres().await;
    let url = redis.url();
    let contract = tokio::task::spawn_blocking(move || {
        let contract = Contract::start_on(database, &["--admin-token", TOKEN, "--redis-url", &url]);
        holds_to_its_description(&contract, 80);
    });
    contract.await.expect("the contract holds");
}

/// The property test of [`every_answer_is_one_the_description_declares`], `cases` requests
/// per catalogue operation.
fn holds_to_its_description(contract: &Contract, cases: u32) {
    let mut operations = contract.spec.operations();
    assert!(operations.len() >= 12, "{operations:?}");
    // Deletes last, so the other operations find products to work on.
    operations.sort_by_key(|op| op.method == "DELETE");
    for op in operations {
        let strategy = requests(&contract.spec, &op);
        let catalogue = op.path.starts_with("/products");
        let mut runner = TestRunner::new(Config {
            cases: if catalogue { cases } else { 24 },
            failure_persistence: None,
            ..Config::default()
        });
        let (served_count, refused_count) = (Cell::new(0), Cell::new(0));
        let outcome = runner.run(&strategy, |request| {
            let answer = contract.send(&request);
            let said = || {
                format!(
                    "{} {} {:?} {:?} -> {} {}",
                    request.method,
                    request.target,
                    request.headers,
                    request.body.as_ref().map(Value::to_string),
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                )
            };
            if let Err(problem) = contract.spec.check(&op, &answer) {
                return Err(TestCaseError::fail(format!("{problem}: {}", said())));
            }
            prop_assert!(answer.status < 500, "a server error: {}", said());
            if catalogue {
                let preconditions = request
                    .headers
                    .iter()
                    .any(|(name, _)| name.starts_with("If-"));
                let served = (200..300).contains(&answer.status)
                    || answer.status == 304
                    || (answer.status == 404 && op.path.contains("{id}"))
                    || (answer.status == 412 && preconditions);
                if request.valid {
                    prop_assert!(served, "valid per the schemas, not served: {}", said());
                } else {
                    prop_assert_eq!(answer.status, 422, "invalid per the schemas: {}", said());
                }
                let count = if request.valid {
                    &served_count
                } else {
                    &refused_count
                };
                count.set(count.get() + 1);
            }
            Ok(())
        });
        if let Err(failure) = outcome {
            panic!("{} {}: {failure}", op.method, op.path);
        }
        if catalogue && !matches!(op.method.as_str(), "DELETE" | "HEAD") {
            // Not vacuous: the generator reached both sides of the schemas' rules.
            let (valid, invalid) = (served_count.get(), refused_count.get());
            let least = cases / 30;
            assert!(
                valid >= least && invalid >= least,
                "{} {}: {valid} valid, {invalid} invalid",
                op.method,
                op.path
            );
        }
    }
}

/// The links a create declares lead where they say: each named operation, with the id
/// from the created product's body, answers as the description declares, and the product
/// reads carry the `ETag` a write announced, with `304` for a current copy.
#[test]
fn the_links_of_a_create_lead_where_they_say() {
    let contract = Contract::start(&[]);
    let spec = &contract.spec;
    let create = spec.operation("create_product");
    let body = json!({ "name": "Linked lamp", "price": 12.34, "category": "lighting" });
    let created = contract.send(&Request {
        method: Method::POST,
        target: create.path.clone(),
        headers: Vec::new(),
        body: Some(body),
        valid: true,
    });
    assert_eq!(created.status, 201);
    spec.check(&create, &created).expect("a declared 201");
    let product: Value = serde_json::from_slice(&created.body).expect("JSON");
    let created_tag = created.headers["etag"].to_str().expect("tag").to_owned();
    let links = create.doc["responses"]["201"]["links"]
        .as_object()
        .expect("links")
        .clone();
    let order = [
        "GetProduct",
        "PatchProduct",
        "ReplaceProduct",
        "DeleteProduct",
    ];
    assert_eq!(links.len(), order.len(), "{links:?}");
    let mut tag = created_tag;
    for name in order {
        let link = &links[name];
        let op = spec.operation(link["operationId"].as_str().expect("operation"));
        let pointer = link["parameters"]["id"].as_str().expect("id expression");
        let id = product
            .pointer(
                pointer
                    .strip_prefix("$response.body#")
                    .expect("body pointer"),
            )
            .expect("id in the body");
        let target = op.path.replace("{id}", &id.to_string());
        let body = match op.id.as_str() {
            "patch_product" => Some(json!({ "stock": 3 })),
            "replace_product" => Some(json!({ "name": "Lamp", "price": 1, "category": "x" })),
            _ => None,
        };
        // Writes as a careful client makes them: only over the state it has seen.
        let headers = match op.id.as_str() {
            "get_product" => Vec::new(),
            _ => vec![("if-match".to_owned(), tag.clone())],
        };
        let request = Request {
            method: Method::from_bytes(op.method.as_bytes()).expect("method"),
            target: target.clone(),
            headers,
            body,
            valid: true,
        };
        let answer = contract.send(&request);
        spec.check(&op, &answer).expect("declared");
        assert!(
            (200..300).contains(&answer.status),
            "{name}: {}",
            answer.status
        );
        if op.id == "get_product" {
            assert_eq!(answer.headers["etag"], tag.as_str(), "the create's tag");
            let current = contract.send(&Request {
                headers: vec![("if-none-match".to_owned(), tag.clone())],
                ..request
            });
            assert_eq!(current.status, 304);
            spec.check(&op, &current).expect("a declared 304");
        } else if let Some(written) = answer.headers.get("etag") {
            let written = written.to_str().expect("tag").to_owned();
            assert_ne!(written, tag, "{name} changed the product, and its tag");
            // The same write over the state before it: refused, nothing written.
            let stale = contract.send(&request.clone());
            assert_eq!(stale.status, 412, "{name} over a stale tag");
            spec.check(&op, &stale).expect("a declared 412");
            let read = contract.send(&Request {
                method: Method::GET,
                target: target.clone(),
                headers: Vec::new(),
                body: None,
                valid: true,
            });
            assert_eq!(
                read.headers["etag"],
                written.as_str(),
                "a read after {name}"
            );
            tag = written;
        }
    }
    let gone = contract.send(&Request {
        method: Method::GET,
        target: format!("/products/{}", product["id"]),
        headers: Vec::new(),
        body: None,
        valid: true,
    });
    assert_eq!(gone.status, 404);
}

/// Every example the description gives is valid against the schema it illustrates.
#[test]
fn the_description_s_examples_are_valid() {
    let contract = Contract::start(&[]);
    let spec = &contract.spec;
    let mut checked = 0;
    let mut problems = Vec::new();
    let mut visit = |location: &str, schema: &Value, example: &Value| {
        checked += 1;
        if !spec.valid(schema, example) {
            problems.push(format!("{location}: {example}"));
        }
    };
    for (name, schema) in spec.doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
    {
        walk_examples(&format!("schemas/{name}"), schema, &mut visit);
    }
    for op in spec.operations() {
        for (status, response) in op.doc["responses"].as_object().expect("responses") {
            let response = spec.resolve(response);
            for (media, content) in response["content"].as_object().into_iter().flatten() {
                if let (Some(schema), Some(example)) =
                    (content.get("schema"), content.get("example"))
                {
                    visit(&format!("{} {status} {media}", op.id), schema, example);
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(checked >= 10, "only {checked} examples");
    // Every JSON body with a schema, sent or answered, has one.
    let mut missing = Vec::new();
    for op in spec.operations() {
        let mut bodies: Vec<(String, &Value)> = Vec::new();
        if let Some(body) = op.doc.get("requestBody") {
            bodies.push(("request".to_owned(), spec.resolve(body)));
        }
        for (status, response) in op.doc["responses"].as_object().expect("responses") {
            bodies.push((status.clone(), spec.resolve(response)));
        }
        for (what, body) in bodies {
            let Some(media) = body.pointer("/content/application~1json") else {
                continue;
            };
            let shown = media.get("example").is_some()
                || media
                    .get("schema")
                    .is_none_or(|schema| has_example(spec, schema));
            if !shown {
                missing.push(format!("{} {what}", op.id));
            }
        }
    }
    assert!(missing.is_empty(), "bodies without an example: {missing:?}");
}

/// Whether `schema`, or the object schema it is made of, gives an example.
fn has_example(spec: &Spec, schema: &Value) -> bool {
    let schema = spec.resolve(schema);
    schema.get("examples").is_some()
        || schema.get("example").is_some()
        || schema["allOf"]
            .as_array()
            .is_some_and(|all| all.iter().any(|part| has_example(spec, part)))
}

/// Calls `visit` for every schema with examples, within `schema`.
fn walk_examples(location: &str, schema: &Value, visit: &mut impl FnMut(&str, &Value, &Value)) {
    let Value::Object(map) = schema else { return };
    for example in map
        .get("examples")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut bare = map.clone();
        bare.remove("examples");
        visit(location, &Value::Object(bare), example);
    }
    for (key, child) in map {
        match child {
            Value::Object(_) => walk_examples(&format!("{location}/{key}"), child, visit),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk_examples(&format!("{location}/{key}/{i}"), item, visit);
                }
            }
            _ => {}
        }
    }
}

/// The answers no operation lists are the reusable ones the description declares: `404`
/// for a path it does not list, `405` with `Allow` for a method, `414` and `431` from the
/// listener.
#[test]
fn answers_outside_the_operations_are_the_declared_ones() {
    let contract = Contract::start(&[]);
    let spec = &contract.spec;
    let component = |name: &str| spec.doc["components"]["responses"][name].clone();
    let request = |method: Method, target: String, headers: Vec<(String, String)>| Request {
        method,
        target,
        headers,
        body: None,
        valid: false,
    };
    let cases = [
        (
            "RouteNotFound",
            404,
            request(Method::GET, "/nothing/here".into(), vec![]),
        ),
        (
            "RouteNotFound",
            404,
            request(Method::GET, "/products/".into(), vec![]),
        ),
        (
            "MethodNotAllowed",
            405,
            request(Method::DELETE, "/products".into(), vec![]),
        ),
        (
            "MethodNotAllowed",
            405,
            request(Method::POST, "/products/7".into(), vec![]),
        ),
        (
            "UriTooLong",
            414,
            request(
                Method::GET,
                format!("/products?category={}", "a".repeat(20_000)),
                vec![],
            ),
        ),
        (
            "HeadersTooLarge",
            431,
            request(
                Method::GET,
                "/products".into(),
                vec![("x-big".into(), "b".repeat(40_000))],
            ),
        ),
    ];
    for (name, status, request) in cases {
        let answer = contract.send(&request);
        assert_eq!(answer.status, status, "{name}: {}", request.target.len());
        spec.check_response(&component(name), &answer)
            .unwrap_or_else(|problem| panic!("{name}: {problem}"));
    }
    let allow = contract.send(&request(Method::DELETE, "/products".into(), vec![]));
    let allow = allow.headers["allow"].to_str().expect("Allow").to_owned();
    for method in ["GET", "POST"] {
        assert!(allow.contains(method), "{allow}");
    }
}

/// `/admin/invalidate` is described exactly where it exists: with an admin token, and not
/// without (where the router answers `404`).
#[test]
fn the_admin_route_is_described_only_where_it_exists() {
    let without = Contract::start(&[]);
    assert!(without.spec.doc["paths"].get("/admin/invalidate").is_none());
    let tags = without.spec.doc["tags"].to_string();
    assert!(!tags.contains("admin"), "{tags}");
    let answer = without.send(&Request {
        method: Method::POST,
        target: "/admin/invalidate".into(),
        headers: vec![("authorization".into(), format!("Bearer {TOKEN}"))],
        body: Some(json!({ "tags": ["products"] })),
        valid: true,
    });
    assert_eq!(answer.status, 404);
    let with = Contract::start(&["--admin-token", TOKEN]);
    let route = &with.spec.doc["paths"]["/admin/invalidate"]["post"];
    assert!(route.is_object(), "described with a token");
}
