//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::health::{Health, HealthReport};
use super::metrics::Metrics;
use crate::validation::Problem;

/// `[http]`: the metrics and health endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the endpoint at all.
    pub enabled: bool,
    /// Listen address; loopback by default, `0.0.0.0:9898` in containers.
    pub address: String,
    /// `/healthz` fails when the processing loop has not run for this many seconds.
    pub stall_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: "127.0.0.1:9898".into(),
            stall_timeout_secs: 60,
        }
    }
}

impl HttpConfig {
    /// Every problem with these settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.address.parse::<SocketAddr>().is_err() {
            problems.push(Problem::new(
                "http.address",
                &self.address,
                "must be ip:port, e.g. 127.0.0.1:9898",
            ));
        }
        if self.stall_timeout_secs == 0 {
            problems.push(Problem::new(
                "http.stall_timeout_secs",
                0,
                "must be at least 1",
            ));
        }
        problems
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stall: Duration,
}

/// The answer of `/metrics`: a Prometheus text exposition.
pub fn metrics_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The answer of `/healthz` or `/readyz`: `report` as JSON, `200` when ok, else `503`.
pub fn health_response(report: HealthReport) -> Response {
    let code = if report.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    metrics_response(state.metrics.render())
}

async fn healthz(State(state): State<AppState>) -> Response {
    health_response(state.health.liveness(state.stall))
}

async fn readyz(State(state): State<AppState>) -> Response {
    health_response(state.health.readiness())
}

/// Binds the endpoint; returns the bound address and the server future (run it until `shutdown`).
pub async fn bind<F>(
    config: &HttpConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: F,
) -> std::io::Result<(
    SocketAddr,
    impl Future<Output = std::io::Result<()>> + use<F>,
)>
where
    F: Future<Output = ()> + Send + 'static,
{
    let state = AppState {
        metrics,
        health,
        stall: Duration::from_secs(config.stall_timeout_secs),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&config.address).await?;
    let address = listener.local_addr()?;
    let server = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    };
    Ok((address, server))
}
