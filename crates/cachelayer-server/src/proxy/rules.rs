//! Per-path rules of the proxy, from a TOML file: a default TTL for responses that carry no
//! cache headers (many upstreams send none), or a bypass for paths that must never be cached.
//!
//! ```toml
//! [[rules]]
//! path = "/api/products"   # a path prefix, matched on whole segments
//! default_ttl = "60s"
//! statuses = [200, 404]    # optional: the statuses the default TTL applies to
//!
//! [[rules]]
//! path = "/api/cart"
//! bypass = true
//! case_sensitive = false   # the default: /API/Cart matches too
//! ```
//!
//! The longest matching prefix wins. A rule never overrides what the upstream says: a
//! response with `Cache-Control: no-store` or `private` is not stored whatever the rule, and
//! one with explicit freshness is stored for it. A default TTL applies to 200, 203, 204, 301
//! and 308 unless the rule lists `statuses`, so an error page is never stored for it by
//! accident.
//!
//! Rules match liberally (`RequestPath`): every spelling an upstream might take for a path
//! under a rule's prefix matches it, so no spelling dodges a bypass. This module must never
//! accept a file it cannot fully understand: every mistake is an error naming the rule.

use std::path::Path;
use std::time::Duration;

use cachelayer::http::path::{decode_escapes, normalize_path};
use cachelayer::http::policy::{DEFAULT_TTL_STATUSES, StatusSet};
use serde::Deserialize;

use crate::error::Error;

/// What a rule does with the paths it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Store responses without freshness information for `ttl`, if their status is one of
    /// `statuses`.
    DefaultTtl {
        /// The fresh lifetime given.
        ttl: Duration,
        /// The statuses it is given to.
        statuses: StatusSet,
    },
    /// Forward without the cache.
    Bypass,
}

/// How a rule compares letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// `/API/Cart` matches `/api/cart` (the default: many upstreams route paths without
    /// regard to case, and a bypass must hold for every spelling they accept).
    Insensitive,
    /// Only the case written (`case_sensitive = true`).
    Sensitive,
}

/// One rule: a path prefix and its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Path prefix (`/api`) in the rule's matching form (lowercase for a case-insensitive
    /// rule), matched on whole segments (`/api` and `/api/x`, not `/apix`).
    pub prefix: String,
    /// What to do.
    pub action: RuleAction,
    /// How letters compare.
    pub case: Case,
}

impl Rule {
    /// Whether `path` falls under this rule.
    pub(crate) fn matches(&self, path: &RequestPath) -> bool {
        let forms = match self.case {
            Case::Insensitive => &path.folded,
            Case::Sensitive => &path.exact,
        };
        let prefix = self.prefix.trim_end_matches('/');
        forms.iter().any(|path| match path.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
            None => false,
        })
    }

    /// Whether this rule sends its paths around the cache.
    pub(crate) fn is_bypass(&self) -> bool {
        matches!(self.action, RuleAction::Bypass)
    }
}

/// A request path as rules see it: in two forms, for the two ways an upstream may read it.
/// A rule applies when either form falls under it.
///
/// The liberal form, because the upstream may take many spellings for one path and a rule
/// must match them all: every escape decoded, reserved ones too (`%2F`, `%5C`), as often as
/// escapes remain (`%252F`, up to a few rounds); `\` read as `/`; `;parameters` dropped from
/// each segment (`/cart;jsessionid=1`); trailing dots dropped from each segment (`/cart.`);
/// then dot segments resolved and repeated slashes merged. The same decoded, with its dot
/// segments as written: an upstream that decodes `%2F` but resolves no dots (a WSGI server)
/// routes `/cart%2F..%2Fx` under `/cart`. And the strict normal form of the cache key
/// (`cachelayer::http::path`), which the upstream receives: to an upstream that reads
/// `/cart/..;/x` or `/cart/%252e%252e/x` as written those are under `/cart`, though
/// decoding resolves them elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestPath {
    /// The liberal form, the decoded one with its dots, and the strict one.
    exact: [String; 3],
    /// The same, lowercase, for case-insensitive rules.
    folded: [String; 3],
}

