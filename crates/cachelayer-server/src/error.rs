//! Errors: the crate's [`Error`] (start-up and configuration failures, which end the process
//! with a message naming what to fix), and `ApiError`, every error answer either command
//! gives of its own, as JSON (with `FieldError`, one rejected field of a request).
//!
//! An `ApiError` is what a client sees; it must never carry internal details (SQL, Redis
//! addresses) beyond a short reason. Those go to the log.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A setting is invalid; the message names it.
    Config,
    /// The database could not be opened or migrated.
    Database,
    /// Binding the listener or another operating-system call failed.
    Io,
}

/// A failure that stops the server from starting or running.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// An invalid setting: `setting` is its flag (and environment variable), `problem`
    /// says what is wrong and what is accepted.
    pub(crate) fn config(setting: &str, problem: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Config,
            message: format!("invalid {setting}: {}", problem.into()),
            source: None,
        }
    }

    pub(crate) fn database(
        doing: &str,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind: ErrorKind::Database,
            message: format!(
                "database error while {doing}: {err}; check --database-url (DATABASE_URL) and that the database is reachable"
            ),
            source: Some(Box::new(err)),
        }
    }

    pub(crate) fn io(doing: &str, err: std::io::Error) -> Self {
        Self {
            kind: ErrorKind::Io,
            message: format!("{doing}: {err}"),
            source: Some(Box::new(err)),
        }
    }
}

/// One rejected field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct FieldError {
    /// The field's name (`body` for the request body as a whole).
    pub field: String,
    /// What is wrong with it and what is accepted.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "error": "validation_failed",
    "message": "the request has invalid fields: price",
    "fields": [{ "field": "price", "message": "must have at most two decimals" }]
}))]
pub(crate) struct ErrorBody {
    /// A stable, machine-readable code (`not_found`, `validation_failed`, ...).
    pub error: &'static str,
    /// A sentence for humans.
    pub message: String,
    /// For `validation_failed`: each bad field and what is wrong with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

/// An error answer: a status and a JSON [`ErrorBody`].
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error,
                message: message.into(),
                fields: Vec::new(),
            },
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn validation(fields: Vec<FieldError>) -> Self {
        let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        let mut err = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("the request has invalid fields: {}", names.join(", ")),
        );
        err.body.fields = fields;
        err
    }

    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    pub(crate) fn unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} is unavailable; try again shortly"),
        )
    }

    /// A write whose `If-Match` / `If-None-Match` does not hold (RFC 9110 section 13.1).
    pub(crate) fn precondition_failed() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the product is not in the state If-Match / If-None-Match names (it changed, or does not exist); read it again",
        )
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the admin token as `Authorization: Bearer <token>`",
        )
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method; see /openapi.json",
        )
    }

    /// A request HTTP refuses before any route sees it (RFC 9112 section 3.2: an HTTP/1.1
    /// request needs exactly one valid `Host`).
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn uri_too_long(limit: usize) -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is longer than the limit of {limit} bytes"),
        )
    }

    pub(crate) fn headers_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request's header fields are larger than the limit of {limit} bytes"),
        )
    }

    /// The answer for a status that hyper gives on its own, before any service runs (a
    /// request head it cannot parse or hold): the same JSON as every other error.
    pub(crate) fn from_protocol_status(status: StatusCode) -> Self {
        let (error, message) = match status {
            StatusCode::URI_TOO_LONG => ("uri_too_long", "the request target is too long"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
                "headers_too_large",
                "the request's header fields are too large",
            ),
            _ => ("bad_request", "the request could not be parsed as HTTP"),
        };
        Self::new(status, error, message)
    }

    /// The JSON text of the body.
    pub(crate) fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).unwrap_or_else(|_| b"{}".to_vec())
    }

    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to answer this request; it has been logged",
        )
    }

    /// The HTTP status of this answer.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

/// A request body read within `limit` bytes, or the error answer saying why it was not:
/// 413 past the limit, 422 naming the body otherwise.
pub(crate) fn body_within(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::field("body", format!("could not be read: {rejection}"))
        }
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
