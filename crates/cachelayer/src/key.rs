//! Cache keys that are safe to build from untrusted input.
//!
//! A key is a list of parts joined by `:`. A part made only of `[A-Za-z0-9_.-]` and at most
//! [`MAX_VERBATIM_PART_BYTES`] long is kept as it is, so keys stay readable in `redis-cli`;
//! anything else (a `:` that could forge another key's structure, `*`, spaces, control bytes,
//! non-ASCII, long text) is replaced by `#` and 32 hex digits of its SHA-256. `#` never
//! appears in a verbatim part, so a hashed part can never collide with a verbatim one. A whole
//! key longer than [`MAX_KEY_BYTES`] is hashed as one part. This module must never let user
//! input choose where one key's parts end and another's begin.

use std::fmt;

use sha2::{Digest, Sha256};

/// Longest part kept verbatim.
pub const MAX_VERBATIM_PART_BYTES: usize = 64;
/// Longest relative key (namespace excluded) before the whole key is hashed.
pub const MAX_KEY_BYTES: usize = 200;

/// A cache key, relative to the cache's namespace.
///
/// ```
/// use cachelayer::Key;
///
/// assert_eq!(Key::new("product").part(42).as_str(), "product:42");
/// // Untrusted input cannot inject structure: the colon makes the part hashed.
/// let forged = Key::new("user").part("1:admin");
/// assert!(forged.as_str().starts_with("user:#"));
/// // A plain string is one key; its colons are kept when every character is safe.
/// assert_eq!(Key::from("product:42"), Key::new("product").part(42));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// A key of one part.
    pub fn new(first: impl fmt::Display) -> Self {
        Self(render_part(&first.to_string()))
    }

    /// Append a part; unsafe or long parts are hashed.
    pub fn part(mut self, part: impl fmt::Display) -> Self {
        self.0.push(':');
        self.0.push_str(&render_part(&part.to_string()));
        self
    }

    /// Append a part that is always hashed, whatever it holds: for secrets (tokens, emails)
    /// that must not be readable in the store.
    pub fn hashed_part(mut self, part: impl AsRef<[u8]>) -> Self {
        self.0.push(':');
        self.0.push_str(&hash(Domain::Part, part.as_ref()));
        self
    }

    /// Append the hash of a function call's serialized arguments (for `#[cached]`), in a
    /// hash domain of its own, so no template part can reproduce it.
    pub(crate) fn arguments_part(mut self, serialized: &[u8]) -> Self {
        self.0.push(':');
        self.0.push_str(&hash(Domain::Arguments, serialized));
        self
    }

    /// The rendered key (without namespace). A key longer than [`MAX_KEY_BYTES`] is hashed
    /// whole when it is used, not here, so parts can still be appended.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The final form: hashed whole when it grew past [`MAX_KEY_BYTES`].
    pub(crate) fn into_capped(self) -> String {
        if self.0.len() > MAX_KEY_BYTES {
            hash(Domain::WholeKey, self.0.as_bytes())
        } else {
            self.0
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A whole string as a key: kept when it is made of safe characters and `:`, hashed
/// otherwise. Use [`Key::new`] and [`Key::part`] when any piece comes from a user.
impl From<&str> for Key {
    fn from(raw: &str) -> Self {
        let readable =
            !raw.is_empty() && raw.len() <= MAX_KEY_BYTES && raw.split(':').all(is_verbatim);
        if readable {
            Self(raw.to_owned())
        } else {
            Self(hash(Domain::WholeKey, raw.as_bytes()))
        }
    }
}

impl From<String> for Key {
    fn from(raw: String) -> Self {
        Key::from(raw.as_str())
    }
}

impl From<&String> for Key {
    fn from(raw: &String) -> Self {
        Key::from(raw.as_str())
    }
}

impl From<&Key> for Key {
    fn from(key: &Key) -> Self {
        key.clone()
    }
}

fn is_verbatim(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= MAX_VERBATIM_PART_BYTES
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn render_part(part: &str) -> String {
    if is_verbatim(part) {
        part.to_owned()
    } else {
        hash(Domain::Part, part.as_bytes())
    }
}

/// What a hash stands for. Hashing a whole key and hashing one part of the same text must
/// differ, or a user could pass the rendered text of a long key as one part and land on it.
#[derive(Clone, Copy)]
enum Domain {
    Part,
    WholeKey,
    Arguments,
}

/// `#` and the first 128 bits of SHA-256 in hex: collision-resistant against chosen input,
/// which a fast non-cryptographic hash is not.
fn hash(domain: Domain, bytes: &[u8]) -> String {
    let label: &[u8] = match domain {
        Domain::Part => b"part\0",
        Domain::WholeKey => b"key\0",
        Domain::Arguments => b"args\0",
    };
    let digest = Sha256::new()
        .chain_update(label)
        .chain_update(bytes)
        .finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(33);
    out.push('#');
    for byte in &digest[..16] {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Characters that could change a key's structure or a pattern's meaning are never kept.
    #[test]
    fn unsafe_parts_are_hashed() {
        for raw in ["a:b", "*", "a b", "ü", "", "x\r\nSET", "#abc"] {
            let key = Key::new("p").part(raw);
            let tail = &key.as_str()[2..];
            assert!(
                tail.starts_with('#') && tail.len() == 33,
                "{raw:?} -> {key}"
            );
        }
    }

    /// Distinct inputs give distinct keys, and the same input always the same key.
    #[test]
    fn hashing_is_stable_and_distinct() {
        assert_eq!(Key::new("a").part("x y"), Key::new("a").part("x y"));
        assert_ne!(Key::new("a").part("x y"), Key::new("a").part("x  y"));
        assert_ne!(Key::new("a").hashed_part("1"), Key::new("a").part("1"));
    }

    /// A hashed part is the first 16 bytes of SHA-256 over its domain and bytes, in
    /// lowercase hex: pinned, so keys written by earlier releases are found again.
    #[test]
    fn hashed_parts_are_pinned() {
        let key = Key::new("http").hashed_part("/products/7");
        assert_eq!(key.as_str(), "http:#c8148e17015ce1ea0114c048b2691b63");
    }

    /// Long keys are capped by hashing the whole key.
    #[test]
    fn long_keys_are_capped() {
        let mut key = Key::new("k");
        for i in 0..40 {
            key = key.part(format!("part{i}"));
        }
        let capped = key.into_capped();
        assert_eq!(capped.len(), 33);
        let long_raw = "a".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(Key::from(long_raw.as_str()).as_str().len(), 33);
    }

    /// The rendered text of a long key, passed back as one part, does not reach that key.
    #[test]
    fn a_part_cannot_forge_a_capped_key() {
        let mut long = Key::new("k");
        for i in 0..40 {
            long = long.part(format!("part{i}"));
        }
        let rendered = long.as_str().to_owned();
        assert_ne!(long.into_capped(), Key::new(&rendered).into_capped());
    }

    /// Long parts are hashed even when their characters are safe.
    #[test]
    fn long_parts_are_hashed() {
        let part = "a".repeat(MAX_VERBATIM_PART_BYTES + 1);
        assert!(Key::new(part).as_str().starts_with('#'));
        let part = "a".repeat(MAX_VERBATIM_PART_BYTES);
        assert!(!Key::new(part).as_str().starts_with('#'));
    }
}
