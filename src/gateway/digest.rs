//! Token digests as the config writes them: SHA-256 in 64 hex digits. A leaf module, shared by
//! the settings' validation ([`super::config`]) and the token check ([`super::auth`]).

/// A 64-hex-digit digest as bytes, or `None`.
pub fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digest.trim(), &mut digest).ok()?;
    Some(digest)
}

/// A digest shortened for error messages (config values are echoed by `check`).
pub fn redact_digest(hex_digest: &str) -> String {
    let shown: String = hex_digest.chars().take(8).collect();
    format!("{shown}… ({} characters)", hex_digest.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn digests_must_be_64_hex_digits() {
        assert!(parse_digest(&hex::encode(Sha256::digest(b"x"))).is_some());
        assert!(parse_digest("abc").is_none());
        assert!(parse_digest(&"g".repeat(64)).is_none());
        assert_eq!(redact_digest(&"a".repeat(64)), "aaaaaaaa… (64 characters)");
    }
}
