//! Fuzz targets for what the proxy parses from outside: its rules file (`rules`, written by
//! an operator, read at start) and the request paths matched against those rules (sent by
//! any client). Each target is a `proptest` test named `fuzz_<what>`, running as many cases
//! as `CACHELAYER_FUZZ_CASES` says (a few hundred by default; `docs/testing.md`, "Fuzzing").
//!
//! Checked: any text parses or is refused without a panic; rules files written from rules
//! read back as those rules, and every mistake in one is refused; a rule matches its own
//! path, every spelling an upstream may take for a path under it, and no path beside it.
//! These targets must never touch the network or the file system, and never loosen a
//! property to hide a finding: one that cannot be fixed here is excepted by a `known_*`
//! item that describes it, to be removed with the fix.

use std::time::Duration;

use cachelayer::http::policy::{DEFAULT_TTL_STATUSES, StatusSet};
use cachelayer_testkit::fuzz::config;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::rules::{Case, RequestPath, Rule, RuleAction, normalized_path, parse_rules};

/// Characters a rule's path may not hold.
const FORBIDDEN: [char; 6] = ['*', '?', '#', '%', ';', '\\'];

/// One rule as an operator may write it, mistakes included.
#[derive(Debug, Clone)]
struct WrittenRule {
    path: String,
    default_ttl: Option<String>,
    bypass: Option<bool>,
    statuses: Option<Vec<i64>>,
    case_sensitive: Option<bool>,
    /// A field the file format does not have, or a value of the wrong type.
    stray: Option<&'static str>,
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn render(rules: &[WrittenRule]) -> String {
    let mut text = String::new();
    for rule in rules {
        text.push_str("[[rules]]\n");
        text.push_str(&format!("path = {}\n", toml_string(&rule.path)));
        if let Some(ttl) = &rule.default_ttl {
            text.push_str(&format!("default_ttl = {}\n", toml_string(ttl)));
        }
        if let Some(bypass) = rule.bypass {
            text.push_str(&format!("bypass = {bypass}\n"));
        }
        if let Some(codes) = &rule.statuses {
            let codes: Vec<String> = codes.iter().map(i64::to_string).collect();
            text.push_str(&format!("statuses = [{}]\n", codes.join(", ")));
        }
        if let Some(sensitive) = rule.case_sensitive {
            text.push_str(&format!("case_sensitive = {sensitive}\n"));
        }
        if let Some(stray) = rule.stray {
            text.push_str(stray);
            text.push('\n');
        }
    }
    text
}

/// Rule paths: plain prefixes (ASCII, non-ASCII, dots, trailing slashes) and the mistakes
/// the parser must refuse.
fn rule_path() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => vec("[a-zA-Z0-9_-]{1,6}|\\.[a-z]{1,3}|[a-z]{1,3}\\.|é|Ä", 0..4)
            .prop_map(|segments| format!("/{}", segments.join("/"))),
        1 => "/[a-zA-Z]{1,4}/?",
        1 => "[a-z]{1,5}",
        1 => prop::sample::select(vec!["/a/../b", "/./a", "/a//b", "/", "//", "/.."])
            .prop_map(str::to_owned),
        1 => ("/[a-z]{0,4}", prop::sample::select(FORBIDDEN.to_vec()), "[a-z]{0,3}")
            .prop_map(|(head, bad, tail)| format!("{head}{bad}{tail}")),
        1 => "/[ -~]{0,8}",
    ]
}

fn ttl_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (1u64..100_000, prop::sample::select(vec!["s", "ms", "m", "h", "d", "min", "sec"]))
            .prop_map(|(n, unit)| format!("{n}{unit}")),
        1 => Just("1h 30m".to_owned()),
        1 => prop::sample::select(vec!["0s", "0", "soon", "", "-1s", "1.5s", "99999999999999999999s", "1 fortnight"])
            .prop_map(str::to_owned),
        1 => "[ -~]{0,8}",
    ]
}

fn statuses() -> impl Strategy<Value = Vec<i64>> {
    vec(
        prop_oneof![
            4 => prop::sample::select(vec![200i64, 203, 204, 301, 308, 404, 410, 500, 599]),
            1 => prop::sample::select(vec![0i64, 100, 199, 206, 304, 600, 1000, -1, i64::MAX, i64::MIN]),
            1 => any::<i64>(),
        ],
        0..4,
    )
}

