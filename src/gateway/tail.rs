//! The output topic read back: the Kafka edge of the live feed ([`super::live`]) and of the list
//! of recent streams (`GET /v1/streams`).
//!
//! A live client gets a consumer of its own that is assigned every partition of `output.topic`
//! (no group membership, nothing committed) and keeps the records keyed by its stream. Reading
//! every partition instead of the stream's own costs bandwidth, but it is right whatever the
//! worker's producer does: the partition of a key depends on librdkafka's partitioner (which
//! `[kafka.producer]` may change) and on the partition count (which may grow).

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::warn;

use crate::kafka::closing::ClosedApart;
use crate::kafka::reachability::is_all_brokers_down;
use crate::kafka::{BuildError, KafkaConfig};

/// How long a metadata, watermark or offset lookup may take before the broker counts as down.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a tail reads: the connection (`[kafka]`, `[kafka.consumer]`) and `output.topic`.
#[derive(Debug, Clone)]
pub struct TailConfig {
    /// Connection and security settings.
    pub kafka: KafkaConfig,
    /// The worker's output topic.
    pub topic: String,
}

/// Why the output topic cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The consumer could not be made.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A lookup failed or timed out: the broker does not answer.
    #[error("the broker does not answer: {0}")]
    Unreachable(#[from] KafkaError),
    /// The topic has no partitions in the broker's metadata.
    #[error("the output topic {0:?} does not exist")]
    NoTopic(String),
    /// librdkafka reported every broker down while tailing.
    #[error("every Kafka broker is down")]
    BrokersDown,
}

/// Where a tail starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At each partition's end as it is now.
    Now,
    /// At the first record produced at or after this Unix time (ms); at the end when none.
    Since(i64),
}

/// A consumer context that notices "all brokers down".
struct TailContext {
    down: Arc<AtomicBool>,
}

impl ClientContext for TailContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_all_brokers_down(&error) {
            self.down.store(true, Ordering::Release);
        }
        warn!(error = %error, reason, "Live feed Kafka consumer error.");
    }
}

impl ConsumerContext for TailContext {}

/// A live reader of the output topic.
pub struct OutputTail {
    /// Closed apart: a close must not block the request's thread.
    consumer: ClosedApart<StreamConsumer<TailContext>>,
    down: Arc<AtomicBool>,
}

impl TailConfig {
    fn consumer_config(&self) -> Result<rdkafka::ClientConfig, BuildError> {
        let mut config = self.kafka.client_config(&self.kafka.consumer)?;
        config
            .set("group.id", "specflow-gateway-live")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "latest");
        Ok(config)
    }

    /// The partitions of the topic, as the broker lists them now.
    fn partitions<C: ConsumerContext>(
        &self,
        consumer: &impl Consumer<C>,
    ) -> Result<Vec<i32>, TailError> {
        let metadata = consumer.fetch_metadata(Some(&self.topic), LOOKUP_TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(TailError::NoTopic(self.topic.clone()));
        }
        Ok(partitions)
    }

    /// Opens a tail of every partition at `start` (blocking: run it off the async threads).
    /// The start offsets are fixed before it returns, so whatever is produced afterwards is read.
    pub fn open(&self, start: StartAt) -> Result<OutputTail, TailError> {
        let down = Arc::new(AtomicBool::new(false));
        let consumer: StreamConsumer<TailContext> = self.kafka.create_with_context(
            "consumer",
            &self.consumer_config()?,
            TailContext { down: down.clone() },
        )?;
        let mut assignment = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for partition in self.partitions(&consumer)? {
            let (_, high) = consumer.fetch_watermarks(&self.topic, partition, LOOKUP_TIMEOUT)?;
            ends.insert(partition, high);
            let offset = match start {
                StartAt::Now => Offset::Offset(high),
                StartAt::Since(ms) => Offset::Offset(ms),
            };
            assignment.add_partition_offset(&self.topic, partition, offset)?;
        }
        if let StartAt::Since(_) = start {
            assignment = consumer.offsets_for_times(assignment, LOOKUP_TIMEOUT)?;
            // No record at or after the time: the end noted above (an `End` resolved later
            // would skip what is produced in between).
            for element in assignment.clone().elements() {
                if !matches!(element.offset(), Offset::Offset(_)) {
                    let high = ends.get(&element.partition()).copied().unwrap_or(0);
                    assignment.set_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Offset(high),
                    )?;
                }
            }
        }
        consumer.assign(&assignment)?;
        Ok(OutputTail {
            consumer: ClosedApart::new("live tail", consumer),
            down,
        })
    }

    /// The keys of the last `per_partition` records of every partition, each with the newest
    /// Kafka timestamp (Unix ms) seen for it, newest first (blocking).
    pub fn recent_streams(&self, per_partition: i64) -> Result<Vec<(String, i64)>, TailError> {
        let consumer: BaseConsumer = self.kafka.create("consumer", &self.consumer_config()?)?;
        let consumer = ClosedApart::new("recent streams", consumer);
        let mut assignment = TopicPartitionList::new();
        let mut remaining = HashMap::new();
        for partition in self.partitions(&*consumer)? {
            let (low, high) = consumer.fetch_watermarks(&self.topic, partition, LOOKUP_TIMEOUT)?;
            let from = low.max(high - per_partition);
            if from < high {
                assignment.add_partition_offset(&self.topic, partition, Offset::Offset(from))?;
                remaining.insert(partition, high);
            }
        }
        let mut seen: HashMap<String, i64> = HashMap::new();
        if remaining.is_empty() {
            return Ok(Vec::new());
        }
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + LOOKUP_TIMEOUT;
        while !remaining.is_empty() && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message?;
            if let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) {
                let at = message.timestamp().to_millis().unwrap_or(0);
                let newest = seen.entry(key.to_owned()).or_insert(at);
                *newest = (*newest).max(at);
            }
            if remaining
                .get(&message.partition())
                .is_some_and(|&high| message.offset() + 1 >= high)
            {
                remaining.remove(&message.partition());
            }
        }
        let mut streams: Vec<(String, i64)> = seen.into_iter().collect();
        streams.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(streams)
    }
}

impl OutputTail {
    /// The next record of any stream; `BrokersDown` once librdkafka said so.
    pub async fn next(&self) -> Result<OwnedMessage, TailError> {
        loop {
            if self.down.load(Ordering::Acquire) {
                return Err(TailError::BrokersDown);
            }
            // Woken at least every second to look at the broker state.
            match tokio::time::timeout(Duration::from_secs(1), self.consumer.recv()).await {
                Ok(Ok(message)) => return Ok(message.detach()),
                Ok(Err(e)) => warn!(error = %e, "Live feed fetch error."),
                Err(_) => {}
            }
        }
    }
}
