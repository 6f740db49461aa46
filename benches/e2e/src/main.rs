//! `specflow-bench`: the end-to-end benchmark behind `scripts/bench.sh`.
//!
//! Against the local Kafka and MongoDB-compatible server, in one run:
//!
//! 1. **Throughput**: N streams × M seconds of audio in fixed chunks are preloaded into a fresh
//!    input topic with `specflow produce`; then `specflow run` (a separate process, fresh
//!    topics, group and database through `SPECFLOW__…` overrides) consumes it. The window runs
//!    from the first consumed message to the last record stored (both read from `/metrics`);
//!    CPU comes from `/proc/<pid>/stat`, peak RSS from `VmHWM`; the checkpoint topic's
//!    overhead comes from the worker's final scrape.
//! 2. **Ceilings** on the same data: Kafka consume-only (an rdkafka loop with the worker's
//!    consumer settings, and Kafka's own `ConsumerPerformance`), the DSP alone
//!    (`FeatureExtractor`, one thread and all threads; also DSP + record encoding), and
//!    MongoDB `insert_many` of the same records (`FeatureRecord::to_document`, the worker's
//!    code) into a scratch collection with the worker's indexes. The smallest ceiling is the
//!    bound that holds; the worker's rate is printed as a fraction of each.
//! 3. **Latency** at a steady real-time load (`specflow produce --realtime`): an observer
//!    consumes the output topic from the start and takes `receive time − source.timestamp_ms`;
//!    a poller looks up sampled records in MongoDB by `_id` and takes `first seen −
//!    source.timestamp_ms`.
//! 4. **Scaling** over `runtime.worker_threads`, and by adding instances: N processes of T
//!    threads in one consumer group on the same topic (`--instances 1x2,2x1`), with the
//!    partition split.
//! 5. **Memory** per live stream: many one-chunk streams without end-of-stream (state stays
//!    live) against the same messages with end-of-stream (state freed), RSS difference per
//!    1000 streams.
//!
//! Prints a table and writes the figures as JSON, both from one [`report::Report`]. Progress
//! goes to stderr.
//!
//! # Layout
//! - [`args`]: the command line.
//! - [`context`]: the run context: settings, names, the worker process, `/proc`, clean-up.
//! - [`throughput`], [`ceilings`], [`latency`], [`scaling`], [`instances`], [`memory`]: one
//!   file per phase.
//! - [`report`]: the typed report, its statistics and the table.
//!
//! What the integration tests use too (names, topics, the worker process, `/metrics`
//! parsing, framing arithmetic, WAV reading) comes from `specflow-test-support`.

mod args;
mod ceilings;
mod context;
mod instances;
mod latency;
mod memory;
mod procfs;
mod report;
mod scaling;
mod throughput;

use anyhow::{Context as _, bail};
use clap::Parser;
use std::time::{SystemTime, UNIX_EPOCH};

use specflow::config::Settings;

use crate::args::Args;
use crate::context::{Ctx, Pace, clean_up, clock_ticks, machine, say, service_pid};
use crate::report::{Parameters, Preload, Report, round2, round3};

/// The p99 target of the main latency run, to the output topic, in ms.
const TARGET_P99_MS: u64 = 50;

