//! The worker: recv → decode → DSP (off the async runtime, partitions in parallel) → sinks →
//! checkpoints → offsets.
//!
//! - `intake`: the consumer, the pending batch and the per-partition stream tables;
//! - `recovery`: restoring an assigned partition's streams from the checkpoint topic;
//! - `compute`: the DSP fan-out over the worker threads;
//! - `deliver`: records and dead letters to Kafka, with retries, then the jobs to the writers;
//! - `store`: the MongoDB and checkpoint writers, the pending-records budget, offsets;
//! - `backpressure`: the pause gate and the backoff;
//! - `exactly_once`: with `output.exactly_once`, the loop that stores each batch by one Kafka
//!   transaction (records, dead letters, checkpoints, offsets) instead of `deliver` and
//!   `store`'s writers.
//!
//! The processing loop computes and sends a batch while the batch before it is still being
//! acknowledged (at most two deliveries under way): a delivery task sends a batch's records
//! and dead letters to Kafka, waits for their acknowledgements, then, once the delivery
//! before it has, hands the MongoDB documents and the checkpoints of the streams the batch
//! touched to the store writer tasks (`mongo.concurrent_writes`; partitions are dealt over
//! them), so store jobs keep batch order.
//! Each writer inserts its jobs in order (merging those that queued up), then writes their
//! checkpoints, and only then stores the jobs' offsets: an offset is stored only after every
//! record before it is acknowledged by the sinks, every rejected message by the dead-letter
//! topic, and the state of every stream up to it by the checkpoint topic. At most
//! `mongo.max_pending_records` records wait; then the loop waits too (still polling). While a
//! sink is down the partitions are paused and the write retried with exponential backoff.
//!
//! A partition assigned to this worker is paused until its checkpoints are read
//! ([`state::checkpoint_topic::read_partition`], off the runtime); the loop keeps polling meanwhile.

mod backpressure;
mod batch;
mod compute;
mod deliver;
mod exactly_once;
mod intake;
mod recovery;
pub mod state;
mod store;

use anyhow::Context as _;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::message::{Message, OwnedMessage};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::Settings;
use crate::kafka;
use crate::shutdown::{CLOSE_GRACE, Shutdown, Unfinished};
use crate::sinks::SinkError;
use crate::sinks::dead_letter::DeadLetterSink;
use crate::sinks::kafka::KafkaSink;
use crate::sinks::mongo::MongoSink;
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;
use backpressure::PauseGate;
use batch::{Outbox, StoreJob};
use compute::Compute;
use deliver::{Courier, InFlight, MAX_IN_FLIGHT, Queued};
use intake::{Intake, NextBatch};
use recovery::Restores;
use state::checkpoint_topic as checkpoint;
use state::streams::ExtractorCache;
use store::{StoreUnfinished, StoreWriters};

/// How long the start-up check waits for topics the worker did not create to be listed.
const EXISTING_TOPICS_WAIT: Duration = Duration::from_secs(10);

/// Runs the worker until a stop is requested, then drains, flushes and commits by the
/// stop's deadline (plus [`CLOSE_GRACE`] for closing the consumer). An [`Unfinished`] error
/// means work was left unstored (a sink down at the stop, or the deadline passed): it is
/// replayed by the next owner, and no offset past it was committed.
pub async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: Shutdown,
) -> anyhow::Result<()> {
    let mut worker = Worker::start(settings, metrics, health, stop).await?;
    let result = match worker.transactions.take() {
        Some(mut transactions) => {
            let result = worker.process_exactly_once(&mut transactions).await;
            drop(transactions);
            result
        }
        None => worker.process_until_stopped().await,
    };
    worker.drain(result).await
}

/// Handles shared by every batch.
pub(super) struct Sinks {
    /// The producer: feature records (when `output.enabled`), checkpoints, dead letters.
    pub(super) output: KafkaSink,
    /// Dead letters, through the same producer.
    pub(super) dead_letters: DeadLetterSink,
    /// `None` when `mongo.enabled` is off.
    pub(super) mongo: Option<MongoSink>,
}

/// Everything the worker owns from start to drain.
struct Worker {
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The stop request and its deadline.
    stop: Shutdown,
    sinks: Sinks,
    gate: Arc<PauseGate>,
    intake: Intake,
    compute: Compute,
    store: StoreWriters,
    /// MongoDB's readiness probe, when MongoDB is on.
    probe: Option<JoinHandle<()>>,
    /// The transactional producer, with `output.exactly_once` (taken by the loop).
    transactions: Option<exactly_once::Transactions>,
}

