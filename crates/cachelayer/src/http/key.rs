//! Cache keys of HTTP requests: the layer's scope (when it has one), the normalized host,
//! the path in its normal form (`path`) and the normalized query. The method is not part of
//! it (HEAD is answered from GET's entry), and neither are request headers: `Vary` is
//! checked against the stored request values instead.
//!
//! The query is keyed parameter by parameter, each name and value with its escapes in RFC
//! 3986's normal form (`escapes`: `?l%69mit=%35` is `?limit=5`), so a client cannot split
//! or dodge an entry by spelling; then ignored parameters are dropped and the rest sorted,
//! by their names' normal form. Keys must never join queries an origin following RFC 3986
//! can tell apart: `+` is not `%20`, `%26` and `%3D` are no separators, and a name or value
//! with a `%` that starts no escape is keyed as sent (the origin receives the query as
//! sent, and origins differ on such a `%`).
//!
//! The host's port is part of the key ([`HostPort::Kept`], the default: `localhost:8080`
//! and `localhost` are different entries) unless the rules ignore ports. A default port
//! (80 or 443, in any spelling: `:080`, or an empty `:`) is dropped whatever the scheme, as
//! a `Host` field does not say the scheme: `http://localhost:80/x`, `localhost:443` and
//! `localhost` are one host, for requests and purges alike.
//!
//! The scope keeps apart layers that share a store but not an origin (two proxies in front
//! of different upstreams, a proxy and `serve`): the same host and path behind each is a
//! different resource.
//!
//! The host comes from the request and is attacker-controlled, so it is checked against the
//! configured allow-list before it can become part of a key; the path and query are hashed
//! into one key part, so nothing in a URL can forge another key's structure.

use std::borrow::Cow;

use http::request::Parts;
use http::{HeaderMap, Uri};

use super::escapes::{Escapes, judge, normalize_escapes};
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
    /// (`utm_*`), compared with the normal form of each name (`utm%5Fsource` is
    /// `utm_source`).
    pub ignored_query_params: Vec<String>,
    /// The key space of the layer: layers with different scopes never share entries, even
    /// on one store and for one host and path. `None`: the unscoped key space (keys as they
    /// were before scopes existed).
    pub scope: Option<String>,
    /// Whether the host's port is part of the key.
    pub host_port: HostPort,
}

/// Whether the port of a request's host is part of its key (default ports never are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HostPort {
    /// Part of the key: `localhost:8080` and `localhost:9000` are different entries.
    #[default]
    Kept,
    /// Left out: every port of a host shares its entries, and a purge naming any port
    /// removes them (instances on different ports behind one name). Only for origins whose
    /// responses do not depend on the port (no links built from `Host`).
    Ignored,
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
    let (name, port) = split_port(raw);
    !raw.is_empty()
        && !raw
            .bytes()
            .any(|b| b.is_ascii_uppercase() || b.is_ascii_whitespace())
        && trim_host_end(raw.trim()).len() == raw.len()
        && trim_host_end(name).len() == name.len()
        && port.is_none_or(|port| key_port(port) == Some(port))
}

/// A `Host` value as keys hold it: trimmed, lowercase, its name without trailing dots, its
/// port without leading zeros, and no port at all when it is empty or a default one (80,
/// 443: whatever the scheme, which a `Host` does not say). For hosts named elsewhere than
/// in a request, such as purges. Normalizing its result again changes nothing.
pub fn normalize_host(raw: &str) -> String {
    let lower = trim_host_end(raw.trim()).to_ascii_lowercase();
    let (name, port) = split_port(&lower);
    let name = trim_host_end(name);
    match port.and_then(key_port) {
        Some(port) => format!("{name}:{port}"),
        None => name.to_owned(),
    }
}

/// `text` without trailing dots and whitespace, in any order (`shop.example .`).
fn trim_host_end(text: &str) -> &str {
    text.trim_end_matches(|c: char| c == '.' || c.is_whitespace())
}

/// A host's name and its port (the text after the name's `:`; `None` without one). An IPv6
/// literal's name keeps its brackets; text after a name that is no `:port` stays in it.
fn split_port(host: &str) -> (&str, Option<&str>) {
    let name_end = if host.starts_with('[') {
        host.find(']').map_or(host.len(), |at| at + 1)
    } else {
        host.find(':').unwrap_or(host.len())
    };
    match host[name_end..].strip_prefix(':') {
        Some(port) => (&host[..name_end], Some(port)),
        None => (host, None),
    }
}

