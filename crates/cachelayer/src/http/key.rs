//! Cache keys of HTTP requests: the layer's scope (when it has one), the normalized host,
//! the path in its normal form (`path`) and the normalized query. The method is not part of
//! it (HEAD is answered from GET's entry), and neither are request headers: `Vary` is
//! checked against the stored request values instead.
//!
//! The scope keeps apart layers that share a store but not an origin (two proxies in front
//! of different upstreams, a proxy and `serve`): the same host and path behind each is a
//! different resource.
//!
//! The host comes from the request and is attacker-controlled, so it is checked against the
//! configured allow-list before it can become part of a key; the path and query are hashed
//! into one key part, so nothing in a URL can forge another key's structure.

use http::request::Parts;
use http::{HeaderMap, Uri};

use super::path::normalize_path;
use crate::key::Key;

/// How requests map to keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRules {
    /// Hosts served from the cache (lowercase, without port). Empty: any host, each with
    /// its own entries.
    pub allowed_hosts: Vec<String>,
    /// Sort query parameters, so `?a=1&b=2` and `?b=2&a=1` share an entry.
    pub sort_query: bool,
    /// Query parameters left out of the key: exact names, or prefixes ending in `*`
    /// (`utm_*`).
    pub ignored_query_params: Vec<String>,
    /// The key space of the layer: layers with different scopes never share entries, even
    /// on one store and for one host and path. `None`: the unscoped key space (keys as they
    /// were before scopes existed).
    pub scope: Option<String>,
}

/// Why a request is not cached at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRefused {
    /// Its host is not on the allow-list (a forged `Host` cannot poison the cache).
    NotAllowed,
}

/// The request's host, lowercase, without a default port; from `Host`, else the URI.
pub fn normalized_host(parts: &Parts) -> String {
    request_host(&parts.headers, &parts.uri)
}

/// [`normalized_host`] of a request known by its headers and target.
pub fn request_host(headers: &HeaderMap, uri: &Uri) -> String {
    let raw = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    normalize_host(&raw)
}

/// Whether a normalized `host` passes an allow-list of host names (an empty list allows
/// every host). Ports are not compared.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    allowed.is_empty() || allowed.iter().any(|name| name == host_without_port(host))
}

/// Whether `raw` is already as [`normalize_host`] would make it (the usual case, checked
/// without allocating).
pub(crate) fn host_is_normal(raw: &str) -> bool {
    !raw.is_empty()
        && !raw
            .bytes()
            .any(|b| b.is_ascii_uppercase() || b.is_ascii_whitespace())
        && !raw.ends_with('.')
        && !raw.ends_with(":80")
        && !raw.ends_with(":443")
}

/// A `Host` value as keys hold it: trimmed, lowercase, without a trailing dot or a default
/// port (80, 443). For hosts named elsewhere than in a request, such as purges.
pub fn normalize_host(raw: &str) -> String {
    let lower = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    match lower
        .strip_suffix(":80")
        .or_else(|| lower.strip_suffix(":443"))
    {
        Some(bare) => bare.to_owned(),
        None => lower,
    }
}

/// A normalized host without its port (and an IPv6 literal without brackets): what
/// allow-lists compare.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: "[::1]:8080".
        return host
            .split_once(']')
            .map_or(host, |(ip, _)| ip)
            .trim_start_matches('[');
    }
    host.split_once(':').map_or(host, |(name, _)| name)
}

/// The primary key of a request, or why it must not be cached.
pub fn primary_key(parts: &Parts, rules: &KeyRules) -> Result<Key, HostRefused> {
    let host = normalized_host(parts);
    if !host_allowed(&host, &rules.allowed_hosts) {
        return Err(HostRefused::NotAllowed);
    }
    Ok(url_key(&host, parts.uri.path(), parts.uri.query(), rules))
}

/// The key of a URL, as [`primary_key`] computes it for a request to it (for purging and
/// invalidation): any spelling of the path gives the key of its normal form.
pub fn url_key(host: &str, path: &str, query: Option<&str>, rules: &KeyRules) -> Key {
    let mut target = normalize_path(path).into_owned();
    if let Some(query) = normalized_query(query, rules) {
        target.push('?');
        target.push_str(&query);
    }
    let base = match &rules.scope {
        // A first part of its own: no unscoped key, whatever its host and extra parts, can
        // be spelled like a scoped one.
        Some(scope) => Key::new("http-scoped").part(scope),
        None => Key::new("http"),
    };
    base.part(host).hashed_part(target)
}

