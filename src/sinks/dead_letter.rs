//! Dead-letter sink: malformed messages, verbatim, with an `error` header saying why.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use serde::{Deserialize, Serialize};

use super::SinkError;
use super::kafka::KafkaSink;
use crate::kafka::valid_topic_name;
use crate::validation::Problem;

/// Header that carries the reason a message was rejected.
pub const ERROR_HEADER: &str = "error";
/// Headers naming where the rejected message came from.
pub const SOURCE_TOPIC_HEADER: &str = "source.topic";
/// Partition of the rejected message.
pub const SOURCE_PARTITION_HEADER: &str = "source.partition";
/// Offset of the rejected message.
pub const SOURCE_OFFSET_HEADER: &str = "source.offset";

/// `[dead_letter]`: where malformed input goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Send malformed messages to `topic`; when false they are only logged and counted.
    pub enabled: bool,
    /// Dead-letter topic.
    pub topic: String,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            topic: "audio.dead-letter".into(),
        }
    }
}

impl DeadLetterConfig {
    /// Every problem with these settings.
    pub fn validate(&self) -> Vec<Problem> {
        match valid_topic_name(&self.topic) {
            Err(why) if self.enabled => vec![Problem::new("dead_letter.topic", &self.topic, why)],
            _ => Vec::new(),
        }
    }
}

/// A rejected message as received, plus where it came from.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Original key.
    pub key: Option<Vec<u8>>,
    /// Original payload.
    pub payload: Option<Vec<u8>>,
    /// Original headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// What was wrong.
    pub error: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

impl DeadLetter {
    /// The dead letter of `message`, rejected because of `error`.
    pub fn from_message(message: &impl Message, error: String) -> Self {
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            error,
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
        }
    }
}

/// Sends dead letters through the output producer.
#[derive(Clone)]
pub struct DeadLetterSink {
    sink: KafkaSink,
    config: DeadLetterConfig,
}

impl DeadLetterSink {
    /// A dead-letter sink sharing `sink`'s producer.
    pub fn new(config: &DeadLetterConfig, sink: KafkaSink) -> Self {
        Self {
            sink,
            config: config.clone(),
        }
    }

    /// Sends `letter` (a no-op when disabled) and waits for the acknowledgement.
    pub async fn send(&self, letter: &DeadLetter) -> Result<(), SinkError> {
        if !self.config.enabled {
            return Ok(());
        }
        let mut headers = OwnedHeaders::new_with_capacity(letter.headers.len() + 4);
        for (name, value) in &letter.headers {
            headers = headers.insert(Header {
                key: name,
                value: value.as_deref(),
            });
        }
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        headers = headers
            .insert(Header {
                key: ERROR_HEADER,
                value: Some(letter.error.as_bytes()),
            })
            .insert(Header {
                key: SOURCE_TOPIC_HEADER,
                value: Some(letter.topic.as_bytes()),
            })
            .insert(Header {
                key: SOURCE_PARTITION_HEADER,
                value: Some(partition.as_bytes()),
            })
            .insert(Header {
                key: SOURCE_OFFSET_HEADER,
                value: Some(offset.as_bytes()),
            });
        let mut record = rdkafka::producer::FutureRecord::to(&self.config.topic)
            .payload(letter.payload.as_deref().unwrap_or_default())
            .headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        self.sink.send(record).await
    }
}
