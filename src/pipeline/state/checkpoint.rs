//! The checkpoint record: what restores one stream exactly, and its versioned value format (a
//! format byte, then postcard). Its Kafka I/O is in [`super::checkpoint_topic`].

use serde::{Deserialize, Serialize};

use crate::dsp::StreamSnapshot;

/// Version of the checkpoint value format (its first byte).
pub const CHECKPOINT_FORMAT: u8 = 1;

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
