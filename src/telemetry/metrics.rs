//! Prometheus metrics of one worker, each named `specflow_<name>`. Counters end in `_total`
//! and histograms in `_seconds`; gauges are named for what they hold (`consumer_lag`,
//! `assigned_partitions`, `live_streams`, `paused_partitions`, `stream_state_bytes`).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric specflow exports, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    /// Input messages consumed.
    pub messages_consumed_total: IntCounter,
    /// Input payload bytes consumed.
    pub bytes_consumed_total: IntCounter,
    /// Frames computed.
    pub frames_computed_total: IntCounter,
    /// Feature records acknowledged by the output topic.
    pub records_produced_total: IntCounter,
    /// Documents written to MongoDB (including ones already present).
    pub mongo_documents_written_total: IntCounter,
    /// MongoDB bulk writes that failed (each is retried).
    pub mongo_write_errors_total: IntCounter,
    /// Latency of MongoDB bulk writes.
    pub mongo_write_seconds: Histogram,
    /// Messages sent to the dead-letter topic, by reason.
    pub dead_letters_total: IntCounterVec,
    /// Time to decode and compute one batch.
    pub processing_seconds: Histogram,
    /// From a record's `end_ms` (the capture time of the end of its last frame) to the record
    /// being stored: written to MongoDB, or, with MongoDB off, acknowledged by the output
    /// topic; in exactly-once mode, its transaction committed.
    pub end_to_end_latency_seconds: Histogram,
    /// Consumer lag per partition, from librdkafka statistics.
    pub consumer_lag: IntGaugeVec,
    /// Partitions assigned to this worker.
    pub assigned_partitions: IntGauge,
    /// Streams with live state.
    pub live_streams: IntGauge,
    /// Rebalances seen (each assignment or revocation event).
    pub rebalances_total: IntCounter,
    /// Partitions paused for back-pressure or an outage.
    pub paused_partitions: IntGauge,
    /// Gaps in `audio.start_sample` that reset a stream.
    pub stream_gaps_total: IntCounter,
    /// Streams dropped (idle timeout or live-stream cap).
    pub streams_evicted_total: IntCounter,
    /// Bytes held by per-stream state.
    pub stream_state_bytes: IntGauge,
    /// Replayed input messages skipped because their stream's checkpoint already covered them.
    pub messages_replayed_total: IntCounter,
    /// Checkpoint records (values and tombstones) acknowledged by the checkpoint topic.
    pub checkpoints_written_total: IntCounter,
    /// Checkpoint payload bytes acknowledged by the checkpoint topic.
    pub checkpoint_bytes_total: IntCounter,
    /// Time a store writer spent writing one job's checkpoints, until every ack.
    pub checkpoint_write_seconds: Histogram,
    /// Time to restore one assigned partition's streams from the checkpoint topic.
    pub restore_seconds: Histogram,
    /// Kafka transactions committed (`output.exactly_once`).
    pub transactions_committed_total: IntCounter,
    /// Kafka transactions aborted, by reason (`send`, `offsets`, `commit`, `stop`).
    transactions_aborted_total: IntCounterVec,
    /// Times the transactional producer was fenced (another producer took its
    /// `transactional.id`) and rebuilt.
    pub transactions_fenced_total: IntCounter,
    /// Time from a transaction's begin to its commit.
    pub transaction_seconds: Histogram,
    /// Partitions rewound to their last committed state after an aborted transaction.
    pub partitions_rewound_total: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("specflow".into()), None).expect("valid registry");
        let latency = prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets");
        let dead_letters_total = IntCounterVec::new(
            Opts::new(
                "dead_letters_total",
                "Messages sent to the dead-letter topic",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(dead_letters_total.clone()))
            .expect("unique metric");
        let consumer_lag = IntGaugeVec::new(
            Opts::new("consumer_lag", "Consumer lag in messages per partition"),
            &["partition"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("unique metric");
        let transactions_aborted_total = IntCounterVec::new(
            Opts::new(
                "transactions_aborted_total",
                "Kafka transactions aborted (output.exactly_once), by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(transactions_aborted_total.clone()))
            .expect("unique metric");
        Self {
            transactions_committed_total: counter(
                &registry,
                "transactions_committed_total",
                "Kafka transactions committed (output.exactly_once)",
            ),
            transactions_aborted_total,
            transactions_fenced_total: counter(
                &registry,
                "transactions_fenced_total",
                "Times the transactional producer was fenced by another with its transactional.id",
            ),
            transaction_seconds: histogram(
                &registry,
                "transaction_seconds",
                "Time from a Kafka transaction's begin to its commit",
                latency.clone(),
            ),
            partitions_rewound_total: counter(
                &registry,
                "partitions_rewound_total",
                "Partitions rewound to their last committed state after an aborted transaction",
            ),
            messages_replayed_total: counter(
                &registry,
                "messages_replayed_total",
                "Replayed input messages skipped: their stream's checkpoint already covered them",
            ),
            checkpoints_written_total: counter(
                &registry,
                "checkpoints_written_total",
                "Checkpoint records acknowledged by the checkpoint topic",
            ),
            checkpoint_bytes_total: counter(
                &registry,
                "checkpoint_bytes_total",
                "Checkpoint payload bytes acknowledged by the checkpoint topic",
            ),
            checkpoint_write_seconds: histogram(
                &registry,
                "checkpoint_write_seconds",
                "Time a store writer spent writing one job's checkpoints, until every acknowledgement",
                latency.clone(),
            ),
            restore_seconds: histogram(
                &registry,
                "restore_seconds",
                "Time to restore an assigned partition's streams from the checkpoint topic",
                latency.clone(),
            ),
            messages_consumed_total: counter(
                &registry,
                "messages_consumed_total",
                "Input messages consumed",
            ),
            bytes_consumed_total: counter(
                &registry,
                "bytes_consumed_total",
                "Input payload bytes consumed",
            ),
            frames_computed_total: counter(&registry, "frames_computed_total", "Frames computed"),
            records_produced_total: counter(
                &registry,
                "records_produced_total",
                "Feature records acknowledged by Kafka",
            ),
            mongo_documents_written_total: counter(
                &registry,
                "mongo_documents_written_total",
                "Documents written to MongoDB",
            ),
            mongo_write_errors_total: counter(
                &registry,
                "mongo_write_errors_total",
                "Failed MongoDB bulk writes",
            ),
            mongo_write_seconds: histogram(
                &registry,
                "mongo_write_seconds",
                "MongoDB bulk write latency",
                latency.clone(),
            ),
            dead_letters_total,
            processing_seconds: histogram(
                &registry,
                "processing_seconds",
                "Decode and DSP time per batch",
                latency.clone(),
            ),
            end_to_end_latency_seconds: histogram(
                &registry,
                "end_to_end_latency_seconds",
                "Capture time of a record's last frame to the record being stored",
                latency,
            ),
            consumer_lag,
            assigned_partitions: gauge(&registry, "assigned_partitions", "Partitions assigned"),
            live_streams: gauge(&registry, "live_streams", "Streams with live state"),
            rebalances_total: counter(
                &registry,
                "rebalances_total",
                "Rebalance events (assignments and revocations)",
            ),
            paused_partitions: gauge(&registry, "paused_partitions", "Partitions paused"),
            stream_gaps_total: counter(
                &registry,
                "stream_gaps_total",
                "start_sample gaps that reset a stream",
            ),
            streams_evicted_total: counter(&registry, "streams_evicted_total", "Streams evicted"),
            stream_state_bytes: gauge(&registry, "stream_state_bytes", "Bytes of per-stream state"),
            registry,
        }
    }

    /// Sets a partition's consumer lag.
    pub fn set_consumer_lag(&self, partition: i32, lag: i64) {
        self.consumer_lag
            .with_label_values(&[&partition.to_string()])
            .set(lag);
    }

    /// Removes a revoked partition's series.
    pub fn forget_partition(&self, partition: i32) {
        let _ = self
            .consumer_lag
            .remove_label_values(&[&partition.to_string()]);
    }

    /// Counts an aborted transaction under a short reason label.
    pub fn transaction_aborted(&self, reason: &str) {
        self.transactions_aborted_total
            .with_label_values(&[reason])
            .inc();
    }

    /// Observes the end-to-end latency of a record whose `end_ms` it is, stored at `now_ms`
    /// (0 when the clocks put the store first).
    pub fn observe_end_to_end_latency(&self, end_ms: i64, now_ms: i64) {
        self.end_to_end_latency_seconds
            .observe((now_ms - end_ms).max(0) as f64 / 1000.0);
    }

    /// Counts a dead letter under a short reason label.
    pub fn dead_letter(&self, reason: &str) {
        self.dead_letters_total.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render_registry(&self.registry)
    }
}

/// The Prometheus text exposition of every metric in `registry`.
pub fn render_registry(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .expect("text encoding");
    String::from_utf8(buffer).expect("prometheus text is UTF-8")
}
