//! Kafka source: consumer-group membership, rebalance hooks and offset storage.
//!
//! Offsets are stored by hand (`enable.auto.offset.store=false`): a partition's offset is the
//! last handled offset + 1, stored only after the batch's records were acknowledged by Kafka,
//! its documents written to MongoDB (when on) and its streams' checkpoints (which carry the
//! stream state) written to the checkpoint topic. librdkafka's auto-commit then commits what
//! was stored, and a revocation commits synchronously before the partitions move. In
//! exactly-once mode (`output.exactly_once`) the offsets go in each batch's transaction instead.

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Statistics, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

use crate::clock::unix_ms;

use crate::kafka::reachability::any_broker_up;
use crate::kafka::{BuildError, KafkaConfig, valid_topic_name};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;
use crate::validation::Problem;

/// The consumer's `statistics.interval.ms` unless `[kafka.consumer]` sets it: consumer lag,
/// broker reachability and the group state ([`Membership`]) come with each report.
pub const CONSUMER_STATISTICS_INTERVAL_MS: u64 = 5_000;

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
    /// Create the input, output and (when enabled) dead-letter topics at startup when missing,
    /// and the compacted checkpoint topic with as many partitions as the input topic.
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
    /// How long the consumer may stay without its group coordinator (librdkafka's statistics:
    /// group state other than `up`) before it is reconnected, then subscribed again, then
    /// counted as failed: after a broker restart, a consumer whose session timed out can wait
    /// for its coordinator for good. At least the session timeout.
    pub rejoin_timeout_ms: u64,
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
            rejoin_timeout_ms: 60_000,
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
        if self.rejoin_timeout_ms < self.session_timeout_ms || self.rejoin_timeout_ms > 3_600_000 {
            problems.push(Problem::new(
                "source.rejoin_timeout_ms",
                self.rejoin_timeout_ms,
                "must be at least source.session_timeout_ms and at most 3600000",
            ));
        }
        problems
    }

    /// How often the consumer reports statistics: `[kafka.consumer]`'s
    /// `statistics.interval.ms`, else [`CONSUMER_STATISTICS_INTERVAL_MS`] (0: never).
    pub fn statistics_interval(kafka: &KafkaConfig) -> Duration {
        let ms = kafka
            .consumer
            .get("statistics.interval.ms")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(CONSUMER_STATISTICS_INTERVAL_MS);
        Duration::from_millis(ms)
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
            config.set(
                "statistics.interval.ms",
                CONSUMER_STATISTICS_INTERVAL_MS.to_string(),
            );
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
    membership: Membership,
}

