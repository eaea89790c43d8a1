//! The one normal form of a request path, for everything that names a stored response: the
//! key of a request, the request the origin then receives, write invalidation (the target,
//! `Location`, `Content-Location`) and purges. Two spellings of one resource (`/%62/n2` and
//! `/b/n2`) must be one entry, or a write through one spelling leaves the other stale.
//!
//! The form is RFC 3986 section 6.2.2's syntax-based normalization of a path: escapes of
//! unreserved characters decoded (section 2.3), the hex of other escapes uppercase (section
//! 6.2.2.1), dot segments removed (section 5.2.4), and, beyond the RFC, repeated slashes
//! merged. A `%` that starts no escape is written `%25`, so the form is well formed and
//! normalizing it again changes nothing. The escapes' part is `escapes`, which query keys
//! share.
//!
//! This module must never change what a path means to an origin that follows RFC 3986: it
//! never decodes an escape of a reserved character (`%2F` is not `/`), never changes case
//! outside escapes, and never touches the query.

use std::borrow::Cow;

use http::Uri;
use http::uri::PathAndQuery;

use super::escapes::{escaped_byte, normalize_escapes};

/// `path` in the normal form; borrowed when it is already normal (most requests), so the
/// hit path does not allocate for it. A path not starting with `/` (`*` of `OPTIONS *`) is
/// left as it is.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    if !path.starts_with('/') || is_normal(path) {
        return Cow::Borrowed(path);
    }
    let normal = normalize_segments(&normalize_escapes(path));
    if normal == path {
        // Escapes already in their normal form (`%2F`): nothing changed.
        return Cow::Borrowed(path);
    }
    Cow::Owned(normal)
}

/// `text` with every `%XX` escape decoded, whatever it stands for (`%2F` too), invalid
/// UTF-8 replaced. For matching a path against a pattern liberally (so no spelling slips
/// past it), never for keys or what is forwarded: it changes what a path means.
pub fn decode_escapes(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match escaped_byte(&bytes[at..]) {
            Some(byte) => {
                out.push(byte);
                at += 3;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// `uri` with its path in the normal form (scheme, authority and query kept), or `None` when
/// it is already normal.
pub fn normalize_uri(uri: &Uri) -> Option<Uri> {
    let Cow::Owned(path) = normalize_path(uri.path()) else {
        return None;
    };
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(target).ok()?);
    Uri::from_parts(parts).ok()
}

/// Whether nothing in `path` needs normalizing: no `%`, no empty segment but a trailing
/// one, no `.` or `..` segment. One pass over the bytes, no allocation.
fn is_normal(path: &str) -> bool {
    if path.contains('%') {
        return false;
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// Dot segments removed (RFC 3986 section 5.2.4) and empty segments merged; a trailing
/// slash (or a trailing `.` or `..`, which stand for a directory) is kept.
fn normalize_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" | "." => trailing_slash = last,
            ".." => {
                kept.pop();
                trailing_slash = last;
            }
            name => {
                kept.push(name);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Escapes of unreserved characters are the characters; other escapes keep their
    /// meaning with uppercase hex; a stray `%` becomes `%25`.
    #[test]
    fn escapes_are_normalized() {
        assert_eq!(normalize_path("/%62/n2"), "/b/n2");
        assert_eq!(normalize_path("/%7euser/%2d%2E%5F"), "/~user/-._");
        assert_eq!(
            normalize_path("/a%2fb"),
            "/a%2Fb",
            "a reserved escape stays one"
        );
        assert_eq!(normalize_path("/a%2Fb"), "/a%2Fb");
        assert_eq!(normalize_path("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(normalize_path("/100%"), "/100%25");
        assert_eq!(normalize_path("/%zz%4"), "/%25zz%254");
        assert_eq!(normalize_path("/é%41"), "/éA");
    }

    /// Dot segments are resolved, `//` merged, a trailing slash kept.
    #[test]
    fn segments_are_normalized() {
        for (raw, normal) in [
            ("/a/./b", "/a/b"),
            ("/a/x/../b", "/a/b"),
            ("/../../a", "/a"),
            ("/a//b", "/a/b"),
            ("//a", "/a"),
            ("/a/", "/a/"),
            ("/a//", "/a/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/", "/"),
            ("//", "/"),
            ("/a/%2E%2E/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/...", "/a/..."),
        ] {
            assert_eq!(normalize_path(raw), normal, "{raw}");
        }
    }

    /// A normal path is borrowed, not copied; normalizing twice changes nothing more.
    #[test]
    fn normal_paths_are_borrowed_and_the_form_is_stable() {
        for normal in ["/", "/products", "/a/b/", "/a/%2F", "*"] {
            assert!(
                matches!(normalize_path(normal), Cow::Borrowed(_)),
                "{normal}"
            );
        }
        for raw in ["/%%414", "/a/./%2e%2E//b%2f%7E", "/x/../%62/", "/%", "/a%2"] {
            let once = normalize_path(raw).into_owned();
            assert_eq!(normalize_path(&once), once, "{raw}");
        }
    }

    /// The URI keeps its query and authority; only the path changes.
    #[test]
    fn uris_keep_their_query() {
        let uri: Uri = "http://shop.example/%62/./n2?q=%62".parse().expect("uri");
        let normal = normalize_uri(&uri).expect("changed");
        assert_eq!(normal.to_string(), "http://shop.example/b/n2?q=%62");
        let already: Uri = "/b/n2?x=1".parse().expect("uri");
        assert_eq!(normalize_uri(&already), None);
    }

    /// Matching decodes every escape, reserved ones too, and survives invalid UTF-8.
    #[test]
    fn decoding_for_matching_decodes_everything() {
        assert_eq!(decode_escapes("/api%2fcart%5C%2e"), "/api/cart\\.");
        assert_eq!(decode_escapes("/%ff%"), "/\u{fffd}%");
        assert!(matches!(decode_escapes("/plain"), Cow::Borrowed(_)));
    }
}