fn written_rule() -> impl Strategy<Value = WrittenRule> {
    (
        rule_path(),
        prop_oneof![Just(None), ttl_text().prop_map(Some)],
        prop_oneof![Just(None), any::<bool>().prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => statuses().prop_map(Some)],
        prop_oneof![Just(None), any::<bool>().prop_map(Some)],
        prop_oneof![
            12 => Just(None),
            1 => prop::sample::select(vec!["ttl = \"1s\"", "statuses = [\"404\"]", "bypass = \"yes\"", "path = \"/x\""])
                .prop_map(Some),
        ],
    )
        .prop_map(|(path, default_ttl, bypass, statuses, case_sensitive, stray)| WrittenRule {
            path,
            default_ttl,
            bypass,
            statuses,
            case_sensitive,
            stray,
        })
}

/// What a rule must be read as, or `Err` when it must be refused (an independent statement
/// of the rules file's documented format).
fn expected_action(rule: &WrittenRule) -> Result<RuleAction, ()> {
    if !rule.path.starts_with('/') || rule.path.contains(FORBIDDEN) || rule.stray.is_some() {
        return Err(());
    }
    match (rule.bypass.unwrap_or(false), &rule.default_ttl) {
        (true, None) if rule.statuses.is_none() => Ok(RuleAction::Bypass),
        (false, Some(ttl)) => {
            let ttl = humantime::parse_duration(ttl).map_err(|_| ())?;
            if ttl.is_zero() {
                return Err(());
            }
            let statuses = match &rule.statuses {
                None => DEFAULT_TTL_STATUSES,
                Some(codes) if codes.is_empty() => return Err(()),
                Some(codes) => {
                    let storable = |c: &i64| (200..=599).contains(c) && *c != 206 && *c != 304;
                    if !codes.iter().all(storable) {
                        return Err(());
                    }
                    let codes: Vec<u16> = codes
                        .iter()
                        .map(|c| u16::try_from(*c).expect("checked"))
                        .collect();
                    StatusSet::of(&codes)
                }
            };
            Ok(RuleAction::DefaultTtl { ttl, statuses })
        }
        _ => Err(()),
    }
}

/// The rules a file of `written` rules must be read as (longest prefix first, ties in file
/// order), or `Err` when it must be refused.
fn expected_rules(written: &[WrittenRule]) -> Result<Vec<Rule>, ()> {
    let mut rules: Vec<Rule> = Vec::new();
    for rule in written {
        let action = expected_action(rule)?;
        let exact = normalized_path(&rule.path);
        let folded = exact.to_lowercase();
        if rules.iter().any(|r| r.prefix.to_lowercase() == folded) {
            return Err(());
        }
        let sensitive = rule.case_sensitive.unwrap_or(false);
        rules.push(Rule {
            prefix: if sensitive { exact } else { folded },
            action,
            case: if sensitive {
                Case::Sensitive
            } else {
                Case::Insensitive
            },
        });
    }
    rules.sort_by_key(|rule| std::cmp::Reverse(rule.prefix.len()));
    Ok(rules)
}

/// What every accepted rules file must satisfy, whatever its text.
fn check_accepted(rules: &[Rule]) -> Result<(), TestCaseError> {
    for (i, rule) in rules.iter().enumerate() {
        prop_assert!(rule.prefix.starts_with('/'), "{:?}", rule);
        prop_assert!(!rule.prefix.contains(FORBIDDEN), "{:?}", rule);
        if rule.case == Case::Insensitive {
            prop_assert_eq!(&rule.prefix, &rule.prefix.to_lowercase());
        }
        // A rule matches its own path.
        prop_assert!(rule.matches(&RequestPath::of(&rule.prefix)), "{:?}", rule);
        if let Some(next) = rules.get(i + 1) {
            prop_assert!(rule.prefix.len() >= next.prefix.len());
        }
        for other in &rules[..i] {
            prop_assert_ne!(other.prefix.to_lowercase(), rule.prefix.to_lowercase());
        }
        if let RuleAction::DefaultTtl { ttl, statuses } = rule.action {
            prop_assert!(!ttl.is_zero());
            prop_assert!(
                statuses
                    .codes()
                    .all(|c| (200..=599).contains(&c) && c != 206 && c != 304)
            );
        }
    }
    Ok(())
}

/// How one character of a request path is written: as it is, or escaped once, twice or
/// three times (`a`, `%61`, `%2561`, `%252561`), a slash perhaps as a backslash.
#[derive(Debug, Clone, Copy)]
struct CharSpelling {
    depth: u8,
    upper: bool,
    backslash: bool,
}