impl RequestPath {
    /// The matching forms of a request's path.
    pub(crate) fn of(path: &str) -> Self {
        let decoded = decoded_path(path);
        let exact = [
            resolved(&decoded),
            decoded,
            normalize_path(path).into_owned(),
        ];
        let folded = exact.each_ref().map(|form| form.to_lowercase());
        Self { exact, folded }
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
    /// Wide integers, so a negative or huge one is reported with the rule's name.
    statuses: Option<Vec<i64>>,
    #[serde(default)]
    case_sensitive: bool,
}

const FLAG: &str = "--rules (CACHELAYER_PROXY_RULES)";
/// How many times escapes are decoded for matching.
const DECODE_ROUNDS: usize = 3;

/// The liberal matching form of a path (see [`RequestPath`]), case kept.
pub(crate) fn normalized_path(path: &str) -> String {
    resolved(&decoded_path(path))
}

/// `path` with every escape decoded (a few rounds), `\` read as `/`, `;parameters` and
/// trailing dots dropped from each segment, and empty segments dropped; its dot segments as
/// written.
fn decoded_path(path: &str) -> String {
    let mut decoded = path.to_owned();
    // A few rounds catch double and triple encoding; no upstream decodes deeper, and each
    // round costs the whole path (unbounded, `%252525...` would cost its length squared).
    for _ in 0..DECODE_ROUNDS {
        if !decoded.contains('%') {
            break;
        }
        let next = decode_escapes(&decoded).into_owned();
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let slashed = decoded.replace('\\', "/");
    let segments: Vec<&str> = slashed
        .split('/')
        .map(|segment| {
            let segment = segment.split(';').next().unwrap_or_default();
            match segment {
                "." | ".." => segment,
                // `cart.` and `cart..` are `cart` to servers that drop trailing dots.
                name => name.trim_end_matches('.'),
            }
        })
        .filter(|segment| !segment.is_empty())
        .collect();
    format!("/{}", segments.join("/"))
}

/// A decoded path with its dot segments resolved as the key's normal form resolves them,
/// without a trailing slash (which does not matter to a prefix).
fn resolved(decoded: &str) -> String {
    let normal = normalize_path(decoded);
    match normal.strip_suffix('/') {
        Some(bare) if !bare.is_empty() => bare.to_owned(),
        _ => normal.into_owned(),
    }
}

/// Read and check a rules file; the rules come back longest prefix first.
pub(crate) fn load_rules(path: &Path) -> Result<Vec<Rule>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Error::config(FLAG, format!("cannot read {}: {err}", path.display())))?;
    parse_rules(&text)
        .map_err(|problem| Error::config(FLAG, format!("{}: {problem}", path.display())))
}

pub(super) fn parse_rules(text: &str) -> Result<Vec<Rule>, String> {
    let file: RulesFile = toml::from_str(text).map_err(|err| err.to_string())?;
    let mut rules = Vec::with_capacity(file.rules.len());
    for (index, raw) in file.rules.into_iter().enumerate() {
        let name = format!("rule {} (path {:?})", index + 1, raw.path);
        if !raw.path.starts_with('/') {
            return Err(format!("{name}: path must start with /"));
        }
        if raw.path.contains(['*', '?', '#', '%', ';', '\\']) {
            return Err(format!(
                "{name}: path is a plain prefix (no wildcards, query, fragment, escapes, parameters or backslashes)"
            ));
        }
        let case = if raw.case_sensitive {
            Case::Sensitive
        } else {
            Case::Insensitive
        };
        // A plain prefix (checked above): its liberal and strict forms are one.
        let exact = normalized_path(&raw.path);
        let folded = exact.to_lowercase();
        // Compared without case whatever the rules say: two rules one request can match
        // equally would leave the winner to their order in the file.
        if rules
            .iter()
            .any(|rule: &Rule| rule.prefix.to_lowercase() == folded)
        {
            return Err(format!("{name}: another rule has the same path"));
        }
        let action = action(&name, raw.bypass, raw.default_ttl, raw.statuses)?;
        let prefix = match case {
            Case::Insensitive => folded,
            Case::Sensitive => exact,
        };
        rules.push(Rule {
            prefix,
            action,
            case,
        });
    }
    rules.sort_by_key(|rule| std::cmp::Reverse(rule.prefix.len()));
    Ok(rules)
}

