//! Back-pressure: the pause gate that stops consuming while a sink fails, the backoff that
//! paces the retries of a failed write, and the doubling delay both it and the other retry
//! loops (restores, transaction calls) wait by.

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::sinks::SinkError;
use crate::sources::kafka::SourceContext;
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

/// Pauses the assignment while any sink is failing and resumes it when none is, so that the
/// Kafka send loop and the MongoDB writer can each hold it. It only borrows the consumer (a
/// `Weak`): the intake owns it, and closes it once, on a thread of its own, at the end of the
/// drain; a task that outlives the drain can never be the one that destroys it.
pub(super) struct PauseGate {
    consumer: Weak<StreamConsumer<SourceContext>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// How many sinks are failing, and what was paused when the first began.
    held: std::sync::Mutex<(u32, Option<TopicPartitionList>)>,
}

impl PauseGate {
    /// A gate over `consumer`'s assignment; nothing is held.
    pub(super) fn new(
        consumer: Weak<StreamConsumer<SourceContext>>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            consumer,
            health,
            metrics,
            held: Default::default(),
        }
    }

    /// The consumer whose assignment this gate pauses, while its owner still has it. The
    /// strong reference is for one call: never keep it across an `await`.
    pub(super) fn consumer(&self) -> Option<Arc<StreamConsumer<SourceContext>>> {
        self.consumer.upgrade()
    }

    /// Lets go of the partitions paused by a sink outage without resuming them: they hold
    /// references to the consumer's partition objects, and a consumer destroyed while they
    /// live waits forever for its broker threads. Called by the drain before the close.
    pub(super) fn forget_paused(&self) {
        let taken = self.held.lock().unwrap_or_else(|e| e.into_inner()).1.take();
        drop(taken);
    }

    /// A sink began failing: the first holder pauses the whole assignment.
    fn hold(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.0 += 1;
        if held.0 == 1
            && let Some(consumer) = self.consumer()
        {
            let assignment = consumer.assignment().unwrap_or_default();
            if let Err(e) = consumer.pause(&assignment) {
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
    pub(super) fn resume_partition(&self, partition: i32) {
        let Some(consumer) = self.consumer() else {
            return;
        };
        let mut list = TopicPartitionList::new();
        let _ = list.add_partition(consumer.context().topic(), partition);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.0 > 0 {
            if let Some(paused) = held.1.as_mut() {
                let _ = paused.add_partition(consumer.context().topic(), partition);
            }
            return;
        }
        if let Err(e) = consumer.resume(&list) {
            warn!(partition, error = %e, "Cannot resume a restored partition.");
        }
    }

    /// A sink is back: the last holder resumes what was paused.
    fn release(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.0 = held.0.saturating_sub(1);
        if held.0 == 0
            && let Some(assignment) = held.1.take()
        {
            if let Some(consumer) = self.consumer()
                && let Err(e) = consumer.resume(&assignment)
            {
                warn!(error = %e, "Cannot resume partitions.");
            }
            self.metrics.paused_partitions.set(0);
            self.health.set_paused(false);
        }
    }
}

impl Drop for PauseGate {
    /// Destroys the held partition list before the consumer: the list keeps references to
    /// librdkafka's partition objects, and a consumer destroyed while they live waits forever
    /// for its broker threads (seen when the gate was the consumer's last holder mid-outage).
    fn drop(&mut self) {
        let held = self.held.get_mut().unwrap_or_else(|e| e.into_inner());
        drop(held.1.take());
    }
}

/// A retry delay that doubles after each wait, up to a ceiling.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetryDelay {
    delay: Duration,
    max: Duration,
}

impl Default for RetryDelay {
    /// 200 ms doubling to 5 s: the pace of a call retried until it succeeds or a stop
    /// (restoring a partition, initialising or aborting a transaction).
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(5))
    }
}

impl RetryDelay {
    /// A delay of `first`, doubling up to `max`.
    pub(super) const fn new(first: Duration, max: Duration) -> Self {
        Self { delay: first, max }
    }

    /// The wait before the next retry.
    pub(super) fn current(&self) -> Duration {
        self.delay
    }

    /// The wait before the next retry; the one after it is twice as long (up to the ceiling).
    pub(super) fn next(&mut self) -> Duration {
        let wait = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        wait
    }

    /// Waits [`Self::next`], or until `stop` resolves if that comes first.
    pub(super) async fn wait_unless(&mut self, stop: impl std::future::Future<Output = ()>) {
        let wait = self.next();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop => {}
        }
    }
}

/// Exponential backoff with jitter for sink writes; while failing, the partitions are paused
/// (through the [`PauseGate`]) and readiness is false, until [`Backoff::succeeded`].
pub(super) struct Backoff<'a> {
    what: &'static str,
    delay: RetryDelay,
    shutdown: &'a CancellationToken,
    gate: &'a PauseGate,
    holding: bool,
}

impl<'a> Backoff<'a> {
    /// A backoff for writes to `what`, from `initial_ms` doubling up to `max_ms`.
    pub(super) fn new(
        what: &'static str,
        (initial_ms, max_ms): (u64, u64),
        shutdown: &'a CancellationToken,
        gate: &'a PauseGate,
    ) -> Self {
        Self {
            what,
            delay: RetryDelay::new(
                Duration::from_millis(initial_ms),
                Duration::from_millis(max_ms),
            ),
            shutdown,
            gate,
            holding: false,
        }
    }

    /// Handles a failed attempt: pauses, waits, and returns `Ok` to try again, or the error
    /// when retrying cannot help or a stop was requested.
    pub(super) async fn failed(&mut self, error: SinkError) -> Result<(), SinkError> {
        if !error.retryable() || self.shutdown.is_cancelled() {
            return Err(error);
        }
        if !self.holding {
            self.gate.hold();
            self.holding = true;
        }
        let wait = self.delay.next().mul_f64(rand::random_range(0.5..1.5));
        warn!(sink = self.what, error = %error, retry_in_ms = wait.as_millis() as u64, "Sink write failed; partitions paused, retrying.");
        self.gate.health.beat();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.shutdown.cancelled() => {}
        }
        Ok(())
    }

    /// The write went through: resume what was paused.
    pub(super) fn succeeded(self) {
        if self.holding {
            self.gate.release();
            info!(sink = self.what, "Sink is back.");
        }
    }
}
