//! Ingest: a request body becomes the worker's own input messages.
//!
//! Every chunk is checked by the worker's decoder ([`crate::audio::decode`]) before anything is
//! produced, so a body the worker would dead-letter is refused with `400` and the decoder's
//! reason; its headers are written by [`ChunkHeaders`], the one encoding of the wire format.
//! A body larger than `gateway.max_chunk_bytes` is split on sample-frame boundaries, in order,
//! with `audio.start_sample` advancing. The answer waits for the broker's acknowledgement of
//! every chunk (`acks=all`, idempotent producer).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Shared;
use super::error::ApiError;
use crate::audio::headers::{self as wire, ChunkHeaders};
use crate::audio::{ChunkMeta, InputConfig, SampleFormat, decode, decode_stream_id};
use crate::config::Settings;
use crate::kafka::BuildError;
use crate::kafka::producer::{Delivery, DeliveryProducer, owned_headers, producer_config};
use crate::kafka::reachability::{BrokerState, ReachabilityContext, STATISTICS_INTERVAL_MS};

/// The gateway's producer to `source.topic`: idempotent, `acks=all`, bounded queue.
pub struct ChunkProducer {
    producer: DeliveryProducer,
    topic: String,
    broker: Arc<BrokerState>,
    retry_after_secs: u64,
    delivery_timeout: Duration,
}

/// Where one acknowledged chunk went: its partition of `source.topic` and offset.
pub use crate::kafka::producer::Stored as Delivered;

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

    /// Waits for one chunk's acknowledgement.
    pub async fn acknowledged(&self, delivery: Delivery) -> Result<Delivered, ApiError> {
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

/// How a body's PCM is laid out, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmLayout {
    /// Sample encoding.
    pub format: SampleFormat,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u16,
}

impl PcmLayout {
    /// Bytes of one interleaved sample frame.
    pub fn frame_bytes(&self) -> usize {
        self.format.bytes_per_sample() * usize::from(self.channels)
    }
}

/// One validated chunk of a body: its byte range and its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChunk {
    /// Bytes of the PCM body.
    pub range: Range<usize>,
    /// The headers it is produced with.
    pub headers: ChunkHeaders,
}

/// Where a body sits in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPlace {
    /// Index (per channel) of the body's first sample.
    pub start_sample: u64,
    /// Capture time of that sample, Unix milliseconds.
    pub timestamp_ms: i64,
    /// The body ends the stream.
    pub eos: bool,
}

/// Splits `pcm` (placed at `place`) into chunks of at most `max_chunk_bytes`, on sample-frame
/// boundaries, and checks each with the worker's decoder. `place.eos` marks the last chunk (an
/// empty body with it is one empty end-of-stream chunk).
pub fn plan_chunks(
    input: &InputConfig,
    stream_id: &str,
    layout: PcmLayout,
    pcm: &[u8],
    place: BodyPlace,
    max_chunk_bytes: usize,
) -> Result<Vec<PlannedChunk>, ApiError> {
    let BodyPlace {
        start_sample,
        timestamp_ms,
        eos,
    } = place;
    let frame_bytes = layout.frame_bytes();
    let frames = (pcm.len() / frame_bytes) as u64;
    let span_ms =
        i64::try_from(frames * 1000 / u64::from(layout.sample_rate.max(1))).unwrap_or(i64::MAX);
    if start_sample.checked_add(frames).is_none() || timestamp_ms.checked_add(span_ms).is_none() {
        return Err(ApiError::bad_request(
            "bad_parameter",
            format!(
                "start_sample ({start_sample}) or timestamp_ms ({timestamp_ms}) is too large for {frames} more samples"
            ),
        ));
    }
    let per_chunk = (max_chunk_bytes / frame_bytes).max(1) * frame_bytes;
    let mut ranges: Vec<Range<usize>> = (0..pcm.len())
        .step_by(per_chunk)
        .map(|start| start..(start + per_chunk).min(pcm.len()))
        .collect();
    if ranges.is_empty() {
        ranges.push(0..0);
    }
    let mut scratch = Vec::new();
    let last = ranges.len() - 1;
    let mut chunks = Vec::with_capacity(ranges.len());
    for (i, range) in ranges.into_iter().enumerate() {
        let offset = (range.start / frame_bytes) as u64;
        let headers = ChunkHeaders::pcm(
            layout.format,
            layout.sample_rate,
            layout.channels,
            start_sample + offset,
        )
        .with_timestamp_ms(
            timestamp_ms + (offset as i128 * 1000 / i128::from(layout.sample_rate)) as i64,
        )
        .with_eos(eos && i == last);
        let pairs = headers.to_pairs();
        decode(
            input,
            Some(stream_id.as_bytes()),
            Some(&pcm[range.clone()]),
            pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes()))),
            None,
            &mut scratch,
        )
        .map_err(|e| {
            shift_sample_index(e, (range.start / layout.format.bytes_per_sample()) as u64)
        })?;
        chunks.push(PlannedChunk { range, headers });
    }
    Ok(chunks)
}

