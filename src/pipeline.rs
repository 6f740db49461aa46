//! The worker: recv → decode → DSP (off the async runtime, partitions in parallel) → sinks →
//! checkpoints → offsets.
//!
//! The processing loop handles one batch at a time: it computes the batch, sends its records
//! and dead letters to Kafka and waits for their acknowledgements, then hands the MongoDB
//! documents and the checkpoints of the streams the batch touched to the [`StoreWriter`] tasks
//! (`mongo.concurrent_writes`; partitions are dealt over them) and goes on with the next batch.
//! Each writer inserts its jobs in order (merging those that queued up), then writes their
//! checkpoints, and only then stores the jobs' offsets: an offset is stored only after every
//! record before it is acknowledged by the sinks, every rejected message by the dead-letter
//! topic, and the state of every stream up to it by the checkpoint topic. At most
//! `mongo.max_pending_records` records wait; then the loop waits too (still polling). While a
//! sink is down the partitions are paused and the write retried with exponential backoff.
//!
//! A partition assigned to this worker is paused until its checkpoints are read
//! ([`crate::checkpoint::read_partition`], off the runtime); the loop keeps polling meanwhile.

use anyhow::Context as _;
use futures::future::join_all;
use mongodb::bson::RawDocumentBuf;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::audio::{self, DecodeError};
use crate::checkpoint;
use crate::config::Settings;
use crate::dsp::FrameBatch;
use crate::kafka;
use crate::record::{FeatureRecord, SourcePosition};
use crate::sinks::SinkError;
use crate::sinks::dead_letter::{DeadLetter, DeadLetterSink};
use crate::sinks::kafka::KafkaSink;
use crate::sinks::mongo::MongoSink;
use crate::sources::kafka::{SourceContext, commit_stored_offsets};
use crate::streams::{ExtractorCache, PartitionStreams, StreamError, WorkspaceSet};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

/// What became of one input message.
enum Outcome {
    /// Frames were computed: send this record.
    Record(Box<EncodedRecord>),
    /// Nothing to send (no frame completed, or a replay of a message handled before the
    /// stream's checkpoint).
    Nothing,
    /// Malformed: send to the dead-letter topic.
    Dead(Box<DeadLetter>, &'static str),
}

struct EncodedRecord {
    key: String,
    json: Vec<u8>,
    document: RawDocumentBuf,
    end_ms: i64,
}

/// Checkpoint records of one partition: per stream id, a value or a tombstone.
type CheckpointRecords = Vec<(String, Option<Vec<u8>>)>;

/// What one partition's DSP pass produced: its messages' outcomes and the checkpoints of the
/// streams they touched.
struct PartitionResult {
    partition: i32,
    outcomes: Vec<Outcome>,
    checkpoints: CheckpointRecords,
}

/// Handles shared by every batch.
struct Sinks {
    /// The producer: feature records (when `output.enabled`), checkpoints, dead letters.
    output: KafkaSink,
    dead_letters: DeadLetterSink,
    /// `None` when `mongo.enabled` is off.
    mongo: Option<MongoSink>,
}

/// Everything the worker loop owns between batches.
struct Worker {
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cache: Arc<ExtractorCache>,
    tables: HashMap<i32, PartitionStreams>,
    workspaces: Vec<(WorkspaceSet, FrameBatch, Vec<f32>)>,
}

/// Short label of a decode error for the `dead_letters_total{reason}` metric.
fn decode_reason(error: &DecodeError) -> &'static str {
    match error {
        DecodeError::MissingKey
        | DecodeError::EmptyKey
        | DecodeError::KeyNotUtf8
        | DecodeError::KeyTooLong(_) => "bad_key",
        DecodeError::HeaderNotUtf8(_) | DecodeError::BadHeader { .. } => "bad_header",
        DecodeError::EmptyPayload => "empty_payload",
        DecodeError::PayloadTooLarge { .. } => "payload_too_large",
        DecodeError::RaggedPayload { .. } => "ragged_payload",
        DecodeError::NonFiniteSample { .. } => "non_finite_sample",
    }
}

fn stream_reason(error: &StreamError) -> &'static str {
    match error {
        StreamError::Backwards { .. } => "start_sample_backwards",
        StreamError::Dsp { .. } => "unsupported_sample_rate",
    }
}

fn headers_of(message: &OwnedMessage) -> Vec<(String, Option<Vec<u8>>)> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

fn dead_letter(message: &OwnedMessage, error: String) -> DeadLetter {
    DeadLetter {
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers: headers_of(message),
        error,
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
    }
}

/// The stream id a message's key names, if it is valid UTF-8.
fn stream_key(message: &OwnedMessage) -> Option<&str> {
    message.key().and_then(|k| std::str::from_utf8(k).ok())
}

