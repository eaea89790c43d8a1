//! Fuzz target: the normal form of request paths (`http::path`), which every key, forwarded
//! request, invalidation and purge goes through, and the URL keys built on it
//! (`http::key::url_key`), from paths and queries as clients write them.
//!
//! Checked: normalizing is total and idempotent, borrows exactly when nothing changes, and
//! equals an independent implementation of RFC 3986's syntax-based normalization (sections
//! 2.3, 6.2.2.1 and 5.2.4, with repeated slashes merged); every spelling of a path is one
//! key, and reserved escapes are never decoded into another path. Queries likewise: keyed
//! as the model says (escapes of each name and value normalized), stable when keyed again,
//! every equivalent spelling one key, and `+`, `%26` and `%3D` never decoded. This module
//! must never share code with the implementation it checks.

use std::borrow::Cow;

use http::Uri;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::http::key::{KeyRules, keyed_url, url_key};
use crate::http::path::{decode_escapes, normalize_path, normalize_uri};

const UNRESERVED_MARKS: &[u8] = b"-._~";

fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || UNRESERVED_MARKS.contains(&byte)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 sections 2.3 and 6.2.2.1: unreserved escapes decoded, others uppercase; a `%`
/// that starts no escape made one (`%25`).
fn model_escapes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escape = match bytes.get(at..at + 3) {
            Some([b'%', high, low]) => hex_value(*high).zip(hex_value(*low)),
            _ => None,
        };
        match (bytes[at], escape) {
            (b'%', Some((high, low))) => {
                let byte = high * 16 + low;
                if unreserved(byte) {
                    out.push(byte);
                } else {
                    out.extend(format!("%{byte:02X}").bytes());
                }
                at += 3;
            }
            (b'%', None) => {
                out.extend(b"%25");
                at += 1;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(out).expect("only ASCII was changed")
}

/// RFC 3986 section 5.2.4, `remove_dot_segments`, step by step as the RFC writes it.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path.to_owned();
    let mut output = String::new();
    let pop = |output: &mut String| {
        let cut = output.rfind('/').unwrap_or(0);
        output.truncate(cut);
    };
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest.to_owned();
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest.to_owned();
        } else if input.starts_with("/./") {
            input.replace_range(..3, "/");
        } else if input == "/." {
            input = "/".to_owned();
        } else if input.starts_with("/../") {
            input.replace_range(..4, "/");
            pop(&mut output);
        } else if input == "/.." {
            input = "/".to_owned();
            pop(&mut output);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| start + i);
            output.push_str(&input[..end]);
            input.replace_range(..end, "");
        }
    }
    output
}

/// The normal form, from the RFC's definitions: escapes, then repeated slashes merged,
/// then dot segments removed.
fn model_normal(path: &str) -> String {
    let escaped = model_escapes(path);
    let mut merged = String::with_capacity(escaped.len());
    for c in escaped.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    let normal = remove_dot_segments(&merged);
    if normal.is_empty() {
        "/".to_owned()
    } else {
        normal
    }
}

/// Whether every `%` in `text` starts an escape (RFC 3986 section 2.1).
fn well_formed(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices('%').all(|(at, _)| {
        matches!(bytes.get(at + 1..at + 3), Some([high, low])
            if hex_value(*high).is_some() && hex_value(*low).is_some())
    })
}

/// A query as keys hold it: parameters split at `&` and their first `=` (empty ones
/// dropped), each name and value with its escapes in the normal form unless it holds a `%`
/// that starts no escape (then kept as sent), stably sorted by name when `sort` says.
fn model_query(query: &str, sort: bool) -> String {
    let component = |text: &str| {
        if well_formed(text) {
            model_escapes(text)
        } else {
            text.to_owned()
        }
    };
    let mut params: Vec<(String, Option<String>)> = query
        .split('&')
        .filter(|param| !param.is_empty())
        .map(|param| match param.split_once('=') {
            Some((name, value)) => (component(name), Some(component(value))),
            None => (component(param), None),
        })
        .collect();
    if sort {
        params.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let params: Vec<String> = params
        .into_iter()
        .map(|(name, value)| match value {
            Some(value) => format!("{name}={value}"),
            None => name,
        })
        .collect();
    params.join("&")
}

/// Queries as clients write them: any text, and text made of the pieces that normalizing
/// rewrites or must leave alone (escapes valid and not, escaped separators, `+`).
fn raw_query() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9]{1,3}",
        Just("=".to_owned()),
        Just("&".to_owned()),
        "%[0-9a-fA-F]{2}",
        "%[0-9a-fA-FgG]{0,1}",
        prop::sample::select(vec![
            "%26", "%3d", "%3D", "%2b", "+", "%20", "%5f", "%5F", "%25", "é", "~", ".",
        ])
        .prop_map(str::to_owned),
    ];
    prop_oneof![
        3 => vec(piece, 0..16).prop_map(|pieces| pieces.concat()),
        1 => "[ -~]{0,32}",
        1 => ".{0,24}",
    ]
}

