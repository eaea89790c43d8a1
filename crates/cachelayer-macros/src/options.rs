//! The options of `#[cached(...)]`, parsed and checked.
//!
//! Every mistake is a `syn::Error` spanned on the option at fault; this module must never
//! panic on user input.

use std::time::Duration;

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Meta, Token};

/// The option names, for the "unknown option" message.
const KNOWN: &str = "ttl, key, ignore, cache, stale, stale_while_revalidate, stale_if_error, early_refresh_beta, lock, lock_ttl, lock_max_wait, negative, unless";

/// One placeholder-or-text segment of a `key` template (segments are separated by `:`).
pub(crate) enum Segment {
    /// Fixed text, made only of characters a key keeps as they are.
    Text(String),
    /// `{argument}`.
    Argument(Ident),
}

/// A parsed `key = "..."` template.
pub(crate) struct KeyTemplate {
    pub(crate) literal: LitStr,
    pub(crate) segments: Vec<Segment>,
}

/// Everything `#[cached(...)]` was given.
#[derive(Default)]
pub(crate) struct CachedOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) key: Option<KeyTemplate>,
    pub(crate) ignore: Vec<Ident>,
    pub(crate) cache: Option<Expr>,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) early_refresh_beta: Option<f64>,
    pub(crate) lock: Option<bool>,
    pub(crate) lock_ttl: Option<Duration>,
    pub(crate) lock_max_wait: Option<Duration>,
    /// The negative TTL, and where it was written (it is only valid on `Option` results).
    pub(crate) negative: Option<(Duration, Span)>,
    pub(crate) unless: Option<Expr>,
}

impl Parse for CachedOptions {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated(input)?;
        let mut options = CachedOptions::default();
        for meta in metas {
            options.apply(meta)?;
        }
        Ok(options)
    }
}

impl CachedOptions {
    fn apply(&mut self, meta: Meta) -> syn::Result<()> {
        let name = meta
            .path()
            .get_ident()
            .map(Ident::to_string)
            .unwrap_or_default();
        if name == "ignore" {
            let list = meta.require_list()?;
            let names = list.parse_args_with(Punctuated::<Ident, Token![,]>::parse_terminated)?;
            self.ignore.extend(names);
            return Ok(());
        }
        let value = match &meta {
            Meta::NameValue(pair) => &pair.value,
            _ => {
                return Err(syn::Error::new(
                    meta.span(),
                    format!(
                        "unknown or malformed #[cached] option; write `name = value` (options: {KNOWN})"
                    ),
                ));
            }
        };
        match name.as_str() {
            "ttl" => {
                let ttl = duration(value)?;
                if ttl.is_zero() {
                    return Err(syn::Error::new(
                        value.span(),
                        "a zero TTL would cache nothing; remove #[cached] instead",
                    ));
                }
                self.ttl = Some(ttl);
            }
            "key" => self.key = Some(key_template(value)?),
            "cache" => self.cache = Some(value.clone()),
            "stale" => {
                let window = duration(value)?;
                self.stale_while_revalidate = Some(window);
                self.stale_if_error = Some(window);
            }
            "stale_while_revalidate" => self.stale_while_revalidate = Some(duration(value)?),
            "stale_if_error" => self.stale_if_error = Some(duration(value)?),
            "early_refresh_beta" => self.early_refresh_beta = Some(beta(value)?),
            "lock" => self.lock = Some(boolean(value)?),
            "lock_ttl" => self.lock_ttl = Some(duration(value)?),
            "lock_max_wait" => self.lock_max_wait = Some(duration(value)?),
            "negative" => self.negative = Some((duration(value)?, value.span())),
            "unless" => self.unless = Some(value.clone()),
            _ => {
                return Err(syn::Error::new(
                    meta.path().span(),
                    format!("unknown #[cached] option `{name}`; the options are: {KNOWN}"),
                ));
            }
        }
        Ok(())
    }
}

/// A duration: a string such as `"5m"`, `"30s"` or `"1h 30m"`, or an integer of seconds.
fn duration(value: &Expr) -> syn::Result<Duration> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(text),
            ..
        }) => {
            let parsed = humantime::parse_duration(&text.value()).map_err(|err| {
                syn::Error::new(
                    text.span(),
                    format!(
                        "invalid duration ({err}); write it like \"300ms\", \"30s\", \"5m\" or \"1h\""
                    ),
                )
            })?;
            if parsed.subsec_nanos() % 1_000_000 != 0 {
                return Err(syn::Error::new(
                    text.span(),
                    "durations are whole milliseconds; write at least \"1ms\"",
                ));
            }
            Ok(parsed)
        }
        Expr::Lit(ExprLit {
            lit: Lit::Int(seconds),
            ..
        }) => Ok(Duration::from_secs(seconds.base10_parse()?)),
        other => Err(syn::Error::new(
            other.span(),
            "expected a duration: a string such as \"5m\", or a whole number of seconds",
        )),
    }
}

fn beta(value: &Expr) -> syn::Result<f64> {
    let parsed = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Float(number),
            ..
        }) => number.base10_parse::<f64>()?,
        Expr::Lit(ExprLit {
            lit: Lit::Int(number),
            ..
        }) => number.base10_parse::<f64>()?,
        other => {
            return Err(syn::Error::new(
                other.span(),
                "expected a number such as 1.0",
            ));
        }
    };
    if (0.0..=100.0).contains(&parsed) {
        Ok(parsed)
    } else {
        Err(syn::Error::new(
            value.span(),
            "early_refresh_beta must be between 0 (off) and 100",
        ))
    }
}

fn boolean(value: &Expr) -> syn::Result<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(flag),
            ..
        }) => Ok(flag.value),
        other => Err(syn::Error::new(other.span(), "expected `true` or `false`")),
    }
}

/// `"product:{id}"`: segments separated by `:`, each fixed text (kept verbatim in the key,
/// so it may only use `A-Z a-z 0-9 _ - .`) or one `{argument}` (escaped at run time, so an
/// argument's value can never forge another key's structure).
fn key_template(value: &Expr) -> syn::Result<KeyTemplate> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(literal),
        ..
    }) = value
    else {
        return Err(syn::Error::new(
            value.span(),
            "expected a key template string such as \"product:{id}\"",
        ));
    };
    let text = literal.value();
    let mut segments = Vec::new();
    for part in text.split(':') {
        let segment = if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let ident = syn::parse_str::<Ident>(name).map_err(|_| {
                syn::Error::new(
                    literal.span(),
                    format!("`{{{name}}}` in the key template is not an argument name"),
                )
            })?;
            Segment::Argument(Ident::new(&ident.to_string(), literal.span()))
        } else if !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            Segment::Text(part.to_owned())
        } else {
            return Err(syn::Error::new(
                literal.span(),
                format!(
                    "key template segment `{part}` must be fixed text of A-Z, a-z, 0-9, '_', '-', '.' or exactly one {{argument}}; segments are separated by ':'"
                ),
            ));
        };
        segments.push(segment);
    }
    Ok(KeyTemplate {
        literal: literal.clone(),
        segments,
    })
}
