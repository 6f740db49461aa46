//! Topic names and topic creation.

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::{debug, info};

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
    /// The broker's metadata did not list these topics, each with all its partitions led, in
    /// the time allowed.
    #[error(
        "the broker's metadata did not list {} with every partition led within {waited_secs} s",
        .topics.join(", ")
    )]
    NotListed {
        /// The topics still missing (or missing partitions or leaders).
        topics: Vec<String>,
        /// How long it waited.
        waited_secs: u64,
    },
}

/// How long topic creation waits for the broker's metadata to list what it created: a broker
/// that has just started (KRaft, first run) acknowledges `CreateTopics` before its metadata
/// lists the topic.
pub const LISTED_WAIT: Duration = Duration::from_secs(30);

/// The longest pause between two metadata requests while waiting.
const LISTED_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One topic to wait for: its name, and the partitions it must have (`None`: any number).
pub type WantedTopic<'a> = (&'a str, Option<usize>);

/// Waits, with backoff, up to `bound` until `client`'s view of the broker's metadata lists
/// every topic of `wanted` with (at least) its partitions, each with a leader. Returns the
/// partition count of each, or [`TopicError::NotListed`] naming the topics still missing.
/// Metadata requests block the calling thread for at most a few seconds each.
pub async fn await_listed<C: ClientContext>(
    client: &Client<C>,
    wanted: &[WantedTopic<'_>],
    bound: Duration,
) -> Result<HashMap<String, usize>, TopicError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut logged = false;
    loop {
        let left = bound.saturating_sub(started.elapsed());
        let request_timeout = left.clamp(Duration::from_millis(500), Duration::from_secs(5));
        let (listed, missing) = match client.fetch_metadata(None, request_timeout) {
            Ok(metadata) => listed_topics(&metadata, wanted),
            Err(e) => {
                debug!(error = %e, "Metadata request failed while waiting for topics.");
                (
                    HashMap::new(),
                    wanted.iter().map(|(t, _)| t.to_string()).collect(),
                )
            }
        };
        if missing.is_empty() {
            if logged {
                info!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "Topics listed."
                );
            }
            return Ok(listed);
        }
        if started.elapsed() >= bound {
            return Err(TopicError::NotListed {
                topics: missing,
                waited_secs: bound.as_secs(),
            });
        }
        if !logged {
            info!(topics = %missing.join(","), bound_secs = bound.as_secs(), "Waiting for the broker's metadata to list topics.");
            logged = true;
        }
        tokio::time::sleep(backoff.min(bound.saturating_sub(started.elapsed()))).await;
        backoff = (backoff * 2).min(LISTED_MAX_BACKOFF);
    }
}

/// Splits `wanted` into the topics `metadata` lists ready (with their partition counts) and
/// the names of those it does not.
fn listed_topics(
    metadata: &rdkafka::metadata::Metadata,
    wanted: &[WantedTopic<'_>],
) -> (HashMap<String, usize>, Vec<String>) {
    let mut listed = HashMap::new();
    let mut missing = Vec::new();
    for (name, partitions) in wanted {
        let ready = metadata
            .topics()
            .iter()
            .find(|t| t.name() == *name && t.error().is_none())
            .map(|t| t.partitions())
            .filter(|p| {
                !p.is_empty()
                    && partitions.is_none_or(|wanted| p.len() >= wanted)
                    && p.iter().all(|p| p.error().is_none() && p.leader() >= 0)
            });
        match ready {
            Some(p) => {
                listed.insert(name.to_string(), p.len());
            }
            None => missing.push(name.to_string()),
        }
    }
    (listed, missing)
}

/// An admin client for `kafka`.
pub fn admin_client(kafka: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, BuildError> {
    let config = kafka.client_config(&Default::default())?;
    kafka.create("admin client", &config)
}

/// Creates the `topics` that do not exist yet (existing ones are left as they are) and returns
/// once the broker's metadata lists each of them with every partition led, waiting up to
/// [`LISTED_WAIT`]: created means usable. Returns each topic's partition count as listed.
pub async fn create_missing(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[NewTopic<'_>],
) -> Result<HashMap<String, usize>, TopicError> {
    let results = admin
        .create_topics(
            topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => {
                info!(%topic, "Topic created.");
                created.push(topic);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Refused { topic, code }),
        }
    }
    // A topic created here must show all its partitions; one that existed, however many it has.
    let wanted: Vec<WantedTopic<'_>> = topics
        .iter()
        .map(|t| {
            let new = created.iter().any(|c| c == t.name);
            (
                t.name,
                usize::try_from(t.num_partitions).ok().filter(|_| new),
            )
        })
        .collect();
    await_listed(admin.inner(), &wanted, LISTED_WAIT).await
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
