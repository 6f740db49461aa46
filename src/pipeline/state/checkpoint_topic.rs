//! The checkpoint topic: per-stream checkpoints in a compacted Kafka topic, co-partitioned with the input topic (Kafka
//! Streams' changelog idea).
//!
//! - Key: the stream id. Value: a [`StreamCheckpoint`] (format byte, then postcard): the last
//!   message the stream handled, its sample rate and channels, and its whole DSP state (the
//!   sample tail, the previous spectrum, the frame position), or `None` once it ended. A
//!   tombstone (null value) when the stream was evicted.
//! - Checkpoint partition `p` holds the streams of input partition `p`. A new owner of `p` reads
//!   it to its end ([`read_partition`]) before it handles any message of `p`: the cost is
//!   bounded by the live streams (the topic is compacted), never by the stored history, and no
//!   database is asked.
//! - The pipeline writes the checkpoints of every stream a batch touched once per batch, after
//!   the batch's records are acknowledged by the sinks, and commits the batch's offsets only
//!   after the checkpoints are acknowledged too.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::warn;

use super::checkpoint::{CheckpointError, StreamCheckpoint};
use crate::kafka::closing::ClosedApart;
use crate::kafka::topics::{TopicError, await_listed};
use crate::sinks::SinkError;
use crate::sinks::kafka::KafkaSink;

/// Topic settings the checkpoint topic is created with: compacted, with small segments so that
/// compaction keeps what a restore reads close to one record per live stream.
pub const TOPIC_SETTINGS: [(&str, &str); 4] = [
    ("cleanup.policy", "compact"),
    ("segment.bytes", "67108864"),
    ("segment.ms", "600000"),
    ("min.cleanable.dirty.ratio", "0.2"),
];

/// Reads checkpoint partition `partition` from its start to its end (the high watermark when
/// called, or the end of what is committed) and returns the latest checkpoint of every stream it holds. Blocking: call it off
/// the async runtime. Records that cannot be decoded are skipped with a warning (that stream
/// starts afresh).
///
/// `bounds` (a consumer kept for the worker's life that never joins a group or fetches) asks
/// for the partition's watermarks first. An empty partition (a new deployment or consumer group, a
/// partition added since) is then done with that one request; only a partition holding
/// records gets a consumer of its own, built from `client`.
pub fn read_partition(
    client: &ClientConfig,
    bounds: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Vec<(String, StreamCheckpoint)>, CheckpointError> {
    let kafka = |source| CheckpointError::Kafka {
        topic: topic.to_string(),
        source,
    };
    let (low, high) = bounds
        .fetch_watermarks(topic, partition, timeout)
        .map_err(kafka)?;
    let mut latest: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    if high > low {
        let mut client = client.clone();
        // Only committed records: with `output.exactly_once` the checkpoints are written in
        // transactions, and an aborted one's must never be restored. The end is the partition
        // end as a committed reader sees it (the last record before the high watermark is then
        // a transaction marker, which is never delivered).
        client
            .set("group.id", "specflow-checkpoint-restore")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            // The end is known from an empty fetch: ask again at once rather than after 500 ms.
            .set("fetch.wait.max.ms", "10")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer<RestoreContext> =
            client.create_with_context(RestoreContext).map_err(kafka)?;
        // A close that waits for the group coordinator must not hold up the restore.
        let consumer = ClosedApart::new("checkpoint restore", consumer);
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(kafka)?;
        consumer.assign(&assignment).map_err(kafka)?;
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CheckpointError::Timeout {
                    topic: topic.to_string(),
                    partition,
                    secs: timeout.as_secs(),
                });
            }
            let Some(message) =
                consumer.poll(Timeout::After(remaining.min(Duration::from_millis(500))))
            else {
                continue;
            };
            let message = match message {
                Ok(message) => message,
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => break,
                Err(e) => return Err(kafka(e)),
            };
            if let Some(key) = message.key() {
                latest.insert(
                    String::from_utf8_lossy(key).into_owned(),
                    message.payload().map(<[u8]>::to_vec),
                );
            }
            if message.offset() >= high - 1 {
                break;
            }
        }
    }
    let mut checkpoints = Vec::with_capacity(latest.len());
    for (stream, value) in latest {
        let Some(value) = value else { continue };
        match StreamCheckpoint::decode(&value) {
            Ok(checkpoint) => checkpoints.push((stream, checkpoint)),
            Err(e) => {
                warn!(topic, partition, %stream, error = %e, "Checkpoint skipped; the stream starts afresh.")
            }
        }
    }
    Ok(checkpoints)
}