/// A non-finite sample's index counted from the body's start, not the chunk's.
fn shift_sample_index(error: crate::audio::DecodeError, by: u64) -> ApiError {
    match error {
        crate::audio::DecodeError::NonFiniteSample { index, value } => {
            crate::audio::DecodeError::NonFiniteSample {
                index: index + by as usize,
                value,
            }
            .into()
        }
        other => other.into(),
    }
}

/// Produces planned chunks in order and waits for every acknowledgement.
pub async fn produce_chunks(
    producer: &ChunkProducer,
    stream_id: &str,
    pcm: &[u8],
    chunks: &[PlannedChunk],
) -> Result<Vec<Delivered>, ApiError> {
    producer.check_reachable()?;
    let mut deliveries = Vec::with_capacity(chunks.len());
    let deadline = Instant::now() + producer.delivery_timeout;
    for chunk in chunks {
        let delivery = loop {
            match producer.enqueue(stream_id, &pcm[chunk.range.clone()], &chunk.headers)? {
                Some(delivery) => break delivery,
                // Nothing queued yet: refuse at once, so that a 429 produced nothing.
                None if deliveries.is_empty() => return Err(producer.queue_full()),
                // Part of the body is queued: wait for room (the queue drains as the broker
                // acknowledges) rather than answer 429 for a body half produced.
                None if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None => {
                    for delivery in deliveries {
                        let _ = producer.acknowledged(delivery).await;
                    }
                    return Err(producer.queue_full());
                }
            }
        };
        deliveries.push(delivery);
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

/// Query parameters of `POST /v1/streams/{id}/chunks` (each may also come as a header:
/// `Audio-Format`, `Audio-Sample-Rate`, `Audio-Channels`, `Audio-Start-Sample`,
/// `Audio-Timestamp-Ms`, `Audio-Eos`).
#[derive(Debug, Default, Deserialize)]
pub struct ChunkQuery {
    format: Option<String>,
    sample_rate: Option<String>,
    channels: Option<String>,
    start_sample: Option<String>,
    timestamp_ms: Option<String>,
    eos: Option<String>,
}

/// The `202` answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accepted {
    /// The stream.
    pub stream_id: String,
    /// The body's first sample (per channel) within the stream.
    pub start_sample: u64,
    /// Samples (per channel) accepted.
    pub samples: u64,
    /// Partition of `source.topic`.
    pub partition: i32,
    /// Offset of the last chunk produced.
    pub offset: i64,
    /// Offset of the first chunk produced.
    pub first_offset: i64,
    /// Chunks the body was produced as.
    pub chunks: usize,
}

/// How the body is encoded, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Raw interleaved PCM described by parameters.
    RawPcm,
    /// A WAV file.
    Wav,
}

/// The body kind of a `Content-Type`, or `415`.
pub fn body_kind(content_type: Option<&str>) -> Result<BodyKind, ApiError> {
    let Some(content_type) = content_type else {
        return Ok(BodyKind::RawPcm);
    };
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "" | "application/octet-stream" | "audio/pcm" => Ok(BodyKind::RawPcm),
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Ok(BodyKind::Wav),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {content_type:?} is not supported; send application/octet-stream (raw PCM) or audio/wav"
            ),
        )),
    }
}

