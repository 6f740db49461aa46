//! The worker's HTTP endpoint: a plain `GET`, and one scrape of `/metrics` in the Prometheus
//! text format. A metric the scrape lacks is an error ([`MissingMetric`]), never a zero.

use anyhow::Context as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `GET path` on `address` (HTTP/1.1, `Connection: close`, 3 s timeout); returns the status
/// code and the body.
pub async fn http_get(address: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut buffer = Vec::new();
        stream.read_to_end(&mut buffer).await?;
        anyhow::Ok(buffer)
    };
    let buffer = tokio::time::timeout(Duration::from_secs(3), request)
        .await
        .context("HTTP request timed out")??;
    let text = String::from_utf8_lossy(&buffer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// A metric a scrape does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metric {0} is missing from the /metrics scrape")]
pub struct MissingMetric(pub String);

/// One scrape of `/metrics`: sample name (with labels, if any) → value.
#[derive(Debug, Clone, Default)]
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// The prefix of every specflow metric.
    pub const PREFIX: &'static str = "specflow_";

    /// Parses the Prometheus text format (samples only; comments skipped).
    pub fn parse(body: &str) -> Self {
        let mut values = HashMap::new();
        for line in body.lines() {
            if line.starts_with('#') {
                continue;
            }
            let mut parts = line.rsplitn(2, ' ');
            if let (Some(value), Some(name)) = (parts.next(), parts.next())
                && let Ok(v) = value.trim().parse::<f64>()
            {
                values.insert(name.trim().to_string(), v);
            }
        }
        Self(values)
    }

    /// A sample without labels, by its full name (`specflow_messages_consumed_total`).
    pub fn sample(&self, full_name: &str) -> Option<f64> {
        self.0.get(full_name).copied()
    }

    /// A specflow metric without labels (`specflow_` prefix added), or which one is missing.
    pub fn get(&self, name: &str) -> Result<f64, MissingMetric> {
        let full = format!("{}{name}", Self::PREFIX);
        self.sample(&full).ok_or(MissingMetric(full))
    }

    /// Sum over every label set of a labelled specflow metric (`dead_letters_total`). A
    /// labelled family has no sample until its first label set is used, so none sums to 0.
    pub fn sum_of(&self, name: &str) -> f64 {
        let prefix = format!("{}{name}{{", Self::PREFIX);
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum::<f64>()
            + 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "\
# HELP specflow_messages_consumed_total Input messages consumed
# TYPE specflow_messages_consumed_total counter
specflow_messages_consumed_total 42
specflow_processing_seconds_sum 1.5
specflow_processing_seconds_count 3
specflow_dead_letters_total{reason=\"decode\"} 2
specflow_dead_letters_total{reason=\"overlap\"} 1
";

    #[test]
    fn reads_samples_and_sums_label_sets() {
        let scrape = Scrape::parse(BODY);
        assert_eq!(scrape.get("messages_consumed_total"), Ok(42.0));
        assert_eq!(scrape.get("processing_seconds_sum"), Ok(1.5));
        assert_eq!(scrape.sum_of("dead_letters_total"), 3.0);
        assert_eq!(scrape.sum_of("stream_gaps_total"), 0.0);
    }

    #[test]
    fn a_missing_metric_is_an_error_naming_it() {
        let error = Scrape::parse(BODY)
            .get("checkpoint_write_seconds_sum")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "metric specflow_checkpoint_write_seconds_sum is missing from the /metrics scrape"
        );
    }
}
