//! Kafka source: consumer-group membership, rebalance hooks and offset storage.
//!
//! Offsets are stored by hand (`enable.auto.offset.store=false`) only once a message's
//! records are acknowledged by every sink and no live stream still needs its samples;
//! librdkafka's auto-commit then commits what was stored, and a revocation commits
//! synchronously before the partitions move.

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Statistics, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

use crate::kafka::reachability::any_broker_up;
use crate::kafka::{BuildError, KafkaConfig, valid_topic_name};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;
use crate::validation::Problem;

/// `source.auto_offset_reset`: where a group without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoOffsetReset {
    /// The oldest message still in the topic (the default: nothing is skipped).
    Earliest,
    /// Only messages produced after the group first joins.
    Latest,
}

impl AutoOffsetReset {
    /// librdkafka's name for it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

/// `[source]`: the input topic and how it is consumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSourceConfig {
    /// Topic carrying raw PCM chunks keyed by stream id.
    pub topic: String,
    /// Consumer group; instances with the same group share the partitions.
    pub group_id: String,
    /// Create the input, output and dead-letter topics at startup when missing.
    pub create_topics: bool,
    /// Partitions for topics created by `create_topics`.
    pub topic_partitions: i32,
    /// Replication factor for topics created by `create_topics`.
    pub topic_replication: i32,
    /// Most messages handled in one batch (one sink round trip).
    pub batch_max_messages: usize,
    /// Longest wait, in milliseconds, for more messages once a batch has begun with a first
    /// message after a quiet spell; messages already queued go without it.
    pub batch_linger_ms: u64,
    /// How often stored offsets are committed, in milliseconds.
    pub commit_interval_ms: u64,
    /// Where a group with no committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: AutoOffsetReset,
    /// Static group membership (`group.instance.id`), e.g. the pod name: a restarted instance
    /// takes its partitions back without a rebalance if it returns within the session timeout.
    /// Must be unique within the group. Empty: dynamic membership.
    pub instance_id: String,
    /// `session.timeout.ms`: how long the group waits for a silent member before its partitions
    /// move. Short, because a stalled partition stalls real-time audio.
    pub session_timeout_ms: u64,
    /// `heartbeat.interval.ms`: how often the member tells the coordinator it is alive (at most
    /// a third of the session timeout).
    pub heartbeat_interval_ms: u64,
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        Self {
            topic: "audio.raw".into(),
            group_id: "specflow".into(),
            create_topics: false,
            topic_partitions: 6,
            topic_replication: 1,
            batch_max_messages: 1000,
            batch_linger_ms: 5,
            commit_interval_ms: 1000,
            auto_offset_reset: AutoOffsetReset::Earliest,
            instance_id: String::new(),
            session_timeout_ms: 10_000,
            heartbeat_interval_ms: 2_000,
        }
    }
}

impl KafkaSourceConfig {
    /// Every problem with these settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(why) = valid_topic_name(&self.topic) {
            problems.push(Problem::new("source.topic", &self.topic, why));
        }
        if self.group_id.trim().is_empty() {
            problems.push(Problem::new("source.group_id", "\"\"", "must not be empty"));
        }
        if self.topic_partitions < 1 {
            problems.push(Problem::new(
                "source.topic_partitions",
                self.topic_partitions,
                "must be at least 1",
            ));
        }
        if self.topic_replication < 1 {
            problems.push(Problem::new(
                "source.topic_replication",
                self.topic_replication,
                "must be at least 1",
            ));
        }
        if self.batch_max_messages == 0 {
            problems.push(Problem::new(
                "source.batch_max_messages",
                0,
                "must be at least 1",
            ));
        }
        if self.commit_interval_ms == 0 {
            problems.push(Problem::new(
                "source.commit_interval_ms",
                0,
                "must be at least 1",
            ));
        }
        if !(6_000..=300_000).contains(&self.session_timeout_ms) {
            problems.push(Problem::new(
                "source.session_timeout_ms",
                self.session_timeout_ms,
                "must be between 6000 and 300000 (the broker's default group limits)",
            ));
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms * 3 > self.session_timeout_ms
        {
            problems.push(Problem::new(
                "source.heartbeat_interval_ms",
                self.heartbeat_interval_ms,
                "must be at least 1 and at most a third of source.session_timeout_ms",
            ));
        }
        if self.instance_id.len() > 249
            || self
                .instance_id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            problems.push(Problem::new(
                "source.instance_id",
                &self.instance_id,
                "must be at most 249 characters, without spaces or control characters",
            ));
        }
        problems
    }

    /// Builds the consumer (not yet subscribed).
    pub fn build(
        &self,
        kafka: &KafkaConfig,
        context: SourceContext,
    ) -> Result<StreamConsumer<SourceContext>, BuildError> {
        let mut config = kafka.client_config(&kafka.consumer)?;
        config
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                self.commit_interval_ms.to_string(),
            )
            .set("auto.offset.reset", self.auto_offset_reset.as_str())
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                self.heartbeat_interval_ms.to_string(),
            );
        if !self.instance_id.is_empty() {
            config.set("group.instance.id", &self.instance_id);
        }
        if !kafka.consumer.contains_key("partition.assignment.strategy") {
            config.set("partition.assignment.strategy", "cooperative-sticky");
        }
        if !kafka.consumer.contains_key("isolation.level") {
            // librdkafka's default, made explicit: records of aborted transactions (the output
            // of a fenced or failed worker, in exactly-once mode) are never read.
            config.set("isolation.level", "read_committed");
        }
        if !kafka.consumer.contains_key("statistics.interval.ms") {
            config.set("statistics.interval.ms", "5000");
        }
        kafka.create_with_context("consumer", &config, context)
    }
}

