//! `GET /openapi.json` of `cachelayer serve`: the API described by the handlers' own
//! annotations (utoipa), so the description cannot drift from the routes, completed here
//! with what annotations cannot say: the closed write bodies (built from the checks' own
//! rules, in `schema`), the links from a create to what may follow, the answers every route
//! may get from the listener or the router, which response headers are always sent, and
//! the admin route only where it exists. A contract test generates requests from this
//! document and checks every answer against it.
//!
//! This module must never describe a route by hand that a handler annotation could
//! describe.

use axum::Json;
use axum::extract::State;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema};

use super::state::AppState;
use crate::error::ErrorBody;

/// The OpenAPI document of `cachelayer serve`, with every route (the admin one included).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cachelayer product catalogue",
        description = "A product catalogue API cached end to end by cachelayer.\n\n\
            Reads say where they were answered from in `X-Cache` (HIT, MISS, STALE, BYPASS) and \
            `Cache-Status` (RFC 9211), and carry a strong `ETag`; a GET with a matching \
            `If-None-Match` gets `304`. Every error is a JSON `ErrorBody`; `422` names each bad \
            field. A path not listed here answers `404` (`#/components/responses/RouteNotFound`), \
            a method not listed for a path `405` with `Allow` \
            (`#/components/responses/MethodNotAllowed`). Any request may get `400`, `414` or \
            `431` from the listener before a route sees it."
    ),
    paths(
        super::api::get_product,
        super::api::list_products,
        super::api::create_product,
        super::api::replace_product,
        super::api::patch_product,
        super::api::delete_product,
        super::health::health,
        crate::health::live,
        crate::health::ready,
        crate::admin::invalidate,
        metrics,
        openapi,
    ),
    // Header schemas, which the path annotations refer to but do not collect.
    components(schemas(super::api::XCache)),
    modifiers(
        &AdminToken,
        &WriteBodies,
        &CreateLinks,
        &ListenerAnswers,
        &HeadLikeGet,
        &RequiredHeaders,
    ),
    tags(
        (name = "products", description = "The catalogue"),
        (name = "health", description = "Health checks"),
        (name = "admin", description = "Operator routes; present only with an admin token configured"),
        (name = "operations", description = "Metrics and this description"),
    )
)]
pub struct ApiDoc;

/// The admin route's path, left out of the document when the route is off.
const ADMIN_PATH: &str = "/admin/invalidate";

impl ApiDoc {
    /// The document of an instance: without the admin route when it has no admin token,
    /// as the router has no such route then.
    pub(crate) fn for_instance(admin: bool) -> utoipa::openapi::OpenApi {
        let mut doc = Self::openapi();
        if !admin {
            doc.paths.paths.remove(ADMIN_PATH);
            if let Some(tags) = doc.tags.as_mut() {
                tags.retain(|tag| tag.name != "admin");
            }
            if let Some(components) = doc.components.as_mut() {
                components.security_schemes.remove("admin_token");
                for name in ["InvalidateRequest", "Invalidated"] {
                    components.schemas.remove(name);
                }
            }
        }
        doc
    }
}

/// Every operation of a path.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The create and replace body closed to unknown fields, the admin request closed and
/// naming something: rules the derive cannot state (the patch body states its own).
struct WriteBodies;

impl Modify for WriteBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .schemas
            .insert("ProductInput".to_owned(), super::schema::product_input());
        components.schemas.insert(
            "InvalidateRequest".to_owned(),
            crate::admin::invalidate_request(),
        );
    }
}

/// Links from a create's `201` to the operations on the new product, its id taken from the
/// answer's body, so stateful clients and tests can follow them.
struct CreateLinks;

impl Modify for CreateLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(created) = openapi
            .paths
            .paths
            .get_mut("/products")
            .and_then(|item| item.post.as_mut())
            .and_then(|create| create.responses.responses.get_mut("201"))
        else {
            return;
        };
        let RefOr::T(created) = created else {
            return;
        };
        for (name, operation, what) in [
            ("GetProduct", "get_product", "Read the new product"),
            ("ReplaceProduct", "replace_product", "Replace its fields"),
            ("PatchProduct", "patch_product", "Change some of its fields"),
            ("DeleteProduct", "delete_product", "Delete it"),
        ] {
            let link = LinkBuilder::new()
                .operation_id(operation)
                .parameter("id", "$response.body#/id")
                .description(what)
                .build();
            created.links.insert(name.to_owned(), link.into());
        }
    }
}

