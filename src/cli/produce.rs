//! `specflow produce`: a load generator that streams audio into the input topic as N
//! concurrent streams, with every header set, at real-time pace or as fast as possible.

use anyhow::Context as _;
use futures::future::join_all;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rdkafka::producer::FutureRecord;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::info;

use specflow::audio::SampleFormat;
use specflow::audio::headers::{ChunkHeaders, capture_time_ms};
use specflow::audio::wav::read_wav;
use specflow::clock::unix_ms;
use specflow::config::Settings;
use specflow::kafka::producer::{
    Delivery, DeliveryOutcome, DeliveryProducer, owned_headers, producer_config,
};
use specflow::kafka::reachability::ReachabilityContext;
use specflow::kafka::topics::{LISTED_WAIT, await_listed};
use specflow::sinks::kafka::QUEUE_TIMEOUT;

/// What audio to send.
#[derive(Debug, Clone)]
pub enum Signal {
    /// A WAV file (sent as 16-bit PCM with its own rate and channels, looped to `duration`).
    Wav(PathBuf),
    /// A sine tone at this frequency (Hz), amplitude 0.5.
    Tone(f64),
    /// White noise, amplitude 0.5.
    Noise,
}

/// Load-generator parameters.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Audio source.
    pub signal: Signal,
    /// Concurrent streams.
    pub streams: usize,
    /// Stream ids are `<prefix><n>`.
    pub stream_prefix: String,
    /// Duration of each chunk in milliseconds.
    pub chunk_ms: u64,
    /// Seconds of audio per stream (`None`: the WAV's length, or 10 s for synthetic signals).
    pub duration_secs: Option<f64>,
    /// Sample rate for synthetic signals.
    pub sample_rate: u32,
    /// Pace chunks at wall-clock speed.
    pub realtime: bool,
    /// With `realtime`: send every stream's chunk at the same instant (the worst-case burst)
    /// instead of spreading the streams' chunk boundaries evenly over one chunk period, as
    /// independent sources are.
    pub aligned: bool,
    /// Mark each stream's last chunk with `audio.eos=1`.
    pub eos: bool,
    /// Topic to send to (default: `source.topic`).
    pub topic: Option<String>,
}

/// What was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceSummary {
    /// Messages acknowledged.
    pub messages: u64,
    /// Payload bytes acknowledged.
    pub bytes: u64,
}

impl ProduceSummary {
    /// Counts one acknowledged message of `bytes` payload bytes.
    fn count(&mut self, bytes: u64) {
        self.messages += 1;
        self.bytes += bytes;
    }
}

/// Interleaved 16-bit PCM of one stream plus its format.
pub(super) struct Pcm {
    sample_rate: u32,
    channels: u16,
    pub(super) samples: Vec<i16>,
}

pub(super) fn synthesize(
    signal: &Signal,
    sample_rate: u32,
    seconds: f64,
    seed: u64,
) -> anyhow::Result<Pcm> {
    let n = (seconds * f64::from(sample_rate)).round() as usize;
    Ok(match signal {
        Signal::Wav(path) => {
            let audio = read_wav(path)?;
            let per_stream = (seconds * f64::from(audio.sample_rate)).round() as usize
                * usize::from(audio.channels);
            let samples = audio
                .pcm_s16
                .iter()
                .copied()
                .cycle()
                .take(per_stream)
                .collect();
            Pcm {
                sample_rate: audio.sample_rate,
                channels: audio.channels,
                samples,
            }
        }
        Signal::Tone(hz) => Pcm {
            sample_rate,
            channels: 1,
            samples: (0..n)
                .map(|i| {
                    ((2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(sample_rate)).sin()
                        * 16_384.0) as i16
                })
                .collect(),
        },
        Signal::Noise => {
            // Each stream its own reproducible noise, uniform over half the 16-bit range.
            let mut rng = StdRng::seed_from_u64(seed);
            Pcm {
                sample_rate,
                channels: 1,
                samples: (0..n).map(|_| rng.random_range(-16_384..16_384)).collect(),
            }
        }
    })
}

