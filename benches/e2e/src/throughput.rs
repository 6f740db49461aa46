//! Throughput: one `specflow run` process over the preloaded input topic, timed from the first
//! consumed message to the last record stored (both read from `/metrics`; with `mongo.enabled`
//! off, to the last record Kafka acknowledged), with the CPU of every process in that window,
//! the worker's peak RSS, and the checkpoint topic's overhead.

use anyhow::{Context as _, bail};
use mongodb::bson::{Document, doc};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use specflow_test_support::{Expect, Scrape};

use crate::context::{
    CpuSnapshot, Ctx, proc_cpu_seconds, proc_status_bytes, proc_thread_cpu_seconds, say,
    thread_groups_cpu,
};
use crate::report::{CheckpointOverhead, ThroughputRun, round_to, round2, round3};

/// Runs the worker over the preloaded `input` until every record is stored.
pub async fn worker_run(
    ctx: &Ctx,
    input: &str,
    expect: &Expect,
    threads: Option<usize>,
    tag: &str,
) -> anyhow::Result<ThroughputRun> {
    let names = ctx.names(tag, input);
    ctx.create_topics(&[&names.output, &names.dead_letter], ctx.partitions)
        .await?;
    say(format!(
        "worker run '{tag}' (worker_threads={}) on {} messages",
        threads.map_or("config".into(), |t| t.to_string()),
        expect.messages
    ));
    let mut worker = ctx.spawn_worker(&names, threads, tag)?;
    // A record is done when MongoDB stored it, or with `mongo.enabled` off when Kafka
    // acknowledged it on the output topic.
    let done_metric = if ctx.settings.mongo.enabled {
        "mongo_documents_written_total"
    } else {
        "records_produced_total"
    };
    let poll = Duration::from_millis(ctx.args.metrics_poll_ms);
    let deadline = Instant::now() + Duration::from_secs(ctx.args.run_timeout);
    let mut start: Option<(CpuSnapshot, Scrape, ThreadCpu)> = None;
    let mut progress = (0.0, 0.0);
    let (end, last, threads_end) = loop {
        worker.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "run '{tag}' timed out: consumed {} written {} of {} records",
                progress.0,
                progress.1,
                expect.records
            );
        }
        let Ok(scrape) = worker.scrape().await else {
            tokio::time::sleep(poll).await;
            continue;
        };
        let snapshot = ctx.cpu_snapshot(worker.pid, None);
        let threads = proc_thread_cpu_seconds(worker.pid, ctx.ticks);
        let consumed = scrape.get("messages_consumed_total")?;
        let written = scrape.get(done_metric)?;
        progress = (consumed, written);
        if start.is_none() && consumed > 0.0 {
            start = Some((snapshot, scrape.clone(), threads));
        } else if written >= expect.records as f64 && consumed >= expect.messages as f64 {
            break (snapshot, scrape, threads);
        }
        tokio::time::sleep(poll_interval(
            poll,
            start.is_some(),
            written,
            expect.records,
        ))
        .await;
    };
    let (start, start_scrape, threads_start) = start.context("no message consumed")?;
    let peak_rss = proc_status_bytes(worker.pid, "VmHWM").unwrap_or(0);
    let total_cpu = proc_cpu_seconds(worker.pid, ctx.ticks).unwrap_or(0.0);
    let startup_s = start.at.duration_since(worker.started).as_secs_f64();
    let cpu = start.until(&end);
    // Interpolation error of the window is at most one polling interval at each end.
    let wall = end.at.duration_since(start.at).as_secs_f64();
    let consumed_before = start_scrape.get("messages_consumed_total")?;
    // The worker's final scrape, for the checkpoint figures: checkpoints of the last batches
    // may be acknowledged after their records are stored.
    let last_word = worker.scrape().await?;
    let checkpoints = checkpoint_overhead(&last_word, wall)?;
    let (clean, run_health) = worker.stop().await?;

    let client = ctx.mongo().await?;
    let stored = client
        .database(&names.database)
        .collection::<Document>(&ctx.settings.mongo.collection)
        .count_documents(doc! {})
        .await
        .unwrap_or(0);
    if !ctx.args.keep {
        let _ = client.database(&names.database).drop().await;
    }
    let worker_cpu = cpu.worker_cpu_s;
    let per_message = |seconds: f64| round2(seconds * 1e6 / expect.messages as f64);
    let by_thread = thread_groups_cpu(&threads_start, &threads_end);
    let mut cpu_us_per_message_by_thread: BTreeMap<String, f64> = by_thread
        .iter()
        .map(|(group, &seconds)| (group.clone(), per_message(seconds)))
        .collect();
    // Threads that ended within the window (partition restores, short-lived blocking tasks).
    let ended = worker_cpu - by_thread.values().sum::<f64>();
    cpu_us_per_message_by_thread.insert("(ended threads)".into(), per_message(ended.max(0.0)));
    let processing = last.get("processing_seconds_sum")?;
    let mongo_write = last.get("mongo_write_seconds_sum")?;
    let batches = last.get("processing_seconds_count")?;
    let result = ThroughputRun {
        tag: tag.to_string(),
        worker_threads: threads,
        messages: expect.messages,
        bytes: expect.bytes,
        records: expect.records,
        frames_counted: last.get("frames_computed_total")?,
        frames_expected: expect.frames,
        stored_documents: stored,
        dead_letters: last.sum_of("dead_letters_total"),
        startup_s: round3(startup_s),
        wall_s: round3(wall),
        messages_in_flight_at_start: consumed_before,
        x_realtime: round2(expect.audio_seconds / wall),
        messages_per_s: round2(expect.messages as f64 / wall),
        mb_per_s: round3(expect.bytes as f64 / 1e6 / wall),
        frames_per_s: round2(expect.frames as f64 / wall),
        records_per_s: round2(expect.records as f64 / wall),
        worker_cpu_s: round3(worker_cpu),
        worker_cpu_total_s: round3(total_cpu),
        worker_cores_used: round2(worker_cpu / wall),
        cpu_us_per_message: round2(worker_cpu * 1e6 / expect.messages as f64),
        cpu_us_per_message_by_thread,
        peak_rss_mb: round2(peak_rss as f64 / 1e6),
        cpu,
        batches,
        mean_batch_messages: round2(last.get("messages_consumed_total")? / batches.max(1.0)),
        processing_s: round3(processing),
        mongo_write_s: round3(mongo_write),
        processing_share: round3(processing / wall),
        mongo_write_share: round3(mongo_write / wall),
        checkpoints,
        clean_exit: clean,
        run_health,
        note: None,
    };
    say(format!(
        "  {:.1} s, {:.0} msg/s, {:.0}× real time, worker {:.2} cores, peak RSS {:.0} MB",
        wall,
        expect.messages as f64 / wall,
        expect.audio_seconds / wall,
        worker_cpu / wall,
        peak_rss as f64 / 1e6
    ));
    say(format!(
        "  worker CPU per message by thread: {}",
        result
            .cpu_us_per_message_by_thread
            .iter()
            .filter(|(_, us)| **us >= 0.5)
            .map(|(group, us)| format!("{group} {us:.0} µs"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if stored != expect.records {
        say(format!(
            "  WARNING: {stored} documents stored, {} expected",
            expect.records
        ));
    }
    Ok(result)
}

/// CPU seconds of each thread of the worker at one instant, by thread id.
type ThreadCpu = BTreeMap<u32, (String, f64)>;

/// The checkpoint topic's share of a run of `wall` seconds, from the worker's final scrape.
fn checkpoint_overhead(scrape: &Scrape, wall: f64) -> anyhow::Result<CheckpointOverhead> {
    let messages = scrape.get("messages_consumed_total")?.max(1.0);
    let batches = scrape.get("processing_seconds_count")?.max(1.0);
    let written = scrape.get("checkpoints_written_total")?;
    let write_s = scrape.get("checkpoint_write_seconds_sum")?;
    let writes = scrape.get("checkpoint_write_seconds_count")?;
    Ok(CheckpointOverhead {
        checkpoints_per_message: round2(written / messages),
        checkpoint_bytes_per_message: round2(scrape.get("checkpoint_bytes_total")? / messages),
        checkpoints_per_batch: round2(written / batches),
        // Finer than the other times: a batch's checkpoints take well under a millisecond.
        checkpoint_write_s: round_to(write_s, 6),
        checkpoint_write_share: round_to(write_s / wall, 6),
        checkpoint_write_ms_per_batch: round_to(write_s * 1000.0 / writes.max(1.0), 4),
    })
}

/// How long to wait before the next scrape: `fast` until the first message is consumed and
/// again from 90% of the records on, so that both ends of the window stay within one `fast`
/// interval; 10 × `fast` in between. A scrape costs the worker about 0.15–0.2 ms of CPU: at
/// 50 ms all through a 20 s run that was 5–6 µs per message of the figure being measured,
/// where an operator's Prometheus scrapes every 15–30 s.
fn poll_interval(fast: Duration, started: bool, written: f64, records: u64) -> Duration {
    if !started || written >= 0.9 * records as f64 {
        fast
    } else {
        fast * 10
    }
}
