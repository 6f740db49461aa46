//! Kafka sink: one idempotent producer for feature records (and, shared, dead letters).

use bytes::Bytes;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::warn;

use super::SinkError;
use crate::kafka::closing::ClosedApart;
use crate::kafka::producer::{DeliveryProducer, producer_config};
use crate::kafka::reachability::{BrokerState, ReachabilityContext, STATISTICS_INTERVAL_MS};
use crate::kafka::valid_topic_name;
use crate::kafka::{BuildError, KafkaConfig};
use crate::validation::Problem;

/// `output.compression`: the producer's `compression.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4 (the default: cheap on CPU, good on feature JSON).
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// librdkafka's name for it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// `[output]`: the topic that receives one JSON feature record per input message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkConfig {
    /// Send feature records to the output topic. Off: MongoDB is the only sink (the producer
    /// still carries checkpoints and dead letters).
    pub enabled: bool,
    /// Output topic for feature records (key = stream id).
    pub topic: String,
    /// Producer `linger.ms`: how long records wait to be batched (1 ms: a batch's records
    /// are queued at once and go out together anyway; more only adds latency).
    pub linger_ms: u64,
    /// Producer `compression.type`: none, gzip, snappy, lz4 or zstd.
    pub compression: Compression,
    /// Producer `batch.size` in bytes.
    pub batch_size_bytes: usize,
    /// How long a record may wait for delivery before the batch is retried, in milliseconds.
    pub delivery_timeout_ms: u64,
    /// First wait, in milliseconds, before a failed send to Kafka (records, dead letters,
    /// checkpoints) is retried; it doubles on each failure, with jitter.
    pub retry_initial_ms: u64,
    /// Longest wait between Kafka send retries, in milliseconds.
    pub retry_max_ms: u64,
    /// Exactly-once output: each batch's records, dead letters, checkpoints and input offsets
    /// are committed in one Kafka transaction, so a `read_committed` reader of the output and
    /// dead-letter topics sees every record once, whatever crashes or rebalances happen. Costs
    /// a transaction commit per batch (batches are then handled one at a time) and holds
    /// records back from `read_committed` readers until their batch commits.
    pub exactly_once: bool,
    /// The producer's `transactional.id` (exactly-once only). Empty: `specflow-<group>-<instance>`
    /// with `source.instance_id` when it is set (stable: a restarted instance aborts its own
    /// unfinished transaction at once), else `specflow-<group>-<host>-<pid>` (unique: a killed
    /// instance's open transaction then holds `read_committed` readers of its partitions back
    /// until `transaction_timeout_ms` passes). Must be unique among running instances.
    pub transactional_id: String,
    /// `transaction.timeout.ms` (exactly-once only): how long the broker lets a transaction
    /// stay open before it aborts it. A record's delivery timeout is capped at it.
    pub transaction_timeout_ms: u64,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            topic: "audio.features".into(),
            linger_ms: 1,
            compression: Compression::Lz4,
            batch_size_bytes: 1_000_000,
            delivery_timeout_ms: 30_000,
            retry_initial_ms: 200,
            retry_max_ms: 5_000,
            exactly_once: false,
            transactional_id: String::new(),
            transaction_timeout_ms: 10_000,
        }
    }
}

