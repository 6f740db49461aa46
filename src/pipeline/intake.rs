//! Intake: the consumer, the messages received but not processed yet (the next batch), and the
//! per-partition stream tables; rebalances add and drop partitions here.

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backpressure::PauseGate;
use super::batch::CheckpointRecords;
use super::recovery::Restores;
use super::state::streams::PartitionStreams;
use crate::clock::unix_ms;
use crate::config::Settings;
use crate::kafka::reachability::is_all_brokers_down;
use crate::shutdown::Unfinished;
use crate::sources::kafka::{KafkaSourceConfig, SourceContext, commit_stored_offsets};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

/// How long an idle poll waits before the loop does its housekeeping (idle eviction).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// What one [`Intake::receive`] call brought.
pub(super) enum Received {
    /// A message was appended (or set aside for a partition being restored).
    Message,
    /// Nothing arrived in time.
    Idle,
    /// The consumer reported an error.
    Error(rdkafka::error::KafkaError),
}

/// What [`Intake::next_batch`] brought.
pub(super) enum NextBatch {
    /// Shutdown was requested.
    Stop,
    /// Nothing arrived: time for housekeeping.
    Idle,
    /// Nothing to process: the consumer reported an error, the message was set aside for a
    /// partition being restored, or a revocation dropped what was pending.
    Empty,
    /// The messages of the next batch, in the order received.
    Messages(Vec<OwnedMessage>),
    /// The consumer failed fatally and can consume no more.
    Failed(ConsumerFailed),
}

/// The consumer failed fatally (librdkafka's fatal error: a static member fenced by another
/// member with its `group.instance.id`, which librdkafka can also do to itself after a
/// session timeout, confluentinc/librdkafka#3437), or stayed out of its group although
/// reconnected and subscribed again ([`Intake`]'s rejoin). librdkafka cannot recover such a
/// client: the worker stops, and its supervisor starts a fresh one.
#[derive(Debug, thiserror::Error)]
#[error(
    "the Kafka consumer failed fatally and can consume no more ({code:?}: {reason}); the worker stops so that its supervisor (systemd's Restart=on-failure, Kubernetes) starts it again"
)]
pub struct ConsumerFailed {
    /// librdkafka's error code.
    pub code: rdkafka::types::RDKafkaErrorCode,
    /// librdkafka's description.
    pub reason: String,
}

/// The consumer and everything that follows its assignment.
pub(super) struct Intake {
    consumer: Arc<StreamConsumer<SourceContext>>,
    health: Arc<Health>,
    /// Messages received but not processed yet (the next batch starts with them).
    pending: Vec<OwnedMessage>,
    /// Stream state per assigned (and restored) partition.
    pub(super) tables: HashMap<i32, PartitionStreams>,
    restores: Restores,
    /// The offset of the first message received per partition since it was assigned: where a
    /// rewind goes back to when the group has no committed offset for it.
    first_received: HashMap<i32, i64>,
    /// The input topic (subscribed again by [`Intake::rejoin_if_stranded`]).
    topic: String,
    /// `source.rejoin_timeout_ms`.
    rejoin_timeout: Duration,
    /// How fresh the group statistics must be to judge the membership by them.
    statistics_stale: Duration,
    /// Rejoin attempts since the consumer was last settled.
    rejoin_attempts: u32,
}

impl Intake {
    /// Builds the consumer and subscribes it to `source.topic`.
    pub(super) fn subscribe(
        settings: &Settings,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        restores: Restores,
    ) -> anyhow::Result<Self> {
        let context =
            SourceContext::new(&settings.source.topic, metrics).with_health(health.clone());
        let consumer = Arc::new(settings.source.build(&settings.kafka, context)?);
        consumer
            .subscribe(&[&settings.source.topic])
            .context("cannot subscribe")?;
        info!(topic = %settings.source.topic, group = %settings.source.group_id, "Consuming.");
        health.set_consuming();
        Ok(Self {
            consumer,
            health,
            pending: Vec::new(),
            tables: HashMap::new(),
            restores,
            first_received: HashMap::new(),
            topic: settings.source.topic.clone(),
            rejoin_timeout: Duration::from_millis(settings.source.rejoin_timeout_ms),
            statistics_stale: 3 * KafkaSourceConfig::statistics_interval(&settings.kafka),
            rejoin_attempts: 0,
        })
    }

