//! Hop-by-hop header fields (RFC 9110 section 7.6.1): the one list, and the one way to drop
//! them from a message, for what a cache stores, what a proxy forwards, and the request the
//! cache layer judges (so it judges the request its origin receives).
//!
//! This module must never drop an end-to-end field: only the fixed list and the names the
//! message's own `Connection` field lists, never `Host` (a request's target, which HTTP/2
//! carries as `:authority` where no option can remove it).

use http::HeaderMap;
use http::header::HeaderName;

/// Fields meaningful for one connection only, never stored nor forwarded: those RFC 9110
/// section 7.6.1 names (`Connection`, `Proxy-Connection`, `Keep-Alive`, `TE`,
/// `Transfer-Encoding`, `Upgrade`), and those earlier HTTP/1.1 listed and that still concern
/// one hop only (`Trailer`, `Proxy-Authenticate`, `Proxy-Authorization`).
pub const HOP_BY_HOP: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
];

/// Whether `name` is on the fixed hop-by-hop list.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// The field names a message's `Connection` field lists (lowercase; unparsable ones and
/// `Host` skipped).
fn listed_in_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| name != http::header::HOST)
        .collect()
}

/// Drops the hop-by-hop fields: the fixed list and any the `Connection` field names. The
/// other fields keep their order.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = listed_in_connection(headers);
    let hop_by_hop = |name: &HeaderName| is_hop_by_hop(name) || listed.contains(name);
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        if !hop_by_hop(name) {
            kept.append(name.clone(), value.clone());
        }
    }
    *headers = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed fields and the ones `Connection` names go; the rest stay, in order.
    #[test]
    fn strips_fixed_and_connection_listed_fields() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "text/plain"),
            ("connection", "close, X-Hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic eA=="),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("etag", "\"1\""),
        ] {
            headers.append(
                HeaderName::from_static(name),
                value.parse().expect("a valid value"),
            );
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().expect("text")))
            .collect();
        assert_eq!(
            left,
            [
                ("content-type", "text/plain"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("etag", "\"1\""),
            ]
        );
    }

    /// `Connection` cannot take a request's `Host` away.
    #[test]
    fn host_stays_whatever_connection_says() {
        let mut headers = HeaderMap::new();
        headers.append("connection", "Host, x-lang".parse().expect("v"));
        headers.append("host", "shop.example".parse().expect("v"));
        headers.append("x-lang", "fr".parse().expect("v"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["host"], "shop.example");
    }

    /// Nothing to strip leaves the map as it was.
    #[test]
    fn end_to_end_fields_stay() {
        let mut headers = HeaderMap::new();
        headers.append("cache-control", "max-age=60".parse().expect("v"));
        headers.append("age", "5".parse().expect("v"));
        let before = headers.clone();
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
    }
}
