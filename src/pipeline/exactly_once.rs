//! Exactly-once output (`output.exactly_once`): each batch is stored by one Kafka transaction.
//!
//! Per batch, in order: the MongoDB documents are inserted (idempotent, retried while MongoDB
//! is down, as in the default mode), then a transaction carries the batch's feature records,
//! dead letters and checkpoints, and the batch's input offsets with the consumer group's
//! metadata (`send_offsets_to_transaction`, KIP-447), and commits. A `read_committed` reader of
//! the output or dead-letter topic sees a batch's records once, when its transaction commits,
//! and never those of an aborted one. One transaction is open at a time, so batches are handled
//! one after the other; the consumer keeps polling meanwhile (the next batch gathers).
//!
//! - A transaction that cannot commit (a send failed, the group rebalanced so its offsets are
//!   refused, the broker went away) is aborted, and the partitions it touched are *rewound*:
//!   their streams restored from the committed checkpoints and the consumer moved back to the
//!   committed offsets ([`super::intake::Intake::rewind`]). The replay recomputes the same
//!   records, which the next transaction commits.
//! - A producer fenced by another with its `transactional.id` (a zombie instance, or two
//!   instances given the same id) cannot be used again: every assigned partition is rewound and
//!   a new producer takes the id back, after a pause that doubles on each fencing.
//!
//! Each path is logged and counted (`specflow_transactions_*`, `specflow_partitions_rewound_total`).

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

use super::backpressure::{Backoff, PauseGate, RetryDelay};
use super::batch::{Outbox, StoreJob};
use super::deliver::count_dead_letter;
use super::intake::NextBatch;
use super::state::checkpoint_topic as checkpoint;
use super::store::{count_checkpoints, insert_documents, latest_checkpoints};
use super::{Worker, failure_at_stop};
use crate::clock::unix_ms;
use crate::config::Settings;
use crate::kafka::closing::ClosedApart;
use crate::kafka::producer::DeliveryProducer;
use crate::shutdown::{Shutdown, Unfinished};
use crate::sinks::SinkError;
use crate::sinks::dead_letter::DeadLetterSink;
use crate::sinks::kafka::KafkaSink;
use crate::sinks::mongo::MongoSink;
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

/// The longest pause before a fenced producer takes its `transactional.id` back.
const MAX_FENCED_PAUSE: Duration = Duration::from_secs(30);

/// How a batch's transaction ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Transaction {
    /// Committed: its records, dead letters, checkpoints and offsets are visible.
    Committed,
    /// Aborted: nothing of it is visible; the partitions it touched must be rewound.
    Aborted,
    /// The producer was fenced: nothing of it is visible, every partition must be rewound and
    /// the producer replaced ([`Transactions::replace_producer`]).
    Fenced,
    /// Aborted because its deliveries timed out: the partitions it
    /// touched must be rewound and the producer renewed ([`Transactions::renew_producer`];
    /// librdkafka can keep a partition without a leader for good after a broker restart,
    /// confluentinc/librdkafka#5430).
    Stuck,
}

/// The transactional producer and what each transaction writes to.
pub(super) struct Transactions {
    settings: Settings,
    transactional_id: String,
    output: KafkaSink,
    dead_letters: DeadLetterSink,
    mongo: Option<MongoSink>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: Shutdown,
    /// Pause before the next producer replacement (doubles on each fencing).
    fenced_pause: Duration,
}

impl Transactions {
    /// Initialises the transactions of `output` (built with `transactional_id`): waits for the
    /// transaction coordinator, retrying until it answers or a stop is requested. This also
    /// aborts a transaction a previous producer with the same id left open.
    pub(super) async fn start(
        settings: &Settings,
        transactional_id: String,
        output: KafkaSink,
        mongo: Option<MongoSink>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        stop: Shutdown,
    ) -> anyhow::Result<Self> {
        let transactions = Self {
            settings: settings.clone(),
            transactional_id,
            dead_letters: DeadLetterSink::new(&settings.dead_letter, output.clone()),
            output,
            mongo,
            metrics,
            health,
            stop,
            fenced_pause: Duration::from_secs(1),
        };
        transactions.init().await?;
        Ok(transactions)
    }