/// A WAV body's PCM as the wire carries it: 16-bit as `s16le`, 24- and 32-bit integers as
/// `s32le`, 8-bit as `s16le`, 32-bit float as `f32le`.
pub fn wav_pcm(body: &[u8]) -> Result<(PcmLayout, Bytes), ApiError> {
    let bad = |why: String| ApiError::bad_request("bad_wav", why);
    let mut reader = hound::WavReader::new(Cursor::new(body))
        .map_err(|e| bad(format!("not a readable WAV file: {e}")))?;
    let spec = reader.spec();
    let truncated = |e: hound::Error| bad(format!("the WAV data cannot be read: {e}"));
    // hound reads each sample from its container, whatever its width (24-bit samples in
    // 4-byte slots included).
    let (format, pcm): (SampleFormat, Vec<u8>) = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 1..=16) => {
            let shift = 16 - u32::from(spec.bits_per_sample);
            let mut pcm = Vec::with_capacity(reader.len() as usize * 2);
            for sample in reader.samples::<i32>() {
                pcm.extend_from_slice(
                    &((sample.map_err(truncated)? << shift) as i16).to_le_bytes(),
                );
            }
            (SampleFormat::S16le, pcm)
        }
        (hound::SampleFormat::Int, 17..=32) => {
            let shift = 32 - u32::from(spec.bits_per_sample);
            let mut pcm = Vec::with_capacity(reader.len() as usize * 4);
            for sample in reader.samples::<i32>() {
                pcm.extend_from_slice(&(sample.map_err(truncated)? << shift).to_le_bytes());
            }
            (SampleFormat::S32le, pcm)
        }
        (hound::SampleFormat::Float, 32) => {
            let mut pcm = Vec::with_capacity(reader.len() as usize * 4);
            for sample in reader.samples::<f32>() {
                pcm.extend_from_slice(&sample.map_err(truncated)?.to_le_bytes());
            }
            (SampleFormat::F32le, pcm)
        }
        (kind, bits) => {
            return Err(bad(format!(
                "WAV samples of {bits}-bit {kind:?} are not supported (integer up to 32 bits or 32-bit float)"
            )));
        }
    };
    Ok((
        PcmLayout {
            format,
            sample_rate: spec.sample_rate,
            channels: spec.channels,
        },
        Bytes::from(pcm),
    ))
}

/// A parameter from the query, else the HTTP header `header_name` (`Audio-Format`, …), else
/// the wire header itself (`audio.format`, …).
fn param<'a>(
    query: &'a Option<String>,
    headers: &'a HeaderMap,
    header_name: &str,
) -> Option<&'a str> {
    let wire_name = header_name
        .replacen("audio-", "audio.", 1)
        .replace('-', "_");
    query.as_deref().or_else(|| {
        [header_name, wire_name.as_str()]
            .into_iter()
            .find_map(|name| headers.get(name).and_then(|v| v.to_str().ok()))
    })
}

/// How much of a refused body the gateway still reads and throws away, and for how long.
///
/// A server that closes a socket with unread bytes in it makes the kernel answer with a reset,
/// which can destroy the `413` on its way to a client that is still sending; reading the rest
/// (within these bounds) lets the client see the answer and keeps the connection usable.
const REFUSED_BODY_DRAIN_BYTES: u64 = 16 * 1024 * 1024;
const REFUSED_BODY_DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads the body, refusing one above `max` bytes with `413`.
pub async fn read_body(headers: &HeaderMap, mut body: Body, max: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than gateway.max_body_bytes ({max})"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        // A client waiting for `100 Continue` has sent nothing yet, and reading would ask it to.
        let waits_to_send = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits_to_send {
            discard_refused_body(body).await;
        }
        return Err(too_large());
    }
    match http_body_util::Limited::new(&mut body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            discard_refused_body(body).await;
            Err(too_large())
        }
        Err(e) => Err(ApiError::bad_request(
            "body_unreadable",
            format!("cannot read the body: {e}"),
        )),
    }
}

/// Reads and drops what is left of a refused body, within [`REFUSED_BODY_DRAIN_BYTES`] and
/// [`REFUSED_BODY_DRAIN_TIME`].
async fn discard_refused_body(mut body: Body) {
    let mut budget = REFUSED_BODY_DRAIN_BYTES;
    let drain = async {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |data| data.len() as u64);
            budget = budget.saturating_sub(len);
            if budget == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_BODY_DRAIN_TIME, drain).await;
}

/// The current time, Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The layout a raw body's parameters describe (defaults from `[input]`), checked by the
/// decoder on an empty end-of-stream chunk so that its errors name the header.
pub fn raw_layout(
    input: &InputConfig,
    stream_id: &str,
    format: Option<&str>,
    sample_rate: Option<&str>,
    channels: Option<&str>,
) -> Result<PcmLayout, ApiError> {
    let pairs = [
        (wire::FORMAT, format),
        (wire::SAMPLE_RATE, sample_rate),
        (wire::CHANNELS, channels),
        (wire::EOS, Some("1")),
    ];
    let meta: ChunkMeta = decode(
        input,
        Some(stream_id.as_bytes()),
        Some(&[]),
        pairs
            .iter()
            .filter_map(|(k, v)| v.map(|v| (*k, Some(v.as_bytes())))),
        None,
        &mut Vec::new(),
    )?;
    Ok(PcmLayout {
        format: meta.format,
        sample_rate: meta.sample_rate,
        channels: meta.channels,
    })
}