/// Query parameters already in the normal form: unreserved characters, reserved escapes
/// (separators among them) and `+`; a value may be absent (`?flag`).
fn normal_params() -> impl Strategy<Value = Vec<(String, Option<String>)>> {
    let text = "([a-zA-Z0-9._~-]|%2F|%26|%3D|%20|%C3%A9|\\+){0,6}";
    vec((text, proptest::option::of(text)), 0..5)
}

/// Paths as clients write them: any text, and text made of the pieces that normalizing
/// rewrites (escapes valid and not, dots, slashes).
fn raw_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9]{1,3}",
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        "%[0-9a-fA-F]{2}",
        "%[0-9a-fA-FgG]{0,1}",
        prop::sample::select(vec![
            "%2e", "%2E", "%2f", "%2F", "%25", ";", "é", "~", "-", "_"
        ])
        .prop_map(str::to_owned),
    ];
    prop_oneof![
        3 => vec(piece, 0..16).prop_map(|pieces| format!("/{}", pieces.concat())),
        1 => "/[ -~]{0,32}",
        1 => ".{0,24}",
    ]
}

/// A path already in the normal form, as segments of unreserved and reserved characters.
fn normal_segments() -> impl Strategy<Value = Vec<String>> {
    vec("([a-zA-Z0-9_~-]|%2F|%3A|\\.[a-z]){1,6}", 0..5)
}

/// How a client may spell a segment: unreserved characters escaped (hex in either case),
/// and what a path may carry around it (`./`, `x/../`, repeated slashes).
#[derive(Debug, Clone)]
struct Spelling {
    escape: Vec<bool>,
    lower_hex: bool,
    detour: u8,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    (vec(any::<bool>(), 12), any::<bool>(), 0u8..5).prop_map(|(escape, lower_hex, detour)| {
        Spelling {
            escape,
            lower_hex,
            detour,
        }
    })
}