fn char_spelling() -> impl Strategy<Value = CharSpelling> {
    (
        prop_oneof![6 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
        any::<bool>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(depth, upper, backslash)| CharSpelling {
            depth,
            upper,
            backslash,
        })
}

/// What a segment may carry that upstreams ignore: `;parameters`, trailing dots, and dot
/// segments or empty ones before it.
#[derive(Debug, Clone, Copy)]
struct SegmentSpelling {
    parameters: bool,
    trailing_dots: u8,
    /// Trailing spaces (`%20`), which Windows servers drop with trailing dots.
    trailing_spaces: u8,
    before: u8,
}

fn segment_spelling() -> impl Strategy<Value = SegmentSpelling> {
    (
        prop::bool::weighted(0.2),
        prop_oneof![6 => Just(0u8), 1 => 1u8..3],
        prop_oneof![12 => Just(0u8), 1 => 1u8..3],
        0u8..8,
    )
        .prop_map(
            |(parameters, trailing_dots, trailing_spaces, before)| SegmentSpelling {
                parameters,
                trailing_dots,
                trailing_spaces,
                before,
            },
        )
}

fn escape(c: char, depth: u8, upper: bool) -> String {
    let mut text = c.to_string();
    for _ in 0..depth {
        text = text
            .bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect();
    }
    text
}

/// `path` (which starts with `/`) as a client may write it; letters' case flipped too when
/// `fold`.
fn spell(path: &str, chars: &[CharSpelling], segments: &[SegmentSpelling], fold: bool) -> String {
    let mut out = String::new();
    let mut chars_how = chars.iter().cycle();
    for (i, (segment, how)) in path[1..]
        .split('/')
        .zip(segments.iter().cycle())
        .enumerate()
    {
        match how.before {
            1 => out.push_str("/."),
            2 => out.push_str("/x/.."),
            3 => out.push('/'),
            4 => out.push_str("/%2e"),
            _ => {}
        }
        let slash = chars_how.next().expect("cycled");
        // The path's own first slash stays as it is: a request target starts with one.
        out.push_str(&if i == 0 || !slash.backslash {
            "/".to_owned()
        } else if slash.depth == 0 {
            "\\".to_owned()
        } else {
            escape('\\', slash.depth, slash.upper)
        });
        for c in segment.chars() {
            let how = chars_how.next().expect("cycled");
            let c = if fold && how.upper && c.is_ascii_alphabetic() {
                if c.is_ascii_uppercase() {
                    c.to_ascii_lowercase()
                } else {
                    c.to_ascii_uppercase()
                }
            } else {
                c
            };
            // A request target is ASCII: anything else is always escaped.
            let depth = if c.is_ascii() {
                how.depth
            } else {
                how.depth.max(1)
            };
            out.push_str(&escape(c, depth, how.upper));
        }
        if !segment.is_empty() {
            out.push_str(&".".repeat(usize::from(how.trailing_dots)));
            out.push_str(&"%20".repeat(usize::from(how.trailing_spaces)));
            if how.parameters {
                out.push_str(";jsessionid=1");
            }
        }
    }
    out
}

/// A finding this target made that cannot be fixed from here: trailing dots are dropped from
/// each segment for matching (`/cart.`), but not trailing spaces (`/cart%20`), which Windows
/// servers drop together with dots, so a bypass of `/api/cart` does not hold for
/// `/api/cart%20` in front of such an upstream. Remove this exception once `rules.rs` drops
/// trailing spaces too.
fn known_trailing_spaces<'a>(mut used: impl Iterator<Item = &'a SegmentSpelling>) -> bool {
    used.any(|how| how.trailing_spaces > 0)
}

/// A rule of `prefix` (written as a rules file would), read by the parser.
fn parsed_rule(prefix: &str, sensitive: bool) -> Rule {
    let text = format!(
        "[[rules]]\npath = {}\nbypass = true\ncase_sensitive = {sensitive}\n",
        toml_string(prefix)
    );
    let mut rules = parse_rules(&text).expect("a valid rule");
    rules.pop().expect("one rule")
}

