//! Bearer tokens: the config holds SHA-256 digests only, and a presented token is hashed and
//! compared with every digest in constant time.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Shared;
use super::digest::parse_digest;
use super::error::ApiError;

/// The accepted token digests. Empty: every request is let in.
#[derive(Debug, Clone, Default)]
pub struct TokenHashes(Vec<[u8; 32]>);

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

/// The token a browser's WebSocket offers as subprotocols (`new WebSocket(url, ["bearer",
/// token])`: browsers cannot set `Authorization` on a WebSocket); the server selects `bearer`.
fn subprotocol_token(request: &Request) -> Option<&str> {
    let offered = request
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?;
    let mut protocols = offered.split(',').map(str::trim);
    (protocols.next()? == "bearer").then(|| protocols.next())?
}

/// Middleware of the `/v1` routes: `401` without a valid `Authorization: Bearer` token (or, on
/// a WebSocket, the subprotocols `bearer, <token>`), once tokens are configured.
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
        .map(str::trim)
        .or_else(|| subprotocol_token(&request));
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
}