    /// The consumer.
    pub(super) fn consumer(&self) -> &Arc<StreamConsumer<SourceContext>> {
        &self.consumer
    }

    /// Gives up everything but the consumer (the stream tables, the pending messages, the
    /// restores, whose threads stop after their current attempt); the caller becomes the
    /// consumer's only owner.
    pub(super) fn into_consumer(self) -> Arc<StreamConsumer<SourceContext>> {
        self.consumer
    }

    /// True while fewer than `max_batch` messages wait for the next batch.
    pub(super) fn below_batch_limit(&self, max_batch: usize) -> bool {
        self.pending.len() < max_batch
    }

    /// Installs the partitions whose restore finished (their set-aside messages join the
    /// pending ones).
    pub(super) fn finish_restores(&mut self, gate: &PauseGate, metrics: &Metrics) {
        self.restores
            .finish(&mut self.tables, &mut self.pending, gate, metrics);
    }

    /// Rewinds `partitions` (still assigned) to their last committed state after an aborted
    /// transaction: their stream tables and pending messages are dropped, their streams
    /// restored from the committed checkpoints, and the consumer moved back to the committed
    /// offsets ([`Restores::rewind`]). Returns how many were rewound.
    pub(super) fn rewind(&mut self, partitions: impl IntoIterator<Item = i32>) -> usize {
        let assigned = self.assigned();
        let mut rewound = 0;
        for partition in partitions {
            if !assigned.contains(&partition) {
                continue;
            }
            self.tables.remove(&partition);
            self.pending.retain(|m| m.partition() != partition);
            let fallback = self.first_received.get(&partition).copied();
            self.restores.rewind(&self.consumer, partition, fallback);
            rewound += 1;
        }
        rewound
    }

    /// The partitions assigned to the consumer.
    pub(super) fn assigned(&self) -> Vec<i32> {
        self.consumer.assignment().map_or_else(
            |_| Vec::new(),
            |list| list.elements().iter().map(|e| e.partition()).collect(),
        )
    }

    /// Receives one message into the pending batch (or sets it aside while its partition is
    /// restored), waiting at most `wait`. Partitions revoked during the call, even when assigned
    /// again since, lose their stream tables and the messages received before the revocation;
    /// assigned ones start restoring from their checkpoints.
    pub(super) async fn receive(&mut self, wait: Duration) -> Received {
        let received = tokio::time::timeout(wait, self.consumer.recv()).await;
        let events = self.consumer.context().take_events();
        if !events.revoked.is_empty() {
            self.pending
                .retain(|m| !events.revoked.contains(&m.partition()));
            for partition in &events.revoked {
                self.tables.remove(partition);
                self.restores.cancel(*partition);
                self.first_received.remove(partition);
            }
        }
        for partition in &events.assigned {
            self.first_received.remove(partition);
            self.restores.start(&self.consumer, *partition);
        }
        match received {
            Err(_) => Received::Idle,
            Ok(Err(e)) => {
                // librdkafka's global errors arrive here on the consumer queue.
                if is_all_brokers_down(&e) {
                    self.health.set_kafka_ok(false);
                }
                Received::Error(e)
            }
            Ok(Ok(message)) => {
                self.health.set_kafka_ok(true);
                let message = message.detach();
                self.first_received
                    .entry(message.partition())
                    .or_insert(message.offset());
                if self.restores.is_restoring(message.partition()) {
                    self.restores.hold_back(message);
                } else {
                    self.pending.push(message);
                }
                Received::Message
            }
        }
    }

