//! Per-path rules of the proxy, from a TOML file: a default TTL for responses that carry no
//! cache headers (many upstreams send none), or a bypass for paths that must never be cached.
//!
//! ```toml
//! [[rules]]
//! path = "/api/products"   # a path prefix, matched on whole segments
//! default_ttl = "60s"
//!
//! [[rules]]
//! path = "/api/cart"
//! bypass = true
//! ```
//!
//! The longest matching prefix wins. A rule never overrides what the upstream says: a
//! response with `Cache-Control: no-store` or `private` is not stored whatever the rule.
//! This module must never accept a file it cannot fully understand: every mistake is an
//! error naming the rule.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;

/// What a rule does with the paths it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Store responses without freshness information for this long.
    DefaultTtl(Duration),
    /// Forward without the cache.
    Bypass,
}

/// One rule: a path prefix and its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Path prefix (`/api`), matched on whole segments (`/api` and `/api/x`, not `/apix`).
    pub prefix: String,
    /// What to do.
    pub action: RuleAction,
}

impl Rule {
    /// Whether `path` falls under this rule.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let prefix = self.prefix.trim_end_matches('/');
        match path.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
            None => false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    path: String,
    default_ttl: Option<String>,
    #[serde(default)]
    bypass: bool,
}

const FLAG: &str = "--rules (CACHELAYER_PROXY_RULES)";

/// A request path as rules see it: percent-encoded unreserved characters decoded, repeated
/// slashes merged, `.` and `..` segments resolved; so `/api/%63art`, `/api//cart` and
/// `/api/x/../cart` cannot slip past a rule for `/api/cart`. (The upstream still gets the
/// path as sent.) Matching stays case-sensitive, as paths are.
pub(crate) fn normalized_path(path: &str) -> String {
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    format!("/{}", segments.join("/"))
}

/// Decode `%XX` where it stands for a letter, digit, `-`, `.`, `_` or `~` (RFC 3986 section
/// 2.3: those are equivalent to their encoding); leave every other escape as it is.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        match escaped {
            Some(byte) => {
                out.push(char::from(byte));
                i += 3;
            }
            None => {
                let ch = path[i..].chars().next().unwrap_or_default();
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

/// Read and check a rules file; the rules come back longest prefix first.
pub(crate) fn load_rules(path: &Path) -> Result<Vec<Rule>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Error::config(FLAG, format!("cannot read {}: {err}", path.display())))?;
    parse_rules(&text)
        .map_err(|problem| Error::config(FLAG, format!("{}: {problem}", path.display())))
}

fn parse_rules(text: &str) -> Result<Vec<Rule>, String> {
    let file: RulesFile = toml::from_str(text).map_err(|err| err.to_string())?;
    let mut rules = Vec::with_capacity(file.rules.len());
    for (index, raw) in file.rules.into_iter().enumerate() {
        let name = format!("rule {} (path {:?})", index + 1, raw.path);
        if !raw.path.starts_with('/') {
            return Err(format!("{name}: path must start with /"));
        }
        if raw.path.contains(['*', '?', '#', '%']) {
            return Err(format!(
                "{name}: path is a plain prefix (no wildcards, query, fragment or escapes)"
            ));
        }
        let prefix = normalized_path(&raw.path);
        if rules.iter().any(|rule: &Rule| rule.prefix == prefix) {
            return Err(format!("{name}: another rule has the same path"));
        }
        let action = match (raw.bypass, raw.default_ttl) {
            (true, None) => RuleAction::Bypass,
            (false, Some(ttl)) => {
                let ttl = humantime::parse_duration(&ttl)
                    .map_err(|err| format!("{name}: default_ttl {ttl:?}: {err}"))?;
                if ttl.is_zero() {
                    return Err(format!(
                        "{name}: default_ttl must be more than 0 (use bypass = true)"
                    ));
                }
                RuleAction::DefaultTtl(ttl)
            }
            (true, Some(_)) => return Err(format!("{name}: give bypass or default_ttl, not both")),
            (false, None) => return Err(format!("{name}: give bypass = true or a default_ttl")),
        };
        rules.push(Rule { prefix, action });
    }
    rules.sort_by_key(|rule| std::cmp::Reverse(rule.prefix.len()));
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_sort_longest_first() {
        let rules = parse_rules(
            r#"
            [[rules]]
            path = "/api"
            default_ttl = "30s"
            [[rules]]
            path = "/api/cart"
            bypass = true
            "#,
        )
        .expect("valid");
        assert_eq!(rules[0].prefix, "/api/cart");
        assert_eq!(rules[0].action, RuleAction::Bypass);
        assert_eq!(
            rules[1].action,
            RuleAction::DefaultTtl(Duration::from_secs(30))
        );
    }

    #[test]
    fn mistakes_name_the_rule() {
        for (text, expected) in [
            ("[[rules]]\npath = \"api\"\nbypass = true", "rule 1"),
            ("[[rules]]\npath = \"/a\"", "bypass = true or a default_ttl"),
            (
                "[[rules]]\npath = \"/a\"\nbypass = true\ndefault_ttl = \"1s\"",
                "not both",
            ),
            (
                "[[rules]]\npath = \"/a\"\ndefault_ttl = \"soon\"",
                "default_ttl",
            ),
            ("[[rules]]\npath = \"/a\"\nttl = \"1s\"", "unknown field"),
        ] {
            let err = parse_rules(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn globs_and_duplicates_are_refused() {
        for text in [
            "[[rules]]\npath = \"/api/*\"\nbypass = true",
            "[[rules]]\npath = \"/a\"\nbypass = true\n[[rules]]\npath = \"/a/\"\nbypass = true",
        ] {
            assert!(parse_rules(text).is_err(), "{text}");
        }
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        assert_eq!(normalized_path("/api/%63art"), "/api/cart");
        assert_eq!(normalized_path("/api//cart/"), "/api/cart");
        assert_eq!(normalized_path("/api/x/../cart"), "/api/cart");
        assert_eq!(
            normalized_path("/api/%2Fcart"),
            "/api/%2Fcart",
            "reserved escapes stay"
        );
        assert_eq!(normalized_path("/%"), "/%");
        assert_eq!(normalized_path("/é%41"), "/éA");
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let rule = Rule {
            prefix: "/api".to_owned(),
            action: RuleAction::Bypass,
        };
        assert!(rule.matches("/api"));
        assert!(rule.matches("/api/x"));
        assert!(!rule.matches("/apix"));
        assert!(!rule.matches("/"));
    }
}
