//! Recovery: a partition assigned to this worker is paused and its streams are restored from
//! the same partition of the checkpoint topic ([`checkpoint::read_partition`], off the
//! runtime, retried until it succeeds or the partition is revoked). What arrives for it
//! meanwhile is set aside, in order, and handed on once its streams are back.
//!
//! With `output.exactly_once` the group's committed offset of the partition is read first
//! (a stable read: it waits until no transaction holding an offset for it is open), so the
//! checkpoints read after it are those of the same committed state. A partition whose
//! transaction was aborted is *rewound* the same way: its streams are restored from the last
//! committed checkpoints and the consumer is moved back to the last committed offset.

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use super::backpressure::{PauseGate, RetryDelay};
use super::state::checkpoint_topic as checkpoint;
use super::state::streams::{ExtractorCache, PartitionStreams};
use crate::config::Settings;
use crate::kafka::BuildError;
use crate::kafka::closing::ClosedApart;
use crate::sources::kafka::SourceContext;
use crate::telemetry::metrics::Metrics;

/// A partition's streams read back from the checkpoint topic.
struct Restored {
    partition: i32,
    generation: u64,
    table: PartitionStreams,
    elapsed: Duration,
    /// For a rewind: where the consumer goes back to (the committed offset).
    seek_to: Option<i64>,
}

/// Why a partition is restored.
#[derive(Clone, Copy)]
enum Restore {
    /// It was assigned: it resumes where the consumer fetches from.
    Assigned,
    /// Its transaction was aborted: it goes back to the committed offset, or, when the group
    /// has none, to `fallback` (the first offset received since it was assigned).
    Rewind { fallback: Option<i64> },
}

/// Partitions being restored from the checkpoint topic. Each is paused on assignment and read
/// off the runtime; what arrives for it meanwhile is set aside, in order, and handed on once its
/// streams are back.
pub(super) struct Restores {
    client: rdkafka::ClientConfig,
    /// Asks for the checkpoint partitions' watermarks ([`checkpoint::read_partition`]).
    bounds: Arc<BaseConsumer>,
    /// Reads the group's committed input offsets (exactly-once mode); never joins the group.
    committed: Option<Arc<ClosedApart<BaseConsumer>>>,
    /// The input topic.
    input: String,
    /// The checkpoint topic.
    topic: String,
    timeout: Duration,
    cache: Arc<ExtractorCache>,
    /// Partition → generation of the restore in flight (a revocation abandons it) and why.
    running: HashMap<i32, (u64, Restore)>,
    next_generation: u64,
    /// Messages of partitions still being restored.
    set_aside: Vec<OwnedMessage>,
    done_sender: tokio::sync::mpsc::UnboundedSender<Restored>,
    done: tokio::sync::mpsc::UnboundedReceiver<Restored>,
}

impl Restores {
    /// Restores of `settings`' checkpoint topic into tables using `cache`'s extractors.
    pub(super) fn new(settings: &Settings, cache: Arc<ExtractorCache>) -> Result<Self, BuildError> {
        let client = settings.kafka.client_config(&settings.kafka.consumer)?;
        let bounds: BaseConsumer = settings.kafka.create("checkpoint consumer", &client)?;
        let committed = if settings.output.exactly_once {
            let mut reader = client.clone();
            reader
                .set("group.id", &settings.source.group_id)
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed");
            let reader: BaseConsumer = settings.kafka.create("offset reader", &reader)?;
            Some(Arc::new(ClosedApart::new("offset reader", reader)))
        } else {
            None
        };
        let (done_sender, done) = tokio::sync::mpsc::unbounded_channel();
        Ok(Self {
            client,
            bounds: Arc::new(bounds),
            committed,
            input: settings.source.topic.clone(),
            topic: settings.checkpoint_topic(),
            timeout: Duration::from_secs(settings.checkpoint.restore_timeout_secs),
            cache,
            running: HashMap::new(),
            next_generation: 0,
            set_aside: Vec::new(),
            done_sender,
            done,
        })
    }

    /// Pauses `partition` and starts reading its checkpoints (retrying until it succeeds or
    /// the partition is revoked).
    pub(super) fn start(&mut self, consumer: &StreamConsumer<SourceContext>, partition: i32) {
        self.begin(consumer, partition, Restore::Assigned);
    }

    /// Rewinds `partition` after an aborted transaction: pauses it, restores its streams from
    /// the committed checkpoints and moves the consumer back to the committed offset (or to
    /// `fallback` when the group has none). The caller has dropped its table and what was
    /// pending for it.
    pub(super) fn rewind(
        &mut self,
        consumer: &StreamConsumer<SourceContext>,
        partition: i32,
        fallback: Option<i64>,
    ) {
        self.cancel(partition);
        self.begin(consumer, partition, Restore::Rewind { fallback });
    }

