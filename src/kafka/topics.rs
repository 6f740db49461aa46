//! Topic names and topic creation.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;
use tracing::info;

use super::{BuildError, KafkaConfig};

/// Checks a Kafka topic name (legal characters, length).
pub fn valid_topic_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 249 {
        return Err("must be 1 to 249 characters");
    }
    if name == "." || name == ".." {
        return Err("must not be . or ..");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("may only contain ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The admin request failed as a whole (broker unreachable, timeout).
    #[error("cannot create topics: {0}")]
    Request(#[from] KafkaError),
    /// The broker refused one topic.
    #[error("cannot create topic {topic}: {code}")]
    Refused {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
}

/// An admin client for `kafka`.
pub fn admin_client(kafka: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, BuildError> {
    let config = kafka.client_config(&Default::default())?;
    kafka.create("admin client", &config)
}

/// Creates the `topics` that do not exist yet; existing ones are left as they are.
pub async fn create_missing(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[NewTopic<'_>],
) -> Result<(), TopicError> {
    let results = admin
        .create_topics(
            topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for result in results {
        match result {
            Ok(topic) => info!(%topic, "Topic created."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Refused { topic, code }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::valid_topic_name;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(valid_topic_name("audio.raw-1_x").is_ok());
        assert!(valid_topic_name("").is_err());
        assert!(valid_topic_name("..").is_err());
        assert!(valid_topic_name("a b").is_err());
        assert!(valid_topic_name(&"x".repeat(250)).is_err());
    }
}