impl SourceContext {
    /// A context for `topic` that reports to `metrics`.
    pub fn new(topic: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            topic: topic.to_string(),
            events: Arc::default(),
            metrics,
            health: None,
            membership: Membership::new(unix_ms()),
        }
    }

    /// How the consumer stands in its group.
    pub fn membership(&self) -> &Membership {
        &self.membership
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
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(group) = &statistics.cgrp {
            debug!(state = %group.state, join_state = %group.join_state, assigned = group.assignment_size, "Consumer group statistics.");
            self.membership
                .report(&group.state, &group.join_state, unix_ms());
        }
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

/// How the consumer stands in its group, from librdkafka's statistics (every
/// `statistics.interval.ms`) and its assignments: when it last had its group coordinator
/// (group state `up`; joins and rebalances in progress count as settled: they are
/// librdkafka's business and can take up to `max.poll.interval.ms`), and what it reported
/// last.
#[derive(Debug)]
pub struct Membership {
    /// The last report with the coordinator up (or the creation).
    settled_ms: AtomicI64,
    /// The last [`Membership::restart_clock`]: unsettled time counts from it, but it is no
    /// report of a settled member.
    restarted_ms: AtomicI64,
    reported_ms: AtomicI64,
    last_state: Mutex<String>,
}

impl Membership {
    /// A member that counts as settled at `now_ms` (its first join has that long to happen).
    pub fn new(now_ms: i64) -> Self {
        Self {
            settled_ms: AtomicI64::new(now_ms),
            restarted_ms: AtomicI64::new(now_ms),
            reported_ms: AtomicI64::new(0),
            last_state: Mutex::new(String::new()),
        }
    }

    /// Records a report of the group state and join state at `now_ms`.
    pub fn report(&self, state: &str, join_state: &str, now_ms: i64) {
        if state == "up" {
            self.settled_ms.store(now_ms, Ordering::Relaxed);
        }
        self.reported_ms.store(now_ms, Ordering::Relaxed);
        *self.last_state.lock().unwrap_or_else(|e| e.into_inner()) =
            format!("{state}/{join_state}");
    }

    /// Counts unsettled time from `now_ms` on (after an attempt to rejoin), until a report
    /// shows the member settled.
    pub fn restart_clock(&self, now_ms: i64) {
        self.restarted_ms.store(now_ms, Ordering::Relaxed);
    }

    /// How long the member has been unsettled as of `now_ms` (since it was last settled, or
    /// since the clock restarted if later), with its last reported state: `None` while it is
    /// settled or when no statistics came within `stale` (nothing known).
    pub fn unsettled_for(&self, now_ms: i64, stale: Duration) -> Option<(Duration, String)> {
        let reported = self.reported_ms.load(Ordering::Relaxed);
        let settled = self.settled_ms.load(Ordering::Relaxed);
        let fresh = now_ms.saturating_sub(reported) <= stale.as_millis() as i64;
        if !fresh || settled >= reported {
            return None;
        }
        let state = self
            .last_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let since = settled.max(self.restarted_ms.load(Ordering::Relaxed));
        let unsettled_ms = now_ms.saturating_sub(since).max(0) as u64;
        Some((Duration::from_millis(unsettled_ms), state))
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
                .unwrap_or_else(|e| e.into_inner())
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
                self.membership.report("up", "steady", unix_ms());
                self.metrics.rebalances_total.inc();
                self.events
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
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

    #[test]
    fn a_member_is_stranded_only_while_fresh_statistics_say_it_is_unsettled() {
        let stale = Duration::from_secs(15);
        let membership = Membership::new(1_000);
        // Nothing reported yet: nothing known.
        assert!(membership.unsettled_for(100_000, stale).is_none());
        membership.report("up", "steady", 2_000);
        assert!(membership.unsettled_for(3_000, stale).is_none());
        // A rebalance in progress with the coordinator up is settled.
        membership.report("up", "wait-join", 4_000);
        assert!(membership.unsettled_for(5_000, stale).is_none());
        // Its session timed out while the coordinator was away.
        membership.report("wait-coord", "init", 7_000);
        let (unsettled, state) = membership.unsettled_for(12_000, stale).unwrap();
        assert_eq!(
            unsettled,
            Duration::from_millis(8_000),
            "since it was last settled"
        );
        assert_eq!(state, "wait-coord/init");
        // The statistics stopped (`statistics.interval.ms = 0`, or a stuck client): unknown.
        assert!(membership.unsettled_for(7_000 + 15_001, stale).is_none());
        // Subscribed again: the clock restarts; settled again: nothing to do.
        membership.restart_clock(30_000);
        membership.report("query-coord", "init", 31_000);
        assert_eq!(
            membership.unsettled_for(32_000, stale).unwrap().0,
            Duration::from_millis(2_000)
        );
        membership.report("up", "steady", 33_000);
        assert!(membership.unsettled_for(34_000, stale).is_none());
        // A clock restart is no settled report: still stranded, counted from the restart.
        membership.report("query-coord", "init", 40_000);
        membership.restart_clock(41_000);
        assert_eq!(
            membership.unsettled_for(42_000, stale).map(|(d, _)| d),
            Some(Duration::from_millis(1_000))
        );
    }

    #[test]
    fn the_rejoin_timeout_is_at_least_the_session() {
        let mut config = KafkaSourceConfig::default();
        assert!(config.validate().is_empty());
        config.rejoin_timeout_ms = config.session_timeout_ms - 1;
        let problems = format!("{:?}", config.validate());
        assert!(problems.contains("source.rejoin_timeout_ms"), "{problems}");
    }
}
