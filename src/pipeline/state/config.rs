//! `[streams]` and `[checkpoint]`: the limits on live stream state and where it is kept between
//! owners of a partition.

use serde::{Deserialize, Serialize};

use crate::kafka::valid_topic_name;
use crate::validation::Problem;

/// `[streams]`: limits on per-stream state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Seconds without a chunk after which a stream's state is dropped.
    pub idle_timeout_secs: u64,
    /// Most live streams per worker; at the cap the least recently seen stream is evicted.
    pub max_streams: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 300,
            max_streams: 100_000,
        }
    }
}

impl StreamsConfig {
    /// Every problem with these settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.idle_timeout_secs == 0 {
            problems.push(Problem::new(
                "streams.idle_timeout_secs",
                0,
                "must be at least 1",
            ));
        }
        if self.max_streams == 0 {
            problems.push(Problem::new("streams.max_streams", 0, "must be at least 1"));
        }
        problems
    }
}

/// `[checkpoint]`: where stream state is kept between owners of a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Compacted topic with exactly as many partitions as `source.topic`; created with the
    /// other topics by `source.create_topics`, otherwise checked at start-up. Empty (the
    /// default): `<source.group_id>.checkpoints`, so that two groups reading the same input
    /// never share stream state.
    pub topic: String,
    /// Longest time, in seconds, one attempt to restore a partition may take to read its
    /// checkpoint partition to the end (and, in exactly-once mode, its committed offset). An
    /// attempt that times out or fails is retried with backoff (200 ms doubling to 5 s) while
    /// the partition stays paused, until it succeeds or the partition is revoked.
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
