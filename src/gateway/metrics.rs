//! The gateway's own Prometheus metrics (`specflow_gateway_*`), in their own registry.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use std::time::Duration;

/// Every metric the gateway exports.
pub struct GatewayMetrics {
    registry: Registry,
    /// Requests answered, by route and status code.
    pub requests_total: IntCounterVec,
    /// Time to answer a request, by route.
    pub request_seconds: HistogramVec,
    /// Audio payload bytes accepted (acknowledged by the broker).
    pub bytes_accepted_total: IntCounter,
    /// Chunks produced to the input topic and acknowledged.
    pub chunks_produced_total: IntCounter,
    /// From handing a request's chunks to the producer to the broker's last acknowledgement.
    pub broker_ack_seconds: Histogram,
    /// Open WebSocket sessions.
    pub websocket_sessions: IntGauge,
    /// Open live-feed clients.
    pub live_clients: IntGauge,
    /// Frames sent to live-feed clients (history and live).
    pub live_frames_sent_total: IntCounter,
    /// Live-feed sessions ended, by reason (`client_closed`, `slow_client`,
    /// `kafka_unavailable`, `mongodb_unavailable`, `shutting_down`, …).
    pub live_ended_total: IntCounterVec,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                "specflow_gateway_requests_total",
                "Requests answered, by route and status code.",
            ),
            &["route", "code"],
        )
        .expect("valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "specflow_gateway_request_seconds",
                "Time to answer a request, by route.",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let bytes_accepted_total = IntCounter::new(
            "specflow_gateway_bytes_accepted_total",
            "Audio payload bytes acknowledged by the broker.",
        )
        .expect("valid metric");
        let chunks_produced_total = IntCounter::new(
            "specflow_gateway_chunks_produced_total",
            "Chunks produced to the input topic and acknowledged.",
        )
        .expect("valid metric");
        let broker_ack_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "specflow_gateway_broker_ack_seconds",
                "From producing a request's chunks to the broker's last acknowledgement.",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let websocket_sessions = IntGauge::new(
            "specflow_gateway_websocket_sessions",
            "Open WebSocket sessions.",
        )
        .expect("valid metric");
        let live_clients = IntGauge::new(
            "specflow_gateway_live_clients",
            "Open clients of the live feature feed.",
        )
        .expect("valid metric");
        let live_frames_sent_total = IntCounter::new(
            "specflow_gateway_live_frames_sent_total",
            "Frames sent to live-feed clients (history and live).",
        )
        .expect("valid metric");
        let live_ended_total = IntCounterVec::new(
            Opts::new(
                "specflow_gateway_live_ended_total",
                "Live-feed sessions ended, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(bytes_accepted_total.clone()),
            Box::new(chunks_produced_total.clone()),
            Box::new(broker_ack_seconds.clone()),
            Box::new(websocket_sessions.clone()),
            Box::new(live_clients.clone()),
            Box::new(live_frames_sent_total.clone()),
            Box::new(live_ended_total.clone()),
        ] {
            registry.register(collector).expect("unique metric");
        }
        Self {
            registry,
            requests_total,
            request_seconds,
            bytes_accepted_total,
            chunks_produced_total,
            broker_ack_seconds,
            websocket_sessions,
            live_clients,
            live_frames_sent_total,
            live_ended_total,
        }
    }

    /// Counts one answered request.
    pub fn observe_request(&self, route: &str, code: u16, took: Duration) {
        self.requests_total
            .with_label_values(&[route, &code.to_string()])
            .inc();
        self.request_seconds
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        crate::telemetry::metrics::render_registry(&self.registry)
    }
}
