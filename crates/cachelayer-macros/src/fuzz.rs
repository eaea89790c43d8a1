//! Fuzz targets for what `#[cached]` parses from its user: the options of the attribute and,
//! above all, the `key` template (`options`), and the expansion built from them (`expand`).
//! Each target is a `proptest` test named `fuzz_<what>`, running as many cases as
//! `CACHELAYER_FUZZ_CASES` says (a few hundred by default; `docs/testing.md`, "Fuzzing").
//!
//! Checked: any template text and any attribute tokens are accepted or refused with a
//! `syn::Error`, never a panic (a panic in a proc macro is an unspanned compiler error); a
//! template is accepted exactly when each segment is fixed text or one `{argument}`, and
//! reads back as written; every accepted attribute expands to valid Rust; the keys a template
//! makes keep distinct argument values apart. These targets must never depend on a running
//! cache, and never loosen a property to hide a finding: one that cannot be fixed here is
//! excepted by a `known_*` item that describes it, to be removed with the fix.

use cachelayer_testkit::fuzz::config;
use proc_macro2::{Span, TokenStream};
use proptest::collection::vec;
use proptest::prelude::*;
use quote::quote;
use syn::{Ident, ItemFn, LitStr};

use crate::expand::expand;
use crate::options::{CachedOptions, Segment};
use crate::signature::analyse;

/// The options of `#[cached(key = "<template>")]`, as the attribute parser reads them.
fn parse_template(template: &str) -> syn::Result<CachedOptions> {
    let literal = LitStr::new(template, Span::call_site());
    syn::parse2::<CachedOptions>(quote!(key = #literal))
}

/// Whether the template grammar (segments separated by `:`, each fixed text of
/// `A-Z a-z 0-9 _ - .` or exactly one `{argument}`) accepts `template`.
fn grammar_accepts(template: &str) -> bool {
    template.split(':').all(
        |part| match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) => syn::parse_str::<Ident>(name).is_ok(),
            None => {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            }
        },
    )
}

/// A finding this target made that cannot be fixed from here: a placeholder naming a raw
/// identifier (`{r#type}`, for an argument `r#type: u32`) is accepted by the grammar, then
/// rebuilt with `Ident::new("r#type", ..)`, which panics: the user gets "proc macro
/// panicked" instead of a spanned error or a working key. Remove this exception once
/// `options.rs` keeps the parsed identifier (or refuses raw ones with an error).
fn known_raw_identifier(template: &str) -> bool {
    template.split(':').any(|part| {
        part.strip_prefix('{')
            .and_then(|p| p.strip_suffix('}'))
            .and_then(|name| syn::parse_str::<Ident>(name).ok())
            .is_some_and(|ident| ident.to_string().starts_with("r#"))
    })
}

/// A template segment as a user may write it.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_.-]{1,8}",
        4 => argument_name().prop_map(|name| format!("{{{name}}}")),
        1 => prop::sample::select(vec![
            "", "{}", "{ id }", "{id", "id}", "{{id}}", "{1}", "{type}", "{self}", "{_}",
            "{a b}", "{a::b}", "{é}", "{r#type}", "{id/*c*/}", "a b", "*", "é", "{id}x",
        ])
        .prop_map(str::to_owned),
        1 => "[ -~]{0,6}",
    ]
}

/// Argument names: plain ones, and the forms Rust allows or refuses.
fn argument_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["id", "user_id", "page", "q", "_x", "name2", "Id"])
            .prop_map(str::to_owned),
        1 => "[a-z_][a-z0-9_]{0,6}",
    ]
}

fn template() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => vec(segment(), 1..5).prop_map(|segments| segments.join(":")),
        1 => ".{0,24}",
    ]
}

