//! Ceilings on the throughput phase's data, each part alone: Kafka consume-only (an rdkafka
//! loop with the worker's consumer settings, and Kafka's own `ConsumerPerformance`), the DSP
//! alone ([`FeatureExtractor`], one thread and all threads; also DSP + record encoding), and
//! MongoDB `insert_many` of the same records ([`FeatureRecord::to_document`], the worker's
//! code) into a scratch collection with the worker's indexes. The smallest candidate is the
//! bound that holds ([`rank`]).

use anyhow::Context as _;
use futures::StreamExt as _;
use mongodb::bson::doc;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use specflow::config::Settings;
use specflow::dsp::{FeatureExtractor, FrameBatch};
use specflow::record::{FeatureRecord, SourcePosition};
use specflow_test_support::Expect;

use crate::context::{Ctx, say};
use crate::report::{Bound, Ceiling, CeilingDetail, CeilingKind, round2, round3};

/// Consume-only rate of `topic` with rdkafka and the worker's consumer settings.
async fn kafka_ceiling(ctx: &Ctx, topic: &str, expect: &Expect) -> anyhow::Result<Ceiling> {
    let consumer = ctx.consumer(&format!("{}.ceiling", ctx.run_id), &[])?;
    // Connect first, then time from the assignment (no group join) to the last message.
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()) as i32;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    let started = Instant::now();
    consumer.assign(&assignment)?;
    let deadline = started + Duration::from_secs(120);
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut first_after = None;
    while count < expect.messages {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(remaining, consumer.recv())
            .await
            .context("kafka ceiling timed out")??;
        first_after.get_or_insert_with(|| started.elapsed().as_secs_f64());
        count += 1;
        bytes += message.payload().map_or(0, <[u8]>::len) as u64;
    }
    let wall = started.elapsed().as_secs_f64();
    Ok(Ceiling::new(
        "Kafka consume, rdkafka StreamConsumer (worker's settings)".into(),
        CeilingKind::Kafka,
        round2(count as f64 / wall),
        round3(bytes as f64 / 1e6 / wall),
        None,
        CeilingDetail::Rdkafka {
            messages: count,
            wall_s: round3(wall),
            first_message_after_s: first_after.map(round3),
        },
    ))
}