impl KafkaSinkConfig {
    /// Every problem with these settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(why) = valid_topic_name(&self.topic) {
            problems.push(Problem::new("output.topic", &self.topic, why));
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            problems.push(Problem::new(
                "output.retry_max_ms",
                self.retry_max_ms,
                "retry_initial_ms must be at least 1 and retry_max_ms at least retry_initial_ms",
            ));
        }
        if self.delivery_timeout_ms < 1000 {
            problems.push(Problem::new(
                "output.delivery_timeout_ms",
                self.delivery_timeout_ms,
                "must be at least 1000",
            ));
        }
        if !(1_000..=900_000).contains(&self.transaction_timeout_ms) {
            problems.push(Problem::new(
                "output.transaction_timeout_ms",
                self.transaction_timeout_ms,
                "must be between 1000 and 900000 (the broker's default transaction.max.timeout.ms)",
            ));
        }
        if !self.transactional_id.is_empty() && !self.exactly_once {
            problems.push(Problem::new(
                "output.transactional_id",
                &self.transactional_id,
                "is used only with output.exactly_once = true",
            ));
        }
        if self.transactional_id.len() > 249
            || self
                .transactional_id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            problems.push(Problem::new(
                "output.transactional_id",
                &self.transactional_id,
                "must be at most 249 characters, without spaces or control characters",
            ));
        }
        problems
    }

    /// The delivery timeout in effect: `delivery_timeout_ms`, capped at the transaction timeout
    /// in exactly-once mode (librdkafka refuses a longer one).
    pub fn effective_delivery_timeout_ms(&self) -> u64 {
        if self.exactly_once {
            self.delivery_timeout_ms.min(self.transaction_timeout_ms)
        } else {
            self.delivery_timeout_ms
        }
    }

    /// The backoff of Kafka send retries: (first, longest) wait in milliseconds.
    pub fn retry_ms(&self) -> (u64, u64) {
        (self.retry_initial_ms, self.retry_max_ms)
    }

    /// Builds the producer ([`producer_config`]: idempotent, acks=all); transactional with
    /// `transactional_id` (exactly-once mode: its transactions are initialised by the caller).
    pub fn build(
        &self,
        kafka: &KafkaConfig,
        transactional_id: Option<&str>,
    ) -> Result<KafkaSink, BuildError> {
        let mut config = producer_config(
            kafka,
            &[
                ("linger.ms", self.linger_ms.to_string()),
                ("compression.type", self.compression.as_str().to_string()),
                ("batch.size", self.batch_size_bytes.to_string()),
                (
                    "message.timeout.ms",
                    self.effective_delivery_timeout_ms().to_string(),
                ),
                // The producer's own thread serves its statistics: broker reachability in
                // real time, even while the worker loop waits on a send.
                ("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string()),
            ],
        )?;
        if let Some(id) = transactional_id {
            config.set("transactional.id", id).set(
                "transaction.timeout.ms",
                self.transaction_timeout_ms.to_string(),
            );
        }
        let context = ReachabilityContext::default();
        let brokers = context.state();
        let producer: DeliveryProducer = kafka.create_with_context("producer", &config, context)?;
        // A transactional producer is replaced by its owner, which re-initialises it.
        let renewal = transactional_id.is_none().then(|| {
            Arc::new(Renewal {
                kafka: kafka.clone(),
                config,
            })
        });
        Ok(KafkaSink {
            producer: Arc::new(RwLock::new(producer)),
            renewal,
            topic: self.topic.clone(),
            brokers,
        })
    }
}

/// How to build another producer like the first: its client and its config.
struct Renewal {
    kafka: KafkaConfig,
    config: rdkafka::ClientConfig,
}

/// How long a send waits for room while the producer's queue is full.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(60);

/// The output producer. Its clones share it, and share its replacement: librdkafka (2.12.1
/// to 2.14.1 at least) can leave a partition without a leader for good after a broker restart
/// (a metadata update with leader -1, confluentinc/librdkafka#5430), and every delivery to it
/// then times out although the brokers answer (and the stuck producer may not even keep a
/// connection up to show it). A delivery that times out therefore replaces a
/// non-transactional producer with a new one (the batch is sent again by the caller's retry,
/// as after any failed delivery; during a real outage the new one simply waits like the old).
#[derive(Clone)]
pub struct KafkaSink {
    producer: Arc<RwLock<DeliveryProducer>>,
    /// How to build a replacement; `None` for a transactional producer.
    renewal: Option<Arc<Renewal>>,
    topic: String,
    brokers: Arc<BrokerState>,
}

impl KafkaSink {
    /// The output topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The underlying producer now (shared with the dead-letter sink).
    pub fn producer(&self) -> DeliveryProducer {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the brokers answer, as this producer sees them.
    pub fn brokers(&self) -> Arc<BrokerState> {
        self.brokers.clone()
    }

    /// Sends `record` (to its own topic) and waits for its acknowledgement, waiting up to
    /// [`QUEUE_TIMEOUT`] for room while the producer's queue is full. Records, dead letters and
    /// checkpoints all go out here.
    pub async fn send(&self, record: FutureRecord<'_, [u8], [u8]>) -> Result<(), SinkError> {
        let topic = record.topic;
        let producer = self.producer();
        let outcome = producer.send(record, QUEUE_TIMEOUT).await;
        self.after_delivery(&producer, outcome.map(|_| ()), topic)
    }

    /// Sends a feature record to the output topic and waits for its acknowledgement (as
    /// [`send`](Self::send)).
    pub async fn send_record(&self, key: &[u8], payload: Bytes) -> Result<(), SinkError> {
        let producer = self.producer();
        let record = FutureRecord::to(&self.topic).key(key).payload(&payload[..]);
        let outcome = producer.send(record, QUEUE_TIMEOUT).await;
        self.after_delivery(&producer, outcome.map(|_| ()), &self.topic)
    }

    /// Waits until everything queued is delivered, or the timeout passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer()
            .flush(timeout)
            .map_err(failed_on(&self.topic))
    }

