//! A producer with awaitable deliveries whose delivery reports are served by a thread of its own.
//!
//! rdkafka's `FutureProducer` serves them from a `ThreadedProducer` thread that calls
//! `BaseProducer::poll` with 100 ms deadlines. That loop polls again until its deadline, and
//! once less than a millisecond is left the wait rounds down to 0: it spins on non-blocking polls
//! and clock reads for the rest of that millisecond, about 1% of a core for every producer,
//! loaded or idle (~6% of the worker's CPU on issue 13's workload; benches/README.md).
//! [`DeliveryProducer`] polls with one-second deadlines instead, which leaves that spin at a
//! millisecond per second, and otherwise behaves as `FutureProducer::send`.
//!
//! Messages go through rdkafka's safe `BaseProducer::send` (librdkafka copies each payload). A
//! zero-copy send through `rd_kafka_producev` was tried (round 10, benches/README.md); it was
//! not measured to save 5% of the worker's CPU on its own, so the safe API stays.

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

/// The delivery guarantees every specflow producer has, set after everything else so that they
/// always win: the broker acknowledges a message only once every in-sync replica has it, and
/// retries never duplicate or reorder. `specflow check` rejects `[kafka.producer]` keys that
/// would weaken them ([`weakened_guarantee`]).
pub const GUARANTEES: [(&str, &str); 2] = [("enable.idempotence", "true"), ("acks", "all")];

/// The most requests in flight per connection the idempotent producer allows.
pub const MAX_IN_FLIGHT_IDEMPOTENT: u32 = 5;

/// The settings of every specflow producer (the worker's output, checkpoint and dead-letter
/// producer, the gateway's and `specflow produce`'s): the connection, then the caller's
/// `tuning`, then the operator's `[kafka.producer]` (which may override that tuning), then
/// [`GUARANTEES`].
pub fn producer_config(
    kafka: &super::KafkaConfig,
    tuning: &[(&str, String)],
) -> Result<rdkafka::ClientConfig, super::BuildError> {
    let mut config = kafka.client_config(&Default::default())?;
    for (key, value) in tuning {
        config.set(*key, value);
    }
    for (key, value) in &kafka.producer {
        config.set(key, value);
    }
    for (key, value) in GUARANTEES {
        config.set(key, value);
    }
    Ok(config)
}

/// Why a `[kafka.producer]` property would weaken the delivery guarantees, if it would.
pub fn weakened_guarantee(key: &str, value: &str) -> Option<String> {
    let value = value.trim();
    match key {
        "acks" | "request.required.acks" if !matches!(value, "all" | "-1") => Some(
            "would weaken the delivery guarantee: specflow's producers always wait for every in-sync replica (acks=all); remove it or set \"all\"".to_string(),
        ),
        "enable.idempotence" if !value.eq_ignore_ascii_case("true") => Some(
            "would allow duplicated or reordered records on retries: specflow's producers are always idempotent; remove it".to_string(),
        ),
        "max.in.flight.requests.per.connection" | "max.in.flight"
            if !value
                .parse::<u32>()
                .is_ok_and(|n| (1..=MAX_IN_FLIGHT_IDEMPOTENT).contains(&n)) =>
        {
            Some(format!(
                "must be a number from 1 to {MAX_IN_FLIGHT_IDEMPOTENT}: the idempotent producer keeps order only up to {MAX_IN_FLIGHT_IDEMPOTENT} requests in flight"
            ))
        }
        _ => None,
    }
}

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

/// A queued message's delivery opaque: where its report goes.
pub struct Pending {
    report_to: oneshot::Sender<DeliveryOutcome>,
}

impl Pending {
    fn new(report_to: oneshot::Sender<DeliveryOutcome>) -> Box<Self> {
        Box::new(Self { report_to })
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(message) => Ok(Stored {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, _)) => Err(error.clone()),
        };
        let Pending { report_to } = *pending;
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
    /// Whether `other` is a clone of this producer (the same client).
    pub fn is(&self, other: &DeliveryProducer) -> bool {
        Arc::ptr_eq(&self.producer, &other.producer)
    }

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
        let (report_to, report) = oneshot::channel();
        let record = base_record(record, report_to);
        // The record comes back whole when librdkafka refuses it (rdkafka's own signature).
        #[allow(clippy::result_large_err)]
        queue_then_await(record, report, queue_timeout, |record| {
            self.producer.send(record)
        })
        .await
    }

    /// The underlying client (metadata requests, e.g. [`super::topics::await_listed`]).
    pub fn client(&self) -> &rdkafka::client::Client<DeliveryContext> {
        self.producer.client()
    }

    /// Waits until everything queued is delivered, or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(Timeout::After(timeout))
    }

    /// The transactional producer's [`Producer`] calls (`init_transactions`,
    /// `begin_transaction`, `send_offsets_to_transaction`, `commit_transaction`,
    /// `abort_transaction`); they block, so call them off the async runtime.
    pub fn transactions(&self) -> &impl Producer<DeliveryContext> {
        &*self.producer
    }
}