/// A port as keys hold it: `None` for an empty or default one (`80`, `443`, `0443`), else
/// its digits without leading zeros; text that is no number is kept as it is.
fn key_port(port: &str) -> Option<&str> {
    if port.is_empty() {
        return None;
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Some(port);
    }
    let digits = port.trim_start_matches('0');
    // All zeros is port 0: one zero stays.
    let digits = if digits.is_empty() {
        &port[port.len() - 1..]
    } else {
        digits
    };
    (!matches!(digits, "80" | "443")).then_some(digits)
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
    let base = match &rules.scope {
        // A first part of its own: no unscoped key, whatever its host and extra parts, can
        // be spelled like a scoped one.
        Some(scope) => Key::new("http-scoped").part(scope),
        None => Key::new("http"),
    };
    base.part(keyed_host(host, rules))
        .hashed_part(keyed_target(path, query, rules))
}

/// The URL [`url_key`] keys, spelled readably for people (purge reports): `http://`, the
/// host and the path and query as the key holds them (a normalized `host` in, the port left
/// out when the rules ignore it). Keys do not hold the scheme, so `http` stands for any.
pub fn keyed_url(host: &str, path: &str, query: Option<&str>, rules: &KeyRules) -> String {
    let host = keyed_host(host, rules);
    format!("http://{host}{}", keyed_target(path, query, rules))
}

/// A normalized host as keys hold it under `rules`.
fn keyed_host<'h>(host: &'h str, rules: &KeyRules) -> &'h str {
    match rules.host_port {
        HostPort::Kept => host,
        HostPort::Ignored => split_port(host).0,
    }
}

/// The path in its normal form and the query as keys hold it ([`key_params`]).
fn keyed_target(path: &str, query: Option<&str>, rules: &KeyRules) -> String {
    let path = normalize_path(path);
    let mut target = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    target.push_str(&path);
    match query {
        Some(query) if query_is_normal(query, rules) => {
            target.push('?');
            target.push_str(query);
        }
        _ => {
            for (at, param) in key_params(query, rules).iter().enumerate() {
                target.push(if at == 0 { '?' } else { '&' });
                param.write_to(&mut target);
            }
        }
    }
    target
}

/// Whether `query` is already as [`key_params`] would write it (the usual case, checked
/// without allocating): no escape to normalize, no empty or ignored parameter, and names
/// in order when the rules sort them.
fn query_is_normal(query: &str, rules: &KeyRules) -> bool {
    if judge(query) != Escapes::Normal {
        return false;
    }
    let mut previous = "";
    for param in query.split('&') {
        let name = param.split_once('=').map_or(param, |(name, _)| name);
        let unsorted = rules.sort_query && name < previous;
        if param.is_empty() || unsorted || is_ignored(name, &rules.ignored_query_params) {
            return false;
        }
        previous = name;
    }
    true
}

/// One query parameter as keys hold it: its name and its value (`None` for `?flag`, empty
/// for `?flag=`), each a [`key_component`].
struct Param<'q> {
    name: Cow<'q, str>,
    value: Option<Cow<'q, str>>,
}

impl<'q> Param<'q> {
    /// The parameter between two `&`s, split at its first `=`. Normalizing never decodes
    /// `&` or `=` (`%26`, `%3D`), so splitting before it is splitting after.
    fn parse(text: &'q str) -> Self {
        match text.split_once('=') {
            Some((name, value)) => Self {
                name: key_component(name),
                value: Some(key_component(value)),
            },
            None => Self {
                name: key_component(text),
                value: None,
            },
        }
    }

    fn write_to(&self, out: &mut String) {
        out.push_str(&self.name);
        if let Some(value) = &self.value {
            out.push('=');
            out.push_str(value);
        }
    }
}

/// A query's parameters as keys hold them: empty and ignored ones dropped, the rest in
/// their normal form, sorted by name when the rules say.
fn key_params<'q>(query: Option<&'q str>, rules: &KeyRules) -> Vec<Param<'q>> {
    let Some(query) = query else {
        return Vec::new();
    };
    let mut params: Vec<Param<'q>> = query
        .split('&')
        .filter(|param| !param.is_empty())
        .map(Param::parse)
        .filter(|param| !is_ignored(&param.name, &rules.ignored_query_params))
        .collect();
    if rules.sort_query {
        // By name only, and stable: `?id=1&id=2` and `?id=2&id=1` may mean different things.
        params.sort_by(|a, b| a.name.cmp(&b.name));
    }
    params
}