    /// `init_transactions`, retried with backoff until it succeeds or a stop is requested.
    async fn init(&self) -> anyhow::Result<()> {
        let mut delay = RetryDelay::default();
        loop {
            let timeout = self.call_timeout();
            match self
                .blocking(move |p| p.transactions().init_transactions(timeout))
                .await
            {
                Ok(()) => {
                    info!(transactional_id = %self.transactional_id, "Transactions initialised (output.exactly_once).");
                    return Ok(());
                }
                Err(e) if is_fatal(&e) || !is_retriable(&e) => {
                    anyhow::bail!(
                        "cannot initialise transactions for transactional.id {:?}: {e} (exactly-once needs Kafka 2.5 or newer with a transaction coordinator)",
                        self.transactional_id
                    );
                }
                Err(e) => {
                    if self.stop.is_requested() {
                        return Err(Unfinished(format!(
                            "transactions were not initialised before the stop: {e}"
                        ))
                        .into());
                    }
                    warn!(transactional_id = %self.transactional_id, error = %e, retry_in_ms = delay.current().as_millis() as u64, "Cannot initialise transactions yet; retrying.");
                    delay.wait_unless(self.stop.requested()).await;
                }
            }
        }
    }

    /// The producer, shared with the health check (its broker reachability).
    pub(super) fn output(&self) -> &KafkaSink {
        &self.output
    }

    /// After a fencing: waits (1 s, doubling up to [`MAX_FENCED_PAUSE`]), then builds a new
    /// producer with the same `transactional.id` and initialises it, which fences the other.
    pub(super) async fn replace_producer(&mut self) -> anyhow::Result<()> {
        warn!(
            transactional_id = %self.transactional_id,
            pause_ms = self.fenced_pause.as_millis() as u64,
            "Producer fenced: another producer uses this transactional.id (a zombie, or two instances configured alike). Every partition was rewound; taking the id back after a pause."
        );
        tokio::select! {
            _ = tokio::time::sleep(self.fenced_pause) => {}
            _ = self.stop.requested() => return Ok(()),
        }
        self.fenced_pause = (self.fenced_pause * 2).min(MAX_FENCED_PAUSE);
        self.rebuild_producer().await
    }

    /// Replaces a producer whose deliveries timed out (see
    /// [`Transaction::Stuck`]) with a new one under the same transactional id.
    pub(super) async fn renew_producer(&mut self) -> anyhow::Result<()> {
        warn!(
            transactional_id = %self.transactional_id,
            "Kafka deliveries timed out; the transactional producer is replaced (librdkafka can keep a partition without a leader after a broker restart, confluentinc/librdkafka#5430)."
        );
        self.rebuild_producer().await
    }

    /// A new producer under the same transactional id, its transactions initialised (which
    /// fences the old one).
    async fn rebuild_producer(&mut self) -> anyhow::Result<()> {
        let old = std::mem::replace(
            &mut self.output,
            self.settings
                .output
                .build(&self.settings.kafka, Some(&self.transactional_id))?,
        );
        // Its drop purges and flushes, which may wait for the broker.
        drop(ClosedApart::new("replaced producer", old));
        self.dead_letters = DeadLetterSink::new(&self.settings.dead_letter, self.output.clone());
        self.init().await
    }