    fn begin(&mut self, consumer: &StreamConsumer<SourceContext>, partition: i32, why: Restore) {
        let mut paused = TopicPartitionList::new();
        let _ = paused.add_partition(&self.input, partition);
        if let Err(e) = consumer.pause(&paused) {
            warn!(partition, error = %e, "Cannot pause a partition being restored.");
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        self.running.insert(partition, (generation, why));
        let (client, bounds, committed, input, checkpoint_topic, timeout, cache, done) = (
            self.client.clone(),
            self.bounds.clone(),
            self.committed.clone(),
            self.input.clone(),
            self.topic.clone(),
            self.timeout,
            self.cache.clone(),
            self.done_sender.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut delay = RetryDelay::default();
            let read = || -> Result<_, String> {
                // The committed offset first: its transaction's checkpoints are then committed.
                let offset = match &committed {
                    Some(reader) => committed_offset(reader, &input, partition, timeout)?,
                    None => None,
                };
                let checkpoints = checkpoint::read_partition(
                    &client,
                    &bounds,
                    &checkpoint_topic,
                    partition,
                    timeout,
                )
                .map_err(|e| e.to_string())?;
                Ok((offset, checkpoints))
            };
            loop {
                match read() {
                    Ok((offset, checkpoints)) => {
                        let table = PartitionStreams::restore(partition, &cache, checkpoints);
                        let seek_to = match why {
                            Restore::Assigned => None,
                            Restore::Rewind { fallback } => offset.or(fallback),
                        };
                        let _ = done.send(Restored {
                            partition,
                            generation,
                            table,
                            elapsed: started.elapsed(),
                            seek_to,
                        });
                        return;
                    }
                    Err(e) => {
                        warn!(partition, error = %e, retry_in_ms = delay.current().as_millis() as u64, "Cannot read checkpoints; retrying.");
                        if done.is_closed() {
                            return;
                        }
                        std::thread::sleep(delay.next());
                    }
                }
            }
        });
    }

    /// Forgets the restore of a revoked partition and what was set aside for it.
    pub(super) fn cancel(&mut self, partition: i32) {
        self.running.remove(&partition);
        self.set_aside.retain(|m| m.partition() != partition);
    }

    /// Keeps `message` until its partition's restore finishes.
    pub(super) fn hold_back(&mut self, message: OwnedMessage) {
        self.set_aside.push(message);
    }

    /// True while `partition`'s checkpoints are being read.
    pub(super) fn is_restoring(&self, partition: i32) -> bool {
        self.running.contains_key(&partition)
    }

    /// Installs the tables of finished restores, hands their set-aside messages to `pending`
    /// and resumes their partitions (unless a sink outage holds the assignment paused).
    pub(super) fn finish(
        &mut self,
        tables: &mut HashMap<i32, PartitionStreams>,
        pending: &mut Vec<OwnedMessage>,
        gate: &PauseGate,
        metrics: &Metrics,
    ) {
        while let Ok(restored) = self.done.try_recv() {
            let Some(&(generation, why)) = self.running.get(&restored.partition) else {
                continue;
            };
            if generation != restored.generation {
                continue;
            }
            let partition = restored.partition;
            if let Restore::Rewind { .. } = why {
                // What was set aside came from before the rewind.
                self.set_aside.retain(|m| m.partition() != partition);
                if let Some(offset) = restored.seek_to
                    && let Err(e) = self.seek(gate, partition, offset)
                {
                    warn!(partition, offset, error = %e, "Cannot rewind the consumer; restoring again.");
                    if let Some(consumer) = gate.consumer() {
                        self.begin(&consumer, partition, why);
                    }
                    continue;
                }
            }
            self.running.remove(&partition);
            metrics
                .restore_seconds
                .observe(restored.elapsed.as_secs_f64());
            info!(
                partition,
                streams = restored.table.len(),
                restore_ms = restored.elapsed.as_millis() as u64,
                rewound_to = restored.seek_to,
                "Partition restored from checkpoints."
            );
            tables.insert(partition, restored.table);
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.set_aside)
                .into_iter()
                .partition(|m| m.partition() == partition);
            self.set_aside = waiting;
            pending.extend(ready);
            gate.resume_partition(partition);
        }
    }

    /// Moves the consumer's position in `partition` to `offset` (it stays paused).
    fn seek(
        &self,
        gate: &PauseGate,
        partition: i32,
        offset: i64,
    ) -> rdkafka::error::KafkaResult<()> {
        let Some(consumer) = gate.consumer() else {
            return Ok(());
        };
        consumer.seek(
            &self.input,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        )
    }
}

/// The group's committed offset of `partition` of `topic` (`None`: the group has none), read
/// stable: it waits until no open transaction holds an offset for the partition.
fn committed_offset(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Option<i64>, String> {
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(topic, partition);
    let committed = reader
        .committed_offsets(wanted, timeout)
        .map_err(|e| format!("cannot read the committed offset of {topic} [{partition}]: {e}"))?;
    Ok(committed
        .find_partition(topic, partition)
        .and_then(|element| match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }))
}