/// Dead-letters `message`; a known stream's checkpoint records it, so a replay skips it.
fn reject(
    table: &mut PartitionStreams,
    message: &OwnedMessage,
    error: String,
    reason: &'static str,
) -> Outcome {
    table.reject(stream_key(message), message.offset());
    Outcome::Dead(Box::new(dead_letter(message, error)), reason)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Worker {
    /// Decodes and computes one partition's messages in order.
    fn process_partition(
        &self,
        table: &mut PartitionStreams,
        messages: &[OwnedMessage],
        scratch: &mut (WorkspaceSet, FrameBatch, Vec<f32>),
    ) -> Vec<Outcome> {
        let (workspaces, frames, samples) = scratch;
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in messages {
            // Handled before the stream's checkpoint: emitted (or dead-lettered) back then.
            if stream_key(message).is_some_and(|id| table.already_handled(id, message.offset())) {
                table.skip_replayed(message.offset());
                self.metrics.messages_replayed_total.inc();
                outcomes.push(Outcome::Nothing);
                continue;
            }
            let headers = message.headers();
            let header_pairs = headers
                .iter()
                .flat_map(|h| h.iter().map(|h| (h.key, h.value)));
            let timestamp = message.timestamp().to_millis();
            let meta = match audio::decode(
                &self.settings.input,
                message.key(),
                message.payload(),
                header_pairs,
                timestamp,
                samples,
            ) {
                Ok(meta) => meta,
                Err(e) => {
                    outcomes.push(reject(table, message, e.to_string(), decode_reason(&e)));
                    continue;
                }
            };
            let applied = table.apply(
                &self.cache,
                &self.settings.streams,
                workspaces,
                &meta,
                samples,
                message.offset(),
                frames,
            );
            let outcome = match applied {
                Err(e) => {
                    outcomes.push(reject(table, message, e.to_string(), stream_reason(&e)));
                    continue;
                }
                Ok(outcome) => outcome,
            };
            if outcome.gap {
                self.metrics.stream_gaps_total.inc();
                info!(stream = %meta.stream_id, start_sample = meta.start_sample, "Gap in stream; state reset.");
            }
            if outcome.evicted_for_cap {
                self.metrics.streams_evicted_total.inc();
            }
            if frames.is_empty() {
                outcomes.push(Outcome::Nothing);
                continue;
            }
            self.metrics
                .frames_computed_total
                .inc_by(frames.len() as u64);
            let extractor_params = self.cache.config();
            let source = SourcePosition {
                topic: message.topic().to_string(),
                partition: message.partition(),
                offset: message.offset(),
                timestamp_ms: meta.timestamp_ms,
            };
            let chunk_start = meta.start_sample.unwrap_or_else(|| frames.start_sample(0));
            let record = FeatureRecord {
                stream_id: &meta.stream_id,
                sample_rate: meta.sample_rate,
                frame_length: extractor_params.frame_length,
                hop_length: extractor_params.hop_length,
                batch: frames,
                chunk_start_sample: chunk_start,
                chunk_timestamp_ms: meta.timestamp_ms.unwrap_or(0),
                source: &source,
            };
            let encoded = record
                .to_json()
                .map_err(|e| e.to_string())
                .and_then(|json| {
                    record
                        .to_document(self.settings.mongo.layout)
                        .map(|doc| (json, doc))
                        .map_err(|e| e.to_string())
                });
            match encoded {
                Ok((json, document)) => outcomes.push(Outcome::Record(Box::new(EncodedRecord {
                    key: meta.stream_id.clone(),
                    end_ms: record.end_ms(),
                    json,
                    document,
                }))),
                Err(e) => {
                    error!(stream = %meta.stream_id, error = %e, "Cannot encode record.");
                    outcomes.push(Outcome::Dead(
                        Box::new(dead_letter(message, format!("cannot encode record: {e}"))),
                        "encode",
                    ));
                }
            }
        }
        outcomes
    }

    /// Runs the DSP for a whole batch, partitions spread over the worker threads.
    fn process_batch(
        &mut self,
        by_partition: Vec<(i32, Vec<OwnedMessage>)>,
    ) -> Vec<PartitionResult> {
        let threads = self
            .settings
            .runtime
            .effective_worker_threads()
            .min(by_partition.len())
            .max(1);
        while self.workspaces.len() < threads {
            self.workspaces.push(Default::default());
        }
        let mut groups: Vec<Vec<(i32, PartitionStreams, Vec<OwnedMessage>)>> =
            (0..threads).map(|_| Vec::new()).collect();
        for (i, (partition, messages)) in by_partition.into_iter().enumerate() {
            let table = self
                .tables
                .remove(&partition)
                .unwrap_or_else(|| PartitionStreams::new(partition));
            groups[i % threads].push((partition, table, messages));
        }
        let mut scratch: Vec<_> = self.workspaces.drain(..threads).collect();
        let this = &*self;
        let results: Vec<Vec<(PartitionStreams, PartitionResult)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = groups
                .into_iter()
                .zip(scratch.iter_mut())
                .map(|(group, scratch)| {
                    scope.spawn(move || {
                        group
                            .into_iter()
                            .map(|(partition, mut table, messages)| {
                                let outcomes =
                                    this.process_partition(&mut table, &messages, scratch);
                                let checkpoints = table.take_checkpoints();
                                let result = PartitionResult {
                                    partition,
                                    outcomes,
                                    checkpoints,
                                };
                                (table, result)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("DSP thread panicked"))
                .collect()
        });
        self.workspaces.extend(scratch);
        results
            .into_iter()
            .flatten()
            .map(|(table, result)| {
                self.tables.insert(result.partition, table);
                result
            })
            .collect()
    }
}

/// Creates the input, output and dead-letter topics when missing (for `source.create_topics`),
/// then the checkpoint topic: compacted, with as many partitions as the input topic has.
pub async fn ensure_topics(settings: &Settings) -> anyhow::Result<()> {
    let admin = kafka::topics::admin_client(&settings.kafka)?;
    let mut topics = vec![
        settings.source.topic.as_str(),
        settings.output.topic.as_str(),
    ];
    if settings.dead_letter.enabled {
        topics.push(settings.dead_letter.topic.as_str());
    }
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                settings.source.topic_partitions,
                TopicReplication::Fixed(settings.source.topic_replication),
            )
        })
        .collect();
    kafka::topics::create_missing(&admin, &new_topics).await?;
    let input_partitions = admin
        .inner()
        .fetch_metadata(Some(&settings.source.topic), Duration::from_secs(10))
        .context("cannot read the input topic's metadata")?
        .topics()
        .first()
        .map_or(settings.source.topic_partitions, |t| {
            t.partitions().len() as i32
        });
    kafka::topics::create_missing(
        &admin,
        &[checkpoint::new_topic(
            &settings.checkpoint_topic(),
            input_partitions,
            settings.source.topic_replication,
        )],
    )
    .await?;
    Ok(())
}

/// Pauses the assignment while any sink is failing and resumes it when none is, so that the
/// Kafka send loop and the MongoDB writer can each hold it.
struct PauseGate {
    consumer: Arc<StreamConsumer<SourceContext>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// How many sinks are failing, and what was paused when the first began.
    held: std::sync::Mutex<(u32, Option<TopicPartitionList>)>,
}

impl PauseGate {
    fn hold(&self) {
        let mut held = self.held.lock().expect("pause gate lock");
        held.0 += 1;
        if held.0 == 1 {
            let assignment = self.consumer.assignment().unwrap_or_default();
            if let Err(e) = self.consumer.pause(&assignment) {
                warn!(error = %e, "Cannot pause partitions.");
            }
            self.metrics
                .paused_partitions
                .set(assignment.count() as i64);
            self.health.set_paused(true);
            held.1 = Some(assignment);
        }
    }

    /// Resumes a partition whose restore finished, or leaves it to [`Self::release`] while a
    /// sink outage holds the assignment paused.
    fn resume_partition(&self, partition: i32) {
        let mut list = TopicPartitionList::new();
        let _ = list.add_partition(self.consumer.context().topic(), partition);
        let mut held = self.held.lock().expect("pause gate lock");
        if held.0 > 0 {
            if let Some(paused) = held.1.as_mut() {
                let _ = paused.add_partition(self.consumer.context().topic(), partition);
            }
            return;
        }
        if let Err(e) = self.consumer.resume(&list) {
            warn!(partition, error = %e, "Cannot resume a restored partition.");
        }
    }

    fn release(&self) {
        let mut held = self.held.lock().expect("pause gate lock");
        held.0 = held.0.saturating_sub(1);
        if held.0 == 0
            && let Some(assignment) = held.1.take()
        {
            if let Err(e) = self.consumer.resume(&assignment) {
                warn!(error = %e, "Cannot resume partitions.");
            }
            self.metrics.paused_partitions.set(0);
            self.health.set_paused(false);
        }
    }
}

/// Exponential backoff with jitter for sink writes; while failing, the partitions are paused
/// (through the [`PauseGate`]) and readiness is false, until [`Backoff::succeeded`].
struct Backoff<'a> {
    what: &'static str,
    delay: Duration,
    max: Duration,
    shutdown: &'a CancellationToken,
    gate: &'a PauseGate,
    holding: bool,
}

