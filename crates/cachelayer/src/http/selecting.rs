//! The normal form of a request's selecting header fields (RFC 9111 section 4.1): the
//! values of the fields a response's `Vary` names, made comparable so that equivalent
//! requests share a variant. Every field's list elements lose the whitespace around them;
//! the content-negotiation fields (`Accept`, `Accept-Charset`, `Accept-Encoding`,
//! `Accept-Language`) are also compared without case and in preference order, with their
//! quality values written one way.
//!
//! This module must never make two requests that may get different answers look alike: it
//! keeps the listed order of languages and media ranges of equal quality (origins commonly
//! pick the first listed; only codings and charsets, which servers choose among by their
//! own preference, are sorted), keeps media type parameter values as they are, and leaves
//! a value it cannot parse in its whitespace-only form.

use super::policy::split_outside_quotes;

/// The normal form of `value`, a request's field `name` (lowercase), its lines joined by
/// ", ".
pub(crate) fn normalize(name: &str, value: &str) -> String {
    let elements: Vec<&str> = split_outside_quotes(value)
        .into_iter()
        .map(str::trim)
        .filter(|element| !element.is_empty())
        .collect();
    let negotiated = match name {
        "accept" => negotiated(&elements, Case::MediaType, Ties::Listed),
        "accept-language" => negotiated(&elements, Case::Insensitive, Ties::Listed),
        "accept-charset" | "accept-encoding" => {
            negotiated(&elements, Case::Insensitive, Ties::Sorted)
        }
        _ => None,
    };
    negotiated.unwrap_or_else(|| elements.join(", "))
}

/// How much of an element compares without case.
#[derive(Clone, Copy)]
enum Case {
    /// The whole value (a language tag, a coding, a charset).
    Insensitive,
    /// The media range and parameter names, not parameter values.
    MediaType,
}

/// How elements of equal quality are ordered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ties {
    /// As the client listed them: the first is its preference.
    Listed,
    /// By their text: they are a set the server chooses from.
    Sorted,
}

/// The elements in preference order (quality descending, ties as `ties` says), each
/// written as `value;params[;q=N]`; `None` when a quality value is not one.
fn negotiated(elements: &[&str], case: Case, ties: Ties) -> Option<String> {
    if elements.iter().any(|element| element.contains('"')) {
        // Quoted strings (rare here, in media type parameters) are compared as sent:
        // reordering around them could change where they end.
        return None;
    }
    let mut weighted = Vec::with_capacity(elements.len());
    for element in elements {
        let mut pieces = element.split(';').map(str::trim);
        let value = pieces.next().unwrap_or_default();
        if value.is_empty() {
            // Parameters without a value: not a list element this module can read.
            return None;
        }
        // Tokens and media ranges alike compare without case.
        let mut written = value.to_ascii_lowercase();
        let mut quality = 1000;
        for parameter in pieces.filter(|p| !p.is_empty()) {
            let (key, argument) = parameter.split_once('=').unwrap_or((parameter, ""));
            let key = key.trim().to_ascii_lowercase();
            let argument = argument.trim();
            let token = |text: &str| !text.is_empty() && text.bytes().all(is_tchar);
            if !token(&key) {
                return None;
            }
            if key == "q" {
                quality = thousandths(argument)?;
                continue;
            }
            written.push(';');
            written.push_str(&key);
            if !argument.is_empty() {
                written.push('=');
                match case {
                    Case::Insensitive => written.push_str(&argument.to_ascii_lowercase()),
                    Case::MediaType => written.push_str(argument),
                }
            }
        }
        if quality != 1000 {
            written.push_str(&format!(";q={}", quality_text(quality)));
        }
        weighted.push((quality, written));
    }
    // Stable: under `Ties::Listed`, elements of equal quality keep the client's order.
    match ties {
        Ties::Listed => weighted.sort_by_key(|(quality, _)| std::cmp::Reverse(*quality)),
        Ties::Sorted => weighted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1))),
    }
    let written: Vec<String> = weighted.into_iter().map(|(_, element)| element).collect();
    Some(written.join(", "))
}

/// Whether `byte` may be part of a token (RFC 9110 section 5.6.2).
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A quality value (RFC 9110 section 12.4.2: 0 to 1, at most three decimals) in thousandths.
fn thousandths(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction_value = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(fraction_value),
        "1" if fraction_value == 0 => Some(1000),
        _ => None,
    }
}

/// Thousandths as the shortest quality value: `0.5`, `0.125`, `0`.
fn quality_text(thousandths: u16) -> String {
    let text = format!("0.{thousandths:03}");
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    trimmed.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equivalent spellings of a negotiation field are one value; different preferences
    /// are not.
    #[test]
    fn negotiation_fields_compare_by_meaning() {
        let same = |name: &str, a: &str, b: &str| {
            assert_eq!(normalize(name, a), normalize(name, b), "{a} / {b}");
        };
        same("accept-language", "en-US, fr;q=0.5", "fr;q=0.50 ,EN-us");
        same("accept-language", "de;q=1.0, en", "de,en");
        same("accept-encoding", "gzip,br", "br, gzip");
        same("accept-encoding", "GZIP;Q=0.5, br", "br, gzip;q=0.500");
        same(
            "accept",
            "Text/HTML;level=1, */*;q=0.1",
            "*/*;q=0.1,text/html; level=1",
        );
        assert_eq!(
            normalize("accept-language", "fr;q=0.5,EN-us"),
            "en-us, fr;q=0.5"
        );
        assert_eq!(normalize("accept-encoding", "br;q=0"), "br;q=0");
        // The listed order of equal preferences is the client's choice.
        assert_ne!(
            normalize("accept-language", "en, fr"),
            normalize("accept-language", "fr, en")
        );
        assert_ne!(
            normalize("accept-language", "en"),
            normalize("accept-language", "de")
        );
        // Parameter values of a media type keep their case.
        assert_ne!(
            normalize("accept", "text/plain;charset=A"),
            normalize("accept", "text/plain;charset=a")
        );
    }

    /// Other fields lose only the whitespace around their list elements; an unparseable
    /// quality leaves a negotiation field in that form too.
    #[test]
    fn other_fields_lose_whitespace_only() {
        assert_eq!(normalize("x-flavour", "a ,  b"), "a, b");
        assert_eq!(normalize("x-flavour", " A,b "), "A, b");
        assert_eq!(normalize("x-flavour", "\"a, b\" , c"), "\"a, b\", c");
        assert_eq!(normalize("accept-language", "en;q=2 , fr"), "en;q=2, fr");
        assert_eq!(normalize("accept-language", "en;q=0.5x"), "en;q=0.5x");
    }

    /// What the fuzz target found: elements without a value, parameters without a name and
    /// quoted strings keep their spelling (whitespace aside), so a normal form is its own.
    #[test]
    fn unreadable_negotiation_values_keep_their_spelling() {
        for (name, value) in [
            ("accept", "/,;"),
            ("accept", "a;="),
            ("accept-charset", "A,\"\",0\""),
        ] {
            let once = normalize(name, value);
            assert_eq!(normalize(name, &once), once, "{value}");
        }
        assert_eq!(normalize("accept", "a;="), "a;=");
    }
}