/// Partition changes seen by the consumer callbacks, drained by the pipeline.
#[derive(Debug, Default)]
pub struct RebalanceEvents {
    /// Partitions revoked since the last drain.
    pub revoked: Vec<i32>,
    /// Partitions assigned since the last drain.
    pub assigned: Vec<i32>,
}

/// Commits the offsets stored so far. `Ok(false)` when there was nothing new to commit.
pub fn commit_stored_offsets<C: ConsumerContext>(consumer: &impl Consumer<C>) -> KafkaResult<bool> {
    match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        Ok(()) => Ok(true),
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Consumer context: records rebalances, commits on revocation, exports statistics.
pub struct SourceContext {
    topic: String,
    events: Arc<Mutex<RebalanceEvents>>,
    metrics: Arc<Metrics>,
    health: Option<Arc<Health>>,
}

impl SourceContext {
    /// A context for `topic` that reports to `metrics`.
    pub fn new(topic: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            topic: topic.to_string(),
            events: Arc::default(),
            metrics,
            health: None,
        }
    }

    /// Also reports broker reachability (from librdkafka's statistics) to `health`.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = Some(health);
        self
    }

    /// The input topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Takes the partition changes seen since the last call.
    pub fn take_events(&self) -> RebalanceEvents {
        std::mem::take(&mut *self.events.lock().expect("rebalance events lock"))
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(health) = &self.health {
            health.set_kafka_ok(any_broker_up(&statistics));
        }
        if let Some(topic) = statistics.topics.get(&self.topic) {
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    self.metrics
                        .set_consumer_lag(*partition, stats.consumer_lag);
                }
            }
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = partitions_of(list);
            // Everything stored was fully written; hand it to the next owner now.
            match commit_stored_offsets(consumer) {
                Ok(true) => info!(?partitions, "Partitions revoked; stored offsets committed."),
                Ok(false) => info!(?partitions, "Partitions revoked; no new offsets to commit."),
                Err(e) => {
                    warn!(?partitions, error = %e, "Partitions revoked; commit failed (records will be replayed).")
                }
            }
            self.metrics.rebalances_total.inc();
            for p in &partitions {
                self.metrics.forget_partition(*p);
            }
            self.events
                .lock()
                .expect("rebalance events lock")
                .revoked
                .extend(partitions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partitions_of(list);
                info!(?partitions, "Partitions assigned.");
                // The group coordinator just answered: the brokers are reachable now, not only
                // at the next statistics report (up to `statistics.interval.ms` later), so an
                // idle worker is ready as soon as it is assigned.
                if let Some(health) = &self.health {
                    health.set_kafka_ok(true);
                }
                self.metrics.rebalances_total.inc();
                self.events
                    .lock()
                    .expect("rebalance events lock")
                    .assigned
                    .extend(partitions);
            }
            Rebalance::Error(e) => warn!(error = %e, "Rebalance error."),
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result
            && !matches!(
                e,
                rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NoOffset
                )
            )
        {
            warn!(error = %e, offsets = offsets.count(), "Offset commit failed.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;

    #[test]
    fn an_assignment_shows_the_brokers_reachable_before_any_statistics() {
        let health = Arc::new(Health::default());
        let context = SourceContext::new("audio.raw", Arc::new(Metrics::default()))
            .with_health(health.clone());
        // Created without contacting a broker (nothing is subscribed or polled).
        let consumer: BaseConsumer<SourceContext> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "specflow-unit")
            .create_with_context(context)
            .expect("consumer");
        assert!(health.readiness().reasons.contains(&"kafka unreachable"));
        let mut list = TopicPartitionList::new();
        list.add_partition("audio.raw", 0);
        consumer
            .context()
            .post_rebalance(&consumer, &Rebalance::Assign(&list));
        let reasons = health.readiness().reasons;
        assert!(!reasons.contains(&"kafka unreachable"), "{reasons:?}");
        assert_eq!(consumer.context().take_events().assigned, vec![0]);
    }
}