/// Queues `message` with `queue` (which hands it back with the error when nothing was queued),
/// again every [`QUEUE_FULL_BACKOFF`] while the queue is full for up to `queue_timeout`, then
/// waits for its delivery report on `report`.
async fn queue_then_await<M>(
    mut message: M,
    report: oneshot::Receiver<DeliveryOutcome>,
    queue_timeout: Duration,
    mut queue: impl FnMut(M) -> Result<(), (KafkaError, M)>,
) -> DeliveryOutcome {
    let started = Instant::now();
    loop {
        match queue(message) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                if started.elapsed() < queue_timeout =>
            {
                message = returned;
                tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
    Delivery(report).acknowledged().await
}

/// The same message, with `report_to` as its delivery opaque (librdkafka copies its payload).
fn base_record<'a, K, P>(
    record: FutureRecord<'a, K, P>,
    report_to: oneshot::Sender<DeliveryOutcome>,
) -> BaseRecord<'a, K, P, Box<Pending>>
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
        delivery_opaque: Pending::new(report_to),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    /// The guarantees win over the caller's tuning and over `[kafka.producer]`; other
    /// operator keys override the caller's tuning.
    #[test]
    fn the_delivery_guarantees_always_win() {
        let mut kafka = super::super::KafkaConfig::default();
        kafka.producer.insert("acks".into(), "1".into());
        kafka
            .producer
            .insert("enable.idempotence".into(), "false".into());
        kafka.producer.insert("linger.ms".into(), "20".into());
        let config =
            producer_config(&kafka, &[("linger.ms", "5".into()), ("acks", "0".into())]).unwrap();
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("linger.ms"), Some("20"));
        assert!(weakened_guarantee("acks", "-1").is_none());
        assert!(weakened_guarantee("request.required.acks", "1").is_some());
        assert!(weakened_guarantee("max.in.flight", "6").is_some());
        assert!(weakened_guarantee("max.in.flight", "five").is_some());
        assert!(weakened_guarantee("enable.idempotence", "TRUE").is_none());
    }

    use rdkafka::mocking::MockCluster;

    const TOPIC: &str = "records";

    fn producer(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    ) -> DeliveryProducer {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set("message.max.bytes", "100000");
        DeliveryProducer::from_config_and_context(&config, ReachabilityContext::default())
            .expect("producer")
    }

    /// Records sent concurrently (mock cluster) are each acknowledged, and arrive whole under
    /// their keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_sent_arrive_whole_under_their_keys() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(TOPIC, 3, 1).expect("topic");
        let producer = producer(&cluster);
        let payloads: Vec<Bytes> = (0..200u32)
            .map(|i| {
                Bytes::from(
                    format!(
                        "{{\"record\":{i},\"pad\":\"{}\"}}",
                        "x".repeat(i as usize * 37)
                    )
                    .into_bytes(),
                )
            })
            .collect();
        let sends = payloads.iter().enumerate().map(|(i, payload)| {
            let key = format!("stream-{}", i % 7);
            let producer = producer.clone();
            let payload = payload.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(TOPIC)
                            .key(key.as_bytes())
                            .payload(&payload[..]),
                        Duration::from_secs(5),
                    )
                    .await
            }
        });
        for outcome in futures::future::join_all(sends).await {
            outcome.expect("acknowledged");
        }
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "records")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[TOPIC]).expect("subscribe");
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while received.len() < payloads.len() && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.expect("message");
                let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
                received.push((key, message.payload().unwrap().to_vec()));
            }
        }
        received.sort_by_key(|(_, payload)| payload.len());
        let expected: Vec<(String, Vec<u8>)> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("stream-{}", i % 7), p.to_vec()))
            .collect();
        assert_eq!(received, expected);
    }

    /// A message librdkafka refuses at once (larger than `message.max.bytes`) comes back with
    /// the error instead of waiting for a delivery report that never comes.
    #[tokio::test]
    async fn a_record_refused_at_once_comes_back_with_the_error() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(TOPIC, 1, 1).expect("topic");
        let producer = producer(&cluster);
        let too_large = vec![b'x'; 200_000];
        let outcome = producer
            .send(
                FutureRecord::to(TOPIC)
                    .key("stream")
                    .payload(&too_large[..]),
                Duration::from_secs(5),
            )
            .await;
        assert!(
            matches!(
                outcome,
                Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge
                ))
            ),
            "{outcome:?}"
        );
    }
}
