//! Memory per live stream: many one-chunk streams without end-of-stream (their state stays
//! live) against the same messages with end-of-stream (state freed); the RSS difference per
//! 1000 streams, and the worker's own estimate (`stream_state_bytes`).

use anyhow::bail;
use std::time::{Duration, Instant};

use crate::context::{Ctx, Pace, proc_status_bytes, say};
use crate::report::{MemoryRow, MemoryRun, round2, round3};

/// `streams` one-chunk streams through a fresh worker; with `eos` false their state stays
/// live. The chunk is one sample shorter than a frame (or `--memory-chunk-ms`), so the state
/// is fully allocated but no record is written: the figure is the stream table alone, not
/// MongoDB or producer buffers. Returns RSS before and after, peak RSS and the worker's own
/// state estimate.
async fn memory_run(ctx: &Ctx, streams: usize, eos: bool) -> anyhow::Result<MemoryRun> {
    let tag = format!("mem{streams}{}", if eos { "eos" } else { "live" });
    let input = format!("{}.{tag}.in", ctx.run_id);
    let names = ctx.names(&tag, &input);
    ctx.create_topics(
        &[&names.input, &names.output, &names.dead_letter],
        ctx.partitions,
    )
    .await?;
    let (rate, _) = ctx.audio_format()?;
    let chunk_ms = ctx.args.memory_chunk_ms.unwrap_or_else(|| {
        ((ctx.settings.dsp.frame_length as u64 - 1) * 1000 / u64::from(rate)).max(1)
    });
    let chunk_s = chunk_ms as f64 / 1000.0;
    let expect = ctx.expect(streams, chunk_s, chunk_ms)?;
    say(format!(
        "memory: {streams} streams × one {chunk_ms} ms chunk, {}",
        if eos {
            "with audio.eos (state freed)"
        } else {
            "without audio.eos (state stays live)"
        }
    ));
    let mut worker = ctx.spawn_worker(&names, None, &tag)?;
    worker.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = proc_status_bytes(worker.pid, "VmRSS").unwrap_or(0);
    ctx.produce(
        &mut ctx.produce_command(&input, streams, chunk_s, chunk_ms, "mem-", Pace::Bulk, eos),
        &format!("produce-{tag}.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(ctx.args.run_timeout);
    loop {
        worker.check_alive()?;
        if let Ok(scrape) = worker.scrape().await {
            let consumed = scrape.get("messages_consumed_total")? >= expect.messages as f64;
            let written = scrape.get("mongo_documents_written_total")? >= expect.records as f64;
            let swept = eos || scrape.get("live_streams")? >= streams as f64;
            if consumed && written && swept {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("memory run {tag} timed out");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the loop settle (idle sweeps) before reading RSS.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let scrape = worker.scrape().await?;
    let rss_after = proc_status_bytes(worker.pid, "VmRSS").unwrap_or(0);
    let hwm = proc_status_bytes(worker.pid, "VmHWM").unwrap_or(0);
    let (clean, run_health) = worker.stop().await?;
    if !ctx.args.keep {
        let _ = ctx.mongo().await?.database(&names.database).drop().await;
    }
    Ok(MemoryRun {
        streams,
        chunk_ms,
        eos,
        records_written: scrape.get("mongo_documents_written_total")?,
        live_streams: scrape.get("live_streams")?,
        stream_state_bytes_metric: scrape.get("stream_state_bytes")?,
        rss_before_mb: round2(rss_before as f64 / 1e6),
        rss_after_mb: round2(rss_after as f64 / 1e6),
        peak_rss_mb: round2(hwm as f64 / 1e6),
        clean_exit: clean,
        run_health,
    })
}

/// Live vs freed runs for every count; growth per 1000 live streams.
pub async fn memory_phase(ctx: &Ctx) -> anyhow::Result<Vec<MemoryRow>> {
    let counts: Vec<usize> = ctx
        .args
        .memory_streams
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut rows = Vec::new();
    for &streams in &counts {
        let live = memory_run(ctx, streams, false).await?;
        let freed = memory_run(ctx, streams, true).await?;
        let per_k = |a: f64, b: f64| round2((a - b) / streams as f64 * 1000.0);
        rows.push(MemoryRow {
            streams,
            rss_growth_mb_per_1000_streams: per_k(live.rss_after_mb, freed.rss_after_mb),
            peak_rss_growth_mb_per_1000_streams: per_k(live.peak_rss_mb, freed.peak_rss_mb),
            rss_growth_vs_idle_mb_per_1000_streams: per_k(live.rss_after_mb, live.rss_before_mb),
            state_metric_mb_per_1000_streams: round3(
                live.stream_state_bytes_metric / 1e6 / streams as f64 * 1000.0,
            ),
            live,
            freed,
        });
    }
    Ok(rows)
}
