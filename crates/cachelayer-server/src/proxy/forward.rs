//! Forwarding to the upstream: one request in, the upstream's response out, bodies streamed
//! both ways over a pool of keep-alive connections (hyper's client).
//!
//! As RFC 9110 section 7.6.1 asks of a proxy, hop-by-hop fields (the library's one list,
//! [`cachelayer::http::headers::HOP_BY_HOP`], and the fields `Connection` names) are
//! dropped in both directions, and `Via` is added; the client's address goes upstream in
//! `X-Forwarded-For`. Upstream failures become short JSON answers: 502 when it cannot be
//! reached, 504 when it does not answer in time. This module must never buffer a body.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Request, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use cachelayer::http::headers::strip_hop_by_hop;
use cachelayer::http::status::X_CACHE;

use super::config::HostMode;

/// The `Via` entry this proxy adds (RFC 9110 section 7.6.3).
const VIA: &str = "1.1 cachelayer";
/// Idle upstream connections kept per host.
const POOL_IDLE_PER_HOST: usize = 256;
/// How long an idle upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends requests to one upstream. Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub(crate) struct Forwarder {
    client: Client<HttpConnector, Body>,
    upstream: Uri,
    host_mode: HostMode,
    timeout: Duration,
}

impl Forwarder {
    pub(crate) fn new(
        upstream: Uri,
        host_mode: HostMode,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .build(connector);
        Self {
            client,
            upstream,
            host_mode,
            timeout,
        }
    }

    /// The upstream's `host:port`, with the scheme's default port when the URL gives none.
    pub(crate) fn connect_address(&self) -> String {
        let host = self.upstream.host().unwrap_or_default();
        let port = self.upstream.port_u16().unwrap_or(80);
        if host.contains(':') {
            format!("[{}]:{port}", host.trim_matches(|c| c == '[' || c == ']'))
        } else {
            format!("{host}:{port}")
        }
    }

    /// The upstream's authority as its URL gives it (the `Host` of rewrite mode).
    pub(crate) fn authority(&self) -> String {
        self.upstream
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default()
    }

    /// Forward one request; never fails (upstream trouble is a 502 or 504 answer).
    pub(crate) async fn forward(&self, request: Request<Body>) -> Response<Body> {
        let client_ip = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        let (mut parts, body) = request.into_parts();
        // HTTP/2 clients send no Host field (only :authority); HTTP/1.1 upstreams need one.
        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = match self.upstream_uri(&path) {
            Some(uri) => uri,
            None => {
                return gateway_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request target cannot be forwarded",
                );
            }
        };
        // The upstream connection is HTTP/1.1 whatever the client spoke.
        parts.version = axum::http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        self.set_host(&mut parts.headers, client_host);
        append_forwarded_for(&mut parts.headers, client_ip);
        // Kept when a TLS terminator in front of this proxy set it; this listener is plain.
        parts
            .headers
            .entry(HeaderName::from_static("x-forwarded-proto"))
            .or_insert(HeaderValue::from_static("http"));
        append_via(&mut parts.headers);
        let request = Request::from_parts(parts, body);
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                // The client's connection keeps its own version (an HTTP/1.0 upstream must
                // not turn it into a close-after-each-response connection).
                parts.version = axum::http::Version::HTTP_11;
                strip_hop_by_hop(&mut parts.headers);
                // An upstream cache's own label (Varnish, a CDN) would be taken for this
                // proxy's; its `Cache-Status` entries stay (RFC 9211 lists every cache).
                parts.headers.remove(X_CACHE);
                append_via(&mut parts.headers);
                Response::from_parts(parts, Body::new(body))
            }
            Ok(Err(err)) if err.is_connect() => {
                tracing::warn!(error = %err, upstream = %self.upstream, "upstream unreachable");
                gateway_error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    "the upstream cannot be reached",
                )
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, upstream = %self.upstream, "upstream request failed");
                gateway_error(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the upstream's answer could not be read",
                )
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, upstream = %self.upstream, "upstream timed out");
                gateway_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the upstream did not answer in time",
                )
            }
        }
    }

    fn upstream_uri(&self, path_and_query: &str) -> Option<Uri> {
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse().ok()?);
        Uri::from_parts(parts).ok()
    }

    fn set_host(&self, headers: &mut HeaderMap, client_host: Option<HeaderValue>) {
        match self.host_mode {
            HostMode::Forward => {
                if let Some(host) = client_host {
                    headers.insert(header::HOST, host);
                }
            }
            HostMode::Rewrite => {
                if let Some(host) = client_host {
                    headers.insert(HeaderName::from_static("x-forwarded-host"), host);
                }
                if let Ok(upstream) = HeaderValue::from_str(&self.authority()) {
                    headers.insert(header::HOST, upstream);
                }
            }
        }
    }
}

fn append_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, HeaderValue::from_static(VIA));
}

fn append_forwarded_for(headers: &mut HeaderMap, client: Option<std::net::IpAddr>) {
    let Some(client) = client else { return };
    let name = HeaderName::from_static("x-forwarded-for");
    let value = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client}"),
        None => client.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name, value);
    }
}

fn gateway_error(status: StatusCode, error: &'static str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": error, "message": message });
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_to_what_came_before() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, Some([10, 0, 0, 1].into()));
        append_forwarded_for(&mut headers, Some([10, 0, 0, 2].into()));
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
    }
}
