//! `specflow gateway`: the HTTP and WebSocket front door.
//!
//! Audio comes in over HTTP (`POST /v1/streams/{id}/chunks`, raw PCM or WAV) or a WebSocket
//! (`GET /v1/streams/{id}/ws`) and is produced to `source.topic` as exactly the messages the
//! worker consumes: key = stream id, the PCM payload, the `audio.*` headers. A request is
//! answered `202` only once the broker acknowledged every chunk (`acks=all`). Stored features
//! go out over `GET /v1/streams/{id}/features`, read from MongoDB, and live over
//! `GET /v1/streams/{id}/features/live`; `/` serves a page that draws them.
//!
//! One file per concern: [`config`] (`[gateway]` settings), [`chunks`] (splitting and checking
//! PCM), [`producer`] (producing to Kafka), [`ingest`] (the `POST` route), [`ws`] (the
//! WebSocket session), [`features`] (the MongoDB read), [`tail`] (the output topic read back),
//! [`live`] (the live feed and the recent streams), [`page`] (the browser view), [`auth`] and [`digest`] (bearer
//! tokens), [`metrics`] (the gateway's own Prometheus registry) and [`error`] (refusals as
//! JSON). This file holds the router, [`bind`], [`serve`] and the health routes. The leaves
//! (`config`, `digest`, `error`, `chunks`, `metrics`) use no other gateway file that uses the
//! settings tree, so [`crate::config`] can use [`config`] without an import circle.

pub mod auth;
pub mod chunks;
pub mod config;
pub mod digest;
pub mod error;
pub mod features;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod page;
pub mod producer;
pub mod tail;
pub mod ws;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::Settings;
use crate::telemetry::health::HealthReport;
use crate::telemetry::http::{health_response, metrics_response};
use auth::TokenHashes;
use metrics::GatewayMetrics;
use producer::ChunkProducer;

/// What every handler shares.
pub(crate) struct Gateway {
    pub(crate) settings: Settings,
    pub(crate) producer: ChunkProducer,
    pub(crate) features: Option<features::FeatureStore>,
    pub(crate) tokens: TokenHashes,
    pub(crate) metrics: GatewayMetrics,
    /// Cancelled when the server stops: WebSocket sessions settle and close.
    pub(crate) stopping: tokio_util::sync::CancellationToken,
    /// Tracks every open WebSocket session: the server waits for them before it returns.
    pub(crate) sessions: TaskTracker,
    /// One permit per live-feed client (`gateway.live_max_clients`).
    pub(crate) live_clients: Arc<tokio::sync::Semaphore>,
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
    let settings_live_max_clients = settings.gateway.live_max_clients;
    let gateway = Arc::new(Gateway {
        settings,
        producer,
        features,
        tokens,
        metrics: GatewayMetrics::new(),
        stopping: tokio_util::sync::CancellationToken::new(),
        sessions: TaskTracker::new(),
        live_clients: Arc::new(tokio::sync::Semaphore::new(settings_live_max_clients)),
    });
    let api = Router::new()
        .route("/v1/streams/{stream_id}/chunks", post(ingest::post_chunks))
        .route("/v1/streams/{stream_id}/ws", get(ws::upgrade))
        .route(
            "/v1/streams/{stream_id}/features",
            get(features::get_features),
        )
        .route("/v1/streams/{stream_id}/features/live", get(live::upgrade))
        .route("/v1/streams", get(live::recent_streams))
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            auth::require_token,
        ));
    let app = Router::new()
        .merge(api)
        .merge(page::routes())
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
        let settle = Duration::from_millis(gateway.settings.gateway.delivery_timeout_ms)
            + Duration::from_secs(2);
        gateway.sessions.close();
        let _ = tokio::time::timeout(settle, gateway.sessions.wait()).await;
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
    let shutdown =
        crate::shutdown::Shutdown::new(Duration::from_secs(settings.shutdown.drain_timeout_secs));
    shutdown
        .install_signal_handlers()
        .context("cannot serve stop signals")?;
    let stop = shutdown.clone();
    let (address, server) = bind(settings, async move { stop.requested().await }).await?;
    info!(%address, "Gateway listening (page at /; /v1/streams/{{id}}/chunks, /ws, /features, /features/live; /metrics /healthz /readyz).");
    crate::telemetry::systemd::Notifier::default().ready("listening");
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

async fn metrics_text(State(gateway): State<Shared>) -> Response {
    metrics_response(gateway.metrics.render())
}

async fn healthz() -> Response {
    health_response(HealthReport::from_reasons(Vec::new()))
}

/// Ready when the broker answers (and MongoDB, when the features endpoint uses it).
async fn readyz(State(gateway): State<Shared>) -> Response {
    let mut reasons = Vec::new();
    if !gateway.producer.broker_up() {
        reasons.push("kafka unreachable");
    }
    if let Some(store) = &gateway.features
        && !store.ping().await
    {
        reasons.push("mongodb unreachable");
    }
    health_response(HealthReport::from_reasons(reasons))
}

#[cfg(test)]
mod tests {
    use super::*;

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