/// Sends the streams and waits for every acknowledgement.
pub async fn produce(
    settings: &Settings,
    options: &ProduceOptions,
) -> anyhow::Result<ProduceSummary> {
    // A real-time source sends each chunk as it is captured; a bulk load batches.
    let linger_ms = if options.realtime { "0" } else { "5" };
    let config = producer_config(&settings.kafka, &[("linger.ms", linger_ms.to_string())])?;
    let producer: DeliveryProducer =
        settings
            .kafka
            .create_with_context("producer", &config, ReachabilityContext::default())?;
    let topic = options
        .topic
        .clone()
        .unwrap_or_else(|| settings.source.topic.clone());
    // A topic created a moment ago (or a broker that has just started) may not be listed yet.
    await_listed(producer.client(), &[(&topic, None)], LISTED_WAIT)
        .await
        .with_context(|| format!("topic {topic} is not available"))?;
    let default_secs = match options.signal {
        Signal::Wav(ref path) => {
            let audio = read_wav(path)?;
            audio.samples.len() as f64 / f64::from(audio.sample_rate)
        }
        _ => 10.0,
    };
    let seconds = options.duration_secs.unwrap_or(default_secs);
    let pcm: Vec<Pcm> = (0..options.streams)
        .map(|i| synthesize(&options.signal, options.sample_rate, seconds, i as u64 + 1))
        .collect::<anyhow::Result<_>>()?;
    let Some(first) = pcm.first() else {
        return Ok(ProduceSummary {
            messages: 0,
            bytes: 0,
        });
    };
    let frames_per_chunk =
        ((u64::from(first.sample_rate) * options.chunk_ms) / 1000).max(1) as usize;
    let chunks = first
        .samples
        .len()
        .div_ceil(frames_per_chunk * usize::from(first.channels));
    info!(streams = options.streams, chunks, chunk_ms = options.chunk_ms, %topic, "Producing.");
    let started = Instant::now();
    // Capture time of each stream's first sample. Without `realtime` the audio is sent faster
    // than it plays, so each chunk is stamped start + start_sample / sample_rate (its capture
    // time), not the time it was sent.
    let stream_start_ms = unix_ms();
    let mut summary = ProduceSummary {
        messages: 0,
        bytes: 0,
    };
    // Acknowledgements of the round before, awaited after the next round is sent (real time
    // only: each chunk goes out at its own instant, never held back by an acknowledgement).
    let mut unacknowledged: Vec<(Delivery, u64)> = Vec::new();
    let streams = pcm.len() as u64;
    for chunk in 0..chunks {
        let round_due = started + Duration::from_millis(chunk as u64 * options.chunk_ms);
        let mut bulk = Vec::new();
        let mut acknowledgements = Vec::new();
        for (stream, audio) in pcm.iter().enumerate() {
            let per_chunk = frames_per_chunk * usize::from(audio.channels);
            let begin = chunk * per_chunk;
            if begin >= audio.samples.len() {
                continue;
            }
            if options.realtime {
                // Stream s's chunk boundaries lag the round's by s/streams of a chunk.
                let phase = if options.aligned {
                    Duration::ZERO
                } else {
                    Duration::from_micros(options.chunk_ms * 1000 * stream as u64 / streams)
                };
                tokio::time::sleep_until((round_due + phase).into()).await;
            }
            let end = (begin + per_chunk).min(audio.samples.len());
            let payload: Vec<u8> = audio.samples[begin..end]
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect();
            let last = end == audio.samples.len();
            let start_sample = (chunk * frames_per_chunk) as u64;
            let timestamp = if options.realtime {
                unix_ms()
            } else {
                capture_time_ms(stream_start_ms, 0, start_sample, audio.sample_rate)
            };
            let headers = ChunkHeaders::pcm(
                SampleFormat::S16le,
                audio.sample_rate,
                audio.channels,
                start_sample,
            )
            .with_timestamp_ms(timestamp)
            .with_eos(last && options.eos);
            let key = format!("{}{stream}", options.stream_prefix);
            let header_pairs = headers.to_pairs();
            if !options.realtime {
                bulk.push((key, payload, header_pairs));
                continue;
            }
            let bytes = payload.len() as u64;
            match producer.enqueue(chunk_record(&topic, &key, &payload, &header_pairs)) {
                Ok(delivery) => acknowledgements.push((delivery, bytes)),
                // The producer's queue is full: wait for room (rare at real-time rates).
                Err(_) => {
                    producer
                        .send(
                            chunk_record(&topic, &key, &payload, &header_pairs),
                            QUEUE_TIMEOUT,
                        )
                        .await
                        .context("delivery failed")?;
                    summary.count(bytes);
                }
            }
        }
        let sends = bulk.iter().map(|(key, payload, pairs)| {
            producer.send(chunk_record(&topic, key, payload, pairs), QUEUE_TIMEOUT)
        });
        for (result, (_, payload, _)) in join_all(sends).await.into_iter().zip(&bulk) {
            result.context("delivery failed")?;
            summary.count(payload.len() as u64);
        }
        for (delivery, bytes) in std::mem::replace(&mut unacknowledged, acknowledgements) {
            acknowledge(delivery.acknowledged().await, bytes, &mut summary)?;
        }
    }
    for (delivery, bytes) in unacknowledged {
        acknowledge(delivery.acknowledged().await, bytes, &mut summary)?;
    }
    info!(
        messages = summary.messages,
        bytes = summary.bytes,
        seconds = started.elapsed().as_secs_f64(),
        "Produced."
    );
    Ok(summary)
}

/// Counts one real-time send once its acknowledgement arrived.
fn acknowledge(
    delivery: DeliveryOutcome,
    bytes: u64,
    summary: &mut ProduceSummary,
) -> anyhow::Result<()> {
    delivery.context("delivery failed")?;
    summary.count(bytes);
    Ok(())
}

/// One chunk as a record for `topic`.
fn chunk_record<'a>(
    topic: &'a str,
    key: &'a str,
    payload: &'a [u8],
    header_pairs: &[(&str, String)],
) -> FutureRecord<'a, str, [u8]> {
    FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(owned_headers(header_pairs))
}
