//! The gateway's producer to `source.topic`: idempotent, `acks=all`, a bounded queue, and the
//! answers (`429`, `503`) its failures become. [`produce_chunks`] produces a request's planned
//! chunks in order and waits for every acknowledgement.

use axum::http::StatusCode;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::chunks::PlannedChunk;
use super::error::ApiError;
use crate::audio::headers::ChunkHeaders;
use crate::config::Settings;
use crate::kafka::BuildError;
use crate::kafka::producer::{Delivery, DeliveryProducer, Stored, owned_headers, producer_config};
use crate::kafka::reachability::{BrokerState, ReachabilityContext, STATISTICS_INTERVAL_MS};

/// How often a chunk waiting for room in a full producer queue tries again.
const QUEUE_FULL_POLL: Duration = Duration::from_millis(5);

/// The gateway's producer to `source.topic`: idempotent, `acks=all`, bounded queue.
pub struct ChunkProducer {
    producer: DeliveryProducer,
    topic: String,
    broker: Arc<BrokerState>,
    retry_after_secs: u64,
    delivery_timeout: Duration,
}

impl ChunkProducer {
    /// Builds the producer from `[kafka]` and `[gateway]`.
    pub fn build(settings: &Settings) -> Result<Self, BuildError> {
        let gateway = &settings.gateway;
        let config = producer_config(
            &settings.kafka,
            &[
                ("linger.ms", gateway.linger_ms.to_string()),
                (
                    "message.timeout.ms",
                    gateway.delivery_timeout_ms.to_string(),
                ),
                (
                    "queue.buffering.max.kbytes",
                    gateway.queue_max_kbytes.to_string(),
                ),
                ("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string()),
                (
                    "message.max.bytes",
                    (gateway.max_chunk_bytes + 64 * 1024)
                        .max(1_000_000)
                        .to_string(),
                ),
            ],
        )?;
        let context = ReachabilityContext::default();
        let broker = context.state();
        let producer = settings
            .kafka
            .create_with_context("producer", &config, context)?;
        Ok(Self {
            producer,
            topic: settings.source.topic.clone(),
            broker,
            retry_after_secs: gateway.retry_after_secs,
            delivery_timeout: Duration::from_millis(gateway.delivery_timeout_ms),
        })
    }

    /// Whether the broker is known to answer.
    pub fn broker_up(&self) -> bool {
        self.broker.known_up()
    }

    /// Waits (up to 10 s, off the async threads) for everything queued to be delivered.
    pub async fn flush(&self) {
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    }

    /// `503` when the broker is known to be unreachable.
    pub fn check_reachable(&self) -> Result<(), ApiError> {
        if self.broker.known_down() {
            return Err(self.unavailable("the Kafka broker is unreachable; nothing was produced"));
        }
        Ok(())
    }

    fn unavailable(&self, message: impl Into<String>) -> ApiError {
        ApiError::retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            message,
            self.retry_after_secs,
        )
    }

    /// Queues one chunk; `Ok(None)` when the producer queue is full (nothing queued).
    pub fn enqueue(
        &self,
        stream_id: &str,
        payload: &[u8],
        headers: &ChunkHeaders,
    ) -> Result<Option<Delivery>, ApiError> {
        let record = FutureRecord::to(&self.topic)
            .key(stream_id.as_bytes())
            .payload(payload)
            .headers(owned_headers(&headers.to_pairs()));
        match self.producer.enqueue(record) {
            Ok(delivery) => Ok(Some(delivery)),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => Ok(None),
            Err(e) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "produce_failed",
                format!("cannot queue the chunk for {}: {e}", self.topic),
            )),
        }
    }

    /// The deadline for queueing the chunks of one request or WebSocket message: the
    /// delivery timeout from now.
    pub fn queue_deadline(&self) -> Instant {
        Instant::now() + self.delivery_timeout
    }

    /// Queues one chunk, waiting while the producer queue is full (it drains as the broker
    /// acknowledges) until `deadline`; `Ok(None)` when it is still full then (nothing queued).
    pub async fn enqueue_before(
        &self,
        stream_id: &str,
        payload: &[u8],
        headers: &ChunkHeaders,
        deadline: Instant,
    ) -> Result<Option<Delivery>, ApiError> {
        loop {
            match self.enqueue(stream_id, payload, headers)? {
                Some(delivery) => return Ok(Some(delivery)),
                None if Instant::now() < deadline => tokio::time::sleep(QUEUE_FULL_POLL).await,
                None => return Ok(None),
            }
        }
    }

    /// Waits for one chunk's acknowledgement.
    pub async fn acknowledged(&self, delivery: Delivery) -> Result<Stored, ApiError> {
        match delivery.acknowledged().await {
            Ok(stored) => Ok(stored),
            Err(KafkaError::Canceled) => {
                Err(self.unavailable("the producer was closed before the acknowledgement"))
            }
            Err(e) => Err(self.unavailable(format!(
                "the broker did not acknowledge a chunk ({e}); retry with the same start_sample"
            ))),
        }
    }

    /// `429`: the producer queue is full.
    pub fn queue_full(&self) -> ApiError {
        ApiError::retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            "the gateway's producer queue is full (gateway.queue_max_kbytes); retry with the same start_sample",
            self.retry_after_secs,
        )
    }
}

/// Produces planned chunks in order and waits for every acknowledgement.
pub async fn produce_chunks(
    producer: &ChunkProducer,
    stream_id: &str,
    pcm: &[u8],
    chunks: &[PlannedChunk],
) -> Result<Vec<Stored>, ApiError> {
    producer.check_reachable()?;
    let mut deliveries = Vec::with_capacity(chunks.len());
    let deadline = producer.queue_deadline();
    for chunk in chunks {
        // Nothing queued yet: refuse at once, so that a 429 produced nothing. Part of the body
        // queued: wait for room rather than answer 429 for a body half produced.
        let wait_until = if deliveries.is_empty() {
            Instant::now()
        } else {
            deadline
        };
        let payload = &pcm[chunk.range.clone()];
        match producer
            .enqueue_before(stream_id, payload, &chunk.headers, wait_until)
            .await?
        {
            Some(delivery) => deliveries.push(delivery),
            None => {
                for delivery in deliveries {
                    let _ = producer.acknowledged(delivery).await;
                }
                return Err(producer.queue_full());
            }
        }
    }
    let mut delivered = Vec::with_capacity(deliveries.len());
    let mut failure = None;
    for delivery in deliveries {
        match producer.acknowledged(delivery).await {
            Ok(d) => delivered.push(d),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(delivered),
    }
}
