//! The run context shared by every phase: the settings, the `specflow` binary, names and
//! clean-up of what a run creates, the worker process with its `/metrics`, CPU and memory
//! from `/proc`, and the machine's description.

use anyhow::{Context as _, bail};
use mongodb::bson::doc;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use specflow::config::Settings;
use specflow_test_support::{Expect, Framing, Names, Scrape, WorkerProcess, http_get};

use crate::args::Args;
pub use crate::procfs::*;
use crate::report::{CpuUse, IdleLoad, Machine, RunHealth, round2, round3};

// ---------------------------------------------------------------------------------------------
// The run context.
// ---------------------------------------------------------------------------------------------

/// Everything shared by the phases of one benchmark run.
pub struct Ctx {
    /// The command line.
    pub args: Args,
    /// The worker's config (`--config` plus environment), for Kafka, MongoDB and `[dsp]`.
    pub settings: Settings,
    /// The `specflow` binary.
    pub specflow: PathBuf,
    /// `bench-<unix seconds>`: prefix of every topic, group and database of this run.
    pub run_id: String,
    /// Where worker and producer logs go.
    pub log_dir: PathBuf,
    /// Clock ticks per second of `/proc/<pid>/stat`.
    pub ticks: f64,
    /// Partitions of every topic this run creates.
    pub partitions: i32,
    /// The broker's pid at the start (re-read at every CPU snapshot).
    pub kafka_pid: Option<u32>,
    /// The MongoDB server's pid at the start (re-read at every CPU snapshot).
    pub mongo_pid: Option<u32>,
    /// Topics created, deleted at the end.
    pub topics: Mutex<Vec<String>>,
    /// Databases used, dropped at the end.
    pub databases: Mutex<Vec<String>>,
}

/// How `specflow produce` paces the chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// As fast as possible (a preload).
    Bulk,
    /// Real time, each stream's chunk boundaries offset by its share of a chunk period, as
    /// independent sources are.
    RealTime,
    /// Real time, every stream's chunk at the same instant: the worst-case burst.
    RealTimeAligned,
}

impl Pace {
    /// How the streams cut their chunks, for the report: `bulk`, `staggered` or `aligned`.
    pub fn label(self) -> &'static str {
        match self {
            Pace::Bulk => "bulk",
            Pace::RealTime => "staggered",
            Pace::RealTimeAligned => "aligned",
        }
    }
}

impl Ctx {
    /// Fresh names for a run labelled `tag` (`<run id>.<tag>.*`), reading from `input`.
    pub fn names(&self, tag: &str, input: &str) -> Names {
        let names = Names {
            input: input.to_string(),
            ..Names::with_base(&format!("{}.{tag}", self.run_id))
        };
        self.databases
            .lock()
            .expect("lock")
            .push(names.database.clone());
        names
    }