    /// Stores one batch: its documents in MongoDB, then one transaction with its records, dead
    /// letters, checkpoints and (with `group`) its offsets. An error is returned only when the
    /// stop cut the retries short or retrying cannot help; the transaction is then aborted.
    pub(super) async fn store(
        &mut self,
        outbox: &Outbox,
        job: &StoreJob,
        group: Option<ConsumerGroupMetadata>,
        gate: &PauseGate,
    ) -> Result<Transaction, SinkError> {
        if let Some(mongo) = &self.mongo
            && !job.documents.is_empty()
        {
            let backoff = Backoff::new(
                "mongodb",
                self.settings.mongo.retry_ms(),
                self.stop.token(),
                gate,
            );
            insert_documents(mongo, &job.documents, backoff, &self.metrics, &self.health).await?;
        }
        let began = Instant::now();
        let outcome = self.transact(outbox, job, group).await;
        let outcome = match outcome {
            Ok(()) => Ok(Transaction::Committed),
            Err((reason, e)) => {
                warn!(error = %e, reason, "Transaction failed; aborting it.");
                let stuck = e.is_delivery_timeout();
                match self.abort(reason).await {
                    Ok(Transaction::Aborted) if stuck => Ok(Transaction::Stuck),
                    outcome => outcome,
                }
            }
        };
        match outcome {
            Ok(Transaction::Committed) => {
                self.fenced_pause = Duration::from_secs(1);
                self.metrics.transactions_committed_total.inc();
                self.metrics
                    .transaction_seconds
                    .observe(began.elapsed().as_secs_f64());
                self.count_committed(outbox, job);
            }
            Ok(Transaction::Fenced) => self.metrics.transactions_fenced_total.inc(),
            _ => {}
        }
        outcome
    }

