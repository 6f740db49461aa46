//! Per-stream checkpoints in a compacted Kafka topic, co-partitioned with the input topic (Kafka
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
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::warn;

use crate::dsp::StreamSnapshot;
use crate::kafka::topics::{TopicError, await_listed};
use crate::kafka::valid_topic_name;
use crate::sinks::SinkError;
use crate::sinks::kafka::KafkaSink;
use crate::validation::Problem;

/// Version of the checkpoint value format (its first byte).
pub const CHECKPOINT_FORMAT: u8 = 1;

/// Topic settings the checkpoint topic is created with: compacted, with small segments so that
/// compaction keeps what a restore reads close to one record per live stream.
pub const TOPIC_SETTINGS: [(&str, &str); 4] = [
    ("cleanup.policy", "compact"),
    ("segment.bytes", "67108864"),
    ("segment.ms", "600000"),
    ("min.cleanable.dirty.ratio", "0.2"),
];

/// `[checkpoint]`: where stream state is kept between owners of a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Compacted topic with exactly as many partitions as `source.topic`; created with the
    /// other topics by `source.create_topics`, otherwise checked at start-up. Empty (the
    /// default): `<source.group_id>.checkpoints`, so that two groups reading the same input
    /// never share stream state.
    pub topic: String,
    /// Longest time, in seconds, a restore may take to read a checkpoint partition to its end
    /// before the worker gives up on the partition (it is then revoked and retried).
    pub restore_timeout_secs: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            topic: String::new(),
            restore_timeout_secs: 60,
        }
    }
}

impl CheckpointConfig {
    /// The checkpoint topic of consumer group `group_id`: `topic`, or when it is empty
    /// `<group_id>.checkpoints`.
    pub fn topic_for(&self, group_id: &str) -> String {
        if self.topic.is_empty() {
            format!("{group_id}.checkpoints")
        } else {
            self.topic.clone()
        }
    }

    /// Every problem with these settings for consumer group `group_id`.
    pub fn validate(&self, group_id: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let topic = self.topic_for(group_id);
        if let Err(why) = valid_topic_name(&topic) {
            let why = if self.topic.is_empty() {
                format!(
                    "{why} (derived from source.group_id; set checkpoint.topic to a valid topic name)"
                )
            } else {
                why.to_string()
            };
            problems.push(Problem::new("checkpoint.topic", &topic, why));
        }
        if self.restore_timeout_secs == 0 {
            problems.push(Problem::new(
                "checkpoint.restore_timeout_secs",
                0,
                "must be at least 1",
            ));
        }
        problems
    }
}

/// Why checkpoints could not be read, decoded or set up.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The value was written by another format version or is corrupt.
    #[error("checkpoint value: {0}")]
    Format(String),
    /// Kafka could not be read.
    #[error("checkpoint topic {topic}: {source}")]
    Kafka {
        /// The checkpoint topic.
        topic: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// Reading a partition to its end took longer than `checkpoint.restore_timeout_secs`.
    #[error("checkpoint topic {topic} partition {partition}: not read to its end within {secs} s")]
    Timeout {
        /// The checkpoint topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The limit.
        secs: u64,
    },
    /// The topic is missing or does not fit the input topic.
    #[error("{0}")]
    Topic(String),
}

impl CheckpointError {
    /// Whether the same read may succeed later.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Kafka { .. } | Self::Timeout { .. })
    }
}

/// What restores one stream exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamCheckpoint {
    /// Offset of the last input message of this stream that was handled (applied or rejected).
    /// A replayed message at or before it is skipped.
    pub applied_offset: i64,
    /// Sample rate in Hz (0 once ended).
    pub sample_rate: u32,
    /// Channels of its last chunk (0 once ended).
    pub channels: u16,
    /// The DSP state; `None` once the stream ended (`audio.eos`).
    pub state: Option<StreamSnapshot>,
}

impl StreamCheckpoint {
    /// The record value: [`CHECKPOINT_FORMAT`], then the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![CHECKPOINT_FORMAT];
        bytes.extend(postcard::to_stdvec(self).expect("a checkpoint always serialises"));
        bytes
    }

    /// Decodes a record value.
    ///
    /// # Errors
    /// [`CheckpointError::Format`] for another format version or corrupt bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        match bytes.split_first() {
            Some((&CHECKPOINT_FORMAT, body)) => postcard::from_bytes(body)
                .map_err(|e| CheckpointError::Format(format!("corrupt: {e}"))),
            Some((version, _)) => Err(CheckpointError::Format(format!(
                "format {version}, this build reads {CHECKPOINT_FORMAT}"
            ))),
            None => Err(CheckpointError::Format("empty".into())),
        }
    }
}

/// Reads checkpoint partition `partition` from its start to its end (the high watermark when
/// called) and returns the latest checkpoint of every stream it holds. Blocking: call it off
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
        client
            .set("group.id", "specflow-checkpoint-restore")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer = client.create().map_err(kafka)?;
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
            let message = message.map_err(kafka)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StreamCheckpoint {
        StreamCheckpoint {
            applied_offset: 42,
            sample_rate: 16_000,
            channels: 2,
            state: Some(StreamSnapshot {
                frame_length: 512,
                hop_length: 160,
                next_sample: 8_000,
                next_frame: 47,
                tail: vec![0.25, -0.5, f32::MIN_POSITIVE],
                previous_magnitude: Some(vec![1.0 / 3.0, f64::EPSILON]),
                pitch_decoder: Some(vec![1, 2, 3]),
                pending_frames: None,
            }),
        }
    }

    #[test]
    fn a_checkpoint_round_trips_bit_for_bit() {
        let checkpoint = sample();
        let bytes = checkpoint.encode();
        assert_eq!(bytes[0], CHECKPOINT_FORMAT);
        assert_eq!(StreamCheckpoint::decode(&bytes).unwrap(), checkpoint);
        let ended = StreamCheckpoint {
            state: None,
            ..checkpoint
        };
        assert_eq!(StreamCheckpoint::decode(&ended.encode()).unwrap(), ended);
    }

    #[test]
    fn another_format_or_corrupt_bytes_are_errors() {
        let mut bytes = sample().encode();
        bytes[0] = CHECKPOINT_FORMAT + 1;
        let err = StreamCheckpoint::decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("format 2"), "{err}");
        let truncated = &sample().encode()[..10];
        assert!(StreamCheckpoint::decode(truncated).is_err());
        assert!(StreamCheckpoint::decode(&[]).is_err());
    }
}