fn spell(segments: &[String], spellings: &[Spelling], trailing: bool) -> String {
    let mut out = String::new();
    for (segment, how) in segments.iter().zip(spellings.iter().cycle()) {
        match how.detour {
            1 => out.push_str("/."),
            2 => out.push_str("/detour/.."),
            3 => out.push('/'),
            4 => out.push_str("/%2e"),
            _ => {}
        }
        out.push('/');
        spell_escapes(&mut out, segment, how);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

/// `text` (in the normal form, ASCII) spelled another way: some unreserved characters
/// escaped, and hex in the case `how` says; reserved characters and escapes keep their
/// meaning.
fn spell_escapes(out: &mut String, text: &str, how: &Spelling) {
    let mut escapes = how.escape.iter().cycle();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '%' {
            // A reserved escape stays one, in either case.
            let escape = &rest[..3];
            out.push_str(&if how.lower_hex {
                escape.to_ascii_lowercase()
            } else {
                escape.to_owned()
            });
            rest = &rest[3..];
            continue;
        }
        let byte = c as u8;
        if unreserved(byte) && *escapes.next().unwrap_or(&false) {
            out.push_str(&if how.lower_hex {
                format!("%{byte:02x}")
            } else {
                format!("%{byte:02X}")
            });
        } else {
            out.push(c);
        }
        rest = &rest[1..];
    }
}

fn written_normal(segments: &[String], trailing: bool) -> String {
    let mut out: String = segments.iter().map(|s| format!("/{s}")).collect();
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

proptest! {
    #![proptest_config(super::config())]

    /// Any path normalizes without a panic to RFC 3986's normal form (as an independent
    /// implementation computes it), borrowed exactly when nothing changes; the form is
    /// stable, well formed, and free of dot and empty segments.
    #[test]
    fn fuzz_path_normal_form(path in raw_path()) {
        let normal = normalize_path(&path);
        if !path.starts_with('/') {
            prop_assert!(matches!(normal, Cow::Borrowed(_)));
            prop_assert_eq!(&*normal, path.as_str());
            return Ok(());
        }
        let expected = model_normal(&path);
        prop_assert_eq!(&*normal, expected.as_str(), "{:?}", path);
        prop_assert_eq!(matches!(normal, Cow::Borrowed(_)), *normal == *path);
        let again = normalize_path(&normal);
        prop_assert!(matches!(again, Cow::Borrowed(_)), "{:?} is not stable", normal);
        let bytes = normal.as_bytes();
        for (at, _) in normal.match_indices('%') {
            let escape = bytes.get(at + 1..at + 3).expect("a whole escape");
            prop_assert!(escape.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)));
            let value = hex_value(escape[0]).zip(hex_value(escape[1])).map(|(h, l)| h * 16 + l);
            prop_assert!(!value.is_some_and(unreserved), "{:?}", normal);
        }
        let segments: Vec<&str> = normal[1..].split('/').collect();
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            prop_assert!(*segment != "." && *segment != "..");
            prop_assert!(!segment.is_empty() || i == last, "{:?}", normal);
        }
    }

    /// Every spelling of a path (unreserved escapes in either case, `./`, `x/../`, repeated
    /// slashes) normalizes to it and is one key; a reserved escape is never the character
    /// it stands for.
    #[test]
    fn fuzz_path_spellings_are_one_key(
        segments in normal_segments(),
        spellings in vec(spelling(), 1..4),
        trailing in any::<bool>(),
        query in proptest::option::of("[a-z0-9=&%]{0,12}"),
    ) {
        let normal = written_normal(&segments, trailing);
        prop_assert_eq!(&*normalize_path(&normal), normal.as_str());
        let spelled = spell(&segments, &spellings, trailing);
        prop_assert_eq!(&*normalize_path(&spelled), normal.as_str(), "{}", spelled);
        let rules = KeyRules::default();
        let query = query.as_deref();
        prop_assert_eq!(url_key("h", &spelled, query, &rules), url_key("h", &normal, query, &rules));
        if normal.contains("%2F") {
            let decoded = normal.replace("%2F", "/");
            prop_assert_ne!(url_key("h", &decoded, query, &rules), url_key("h", &normal, query, &rules));
        }
    }

    /// A URI's path is normalized and nothing else: scheme, authority and query are kept;
    /// `None` exactly when its path is already normal.
    #[test]
    fn fuzz_uri_paths_normalize(
        path in raw_path(),
        query in proptest::option::of("[a-zA-Z0-9=&%.]{0,12}"),
        absolute in any::<bool>(),
    ) {
        let target = match &query {
            Some(query) => format!("{path}?{query}"),
            None => path.clone(),
        };
        let text = if absolute { format!("http://h.example{target}") } else { target };
        let Ok(uri) = text.parse::<Uri>() else {
            return Ok(());
        };
        match normalize_uri(&uri) {
            None => prop_assert!(matches!(normalize_path(uri.path()), Cow::Borrowed(_))),
            Some(normal) => {
                prop_assert_eq!(normal.path(), &*normalize_path(uri.path()));
                prop_assert_eq!(normal.query(), uri.query());
                prop_assert_eq!(normal.authority(), uri.authority());
                prop_assert_eq!(normal.scheme(), uri.scheme());
            }
        }
    }

    /// Decoding for matching decodes every escape once: text with every byte escaped
    /// decodes to itself, and text without `%` is borrowed as it is.
    #[test]
    fn fuzz_escapes_decode(text in ".{0,24}", lower in any::<bool>(), raw in "[ -~]{0,24}") {
        let escaped: String = text
            .bytes()
            .map(|b| if lower { format!("%{b:02x}") } else { format!("%{b:02X}") })
            .collect();
        prop_assert_eq!(&*decode_escapes(&escaped), text.as_str());
        let decoded = decode_escapes(&raw);
        prop_assert!(decoded.len() <= raw.len() || decoded.contains(char::REPLACEMENT_CHARACTER));
        if !raw.contains('%') {
            prop_assert!(matches!(decoded, Cow::Borrowed(_)));
        }
    }

    /// With sorting on, a query's parameters of distinct names are one key in any order,
    /// and ignored parameters (exact or by prefix) make no difference.
    #[test]
    fn fuzz_query_parameters_normalize(
        params in prop::collection::btree_map("[a-z]{1,6}", "[a-z0-9%]{0,6}", 0..6),
        order in any::<prop::sample::Index>(),
        ignored in proptest::option::of(("utm_[a-z]{1,4}", "[a-z0-9]{0,4}")),
    ) {
        let rules = KeyRules {
            sort_query: true,
            ignored_query_params: vec!["utm_*".to_owned()],
            ..KeyRules::default()
        };
        let pairs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut shuffled = pairs.clone();
        if !shuffled.is_empty() {
            let by = order.index(shuffled.len());
            shuffled.rotate_left(by);
        }
        if let Some((name, value)) = &ignored {
            let at = order.index(shuffled.len() + 1);
            shuffled.insert(at, format!("{name}={value}"));
        }
        let sorted = pairs.join("&");
        let written = shuffled.join("&");
        let query = |q: &str| if q.is_empty() { None } else { Some(q.to_owned()) };
        prop_assert_eq!(
            url_key("h", "/p", query(&written).as_deref(), &rules),
            url_key("h", "/p", query(&sorted).as_deref(), &rules)
        );
    }

    /// Any query is keyed, without a panic, as an independent model says (escapes of each
    /// name and value in RFC 3986's normal form, or kept as sent when a `%` starts no
    /// escape; sorted or not), and keying the keyed form again changes nothing.
    #[test]
    fn fuzz_query_normal_form(query in raw_query(), sort in any::<bool>()) {
        let rules = KeyRules { sort_query: sort, ..KeyRules::default() };
        let keyed = keyed_url("h", "/p", Some(&query), &rules);
        let normal = model_query(&query, sort);
        let normal = (!normal.is_empty()).then_some(normal.as_str());
        let expected = normal.map_or("http://h/p".to_owned(), |q| format!("http://h/p?{q}"));
        prop_assert_eq!(&keyed, &expected, "{:?}", query);
        let again = keyed_url("h", "/p", normal, &rules);
        prop_assert_eq!(&again, &keyed, "{:?} is not stable", normal);
        let key = |query| url_key("h", "/p", query, &rules);
        prop_assert_eq!(key(Some(&query)), key(normal));
    }

    /// Every spelling of a query that RFC 3986 calls equivalent (unreserved characters
    /// escaped, hex in either case, in names and values) is one key; `+` is never `%20`
    /// and an escaped `&` or `=` never the separator.
    #[test]
    fn fuzz_query_spellings_are_one_key(
        params in normal_params(),
        spellings in vec(spelling(), 1..4),
        sort in any::<bool>(),
    ) {
        let rules = KeyRules { sort_query: sort, ..KeyRules::default() };
        let mut normal = Vec::new();
        let mut spelled = Vec::new();
        for ((name, value), how) in params.iter().zip(spellings.iter().cycle()) {
            let mut written = String::new();
            spell_escapes(&mut written, name, how);
            if let Some(value) = value {
                written.push('=');
                spell_escapes(&mut written, value, how);
            }
            spelled.push(written);
            normal.push(match value {
                Some(value) => format!("{name}={value}"),
                None => name.clone(),
            });
        }
        let (normal, spelled) = (normal.join("&"), spelled.join("&"));
        let key = |query: &str| url_key("h", "/p", Some(query), &rules);
        prop_assert_eq!(key(&spelled), key(&normal), "{} and {}", spelled, normal);
        for (escape, character) in [("%20", "+"), ("%26", "&"), ("%3D", "=")] {
            if normal.contains(escape) {
                let decoded = normal.replace(escape, character);
                prop_assert_ne!(key(&decoded), key(&normal), "{}", decoded);
            }
        }
    }
}