    /// One transaction: begin, every send acknowledged, offsets, commit. On failure, the step
    /// that failed and the error; the transaction is then open or in an abortable state.
    async fn transact(
        &self,
        outbox: &Outbox,
        job: &StoreJob,
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<(), (&'static str, SinkError)> {
        let producer = self.output.producer();
        producer
            .transactions()
            .begin_transaction()
            .map_err(|e| ("begin", self.failed(e)))?;
        let records = futures::future::join_all(
            outbox
                .records
                .iter()
                .map(|r| self.output.send_record(r.key.as_bytes(), r.json.clone())),
        );
        let letters = futures::future::join_all(
            outbox
                .letters
                .iter()
                .map(|(l, _)| self.dead_letters.send(l)),
        );
        let topic = self.settings.checkpoint_topic();
        let latest = latest_checkpoints(&job.checkpoints);
        let checkpoints = futures::future::join_all(latest.iter().map(|(partition, records)| {
            checkpoint::write_partition(&self.output, &topic, *partition, records)
        }));
        let (records, letters, checkpoints) = futures::join!(records, letters, checkpoints);
        records
            .into_iter()
            .chain(letters)
            .chain(checkpoints)
            .collect::<Result<(), SinkError>>()
            .map_err(|e| ("send", e))?;
        if let Some(group) = group.filter(|_| !job.offsets.is_empty()) {
            let mut offsets = TopicPartitionList::new();
            for (partition, offset) in &job.offsets {
                let _ = offsets.add_partition_offset(
                    &self.settings.source.topic,
                    *partition,
                    Offset::Offset(*offset),
                );
            }
            let timeout = self.call_timeout();
            self.blocking(move |p| {
                p.transactions()
                    .send_offsets_to_transaction(&offsets, &group, timeout)
            })
            .await
            .map_err(|e| ("offsets", self.failed(e)))?;
        }
        let timeout = self.call_timeout();
        self.blocking(move |p| p.transactions().commit_transaction(timeout))
            .await
            .map_err(|e| ("commit", self.failed(e)))?;
        Ok(())
    }

    /// Aborts the open transaction (retrying while the broker is away, until a stop); says
    /// whether the producer was fenced instead.
    async fn abort(&self, reason: &'static str) -> Result<Transaction, SinkError> {
        let mut delay = RetryDelay::default();
        loop {
            let timeout = self.call_timeout();
            match self
                .blocking(move |p| p.transactions().abort_transaction(timeout))
                .await
            {
                Ok(()) => {
                    self.metrics.transaction_aborted(reason);
                    info!(
                        reason,
                        "Transaction aborted; its partitions will be rewound."
                    );
                    return Ok(Transaction::Aborted);
                }
                Err(e) if is_fatal(&e) => {
                    error!(error = %e, transactional_id = %self.transactional_id, "Transactional producer fenced or failed fatally.");
                    self.metrics.transaction_aborted("fenced");
                    return Ok(Transaction::Fenced);
                }
                Err(e) if !is_retriable(&e) => {
                    // Nothing left to abort (e.g. the commit went through after all): the
                    // rewind goes back to whatever the group committed, so nothing repeats.
                    warn!(error = %e, "Abort refused; rewinding to the committed state.");
                    self.metrics.transaction_aborted(reason);
                    return Ok(Transaction::Aborted);
                }
                Err(e) => {
                    if self.stop.is_requested() {
                        self.metrics.transaction_aborted("stop");
                        return Err(self.failed(e));
                    }
                    warn!(error = %e, retry_in_ms = delay.current().as_millis() as u64, "Cannot abort the transaction yet; retrying.");
                    delay.wait_unless(self.stop.requested()).await;
                }
            }
        }
    }

    /// The metrics of a committed batch (its records and dead letters are visible now).
    fn count_committed(&self, outbox: &Outbox, job: &StoreJob) {
        let metrics = &self.metrics;
        metrics
            .records_produced_total
            .inc_by(outbox.records.len() as u64);
        for (letter, reason) in &outbox.letters {
            count_dead_letter(metrics, letter, reason);
        }
        let latest = latest_checkpoints(&job.checkpoints);
        for records in latest.values() {
            count_checkpoints(metrics, records);
        }
        // The records are visible to readers now (MongoDB, when on, stored them before).
        let now = unix_ms();
        let end_ms: Vec<i64> = if outbox.records.is_empty() {
            job.end_ms.clone()
        } else {
            outbox.records.iter().map(|r| r.end_ms).collect()
        };
        for end_ms in end_ms {
            metrics.observe_end_to_end_latency(end_ms, now);
        }
        debug!(
            records = outbox.records.len(),
            letters = outbox.letters.len(),
            offsets = job.offsets.len(),
            "Transaction committed."
        );
    }

    /// The timeout of one blocking transaction call: the transaction timeout, or what is left
    /// of the drain once a stop was requested.
    fn call_timeout(&self) -> Duration {
        let timeout = Duration::from_millis(self.settings.output.transaction_timeout_ms);
        if self.stop.is_requested() {
            timeout.min(self.stop.remaining().max(Duration::from_millis(100)))
        } else {
            timeout
        }
    }

    /// Runs a blocking transaction call off the async runtime.
    async fn blocking<F>(&self, call: F) -> KafkaResult<()>
    where
        F: FnOnce(&DeliveryProducer) -> KafkaResult<()> + Send + 'static,
    {
        let producer = self.output.producer().clone();
        tokio::task::spawn_blocking(move || call(&producer))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// A transaction call's error as a sink error on the output topic.
    fn failed(&self, source: KafkaError) -> SinkError {
        SinkError::Kafka {
            topic: self.output.topic().to_string(),
            source,
        }
    }
}

/// Whether a transaction call's error leaves the producer unusable (fenced, or fatal).
fn is_fatal(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.is_fatal())
}

/// Whether the same transaction call may succeed if made again (a timeout, no coordinator).
fn is_retriable(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(e) => e.is_retriable(),
        KafkaError::Canceled => false,
        _ => true,
    }
}

