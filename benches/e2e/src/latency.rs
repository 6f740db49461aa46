//! Latency at a steady real-time load (`specflow produce --realtime`): an observer consumes
//! the output topic from the start and takes `receive time − source.timestamp_ms`; the
//! worker's acknowledged-write counter on `/metrics` gives the time to MongoDB; optionally, a
//! poller looks sampled records up in MongoDB by `_id`.

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use mongodb::bson::{Document, doc};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use specflow_test_support::{Scrape, http_get};

use crate::context::{Ctx, Pace, proc_status_bytes, say, tail};
use crate::report::{
    LatencyRun, LatencySummary, LatencyWholeRun, LatencyWindow, MongoLookups, MongoMethod, mean,
    percentile, round2, round3,
};
use specflow::clock::unix_ms_f64;

/// One record seen on the output topic.
struct Observed {
    /// Record id `<stream>:<first frame>`.
    id: String,
    /// `source.timestamp_ms` (the chunk's send time).
    source_ms: i64,
    /// Wall-clock ms when the observer received it.
    seen_ms: f64,
    /// The output message's timestamp: when the worker handed it to its producer.
    produced_ms: Option<i64>,
}

#[derive(Deserialize)]
struct SourceTimestamp {
    /// `source.timestamp_ms`.
    timestamp_ms: Option<i64>,
}

#[derive(Deserialize)]
struct RecordHead {
    /// Record id.
    id: String,
    /// The `source` object.
    source: SourceTimestamp,
}

/// `id` and `source.timestamp_ms` of a record without parsing the frames: `id` is the second
/// key and `source` the last one of every record.
fn record_head(json: &[u8]) -> Option<(String, i64)> {
    let text = std::str::from_utf8(json).ok()?;
    let fast = || {
        let id_at = text.find("\"id\":\"")? + 6;
        let id_len = text[id_at..].find('"')?;
        let source_at = text.rfind("\"source\":")? + 9;
        let source: SourceTimestamp =
            serde_json::from_str(text.get(source_at..text.len() - 1)?).ok()?;
        Some((
            text[id_at..id_at + id_len].to_string(),
            source.timestamp_ms?,
        ))
    };
    fast().or_else(|| {
        let head: RecordHead = serde_json::from_str(text).ok()?;
        Some((head.id, head.source.timestamp_ms?))
    })
}

/// The stream number in a record id `<prefix><n>:<frame>`.
fn stream_number(id: &str, prefix: &str) -> Option<usize> {
    id.strip_prefix(prefix)?.split(':').next()?.parse().ok()
}

/// A record waiting to be seen in MongoDB.
struct Pending {
    /// Record id (`_id`).
    id: String,
    /// `source.timestamp_ms`.
    source_ms: i64,
    /// When it was last known absent (first: when seen on the output topic).
    last_miss_ms: f64,
    /// Lookups so far.
    attempts: u32,
}

/// What the MongoDB poller measured.
#[derive(Default)]
struct PollResult {
    /// (source.timestamp_ms, latency ms) of every record found.
    latencies: Vec<(i64, f64)>,
    /// For each found record, ms between the last miss and the hit.
    resolution_gaps: Vec<f64>,
    /// Records found by their first lookup.
    found_first_try: usize,
    /// Lookups issued.
    lookups: u64,
    /// Polling rounds with something pending.
    rounds: u64,
    /// Duration of each round in ms.
    round_ms: Vec<f64>,
    /// Records never seen: (source.timestamp_ms, lower bound of their latency).
    unresolved: Vec<(i64, f64)>,
}