/// Whether a parameter's name (in its normal form) is one of `ignored`: exact names, or
/// prefixes ending in `*`.
fn is_ignored(name: &str, ignored: &[String]) -> bool {
    ignored
        .iter()
        .any(|ignored| match ignored.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == ignored,
        })
}

/// A query parameter's name or value as keys hold it: its escapes in the normal form
/// (`l%69mit` is `limit`, `%2f` is `%2F`; `+` stays), borrowed when already so (most
/// queries), so the hit path does not allocate for it. One with a `%` that starts no
/// escape is kept as sent: origins read it differently (as `%`, or not at all) and receive
/// the query as sent, so it must not share the key of `%25`.
fn key_component(text: &str) -> Cow<'_, str> {
    match judge(text) {
        Escapes::Changes => Cow::Owned(normalize_escapes(text)),
        Escapes::Normal | Escapes::Malformed => Cow::Borrowed(text),
    }
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
            "a.example:080",
            "a.example:08080",
            "a.example:0",
            "a.example:00",
            "a.example:",
            "a.example.:8080",
            "a.example:8080.",
            "[::1]:80",
            "[::1]",
            "a.example .",
            "a.example\u{a0}",
        ] {
            assert_eq!(
                host_is_normal(host),
                normalize_host(host) == host && !host.is_empty(),
                "{host:?}"
            );
        }
    }

    /// Default ports go in any spelling, whatever the scheme a URL gave (a `Host` field
    /// says none); other ports stay, without leading zeros; one pass is the normal form.
    #[test]
    fn default_ports_are_dropped_in_any_spelling() {
        for (raw, normal) in [
            ("localhost:80", "localhost"),
            ("localhost:443", "localhost"),
            ("LOCALHOST:080", "localhost"),
            ("localhost:", "localhost"),
            ("localhost.:80", "localhost"),
            ("shop.example .", "shop.example"),
            ("[::1]:443", "[::1]"),
            ("localhost:8080", "localhost:8080"),
            ("localhost:08080", "localhost:8080"),
            ("localhost:4430", "localhost:4430"),
            ("[::1]:8080", "[::1]:8080"),
        ] {
            assert_eq!(normalize_host(raw), normal, "{raw:?}");
            assert_eq!(normalize_host(normal), normal, "{normal:?} is normal");
        }
    }

    /// A purge naming `http://localhost:80/x` meets the entry of a request with
    /// `Host: localhost`; `localhost:8080` is another entry unless ports are ignored, and
    /// then every port meets it, and the spelled URL says so.
    #[test]
    fn host_ports_in_keys() {
        let kept = KeyRules {
            sort_query: true,
            ..KeyRules::default()
        };
        let request = |host, rules: &KeyRules| primary_key(&parts("/x", host), rules).expect("key");
        let purge = |host, rules: &KeyRules| url_key(&normalize_host(host), "/x", None, rules);
        assert_eq!(purge("localhost:80", &kept), request("localhost", &kept));
        assert_eq!(purge("localhost", &kept), request("localhost:443", &kept));
        assert_ne!(
            request("localhost:8080", &kept),
            request("localhost", &kept)
        );
        assert_ne!(
            purge("localhost:9000", &kept),
            request("localhost:8080", &kept)
        );
        let ignored = KeyRules {
            host_port: HostPort::Ignored,
            ..kept.clone()
        };
        assert_eq!(
            purge("localhost:9000", &ignored),
            request("localhost:8080", &ignored)
        );
        assert_eq!(
            request("localhost", &ignored),
            request("localhost:8080", &ignored)
        );
        assert_eq!(
            request("[::1]:8080", &ignored),
            request("[::1]:9000", &ignored)
        );
        let spelled = |host, rules| keyed_url(&normalize_host(host), "/x", Some("b=1&a=2"), rules);
        assert_eq!(
            spelled("LocalHost:8080", &kept),
            "http://localhost:8080/x?a=2&b=1"
        );
        assert_eq!(spelled("localhost:80", &kept), "http://localhost/x?a=2&b=1");
        assert_eq!(
            spelled("localhost:8080", &ignored),
            "http://localhost/x?a=2&b=1"
        );
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

    /// The allocation-free check agrees with the normalization it stands for (a query with
    /// a `%` that starts no escape takes the long way, which keeps that part as sent).
    #[test]
    fn query_is_normal_exactly_when_keying_changes_nothing() {
        let rules = KeyRules {
            sort_query: true,
            ignored_query_params: vec!["utm_*".into()],
            ..KeyRules::default()
        };
        let unsorted = KeyRules::default();
        for query in [
            "a=1&b=2",
            "b=2&a=1",
            "a=1&a=0",
            "a",
            "a=",
            "=",
            "",
            "&",
            "a=1&",
            "a&&b",
            "a=%2F",
            "a=%2f",
            "l%69mit=5",
            "q=100%",
            "q=a+b",
            "utm_source=x",
            "a=1&utm_x",
            "b=%&a",
        ] {
            for rules in [&rules, &unsorted] {
                let keyed = keyed_url("h", "/", Some(query), rules);
                let unchanged = keyed == format!("http://h/?{query}");
                assert_eq!(
                    query_is_normal(query, rules),
                    unchanged && judge(query) != Escapes::Malformed,
                    "{query:?}, sorted: {}",
                    rules.sort_query
                );
            }
        }
    }

    /// Spellings RFC 3986 calls equivalent (unreserved characters escaped, hex in either
    /// case) are one key, in names and values; `+` and `%20`, which origins read
    /// differently, are not; an escaped `&` or `=` stays escaped and separates nothing.
    #[test]
    fn query_escapes_are_normalized() {
        let rules = KeyRules::default();
        let key = |uri| primary_key(&parts(uri, "h"), &rules).expect("key");
        let limit = key("/items?limit=5");
        assert_eq!(key("/items?limit=%35"), limit);
        assert_eq!(key("/items?l%69mit=5"), limit);
        assert_eq!(key("/items?j=%6a"), key("/items?j=%6A"));
        assert_eq!(key("/items?path=a%2fb"), key("/items?path=a%2Fb"));
        assert_ne!(key("/items?q=a+b"), key("/items?q=a%20b"));
        assert_ne!(key("/items?a=x%26b=y"), key("/items?a=x&b=y"));
        assert_ne!(key("/items?a%3Dx=y"), key("/items?a=x=y"));
        assert_eq!(
            keyed_url("h", "/items", Some("q=1%262&l%69mit=%35&p=%2f"), &rules),
            "http://h/items?q=1%262&limit=5&p=%2F"
        );
        let sorted = KeyRules {
            sort_query: true,
            ..KeyRules::default()
        };
        assert_eq!(
            keyed_url("h", "/items", Some("q=1%262&%62=2&a=1"), &sorted),
            "http://h/items?a=1&b=2&q=1%262",
            "sorted by the normal form of names; `%26` is no separator"
        );
    }

    /// A name or value with a `%` that starts no escape is keyed as sent: origins read it
    /// differently (as `%`, or not at all), so it never shares a key with `%25`.
    #[test]
    fn malformed_query_escapes_are_kept_as_sent() {
        let rules = KeyRules::default();
        let key = |uri| primary_key(&parts(uri, "h"), &rules).expect("key");
        assert_ne!(key("/p?q=100%"), key("/p?q=100%25"));
        assert_ne!(key("/p?q=%%34%31"), key("/p?q=%41"));
        assert_eq!(
            keyed_url("h", "/p", Some("q=%zz%41&%62=%"), &rules),
            "http://h/p?q=%zz%41&b=%"
        );
    }

    /// Ignored parameters are matched by the normal form of their names.
    #[test]
    fn ignored_query_params_match_after_normalizing() {
        let rules = KeyRules {
            sort_query: true,
            ignored_query_params: vec!["utm_*".into(), "fbclid".into()],
            ..KeyRules::default()
        };
        let key = |uri| primary_key(&parts(uri, "h"), &rules).expect("key");
        assert_eq!(key("/p?utm%5Fsource=x&a=1"), key("/p?a=1"));
        assert_eq!(key("/p?%75tm_medium=x&fbcl%69d=y"), key("/p"));
        assert_ne!(
            key("/p?utm%2Dsource=x"),
            key("/p"),
            "`utm-` is another name"
        );
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