impl Worker {
    /// The loop in exactly-once mode, until a stop or an error retrying cannot fix: a batch
    /// is computed, then stored by one transaction ([`Transactions::store`]) while the
    /// consumer keeps polling; an aborted transaction rewinds the partitions it touched.
    pub(super) async fn process_exactly_once(
        &mut self,
        transactions: &mut Transactions,
    ) -> anyhow::Result<()> {
        let linger = Duration::from_millis(self.settings.source.batch_linger_ms);
        let max_batch = self.settings.source.batch_max_messages;
        let idle_timeout = Duration::from_secs(self.settings.streams.idle_timeout_secs);
        loop {
            if self.stop.is_requested() {
                return Ok(());
            }
            self.health.beat();
            self.intake.finish_restores(&self.gate, &self.metrics);
            let (outbox, jobs, group) = match self
                .intake
                .next_batch(self.stop.token(), linger, max_batch)
                .await
            {
                NextBatch::Stop => return Ok(()),
                NextBatch::Empty => continue,
                NextBatch::Idle => (Outbox::default(), Vec::new(), None),
                NextBatch::Failed(failure) => {
                    // No transaction is open between batches: nothing is left half done.
                    error!(error = %failure, "Stopping: the Kafka consumer failed.");
                    self.stop.request();
                    return Err(failure.into());
                }
                NextBatch::Messages(batch) => {
                    // The group's generation the batch was consumed in: a rebalance after
                    // it makes the transaction's offsets refused, and the batch is rewound.
                    let group = self.intake.consumer().group_metadata();
                    let (outbox, jobs) = self.compute_batch(batch);
                    (outbox, jobs, group)
                }
            };
            let due = self.intake.sweep(idle_timeout, &self.metrics);
            let mut job = StoreJob::default();
            for share in jobs.into_iter().chain(self.store.jobs_for_checkpoints(due)) {
                job.absorb(share);
            }
            if job.is_empty() && outbox.records.is_empty() && outbox.letters.is_empty() {
                continue;
            }
            let mut touched: Vec<i32> = job.offsets.keys().copied().collect();
            touched.extend(job.checkpoints.iter().map(|(partition, _)| *partition));
            touched.sort_unstable();
            touched.dedup();
            let outcome = {
                let stop = self.stop.clone();
                let gate = self.gate.clone();
                let store = transactions.store(&outbox, &job, group, &gate);
                // A stop gives the transaction until the drain deadline; past it, it is left
                // to the broker (aborted at its timeout, or when this id starts again).
                let stored = async move {
                    tokio::select! {
                        outcome = store => Some(outcome),
                        _ = async {
                            stop.requested().await;
                            tokio::time::sleep_until(stop.deadline().into()).await;
                        } => None,
                    }
                };
                self.polling_through_stop(stored, max_batch).await
            };
            let Some(outcome) = outcome else {
                warn!(
                    "The drain deadline passed during a transaction; its batch will be replayed."
                );
                return Err(
                    Unfinished("the drain deadline passed during a transaction".into()).into(),
                );
            };
            match outcome {
                Ok(Transaction::Committed) => {}
                Ok(Transaction::Aborted) => {
                    let rewound = self.intake.rewind(touched);
                    self.metrics.partitions_rewound_total.inc_by(rewound as u64);
                }
                Ok(Transaction::Fenced) => {
                    let assigned = self.intake.assigned();
                    let rewound = self.intake.rewind(assigned);
                    self.metrics.partitions_rewound_total.inc_by(rewound as u64);
                    transactions.replace_producer().await?;
                    self.health.watch_producer(transactions.output().brokers());
                }
                Ok(Transaction::Stuck) => {
                    let rewound = self.intake.rewind(touched);
                    self.metrics.partitions_rewound_total.inc_by(rewound as u64);
                    transactions.renew_producer().await?;
                    self.health.watch_producer(transactions.output().brokers());
                }
                Err(e) => {
                    error!(error = %e, "Batch could not be stored; its transaction was not committed and it will be replayed.");
                    return Err(failure_at_stop(
                        &self.stop,
                        e,
                        "a batch's transaction could not be committed",
                    ));
                }
            }
        }
    }
}