    /// The next batch: waits for a first message (or shutdown), takes what is already queued,
    /// and only when nothing was (a first message after a quiet spell) gathers more for up to
    /// `linger`; at most `max_batch` in all. Messages that queued up while the last batch was
    /// handled have waited already: holding them for the linger too would only add latency.
    pub(super) async fn next_batch(
        &mut self,
        shutdown: &CancellationToken,
        linger: Duration,
        max_batch: usize,
    ) -> NextBatch {
        if self.pending.is_empty() {
            let received = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return NextBatch::Stop,
                received = self.receive(IDLE_POLL) => received,
            };
            match received {
                Received::Idle => {
                    let failed = self.rejoin_if_stranded().or_else(|| self.failed());
                    return failed.map_or(NextBatch::Idle, NextBatch::Failed);
                }
                Received::Error(e) => {
                    warn!(error = %e, "Kafka consumer error.");
                    return self.failed().map_or(NextBatch::Empty, NextBatch::Failed);
                }
                Received::Message => {}
            }
            if self.pending.is_empty() {
                // Set aside for a partition being restored.
                return NextBatch::Empty;
            }
        }
        while self.pending.len() < max_batch
            && matches!(self.receive(Duration::ZERO).await, Received::Message)
        {}
        if self.pending.len() == 1 {
            let deadline = Instant::now() + linger;
            while self.pending.len() < max_batch {
                let wait = deadline.saturating_duration_since(Instant::now());
                if !matches!(self.receive(wait).await, Received::Message) {
                    break;
                }
            }
        }
        if self.pending.is_empty() {
            NextBatch::Empty
        } else {
            NextBatch::Messages(std::mem::take(&mut self.pending))
        }
    }

    /// Gets a consumer that has been without its group coordinator for
    /// `source.rejoin_timeout_ms` back into its group. After a broker restart, a member whose
    /// session timed out while the coordinator was away can stay in librdkafka's coordinator
    /// query for good, assigned nothing and saying nothing. First a metadata request (a
    /// broker connection for the query); a member still out at the next timeout subscribes
    /// again (leaves the group and joins afresh); one still out after that has a client
    /// librdkafka no longer connects (seen: its metadata requests time out while the broker
    /// serves everyone else), and the consumer counts as failed: the worker stops for its
    /// supervisor to start it with fresh clients. Checked when nothing arrives (a stranded
    /// member receives nothing).
    fn rejoin_if_stranded(&mut self) -> Option<ConsumerFailed> {
        let membership = self.consumer.context().membership();
        let Some((unsettled, state)) = membership.unsettled_for(unix_ms(), self.statistics_stale)
        else {
            self.rejoin_attempts = 0;
            return None;
        };
        if unsettled < self.rejoin_timeout {
            return None;
        }
        if self.rejoin_attempts >= REJOIN_ATTEMPTS {
            return Some(ConsumerFailed {
                code: rdkafka::types::RDKafkaErrorCode::CoordinatorNotAvailable,
                reason: format!(
                    "out of its consumer group (librdkafka group state {state}) for about {} s, although reconnected and subscribed again",
                    (self.rejoin_timeout * (REJOIN_ATTEMPTS + 1)).as_secs()
                ),
            });
        }
        self.rejoin_attempts += 1;
        warn!(
            unsettled_ms = unsettled.as_millis() as u64,
            group_state = %state,
            attempt = self.rejoin_attempts,
            "The consumer has been without its group coordinator too long; reconnecting it."
        );
        membership.restart_clock(unix_ms());
        let consumer = &self.consumer;
        let topic = self.topic.as_str();
        let metadata =
            tokio::task::block_in_place(|| consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT));
        if let Err(e) = metadata {
            warn!(error = %e, "No broker answered a metadata request.");
        }
        if self.rejoin_attempts > 1 {
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&[topic]) {
                warn!(error = %e, "Cannot subscribe again; retrying after the rejoin timeout.");
            }
        }
        None
    }

    /// The consumer's fatal error, if it had one (checked when nothing arrives: a failed
    /// consumer delivers nothing, and says so nowhere else).
    fn failed(&self) -> Option<ConsumerFailed> {
        let (code, reason) = self.consumer.client().fatal_error()?;
        Some(ConsumerFailed { code, reason })
    }

    /// Evicts streams idle for `idle_timeout` and updates the stream and assignment gauges;
    /// returns the checkpoint records (tombstones, ended-stream markers) this made due, per
    /// partition.
    pub(super) fn sweep(
        &mut self,
        idle_timeout: Duration,
        metrics: &Metrics,
    ) -> Vec<(i32, CheckpointRecords)> {
        let mut due = Vec::new();
        let mut live = 0;
        let mut bytes = 0;
        for (partition, table) in self.tables.iter_mut() {
            let evicted = table.evict_idle(idle_timeout);
            metrics.streams_evicted_total.inc_by(evicted as u64);
            live += table.len();
            bytes += table.heap_bytes();
            let checkpoints = table.take_checkpoints();
            if !checkpoints.is_empty() {
                due.push((*partition, checkpoints));
            }
        }
        metrics.live_streams.set(live as i64);
        metrics.stream_state_bytes.set(bytes as i64);
        let assigned = self.consumer.assignment().map_or(0, |a| a.count());
        metrics.assigned_partitions.set(assigned as i64);
        self.health.set_assigned(assigned > 0);
        due
    }
}