/// Looks the sampled records up by `_id` every `poll`: the oldest [`POLL_BATCH`] pending
/// ones, [`POLL_CONCURRENCY`] at a time (the MongoDB-compatible test server pushes down only
/// `_id` equality; any other filter scans the collection).
async fn poll_mongo(
    collection: mongodb::Collection<Document>,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<Observed>,
    poll: Duration,
    stop: CancellationToken,
) -> PollResult {
    let mut result = PollResult::default();
    let mut pending: Vec<Pending> = Vec::new();
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closed = false;
    loop {
        ticker.tick().await;
        loop {
            match incoming.try_recv() {
                Ok(o) => pending.push(Pending {
                    id: o.id,
                    source_ms: o.source_ms,
                    last_miss_ms: o.seen_ms,
                    attempts: 0,
                }),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if stop.is_cancelled() || (closed && pending.is_empty()) {
            break;
        }
        if pending.is_empty() {
            continue;
        }
        let round_started = Instant::now();
        result.rounds += 1;
        let take = pending.len().min(POLL_BATCH);
        let lookups: Vec<(usize, bool, f64)> = futures::stream::iter(0..take)
            .map(|i| {
                let collection = collection.clone();
                let id = pending[i].id.clone();
                async move {
                    let found = collection
                        .find_one(doc! { "_id": id })
                        .projection(doc! { "_id": 1 })
                        .await;
                    (i, matches!(found, Ok(Some(_))), unix_ms_f64())
                }
            })
            .buffer_unordered(POLL_CONCURRENCY)
            .collect()
            .await;
        result.lookups += take as u64;
        let mut found_at: Vec<Option<f64>> = vec![None; take];
        for (i, found, at) in lookups {
            pending[i].attempts += 1;
            if found {
                found_at[i] = Some(at);
            } else {
                pending[i].last_miss_ms = pending[i].last_miss_ms.max(at);
            }
        }
        let mut index = 0;
        pending.retain(|p| {
            let keep = match found_at.get(index).copied().flatten() {
                Some(at) => {
                    if p.attempts == 1 {
                        result.found_first_try += 1;
                    }
                    result
                        .latencies
                        .push((p.source_ms, at - p.source_ms as f64));
                    result.resolution_gaps.push(at - p.last_miss_ms);
                    false
                }
                None => true,
            };
            index += 1;
            keep
        });
        result
            .round_ms
            .push(round_started.elapsed().as_secs_f64() * 1000.0);
    }
    let now = unix_ms_f64();
    result.unresolved = pending
        .iter()
        .map(|p| (p.source_ms, now - p.source_ms as f64))
        .collect();
    result
}

/// Sampled records looked up per polling round (the oldest pending ones).
const POLL_BATCH: usize = 4;
/// Concurrent `_id` lookups per round.
const POLL_CONCURRENCY: usize = 1;

/// Polls the worker's `/metrics` every `poll` and records each change of
/// `mongo_documents_written_total` as (wall ms, documents written); also returns how long
/// each scrape took. The worker bumps the counter right after MongoDB acknowledged an
/// `insert_many`, i.e. after the documents were committed and visible.
async fn poll_written(
    address: SocketAddr,
    poll: Duration,
    stop: CancellationToken,
) -> anyhow::Result<(Vec<(f64, f64)>, Vec<f64>)> {
    let mut events: Vec<(f64, f64)> = Vec::new();
    let mut scrapes = Vec::new();
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0.0;
    while !stop.is_cancelled() {
        ticker.tick().await;
        let started = Instant::now();
        let Ok((200, body)) = http_get(address, "/metrics").await else {
            continue;
        };
        let now = unix_ms_f64();
        scrapes.push(started.elapsed().as_secs_f64() * 1000.0);
        let written = Scrape::parse(&body).get("mongo_documents_written_total")?;
        if written > last {
            events.push((now, written));
            last = written;
        }
    }
    Ok((events, scrapes))
}

/// Latency summary where `censored` records were never seen: they count as slower than every
/// seen one; a percentile that falls among them is reported as null with `censored` set, and
/// time to the output topic and to MongoDB.
pub async fn latency_phase(
    ctx: &Ctx,
    streams: usize,
    tag: &str,
    pace: Pace,
) -> anyhow::Result<LatencyRun> {
    let args = &ctx.args;
    let duration = args.warmup_seconds + args.latency_seconds;
    let expect = ctx.expect(streams, duration, args.chunk_ms)?;
    // First frame of each record of a stream → the chunk (send round) it came from.
    let records = ctx.record_chunks(duration, args.chunk_ms)?;
    let chunk_of: HashMap<u64, u64> = records.iter().map(|&(c, f)| (f, c)).collect();
    let warm_chunks = (args.warmup_seconds * 1000.0 / args.chunk_ms as f64).ceil() as u64;
    let input = format!("{}.{tag}.in", ctx.run_id);
    let names = ctx.names(tag, &input);
    ctx.create_topics(
        &[&names.input, &names.output, &names.dead_letter],
        ctx.partitions,
    )
    .await?;
    say(format!(
        "latency '{tag}': {streams} real-time streams ({}) for {duration} s ({} records expected)",
        pace.label(),
        expect.records
    ));
    let mut worker = ctx.spawn_worker(&names, None, tag)?;
    let readyz_idle = worker.wait_ready(Duration::from_secs(60)).await?;

    // Observer on the output topic, from its start.
    let observer = ctx.consumer(
        &format!("{}.{tag}.observer", ctx.run_id),
        &[("fetch.wait.max.ms", "5"), ("fetch.min.bytes", "1")],
    )?;
    observer.subscribe(&[&names.output])?;
    let observer = Arc::new(observer);
    let stop = CancellationToken::new();
    let (to_poller, from_observer) = tokio::sync::mpsc::unbounded_channel();
    let prefix = format!("{tag}-");
    let lookups_on = args.mongo_lookups > 0;
    let sample_every = args.mongo_lookups.max(1);
    let expected_records = expect.records as usize;
    let observe = {
        let observer = observer.clone();
        let stop = stop.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let mut seen: Vec<Observed> = Vec::with_capacity(expected_records);
            let mut unparsed = 0usize;
            while seen.len() < expected_records {
                let message = tokio::select! {
                    m = observer.recv() => m,
                    _ = stop.cancelled() => break,
                };
                let now = unix_ms_f64();
                let Ok(message) = message else { continue };
                let Some((id, source_ms)) = message.payload().and_then(record_head) else {
                    unparsed += 1;
                    continue;
                };
                if lookups_on && stream_number(&id, &prefix).is_some_and(|n| n % sample_every == 0)
                {
                    let _ = to_poller.send(Observed {
                        id: id.clone(),
                        source_ms,
                        seen_ms: now,
                        produced_ms: None,
                    });
                }
                seen.push(Observed {
                    id,
                    source_ms,
                    seen_ms: now,
                    produced_ms: message.timestamp().to_millis(),
                });
            }
            (seen, unparsed)
        })
    };
    // Wait for the observer's assignment so nothing is missed at the start.
    let assigned_by = Instant::now() + Duration::from_secs(30);
    while observer.assignment().map_or(0, |a| a.count()) == 0 && Instant::now() < assigned_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let collection = ctx
        .mongo()
        .await?
        .database(&names.database)
        .collection::<Document>(&ctx.settings.mongo.collection);
    let poll_stop = CancellationToken::new();
    let poller = tokio::spawn(poll_mongo(
        collection,
        from_observer,
        Duration::from_millis(args.poll_ms),
        poll_stop.clone(),
    ));
    let written_stop = CancellationToken::new();
    let written_poller = tokio::spawn(poll_written(
        worker.address,
        Duration::from_millis(args.poll_ms),
        written_stop.clone(),
    ));

    let log = ctx.log_dir.join(format!("produce-{tag}.log"));
    let file = std::fs::File::create(&log)?;
    let load_started = Instant::now();
    let mut producer = ctx
        .produce_command(
            &input,
            streams,
            duration,
            args.chunk_ms,
            &prefix,
            pace,
            true,
        )
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("cannot start specflow produce --realtime")?;
    let producer_pid = producer.id();
    // CPU over the measured window (after the warm-up, while the load runs).
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_seconds)).await;
    let window_start = ctx.cpu_snapshot(worker.pid, Some(producer_pid));
    let scrape_start = worker.scrape().await?;
    tokio::time::sleep(Duration::from_secs_f64(
        (args.latency_seconds - 0.2).max(0.1),
    ))
    .await;
    let window_end = ctx.cpu_snapshot(worker.pid, Some(producer_pid));
    let scrape_end = worker.scrape().await?;
    let cpu = window_start.until(&window_end);
    let producer_status = tokio::task::spawn_blocking(move || producer.wait()).await??;
    let producer_wall = load_started.elapsed().as_secs_f64();
    let load_end_ms = unix_ms_f64();
    if !producer_status.success() {
        bail!(
            "specflow produce --realtime failed; log {}:\n{}",
            log.display(),
            tail(&log, 20)
        );
    }
    // Let the worker drain what is queued (at most --latency-drain-seconds), then stop.
    let drain = Duration::from_secs_f64(args.latency_drain_seconds);
    let drain_deadline = Instant::now() + drain;
    let mut observe = observe;
    let (seen, unparsed) = match tokio::time::timeout(drain, &mut observe).await {
        Ok(joined) => joined?,
        Err(_) => {
            stop.cancel();
            observe.await?
        }
    };
    let observed_until_ms = unix_ms_f64();
    stop.cancel();
    while !poller.is_finished() && Instant::now() < drain_deadline + Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    poll_stop.cancel();
    let polled = poller.await?;
    written_stop.cancel();
    let (written_events, scrape_ms) = written_poller.await??;
    let peak_rss = proc_status_bytes(worker.pid, "VmHWM").unwrap_or(0);
    let final_scrape = worker.scrape().await?;
    let (clean, run_health) = worker.stop().await?;
    if !ctx.args.keep {
        let _ = ctx.mongo().await?.database(&names.database).drop().await;
    }

    // Classify by send round (from the record id), not by timestamp: warm-up = first rounds.
    let round_of = |id: &str| -> Option<u64> {
        let frame: u64 = id.rsplit(':').next()?.parse().ok()?;
        chunk_of.get(&frame).copied()
    };
    let measured = |id: &str| round_of(id).is_some_and(|c| c >= warm_chunks);
    let first_source = seen.iter().map(|o| o.source_ms).min().unwrap_or(0);
    let mut to_kafka: Vec<f64> = Vec::new();
    let mut warm_kafka: Vec<f64> = Vec::new();
    let (mut to_worker_produce, mut from_worker_produce) = (Vec::new(), Vec::new());
    let mut seen_ids: std::collections::HashSet<&str> = Default::default();
    for o in &seen {
        seen_ids.insert(o.id.as_str());
        let latency = o.seen_ms - o.source_ms as f64;
        if measured(&o.id) {
            to_kafka.push(latency);
            if let Some(produced) = o.produced_ms {
                to_worker_produce.push((produced - o.source_ms) as f64);
                from_worker_produce.push(o.seen_ms - produced as f64);
            }
        } else {
            warm_kafka.push(latency);
        }
    }
    let duplicates = seen.len() - seen_ids.len();
    // Records never seen on the output topic, with the least latency each would have had.
    let mut kafka_censored = Vec::new();
    let mut sampled_censored = Vec::new();
    for stream in 0..streams {
        for &(chunk, frame) in &records {
            if chunk >= warm_chunks
                && !seen_ids.contains(format!("{prefix}{stream}:{frame}").as_str())
            {
                let sent_ms = first_source as f64 + (chunk * args.chunk_ms) as f64;
                let least = (observed_until_ms - sent_ms).max(observed_until_ms - load_end_ms);
                kafka_censored.push(least);
                if stream % sample_every == 0 {
                    sampled_censored.push(least);
                }
            }
        }
    }
    // MongoDB by the worker's acknowledged-write counter: one batch is in flight at a time
    // and its records go to the output topic before its `insert_many`, so the k-th record in
    // output-topic order is stored once the counter reaches k.
    let mut to_mongo: Vec<f64> = Vec::new();
    let mut mongo_censored: Vec<f64> = Vec::new();
    for (rank, o) in seen.iter().enumerate() {
        let at = written_events.partition_point(|&(_, w)| w < (rank + 1) as f64);
        let latency = written_events.get(at).map(|&(t, _)| t - o.source_ms as f64);
        if measured(&o.id) {
            match latency {
                Some(l) => to_mongo.push(l),
                None => mongo_censored.push(observed_until_ms - o.source_ms as f64),
            }
        }
    }
    mongo_censored.extend(kafka_censored.iter().copied());
    let mut scrape_ms = scrape_ms;
    scrape_ms.sort_by(f64::total_cmp);
    // Lookups of records produced after the warm-up.
    let measured = |pairs: &[(i64, f64)]| -> Vec<f64> {
        let warm_end = first_source + (warm_chunks * args.chunk_ms) as i64;
        pairs
            .iter()
            .filter(|(source, _)| *source >= warm_end)
            .map(|(_, l)| *l)
            .collect()
    };
    let mut by_lookup = measured(&polled.latencies);
    let mut lookup_censored = measured(&polled.unresolved);
    // Sampled records never seen on Kafka were never looked up: they are censored too.
    lookup_censored.extend(sampled_censored);
    let mut gaps = polled.resolution_gaps.clone();
    let mut rounds = polled.round_ms.clone();
    gaps.sort_by(f64::total_cmp);
    rounds.sort_by(f64::total_cmp);
    let window = cpu.wall_s;
    let delta =
        |name: &str| -> anyhow::Result<f64> { Ok(scrape_end.get(name)? - scrape_start.get(name)?) };
    let consumed = delta("messages_consumed_total")?;
    let worker_cpu = cpu.worker_cpu_s;
    let batches = delta("processing_seconds_count")?;
    let per_batch = |name: &str| -> anyhow::Result<f64> {
        Ok(round2(delta(name)? * 1000.0 / batches.max(1.0)))
    };
    let to_output_topic = LatencySummary::censored(&mut to_kafka, &kafka_censored);
    let to_mongodb = LatencySummary::censored(&mut to_mongo, &mongo_censored);
    let shown = |v: Option<f64>| serde_json::to_string(&v).unwrap_or_default();
    say(format!(
        "  to output topic p50 {} p99 {} ms; to MongoDB p50 {} p99 {} ms; {} of {} records seen",
        shown(to_output_topic.p50_ms),
        shown(to_output_topic.p99_ms),
        shown(to_mongodb.p50_ms),
        shown(to_mongodb.p99_ms),
        seen.len(),
        expect.records
    ));
    let last = |name: &str| final_scrape.get(name);
    let final_batches = last("processing_seconds_count")?;
    let final_messages = last("messages_consumed_total")?;
    Ok(LatencyRun {
        tag: tag.to_string(),
        streams,
        chunk_boundaries: pace.label().to_string(),
        chunk_ms: args.chunk_ms,
        warmup_s: args.warmup_seconds,
        measured_s: args.latency_seconds,
        drain_limit_s: args.latency_drain_seconds,
        offered_messages_per_s: round2(streams as f64 * 1000.0 / args.chunk_ms as f64),
        offered_mb_per_s: round3(expect.bytes as f64 / 1e6 / duration),
        records_expected: expect.records,
        records_seen: seen.len(),
        duplicates_seen: duplicates,
        unparsed,
        producer_wall_s: round3(producer_wall),
        to_output_topic,
        to_output_topic_warmup: LatencySummary::of(&mut warm_kafka),
        to_worker_produce: LatencySummary::of(&mut to_worker_produce),
        worker_produce_to_observer: LatencySummary::of(&mut from_worker_produce),
        to_mongodb,
        mongodb_method: MongoMethod {
            what: "time the worker's specflow_mongo_documents_written_total first covered the record's rank in output-topic order (the counter is bumped right after MongoDB acknowledged the insert_many) minus source.timestamp_ms",
            metrics_interval_ms: args.poll_ms,
            scrape_mean_ms: round2(mean(&scrape_ms)),
            scrape_p99_ms: round2(percentile(&scrape_ms, 99.0)),
            resolution_ms: round2(args.poll_ms as f64 + mean(&scrape_ms)),
            write_events: written_events.len(),
        },
        to_mongodb_by_id_lookup: lookups_on
            .then(|| LatencySummary::censored(&mut by_lookup, &lookup_censored)),
        mongodb_lookups: MongoLookups {
            enabled: lookups_on,
            interval_ms: args.poll_ms,
            sampled: format!("1 stream in {sample_every}"),
            method: format!(
                "find_one by _id, oldest {POLL_BATCH} pending per round, {POLL_CONCURRENCY} at a time; latency taken when the finding lookup returned"
            ),
            lookups: polled.lookups,
            rounds: polled.rounds,
            found_on_first_lookup: polled.found_first_try,
            unresolved: polled.unresolved.len(),
            resolution_mean_ms: round2(mean(&gaps)),
            resolution_p99_ms: round2(percentile(&gaps, 99.0)),
            round_mean_ms: round2(mean(&rounds)),
            round_max_ms: round2(rounds.last().copied().unwrap_or(f64::NAN)),
        },
        window: LatencyWindow {
            messages_per_s: round2(consumed / window),
            worker_cores_used: round2(worker_cpu / window),
            mean_batch_messages: round2(consumed / batches.max(1.0)),
            processing_ms_per_batch: per_batch("processing_seconds_sum")?,
            mongo_write_ms_per_batch: per_batch("mongo_write_seconds_sum")?,
            cpu,
        },
        whole_run: LatencyWholeRun {
            batches: final_batches,
            mean_batch_messages: round2(final_messages / final_batches.max(1.0)),
            processing_ms_per_batch: round2(
                last("processing_seconds_sum")? * 1000.0 / final_batches.max(1.0),
            ),
            mongo_write_ms_per_batch: round2(
                last("mongo_write_seconds_sum")? * 1000.0
                    / last("mongo_write_seconds_count")?.max(1.0),
            ),
            mongo_docs_per_s_while_writing: round2(
                last("mongo_documents_written_total")? / last("mongo_write_seconds_sum")?.max(1e-9),
            ),
            // The checkpoint topic's share: records and bytes per input message, and per batch.
            checkpoints_per_message: round2(
                last("checkpoints_written_total")? / final_messages.max(1.0),
            ),
            checkpoint_bytes_per_message: round2(
                last("checkpoint_bytes_total")? / final_messages.max(1.0),
            ),
            checkpoints_per_batch: round2(
                last("checkpoints_written_total")? / final_batches.max(1.0),
            ),
        },
        worker_peak_rss_mb: round2(peak_rss as f64 / 1e6),
        readyz_while_idle: readyz_idle.trim().to_string(),
        worker_dead_letters: final_scrape.sum_of("dead_letters_total"),
        clean_exit: clean,
        run_health,
        target_p99_ms: None,
        met: None,
    })
}