    /// A Kafka admin client.
    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        self.settings
            .kafka
            .client_config(&Default::default())
            .map_err(|p| anyhow::anyhow!("{p}"))?
            .create()
            .context("cannot create Kafka admin client")
    }

    /// Creates topics with `partitions` each (remembered for the clean-up).
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| specflow_test_support::names::plain_topic(t, partitions))
            .collect();
        let created = specflow_test_support::create_topics(&self.admin()?, &new).await?;
        self.topics.lock().expect("lock").extend(created);
        Ok(())
    }

    /// A MongoDB client from the config's URI.
    pub async fn mongo(&self) -> anyhow::Result<mongodb::Client> {
        Ok(mongodb::Client::with_uri_str(&self.settings.mongo.uri).await?)
    }

    /// A `read_committed` consumer with the worker's librdkafka settings, reading `topic` from
    /// the start.
    pub fn consumer(&self, group: &str, extra: &[(&str, &str)]) -> anyhow::Result<StreamConsumer> {
        let mut config: ClientConfig = self
            .settings
            .kafka
            .client_config(&self.settings.kafka.consumer)
            .map_err(|p| anyhow::anyhow!("{p}"))?;
        config
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // Records show up when their transaction commits (output.exactly_once).
            .set("isolation.level", "read_committed");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        Ok(config.create()?)
    }

    #[allow(clippy::too_many_arguments)]
    /// `specflow produce` with the benchmark's signal and chunking, sending to `topic`.
    pub fn produce_command(
        &self,
        topic: &str,
        streams: usize,
        seconds: f64,
        chunk_ms: u64,
        prefix: &str,
        pace: Pace,
        eos: bool,
    ) -> Command {
        let mut command = Command::new(&self.specflow);
        command
            .arg("produce")
            .arg("--config")
            .arg(&self.args.config)
            .args(["--streams", &streams.to_string()])
            .args(["--duration", &seconds.to_string()])
            .args(["--chunk-ms", &chunk_ms.to_string()])
            .args(["--stream-prefix", prefix])
            .args(["--topic", topic])
            .env("SPECFLOW__SOURCE__TOPIC", topic);
        match signal(&self.args.signal) {
            Signal::Tone => {}
            Signal::Noise => {
                command.arg("--noise");
            }
            Signal::Wav(path) => {
                command.arg("--wav").arg(path);
            }
        }
        match pace {
            Pace::Bulk => {}
            Pace::RealTime => {
                command.arg("--realtime");
            }
            Pace::RealTimeAligned => {
                command.args(["--realtime", "--aligned"]);
            }
        }
        if !eos {
            command.arg("--no-eos");
        }
        command
    }

    /// Runs `specflow produce` to completion; returns its wall seconds.
    pub fn produce(&self, command: &mut Command, log: &str) -> anyhow::Result<f64> {
        let log_path = self.log_dir.join(log);
        let file = std::fs::File::create(&log_path)?;
        let started = Instant::now();
        let status = command
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .context("cannot run specflow produce")?;
        if !status.success() {
            bail!(
                "specflow produce failed ({status}); see {}",
                log_path.display()
            );
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Starts `specflow run` on `names` with `worker_threads` (None: the config's); topics,
    /// group, database and HTTP address through `SPECFLOW__…` overrides.
    pub fn spawn_worker(
        &self,
        names: &Names,
        threads: Option<usize>,
        tag: &str,
    ) -> anyhow::Result<Worker> {
        let port = free_port()?;
        let log = self.log_dir.join(format!("worker-{tag}.log"));
        let mut env = vec![
            ("SPECFLOW__SOURCE__TOPIC", names.input.clone()),
            ("SPECFLOW__SOURCE__GROUP_ID", names.group.clone()),
            ("SPECFLOW__SOURCE__CREATE_TOPICS", "true".into()),
            (
                "SPECFLOW__SOURCE__TOPIC_PARTITIONS",
                self.partitions.to_string(),
            ),
            ("SPECFLOW__OUTPUT__TOPIC", names.output.clone()),
            ("SPECFLOW__DEAD_LETTER__TOPIC", names.dead_letter.clone()),
            ("SPECFLOW__MONGO__DATABASE", names.database.clone()),
            ("SPECFLOW__HTTP__ENABLED", "true".into()),
            ("SPECFLOW__HTTP__ADDRESS", format!("127.0.0.1:{port}")),
        ];
        if let Some(threads) = threads {
            env.push(("SPECFLOW__RUNTIME__WORKER_THREADS", threads.to_string()));
        }
        let process = WorkerProcess::start(&self.specflow, &self.args.config, &log, env)
            .context("cannot start specflow run")?;
        Ok(Worker {
            pid: process.id(),
            process,
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log,
            started: Instant::now(),
            services: service_pids(),
        })
    }

    /// CPU seconds of the worker, the broker, the database server, this process and the
    /// machine, now.
    pub fn cpu_snapshot(&self, worker: u32, producer: Option<u32>) -> CpuSnapshot {
        let cpu = |pid: Option<u32>| pid.and_then(|p| proc_cpu_seconds(p, self.ticks));
        // Re-read the services' pids: a restart in between makes their deltas unknown.
        let kafka_pid = service_pid("kafka").or(self.kafka_pid);
        let mongo_pid = service_pid("mongo").or(self.mongo_pid);
        let (busy, total) = machine_cpu(self.ticks);
        CpuSnapshot {
            at: Instant::now(),
            worker: cpu(Some(worker)).unwrap_or(0.0),
            kafka: cpu(kafka_pid).map(|c| (kafka_pid.unwrap_or(0), c)),
            mongo: cpu(mongo_pid).map(|c| (mongo_pid.unwrap_or(0), c)),
            bench: cpu(Some(std::process::id())).unwrap_or(0.0),
            producer: cpu(producer),
            busy,
            total,
        }
    }
}

/// A running `specflow run` process; killed on drop if still running.
pub struct Worker {
    /// The process.
    process: WorkerProcess,
    /// Its pid.
    pub pid: u32,
    /// Its `/metrics` address (127.0.0.1 and a free port).
    pub address: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
    /// When it was spawned.
    pub started: Instant,
    /// The services' pids when the worker started (a change means a restart).
    pub services: (Option<u32>, Option<u32>),
}

impl Worker {
    /// One scrape of the worker's `/metrics`.
    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        let (status, body) = http_get(self.address, "/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(Scrape::parse(&body))
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.process.try_wait()? {
            bail!(
                "worker exited early ({status}); log {}:\n{}",
                self.log.display(),
                tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// Waits until the worker has its partitions and MongoDB: `/readyz` answers 200, or its
    /// only complaint is "kafka unreachable", which an idle worker reports until its first
    /// message arrives (it sets Kafka healthy only on a received message). Returns the last
    /// `/readyz` body seen.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            self.check_alive()?;
            if let Ok((status, body)) = http_get(self.address, "/readyz").await {
                let only_kafka = body.contains("kafka unreachable")
                    && !body.contains("no partitions assigned")
                    && !body.contains("mongodb unreachable")
                    && !body.contains("paused")
                    && !body.contains("draining");
                if status == 200 || only_kafka {
                    return Ok(body);
                }
                last = body;
            }
            if Instant::now() > deadline {
                bail!(
                    "worker not ready after {timeout:?} (/readyz: {last}); log {}:\n{}",
                    self.log.display(),
                    tail(&self.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits for the drain; returns whether it exited 0, and the disturbances
    /// of the run ([`run_health`]).
    pub async fn stop(mut self) -> anyhow::Result<(bool, RunHealth)> {
        let clean = self.drain().await?;
        Ok((clean, run_health(&self.log, self.services)))
    }

    /// SIGTERM, then up to 45 s for the process to exit (else SIGKILL).
    async fn drain(&mut self) -> anyhow::Result<bool> {
        let _ = self.process.sigterm();
        let deadline = Instant::now() + Duration::from_secs(45);
        while Instant::now() < deadline {
            if let Some(status) = self.process.try_wait()? {
                return Ok(status.success());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        say(format!(
            "worker {} did not stop within 45 s; killing it",
            self.pid
        ));
        let _ = self.process.kill();
        Ok(false)
    }
}

/// The broker's and the MongoDB server's pids now (see [`service_pid`]).
pub fn service_pids() -> (Option<u32>, Option<u32>) {
    (service_pid("kafka"), service_pid("mongo"))
}

/// Whether a worker run was disturbed: a service restarted (its pid changed) since the
/// worker started, and the warnings and errors the worker logged (counted, first few shown).
pub fn run_health(log: &Path, services_at_start: (Option<u32>, Option<u32>)) -> RunHealth {
    let now = service_pids();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut count = 0;
    let mut distinct: Vec<String> = Vec::new();
    for line in text.lines() {
        let plain = strip_ansi(line);
        let Some(at) = plain.find(" WARN ").or_else(|| plain.find(" ERROR ")) else {
            continue;
        };
        count += 1;
        let message: String = plain[at + 1..].chars().take(160).collect();
        let key: String = message.chars().take(60).collect();
        if distinct.len() < 5 && !distinct.iter().any(|d| d.starts_with(&key)) {
            distinct.push(message);
        }
    }
    RunHealth {
        kafka_restarted: services_at_start.0 != now.0,
        mongo_restarted: services_at_start.1 != now.1,
        worker_warnings_and_errors: count,
        first_distinct: distinct,
    }
}

/// A log line without its colour escapes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// CPU counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    /// When it was taken.
    pub at: Instant,
    /// CPU seconds of the worker.
    worker: f64,
    /// (pid, CPU seconds) of the broker.
    kafka: Option<(u32, f64)>,
    /// (pid, CPU seconds) of the MongoDB server.
    mongo: Option<(u32, f64)>,
    /// CPU seconds of this process.
    bench: f64,
    /// CPU seconds of the `specflow produce` process, when one runs.
    producer: Option<f64>,
    /// Machine-wide busy CPU seconds.
    busy: f64,
    /// Machine-wide total CPU seconds (busy + idle).
    total: f64,
}

impl CpuSnapshot {
    /// CPU seconds used between `self` and `later`, per process and machine-wide.
    pub fn until(&self, later: &CpuSnapshot) -> CpuUse {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let same_process = |a: Option<(u32, f64)>, b: Option<(u32, f64)>| match (a, b) {
            (Some((pa, a)), Some((pb, b))) if pa == pb => Some(b - a),
            _ => None,
        };
        let worker = later.worker - self.worker;
        let kafka = same_process(self.kafka, later.kafka);
        let mongo = same_process(self.mongo, later.mongo);
        let bench = later.bench - self.bench;
        let producer = delta(self.producer, later.producer);
        let busy = later.busy - self.busy;
        let cores = if later.total > self.total {
            (later.total - self.total) / wall.max(1e-9)
        } else {
            f64::NAN
        };
        let known =
            worker + kafka.unwrap_or(0.0) + mongo.unwrap_or(0.0) + bench + producer.unwrap_or(0.0);
        CpuUse {
            wall_s: round3(wall),
            worker_cpu_s: round3(worker),
            kafka_cpu_s: kafka.map(round3),
            mongo_cpu_s: mongo.map(round3),
            bench_cpu_s: round3(bench),
            producer_cpu_s: producer.map(round3),
            machine_busy_cpu_s: round3(busy),
            machine_cores_seen: round2(cores),
            other_processes_cpu_s: round3((busy - known).max(0.0)),
        }
    }
}

/// The audio the benchmark sends.
pub enum Signal {
    /// `specflow produce`'s default 440 Hz tone, 16 kHz.
    Tone,
    /// White noise (`--noise`), 16 kHz.
    Noise,
    /// A WAV file (`--wav`), looped, at its own rate and channels.
    Wav(PathBuf),
}

/// Parses `--signal`: `tone`, `noise` or `wav:PATH` (anything else: the tone).
pub fn signal(spec: &str) -> Signal {
    match spec {
        "noise" => Signal::Noise,
        s if s.starts_with("wav:") => Signal::Wav(PathBuf::from(&s[4..])),
        _ => Signal::Tone,
    }
}

impl Ctx {
    /// Sample rate and channels of the benchmark's audio.
    pub fn audio_format(&self) -> anyhow::Result<(u32, u16)> {
        Ok(match signal(&self.args.signal) {
            Signal::Wav(path) => {
                let audio = specflow::audio::wav::read_wav(&path)?;
                (audio.sample_rate, audio.channels)
            }
            _ => (16_000, 1),
        })
    }

    /// The framing of the worker's `[dsp]`.
    pub fn framing(&self) -> Framing {
        Framing::of(&self.settings.dsp)
    }

    /// (chunk index, first frame) of every record of one stream of `seconds`, cut like
    /// `specflow produce` does.
    pub fn record_chunks(&self, seconds: f64, chunk_ms: u64) -> anyhow::Result<Vec<(u64, u64)>> {
        let (rate, _) = self.audio_format()?;
        let samples = (seconds * f64::from(rate)).round() as u64;
        let chunk = (u64::from(rate) * chunk_ms / 1000).max(1);
        Ok(self.framing().record_chunks(samples, chunk))
    }

    /// Messages, bytes, records and frames of `streams` streams of `seconds` each, with the
    /// same chunking as `specflow produce` and the framing of `[dsp]`.
    pub fn expect(&self, streams: usize, seconds: f64, chunk_ms: u64) -> anyhow::Result<Expect> {
        let (rate, channels) = self.audio_format()?;
        Ok(self
            .framing()
            .expect(streams, seconds, chunk_ms, rate, channels))
    }
}

/// nproc, CPU model, RAM, kernel, load, service versions.
pub async fn machine(ctx: &Ctx) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map_or("unknown".to_string(), |(_, m)| m.trim().to_string());
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|r| r.trim().to_string()))
        .unwrap_or_default();
    let mem_gb = mem_total
        .split_whitespace()
        .next()
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| round2(kb * 1024.0 / 1e9));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mongo_version = match ctx.mongo().await {
        Ok(client) => client
            .database("admin")
            .run_command(doc! { "buildInfo": 1 })
            .await
            .ok()
            .map(|d| {
                let version = d.get_str("version").unwrap_or("?").to_string();
                match d.get_str("ferretdbVersion") {
                    Ok(ferretdb) => format!("{version} (FerretDB {ferretdb})"),
                    Err(_) => version,
                }
            }),
        Err(_) => None,
    };
    // What the machine and the services do before the benchmark starts (others' load).
    let cpu = |service: &str| service_pid(service).and_then(|p| proc_cpu_seconds(p, ctx.ticks));
    let before = (cpu("kafka"), cpu("mongo"), machine_cpu(ctx.ticks).0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = (cpu("kafka"), cpu("mongo"), machine_cpu(ctx.ticks).0);
    let cores = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round2((b - a) / 3.0));
    Machine {
        idle_before_run: IdleLoad {
            kafka_cores: cores(before.0, after.0),
            mongo_cores: cores(before.1, after.1),
            machine_busy_cores: round2((after.2 - before.2) / 3.0),
        },
        nproc: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model: model,
        ram_gb: mem_gb,
        kernel,
        loadavg_at_start: load,
        mongodb_server_version: mongo_version,
        kafka_pid: ctx.kafka_pid,
        mongo_pid: ctx.mongo_pid,
    }
}

/// Deletes what the run created (unless `--keep`).
pub async fn clean_up(ctx: &Ctx) {
    if ctx.args.keep {
        return;
    }
    let topics = ctx.topics.lock().expect("lock").clone();
    if !topics.is_empty()
        && let Ok(admin) = ctx.admin()
    {
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ = admin.delete_topics(&refs, &AdminOptions::new()).await;
    }
    let databases = ctx.databases.lock().expect("lock").clone();
    if let Ok(client) = ctx.mongo().await {
        for database in databases {
            let _ = client.database(&database).drop().await;
        }
    }
}
