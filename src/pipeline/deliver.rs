//! Deliver: a batch's feature records (when `output.enabled`) and dead letters go to Kafka;
//! once every one is acknowledged, the batch's store jobs go to the store writers. Failed
//! sends are re-sent, with the partitions paused, under the `output.retry_*` backoff.
//!
//! A delivery runs as a task of its own, so that the loop computes and sends the next batch
//! while Kafka acknowledges this one; at most [`MAX_IN_FLIGHT`] are under way. Each queues its
//! store jobs only after the delivery before it queued its own, so MongoDB, the checkpoints
//! and the offsets keep batch order; the idempotent producer keeps the records' order.

use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

use super::Sinks;
use super::backpressure::{Backoff, PauseGate};
use super::batch::{Outbox, OutputRecord, StoreJob};
use super::store::StoreQueues;
use crate::clock::unix_ms;
use crate::sinks::SinkError;
use crate::sinks::dead_letter::{DeadLetter, DeadLetterSink};
use crate::sinks::kafka::KafkaSink;
use crate::telemetry::metrics::Metrics;

/// The handles a delivery task owns.
pub(super) struct Courier {
    output: KafkaSink,
    dead_letters: DeadLetterSink,
    /// Observe the end-to-end latency at the output topic's acknowledgement (MongoDB off).
    observe_latency: bool,
    retry_ms: (u64, u64),
    metrics: Arc<Metrics>,
    gate: Arc<PauseGate>,
    shutdown: CancellationToken,
    queues: StoreQueues,
}

/// Most batch deliveries under way at once (the one being acknowledged and the next).
pub(super) const MAX_IN_FLIGHT: usize = 2;

/// A batch's delivery, running. Dropping it aborts the task: a delivery never outlives the
/// loop that started it.
pub(super) struct InFlight(AbortOnDropHandle<Result<bool, SinkError>>);

/// Tells the next delivery that this one queued its store jobs (dropped unsent: it did not).
pub(super) struct Queued(oneshot::Receiver<()>);

impl InFlight {
    /// Waits for the delivery to end. `Ok(false)`: a store writer stopped (it reports why).
    /// Cancel-safe: when the wait is given up, the delivery goes on and can be awaited again
    /// (a finished delivery is never awaited again: it is consumed by its owner).
    pub(super) async fn finish(&mut self) -> Result<bool, SinkError> {
        match (&mut self.0).await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(false),
        }
    }

    /// Like [`InFlight::finish`], but gives up at `deadline`: the delivery is then aborted
    /// (its store jobs are not queued, so the batch is replayed) and `None` returned.
    pub(super) async fn finish_by(mut self, deadline: Instant) -> Option<Result<bool, SinkError>> {
        tokio::time::timeout_at(deadline.into(), self.finish())
            .await
            .ok()
    }

    /// Stops the delivery where it is; its store jobs are not queued (the batch is replayed).
    pub(super) fn abandon(self) {
        self.0.abort();
    }
}

impl Courier {
    /// The handles of the sinks, the writers' queues and the retry policy.
    pub(super) fn new(
        sinks: &Sinks,
        retry_ms: (u64, u64),
        metrics: &Arc<Metrics>,
        gate: &Arc<PauseGate>,
        shutdown: &CancellationToken,
        queues: StoreQueues,
    ) -> Arc<Self> {
        Arc::new(Self {
            output: sinks.output.clone(),
            dead_letters: sinks.dead_letters.clone(),
            observe_latency: sinks.mongo.is_none(),
            retry_ms,
            metrics: metrics.clone(),
            gate: gate.clone(),
            shutdown: shutdown.clone(),
            queues,
        })
    }

    /// Starts delivering `outbox`; once Kafka acknowledged all of it and the delivery before
    /// it (`after`) queued its jobs, `jobs` go to the writers.
    pub(super) fn dispatch(
        self: &Arc<Self>,
        outbox: Outbox,
        jobs: Vec<StoreJob>,
        after: Option<Queued>,
    ) -> (InFlight, Queued) {
        let courier = self.clone();
        let (done, queued) = oneshot::channel();
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            courier.send_to_kafka(&outbox).await?;
            // The delivery before failed or its writer stopped: it reports why.
            if let Some(Queued(before)) = after
                && before.await.is_err()
            {
                return Ok(false);
            }
            let queued = courier.queues.queue(jobs);
            if queued {
                let _ = done.send(());
            }
            Ok(queued)
        }));
        (InFlight(task), Queued(queued))
    }

    /// Sends the records and dead letters of `outbox` and waits for every acknowledgement.
    /// With MongoDB off the end-to-end latency is observed here.
    async fn send_to_kafka(&self, outbox: &Outbox) -> Result<(), SinkError> {
        if outbox.records.is_empty() && outbox.letters.is_empty() {
            return Ok(());
        }
        let metrics = &self.metrics;
        let mut backoff = Backoff::new("kafka", self.retry_ms, &self.shutdown, &self.gate);
        let started = Instant::now();
        let mut pending_records: Vec<&OutputRecord> = outbox.records.iter().collect();
        let mut pending_letters: Vec<&(DeadLetter, &'static str)> = outbox.letters.iter().collect();
        loop {
            // Every send is queued before the first acknowledgement is awaited.
            let record_sends = futures::future::join_all(
                pending_records
                    .iter()
                    .map(|r| self.output.send_record(r.key.as_bytes(), r.json.clone())),
            );
            let letter_sends = futures::future::join_all(
                pending_letters
                    .iter()
                    .map(|(l, _)| self.dead_letters.send(l)),
            );
            let (record_results, letter_results) = futures::join!(record_sends, letter_sends);
            let mut first_error = None;
            let now = unix_ms();
            let mut still_records = Vec::new();
            for (record, result) in pending_records.iter().zip(record_results) {
                match result {
                    Ok(()) => {
                        metrics.records_produced_total.inc();
                        if self.observe_latency {
                            metrics.observe_end_to_end_latency(record.end_ms, now);
                        }
                    }
                    Err(e) => {
                        still_records.push(*record);
                        first_error.get_or_insert(e);
                    }
                }
            }
            let mut still_letters = Vec::new();
            for (entry, result) in pending_letters.iter().zip(letter_results) {
                let (letter, reason) = entry;
                match result {
                    Ok(()) => count_dead_letter(metrics, letter, reason),
                    Err(e) => {
                        still_letters.push(*entry);
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
            records = outbox.records.len(),
            letters = outbox.letters.len(),
            kafka_ms = started.elapsed().as_millis() as u64,
            "Batch sent."
        );
        Ok(())
    }
}

/// Counts a dead letter the dead-letter topic has (under its `reason` label) and logs it.
pub(super) fn count_dead_letter(metrics: &Metrics, letter: &DeadLetter, reason: &str) {
    metrics.dead_letter(reason);
    warn!(topic = %letter.topic, partition = letter.partition, offset = letter.offset, error = %letter.error, "Message dead-lettered.");
}