fn parse_u64(name: &'static str, text: &str) -> Result<u64, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "bad_parameter",
            format!("{name} = {text:?}: not a non-negative integer"),
        )
    })
}

/// `POST /v1/streams/{stream_id}/chunks`.
pub(super) async fn post_chunks(
    State(gateway): State<Shared>,
    Path(stream_id): Path<String>,
    Query(query): Query<ChunkQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let settings = &gateway.settings;
    decode_stream_id(Some(stream_id.as_bytes()))?;
    let kind = body_kind(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )?;
    let start_sample = param(&query.start_sample, &headers, "audio-start-sample")
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_start_sample",
                "start_sample is required (query ?start_sample= or header Audio-Start-Sample): \
                 it makes a retried request safe",
            )
        })
        .and_then(|text| parse_u64("start_sample", text))?;
    let timestamp_ms = match param(&query.timestamp_ms, &headers, "audio-timestamp-ms") {
        Some(text) => i64::try_from(parse_u64("timestamp_ms", text)?).map_err(|_| {
            ApiError::bad_request(
                "bad_parameter",
                format!("timestamp_ms = {text:?}: too large"),
            )
        })?,
        None => now_ms(),
    };
    let eos = match param(&query.eos, &headers, "audio-eos").map(str::trim) {
        None | Some("0" | "false" | "") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_parameter",
                format!("eos = {other:?}: expected 1 or 0"),
            ));
        }
    };
    let body = read_body(&headers, body, settings.gateway.max_body_bytes).await?;
    let described = raw_layout(
        &settings.input,
        &stream_id,
        param(&query.format, &headers, "audio-format"),
        param(&query.sample_rate, &headers, "audio-sample-rate"),
        param(&query.channels, &headers, "audio-channels"),
    )?;
    let (layout, pcm) = match kind {
        BodyKind::RawPcm => (described, body),
        BodyKind::Wav => wav_pcm(&body)?,
    };
    let chunks = plan_chunks(
        &settings.input,
        &stream_id,
        layout,
        &pcm,
        BodyPlace {
            start_sample,
            timestamp_ms,
            eos,
        },
        settings.gateway.chunk_bytes(&settings.input),
    )?;
    let started = Instant::now();
    let delivered = produce_chunks(&gateway.producer, &stream_id, &pcm, &chunks).await?;
    gateway
        .metrics
        .broker_ack_seconds
        .observe(started.elapsed().as_secs_f64());
    gateway
        .metrics
        .chunks_produced_total
        .inc_by(chunks.len() as u64);
    gateway
        .metrics
        .bytes_accepted_total
        .inc_by(pcm.len() as u64);
    let first = delivered.first().copied().unwrap_or(Delivered {
        partition: -1,
        offset: -1,
    });
    let last = delivered.last().copied().unwrap_or(first);
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            stream_id,
            start_sample,
            samples: (pcm.len() / layout.frame_bytes()) as u64,
            partition: last.partition,
            offset: last.offset,
            first_offset: first.offset,
            chunks: chunks.len(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start_sample: u64, timestamp_ms: i64, eos: bool) -> BodyPlace {
        BodyPlace {
            start_sample,
            timestamp_ms,
            eos,
        }
    }

    const S16_MONO: PcmLayout = PcmLayout {
        format: SampleFormat::S16le,
        sample_rate: 16_000,
        channels: 1,
    };

    #[test]
    fn a_large_body_is_split_on_frame_boundaries_with_start_sample_advancing() {
        let pcm = vec![0u8; 10_000];
        let chunks = plan_chunks(
            &InputConfig::default(),
            "s",
            S16_MONO,
            &pcm,
            at(1_000, 5_000, true),
            3_001,
        )
        .unwrap();
        let ranges: Vec<_> = chunks.iter().map(|c| c.range.clone()).collect();
        assert_eq!(ranges, [0..3000, 3000..6000, 6000..9000, 9000..10_000]);
        let starts: Vec<_> = chunks.iter().map(|c| c.headers.start_sample).collect();
        assert_eq!(starts, [Some(1000), Some(2500), Some(4000), Some(5500)]);
        let stamps: Vec<_> = chunks.iter().map(|c| c.headers.timestamp_ms).collect();
        assert_eq!(stamps, [Some(5000), Some(5093), Some(5187), Some(5281)]);
        let eos: Vec<_> = chunks.iter().map(|c| c.headers.eos).collect();
        assert_eq!(eos, [false, false, false, true]);
    }

    #[test]
    fn the_decoder_refuses_what_the_worker_would_dead_letter() {
        let input = InputConfig::default();
        let ragged =
            plan_chunks(&input, "s", S16_MONO, &[0u8; 7], at(0, 0, false), 4096).unwrap_err();
        assert_eq!(ragged.reason, "ragged_payload");
        let empty = plan_chunks(&input, "s", S16_MONO, &[], at(0, 0, false), 4096).unwrap_err();
        assert_eq!(empty.reason, "empty_payload");
        let eos_only = plan_chunks(&input, "s", S16_MONO, &[], at(7, 0, true), 4096).unwrap();
        assert_eq!(eos_only.len(), 1);
        assert!(eos_only[0].headers.eos);
        let f32_layout = PcmLayout {
            format: SampleFormat::F32le,
            ..S16_MONO
        };
        let mut pcm: Vec<u8> = (0..2000).flat_map(|_| 0.5f32.to_le_bytes()).collect();
        pcm[1500 * 4..1501 * 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let nan = plan_chunks(&input, "s", f32_layout, &pcm, at(0, 0, false), 4096).unwrap_err();
        assert_eq!(nan.reason, "non_finite_sample");
        assert!(nan.message.contains("sample 1500"), "{}", nan.message);
        let unknown = raw_layout(&input, "s", Some("u8"), None, None).unwrap_err();
        assert_eq!(unknown.reason, "bad_header");
        assert!(
            unknown.message.contains("audio.format"),
            "{}",
            unknown.message
        );
    }

    #[test]
    fn parameters_come_from_the_query_or_either_header_name() {
        let mut headers = HeaderMap::new();
        headers.insert("audio.sample_rate", "8000".parse().unwrap());
        headers.insert("audio-channels", "2".parse().unwrap());
        assert_eq!(param(&None, &headers, "audio-sample-rate"), Some("8000"));
        assert_eq!(param(&None, &headers, "audio-channels"), Some("2"));
        assert_eq!(
            param(&Some("4".into()), &headers, "audio-channels"),
            Some("4")
        );
        assert_eq!(param(&None, &headers, "audio-format"), None);
    }

    #[test]
    fn chunks_never_exceed_what_the_worker_accepts() {
        let gateway = crate::gateway::GatewayConfig::default();
        let input = InputConfig {
            max_message_bytes: 4_000,
            ..InputConfig::default()
        };
        assert_eq!(gateway.chunk_bytes(&input), 4_000);
        assert_eq!(
            gateway.chunk_bytes(&InputConfig::default()),
            gateway.max_chunk_bytes
        );
    }

    #[test]
    fn content_types_pick_the_body_kind_or_415() {
        assert_eq!(body_kind(None).unwrap(), BodyKind::RawPcm);
        assert_eq!(
            body_kind(Some("application/octet-stream")).unwrap(),
            BodyKind::RawPcm
        );
        assert_eq!(
            body_kind(Some("audio/wav; codec=1")).unwrap(),
            BodyKind::Wav
        );
        assert_eq!(
            body_kind(Some("application/json")).unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn wav_bodies_keep_their_samples() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 22_050,
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
        };
        let mut file = Cursor::new(Vec::new());
        {
            let mut writer = hound::WavWriter::new(&mut file, spec).unwrap();
            for s in [1, -1, 8_388_607, -8_388_608] {
                writer.write_sample(s).unwrap();
            }
            writer.finalize().unwrap();
        }
        let (layout, pcm) = wav_pcm(file.get_ref()).unwrap();
        assert_eq!(
            layout,
            PcmLayout {
                format: SampleFormat::S32le,
                sample_rate: 22_050,
                channels: 2
            }
        );
        let values: Vec<i32> = pcm
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(values, [256, -256, 8_388_607 << 8, -8_388_608 << 8]);
        assert_eq!(wav_pcm(b"RIFF....").unwrap_err().reason, "bad_wav");
    }
}
