//! Logs (tracing-subscriber), metrics (Prometheus) and the HTTP endpoint.

pub mod health;
pub mod http;
pub mod metrics;
pub mod systemd;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use crate::validation::Problem;

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: what is logged and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, or per-target like `specflow=debug,rdkafka=warn`.
    /// `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl LogConfig {
    /// Every problem with these settings.
    pub fn validate(&self) -> Vec<Problem> {
        match EnvFilter::try_new(&self.level) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Problem::new(
                "log.level",
                &self.level,
                format!("not a valid filter: {e}"),
            )],
        }
    }

    /// Installs the global subscriber (writes to stderr). A second call is a no-op.
    pub fn init(&self) {
        let filter = EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&self.level))
            .unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = match self.format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
    }
}