    /// The sink's outcome of a delivery by `producer` to `topic`; a timed-out delivery
    /// replaces the producer (see [`KafkaSink`]), once for all the deliveries of the producer
    /// that timed out.
    fn after_delivery(
        &self,
        producer: &DeliveryProducer,
        outcome: Result<(), KafkaError>,
        topic: &str,
    ) -> Result<(), SinkError> {
        let Err(error) = outcome.map_err(failed_on(topic)) else {
            return Ok(());
        };
        if error.is_delivery_timeout()
            && let Some(renewal) = &self.renewal
        {
            self.renew(renewal, producer);
        }
        Err(error)
    }

    /// Replaces `failed` (unless it was replaced already) with a new producer built alike.
    fn renew(&self, renewal: &Renewal, failed: &DeliveryProducer) {
        let mut current = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if !current.is(failed) {
            return;
        }
        let context = ReachabilityContext::sharing(self.brokers.clone());
        match renewal.kafka.create_with_context::<_, DeliveryProducer>(
            "producer",
            &renewal.config,
            context,
        ) {
            Ok(renewed) => {
                warn!(
                    topic = %self.topic,
                    "Kafka deliveries timed out; the producer is replaced (librdkafka can keep a partition without a leader for good after a broker restart, confluentinc/librdkafka#5430)."
                );
                let failed = std::mem::replace(&mut *current, renewed);
                // Its drop purges and flushes; the sends under way have their outcome already.
                drop(ClosedApart::new("replaced producer", failed));
            }
            Err(e) => {
                warn!(error = %e, "Cannot build a producer to replace the one whose deliveries timed out.")
            }
        }
    }
}

/// Turns librdkafka's error for a message to `topic` into the sink's error, naming the topic.
fn failed_on(topic: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> SinkError + '_ {
    move |source| SinkError::Kafka {
        topic: topic.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    /// A sink whose producer is never asked to reach its broker (nothing listens there).
    fn offline_sink(transactional_id: Option<&str>) -> KafkaSink {
        let kafka = KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            ..KafkaConfig::default()
        };
        KafkaSinkConfig {
            exactly_once: transactional_id.is_some(),
            ..KafkaSinkConfig::default()
        }
        .build(&kafka, transactional_id)
        .expect("producer")
    }

    fn timed_out() -> Result<(), KafkaError> {
        Err(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        ))
    }

    #[test]
    fn a_delivery_timeout_replaces_the_producer_once() {
        let sink = offline_sink(None);
        let clone = sink.clone();
        let first = sink.producer();
        let error = sink
            .after_delivery(&first, timed_out(), "features")
            .expect_err("the delivery failed");
        assert!(error.is_delivery_timeout(), "{error}");
        assert!(error.to_string().contains("features"), "{error}");
        let second = clone.producer();
        assert!(!second.is(&first), "the clones share the new producer");
        // The other deliveries of the replaced producer that timed out replace nothing more.
        let _ = clone.after_delivery(&first, timed_out(), "features");
        assert!(sink.producer().is(&second));
        // Other errors keep the producer.
        let other = Err(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge,
        ));
        let _ = sink.after_delivery(&second, other, "features");
        assert!(sink.producer().is(&second));
        assert!(sink.after_delivery(&second, Ok(()), "features").is_ok());
    }

    #[test]
    fn a_transactional_producer_is_left_to_its_owner() {
        let sink = offline_sink(Some("specflow-test"));
        let first = sink.producer();
        let _ = sink.after_delivery(&first, timed_out(), "features");
        assert!(sink.producer().is(&first));
    }

    #[test]
    fn retry_settings_are_checked_and_named() {
        let config = KafkaSinkConfig {
            retry_initial_ms: 500,
            retry_max_ms: 100,
            ..KafkaSinkConfig::default()
        };
        let problems: Vec<String> = config.validate().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            problems,
            [
                "output.retry_max_ms = 100: retry_initial_ms must be at least 1 and retry_max_ms at least retry_initial_ms"
            ]
        );
        assert_eq!(KafkaSinkConfig::default().retry_ms(), (200, 5_000));
        assert!(KafkaSinkConfig::default().validate().is_empty());
    }
}