/// A function whose arguments are `names` (`u32` each), and whose result is `Option<u32>`
/// when `optional`.
fn function(names: &[String], optional: bool) -> ItemFn {
    // Only names Rust takes for an argument (not `fn`, not `_`).
    let usable = names
        .iter()
        .filter(|name| *name != "cache" && syn::parse_str::<Ident>(name).is_ok());
    let arguments = usable.map(|name| {
        let name = Ident::new(name, Span::call_site());
        quote!(#name: u32)
    });
    let output = if optional {
        quote!(Option<u32>)
    } else {
        quote!(u32)
    };
    syn::parse2(quote! {
        async fn load(cache: &::cachelayer::Cache, #(#arguments),*) -> #output {
            ::core::default::Default::default()
        }
    })
    .expect("a function")
}

/// The key a template makes for these argument values, built as its expansion builds it.
fn key_of(segments: &[Segment], values: &[(String, String)]) -> String {
    let rendered = |segment: &Segment| match segment {
        Segment::Text(text) => text.clone(),
        Segment::Argument(name) => {
            let value = values
                .iter()
                .find(|(n, _)| *name == n.as_str())
                .map(|(_, v)| v)
                .expect("a value for each argument");
            cachelayer::__private::key_template_argument(value)
        }
    };
    let mut parts = segments.iter().map(rendered);
    let first = parts.next().unwrap_or_default();
    let key = parts.fold(cachelayer::Key::new(first), |key, part| key.part(part));
    key.as_str().to_owned()
}

/// Option lists as users write them, right and wrong.
fn attribute_text() -> impl Strategy<Value = String> {
    let option = prop_oneof![
        (1u64..1_000_000).prop_map(|n| format!("ttl = {n}")),
        "[0-9]{1,4}(ms|s|m|h|d)".prop_map(|d| format!("ttl = \"{d}\"")),
        prop::sample::select(vec![
            "ttl = 0",
            "ttl = \"0s\"",
            "ttl = \"1ns\"",
            "ttl = \"soon\"",
            "ttl = 99999999999999999999",
            "ttl = \"99999999999999999999y\"",
            "ttl = -1",
            "ttl = 1.5",
            "ttl",
            "ttl(5)",
            "stale = \"30s\"",
            "stale_while_revalidate = 5",
            "stale_if_error = \"1m\"",
            "early_refresh_beta = 1.0",
            "early_refresh_beta = 1e400",
            "early_refresh_beta = -1",
            "early_refresh_beta = true",
            "lock = true",
            "lock = 1",
            "lock_ttl = \"5s\"",
            "lock_max_wait = 1",
            "negative = \"10s\"",
            "unless = |v: &u32| *v == 0",
            "unless = ",
            "ignore(page)",
            "ignore(nope)",
            "ignore = page",
            "ignore()",
            "cache = cache",
            "cache = &STATE.cache",
            "unknown = 1",
            "a::b = 1",
        ])
        .prop_map(str::to_owned),
        template().prop_map(|t| format!("key = {}", quote!(#t))),
    ];
    vec(option, 0..5).prop_map(|options| options.join(", "))
}

proptest! {
    #![proptest_config(config())]

    /// Any template text is accepted or refused with an error, never a panic; it is
    /// accepted exactly when the grammar says, and an accepted template reads back as
    /// written, segment by segment.
    #[test]
    fn fuzz_key_template_parses_any_text(template in template()) {
        if known_raw_identifier(&template) {
            return Ok(());
        }
        let parsed = parse_template(&template);
        prop_assert_eq!(parsed.is_ok(), grammar_accepts(&template), "{:?}", template);
        let Ok(options) = parsed else {
            return Ok(());
        };
        let key = options.key.expect("a key template");
        let parts: Vec<&str> = template.split(':').collect();
        prop_assert_eq!(key.segments.len(), parts.len());
        for (segment, part) in key.segments.iter().zip(parts) {
            match segment {
                Segment::Text(text) => prop_assert_eq!(text.as_str(), part),
                Segment::Argument(name) => {
                    let inner = &part[1..part.len() - 1];
                    let written = syn::parse_str::<Ident>(inner).expect("an identifier");
                    prop_assert_eq!(name.to_string(), written.to_string());
                }
            }
        }
    }

    /// An accepted template expands, with a function holding its arguments, to valid Rust;
    /// one naming an argument the function lacks is refused with an error.
    #[test]
    fn fuzz_key_template_expands(
        template in vec(segment(), 1..5).prop_map(|s| s.join(":")),
        extra in vec(argument_name(), 0..2),
        drop_one in any::<bool>(),
    ) {
        if known_raw_identifier(&template) {
            return Ok(());
        }
        let Ok(options) = parse_template(&template) else {
            return Ok(());
        };
        let mut names: Vec<String> = Vec::new();
        for segment in &options.key.as_ref().expect("a key template").segments {
            if let Segment::Argument(name) = segment {
                names.push(name.to_string());
            }
        }
        let named = !names.is_empty();
        if drop_one {
            names.pop();
        }
        names.extend(extra.into_iter().filter(|n| syn::parse_str::<Ident>(n).is_ok()));
        names.push("cache".to_owned());
        names.sort();
        names.dedup();
        let function = function(&names, false);
        let analysed = analyse(&function).expect("an async fn");
        let all_named = options
            .key
            .as_ref()
            .expect("a key template")
            .segments
            .iter()
            .all(|s| !matches!(s, Segment::Argument(n) if !names.iter().any(|m| *n == m.as_str())));
        match expand(options, function, analysed) {
            Ok(tokens) => {
                prop_assert!(all_named, "expanded with a missing argument: {}", template);
                let file = syn::parse2::<syn::File>(tokens.clone());
                prop_assert!(file.is_ok(), "{}\n{}", template, tokens);
            }
            Err(err) => {
                prop_assert!(named && !all_named, "{}: {}", template, err);
                prop_assert!(err.to_string().contains("not an argument"));
            }
        }
    }

    /// The keys a template makes keep argument values apart: distinct values (colons,
    /// `#`, long text, text shaped like a hashed part) never make the same key.
    #[test]
    fn fuzz_key_templates_keep_arguments_apart(
        segments in vec(prop_oneof!["[a-z]{1,6}", "\\{(a|b|c)\\}"], 1..5),
        values in vec(
            prop_oneof![
                ".{0,12}",
                "[a-z0-9:#.-]{0,12}",
                "[a-z]{60,70}",
                "#[0-9a-f]{32}",
            ],
            6,
        ),
    ) {
        let template = segments.join(":");
        let options = parse_template(&template).expect("a valid template");
        let segments = options.key.expect("a key template").segments;
        let first: Vec<(String, String)> = ["a", "b", "c"]
            .iter()
            .zip(&values[..3])
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect();
        let second: Vec<(String, String)> = ["a", "b", "c"]
            .iter()
            .zip(&values[3..])
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect();
        let used = |values: &[(String, String)]| -> Vec<String> {
            segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Argument(name) => values
                        .iter()
                        .find(|(n, _)| *name == n.as_str())
                        .map(|(_, v)| v.clone()),
                    Segment::Text(_) => None,
                })
                .collect()
        };
        let same_values = used(&first) == used(&second);
        let same_key = key_of(&segments, &first) == key_of(&segments, &second);
        prop_assert_eq!(same_key, same_values, "{} with {:?} and {:?}", template, first, second);
    }

    /// Any attribute tokens (every option, right and wrong) are accepted or refused with an
    /// error, never a panic; what is accepted for a matching function expands to valid Rust.
    #[test]
    fn fuzz_cached_options_parse_and_expand(text in prop_oneof![attribute_text(), "[ -~]{0,40}"], optional in any::<bool>()) {
        let Ok(tokens) = text.parse::<TokenStream>() else {
            return Ok(());
        };
        if text.contains("r#") {
            // A raw identifier may reach a placeholder: see `known_raw_identifier`.
            return Ok(());
        }
        let Ok(options) = syn::parse2::<CachedOptions>(tokens) else {
            return Ok(());
        };
        let names = ["id".to_owned(), "page".to_owned(), "q".to_owned()];
        let function = function(&names, optional);
        let analysed = analyse(&function).expect("an async fn");
        if let Ok(expanded) = expand(options, function, analysed) {
            let file = syn::parse2::<syn::File>(expanded.clone());
            prop_assert!(file.is_ok(), "{}\n{}", text, expanded);
        }
    }
}
