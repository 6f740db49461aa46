//! `specflow loadtest`: drives N concurrent streams through a running `specflow gateway` at
//! real-time pace, over HTTP POST or WebSocket, and reports the throughput and two delays:
//! - **accept**: from sending a chunk to the gateway's answer (`202` over HTTP; over a
//!   WebSocket, until a `durable_samples` acknowledgement covers the chunk);
//! - **record**: from sending a chunk to its feature record on the output topic (an observer
//!   consumes `output.topic`; every chunk is stamped `timestamp_ms` = its send time, which the
//!   record carries as `source.timestamp_ms`).

use anyhow::{Context as _, bail};
use futures::{SinkExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite;

use super::produce::{Signal, synthesize};
use specflow::clock::unix_ms;
use specflow::config::Settings;

/// `specflow loadtest` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// TOML config file (for [kafka] and output.topic, which the observer reads).
    #[arg(long, short, env = "SPECFLOW_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// The gateway's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub via: String,
    /// Concurrent streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Seconds of audio per stream (sent at real-time pace).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Chunk duration in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub chunk_ms: u64,
    /// Sample rate of the synthetic signal (white noise, 16-bit mono; a distinct seed per stream).
    #[arg(long, default_value_t = 16_000)]
    pub sample_rate: u32,
    /// Use one WebSocket per stream instead of one POST per chunk.
    #[arg(long)]
    pub ws: bool,
    /// Bearer token (when the gateway has gateway.tokens set).
    #[arg(long, env = "SPECFLOW_GATEWAY_TOKEN")]
    pub token: Option<String>,
    /// Stream id prefix (a run id is appended so that runs never share a stream).
    #[arg(long, default_value = "load-")]
    pub stream_prefix: String,
    /// Do not observe the output topic (report the accept delay only).
    #[arg(long)]
    pub no_records: bool,
    /// Seconds to keep observing the output topic after the last chunk.
    #[arg(long, default_value_t = 15)]
    pub drain_seconds: u64,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Percentiles of one delay, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// Of `values` (ms); `None` when empty.
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let at =
            |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
        Some(Self {
            n: values.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: values[values.len() - 1],
        })
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadtestReport {
    /// `http` or `ws`.
    pub transport: &'static str,
    /// Concurrent streams.
    pub streams: usize,
    /// Chunks sent.
    pub chunks_sent: usize,
    /// Chunks accepted.
    pub chunks_accepted: usize,
    /// Refusals, by status code (HTTP) or error reason (WebSocket).
    pub refused: HashMap<String, usize>,
    /// Wall time of the sending phase, seconds.
    pub send_seconds: f64,
    /// Accepted chunks per second.
    pub chunks_per_s: f64,
    /// Audio accepted, as a multiple of real time.
    pub audio_x_realtime: f64,
    /// Send → accepted.
    pub accept: Option<Percentiles>,
    /// Send → record on the output topic.
    pub record: Option<Percentiles>,
    /// Records seen on the output topic.
    pub records_seen: usize,
}

#[derive(Default)]
struct StreamOutcome {
    sent: usize,
    accepted: usize,
    refused: HashMap<String, usize>,
    accept_ms: Vec<f64>,
}

/// Runs the load test.
pub async fn loadtest(settings: Settings, args: LoadtestArgs) -> anyhow::Result<LoadtestReport> {
    let run = format!("{}{}-", args.stream_prefix, unix_ms() % 1_000_000_000);
    let base = args.via.trim_end_matches('/').to_owned();
    let samples_per_chunk = (u64::from(args.sample_rate) * args.chunk_ms / 1000).max(1) as usize;
    let observing = Arc::new(AtomicBool::new(true));
    let observer = if args.no_records {
        None
    } else {
        Some(spawn_observer(&settings, run.clone(), observing.clone()).await?)
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.streams)
        .map(|i| {
            let pcm = synthesize(&Signal::Noise, args.sample_rate, args.seconds, i as u64 + 1)
                .map(|p| p.samples);
            let stream_id = format!("{run}{i}");
            let base = base.clone();
            let args = args.clone();
            tokio::spawn(async move {
                let pcm = pcm?;
                // Spread the streams' chunk boundaries over one chunk period.
                let offset = Duration::from_millis(args.chunk_ms * i as u64 / args.streams as u64);
                tokio::time::sleep(offset).await;
                if args.ws {
                    ws_stream(&base, &stream_id, &pcm, samples_per_chunk, &args).await
                } else {
                    http_stream(&base, &stream_id, &pcm, samples_per_chunk, &args).await
                }
            })
        })
        .collect();
    let mut total = StreamOutcome::default();
    for task in tasks {
        let outcome = task.await.context("stream task")??;
        total.sent += outcome.sent;
        total.accepted += outcome.accepted;
        total.accept_ms.extend(outcome.accept_ms);
        for (k, v) in outcome.refused {
            *total.refused.entry(k).or_default() += v;
        }
    }
    let send_seconds = started.elapsed().as_secs_f64();
    let (record_ms, records_seen) = match observer {
        Some(handle) => {
            let expected = total.accepted;
            let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
            while Instant::now() < deadline && handle.seen() < expected {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            observing.store(false, Ordering::Relaxed);
            handle.finish().await
        }
        None => (Vec::new(), 0),
    };
    let accepted_seconds =
        total.accepted as f64 * samples_per_chunk as f64 / f64::from(args.sample_rate);
    Ok(LoadtestReport {
        transport: if args.ws { "ws" } else { "http" },
        streams: args.streams,
        chunks_sent: total.sent,
        chunks_accepted: total.accepted,
        refused: total.refused,
        send_seconds,
        chunks_per_s: total.accepted as f64 / send_seconds,
        audio_x_realtime: accepted_seconds / send_seconds,
        accept: Percentiles::of(total.accept_ms),
        record: Percentiles::of(record_ms),
        records_seen,
    })
}

fn s16_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

async fn http_stream(
    base: &str,
    stream_id: &str,
    pcm: &[i16],
    samples_per_chunk: usize,
    args: &LoadtestArgs,
) -> anyhow::Result<StreamOutcome> {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/streams/{stream_id}/chunks");
    let chunks: Vec<&[i16]> = pcm.chunks(samples_per_chunk).collect();
    let mut outcome = StreamOutcome::default();
    let start = tokio::time::Instant::now();
    for (k, chunk) in chunks.iter().enumerate() {
        tokio::time::sleep_until(start + Duration::from_millis(k as u64 * args.chunk_ms)).await;
        let eos = k + 1 == chunks.len();
        let mut request = client
            .post(&url)
            .query(&[
                ("format", "s16le".to_owned()),
                ("sample_rate", args.sample_rate.to_string()),
                ("channels", "1".to_owned()),
                ("start_sample", (k * samples_per_chunk).to_string()),
                ("timestamp_ms", unix_ms().to_string()),
                ("eos", u8::from(eos).to_string()),
            ])
            .header("content-type", "application/octet-stream")
            .body(s16_bytes(chunk));
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
        }
        let sent = Instant::now();
        outcome.sent += 1;
        match request.send().await {
            Ok(response) if response.status().as_u16() == 202 => {
                outcome.accepted += 1;
                outcome.accept_ms.push(sent.elapsed().as_secs_f64() * 1e3);
            }
            Ok(response) => {
                *outcome
                    .refused
                    .entry(response.status().as_u16().to_string())
                    .or_default() += 1;
            }
            Err(e) => *outcome.refused.entry(format!("error: {e}")).or_default() += 1,
        }
    }
    Ok(outcome)
}

async fn ws_stream(
    base: &str,
    stream_id: &str,
    pcm: &[i16],
    samples_per_chunk: usize,
    args: &LoadtestArgs,
) -> anyhow::Result<StreamOutcome> {
    let url = format!(
        "{}/v1/streams/{stream_id}/ws",
        base.replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    );
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(url.as_str())?;
    if let Some(token) = &args.token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("cannot open {url}"))?;
    let (mut tx, mut rx) = socket.split();
    let format = serde_json::json!({
        "format": "s16le", "sample_rate": args.sample_rate, "channels": 1,
        "start_sample": 0, "timestamp_ms": unix_ms(),
    });
    tx.send(tungstenite::Message::Text(format.to_string().into()))
        .await?;
    let chunks: Vec<Vec<u8>> = pcm.chunks(samples_per_chunk).map(s16_bytes).collect();
    let count = chunks.len();
    let chunk_ms = args.chunk_ms;
    let sent_at = Arc::new(std::sync::Mutex::new(Vec::with_capacity(count)));
    let sent_log = sent_at.clone();
    let sender = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for (k, chunk) in chunks.into_iter().enumerate() {
            tokio::time::sleep_until(start + Duration::from_millis(k as u64 * chunk_ms)).await;
            sent_log.lock().expect("send times").push(Instant::now());
            if tx
                .send(tungstenite::Message::Binary(chunk.into()))
                .await
                .is_err()
            {
                return;
            }
        }
        // Ends the stream and asks for the last acknowledgement before the server closes.
        let _ = tx
            .send(tungstenite::Message::Text(
                serde_json::json!({"eos": true}).to_string().into(),
            ))
            .await;
    });
    let mut acks: Vec<(Instant, u64)> = Vec::new();
    let mut refused = HashMap::new();
    while let Some(message) = rx.next().await {
        match message {
            Ok(tungstenite::Message::Text(text)) => {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                    continue;
                };
                if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
                    *refused.entry(error.to_owned()).or_default() += 1;
                }
                if let Some(durable) = value.get("durable_samples").and_then(|d| d.as_u64()) {
                    acks.push((Instant::now(), durable));
                }
            }
            Ok(tungstenite::Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // The server ended the session (after eos, or on a refusal): stop sending.
    sender.abort();
    let _ = sender.await;
    let sent_at = std::mem::take(&mut *sent_at.lock().expect("send times"));
    let mut outcome = StreamOutcome {
        sent: sent_at.len(),
        refused,
        ..StreamOutcome::default()
    };
    for (k, sent) in sent_at.iter().enumerate() {
        let end = ((k + 1) * samples_per_chunk).min(pcm.len()) as u64;
        if let Some((at, _)) = acks.iter().find(|(_, durable)| *durable >= end) {
            outcome.accepted += 1;
            outcome
                .accept_ms
                .push(at.saturating_duration_since(*sent).as_secs_f64() * 1e3);
        }
    }
    Ok(outcome)
}