/// Every phase in order; returns the whole report.
async fn run(ctx: &Ctx) -> anyhow::Result<Report> {
    let args = &ctx.args;
    let machine = machine(ctx).await;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let parameters = Parameters {
        streams: args.streams,
        seconds: args.seconds,
        chunk_ms: args.chunk_ms,
        signal: args.signal.clone(),
        partitions: ctx.partitions,
        frame_length: ctx.settings.dsp.frame_length,
        hop_length: ctx.settings.dsp.hop_length,
        features: ctx.settings.dsp.features.clone(),
        batch_max_messages: ctx.settings.source.batch_max_messages,
        config: args.config.clone(),
    };

    // 1. Throughput.
    let expect = ctx.expect(args.streams, args.seconds, args.chunk_ms)?;
    let input = format!("{}.tp.in", ctx.run_id);
    ctx.create_topics(&[&input], ctx.partitions).await?;
    say(format!(
        "preloading {} streams × {} s ({} messages, {:.1} MB) into {input}",
        args.streams,
        args.seconds,
        expect.messages,
        expect.bytes as f64 / 1e6
    ));
    let preload_s = ctx.produce(
        &mut ctx.produce_command(
            &input,
            args.streams,
            args.seconds,
            args.chunk_ms,
            "tp-",
            Pace::Bulk,
            true,
        ),
        "produce-throughput.log",
    )?;
    let preload = Preload {
        messages: expect.messages,
        bytes: expect.bytes,
        records_expected: expect.records,
        frames_expected: expect.frames,
        audio_seconds: expect.audio_seconds,
        produce_wall_s: round3(preload_s),
        produce_messages_per_s: round2(expect.messages as f64 / preload_s),
    };
    let main = throughput::worker_run(ctx, &input, &expect, None, "main").await?;

    // 4. Scaling.
    let scaling = if args.skip_scaling {
        Vec::new()
    } else {
        scaling::scaling_phase(ctx, &input, &expect, &main, cores).await?
    };

    // 4b. Scaling by adding instances.
    let mut instance_runs = Vec::new();
    if !args.skip_instances {
        for (count, threads) in instances::layouts(&args.instances)? {
            instance_runs
                .push(instances::instances_run(ctx, &input, &expect, count, threads).await?);
        }
    }

    // 2. Ceilings on the same data.
    let mut ceilings = ceilings::ceilings(ctx, &input, &expect).await?;
    let worker_rate = main.messages_per_s;
    let bound = ceilings::rank(&mut ceilings, worker_rate);

    // 3. Latency.
    let latency = if args.skip_latency {
        None
    } else {
        let mut latency =
            latency::latency_phase(ctx, args.latency_streams, "lat", Pace::RealTime).await?;
        let p99 = latency.to_output_topic.p99_ms;
        latency.target_p99_ms = Some(TARGET_P99_MS);
        // A censored p99 (records never seen) is a miss too.
        latency.met = Some(p99.is_some_and(|p| p < TARGET_P99_MS as f64));
        let mut runs = vec![latency];
        let light = match args.latency_light_streams.as_str() {
            "auto" => {
                let chunk_s = args.chunk_ms as f64 / 1000.0;
                (0.25 * worker_rate * chunk_s).floor() as usize
            }
            n => n.parse().unwrap_or(0),
        }
        .min(args.latency_streams.saturating_sub(1));
        if light > 0 {
            runs.push(latency::latency_phase(ctx, light, "light", Pace::RealTime).await?);
        }
        if args.latency_aligned {
            let streams = args.latency_streams;
            runs.push(
                latency::latency_phase(ctx, streams, "aligned", Pace::RealTimeAligned).await?,
            );
        }
        Some(runs)
    };

    // 5. Memory.
    let memory = if args.skip_memory {
        None
    } else {
        Some(memory::memory_phase(ctx).await?)
    };
    Ok(Report {
        run_id: ctx.run_id.clone(),
        machine,
        parameters,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        logs: ctx.log_dir.clone(),
        preload,
        throughput: main,
        ceilings,
        bound,
        scaling,
        instances: instance_runs,
        latency,
        memory,
        loadavg_at_end: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string(),
    })
}

/// Loads the config, runs the phases on a Tokio runtime, cleans up, prints and writes.
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load_valid(Some(&args.config))
        .with_context(|| format!("cannot load {}", args.config.display()))?;
    let specflow = match &args.specflow {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no parent directory")?
            .join("specflow"),
    };
    if !specflow.exists() {
        bail!(
            "{} not found; build it with cargo build --release -p specflow",
            specflow.display()
        );
    }
    let run_id = format!(
        "bench-{}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs()
    );
    let log_dir = args.work_dir.join(&run_id);
    std::fs::create_dir_all(&log_dir)?;
    let ctx = Ctx {
        partitions: args
            .partitions
            .unwrap_or(settings.source.topic_partitions)
            .max(1),
        args,
        settings,
        specflow,
        run_id,
        log_dir,
        ticks: clock_ticks(),
        kafka_pid: service_pid("kafka"),
        mongo_pid: service_pid("mongo"),
        topics: Default::default(),
        databases: Default::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let result = run(&ctx).await;
        clean_up(&ctx).await;
        result
    });
    let report = result?;
    println!("{}", report.table());
    let path = ctx
        .args
        .out
        .clone()
        .unwrap_or_else(|| ctx.log_dir.join("bench.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    say(format!("figures written to {}", path.display()));
    Ok(())
}
