//! Random tokens that must differ between processes: a lock's owner token, a tag's version,
//! a Vary marker's generation.
//!
//! 128 bits from the process's OS-seeded generator. It must never draw from a cache's
//! seedable source ([`crate::random`]), so two processes seeded alike for a test still mint
//! distinct tokens.

/// The length of every token.
pub(crate) const TOKEN_LEN: usize = 32;

/// A fresh random token: [`TOKEN_LEN`] lowercase hex digits.
pub(crate) fn random_token() -> String {
    format!("{:032x}", fastrand::u128(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens are 32 hex digits and do not repeat.
    #[test]
    fn tokens_are_distinct_hex() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