/// A rule's action, from its `bypass`, `default_ttl` and `statuses`.
fn action(
    name: &str,
    bypass: bool,
    default_ttl: Option<String>,
    statuses: Option<Vec<i64>>,
) -> Result<RuleAction, String> {
    match (bypass, default_ttl) {
        (true, None) if statuses.is_some() => Err(format!(
            "{name}: statuses go with a default_ttl, not with bypass"
        )),
        (true, None) => Ok(RuleAction::Bypass),
        (false, Some(ttl)) => {
            let ttl = humantime::parse_duration(&ttl)
                .map_err(|err| format!("{name}: default_ttl {ttl:?}: {err}"))?;
            if ttl.is_zero() {
                return Err(format!(
                    "{name}: default_ttl must be more than 0 (use bypass = true)"
                ));
            }
            let statuses = match statuses {
                Some(codes) => status_set(name, &codes)?,
                None => DEFAULT_TTL_STATUSES,
            };
            Ok(RuleAction::DefaultTtl { ttl, statuses })
        }
        (true, Some(_)) => Err(format!("{name}: give bypass or default_ttl, not both")),
        (false, None) => Err(format!("{name}: give bypass = true or a default_ttl")),
    }
}

/// The `statuses` of a rule: each from 100 to 599, and one a cache can store.
fn status_set(name: &str, codes: &[i64]) -> Result<StatusSet, String> {
    if codes.is_empty() {
        return Err(format!(
            "{name}: statuses is empty; leave it out for 200, 203, 204, 301 and 308"
        ));
    }
    let mut checked = Vec::with_capacity(codes.len());
    for &code in codes {
        let status = u16::try_from(code)
            .ok()
            .filter(|code| (100..=599).contains(code))
            .ok_or_else(|| format!("{name}: status {code} is not from 100 to 599"))?;
        // Interim responses, parts of a body and answers to one client's validators are
        // never stored (RFC 9111 section 3): listing one would promise what cannot happen.
        if status < 200 || status == 206 || status == 304 {
            return Err(format!(
                "{name}: status {status} is never stored (1xx, 206 and 304 cannot be)"
            ));
        }
        checked.push(status);
    }
    Ok(StatusSet::of(&checked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_ttl(secs: u64) -> RuleAction {
        RuleAction::DefaultTtl {
            ttl: Duration::from_secs(secs),
            statuses: DEFAULT_TTL_STATUSES,
        }
    }

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
            [[rules]]
            path = "/Errors"
            default_ttl = "5s"
            statuses = [200, 404]
            case_sensitive = true
            "#,
        )
        .expect("valid");
        assert_eq!(rules[0].prefix, "/api/cart");
        assert_eq!(rules[0].action, RuleAction::Bypass);
        assert_eq!(rules[0].case, Case::Insensitive);
        assert_eq!(rules[1].prefix, "/Errors");
        assert_eq!(rules[1].case, Case::Sensitive);
        assert_eq!(
            rules[1].action,
            RuleAction::DefaultTtl {
                ttl: Duration::from_secs(5),
                statuses: StatusSet::of(&[200, 404]),
            }
        );
        assert_eq!(rules[2].action, default_ttl(30));
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
            (
                "[[rules]]\npath = \"/a\"\ndefault_ttl = \"1s\"\nstatuses = [200, 600]",
                "rule 1 (path \"/a\"): status 600 is not from 100 to 599",
            ),
            (
                "[[rules]]\npath = \"/a\"\ndefault_ttl = \"1s\"\nstatuses = [-1]",
                "rule 1 (path \"/a\"): status -1",
            ),
            (
                "[[rules]]\npath = \"/a\"\ndefault_ttl = \"1s\"\nstatuses = [304]",
                "status 304 is never stored",
            ),
            (
                "[[rules]]\npath = \"/a\"\ndefault_ttl = \"1s\"\nstatuses = []",
                "statuses is empty",
            ),
            (
                "[[rules]]\npath = \"/a\"\nbypass = true\nstatuses = [404]",
                "statuses go with a default_ttl",
            ),
            (
                "[[rules]]\npath = \"/a\"\ndefault_ttl = \"1s\"\nstatuses = [\"404\"]",
                "invalid type",
            ),
        ] {
            let err = parse_rules(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn globs_and_duplicates_are_refused() {
        for text in [
            "[[rules]]\npath = \"/api/*\"\nbypass = true",
            "[[rules]]\npath = \"/a;b\"\nbypass = true",
            "[[rules]]\npath = \"/a\"\nbypass = true\n[[rules]]\npath = \"/a/\"\nbypass = true",
            "[[rules]]\npath = \"/a\"\nbypass = true\n[[rules]]\npath = \"/A\"\nbypass = true\ncase_sensitive = true",
        ] {
            assert!(parse_rules(text).is_err(), "{text}");
        }
    }

    /// Every spelling an upstream may take for `/api/cart` matches its rule.
    #[test]
    fn paths_are_normalized_liberally_before_matching() {
        for spelling in [
            "/api/cart",
            "/api/%63art",
            "/api/car%74",
            "/api//cart/",
            "/api/x/../cart",
            "/api/cart;jsessionid=1",
            "/api;v=2/cart",
            "/api%2fcart",
            "/api%2Fcart",
            "/api%252fcart",
            "/api%5ccart",
            "/api\\cart",
            "/api/cart.",
            "/api/cart%2e",
            "/api/cart%2E%2E",
            "/api/cart%",
        ] {
            let expected = if spelling.ends_with('%') {
                "/api/cart%25"
            } else {
                "/api/cart"
            };
            assert_eq!(normalized_path(spelling), expected, "{spelling}");
        }
        assert_eq!(normalized_path("/api/cart/../x"), "/api/x");
        assert_eq!(
            normalized_path("/a%25252525"),
            "/a%25",
            "a few rounds of decoding, no more"
        );
        assert_eq!(normalized_path("/"), "/");
        assert_eq!(normalized_path("/é%41"), "/éA");
    }

    #[test]
    fn prefixes_match_whole_segments_and_case_as_told() {
        let rule = |prefix: &str, case| Rule {
            prefix: prefix.to_owned(),
            action: RuleAction::Bypass,
            case,
        };
        let api = rule("/api", Case::Insensitive);
        for path in ["/api", "/api/x", "/API/x", "/Api%2Fx"] {
            assert!(api.matches(&RequestPath::of(path)), "{path}");
        }
        for path in ["/apix", "/", "/ap"] {
            assert!(!api.matches(&RequestPath::of(path)), "{path}");
        }
        let exact = rule("/Api", Case::Sensitive);
        assert!(exact.matches(&RequestPath::of("/Api/x")));
        assert!(!exact.matches(&RequestPath::of("/api/x")));
        // Resolved elsewhere once decoded, but under /cart to an upstream that reads them
        // as written: either reading is enough.
        let cart = rule("/cart", Case::Insensitive);
        for path in [
            "/cart/..;/x",
            "/cart/%252e%252e/x",
            "/cart/.%252e/x",
            "/cart%2F..%2Fx",
            "/cart%2f%2e%2e%2fx",
            "/cart%5C..%5Cx",
        ] {
            assert!(cart.matches(&RequestPath::of(path)), "{path}");
        }
    }
}