/// Attempts to get a stranded consumer back into its group (a metadata request, then
/// subscribing again) before it counts as failed.
const REJOIN_ATTEMPTS: u32 = 2;

/// How long a stranded consumer's metadata request may wait for a broker.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// What the closing thread reports.
enum Closing {
    Committed(rdkafka::error::KafkaResult<bool>),
    Closed,
}

/// Closes `consumer` (its only owner hands it over) on a thread of its own: commits the stored
/// offsets, leaves the group and destroys the client, which joins librdkafka's threads and can
/// take as long as a broker outage. Waits for it until `by`; past that the thread is left to
/// the process exit and the stop counts as unfinished (the commit's outcome is unknown, so the
/// next owner may replay what was stored since the last commit).
pub(super) async fn close(
    consumer: Arc<StreamConsumer<SourceContext>>,
    by: Instant,
) -> Result<(), Unfinished> {
    let references = Arc::strong_count(&consumer);
    if references > 1 {
        warn!(
            references,
            "The consumer is still referenced at the end of the drain."
        );
    }
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("specflow-close".into())
        .spawn(move || {
            let _ = report.send(Closing::Committed(commit_stored_offsets(&*consumer)));
            consumer.unsubscribe();
            drop(consumer);
            let _ = report.send(Closing::Closed);
        })
        .map_err(|e| Unfinished(format!("cannot start the consumer's closing thread: {e}")))?;
    let mut outcome = Ok(());
    loop {
        match tokio::time::timeout_at(by.into(), reports.recv()).await {
            Ok(Some(Closing::Committed(Ok(true)))) => info!("Offsets committed."),
            Ok(Some(Closing::Committed(Ok(false)))) => {}
            Ok(Some(Closing::Committed(Err(e)))) => {
                warn!(error = %e, "Final commit failed; uncommitted messages will be replayed.");
                outcome = Err(Unfinished(format!("the final offset commit failed: {e}")));
            }
            Ok(Some(Closing::Closed)) | Ok(None) => return outcome,
            Err(_) => {
                warn!(
                    "The Kafka consumer did not close by the drain deadline; exiting without waiting for it."
                );
                return Err(Unfinished(
                    "the Kafka consumer did not close by the drain deadline".into(),
                ));
            }
        }
    }
}