/// Kafka's `ConsumerPerformance` (Java client) on `topic`; fetch-phase rates.
fn java_ceiling(ctx: &Ctx, topic: &str, expect: &Expect) -> anyhow::Result<Ceiling> {
    let output = Command::new("bash")
        .arg(&ctx.args.services_script)
        .args([
            "kafka-tool",
            "org.apache.kafka.tools.ConsumerPerformance",
            "--bootstrap-server",
            &ctx.settings.kafka.brokers,
            "--topic",
            topic,
            "--messages",
            &expect.messages.to_string(),
            "--group",
            &format!("{}.java-ceiling", ctx.run_id),
            "--timeout",
            "60000",
        ])
        .output()
        .context("cannot run ConsumerPerformance")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let header_at = lines
        .iter()
        .position(|l| l.contains("fetch.nMsg.sec"))
        .with_context(|| {
            format!(
                "no ConsumerPerformance result: {}{}",
                stdout,
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let keys: Vec<&str> = lines[header_at].split(',').map(str::trim).collect();
    let values: Vec<&str> = lines
        .get(header_at + 1)
        .context("no values line")?
        .split(',')
        .map(str::trim)
        .collect();
    let field = |name: &str| -> f64 {
        keys.iter()
            .position(|k| *k == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let mib = 1_048_576.0 / 1e6;
    Ok(Ceiling::new(
        "Kafka consume, Java ConsumerPerformance (fetch phase, group join excluded)".into(),
        CeilingKind::Kafka,
        round2(field("fetch.nMsg.sec")),
        round3(field("fetch.MB.sec") * mib),
        None,
        CeilingDetail::JavaConsumer {
            messages: field("data.consumed.in.nMsg"),
            fetch_time_ms: field("fetch.time.ms"),
            messages_per_s_incl_join: round2(field("nMsg.sec")),
        },
    ))
}

/// One chunk of a stream as read back from the input topic.
struct Chunk {
    /// Input partition.
    partition: i32,
    /// Input offset.
    offset: i64,
    /// `audio.start_sample`.
    start_sample: u64,
    /// `audio.timestamp_ms`.
    timestamp_ms: i64,
    /// Decoded mono samples.
    samples: Vec<f32>,
}

/// One stream's chunks in order.
struct StreamAudio {
    /// Stream id (message key).
    id: String,
    /// Sample rate in Hz.
    sample_rate: u32,
    /// Chunks by `start_sample`.
    chunks: Vec<Chunk>,
}

/// Reads the input topic back and decodes it exactly as the worker does.
async fn read_back(ctx: &Ctx, topic: &str, expect: &Expect) -> anyhow::Result<Vec<StreamAudio>> {
    let consumer = ctx.consumer(&format!("{}.readback", ctx.run_id), &[])?;
    consumer.subscribe(&[topic])?;
    let mut streams: Vec<StreamAudio> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..expect.messages {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(remaining, consumer.recv())
            .await
            .context("read-back timed out")??;
        let headers = message.headers();
        let pairs = headers
            .iter()
            .flat_map(|h| h.iter().map(|h| (h.key, h.value)));
        let meta = specflow::audio::decode(
            &ctx.settings.input,
            message.key(),
            message.payload(),
            pairs,
            message.timestamp().to_millis(),
            &mut samples,
        )?;
        let i = *index.entry(meta.stream_id.clone()).or_insert_with(|| {
            streams.push(StreamAudio {
                id: meta.stream_id.clone(),
                sample_rate: meta.sample_rate,
                chunks: Vec::new(),
            });
            streams.len() - 1
        });
        streams[i].chunks.push(Chunk {
            partition: message.partition(),
            offset: message.offset(),
            start_sample: meta.start_sample.unwrap_or(0),
            timestamp_ms: meta.timestamp_ms.unwrap_or(0),
            samples: samples.clone(),
        });
    }
    for stream in &mut streams {
        stream.chunks.sort_by_key(|c| c.start_sample);
    }
    Ok(streams)
}

/// The record the worker writes for `chunk`'s `frames`: its JSON (empty unless `json`) and its
/// MongoDB document in the configured layout.
fn encode_record(
    stream: &StreamAudio,
    chunk: &Chunk,
    topic: &str,
    settings: &Settings,
    frames: &FrameBatch,
    json: bool,
) -> anyhow::Result<(Vec<u8>, mongodb::bson::RawDocumentBuf)> {
    let source = SourcePosition {
        topic: topic.to_string(),
        partition: chunk.partition,
        offset: chunk.offset,
        timestamp_ms: Some(chunk.timestamp_ms),
    };
    let record = FeatureRecord {
        stream_id: &stream.id,
        sample_rate: stream.sample_rate,
        frame_length: settings.dsp.frame_length,
        hop_length: settings.dsp.hop_length,
        batch: frames,
        chunk_start_sample: chunk.start_sample,
        chunk_timestamp_ms: chunk.timestamp_ms,
        source: &source,
    };
    let json = if json { record.to_json() } else { Vec::new() };
    Ok((json, record.to_document(settings.mongo.layout)?))
}

/// Totals of one DSP pass.
#[derive(Default, Clone, Copy)]
struct DspTotals {
    /// Frames computed.
    frames: u64,
    /// Chunks that completed at least one frame.
    records: u64,
    /// Bytes of the records' JSON (when encoding).
    json_bytes: u64,
    /// Bytes of the records' BSON (when encoding).
    bson_bytes: u64,
}

/// Runs the DSP over every stream, chunk by chunk as they arrive, on `threads` threads
/// (streams dealt round-robin); with `encode`, also builds each record's JSON and BSON.
fn dsp_pass(
    ctx: &Ctx,
    extractor: &FeatureExtractor,
    streams: &[StreamAudio],
    threads: usize,
    encode: bool,
    topic: &str,
) -> (f64, DspTotals) {
    let mut groups: Vec<Vec<&StreamAudio>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, stream) in streams.iter().enumerate() {
        groups[i % threads].push(stream);
    }
    let started = Instant::now();
    let totals: Vec<DspTotals> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|group| {
                scope.spawn(move || {
                    let mut totals = DspTotals::default();
                    let mut ws = extractor.workspace();
                    let mut out = FrameBatch::new();
                    let mut states: Vec<_> = group
                        .iter()
                        .map(|s| {
                            extractor.new_stream(s.chunks.first().map_or(0, |c| c.start_sample))
                        })
                        .collect();
                    let rounds = group.iter().map(|s| s.chunks.len()).max().unwrap_or(0);
                    for round in 0..rounds {
                        for (stream, state) in group.iter().zip(states.iter_mut()) {
                            let Some(chunk) = stream.chunks.get(round) else {
                                continue;
                            };
                            out.clear();
                            extractor.process(&mut ws, state, black_box(&chunk.samples), &mut out);
                            totals.frames += out.len() as u64;
                            if out.is_empty() {
                                continue;
                            }
                            totals.records += 1;
                            if encode {
                                let (json, document) =
                                    encode_record(stream, chunk, topic, &ctx.settings, &out, true)
                                        .expect("record encodes");
                                totals.json_bytes += json.len() as u64;
                                totals.bson_bytes += document.as_bytes().len() as u64;
                                black_box((json, document));
                            }
                        }
                    }
                    totals
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("DSP thread"))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let sum = totals.iter().fold(DspTotals::default(), |a, t| DspTotals {
        frames: a.frames + t.frames,
        records: a.records + t.records,
        json_bytes: a.json_bytes + t.json_bytes,
        bson_bytes: a.bson_bytes + t.bson_bytes,
    });
    (wall, sum)
}

/// The documents of the MongoDB ceilings, encoded once by the worker's code.
struct MongoLoad {
    documents: Vec<mongodb::bson::RawDocumentBuf>,
    bson_bytes: u64,
    /// Input messages per document (1 when every chunk completes a frame).
    messages_per_doc: f64,
    bytes_per_message: f64,
}

/// Encodes the records of the preloaded streams (at most `--mongo-docs`).
fn mongo_load(
    ctx: &Ctx,
    extractor: &FeatureExtractor,
    streams: &[StreamAudio],
    topic: &str,
) -> anyhow::Result<MongoLoad> {
    let limit = match ctx.args.mongo_docs {
        0 => usize::MAX,
        n => n,
    };
    let mut ws = extractor.workspace();
    let mut out = FrameBatch::new();
    let mut states: Vec<_> = streams
        .iter()
        .map(|s| extractor.new_stream(s.chunks.first().map_or(0, |c| c.start_sample)))
        .collect();
    let rounds = streams.iter().map(|s| s.chunks.len()).max().unwrap_or(0);
    // Encode first (not timed); every variant inserts the same documents.
    let mut documents: Vec<mongodb::bson::RawDocumentBuf> = Vec::new();
    let (mut encoded, mut bson_bytes) = (0usize, 0u64);
    let mut chunks_covered = 0u64;
    'outer: for round in 0..rounds {
        for (stream, state) in streams.iter().zip(states.iter_mut()) {
            let Some(chunk) = stream.chunks.get(round) else {
                continue;
            };
            out.clear();
            extractor.process(&mut ws, state, &chunk.samples, &mut out);
            chunks_covered += 1;
            if !out.is_empty() {
                let (_, document) =
                    encode_record(stream, chunk, topic, &ctx.settings, &out, false)?;
                bson_bytes += document.as_bytes().len() as u64;
                documents.push(document);
                encoded += 1;
                if encoded >= limit {
                    break 'outer;
                }
            }
        }
    }
    let bytes_per_message = streams
        .first()
        .and_then(|s| s.chunks.first())
        .map_or(0.0, |c| c.samples.len() as f64 * 2.0);
    Ok(MongoLoad {
        messages_per_doc: chunks_covered as f64 / encoded.max(1) as f64,
        documents,
        bson_bytes,
        bytes_per_message,
    })
}

/// MongoDB `insert_many` (unordered, the worker's `insert_idempotent`) of `load`, `batch_size`
/// documents per call and `concurrency` calls at once, into a scratch collection with the
/// worker's indexes. Only the inserts are timed.
async fn mongo_ceiling(
    ctx: &Ctx,
    load: &MongoLoad,
    batch_size: usize,
    concurrency: usize,
) -> anyhow::Result<Ceiling> {
    let database = format!(
        "{}_mongo_ceiling_{batch_size}x{concurrency}",
        ctx.run_id.replace('.', "_")
    );
    ctx.databases.lock().expect("lock").push(database.clone());
    // Each call carries exactly `batch_size` documents: the worker's `insert_max_bytes` split
    // is lifted to the largest message MongoDB takes.
    let config = specflow::sinks::mongo::MongoSinkConfig {
        database: database.clone(),
        insert_max_bytes: specflow::sinks::mongo::INSERT_MAX_BYTES_LIMIT,
        ..ctx.settings.mongo.clone()
    };
    let sink = config.build().await?;
    sink.ensure_indexes().await?;
    let batches: Vec<&[mongodb::bson::RawDocumentBuf]> =
        load.documents.chunks(batch_size.max(1)).collect();
    let inserts = batches.len();
    let started = Instant::now();
    let took: Vec<anyhow::Result<f64>> = futures::stream::iter(batches.iter())
        .map(|batch| async {
            let started = Instant::now();
            sink.insert_idempotent(batch).await?;
            Ok(started.elapsed().as_secs_f64())
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let insert_time = started.elapsed().as_secs_f64();
    let mut slowest: f64 = 0.0;
    for t in took {
        slowest = slowest.max(t?);
    }
    let inserted = load.documents.len();
    let stored = sink.collection().count_documents(doc! {}).await?;
    if !ctx.args.keep {
        let client = ctx.mongo().await?;
        let _ = client.database(&database).drop().await;
    }
    let chunk_s = ctx.args.chunk_ms as f64 / 1000.0;
    let docs_per_s = inserted as f64 / insert_time;
    let messages_per_s = docs_per_s * load.messages_per_doc;
    Ok(Ceiling::new(
        format!(
            "MongoDB insert_many unordered, {batch_size} docs per call, {concurrency} at once, worker's indexes"
        ),
        CeilingKind::Mongo,
        round2(messages_per_s),
        round3(messages_per_s * load.bytes_per_message / 1e6),
        Some(round2(messages_per_s * chunk_s)),
        CeilingDetail::Mongo {
            documents: inserted,
            stored,
            inserts,
            insert_s: round3(insert_time),
            slowest_insert_s: round3(slowest),
            documents_per_s: round2(docs_per_s),
            bson_mb_per_s: round3(load.bson_bytes as f64 / 1e6 / insert_time),
            mean_document_bytes: round2(load.bson_bytes as f64 / inserted.max(1) as f64),
        },
    ))
}

/// The MongoDB ceiling's variants: every `--mongo-writers` count × the two batch sizes
/// (`--mongo-batch`, default `source.batch_max_messages`, and `--mongo-batch-small`).
fn mongo_variants(ctx: &Ctx) -> anyhow::Result<Vec<(usize, usize)>> {
    let large = ctx
        .args
        .mongo_batch
        .unwrap_or(ctx.settings.source.batch_max_messages)
        .max(1);
    let mut sizes = vec![large];
    if ctx.args.mongo_batch_small > 0 && ctx.args.mongo_batch_small != large {
        sizes.push(ctx.args.mongo_batch_small);
    }
    let writers: Vec<usize> = ctx
        .args
        .mongo_writers
        .split(',')
        .map(|w| w.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--mongo-writers {:?}: {e}", ctx.args.mongo_writers))?;
    Ok(writers
        .iter()
        .filter(|&&w| w > 0)
        .flat_map(|&w| sizes.iter().map(move |&b| (b, w)))
        .collect())
}

/// Every ceiling on the preloaded data, in order: Kafka, DSP, MongoDB.
pub async fn ceilings(ctx: &Ctx, topic: &str, expect: &Expect) -> anyhow::Result<Vec<Ceiling>> {
    let mut rows = Vec::new();
    say("ceiling: Kafka consume (rdkafka)");
    rows.push(kafka_ceiling(ctx, topic, expect).await?);
    if !ctx.args.skip_java_ceiling {
        say("ceiling: Kafka consume (ConsumerPerformance)");
        match java_ceiling(ctx, topic, expect) {
            Ok(java) => rows.push(java),
            Err(e) => say(format!("  ConsumerPerformance failed: {e:#}")),
        }
    }

    say("ceiling: reading the audio back for the DSP and MongoDB ceilings");
    let streams = read_back(ctx, topic, expect).await?;
    let rate = streams.first().map_or(16_000, |s| s.sample_rate);
    let extractor = FeatureExtractor::new(&ctx.settings.dsp, rate)?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk_s = ctx.args.chunk_ms as f64 / 1000.0;
    let bytes_per_message = expect.bytes as f64 / expect.messages.max(1) as f64;
    let dsp_row = |label: String, kind: CeilingKind, threads: usize, encode: bool| {
        say(format!("ceiling: {label}"));
        // Best of `repeat` passes: the ceiling is what the machine can do.
        let mut runs: Vec<(f64, DspTotals)> = (0..ctx.args.repeat.max(1))
            .map(|_| dsp_pass(ctx, &extractor, &streams, threads, encode, topic))
            .collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let walls: Vec<f64> = runs.iter().map(|r| round3(r.0)).collect();
        let (wall, totals) = runs[0];
        let messages = expect.messages as f64;
        let per_record = |bytes: u64| {
            (totals.records > 0 && encode).then(|| round2(bytes as f64 / totals.records as f64))
        };
        Ceiling::new(
            label,
            kind,
            round2(messages / wall),
            round3(messages * bytes_per_message / 1e6 / wall),
            Some(round2(messages * chunk_s / wall)),
            CeilingDetail::Dsp {
                threads,
                wall_s: round3(wall),
                pass_walls_s: walls,
                frames: totals.frames,
                frames_per_s: round2(totals.frames as f64 / wall),
                us_per_frame_per_thread: round3(
                    wall * 1e6 * threads as f64 / totals.frames.max(1) as f64,
                ),
                json_bytes_per_record: per_record(totals.json_bytes),
                bson_bytes_per_record: per_record(totals.bson_bytes),
            },
        )
    };
    rows.push(dsp_row(
        "DSP only, 1 thread".into(),
        CeilingKind::DspSingle,
        1,
        false,
    ));
    rows.push(dsp_row(
        format!("DSP only, {cores} threads"),
        CeilingKind::Dsp,
        cores,
        false,
    ));
    rows.push(dsp_row(
        format!("DSP + JSON + BSON encode, {cores} threads"),
        CeilingKind::DspEncode,
        cores,
        true,
    ));
    rows.push(dsp_row(
        "DSP + JSON + BSON encode, 1 thread".into(),
        CeilingKind::DspEncodeSingle,
        1,
        true,
    ));

    let load = mongo_load(ctx, &extractor, &streams, topic)?;
    for (batch_size, writers) in mongo_variants(ctx)? {
        say(format!(
            "ceiling: MongoDB insert_many, {batch_size} per call, {writers} at once"
        ));
        rows.push(mongo_ceiling(ctx, &load, batch_size, writers).await?);
    }
    Ok(rows)
}

/// Target of the worker's rate over the bound (the best client's ceiling).
const TARGET_RATIO: f64 = 0.8;

/// Sets every ceiling's `worker_ratio` and `candidate_bound` for a worker at `worker_rate`
/// messages/s; returns the bound that holds: the smallest candidate (the faster Kafka client,
/// the multi-core DSP, the best MongoDB write pattern).
pub fn rank(rows: &mut [Ceiling], worker_rate: f64) -> Option<Bound> {
    let kafka_best = rows
        .iter()
        .filter(|r| r.kind == CeilingKind::Kafka)
        .map(|r| r.messages_per_s)
        .fold(f64::NAN, f64::max);
    let mongo_best = rows
        .iter()
        .filter(|r| r.kind == CeilingKind::Mongo)
        .map(|r| r.messages_per_s)
        .fold(f64::NAN, f64::max);
    let mut bound: Option<(f64, String)> = None;
    for row in rows.iter_mut() {
        let rate = row.messages_per_s;
        row.worker_ratio = round3(worker_rate / rate);
        row.candidate_bound = match row.kind {
            CeilingKind::Kafka => rate == kafka_best,
            CeilingKind::Mongo => rate == mongo_best,
            CeilingKind::Dsp => true,
            _ => false,
        };
        if row.candidate_bound && bound.as_ref().is_none_or(|(r, _)| rate < *r) {
            bound = Some((rate, row.what.clone()));
        }
    }
    bound.map(|(rate, what)| Bound {
        what,
        messages_per_s: rate,
        worker_ratio: round3(worker_rate / rate),
        target_ratio: TARGET_RATIO,
        met: worker_rate / rate >= TARGET_RATIO,
    })
}

impl Ceiling {
    /// A ceiling before it is compared with the worker ([`rank`]).
    fn new(
        what: String,
        kind: CeilingKind,
        messages_per_s: f64,
        mb_per_s: f64,
        x_realtime: Option<f64>,
        detail: CeilingDetail,
    ) -> Self {
        Self {
            what,
            kind,
            messages_per_s,
            mb_per_s,
            x_realtime,
            worker_ratio: f64::NAN,
            candidate_bound: false,
            detail,
        }
    }
}
