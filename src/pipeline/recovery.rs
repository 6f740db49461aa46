//! Recovery: a partition assigned to this worker is paused and its streams are restored from
//! the same partition of the checkpoint topic ([`checkpoint::read_partition`], off the
//! runtime, retried until it succeeds or the partition is revoked). What arrives for it
//! meanwhile is set aside, in order, and handed on once its streams are back.

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use super::backpressure::PauseGate;
use super::state::checkpoint_topic as checkpoint;
use super::state::streams::{ExtractorCache, PartitionStreams};
use crate::config::Settings;
use crate::kafka::BuildError;
use crate::sources::kafka::SourceContext;
use crate::telemetry::metrics::Metrics;

/// A partition's streams read back from the checkpoint topic.
struct Restored {
    partition: i32,
    generation: u64,
    table: PartitionStreams,
    elapsed: Duration,
}

/// Partitions being restored from the checkpoint topic. Each is paused on assignment and read
/// off the runtime; what arrives for it meanwhile is set aside, in order, and handed on once its
/// streams are back.
pub(super) struct Restores {
    client: rdkafka::ClientConfig,
    /// Asks for the checkpoint partitions' watermarks ([`checkpoint::read_partition`]).
    bounds: Arc<BaseConsumer>,
    topic: String,
    timeout: Duration,
    cache: Arc<ExtractorCache>,
    /// Partition → generation of the restore in flight (a revocation abandons it).
    running: HashMap<i32, u64>,
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
        let (done_sender, done) = tokio::sync::mpsc::unbounded_channel();
        Ok(Self {
            client,
            bounds: Arc::new(bounds),
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
    pub(super) fn start(
        &mut self,
        consumer: &StreamConsumer<SourceContext>,
        partition: i32,
        topic: &str,
    ) {
        let mut paused = TopicPartitionList::new();
        let _ = paused.add_partition(topic, partition);
        if let Err(e) = consumer.pause(&paused) {
            warn!(partition, error = %e, "Cannot pause a partition being restored.");
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        self.running.insert(partition, generation);
        let (client, bounds, checkpoint_topic, timeout, cache, done) = (
            self.client.clone(),
            self.bounds.clone(),
            self.topic.clone(),
            self.timeout,
            self.cache.clone(),
            self.done_sender.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut delay = Duration::from_millis(200);
            loop {
                match checkpoint::read_partition(
                    &client,
                    &bounds,
                    &checkpoint_topic,
                    partition,
                    timeout,
                ) {
                    Ok(checkpoints) => {
                        let table = PartitionStreams::restore(partition, &cache, checkpoints);
                        let _ = done.send(Restored {
                            partition,
                            generation,
                            table,
                            elapsed: started.elapsed(),
                        });
                        return;
                    }
                    Err(e) => {
                        warn!(partition, error = %e, retry_in_ms = delay.as_millis() as u64, "Cannot read checkpoints; retrying.");
                        if done.is_closed() {
                            return;
                        }
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(5));
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
            if self.running.get(&restored.partition) != Some(&restored.generation) {
                continue;
            }
            self.running.remove(&restored.partition);
            metrics
                .restore_seconds
                .observe(restored.elapsed.as_secs_f64());
            info!(
                partition = restored.partition,
                streams = restored.table.len(),
                restore_ms = restored.elapsed.as_millis() as u64,
                "Partition restored from checkpoints."
            );
            tables.insert(restored.partition, restored.table);
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.set_aside)
                .into_iter()
                .partition(|m| m.partition() == restored.partition);
            self.set_aside = waiting;
            pending.extend(ready);
            gate.resume_partition(restored.partition);
        }
    }
}
