//! The report as a human-readable table ([`Report::table`]).

use serde::Serialize;

use super::*;

/// An optional number for the table (`-` when absent).
fn fo(v: Option<f64>, decimals: usize) -> String {
    f(v.unwrap_or(f64::NAN), decimals)
}

/// An optional value as JSON would show it (`null` when absent).
fn js<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let m = &self.machine;
        let p = &self.parameters;
        line(format!(
            "specflow end-to-end benchmark  run {}",
            self.run_id
        ));
        line(format!(
            "machine: {} cores, {}, {} GB RAM, kernel {}, load at start {}, MongoDB server {}",
            m.nproc,
            m.cpu_model,
            js(&m.ram_gb),
            m.kernel,
            m.loadavg_at_start,
            m.mongodb_server_version.as_deref().unwrap_or("?"),
        ));
        let idle = &m.idle_before_run;
        line(format!(
            "busy before the run (3 s, nothing of ours running): machine {} cores, MongoDB server {} cores, Kafka {} cores",
            f(idle.machine_busy_cores, 2),
            fo(idle.mongo_cores, 2),
            fo(idle.kafka_cores, 2)
        ));
        line(format!(
            "load: {} streams × {} s, {} ms chunks, signal {}, {} partitions, frame {}/{} hop, features {}",
            p.streams,
            js(&p.seconds),
            p.chunk_ms,
            p.signal,
            p.partitions,
            p.frame_length,
            p.hop_length,
            js(&p.features)
        ));
        let pre = &self.preload;
        line(format!(
            "preloaded {} messages ({:.1} MB, {} records expected) in {} s",
            pre.messages,
            pre.bytes as f64 / 1e6,
            pre.records_expected,
            f(pre.produce_wall_s, 1)
        ));
        line(String::new());
        line(
            "THROUGHPUT (worker process, preloaded topic; window = first consumed → last stored)"
                .into(),
        );
        line(format!(
            "  {:<10} {:>7} {:>8} {:>9} {:>8} {:>7} {:>10} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8}",
            "threads",
            "wall s",
            "×rt",
            "msg/s",
            "MB/s",
            "frames/s",
            "",
            "cpu s",
            "cores",
            "RSS MB",
            "kafka s",
            "mongo s",
            "other s"
        ));
        let rows: Vec<&ThroughputRun> = if self.scaling.is_empty() {
            vec![&self.throughput]
        } else {
            self.scaling.iter().collect()
        };
        for row in rows {
            let cpu = &row.cpu;
            line(format!(
                "  {:<10} {:>7} {:>8} {:>9} {:>8} {:>7} {:>10} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8}",
                row.worker_threads
                    .map_or("config".into(), |t| t.to_string()),
                f(row.wall_s, 2),
                f(row.x_realtime, 0),
                f(row.messages_per_s, 0),
                f(row.mb_per_s, 2),
                f(row.frames_per_s, 0),
                "",
                f(row.worker_cpu_s, 2),
                f(row.worker_cores_used, 2),
                f(row.peak_rss_mb, 0),
                fo(cpu.kafka_cpu_s, 2),
                fo(cpu.mongo_cpu_s, 2),
                f(cpu.other_processes_cpu_s, 2),
            ));
        }
        let t = &self.throughput;
        line(format!(
            "  main run: startup {} s, {} batches of {} msgs, DSP+encode {:.0}% of wall, MongoDB insert {:.0}% of wall, {} µs CPU/msg, {} docs stored, {} dead letters",
            f(t.startup_s, 1),
            js(&t.batches),
            f(t.mean_batch_messages, 0),
            t.processing_share * 100.0,
            t.mongo_write_share * 100.0,
            f(t.cpu_us_per_message, 0),
            t.stored_documents,
            js(&t.dead_letters),
        ));
        let c = &t.checkpoints;
        line(format!(
            "  checkpoints: {} per message, {} bytes per message, {} per batch; writing them {} ms per batch, {}% of wall",
            f(c.checkpoints_per_message, 2),
            f(c.checkpoint_bytes_per_message, 1),
            f(c.checkpoints_per_batch, 1),
            f(c.checkpoint_write_ms_per_batch, 3),
            f(c.checkpoint_write_share * 100.0, 2),
        ));
        if !self.instances.is_empty() {
            line(String::new());
            line("INSTANCES (one consumer group, same preloaded topic)".into());
            line(format!(
                "  {:<8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}  per instance: partitions / messages",
                "layout", "wall s", "msg/s", "×rt", "cpu s", "cores", "µs/msg"
            ));
            for row in &self.instances {
                let split: Vec<String> = row
                    .per_instance
                    .iter()
                    .map(|s| format!("{} / {}", s.assigned_partitions, s.messages))
                    .collect();
                line(format!(
                    "  {:<8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}  {}",
                    format!("{}×{}", row.instances, row.threads_each),
                    f(row.wall_s, 2),
                    f(row.messages_per_s, 0),
                    f(row.x_realtime, 0),
                    f(row.workers_cpu_s, 2),
                    f(row.workers_cores_used, 2),
                    f(row.cpu_us_per_message, 0),
                    split.join(", "),
                ));
            }
        }
        line(String::new());
        line("CEILINGS (same data, each alone)".into());
        line(format!(
            "  {:<66} {:>9} {:>8} {:>8} {:>8}",
            "ceiling", "msg/s", "MB/s", "×rt", "worker%"
        ));
        for row in &self.ceilings {
            line(format!(
                "  {:<66} {:>9} {:>8} {:>8} {:>8}",
                row.what,
                f(row.messages_per_s, 0),
                f(row.mb_per_s, 2),
                fo(row.x_realtime, 0),
                f(row.worker_ratio * 100.0, 1),
            ));
        }
        if let Some(b) = &self.bound {
            line(format!(
                "  bound that holds: {} ({} msg/s); worker at {:.1}% of it (target ≥ {:.0}%: {})",
                b.what,
                f(b.messages_per_s, 0),
                b.worker_ratio * 100.0,
                b.target_ratio * 100.0,
                if b.met { "met" } else { "MISSED" }
            ));
        }
        for l in self.latency.iter().flatten() {
            line(String::new());
            line(format!(
                "LATENCY '{}' ({} real-time streams, chunk boundaries {}, {} ms chunks = {} msg/s offered, {} s after {} s warm-up, drain ≤ {} s; {} of {} records seen)",
                l.tag,
                l.streams,
                l.chunk_boundaries,
                l.chunk_ms,
                f(l.offered_messages_per_s, 0),
                js(&l.measured_s),
                js(&l.warmup_s),
                js(&l.drain_limit_s),
                l.records_seen,
                l.records_expected
            ));
            line(format!(
                "  {:<66} {:>7} {:>9} {:>9} {:>9} {:>9}",
                "from produce (source.timestamp_ms) to",
                "n",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "max ms"
            ));
            let lookups = &l.mongodb_lookups;
            let mut rows = vec![
                (
                    "output topic (observer consuming it)".to_string(),
                    &l.to_output_topic,
                ),
                (
                    "  of which to the worker's produce call (output timestamp)".to_string(),
                    &l.to_worker_produce,
                ),
                (
                    "  and from that call to the observer".to_string(),
                    &l.worker_produce_to_observer,
                ),
                (
                    format!(
                        "MongoDB (worker's acked-write counter, /metrics every {} ms)",
                        l.mongodb_method.metrics_interval_ms
                    ),
                    &l.to_mongodb,
                ),
            ];
            if let Some(by_id) = l
                .to_mongodb_by_id_lookup
                .as_ref()
                .filter(|_| lookups.enabled)
            {
                rows.push((
                    format!(
                        "MongoDB (_id lookups every {} ms, {}; ~{} ms)",
                        lookups.interval_ms,
                        lookups.sampled,
                        f(lookups.resolution_mean_ms, 0)
                    ),
                    by_id,
                ));
            }
            for (label, s) in rows {
                line(format!(
                    "  {:<66} {:>7} {:>9} {:>9} {:>9} {:>9}",
                    label,
                    s.n,
                    s.cell(s.p50_ms),
                    s.cell(s.p95_ms),
                    s.cell(s.p99_ms),
                    s.cell(s.max_ms)
                ));
            }
            let w = &l.window;
            let whole = &l.whole_run;
            line(format!(
                "  worker: {} msg/s and {} cores in the window; whole run: {} batches of {} msgs, {} ms DSP+encode and {} ms MongoDB insert per batch ({} docs/s while inserting)",
                f(w.messages_per_s, 0),
                f(w.worker_cores_used, 2),
                js(&whole.batches),
                f(whole.mean_batch_messages, 0),
                f(whole.processing_ms_per_batch, 1),
                f(whole.mongo_write_ms_per_batch, 1),
                f(whole.mongo_docs_per_s_while_writing, 0),
            ));
            if let Some(met) = l.met {
                line(format!(
                    "  p99 < 50 ms to the output topic at the default load: {}",
                    if met { "met" } else { "MISSED" }
                ));
            }
        }
        if let Some(rows) = &self.memory {
            line(String::new());
            line("MEMORY (one-chunk streams; live = no audio.eos, freed = audio.eos)".into());
            line(format!(
                "  {:>8} {:>12} {:>12} {:>12} {:>12} {:>16} {:>16}",
                "streams",
                "live RSS MB",
                "freed RSS MB",
                "live peak",
                "freed peak",
                "MB/1000 streams",
                "metric MB/1000"
            ));
            for row in rows {
                line(format!(
                    "  {:>8} {:>12} {:>12} {:>12} {:>12} {:>16} {:>16}",
                    row.streams,
                    f(row.live.rss_after_mb, 1),
                    f(row.freed.rss_after_mb, 1),
                    f(row.live.peak_rss_mb, 1),
                    f(row.freed.peak_rss_mb, 1),
                    f(row.rss_growth_mb_per_1000_streams, 2),
                    f(row.state_metric_mb_per_1000_streams, 2),
                ));
            }
        }
        let notes = self.health_notes();
        if !notes.is_empty() {
            line(String::new());
            line("RUN HEALTH (see run_health in the JSON)".into());
            for note in notes {
                line(note);
            }
        }
        out
    }

    /// Disturbances: a service restarted under a run, or the worker logged problems.
    fn health_notes(&self) -> Vec<String> {
        let mut runs: Vec<(String, &RunHealth)> = Vec::new();
        for row in &self.scaling {
            runs.push((format!("throughput {}", row.tag), &row.run_health));
        }
        if self.scaling.is_empty() {
            runs.push(("throughput main".into(), &self.throughput.run_health));
        }
        for row in self.latency.iter().flatten() {
            runs.push((format!("latency {}", row.tag), &row.run_health));
        }
        for row in self.memory.iter().flatten() {
            runs.push((format!("memory {} live", row.streams), &row.live.run_health));
            runs.push((
                format!("memory {} freed", row.streams),
                &row.freed.run_health,
            ));
        }
        let mut notes = Vec::new();
        for (name, h) in runs {
            let restarted: Vec<&str> =
                [("Kafka", h.kafka_restarted), ("MongoDB", h.mongo_restarted)]
                    .into_iter()
                    .filter(|(_, r)| *r)
                    .map(|(n, _)| n)
                    .collect();
            let problems = h.worker_warnings_and_errors;
            if !restarted.is_empty() || problems > 0 {
                notes.push(format!(
                    "  {name}: {}{problems} worker warnings/errors{}",
                    if restarted.is_empty() {
                        String::new()
                    } else {
                        format!("{} RESTARTED during the run; ", restarted.join(" and "))
                    },
                    h.first_distinct
                        .first()
                        .map_or(String::new(), |m| format!(", first: {m}"))
                ));
            }
        }
        notes
    }
}