impl Worker {
    /// Checks (or creates) the topics, builds the sinks, subscribes and starts the writers.
    async fn start(
        settings: Settings,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        stop: Shutdown,
    ) -> anyhow::Result<Self> {
        let shutdown = stop.token();
        if settings.source.create_topics {
            ensure_topics(&settings).await?;
        }
        // Topics the worker just created get the full wait; an operator's are listed already
        // unless the broker itself has just started.
        let listed_wait = if settings.source.create_topics {
            kafka::topics::LISTED_WAIT
        } else {
            EXISTING_TOPICS_WAIT
        };
        checkpoint::check_topic(
            &kafka::topics::admin_client(&settings.kafka)?,
            &settings.source.topic,
            &settings.checkpoint_topic(),
            listed_wait,
        )
        .await
        .context("checkpoint topic")?;
        let transactional_id = settings.transactional_id();
        let output = settings
            .output
            .build(&settings.kafka, transactional_id.as_deref())?;
        health.watch_producer(output.brokers());
        let dead_letters = DeadLetterSink::new(&settings.dead_letter, output.clone());
        health.beat();
        let mongo = if settings.mongo.enabled {
            let mongo = settings
                .mongo
                .build()
                .await
                .context("cannot configure MongoDB client")?;
            // MongoDB may be down at start-up: consuming (and restoring partitions) begins at
            // once; writes wait for it, paused and retried, like in any outage.
            let (indexed, health, stop) = (mongo.clone(), health.clone(), shutdown.clone());
            tokio::spawn(async move { indexed.create_indexes_when_up(&health, &stop).await });
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
        let cache = Arc::new(ExtractorCache::new(settings.dsp.clone()));
        let restores = Restores::new(&settings, cache.clone())?;
        let intake = Intake::subscribe(&settings, metrics.clone(), health.clone(), restores)?;
        let gate = Arc::new(PauseGate::new(
            Arc::downgrade(intake.consumer()),
            health.clone(),
            metrics.clone(),
        ));
        let probe = sinks.mongo.clone().map(|mongo| {
            let (health, stop) = (health.clone(), shutdown.clone());
            tokio::spawn(async move { mongo.probe_readiness(&health, &stop).await })
        });

        let store = StoreWriters::start(&settings, &sinks, &gate, &metrics, &health, shutdown);
        let compute = Compute::new(settings.clone(), metrics.clone(), cache)?;
        let transactions = match transactional_id {
            Some(id) => Some(
                exactly_once::Transactions::start(
                    &settings,
                    id,
                    sinks.output.clone(),
                    sinks.mongo.clone(),
                    metrics.clone(),
                    health.clone(),
                    stop.clone(),
                )
                .await?,
            ),
            None => None,
        };
        Ok(Self {
            settings,
            metrics,
            health,
            stop,
            sinks,
            gate,
            intake,
            compute,
            store,
            probe,
            transactions,
        })
    }

    /// The loop, until shutdown or a sink error that retrying cannot fix: a batch is computed
    /// and sent while the one before it is being acknowledged.
    async fn process_until_stopped(&mut self) -> anyhow::Result<()> {
        let linger = Duration::from_millis(self.settings.source.batch_linger_ms);
        let max_batch = self.settings.source.batch_max_messages;
        let idle_timeout = Duration::from_secs(self.settings.streams.idle_timeout_secs);
        let courier = Courier::new(
            &self.sinks,
            self.settings.output.retry_ms(),
            &self.metrics,
            &self.gate,
            self.stop.token(),
            self.store.queues(),
        );
        // Deliveries under way, oldest first, and the latest one's "jobs queued" signal.
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(MAX_IN_FLIGHT);
        let mut last_queued: Option<Queued> = None;
        let mut consumer_failed = None;
        // Ok(true): stopped cleanly; Ok(false): a store writer stopped (it reports why).
        let mut result: Result<bool, SinkError> = loop {
            if self.stop.is_requested() {
                break Ok(true);
            }
            self.health.beat();
            self.intake.finish_restores(&self.gate, &self.metrics);
            let (outbox, mut jobs) = match self
                .intake
                .next_batch(self.stop.token(), linger, max_batch)
                .await
            {
                NextBatch::Stop => break Ok(true),
                NextBatch::Empty => continue,
                NextBatch::Idle => (Outbox::default(), Vec::new()),
                NextBatch::Messages(batch) => self.compute_batch(batch),
                NextBatch::Failed(failure) => {
                    // What is under way is finished by the drain deadline, as at a stop.
                    error!(error = %failure, "Stopping: the Kafka consumer failed.");
                    self.stop.request();
                    consumer_failed = Some(failure);
                    break Ok(true);
                }
            };
            let due = self.intake.sweep(idle_timeout, &self.metrics);
            let evictions = self.store.jobs_for_checkpoints(due);
            // Idle: no batch jobs, the evictions' checkpoints go alone. A batch has one job per
            // writer, and the evictions join them.
            if jobs.is_empty() {
                jobs = evictions;
            } else {
                for (job, eviction) in jobs.iter_mut().zip(evictions) {
                    job.absorb(eviction);
                }
            }
            if !self.reserve_room(&mut jobs, max_batch).await {
                break Ok(true);
            }
            if in_flight.len() == MAX_IN_FLIGHT
                && let Some(mut oldest) = in_flight.pop_front()
            {
                // A stop does not wait here: the drain waits for it, up to the deadline.
                let outcome = self.polling_until(oldest.finish(), max_batch).await;
                match outcome {
                    Some(Ok(true)) => {}
                    Some(stopped) => break stopped,
                    None => {
                        in_flight.push_front(oldest);
                        break Ok(true);
                    }
                }
            }
            let (delivery, queued) = courier.dispatch(outbox, jobs, last_queued.take());
            in_flight.push_back(delivery);
            last_queued = Some(queued);
        };
        // After a clean stop the deliveries under way end normally, by the drain deadline
        // (their store jobs are queued before the drain); after a failure, or at the deadline,
        // they are abandoned and their batches replayed.
        let deadline = self.stop.deadline();
        for delivery in in_flight {
            if matches!(result, Ok(true)) {
                result = match delivery.finish_by(deadline).await {
                    Some(outcome) => outcome,
                    None => {
                        warn!(
                            "Deliveries still waiting for Kafka at the drain deadline; their batches will be replayed."
                        );
                        return Err(Unfinished(
                            "the drain deadline passed while Kafka acknowledged a batch".into(),
                        )
                        .into());
                    }
                };
            } else {
                delivery.abandon();
            }
        }
        result.map_err(|e| {
            error!(error = %e, "Batch could not be sent; its offsets were not stored and it will be replayed.");
            failure_at_stop(&self.stop, e, "a batch could not be sent to Kafka")
        })?;
        consumer_failed.map_or(Ok(()), |failure| Err(failure.into()))
    }

    /// Waits until the pending-records budget has room for each writer's share of a batch and
    /// takes it (given back when the job is dropped), polling the consumer meanwhile
    /// ([`Self::polling_until`]): MongoDB may take long. False when a stop was requested.
    async fn reserve_room(&mut self, jobs: &mut [StoreJob], max_batch: usize) -> bool {
        let room = self.store.room().clone();
        for job in jobs.iter_mut().filter(|job| !job.documents.is_empty()) {
            if self
                .polling_until(room.take_for(job), max_batch)
                .await
                .is_none()
            {
                return false;
            }
        }
        true
    }

    /// Waits for `until` while polling the consumer (into the pending batch, up to `max_batch`
    /// messages), which serves rebalances and keeps the member in the group however long the
    /// wait: a store writer waiting for MongoDB, or a delivery waiting for Kafka to take its
    /// batch after a broker restart (a consumer left unpolled for longer than its session
    /// loses its partitions, confluentinc/librdkafka#3450). `None` when a stop was requested
    /// first.
    async fn polling_until<T>(
        &mut self,
        until: impl Future<Output = T>,
        max_batch: usize,
    ) -> Option<T> {
        let stop = self.stop.clone();
        let until_stop = async move {
            tokio::select! {
                biased;
                _ = stop.requested() => None,
                out = until => Some(out),
            }
        };
        self.polling_through_stop(until_stop, max_batch).await
    }

    /// [`Self::polling_until`] without the stop: only `until` ends the wait (a transaction
    /// that must settle, whose future handles the stop itself).
    async fn polling_through_stop<T>(
        &mut self,
        until: impl Future<Output = T>,
        max_batch: usize,
    ) -> T {
        tokio::pin!(until);
        loop {
            let polling = self.intake.below_batch_limit(max_batch);
            tokio::select! {
                biased;
                out = &mut until => return out,
                _ = self.intake.receive(Duration::from_secs(1)), if polling => self.health.beat(),
                _ = tokio::time::sleep(Duration::from_secs(1)), if !polling => self.health.beat(),
            }
        }
    }

    /// Computes one batch; returns what goes to Kafka and, per store writer, what MongoDB and
    /// the checkpoint topic have to store once Kafka acknowledged it, with the offsets that
    /// become safe once they have.
    fn compute_batch(&mut self, batch: Vec<OwnedMessage>) -> (Outbox, Vec<StoreJob>) {
        let metrics = &self.metrics;
        let started = Instant::now();
        let mut by_partition: Vec<(i32, Vec<OwnedMessage>)> = Vec::new();
        for message in batch {
            metrics.messages_consumed_total.inc();
            metrics
                .bytes_consumed_total
                .inc_by(message.payload().map_or(0, <[u8]>::len) as u64);
            match by_partition
                .iter_mut()
                .find(|(p, _)| *p == message.partition())
            {
                Some((_, messages)) => messages.push(message),
                None => by_partition.push((message.partition(), vec![message])),
            }
        }
        let (compute, tables) = (&mut self.compute, &mut self.intake.tables);
        let processed = tokio::task::block_in_place(|| compute.process_batch(tables, by_partition));
        let dsp_time = started.elapsed();
        metrics.processing_seconds.observe(dsp_time.as_secs_f64());
        debug!(
            messages = processed.iter().map(|r| r.outcomes.len()).sum::<usize>(),
            dsp_ms = dsp_time.as_millis() as u64,
            "Batch computed."
        );
        self.store
            .split_batch(processed, &self.intake.tables, self.settings.output.enabled)
    }

    /// Waits, until the stop's deadline, for the store writers, flushes the producer, then
    /// hands the consumer to its closing thread (commit, leave the group, destroy), which gets
    /// [`CLOSE_GRACE`] more. Returns the loop's result, or else what the drain left unfinished.
    async fn drain(self, mut result: anyhow::Result<()>) -> anyhow::Result<()> {
        self.health.set_draining(true);
        // One deadline for all, counted from the stop request: what is not stored by then is
        // replayed by the next owner.
        let deadline = self.stop.deadline();
        info!(
            remaining_ms = self.stop.remaining().as_millis() as u64,
            "Draining: waiting for MongoDB and the checkpoints, flushing the producer, committing offsets."
        );
        // The first failure is the one reported.
        match self.store.finish(deadline).await {
            Ok(()) => {}
            Err(StoreUnfinished::Failed(e)) => {
                result = result.and(Err(failure_at_stop(&self.stop, e, "store writes failed")));
            }
            Err(deadline_passed) => {
                result = result.and(Err(Unfinished(deadline_passed.to_string()).into()));
            }
        }
        let output = self.sinks.output.clone();
        let flush_for = self.stop.remaining();
        if let Err(e) = tokio::task::block_in_place(|| output.flush(flush_for)) {
            warn!(error = %e, "Producer flush incomplete.");
        }
        if let Some(probe) = self.probe {
            probe.abort();
            let _ = probe.await;
        }
        if let Some(mongo) = self.sinks.mongo {
            let remaining = self.stop.remaining();
            if tokio::time::timeout(remaining.max(Duration::from_millis(500)), mongo.shutdown())
                .await
                .is_err()
            {
                warn!("MongoDB client did not shut down in time.");
            }
        }
        // Every task that could use the consumer has been joined or aborted; the gate lets go
        // of the partitions it paused (they reference the consumer's partition objects).
        self.gate.forget_paused();
        drop(self.gate);
        let consumer = self.intake.into_consumer();
        if let Err(unfinished) = intake::close(consumer, deadline + CLOSE_GRACE).await {
            result = result.and(Err(unfinished.into()));
        }
        result
    }
}

/// What a sink error that ended the work means: during a stop, an outage whose retries the
/// stop cut short leaves work unstored for the next owner ([`Unfinished`]); anything else (an
/// error retrying cannot fix, or no stop requested) is an error.
fn failure_at_stop(stop: &Shutdown, error: SinkError, what: &str) -> anyhow::Error {
    if error.retryable() && stop.is_requested() {
        Unfinished(format!("{what}: {error}")).into()
    } else {
        anyhow::anyhow!(error).context(what.to_string())
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
    // The input topic's partitions as listed, however many it had if it existed before.
    let input_partitions = kafka::topics::create_missing(&admin, &new_topics)
        .await?
        .get(&settings.source.topic)
        .map_or(settings.source.topic_partitions, |&n| n as i32);
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