proptest! {
    #![proptest_config(config())]

    /// Any text, TOML or not, is read or refused without a panic; what is read satisfies
    /// every rule of the format.
    #[test]
    fn fuzz_rules_file_parses_any_text(
        text in prop_oneof![
            ".{0,120}",
            vec(prop_oneof![
                Just("[[rules]]\n".to_owned()),
                Just("[rules]\n".to_owned()),
                "path = \"/[ -~]{0,10}\"\n",
                "default_ttl = \"[0-9a-z ]{0,6}\"\n",
                "(bypass|case_sensitive) = (true|false|1)\n",
                "statuses = \\[(-?[0-9]{1,4}, ?){0,3}\\]\n",
                "[ -~]{0,12}\n",
            ], 0..12).prop_map(|lines| lines.concat()),
        ],
    ) {
        if let Ok(rules) = parse_rules(&text) {
            check_accepted(&rules)?;
        }
    }

    /// A rules file written from rules (any mix of valid ones and mistakes) reads back as
    /// exactly those rules, longest prefix first, or is refused when any rule is wrong.
    #[test]
    fn fuzz_rules_file_reads_as_written(written in vec(written_rule(), 0..5)) {
        let text = render(&written);
        let parsed = parse_rules(&text);
        match expected_rules(&written) {
            Ok(expected) => {
                let rules = parsed.map_err(|err| TestCaseError::fail(format!("{text}\nrefused: {err}")))?;
                prop_assert_eq!(&rules, &expected, "{}", text);
                check_accepted(&rules)?;
            }
            Err(()) => prop_assert!(parsed.is_err(), "{}\naccepted: {:?}", text, parsed),
        }
    }

    /// Valid rules files damaged by a few edits are read or refused without a panic, and
    /// what is read satisfies every rule of the format.
    #[test]
    fn fuzz_rules_file_damaged(
        written in vec(written_rule(), 1..4),
        edits in vec((any::<Index>(), prop_oneof![Just(None), "[ -~\n]".prop_map(Some)]), 1..6),
    ) {
        let mut text: Vec<char> = render(&written).chars().collect();
        for (at, replacement) in edits {
            if text.is_empty() {
                break;
            }
            let at = at.index(text.len());
            match replacement {
                Some(c) => text[at] = c.chars().next().expect("one char"),
                None => {
                    text.remove(at);
                }
            }
        }
        let text: String = text.into_iter().collect();
        if let Ok(rules) = parse_rules(&text) {
            check_accepted(&rules)?;
        }
    }

    /// A rule matches every spelling an upstream may take for a path under its prefix:
    /// escapes up to three levels deep, backslashes, `;parameters`, trailing dots, dot and
    /// empty segments, and (unless case-sensitive) letters in any case; and never a path
    /// that only starts with the same letters.
    #[test]
    fn fuzz_rules_match_every_spelling(
        prefix in vec("[a-zA-Z0-9_-]{1,5}|[a-z]{1,2}\\.[a-z]{1,2}|é", 1..4)
            .prop_map(|segments| format!("/{}", segments.join("/"))),
        rest in vec("[a-z0-9]{1,4}", 0..3),
        sensitive in any::<bool>(),
        chars in vec(char_spelling(), 1..16),
        segments in vec(segment_spelling(), 1..6),
        beside in "[a-z0-9]{1,3}",
    ) {
        let rule = parsed_rule(&prefix, sensitive);
        let mut path = prefix.clone();
        for segment in &rest {
            path.push('/');
            path.push_str(segment);
        }
        let spelled = spell(&path, &chars, &segments, !sensitive);
        let matched = rule.matches(&RequestPath::of(&spelled));
        let count = path[1..].split('/').count();
        if !known_trailing_spaces(segments.iter().cycle().take(count)) {
            prop_assert!(matched, "{:?} does not match {}", rule, spelled);
        }
        // The last segment made longer is another path.
        let other = format!("{prefix}{beside}");
        prop_assert!(!rule.matches(&RequestPath::of(&other)), "{:?} matches {}", rule, other);
    }

    /// Any request path, escapes and all, is read into its matching forms without a panic.
    #[test]
    fn fuzz_request_paths_read(
        path in prop_oneof![
            ".{0,40}",
            "/[ -~]{0,60}",
            vec(prop_oneof!["%[0-9a-fA-F]{0,2}", "%25", "/", "\\.", "\\.\\.", ";", "\\\\", "[a-z]{1,3}"], 0..20)
                .prop_map(|pieces| format!("/{}", pieces.concat())),
        ],
        prefix in "/[a-z]{0,4}",
    ) {
        let request = RequestPath::of(&path);
        let rule = parsed_rule(&prefix, false);
        let _ = rule.matches(&request);
        let _ = normalized_path(&path);
    }
}

/// Expected default: a rule without `statuses` applies its TTL to the default statuses
/// (a fixed case beside the fuzzed ones, so the model above cannot drift from it).
#[test]
fn rules_default_to_the_default_statuses() {
    let rules = parse_rules("[[rules]]\npath = \"/a\"\ndefault_ttl = \"5s\"\n").expect("valid");
    assert_eq!(
        rules[0].action,
        RuleAction::DefaultTtl {
            ttl: Duration::from_secs(5),
            statuses: DEFAULT_TTL_STATUSES,
        }
    );
}
