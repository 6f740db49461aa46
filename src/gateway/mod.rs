//! `specflow gateway`: the HTTP and WebSocket front door.
//!
//! Audio comes in over HTTP (`POST /v1/streams/{id}/chunks`, raw PCM or WAV) or a WebSocket
//! (`GET /v1/streams/{id}/ws`) and is produced to `source.topic` as exactly the messages the
//! worker consumes: key = stream id, the PCM payload, the `audio.*` headers. A request is
//! answered `202` only once the broker acknowledged every chunk (`acks=all`). Stored features
//! go out over `GET /v1/streams/{id}/features`, read from MongoDB.
//!
//! One file per concern: [`ingest`] (validation, splitting, producing), [`ws`] (the WebSocket
//! session), [`features`] (the MongoDB read), [`auth`] (bearer tokens), [`metrics`] (the
//! gateway's own Prometheus registry) and [`error`] (refusals as JSON).

pub mod auth;
pub mod error;
pub mod features;
pub mod ingest;
pub mod metrics;
pub mod ws;

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::info;

use crate::config::Settings;
use crate::telemetry::health::HealthReport;
use crate::validation::Problem;
use auth::TokenHashes;
use ingest::ChunkProducer;
use metrics::GatewayMetrics;

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
        }
    }
}

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
    pub fn chunk_bytes(&self, input: &crate::audio::InputConfig) -> usize {
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
            if auth::parse_digest(digest).is_none() {
                problems.push(Problem::new(
                    "gateway.tokens",
                    auth::redact_digest(digest),
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

/// What every handler shares.
pub(crate) struct Gateway {
    pub(crate) settings: Settings,
    pub(crate) producer: ChunkProducer,
    pub(crate) features: Option<features::FeatureStore>,
    pub(crate) tokens: TokenHashes,
    pub(crate) metrics: GatewayMetrics,
    /// Cancelled when the server stops: WebSocket sessions settle and close.
    pub(crate) stopping: tokio_util::sync::CancellationToken,
    /// One clone per open WebSocket session: the server waits for them before it returns.
    pub(crate) sessions: Arc<()>,
}

type Shared = Arc<Gateway>;

/// Builds the gateway (producer, MongoDB client) and binds its listener; returns the bound
/// address and the server future, which runs until `shutdown` and then drains open requests.
pub async fn bind<F>(
    settings: Settings,
    shutdown: F,
) -> anyhow::Result<(SocketAddr, impl Future<Output = anyhow::Result<()>>)>
where
    F: Future<Output = ()> + Send + 'static,
{
    let producer = ChunkProducer::build(&settings).context("gateway producer")?;
    let features = if settings.mongo.enabled {
        Some(
            features::FeatureStore::connect(&settings.mongo)
                .await
                .context("gateway MongoDB client")?,
        )
    } else {
        None
    };
    let tokens = TokenHashes::from_hex(&settings.gateway.tokens);
    let listener = tokio::net::TcpListener::bind(&settings.gateway.address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on gateway.address {}",
                settings.gateway.address
            )
        })?;
    let address = listener.local_addr()?;
    let gateway = Arc::new(Gateway {
        settings,
        producer,
        features,
        tokens,
        metrics: GatewayMetrics::new(),
        stopping: tokio_util::sync::CancellationToken::new(),
        sessions: Arc::new(()),
    });
    let api = Router::new()
        .route("/v1/streams/{stream_id}/chunks", post(ingest::post_chunks))
        .route("/v1/streams/{stream_id}/ws", get(ws::upgrade))
        .route(
            "/v1/streams/{stream_id}/features",
            get(features::get_features),
        )
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            auth::require_token,
        ));
    let app = Router::new()
        .merge(api)
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn_with_state(
            gateway.clone(),
            count_request,
        ))
        // The body limit is checked by the handler itself (413 with a JSON body).
        .layer(DefaultBodyLimit::disable())
        .with_state(gateway.clone());
    let stopping = gateway.stopping.clone();
    let server = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Open WebSocket sessions would hold the graceful shutdown: end them.
                stopping.cancel();
            })
            .await
            .context("gateway HTTP server")?;
        // Sessions run in tasks of their own, which the HTTP server does not wait for: let them
        // settle (their chunks acknowledged, `shutting_down` sent) before the producer flushes.
        let deadline = Instant::now()
            + std::time::Duration::from_millis(gateway.settings.gateway.delivery_timeout_ms)
            + std::time::Duration::from_secs(2);
        while Arc::strong_count(&gateway.sessions) > 1 && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        gateway.producer.flush().await;
        if let Some(store) = &gateway.features {
            store.clone().shutdown().await;
        }
        Ok(())
    };
    Ok((address, server))
}

/// `specflow gateway`: serves until SIGTERM/SIGINT, then finishes open requests and exits.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::Shutdown::new(std::time::Duration::from_secs(
        settings.shutdown.drain_timeout_secs,
    ));
    shutdown.install_signal_handlers();
    let stop = shutdown.clone();
    let (address, server) = bind(settings, async move { stop.requested().await }).await?;
    info!(%address, "Gateway listening (/v1/streams/{{id}}/chunks, /ws, /features; /metrics /healthz /readyz).");
    crate::telemetry::systemd::Notifier::default().ready();
    server.await
}

async fn count_request(State(gateway): State<Shared>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    gateway
        .metrics
        .observe_request(&route, response.status().as_u16(), started.elapsed());
    response
}

async fn metrics_text(State(gateway): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gateway.metrics.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    Json(HealthReport {
        status: "ok",
        reasons: Vec::new(),
    })
}

/// Ready when the broker answers (and MongoDB, when the features endpoint uses it).
async fn readyz(State(gateway): State<Shared>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    if !gateway.producer.broker_up() {
        reasons.push("kafka unreachable");
    }
    if let Some(store) = &gateway.features
        && !store.ping().await
    {
        reasons.push("mongodb unreachable");
    }
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if reasons.is_empty() { "ok" } else { "fail" };
    (code, Json(HealthReport { status, reasons }))
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
    fn token_digests_come_from_a_list_or_a_comma_separated_string() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let from_env = Settings::load_with_env(
            None,
            vec![("SPECFLOW__GATEWAY__TOKENS".to_string(), format!("{a}, {b}"))],
        )
        .unwrap();
        assert_eq!(from_env.gateway.tokens, [a.clone(), b.clone()]);
        let from_toml: Settings =
            toml::from_str(&format!("[gateway]\ntoken_sha256 = [\"{a}\"]\n")).unwrap();
        assert_eq!(from_toml.gateway.tokens, [a]);
    }
}