impl<'a> Backoff<'a> {
    fn new(
        what: &'static str,
        settings: &Settings,
        shutdown: &'a CancellationToken,
        gate: &'a PauseGate,
    ) -> Self {
        Self {
            what,
            delay: Duration::from_millis(settings.mongo.retry_initial_ms),
            max: Duration::from_millis(settings.mongo.retry_max_ms),
            shutdown,
            gate,
            holding: false,
        }
    }

    /// Handles a failed attempt: pauses, waits, and returns `Ok` to try again, or the error
    /// when retrying cannot help or a stop was requested.
    async fn failed(&mut self, error: SinkError) -> Result<(), SinkError> {
        if !error.retryable() || self.shutdown.is_cancelled() {
            return Err(error);
        }
        if !self.holding {
            self.gate.hold();
            self.holding = true;
        }
        let wait = self.delay.mul_f64(rand::random_range(0.5..1.5));
        warn!(sink = self.what, error = %error, retry_in_ms = wait.as_millis() as u64, "Sink write failed; partitions paused, retrying.");
        self.gate.health.beat();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.shutdown.cancelled() => {}
        }
        self.delay = (self.delay * 2).min(self.max);
        Ok(())
    }

    /// The write went through: resume what was paused.
    fn succeeded(self) {
        if self.holding {
            self.gate.release();
            info!(sink = self.what, "Sink is back.");
        }
    }
}