fn normalized_query(query: Option<&str>, rules: &KeyRules) -> Option<String> {
    let query = query?;
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
            !rules
                .ignored_query_params
                .iter()
                .any(|ignored| match ignored.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == ignored,
                })
        })
        .collect();
    if rules.sort_query {
        // By name only, and stable: `?id=1&id=2` and `?id=2&id=1` may mean different things.
        let name = |pair: &str| {
            pair.split_once('=')
                .map_or(pair, |(name, _)| name)
                .to_owned()
        };
        pairs.sort_by_key(|pair| name(pair));
    }
    (!pairs.is_empty()).then(|| pairs.join("&"))
}

/// The values a request has for the header names a response's `Vary` lists (names
/// lowercase; several fields of one name joined with ", "), or `None` for `Vary: *`.
pub fn vary_values(vary: &HeaderMap, request: &HeaderMap) -> Option<Vec<(String, Option<String>)>> {
    let mut names = Vec::new();
    for field in vary.get_all(http::header::VARY) {
        let Ok(field) = field.to_str() else { continue };
        for name in field.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            names.push(name.to_ascii_lowercase());
        }
    }
    // The headers a proxy uses to pass on the original host and scheme are an implicit
    // `Vary` when present: an application may build links from them, so a forged value must
    // get its own entry.
    for name in FORWARDED {
        if request.contains_key(name) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    names.dedup();
    Some(request_values(&names, request))
}

/// Forwarding headers, treated as an implicit `Vary` when a request carries them.
const FORWARDED: [&str; 3] = ["forwarded", "x-forwarded-host", "x-forwarded-proto"];

/// A request's values of `names`: `None` when absent (RFC 9111 section 4.1: absent matches
/// only absent), else every field of the name joined by ", " in its normal form
/// (`selecting`), escaped losslessly (bytes outside visible ASCII, and `%`, as `%XX`), so
/// different values never look alike.
pub fn request_values(names: &[String], request: &HeaderMap) -> Vec<(String, Option<String>)> {
    names
        .iter()
        .map(|name| {
            let fields: Vec<&[u8]> = request
                .get_all(name.as_str())
                .iter()
                .map(http::HeaderValue::as_bytes)
                .collect();
            let value = (!fields.is_empty()).then(|| {
                let joined = fields.join(&b", "[..]);
                match std::str::from_utf8(&joined) {
                    Ok(text) => escape(super::selecting::normalize(name, text).as_bytes()),
                    Err(_) => escape(&joined),
                }
            });
            (name.clone(), value)
        })
        .collect()
}

fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    /// The allocation-free check agrees with the normalization it stands for.
    #[test]
    fn host_is_normal_exactly_when_normalizing_changes_nothing() {
        for host in [
            "a.example",
            "A.example",
            "a.example.",
            "a.example:80",
            "a.example:8080",
            "a.example:443",
            "[::1]:8080",
            " a.example",
            "",
            "a.example:4430",
        ] {
            assert_eq!(
                host_is_normal(host),
                normalize_host(host) == host && !host.is_empty(),
                "{host:?}"
            );
        }
    }

    fn parts(uri: &str, host: &str) -> Parts {
        Request::get(uri)
            .header("host", host)
            .body(())
            .expect("request")
            .into_parts()
            .0
    }

    /// Hosts are case-insensitive and default ports do not matter; the allow-list refuses
    /// any other host.
    #[test]
    fn hosts_are_normalized_and_checked() {
        let rules = KeyRules {
            allowed_hosts: vec!["shop.example".into()],
            ..KeyRules::default()
        };
        let a = primary_key(&parts("/p", "Shop.Example:80"), &rules).expect("allowed");
        let b = primary_key(&parts("/p", "shop.example"), &rules).expect("allowed");
        assert_eq!(a, b);
        assert!(primary_key(&parts("/p", "shop.example:8080"), &rules).is_ok());
        assert_eq!(
            primary_key(&parts("/p", "evil.example"), &rules),
            Err(HostRefused::NotAllowed)
        );
        let open = KeyRules::default();
        assert_ne!(
            primary_key(&parts("/p", "a.example"), &open).expect("key"),
            primary_key(&parts("/p", "b.example"), &open).expect("key")
        );
    }

    /// Sorted parameters and ignored ones (exact or by prefix) give one key; paths differ.
    #[test]
    fn queries_are_normalized() {
        let rules = KeyRules {
            sort_query: true,
            ignored_query_params: vec!["utm_*".into(), "fbclid".into()],
            ..KeyRules::default()
        };
        let key = |uri| primary_key(&parts(uri, "h"), &rules).expect("key");
        assert_eq!(key("/p?b=2&a=1"), key("/p?a=1&b=2&utm_source=x&fbclid=y"));
        assert_eq!(key("/p?utm_medium=z"), key("/p"));
        assert_ne!(key("/p?a=1"), key("/p?a=2"));
        assert_ne!(
            key("/p?id=1&id=2"),
            key("/p?id=2&id=1"),
            "repeated names keep their order"
        );

        assert_ne!(key("/p"), key("/q"));
        // A key never shows the raw path, so `/p:x` cannot forge a key's structure.
        assert!(key("/p:x").as_str().starts_with("http:h:#"));
    }

    /// Spellings of one path are one key; a scope makes another key space, which no
    /// unscoped key can reach.
    #[test]
    fn paths_are_normalized_and_scopes_kept_apart() {
        let rules = KeyRules::default();
        let key = |uri, rules: &KeyRules| primary_key(&parts(uri, "h"), rules).expect("key");
        assert_eq!(key("/%62/n2", &rules), key("/b/n2", &rules));
        assert_eq!(key("/a//b/./c/../d", &rules), key("/a/b/d", &rules));
        assert_ne!(key("/a%2Fb", &rules), key("/a/b", &rules));
        let scoped = |scope: &str| KeyRules {
            scope: Some(scope.to_owned()),
            ..KeyRules::default()
        };
        let a = key("/p", &scoped("http://a.internal:80"));
        assert_ne!(a, key("/p", &scoped("http://b.internal:80")));
        assert_eq!(a, key("/p", &scoped("http://a.internal:80")));
        assert_ne!(a, key("/p", &rules));
        assert!(a.as_str().starts_with("http-scoped:#"), "{}", a.as_str());
        assert_eq!(
            key("/p", &scoped("serve"))
                .as_str()
                .split(':')
                .take(3)
                .collect::<Vec<_>>(),
            ["http-scoped", "serve", "h"]
        );
    }

    /// Vary values are read per listed header, and `*` never matches.
    #[test]
    fn vary_values_per_header() {
        let mut vary = HeaderMap::new();
        vary.append(
            "vary",
            "Accept-Language, accept-encoding".parse().expect("v"),
        );
        let mut request = HeaderMap::new();
        request.append("accept-language", "fr".parse().expect("v"));
        request.append("x-forwarded-host", "evil.example".parse().expect("v"));
        assert_eq!(
            vary_values(&vary, &request),
            Some(vec![
                ("accept-encoding".into(), None),
                ("accept-language".into(), Some("fr".into())),
                ("x-forwarded-host".into(), Some("evil.example".into())),
            ])
        );
        // Empty is not absent, and bytes outside ASCII are kept apart.
        let names = vec!["x-region".to_owned()];
        let mut empty = HeaderMap::new();
        empty.append("x-region", "".parse().expect("v"));
        let mut umlaut = HeaderMap::new();
        umlaut.append(
            "x-region",
            http::HeaderValue::from_bytes("Österreich".as_bytes()).expect("v"),
        );
        assert_eq!(
            request_values(&names, &empty),
            vec![("x-region".into(), Some(String::new()))]
        );
        assert_eq!(
            request_values(&names, &HeaderMap::new()),
            vec![("x-region".into(), None)]
        );
        assert_eq!(
            request_values(&names, &umlaut),
            vec![("x-region".into(), Some("%C3%96sterreich".into()))]
        );
        vary.append("vary", "*".parse().expect("v"));
        assert_eq!(vary_values(&vary, &request), None);
    }
}
