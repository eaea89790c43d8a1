//! Percent-encodings (RFC 3986 section 2.1) in their normal form (sections 2.3 and
//! 6.2.2.1), for everything that keys a URL: the path's normal form (`path`) and each query
//! parameter's name and value as keys hold them (`key`). One copy, so a path and a query
//! never disagree on what an escape is.
//!
//! The normal form: escapes of unreserved characters decoded (`%69` is `i`), the hex of
//! other escapes uppercase (`%2f` is `%2F`). This module must never decode an escape of a
//! reserved character (`%2F` is not `/`, `%26` not `&`), nor change anything outside
//! escapes (`+` stays `+`): either changes what a URL means.

/// What normalizing the escapes of a text would do to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Escapes {
    /// Nothing: no escape, or only escapes already in the normal form.
    Normal,
    /// Decode or uppercase at least one escape.
    Changes,
    /// A `%` starts no escape (`100%`, `%zz`): the text is no valid URL component.
    Malformed,
}

/// How the escapes of `text` stand, without allocating.
pub(super) fn judge(text: &str) -> Escapes {
    if !text.contains('%') {
        return Escapes::Normal;
    }
    let bytes = text.as_bytes();
    let mut judged = Escapes::Normal;
    for (at, _) in text.match_indices('%') {
        match escaped_byte(&bytes[at..]) {
            None => return Escapes::Malformed,
            Some(byte) if is_unreserved(byte) || bytes[at + 1..at + 3] != hex(byte) => {
                judged = Escapes::Changes;
            }
            Some(_) => {}
        }
    }
    judged
}

/// `text` with escapes of unreserved characters decoded, other escapes with uppercase hex,
/// and a `%` that starts no escape written `%25` (so the result is well formed and
/// normalizing it again changes nothing).
pub(super) fn normalize_escapes(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'%' {
            // Copy up to the next `%` as it is (it may hold UTF-8 of more than a byte).
            let next = text[at..].find('%').map_or(text.len(), |i| at + i);
            out.push_str(&text[at..next]);
            at = next;
            continue;
        }
        match escaped_byte(&bytes[at..]) {
            Some(byte) if is_unreserved(byte) => out.push(char::from(byte)),
            Some(byte) => {
                out.push('%');
                out.extend(hex(byte).map(char::from));
            }
            None => {
                out.push_str("%25");
                at += 1;
                continue;
            }
        }
        at += 3;
    }
    out
}

/// The byte a `%XX` at the start of `bytes` stands for, if it is one.
pub(super) fn escaped_byte(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [b'%', high, low, ..] => {
            let digit = |b: u8| char::from(b).to_digit(16);
            let value = digit(*high)? * 16 + digit(*low)?;
            u8::try_from(value).ok()
        }
        _ => None,
    }
}

/// Unreserved characters (RFC 3986 section 2.3): their escapes and themselves are one.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// The two uppercase hex digits of `byte`.
fn hex(byte: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    [
        DIGITS[usize::from(byte >> 4)],
        DIGITS[usize::from(byte & 0xF)],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocation-free judgement agrees with the normalization it stands for.
    #[test]
    fn judging_agrees_with_normalizing() {
        for text in [
            "", "limit", "l%69mit", "%2F", "%2f", "%C3%A9", "%c3%A9", "a+b", "%20", "100%", "%zz",
            "%4", "%41%", "%7E", "%7e", "%25",
        ] {
            let expected = if escaped_byte_everywhere(text) {
                if normalize_escapes(text) == text {
                    Escapes::Normal
                } else {
                    Escapes::Changes
                }
            } else {
                Escapes::Malformed
            };
            assert_eq!(judge(text), expected, "{text:?}");
        }
    }

    fn escaped_byte_everywhere(text: &str) -> bool {
        let bytes = text.as_bytes();
        text.match_indices('%')
            .all(|(at, _)| escaped_byte(&bytes[at..]).is_some())
    }

    /// Unreserved escapes are decoded, reserved ones kept with uppercase hex, `+` untouched.
    #[test]
    fn escapes_are_normalized() {
        assert_eq!(normalize_escapes("l%69mit=%35"), "limit=5");
        assert_eq!(normalize_escapes("%2d%2E%5F%7e"), "-._~");
        assert_eq!(normalize_escapes("a%2fb%26c"), "a%2Fb%26c");
        assert_eq!(normalize_escapes("a+b%20c"), "a+b%20c");
        assert_eq!(normalize_escapes("é%41%"), "éA%25");
    }
}
