//! Where feature records and rejected messages go: the Kafka and MongoDB sinks are each a
//! config plus `build()`; the dead-letter sink wraps the Kafka sink (`DeadLetterSink::new`).

pub mod dead_letter;
pub mod kafka;
pub mod mongo;

/// Why a sink write failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The Kafka producer did not deliver a record.
    #[error("kafka delivery to {topic} failed: {source}")]
    Kafka {
        /// Target topic.
        topic: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// MongoDB rejected or did not acknowledge a write.
    #[error("mongodb write failed: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// A record could not be encoded.
    #[error("cannot encode record: {0}")]
    Encode(String),
    /// A `*_file` secret could not be read.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretFileError),
}

impl SinkError {
    /// True for a Kafka delivery that timed out (`output.delivery_timeout_ms` passed).
    pub fn is_delivery_timeout(&self) -> bool {
        matches!(
            self,
            Self::Kafka { source, .. } if source.rdkafka_error_code()
                == Some(rdkafka::types::RDKafkaErrorCode::MessageTimedOut)
        )
    }

    /// True when the same write may succeed later (server unreachable, timeouts).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Kafka { source, .. } => !matches!(
                source.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge)
                    | Some(rdkafka::types::RDKafkaErrorCode::InvalidRecord)
            ),
            Self::Mongo(_) => true,
            Self::Encode(_) | Self::Secret(_) => false,
        }
    }
}