struct Observer {
    seen: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<f64>>,
}

impl Observer {
    fn seen(&self) -> usize {
        self.seen.load(Ordering::Relaxed)
    }

    async fn finish(self) -> (Vec<f64>, usize) {
        let seen = self.seen();
        (self.task.await.unwrap_or_default(), seen)
    }
}

/// Consumes `output.topic` from its current end and times this run's records.
async fn spawn_observer(
    settings: &Settings,
    run: String,
    observing: Arc<AtomicBool>,
) -> anyhow::Result<Observer> {
    let mut config = settings.kafka.client_config(&Default::default())?;
    config
        .set("group.id", format!("specflow-loadtest-{run}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5");
    let consumer: StreamConsumer = config.create().context("observer consumer")?;
    let topic = settings.output.topic.clone();
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .context("output topic metadata")?;
    let Some(partitions) = metadata.topics().first().map(|t| t.partitions().len()) else {
        bail!("output topic {topic} not found");
    };
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        let (_, high) = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .context("output topic watermarks")?;
        assignment.add_partition_offset(&topic, p, Offset::Offset(high))?;
    }
    consumer.assign(&assignment)?;
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    let task = tokio::spawn(async move {
        let mut delays = Vec::new();
        while observing.load(Ordering::Relaxed) {
            let Ok(Ok(message)) =
                tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
            else {
                continue;
            };
            let received = unix_ms();
            if !message.key().is_some_and(|k| k.starts_with(run.as_bytes())) {
                continue;
            }
            let Some(sent) = message
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .and_then(|v| v.pointer("/source/timestamp_ms").and_then(|t| t.as_i64()))
            else {
                continue;
            };
            delays.push((received - sent) as f64);
            counter.fetch_add(1, Ordering::Relaxed);
        }
        delays
    });
    Ok(Observer { seen, task })
}

/// Prints the report as a few lines.
pub fn print_report(report: &LoadtestReport, args: &LoadtestArgs) {
    println!(
        "loadtest: {} {} streams × {} s of {} Hz audio in {} ms chunks, at real-time pace",
        report.streams, report.transport, args.seconds, args.sample_rate, args.chunk_ms
    );
    println!(
        "sent {} chunks, accepted {}, refused {:?}; {:.1} chunks/s, audio {:.1}× real time, in {:.1} s",
        report.chunks_sent,
        report.chunks_accepted,
        report.refused,
        report.chunks_per_s,
        report.audio_x_realtime,
        report.send_seconds
    );
    let line = |name: &str, p: &Option<Percentiles>| match p {
        Some(p) => println!(
            "{name}: n={} p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            p.n, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms
        ),
        None => println!("{name}: no samples"),
    };
    line(
        if report.transport == "ws" {
            "send → durable ack"
        } else {
            "send → 202"
        },
        &report.accept,
    );
    if !args.no_records {
        line("send → record on the output topic", &report.record);
    }
}

#[cfg(test)]
mod tests {
    use super::Percentiles;

    #[test]
    fn percentiles_pick_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!(
            (p.n, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        assert!(Percentiles::of(Vec::new()).is_none());
    }
}