/// What any request may get before a route sees it (from the listener) or from a handler
/// that fails, and what the router answers for paths and methods it does not have, as
/// reusable responses; the first are on every operation.
struct ListenerAnswers;

impl ListenerAnswers {
    const ANSWERS: [(&'static str, &'static str, &'static str); 4] = [
        (
            "400",
            "BadRequest",
            "The request could not be parsed, or its `Host` is missing, repeated or invalid",
        ),
        (
            "414",
            "UriTooLong",
            "The request target is longer than the listener's limit",
        ),
        (
            "431",
            "HeadersTooLarge",
            "The request's header fields are larger than the listener's limit",
        ),
        (
            "500",
            "Internal",
            "A handler failed (a bug; it is logged): never a cache or database fault",
        ),
    ];
}

fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    )
}

impl Modify for ListenerAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .schemas
            .entry("ErrorBody".to_owned())
            .or_insert_with(ErrorBody::schema);
        for (_, name, description) in Self::ANSWERS {
            let response: Response = error_response(description).build();
            components
                .responses
                .insert(name.to_owned(), response.into());
        }
        components.responses.insert(
            "RouteNotFound".to_owned(),
            error_response("No such route (any path this document does not list)")
                .build()
                .into(),
        );
        let allow = HeaderBuilder::new()
            .schema(Some(String::schema()))
            .description(Some("The methods the path accepts"))
            .build();
        components.responses.insert(
            "MethodNotAllowed".to_owned(),
            error_response("The path does not accept the method (any method this document does not list for it)")
                .header("Allow", allow)
                .build()
                .into(),
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                for (status, name, _) in Self::ANSWERS {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| Ref::from_response_name(name).into());
                }
            }
        }
    }
}

/// `HEAD` wherever there is a `GET` (the router answers it from the `GET` route): the same
/// statuses and headers, no body.
struct HeadLikeGet;

impl Modify for HeadLikeGet {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let Some(get) = &item.get else { continue };
            let mut head = get.clone();
            head.operation_id = get.operation_id.as_ref().map(|id| format!("head_{id}"));
            head.summary = Some("The same answer as the GET, without its body.".to_owned());
            head.description = None;
            for response in head.responses.responses.values_mut() {
                if let RefOr::T(response) = response {
                    response.content.clear();
                    response.links.clear();
                }
            }
            item.head = Some(head);
        }
    }
}

/// A response header is always sent unless its schema allows `null` (declared as an
/// `Option`): said with `required: true`, which the derive cannot set.
struct RequiredHeaders;

impl Modify for RequiredHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let schemas = openapi
            .components
            .as_ref()
            .map(|components| components.schemas.clone())
            .unwrap_or_default();
        let responses = openapi
            .paths
            .paths
            .values_mut()
            .flat_map(operations)
            .flat_map(|operation| operation.responses.responses.values_mut());
        for response in responses {
            let RefOr::T(response) = response else {
                continue;
            };
            for header in response.headers.values_mut() {
                let RefOr::T(header) = header else {
                    continue;
                };
                let schema = match &header.schema {
                    // A named schema (an enum such as `XCache`): the one it names.
                    Some(RefOr::Ref(named)) => named
                        .ref_location
                        .rsplit('/')
                        .next()
                        .and_then(|name| schemas.get(name)),
                    other => other.as_ref(),
                };
                let always = match schema {
                    Some(RefOr::T(Schema::Object(object))) => {
                        matches!(&object.schema_type, SchemaType::Type(ty) if *ty != Type::Null)
                    }
                    _ => false,
                };
                if always {
                    header
                        .extensions
                        .get_or_insert_with(Default::default)
                        .insert("required".to_owned(), true.into());
                }
            }
        }
    }
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format, a `# HELP` line for every family", content_type = "text/plain")))]
#[allow(dead_code)] // Described here; served by `crate::metrics::metrics`.
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub(crate) async fn openapi(State(state): State<AppState>) -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::for_instance(state.admin_token.is_some()))
}
