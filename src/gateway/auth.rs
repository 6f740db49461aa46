//! Bearer tokens: the config holds SHA-256 digests only, and a presented token is hashed and
//! compared with every digest in constant time.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Shared;
use super::error::ApiError;

/// The accepted token digests. Empty: every request is let in.
#[derive(Debug, Clone, Default)]
pub struct TokenHashes(Vec<[u8; 32]>);

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

impl TokenHashes {
    /// From validated hex digests (invalid ones are skipped; `check` reports them).
    pub fn from_hex(digests: &[String]) -> Self {
        Self(digests.iter().filter_map(|d| parse_digest(d)).collect())
    }

    /// Whether any token is configured.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `token` hashes to one of the digests. Every digest is compared, each in
    /// constant time, so the answer's timing says nothing about which bytes matched.
    pub fn accepts(&self, token: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut matched = subtle::Choice::from(0u8);
        for digest in &self.0 {
            matched |= presented.ct_eq(digest);
        }
        matched.into()
    }
}

/// Middleware of the `/v1` routes: `401` without a valid `Authorization: Bearer` token, once
/// tokens are configured.
pub(super) async fn require_token(
    State(gateway): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    if !gateway.tokens.required() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(token) if gateway.tokens.accepts(token) => next.run(request).await,
        Some(_) => unauthorized("the bearer token is not valid"),
        None => unauthorized("an Authorization: Bearer <token> header is required"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer".parse().expect("header value"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn only_configured_tokens_are_accepted() {
        let tokens = TokenHashes::from_hex(&[digest_of("s3cret"), digest_of("other")]);
        assert!(tokens.required());
        assert!(tokens.accepts("s3cret"));
        assert!(tokens.accepts("other"));
        assert!(!tokens.accepts("s3cre"));
        assert!(!tokens.accepts(""));
        assert!(!TokenHashes::default().required());
    }

    #[test]
    fn digests_must_be_64_hex_digits() {
        assert!(parse_digest(&digest_of("x")).is_some());
        assert!(parse_digest("abc").is_none());
        assert!(parse_digest(&"g".repeat(64)).is_none());
        assert_eq!(redact_digest(&"a".repeat(64)), "aaaaaaaa… (64 characters)");
    }
}
