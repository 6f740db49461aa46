//! A producer with awaitable deliveries whose delivery reports are served by a thread of its own.
//!
//! rdkafka's `FutureProducer` serves them from a `ThreadedProducer` thread that calls
//! `BaseProducer::poll` with 100 ms deadlines. That loop polls again until its deadline, and
//! once less than a millisecond is left the wait rounds down to 0: it spins on non-blocking polls
//! and clock reads for the rest of that millisecond, about 1% of a core for every producer,
//! loaded or idle (~6% of the worker's CPU on issue 13's workload; benches/README.md).
//! [`DeliveryProducer`] polls with one-second deadlines instead, which leaves that spin at a
//! millisecond per second, and otherwise behaves as `FutureProducer::send`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, ToBytes};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer, ProducerContext,
};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use tokio::sync::oneshot;

use super::reachability::ReachabilityContext;

/// How long one poll of the delivery thread waits for reports before it checks whether the
/// producer is still in use (and the longest the thread outlives the last handle).
const POLL_SLICE: Duration = Duration::from_secs(1);

/// How long `send` waits before queueing again when the producer's queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(100);

/// Kafka headers from `(name, value)` pairs, in order (e.g. `ChunkHeaders::to_pairs`).
pub fn owned_headers(pairs: &[(&str, String)]) -> OwnedHeaders {
    pairs.iter().fold(
        OwnedHeaders::new_with_capacity(pairs.len()),
        |headers, (name, value)| {
            headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            })
        },
    )
}

/// Where an acknowledged message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
}

/// What a delivery report says: where the message was stored, or why it was not.
pub type DeliveryOutcome = Result<Stored, KafkaError>;

/// The context of a [`DeliveryProducer`]: [`ReachabilityContext`] for the client events, and
/// delivery reports sent to the [`Delivery`] of each message.
pub struct DeliveryContext {
    reachability: ReachabilityContext,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.reachability.error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.reachability.stats(statistics);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<oneshot::Sender<DeliveryOutcome>>;

    fn delivery(&self, result: &DeliveryResult<'_>, report_to: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(message) => Ok(Stored {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, _)) => Err(error.clone()),
        };
        // The sender gave up waiting: nobody to tell.
        let _ = report_to.send(outcome);
    }
}

/// A message's pending delivery report.
#[derive(Debug)]
pub struct Delivery(oneshot::Receiver<DeliveryOutcome>);

impl Delivery {
    /// Waits for the broker's acknowledgement (or the producer's verdict that there is none).
    pub async fn acknowledged(self) -> DeliveryOutcome {
        self.0.await.unwrap_or(Err(KafkaError::Canceled))
    }
}

/// Stops the delivery thread when the last [`DeliveryProducer`] handle goes.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A cheaply cloned producer with awaitable deliveries (see the module documentation).
#[derive(Clone)]
pub struct DeliveryProducer {
    producer: Arc<BaseProducer<DeliveryContext>>,
    thread_name: Arc<str>,
    _stop: Arc<StopOnDrop>,
}

/// Numbers the delivery threads of this process.
static DELIVERY_THREADS: AtomicUsize = AtomicUsize::new(0);

impl FromClientConfigAndContext<ReachabilityContext> for DeliveryProducer {
    fn from_config_and_context(
        config: &rdkafka::ClientConfig,
        reachability: ReachabilityContext,
    ) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<DeliveryContext>> = Arc::new(
            BaseProducer::from_config_and_context(config, DeliveryContext { reachability })?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (producer.clone(), stop.clone());
        let thread_name: Arc<str> = format!(
            "kafka-dr-{}",
            DELIVERY_THREADS.fetch_add(1, Ordering::Relaxed)
        )
        .into();
        std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    polled.poll(POLL_SLICE);
                }
            })
            .map_err(|e| {
                KafkaError::ClientCreation(format!("cannot start the delivery thread: {e}"))
            })?;
        Ok(Self {
            producer,
            thread_name,
            _stop: Arc::new(StopOnDrop(stop)),
        })
    }
}

impl DeliveryProducer {
    /// The name of the thread that serves this producer's delivery reports (`kafka-dr-<n>`).
    pub fn thread_name(&self) -> &str {
        &self.thread_name
    }

    /// Queues `record`; its [`Delivery`] resolves when the broker acknowledges it. A full queue
    /// is the error `MessageProduction(QueueFull)`, with nothing queued.
    pub fn enqueue<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<Delivery, KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (report_to, report) = oneshot::channel();
        self.producer
            .send(base_record(record, report_to))
            .map(|()| Delivery(report))
            .map_err(|(error, _)| error)
    }

    /// Queues `record`, waiting while the queue is full for up to `queue_timeout`, then waits
    /// for its acknowledgement (as `FutureProducer::send`).
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> DeliveryOutcome
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let started = Instant::now();
        let (report_to, report) = oneshot::channel();
        let mut record = base_record(record, report_to);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if started.elapsed() < queue_timeout =>
                {
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
        Delivery(report).acknowledged().await
    }

    /// Waits until everything queued is delivered, or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(Timeout::After(timeout))
    }
}

/// The same message, with `report_to` as its delivery opaque.
fn base_record<'a, K, P>(
    record: FutureRecord<'a, K, P>,
    report_to: oneshot::Sender<DeliveryOutcome>,
) -> BaseRecord<'a, K, P, Box<oneshot::Sender<DeliveryOutcome>>>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    BaseRecord {
        topic: record.topic,
        partition: record.partition,
        payload: record.payload,
        key: record.key,
        timestamp: record.timestamp,
        headers: record.headers,
        delivery_opaque: Box::new(report_to),
    }
}
