//! Store: the store writer tasks and the pending-records budget. Each writer takes its
//! partitions' jobs in order: the documents go to MongoDB (when on), then the checkpoints to
//! the checkpoint topic, and only then are the jobs' offsets stored.

use mongodb::bson::RawDocumentBuf;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::Sinks;
use super::backpressure::{Backoff, PauseGate};
use super::batch::{CheckpointRecords, Outbox, Outcome, OutputRecord, PartitionResult, StoreJob};
use super::state::checkpoint_topic as checkpoint;
use super::state::streams::PartitionStreams;
use crate::clock::unix_ms;
use crate::config::Settings;
use crate::record::EncodedRecord;
use crate::sinks::SinkError;
use crate::sinks::kafka::KafkaSink;
use crate::sinks::mongo::MongoSink;
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

/// The budget of records waiting for the store writers (`mongo.max_pending_records`); clones
/// share it.
#[derive(Clone)]
pub(super) struct PendingRoom {
    permits: Arc<tokio::sync::Semaphore>,
    capacity: usize,
}

impl PendingRoom {
    /// Room for `capacity` records.
    fn new(capacity: usize) -> Self {
        let capacity = capacity.min(tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Takes room for `job`'s documents (at most the whole budget), waiting until there is;
    /// the room goes back when the job is dropped.
    pub(super) async fn take_for(&self, job: &mut StoreJob) {
        let wanted = job.documents.len().min(self.capacity) as u32;
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(wanted)
            .await
            .expect("the budget is never closed");
        job.room.push(permit);
    }
}

/// The store writers' queues, one per writer; writers end when every clone is dropped.
#[derive(Clone)]
pub(super) struct StoreQueues(Arc<Vec<tokio::sync::mpsc::UnboundedSender<StoreJob>>>);

impl StoreQueues {
    /// Queues each writer's share of a batch (shares with nothing to store are skipped).
    /// False when a writer stopped on an error (the writer reports it).
    pub(super) fn queue(&self, jobs: Vec<StoreJob>) -> bool {
        self.0
            .iter()
            .zip(jobs)
            .filter(|(_, job)| !job.is_empty())
            .all(|(writer, job)| writer.send(job).is_ok())
    }
}

/// The store writer tasks (`mongo.concurrent_writes`; partitions are dealt over them) and
/// the budget of records waiting for them.
pub(super) struct StoreWriters {
    queues: StoreQueues,
    /// The writer tasks: joined, or aborted at the drain deadline, by [`StoreWriters::finish`]
    /// (and aborted if the set is dropped first); never detached.
    tasks: JoinSet<Result<(), SinkError>>,
    room: PendingRoom,
    store_documents: bool,
}

impl StoreWriters {
    /// Starts the writer tasks.
    pub(super) fn start(
        settings: &Settings,
        sinks: &Sinks,
        gate: &Arc<PauseGate>,
        metrics: &Arc<Metrics>,
        health: &Arc<Health>,
        shutdown: &CancellationToken,
    ) -> Self {
        let mut senders = Vec::new();
        let mut tasks = JoinSet::new();
        for _ in 0..settings.mongo.concurrent_writes.max(1) {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            senders.push(sender);
            tasks.spawn(
                StoreWriter {
                    mongo: sinks.mongo.clone(),
                    producer: sinks.output.clone(),
                    settings: settings.clone(),
                    gate: gate.clone(),
                    metrics: metrics.clone(),
                    health: health.clone(),
                    shutdown: shutdown.clone(),
                }
                .run(receiver),
            );
        }
        let room = PendingRoom::new(
            settings
                .mongo
                .max_pending_records
                .max(settings.source.batch_max_messages),
        );
        Self {
            queues: StoreQueues(Arc::new(senders)),
            tasks,
            room,
            store_documents: sinks.mongo.is_some(),
        }
    }

    /// Which writer stores `partition`'s documents and checkpoints.
    fn writer_of(&self, partition: i32) -> usize {
        partition.unsigned_abs() as usize % self.queues.0.len()
    }

    fn empty_jobs(&self) -> Vec<StoreJob> {
        (0..self.queues.0.len())
            .map(|_| StoreJob::default())
            .collect()
    }

    /// Splits a computed batch into what goes to Kafka and, per writer (partitions are dealt
    /// over them, so each partition's documents, checkpoints and offsets stay in order), what
    /// is stored after Kafka acknowledged it: the documents, the checkpoints of the streams it
    /// touched, and each touched partition's next offset.
    pub(super) fn split_batch(
        &self,
        processed: Vec<PartitionResult>,
        tables: &HashMap<i32, PartitionStreams>,
        send_records: bool,
    ) -> (Outbox, Vec<StoreJob>) {
        let mut outbox = Outbox::default();
        let mut jobs = self.empty_jobs();
        for result in processed {
            let job = &mut jobs[self.writer_of(result.partition)];
            if let Some(offset) = tables
                .get(&result.partition)
                .and_then(PartitionStreams::commit_offset)
            {
                job.offsets.insert(result.partition, offset);
            }
            if !result.checkpoints.is_empty() {
                job.checkpoints.push((result.partition, result.checkpoints));
            }
            for outcome in result.outcomes {
                match outcome {
                    Outcome::Record(record) => {
                        let EncodedRecord {
                            key,
                            json,
                            document,
                            end_ms,
                        } = *record;
                        if self.store_documents {
                            job.documents.push(document);
                            job.end_ms.push(end_ms);
                        }
                        if send_records {
                            outbox.records.push(OutputRecord {
                                key,
                                json: json.into(),
                                end_ms,
                            });
                        }
                    }
                    Outcome::Dead(letter, reason) => outbox.letters.push((*letter, reason)),
                    Outcome::Nothing => {}
                }
            }
        }
        (outbox, jobs)
    }

    /// Per writer: checkpoint records made due outside a batch (idle eviction).
    pub(super) fn jobs_for_checkpoints(&self, due: Vec<(i32, CheckpointRecords)>) -> Vec<StoreJob> {
        let mut jobs = self.empty_jobs();
        for (partition, checkpoints) in due {
            jobs[self.writer_of(partition)]
                .checkpoints
                .push((partition, checkpoints));
        }
        jobs
    }

    /// The budget of records waiting for the writers.
    pub(super) fn room(&self) -> &PendingRoom {
        &self.room
    }

    /// The writers' queues, for the delivery tasks.
    pub(super) fn queues(&self) -> StoreQueues {
        self.queues.clone()
    }

    /// Closes the queues and waits, until `deadline`, for the writers to store what they
    /// hold; writers still busy then are aborted (what they held is replayed by the next
    /// owner), so that none outlives the drain. Each task is joined exactly once.
    pub(super) async fn finish(self, deadline: Instant) -> Result<(), StoreUnfinished> {
        drop(self.queues);
        let mut tasks = self.tasks;
        let mut result = Ok(());
        let mut record = |outcome: Result<Result<(), SinkError>, tokio::task::JoinError>| {
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    error!(error = %e, "Store writes failed; the batches not stored will be replayed.");
                    if result.is_ok() {
                        result = Err(StoreUnfinished::Failed(e));
                    }
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => warn!(error = %e, "Store writer task ended abnormally."),
            }
        };
        loop {
            match tokio::time::timeout_at(deadline.into(), tasks.join_next()).await {
                Ok(Some(outcome)) => record(outcome),
                Ok(None) => return result,
                Err(_) => break,
            }
        }
        warn!(
            writers = tasks.len(),
            "Store writes still pending at the drain deadline; they will be replayed."
        );
        tasks.abort_all();
        // Aborted tasks end at their next await; a writer is never inside a blocking call.
        while let Ok(Some(outcome)) = tokio::time::timeout(ABORT_WAIT, tasks.join_next()).await {
            record(outcome);
        }
        Err(StoreUnfinished::Deadline)
    }
}

/// How long aborted writers get to end (they end at their next `await`).
const ABORT_WAIT: Duration = Duration::from_millis(500);

/// Why the store writers did not store everything they were given.
#[derive(Debug, thiserror::Error)]
pub(super) enum StoreUnfinished {
    /// A writer stopped on an error (a sink down at the stop, or an error retrying cannot fix).
    #[error("store writes failed: {0}")]
    Failed(SinkError),
    /// The drain deadline passed with writes pending.
    #[error("store writes were still pending at the drain deadline")]
    Deadline,
}

/// What a store writer needs; it runs as its own task so that consuming, DSP and the output
/// topic do not wait for MongoDB and the checkpoint topic while they keep up.
struct StoreWriter {
    mongo: Option<MongoSink>,
    producer: KafkaSink,
    settings: Settings,
    gate: Arc<PauseGate>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
}

impl StoreWriter {
    /// Writes jobs in arrival order until the channel closes: each job's documents, then its
    /// checkpoints, then its offsets are stored. Jobs that queued up while MongoDB was busy go
    /// out in one insert (up to `source.batch_max_messages` documents), so a slow server gets
    /// fewer, larger writes. Returns the error that stopped it, if any.
    async fn run(
        self,
        mut jobs: tokio::sync::mpsc::UnboundedReceiver<StoreJob>,
    ) -> Result<(), SinkError> {
        let max_documents = self.settings.source.batch_max_messages;
        let mut carried: Option<StoreJob> = None;
        loop {
            let Some(mut job) = (match carried.take() {
                Some(job) => Some(job),
                None => jobs.recv().await,
            }) else {
                return Ok(());
            };
            while job.documents.len() < max_documents {
                match jobs.try_recv() {
                    Ok(next) if job.documents.len() + next.documents.len() <= max_documents => {
                        job.absorb(next)
                    }
                    Ok(next) => {
                        carried = Some(next);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.write(job).await?;
        }
    }

    async fn write(&self, job: StoreJob) -> Result<(), SinkError> {
        let began = Instant::now();
        if let Some(mongo) = &self.mongo {
            self.insert(mongo, &job.documents).await?;
        }
        let mongo_ms = began.elapsed().as_millis() as u64;
        let checkpoints_began = Instant::now();
        self.write_checkpoints(&job.checkpoints).await?;
        let metrics = &self.metrics;
        metrics
            .checkpoint_write_seconds
            .observe(checkpoints_began.elapsed().as_secs_f64());
        debug!(
            documents = job.documents.len(),
            checkpoints = job.checkpoints.iter().map(|(_, c)| c.len()).sum::<usize>(),
            mongo_ms,
            checkpoint_ms = began.elapsed().as_millis() as u64 - mongo_ms,
            "Batch stored."
        );
        if self.mongo.is_some() {
            let now = unix_ms();
            for end_ms in &job.end_ms {
                metrics.observe_end_to_end_latency(*end_ms, now);
            }
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in &job.offsets {
            let _ = offsets.add_partition_offset(
                &self.settings.source.topic,
                *partition,
                Offset::Offset(*offset),
            );
        }
        if offsets.count() > 0
            && let Some(consumer) = self.gate.consumer()
            && let Err(e) = consumer.store_offsets(&offsets)
        {
            // Happens when a partition was revoked meanwhile; its new owner replays.
            debug!(error = %e, "Offsets not stored.");
        }
        Ok(())
    }

    /// Inserts `documents`, retrying with backoff (partitions paused) while MongoDB fails.
    async fn insert(
        &self,
        mongo: &MongoSink,
        documents: &[RawDocumentBuf],
    ) -> Result<(), SinkError> {
        let backoff = Backoff::new(
            "mongodb",
            self.settings.mongo.retry_ms(),
            &self.shutdown,
            &self.gate,
        );
        insert_documents(mongo, documents, backoff, &self.metrics, &self.health).await
    }

    /// Writes each partition's checkpoint records to the same partition of the checkpoint
    /// topic, retrying with backoff while Kafka fails. Only the latest record per stream is
    /// sent (a merged job may hold several).
    async fn write_checkpoints(
        &self,
        checkpoints: &[(i32, CheckpointRecords)],
    ) -> Result<(), SinkError> {
        let latest = latest_checkpoints(checkpoints);
        let metrics = &self.metrics;
        let topic = &self.settings.checkpoint_topic();
        let mut backoff = Backoff::new(
            "checkpoint",
            self.settings.output.retry_ms(),
            &self.shutdown,
            &self.gate,
        );
        for (partition, records) in &latest {
            loop {
                match checkpoint::write_partition(&self.producer, topic, *partition, records).await
                {
                    Ok(()) => break,
                    Err(e) => backoff.failed(e).await?,
                }
            }
            count_checkpoints(metrics, records);
        }
        backoff.succeeded();
        Ok(())
    }
}

/// Inserts `documents` into MongoDB, retrying under `backoff` (partitions paused) while it
/// fails; the inserts are idempotent (duplicate `_id`s are ignored), so a replay is harmless.
pub(super) async fn insert_documents(
    mongo: &MongoSink,
    documents: &[RawDocumentBuf],
    mut backoff: Backoff<'_>,
    metrics: &Metrics,
    health: &Health,
) -> Result<(), SinkError> {
    loop {
        let started = Instant::now();
        let result = mongo.insert_idempotent(documents).await;
        metrics
            .mongo_write_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                metrics
                    .mongo_documents_written_total
                    .inc_by(documents.len() as u64);
                health.set_mongo_ok(true);
                break;
            }
            Err(e) => {
                metrics.mongo_write_errors_total.inc();
                health.set_mongo_ok(false);
                backoff.failed(e).await?;
            }
        }
    }
    backoff.succeeded();
    Ok(())
}

/// Counts checkpoint records acknowledged by the checkpoint topic, and their bytes.
pub(super) fn count_checkpoints(metrics: &Metrics, records: &[CheckpointRef<'_>]) {
    metrics
        .checkpoints_written_total
        .inc_by(records.len() as u64);
    metrics.checkpoint_bytes_total.inc_by(
        records
            .iter()
            .map(|(_, v)| v.map_or(0, <[u8]>::len) as u64)
            .sum(),
    );
}

/// One checkpoint record to send: the stream id and its value (`None`: a tombstone).
pub(super) type CheckpointRef<'a> = (&'a str, Option<&'a [u8]>);

/// The checkpoint records to send per partition: only the latest per stream (merged jobs may
/// hold several).
pub(super) fn latest_checkpoints(
    checkpoints: &[(i32, CheckpointRecords)],
) -> BTreeMap<i32, Vec<CheckpointRef<'_>>> {
    let mut latest: BTreeMap<i32, HashMap<&str, Option<&[u8]>>> = BTreeMap::new();
    for (partition, records) in checkpoints {
        let streams = latest.entry(*partition).or_default();
        for (stream, value) in records {
            streams.insert(stream.as_str(), value.as_deref());
        }
    }
    latest
        .into_iter()
        .map(|(partition, streams)| (partition, streams.into_iter().collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::dead_letter::DeadLetterSink;
    use crate::sources::kafka::SourceContext;

    /// The drain with one writer stuck on an unreachable broker (its checkpoint waits for an
    /// acknowledgement that cannot come before the deadline) and one idle: `finish` returns
    /// at the deadline with `Deadline`, without a panic (the idle writer's handle, already
    /// joined, is not polled again), and the consumer's only strong reference is its owner's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finish_returns_at_the_deadline_and_leaves_the_consumer_to_its_owner() {
        let mut settings = Settings::default();
        // Nothing listens on port 1 of loopback.
        settings.kafka.brokers = "127.0.0.1:1".into();
        settings.output.delivery_timeout_ms = 120_000;
        settings.mongo.enabled = false;
        settings.mongo.concurrent_writes = 2;
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let shutdown = CancellationToken::new();
        let output = settings
            .output
            .build(&settings.kafka, None)
            .expect("producer");
        let sinks = Sinks {
            dead_letters: DeadLetterSink::new(&settings.dead_letter, output.clone()),
            output,
            mongo: None,
        };
        let context = SourceContext::new(&settings.source.topic, metrics.clone());
        let consumer = Arc::new(
            settings
                .source
                .build(&settings.kafka, context)
                .expect("consumer"),
        );
        let gate = Arc::new(PauseGate::new(
            Arc::downgrade(&consumer),
            health.clone(),
            metrics.clone(),
        ));
        let writers = StoreWriters::start(&settings, &sinks, &gate, &metrics, &health, &shutdown);
        // Partition 0's checkpoint goes to writer 0; writer 1 gets nothing.
        let jobs = writers.jobs_for_checkpoints(vec![(0, vec![("s".into(), Some(vec![1, 2]))])]);
        assert!(writers.queues().queue(jobs));
        tokio::time::sleep(Duration::from_millis(200)).await;
        shutdown.cancel();

        let started = Instant::now();
        let deadline = started + Duration::from_secs(1);
        let outcome = writers.finish(deadline).await;
        let took = started.elapsed();
        assert!(
            matches!(outcome, Err(StoreUnfinished::Deadline)),
            "a write pending at the deadline is reported: {outcome:?}"
        );
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_secs(2),
            "finish took {took:?} for a 1 s deadline"
        );
        assert_eq!(
            Arc::strong_count(&consumer),
            1,
            "nothing but its owner holds the consumer after the writers are gone"
        );
        drop(gate);
        drop(sinks);
        tokio::task::spawn_blocking(move || drop(consumer))
            .await
            .expect("consumer closed");
    }
}
