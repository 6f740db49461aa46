//! Refusals: every non-2xx answer of the gateway is a JSON body naming the problem.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::audio::DecodeError;
use crate::audio::wav::WavDecodeError;

/// A refused request: the status, a short machine-readable reason and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Short reason (`ragged_payload`, `missing_start_sample`, `queue_full`, …).
    pub reason: &'static str,
    /// What was wrong, in words.
    pub message: String,
    /// `Retry-After` seconds, for `429` and `503`.
    pub retry_after_secs: Option<u64>,
}

/// A query or header value parsed as `T` (surrounding spaces ignored), or
/// [`ApiError::bad_parameter`] naming it and saying what it must be (`expected`).
pub fn parse_parameter<T: std::str::FromStr>(
    name: &str,
    text: &str,
    expected: &str,
) -> Result<T, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| ApiError::bad_parameter(name, text, expected))
}

/// The JSON body of a refusal.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    /// `400 Bad Request`.
    pub fn bad_request(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason, message)
    }

    /// `400 bad_parameter`: the query or header value `text` of `name`, and what is wrong.
    pub fn bad_parameter(name: &str, text: &str, problem: &str) -> Self {
        Self::bad_request("bad_parameter", format!("{name} = {text:?}: {problem}"))
    }

    /// An answer with `status`.
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// `429` or `503` with `Retry-After`.
    pub fn retry_later(
        status: StatusCode,
        reason: &'static str,
        message: impl Into<String>,
        retry_after_secs: u64,
    ) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(status, reason, message)
        }
    }
}

impl From<DecodeError> for ApiError {
    /// The decoder's own checks: the worker would dead-letter this message, so it is refused.
    fn from(error: DecodeError) -> Self {
        Self::bad_request(error.reason(), error.to_string())
    }
}

impl From<WavDecodeError> for ApiError {
    /// A WAV body that cannot be decoded: `400 bad_wav`, with the reader's reason.
    fn from(error: WavDecodeError) -> Self {
        Self::bad_request("bad_wav", error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.reason,
                message: &self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
