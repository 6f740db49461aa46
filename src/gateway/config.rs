//! `[gateway]`: the settings of `specflow gateway`, their defaults and their validation.
//!
//! A leaf of the gateway: the settings tree ([`crate::config`]) uses it, and it uses nothing
//! that uses the settings tree.

use serde::{Deserialize, Deserializer, Serialize};
use std::net::SocketAddr;

use super::digest::{parse_digest, redact_digest};
use crate::audio::InputConfig;
use crate::validation::Problem;

/// `[gateway]`: the HTTP front door (`specflow gateway`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Listen address. Loopback by default; any other address needs `tokens`.
    pub address: String,
    /// Largest accepted request body, in bytes (larger: `413`).
    pub max_body_bytes: usize,
    /// Largest chunk produced to Kafka, in bytes of PCM; a larger body is split, in order,
    /// with `audio.start_sample` advancing. `input.max_message_bytes` caps it (the smaller of
    /// the two is used); keep it below the broker's `message.max.bytes` (1 MB by default).
    pub max_chunk_bytes: usize,
    /// SHA-256 digests (64 hex digits) of the accepted bearer tokens. Empty: no token needed,
    /// which is allowed only on a loopback `address`. In the environment:
    /// `SPECFLOW__GATEWAY__TOKENS=<hex>,<hex>`.
    #[serde(alias = "token_sha256", deserialize_with = "list_or_comma_separated")]
    pub tokens: Vec<String>,
    /// How long a chunk may wait for the broker's acknowledgement, in milliseconds, before the
    /// request fails with `503` (the producer's `message.timeout.ms`).
    pub delivery_timeout_ms: u64,
    /// Producer queue bound, in kilobytes (`queue.buffering.max.kbytes`): when it is full,
    /// requests are refused with `429` instead of buffered.
    pub queue_max_kbytes: u64,
    /// Producer `linger.ms`.
    pub linger_ms: u64,
    /// `Retry-After` of `429` and `503` answers, in seconds.
    pub retry_after_secs: u64,
    /// Most frames in one page of the features endpoint (larger `limit`s are clamped).
    pub max_page_frames: usize,
    /// How often a WebSocket session reports its durable sample count, in milliseconds.
    pub ws_ack_interval_ms: u64,
    /// Most clients of the live feed (`/v1/streams/{id}/features/live`) at once; one more is
    /// refused with `503 too_many_live_clients`. Each holds a Kafka consumer of its own.
    pub live_max_clients: usize,
    /// Output records a live client may have waiting to be sent; one more and the client is
    /// disconnected (`slow_client`) instead of buffered without bound.
    pub live_queue_records: usize,
    /// How far back, in milliseconds, the live feed starts reading the output topic when it
    /// sends history from MongoDB first: longer than MongoDB may lag behind the output topic,
    /// so that no record falls between the two (frames already sent are dropped by index).
    pub live_seam_margin_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024 * 1024,
            max_chunk_bytes: 256 * 1024,
            tokens: Vec::new(),
            delivery_timeout_ms: 10_000,
            queue_max_kbytes: 65_536,
            linger_ms: 2,
            retry_after_secs: 1,
            max_page_frames: 1_000,
            ws_ack_interval_ms: 500,
            live_max_clients: 32,
            live_queue_records: 256,
            live_seam_margin_ms: 60_000,
        }
    }
}

/// `tokens` as a list (TOML) or one comma-separated string (the environment).
fn list_or_comma_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        Text(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(list) => list,
        ListOrString::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl GatewayConfig {
    /// The chunk size bodies are split at: `max_chunk_bytes`, capped by
    /// `input.max_message_bytes` (what the worker accepts).
    pub fn chunk_bytes(&self, input: &InputConfig) -> usize {
        self.max_chunk_bytes.min(input.max_message_bytes)
    }

    /// Every problem with these settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        match self.address.parse::<SocketAddr>() {
            Err(_) => problems.push(Problem::new(
                "gateway.address",
                &self.address,
                "must be ip:port, e.g. 127.0.0.1:8080",
            )),
            Ok(address) if !address.ip().is_loopback() && self.tokens.is_empty() => {
                problems.push(Problem::new(
                    "gateway.tokens",
                    "[]",
                    format!(
                        "must list at least one token digest when gateway.address ({}) is not loopback",
                        self.address
                    ),
                ))
            }
            Ok(_) => {}
        }
        for digest in &self.tokens {
            if parse_digest(digest).is_none() {
                problems.push(Problem::new(
                    "gateway.tokens",
                    redact_digest(digest),
                    "must be a SHA-256 digest: 64 hex digits (sha256sum of the token)",
                ));
            }
        }
        if self.max_chunk_bytes < 8 {
            problems.push(Problem::new(
                "gateway.max_chunk_bytes",
                self.max_chunk_bytes,
                "must be at least 8",
            ));
        }
        if self.max_body_bytes == 0 {
            problems.push(Problem::new(
                "gateway.max_body_bytes",
                0,
                "must be at least 1",
            ));
        }
        if self.delivery_timeout_ms < 1000 {
            problems.push(Problem::new(
                "gateway.delivery_timeout_ms",
                self.delivery_timeout_ms,
                "must be at least 1000",
            ));
        }
        if self.queue_max_kbytes == 0 {
            problems.push(Problem::new(
                "gateway.queue_max_kbytes",
                0,
                "must be at least 1",
            ));
        }
        if self.max_page_frames == 0 {
            problems.push(Problem::new(
                "gateway.max_page_frames",
                0,
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("gateway.live_max_clients", self.live_max_clients),
            ("gateway.live_queue_records", self.live_queue_records),
        ] {
            if value == 0 {
                problems.push(Problem::new(key, 0, "must be at least 1"));
            }
        }
        if self.ws_ack_interval_ms == 0 {
            problems.push(Problem::new(
                "gateway.ws_ack_interval_ms",
                0,
                "must be at least 1",
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback_needs_no_token() {
        assert!(GatewayConfig::default().validate().is_empty());
    }

    #[test]
    fn a_public_address_needs_a_token_and_digests_are_checked() {
        let open = GatewayConfig {
            address: "0.0.0.0:8080".into(),
            ..GatewayConfig::default()
        };
        let problems: Vec<String> = open.validate().iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("gateway.tokens"), "{problems:?}");
        let bad_digest = GatewayConfig {
            tokens: vec!["abc".into()],
            max_chunk_bytes: 4,
            ..GatewayConfig::default()
        };
        let problems: Vec<String> = bad_digest
            .validate()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(
            problems.iter().any(|p| p.contains("64 hex digits")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("gateway.max_chunk_bytes")),
            "{problems:?}"
        );
    }

    #[test]
    fn tokens_come_as_a_list_or_one_comma_separated_string() {
        let list: GatewayConfig = toml::from_str("tokens = [\"a\", \"b\"]\n").unwrap();
        assert_eq!(list.tokens, ["a", "b"]);
        let text: GatewayConfig = toml::from_str("token_sha256 = \" a, ,b \"\n").unwrap();
        assert_eq!(text.tokens, ["a", "b"]);
    }

    #[test]
    fn chunks_never_exceed_what_the_worker_accepts() {
        let gateway = GatewayConfig::default();
        let input = InputConfig {
            max_message_bytes: 4_000,
            ..InputConfig::default()
        };
        assert_eq!(gateway.chunk_bytes(&input), 4_000);
        assert_eq!(
            gateway.chunk_bytes(&InputConfig::default()),
            gateway.max_chunk_bytes
        );
    }
}