/// A batch (its share for one writer) whose records and dead letters Kafka acknowledged, on its
/// way to MongoDB and the checkpoint topic. Its offsets are stored once both acknowledged it.
#[derive(Default)]
struct StoreJob {
    documents: Vec<RawDocumentBuf>,
    end_ms: Vec<i64>,
    /// Checkpoint records per partition, in the order they were taken.
    checkpoints: Vec<(i32, CheckpointRecords)>,
    /// Next offset to consume, per partition.
    offsets: std::collections::BTreeMap<i32, i64>,
    /// Room taken in the pending-records budget, given back when the job is dropped.
    room: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl StoreJob {
    /// Appends a later job: one insert for both, checkpoints in order, and the later offsets win.
    fn absorb(&mut self, later: StoreJob) {
        self.documents.extend(later.documents);
        self.end_ms.extend(later.end_ms);
        self.checkpoints.extend(later.checkpoints);
        self.offsets.extend(later.offsets);
        self.room.extend(later.room);
    }

    fn is_empty(&self) -> bool {
        self.documents.is_empty() && self.checkpoints.is_empty() && self.offsets.is_empty()
    }
}

/// What a store writer needs; it runs as its own task so that consuming, DSP and the output
/// topic do not wait for MongoDB and the checkpoint topic while they keep up.
struct StoreWriter {
    mongo: Option<MongoSink>,
    producer: KafkaSink,
    settings: Settings,
    gate: Arc<PauseGate>,
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
        let metrics = &self.gate.metrics;
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
            let now = now_ms();
            for end_ms in &job.end_ms {
                metrics
                    .end_to_end_latency_seconds
                    .observe((now - end_ms).max(0) as f64 / 1000.0);
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
            && let Err(e) = self.gate.consumer.store_offsets(&offsets)
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
        let metrics = &self.gate.metrics;
        let health = &self.gate.health;
        let mut backoff = Backoff::new("mongodb", &self.settings, &self.shutdown, &self.gate);
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

    /// Writes each partition's checkpoint records to the same partition of the checkpoint
    /// topic, retrying with backoff while Kafka fails. Only the latest record per stream is
    /// sent (a merged job may hold several).
    async fn write_checkpoints(
        &self,
        checkpoints: &[(i32, CheckpointRecords)],
    ) -> Result<(), SinkError> {
        let mut latest: std::collections::BTreeMap<i32, HashMap<&str, Option<&[u8]>>> =
            Default::default();
        for (partition, records) in checkpoints {
            let streams = latest.entry(*partition).or_default();
            for (stream, value) in records {
                streams.insert(stream.as_str(), value.as_deref());
            }
        }
        let metrics = &self.gate.metrics;
        let topic = &self.settings.checkpoint_topic();
        let mut backoff = Backoff::new("checkpoint", &self.settings, &self.shutdown, &self.gate);
        for (partition, streams) in &latest {
            let records: Vec<(&str, Option<&[u8]>)> =
                streams.iter().map(|(s, v)| (*s, *v)).collect();
            loop {
                match checkpoint::write_partition(&self.producer, topic, *partition, &records).await
                {
                    Ok(()) => break,
                    Err(e) => backoff.failed(e).await?,
                }
            }
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
        backoff.succeeded();
        Ok(())
    }
}

/// What one [`receive`] call brought.
enum Received {
    /// A message was appended (or set aside for a partition being restored).
    Message,
    /// Nothing arrived in time.
    Idle,
    /// The consumer reported an error.
    Error(rdkafka::error::KafkaError),
}

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
struct Restores {
    client: rdkafka::ClientConfig,
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
    fn new(settings: &Settings, cache: Arc<ExtractorCache>) -> anyhow::Result<Self> {
        let client = settings.kafka.client_config(&settings.kafka.consumer)?;
        let (done_sender, done) = tokio::sync::mpsc::unbounded_channel();
        Ok(Self {
            client,
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
    fn start(&mut self, consumer: &StreamConsumer<SourceContext>, partition: i32, topic: &str) {
        let mut paused = TopicPartitionList::new();
        let _ = paused.add_partition(topic, partition);
        if let Err(e) = consumer.pause(&paused) {
            warn!(partition, error = %e, "Cannot pause a partition being restored.");
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        self.running.insert(partition, generation);
        let (client, checkpoint_topic, timeout, cache, done) = (
            self.client.clone(),
            self.topic.clone(),
            self.timeout,
            self.cache.clone(),
            self.done_sender.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut delay = Duration::from_millis(200);
            loop {
                match checkpoint::read_partition(&client, &checkpoint_topic, partition, timeout) {
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
    fn cancel(&mut self, partition: i32) {
        self.running.remove(&partition);
        self.set_aside.retain(|m| m.partition() != partition);
    }

    fn is_restoring(&self, partition: i32) -> bool {
        self.running.contains_key(&partition)
    }

    /// Installs the tables of finished restores, hands their set-aside messages to `pending`
    /// and resumes their partitions (unless a sink outage holds the assignment paused).
    fn finish(
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

/// Receives one message into `pending` (or sets it aside while its partition is restored),
/// waiting at most `wait`. Partitions revoked during the call, even when assigned again since,
/// lose their stream tables and the messages received before the revocation; assigned ones
/// start restoring from their checkpoints.
async fn receive(
    consumer: &StreamConsumer<SourceContext>,
    pending: &mut Vec<OwnedMessage>,
    tables: &mut HashMap<i32, PartitionStreams>,
    restores: &mut Restores,
    wait: Duration,
) -> Received {
    let received = tokio::time::timeout(wait, consumer.recv()).await;
    let events = consumer.context().take_events();
    if !events.revoked.is_empty() {
        pending.retain(|m| !events.revoked.contains(&m.partition()));
        for partition in &events.revoked {
            tables.remove(partition);
            restores.cancel(*partition);
        }
    }
    for partition in &events.assigned {
        restores.start(consumer, *partition, consumer.context().topic());
    }
    match received {
        Err(_) => Received::Idle,
        Ok(Err(e)) => Received::Error(e),
        Ok(Ok(message)) => {
            let message = message.detach();
            if restores.is_restoring(message.partition()) {
                restores.set_aside.push(message);
            } else {
                pending.push(message);
            }
            Received::Message
        }
    }
}

/// Runs the worker until `shutdown` is cancelled, then drains, flushes and commits.
pub async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if settings.source.create_topics {
        ensure_topics(&settings).await?;
    }
    checkpoint::check_topic(
        &kafka::topics::admin_client(&settings.kafka)?,
        &settings.source.topic,
        &settings.checkpoint_topic(),
    )
    .await
    .context("checkpoint topic")?;
    let output = settings.output.build(&settings.kafka)?;
    let dead_letters = DeadLetterSink::new(&settings.dead_letter, output.clone());
    health.beat();
    let mongo = if settings.mongo.enabled {
        let mongo = settings
            .mongo
            .build()
            .await
            .context("cannot configure MongoDB client")?;
        // MongoDB may be down at start-up: consuming (and restoring partitions) begins at once;
        // writes wait for it, paused and retried, like in any outage.
        tokio::spawn(create_indexes(
            mongo.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        Some(mongo)
    } else {
        info!("mongo.enabled is off: the output topic is the only sink.");
        health.set_mongo_ok(true);
        None
    };
    let sinks = Sinks {
        output,
        dead_letters,
        mongo,
    };

    let context =
        SourceContext::new(&settings.source.topic, metrics.clone()).with_health(health.clone());
    let consumer = Arc::new(settings.source.build(&settings.kafka, context)?);
    consumer
        .subscribe(&[&settings.source.topic])
        .context("cannot subscribe")?;
    info!(topic = %settings.source.topic, group = %settings.source.group_id, "Consuming.");
    health.set_consuming();

    let gate = Arc::new(PauseGate {
        consumer: consumer.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        held: Default::default(),
    });
    let room = PendingRoom::new(
        settings
            .mongo
            .max_pending_records
            .max(settings.source.batch_max_messages),
    );
    let probe = sinks
        .mongo
        .clone()
        .map(|mongo| tokio::spawn(probe_mongo(mongo, health.clone(), shutdown.clone())));
    let mut jobs = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..settings.mongo.concurrent_writes.max(1) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        jobs.push(sender);
        writers.push(tokio::spawn(
            StoreWriter {
                mongo: sinks.mongo.clone(),
                producer: sinks.output.clone(),
                settings: settings.clone(),
                gate: gate.clone(),
                shutdown: shutdown.clone(),
            }
            .run(receiver),
        ));
    }

    let cache = Arc::new(ExtractorCache::new(settings.dsp.clone()));
    let mut restores = Restores::new(&settings, cache.clone())?;
    let mut worker = Worker {
        cache,
        settings,
        metrics: metrics.clone(),
        health: health.clone(),
        tables: HashMap::new(),
        workspaces: Vec::new(),
    };
    let linger = Duration::from_millis(worker.settings.source.batch_linger_ms);
    let max_batch = worker.settings.source.batch_max_messages;
    let idle_timeout = Duration::from_secs(worker.settings.streams.idle_timeout_secs);
    let mut result = Ok(());

    // Messages received but not processed yet (the next batch starts with them).
    let mut pending: Vec<OwnedMessage> = Vec::new();
    while !shutdown.is_cancelled() {
        health.beat();
        restores.finish(&mut worker.tables, &mut pending, &gate, &metrics);
        if pending.is_empty() {
            let received = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = receive(&consumer, &mut pending, &mut worker.tables, &mut restores, Duration::from_millis(500)) => r,
            };
            match received {
                Received::Idle => {
                    let evictions = sweep(&mut worker, &consumer, idle_timeout);
                    if !hand_to_writers(
                        &jobs,
                        &room,
                        evictions,
                        &mut Intake {
                            consumer: &consumer,
                            pending: &mut pending,
                            tables: &mut worker.tables,
                            restores: &mut restores,
                        },
                        max_batch,
                        &health,
                        &shutdown,
                    )
                    .await
                    {
                        break;
                    }
                    continue;
                }
                Received::Error(e) => {
                    warn!(error = %e, "Kafka consumer error.");
                    health.set_kafka_ok(false);
                    continue;
                }
                Received::Message => health.set_kafka_ok(true),
            }
            if pending.is_empty() {
                continue;
            }
        }
        let deadline = Instant::now() + linger;
        while pending.len() < max_batch {
            let wait = deadline.saturating_duration_since(Instant::now());
            let received = receive(
                &consumer,
                &mut pending,
                &mut worker.tables,
                &mut restores,
                wait,
            )
            .await;
            if !matches!(received, Received::Message) {
                break;
            }
        }
        if pending.is_empty() {
            continue;
        }
        let batch = std::mem::take(&mut pending);
        let mut batch_jobs = match handle_batch(&mut worker, batch, &sinks, &gate, &shutdown).await
        {
            Ok(batch_jobs) => batch_jobs,
            Err(e) => {
                error!(error = %e, "Batch could not be sent; its offsets were not stored and it will be replayed.");
                result = Err(anyhow::anyhow!(e));
                break;
            }
        };
        let evictions = sweep(&mut worker, &consumer, idle_timeout);
        for (job, eviction) in batch_jobs.iter_mut().zip(evictions) {
            job.absorb(eviction);
        }
        let mut intake = Intake {
            consumer: &consumer,
            pending: &mut pending,
            tables: &mut worker.tables,
            restores: &mut restores,
        };
        if !hand_to_writers(
            &jobs,
            &room,
            batch_jobs,
            &mut intake,
            max_batch,
            &health,
            &shutdown,
        )
        .await
        {
            break;
        }
    }

    health.set_draining(true);
    info!(
        "Draining: waiting for MongoDB and the checkpoints, flushing the producer, committing offsets."
    );
    drop(jobs);
    // One deadline for all: what is not stored by then is replayed by the next owner.
    let drain = Duration::from_secs(worker.settings.shutdown.drain_timeout_secs);
    let drain_deadline = Instant::now() + drain;
    match tokio::time::timeout(drain, join_all(writers)).await {
        Ok(ended) => {
            for outcome in ended {
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        error!(error = %e, "Store writes failed; the batches not stored will be replayed.");
                        if result.is_ok() {
                            result = Err(anyhow::anyhow!(e).context("store writes failed"));
                        }
                    }
                    Err(e) => warn!(error = %e, "Store writer task ended abnormally."),
                }
            }
        }
        Err(_) => {
            warn!(
                timeout_secs = drain.as_secs(),
                "Store writes still pending at the drain deadline; they will be replayed."
            )
        }
    }
    if let Err(e) = sinks
        .output
        .flush(drain_deadline.saturating_duration_since(Instant::now()))
    {
        warn!(error = %e, "Producer flush incomplete.");
    }
    match commit_stored_offsets(&*consumer) {
        Ok(true) => info!("Offsets committed."),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "Final commit failed; uncommitted messages will be replayed."),
    }
    if let Some(probe) = probe {
        probe.abort();
        let _ = probe.await;
    }
    consumer.unsubscribe();
    if let Some(mongo) = sinks.mongo {
        let remaining = drain_deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(remaining.max(Duration::from_secs(1)), mongo.shutdown())
            .await
            .is_err()
        {
            warn!("MongoDB client did not shut down in time.");
        }
    }
    result
}

/// Creates MongoDB's query indexes, retrying until the server answers (or shutdown).
async fn create_indexes(mongo: MongoSink, health: Arc<Health>, shutdown: CancellationToken) {
    loop {
        match mongo.ensure_indexes().await {
            Ok(()) => {
                health.set_mongo_ok(true);
                return;
            }
            Err(e) => {
                warn!(error = %e, "MongoDB not reachable yet; its indexes are created once it is.");
                health.set_mongo_ok(false);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// How often MongoDB is pinged for readiness.
const MONGO_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Pings MongoDB every [`MONGO_PROBE_INTERVAL`] so that readiness follows it even while no
/// batch is being written (failed writes also report it at once, and pause the partitions).
async fn probe_mongo(mongo: MongoSink, health: Arc<Health>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(MONGO_PROBE_INTERVAL) => {}
        }
        let reachable = mongo.ping().await.is_ok();
        health.set_mongo_ok(reachable);
    }
}

/// The budget of records waiting for the store writers (`mongo.max_pending_records`).
struct PendingRoom {
    permits: Arc<tokio::sync::Semaphore>,
    capacity: usize,
}

impl PendingRoom {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.min(tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(capacity)),
            capacity,
        }
    }
}

/// What receiving needs: the consumer, where messages go, the partition tables and restores.
struct Intake<'a> {
    consumer: &'a StreamConsumer<SourceContext>,
    pending: &'a mut Vec<OwnedMessage>,
    tables: &'a mut HashMap<i32, PartitionStreams>,
    restores: &'a mut Restores,
}

/// Queues each writer's share of a batch once the pending-records budget has room for it.
/// While waiting it keeps polling the consumer (into `pending`, up to `max_batch` messages),
/// which serves rebalances and keeps the member in the group however long MongoDB takes.
/// False when a writer stopped or shutdown was requested.
async fn hand_to_writers(
    writers: &[tokio::sync::mpsc::UnboundedSender<StoreJob>],
    room: &PendingRoom,
    jobs: Vec<StoreJob>,
    intake: &mut Intake<'_>,
    max_batch: usize,
    health: &Health,
    shutdown: &CancellationToken,
) -> bool {
    for (writer, mut job) in writers.iter().zip(jobs) {
        if job.is_empty() {
            continue;
        }
        let wanted = job.documents.len().min(room.capacity) as u32;
        loop {
            let polling = intake.pending.len() < max_batch;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                permit = room.permits.clone().acquire_many_owned(wanted) => {
                    job.room.push(permit.expect("the budget is never closed"));
                    break;
                }
                _ = receive(intake.consumer, intake.pending, intake.tables, intake.restores, Duration::from_secs(1)), if polling => health.beat(),
                _ = tokio::time::sleep(Duration::from_secs(1)), if !polling => health.beat(),
            }
        }
        // Fails only when the writer stopped on an error; `run` reports it.
        if writer.send(job).is_err() {
            return false;
        }
    }
    true
}

/// Evicts idle streams and updates the stream gauges; returns, per writer, the tombstones (and
/// ended-stream markers) the eviction made due.
fn sweep(
    worker: &mut Worker,
    consumer: &StreamConsumer<SourceContext>,
    idle_timeout: Duration,
) -> Vec<StoreJob> {
    let writers = worker.settings.mongo.concurrent_writes.max(1);
    let mut jobs: Vec<StoreJob> = (0..writers).map(|_| StoreJob::default()).collect();
    let mut live = 0;
    let mut bytes = 0;
    for (partition, table) in worker.tables.iter_mut() {
        let evicted = table.evict_idle(idle_timeout);
        worker.metrics.streams_evicted_total.inc_by(evicted as u64);
        live += table.len();
        bytes += table.heap_bytes();
        let checkpoints = table.take_checkpoints();
        if !checkpoints.is_empty() {
            jobs[writer_of(*partition, writers)]
                .checkpoints
                .push((*partition, checkpoints));
        }
    }
    worker.metrics.live_streams.set(live as i64);
    worker.metrics.stream_state_bytes.set(bytes as i64);
    let assigned = consumer.assignment().map_or(0, |a| a.count());
    worker.metrics.assigned_partitions.set(assigned as i64);
    worker.health.set_assigned(assigned > 0);
    jobs
}

/// Computes one batch and sends its records and dead letters to Kafka; returns, per store
/// writer, what MongoDB and the checkpoint topic still have to store, with the offsets that
/// become safe once they have.
async fn handle_batch(
    worker: &mut Worker,
    batch: Vec<OwnedMessage>,
    sinks: &Sinks,
    gate: &PauseGate,
    shutdown: &CancellationToken,
) -> Result<Vec<StoreJob>, SinkError> {
    let metrics = worker.metrics.clone();
    let batch_started = Instant::now();
    let batch_len = batch.len();
    for message in &batch {
        metrics.messages_consumed_total.inc();
        metrics
            .bytes_consumed_total
            .inc_by(message.payload().map_or(0, <[u8]>::len) as u64);
    }

    let mut by_partition: Vec<(i32, Vec<OwnedMessage>)> = Vec::new();
    for message in batch {
        match by_partition
            .iter_mut()
            .find(|(p, _)| *p == message.partition())
        {
            Some((_, messages)) => messages.push(message),
            None => by_partition.push((message.partition(), vec![message])),
        }
    }
    let processed = tokio::task::block_in_place(|| worker.process_batch(by_partition));
    metrics
        .processing_seconds
        .observe(batch_started.elapsed().as_secs_f64());

    let send_records = worker.settings.output.enabled;
    let mut records: Vec<&EncodedRecord> = Vec::new();
    let mut letters: Vec<(&DeadLetter, &'static str)> = Vec::new();
    for result in &processed {
        for outcome in &result.outcomes {
            match outcome {
                Outcome::Record(record) if send_records => records.push(record),
                Outcome::Dead(letter, reason) => letters.push((letter, reason)),
                Outcome::Record(_) | Outcome::Nothing => {}
            }
        }
    }

    let dsp_done = Instant::now();
    // Kafka: records and dead letters, all acknowledged (failed ones are re-sent).
    let mut pending_records: Vec<&EncodedRecord> = records.clone();
    let mut pending_letters = letters.clone();
    let mut backoff = Backoff::new("kafka", &worker.settings, shutdown, gate);
    loop {
        let record_sends = pending_records
            .iter()
            .map(|r| sinks.output.send_record(r.key.as_bytes(), &r.json));
        let letter_sends = pending_letters
            .iter()
            .map(|(l, _)| sinks.dead_letters.send(l));
        let (record_results, letter_results) =
            futures::join!(join_all(record_sends), join_all(letter_sends));
        let mut first_error = None;
        let mut still_records = Vec::new();
        let now = now_ms();
        for (record, result) in pending_records.iter().zip(record_results) {
            match result {
                Ok(()) => {
                    metrics.records_produced_total.inc();
                    if sinks.mongo.is_none() {
                        metrics
                            .end_to_end_latency_seconds
                            .observe((now - record.end_ms).max(0) as f64 / 1000.0);
                    }
                }
                Err(e) => {
                    still_records.push(*record);
                    first_error.get_or_insert(e);
                }
            }
        }
        let mut still_letters = Vec::new();
        for ((letter, reason), result) in pending_letters.iter().zip(letter_results) {
            match result {
                Ok(()) => {
                    metrics.dead_letter(reason);
                    warn!(topic = %letter.topic, partition = letter.partition, offset = letter.offset, error = %letter.error, "Message dead-lettered.");
                }
                Err(e) => {
                    still_letters.push((*letter, *reason));
                    first_error.get_or_insert(e);
                }
            }
        }
        pending_records = still_records;
        pending_letters = still_letters;
        match first_error {
            None => break,
            Some(e) => backoff.failed(e).await?,
        }
    }
    backoff.succeeded();

    debug!(
        messages = batch_len,
        records = records.len(),
        dsp_ms = (dsp_done - batch_started).as_millis() as u64,
        kafka_ms = dsp_done.elapsed().as_millis() as u64,
        "Batch sent."
    );
    drop((records, letters));

    // Per store writer (partitions are dealt over them, so each partition's documents,
    // checkpoints and offsets stay in order): the documents, the checkpoints of the streams the
    // batch touched, and each touched partition's next offset, stored after both acknowledged.
    let writers = worker.settings.mongo.concurrent_writes.max(1);
    let store_documents = sinks.mongo.is_some();
    let mut jobs: Vec<StoreJob> = (0..writers).map(|_| StoreJob::default()).collect();
    for result in processed {
        let job = &mut jobs[writer_of(result.partition, writers)];
        if let Some(offset) = worker
            .tables
            .get(&result.partition)
            .and_then(PartitionStreams::commit_offset)
        {
            job.offsets.insert(result.partition, offset);
        }
        if !result.checkpoints.is_empty() {
            job.checkpoints.push((result.partition, result.checkpoints));
        }
        for outcome in result.outcomes {
            if let Outcome::Record(record) = outcome
                && store_documents
            {
                job.documents.push(record.document);
                job.end_ms.push(record.end_ms);
            }
        }
    }
    Ok(jobs)
}

/// Which store writer stores `partition`'s documents and checkpoints.
fn writer_of(partition: i32, writers: usize) -> usize {
    partition.unsigned_abs() as usize % writers
}