/// The restore consumer's context: reaching the partition's end is how a restore knows it is
/// done, not an error to log.
struct RestoreContext;

impl rdkafka::ClientContext for RestoreContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            warn!(error = %error, reason, "Checkpoint restore consumer error.");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for RestoreContext {}

/// Sends one partition's checkpoint records (a value or a tombstone per stream) to the same
/// partition of the checkpoint topic, and waits until all are acknowledged.
pub async fn write_partition(
    sink: &KafkaSink,
    topic: &str,
    partition: i32,
    records: &[(&str, Option<&[u8]>)],
) -> Result<(), SinkError> {
    let sends = records.iter().map(|(stream, value)| {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .partition(partition)
            .key(stream.as_bytes());
        if let Some(value) = value {
            record = record.payload(*value);
        }
        sink.send(record)
    });
    futures::future::join_all(sends)
        .await
        .into_iter()
        .collect::<Result<(), SinkError>>()
}

/// The checkpoint topic to create for an input topic of `partitions` partitions.
pub fn new_topic(topic: &str, partitions: i32, replication: i32) -> NewTopic<'_> {
    TOPIC_SETTINGS.iter().fold(
        NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)),
        |new, (key, value)| new.set(key, value),
    )
}

/// Checks that the checkpoint topic exists, is compacted and has exactly as many partitions as
/// the input topic. Waits up to `wait` for the broker's metadata to list both (a broker that
/// has just started lists a new topic a moment after it acknowledged its creation).
pub async fn check_topic(
    admin: &AdminClient<DefaultClientContext>,
    input: &str,
    checkpoint: &str,
    wait: Duration,
) -> Result<(), CheckpointError> {
    let kafka = |source| CheckpointError::Kafka {
        topic: checkpoint.to_string(),
        source,
    };
    // A broker that has just started may list a topic a moment after it was created.
    let wanted = [(input, None), (checkpoint, None)];
    let listed = match await_listed(admin.inner(), &wanted, wait).await {
        Ok(listed) => listed,
        // Named below: the topic that is missing, and what to do about it.
        Err(TopicError::NotListed { .. }) => {
            let metadata = admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(10))
                .map_err(kafka)?;
            metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| (t.name().to_string(), t.partitions().len()))
                .collect()
        }
        Err(TopicError::Request(e)) => return Err(kafka(e)),
        Err(e @ TopicError::Refused { .. }) => return Err(CheckpointError::Topic(e.to_string())),
    };
    let input_partitions = *listed
        .get(input)
        .ok_or_else(|| CheckpointError::Topic(format!("source.topic {input} does not exist")))?;
    let Some(&checkpoint_partitions) = listed.get(checkpoint) else {
        return Err(CheckpointError::Topic(format!(
            "checkpoint.topic {checkpoint} does not exist: create it with cleanup.policy=compact and {input_partitions} partitions (as {input}), or set source.create_topics = true"
        )));
    };
    if checkpoint_partitions != input_partitions {
        return Err(CheckpointError::Topic(format!(
            "checkpoint.topic {checkpoint} has {checkpoint_partitions} partitions but source.topic {input} has {input_partitions}: they must be equal (partition p of one holds the streams of partition p of the other)"
        )));
    }
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(checkpoint)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(kafka)?;
    for resource in described.into_iter().flatten() {
        let policy = resource
            .get("cleanup.policy")
            .and_then(|e| e.value.clone())
            .unwrap_or_default();
        if !policy.split(',').any(|p| p.trim() == "compact") {
            return Err(CheckpointError::Topic(format!(
                "checkpoint.topic {checkpoint} has cleanup.policy={policy}: it must be compact, or old checkpoints are deleted and streams lose their state"
            )));
        }
    }
    Ok(())
}
