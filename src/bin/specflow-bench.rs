//! `specflow-bench`: the end-to-end benchmark behind `scripts/bench.sh`.
//!
//! Against the local Kafka and MongoDB-compatible server, in one run:
//!
//! 1. **Throughput**: N streams × M seconds of audio in fixed chunks are preloaded into a fresh
//!    input topic with `specflow produce`; then `specflow run` (a separate process, fresh
//!    topics, group and database through `SPECFLOW__…` overrides) consumes it. The window runs
//!    from the first consumed message to the last record stored (both read from `/metrics`);
//!    CPU comes from `/proc/<pid>/stat`, peak RSS from `VmHWM`.
//! 2. **Ceilings** on the same data: Kafka consume-only (an rdkafka loop with the worker's
//!    consumer settings, and Kafka's own `ConsumerPerformance`), the DSP alone
//!    ([`FeatureExtractor`], one thread and all threads; also DSP + record encoding), and
//!    MongoDB `insert_many` of the same records ([`FeatureRecord::to_document`], the worker's
//!    code) into a scratch collection with the worker's indexes. The smallest ceiling is the
//!    bound that holds; the worker's rate is printed as a fraction of each.
//! 3. **Latency** at a steady real-time load (`specflow produce --realtime`): an observer
//!    consumes the output topic from the start and takes `receive time − source.timestamp_ms`;
//!    a poller looks up sampled records in MongoDB by `_id` and takes `first seen −
//!    source.timestamp_ms`.
//! 4. **Scaling** over `runtime.worker_threads`.
//! 5. **Memory** per live stream: many one-chunk streams without end-of-stream (state stays
//!    live) against the same messages with end-of-stream (state freed), RSS difference per
//!    1000 streams.
//!
//! Prints a table and writes the figures as JSON. Progress goes to stderr.

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::StreamExt as _;
use mongodb::bson::{Document, doc};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use specflow::config::Settings;
use specflow::dsp::{FeatureExtractor, FrameBatch};
use specflow::record::{FeatureRecord, SourcePosition};

/// Command-line flags of `specflow-bench` (all have defaults that finish in a few minutes on
/// a 2-core machine).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "specflow-bench",
    about = "End-to-end benchmark of specflow against local Kafka and MongoDB",
    args_override_self = true
)]
struct Args {
    /// Config file of the worker (Kafka, MongoDB, [dsp]); topics, group, database and HTTP
    /// address are overridden per run.
    #[arg(long, default_value = "configs/specflow.toml")]
    config: PathBuf,
    /// The `specflow` binary (default: next to this one).
    #[arg(long)]
    specflow: Option<PathBuf>,
    /// `scripts/services.sh`, for Kafka's `ConsumerPerformance`.
    #[arg(long, default_value = "scripts/services.sh")]
    services_script: PathBuf,
    /// Directory for worker and producer logs (a subdirectory per run).
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// Write the figures as JSON to this file (default: `bench.json` in the run's log
    /// directory under --work-dir).
    #[arg(long)]
    out: Option<PathBuf>,

    /// Throughput: concurrent streams preloaded into the input topic.
    #[arg(long, default_value_t = 20)]
    streams: usize,
    /// Throughput: seconds of audio per stream.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Chunk (message) duration in milliseconds, for every phase.
    #[arg(long, default_value_t = 100)]
    chunk_ms: u64,
    /// Audio: `tone` (440 Hz), `noise`, or `wav:PATH`; 16 kHz s16 mono unless a WAV says
    /// otherwise.
    #[arg(long, default_value = "tone")]
    signal: String,
    /// Partitions of every input topic (default: `source.topic_partitions` of the config).
    #[arg(long)]
    partitions: Option<i32>,
    /// Give up on a worker run after this many seconds.
    #[arg(long, default_value_t = 600)]
    run_timeout: u64,
    /// `/metrics` polling interval while measuring, in milliseconds.
    #[arg(long, default_value_t = 50)]
    metrics_poll_ms: u64,

    /// Scaling: comma-separated `runtime.worker_threads` values (default: 1, 2, 4, … up to
    /// and including the number of cores). The value equal to the core count reuses the main
    /// run (`worker_threads = 0` resolves to it).
    #[arg(long)]
    threads: Option<String>,
    /// DSP ceilings: passes per variant (the fastest counts).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Skip the scaling runs.
    #[arg(long)]
    skip_scaling: bool,
    /// Skip Kafka's Java `ConsumerPerformance` ceiling (the rdkafka ceiling still runs).
    #[arg(long)]
    skip_java_ceiling: bool,
    /// MongoDB ceiling: documents per `insert_many` (default: `source.batch_max_messages`,
    /// the worker's largest batch).
    #[arg(long)]
    mongo_batch: Option<usize>,
    /// MongoDB ceiling: insert the first this many of the records (0: all).
    #[arg(long, default_value_t = 2000)]
    mongo_docs: usize,

    /// Latency: concurrent real-time streams.
    #[arg(long, default_value_t = 200)]
    latency_streams: usize,
    /// Latency: measured seconds (after the warm-up).
    #[arg(long, default_value_t = 20.0)]
    latency_seconds: f64,
    /// Latency: warm-up seconds excluded from the figures.
    #[arg(long, default_value_t = 5.0)]
    warmup_seconds: f64,
    /// Latency: polling interval in milliseconds of the worker's `/metrics` (MongoDB
    /// acknowledged writes) and of the `_id` lookups.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// Latency: also look up by `_id` in MongoDB the records of one stream in this many
    /// (0 = off). Off by default: on FerretDB 1.24 (SQLite) every `_id` lookup scans the whole
    /// collection, which takes CPU from the worker's own inserts.
    #[arg(long, default_value_t = 0)]
    mongo_lookups: usize,
    /// Latency: at most this many seconds after the load ends for the last records to show
    /// up; records still missing count as slower than every seen one.
    #[arg(long, default_value_t = 15.0)]
    latency_drain_seconds: f64,
    /// Latency: a second, lighter run with this many streams; `auto` = a quarter of the
    /// measured throughput (in streams of real-time audio), `0` = none.
    #[arg(long, default_value = "auto")]
    latency_light_streams: String,
    /// Skip the latency phase.
    #[arg(long)]
    skip_latency: bool,

    /// Memory: comma-separated counts of one-chunk streams.
    #[arg(long, default_value = "5000,20000")]
    memory_streams: String,
    /// Memory: chunk length in ms (default: one sample less than a frame, so the stream's
    /// state is live but no record is written).
    #[arg(long)]
    memory_chunk_ms: Option<u64>,
    /// Skip the memory phase.
    #[arg(long)]
    skip_memory: bool,

    /// Keep the topics and databases the run created.
    #[arg(long)]
    keep: bool,
}

// ---------------------------------------------------------------------------------------------
// Small helpers: time, /proc, HTTP, metrics.
// ---------------------------------------------------------------------------------------------

/// Wall-clock time in Unix milliseconds, with sub-millisecond precision.
fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Progress line on stderr.
fn say(message: impl AsRef<str>) {
    eprintln!("bench: {}", message.as_ref());
}

/// Clock ticks per second for `/proc/<pid>/stat` (from `getconf CLK_TCK`, else 100).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
fn proc_cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command name start at field 3 (state); utime is 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in bytes.
fn proc_status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// Machine-wide busy and total CPU seconds (all cores) from `/proc/stat`.
fn machine_cpu(ticks: f64) -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: f64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    ((total - idle) / ticks, total / ticks)
}

/// The pid written by `scripts/services.sh` for a service, when that process is alive.
fn service_pid(service: &str) -> Option<u32> {
    let state =
        std::env::var("SPECFLOW_STATE_DIR").unwrap_or_else(|_| "/tmp/specflow-services".into());
    let pid: u32 = std::fs::read_to_string(Path::new(&state).join(service).join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// A free TCP port on 127.0.0.1 (bound and released; a small race is accepted).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `GET path` on 127.0.0.1:port; returns the status code and body.
async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut buffer = Vec::new();
        stream.read_to_end(&mut buffer).await?;
        anyhow::Ok(buffer)
    };
    let buffer = tokio::time::timeout(Duration::from_secs(3), request)
        .await
        .context("HTTP request timed out")??;
    let text = String::from_utf8_lossy(&buffer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// One scrape of `/metrics`: sample name (with labels, if any) → value.
#[derive(Debug, Clone, Default)]
struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// Parses the Prometheus text format (samples only).
    fn parse(body: &str) -> Self {
        let mut values = HashMap::new();
        for line in body.lines() {
            if line.starts_with('#') {
                continue;
            }
            let mut parts = line.rsplitn(2, ' ');
            if let (Some(value), Some(name)) = (parts.next(), parts.next())
                && let Ok(v) = value.trim().parse::<f64>()
            {
                values.insert(name.trim().to_string(), v);
            }
        }
        Self(values)
    }

    /// A metric without labels (`specflow_` prefix added), 0 when absent.
    fn get(&self, name: &str) -> f64 {
        self.0
            .get(&format!("specflow_{name}"))
            .copied()
            .unwrap_or(0.0)
    }

    /// Sum over every label set of a metric.
    fn sum_of(&self, name: &str) -> f64 {
        let prefix = format!("specflow_{name}{{");
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum::<f64>()
            + 0.0
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50/p95/p99/max/mean of latencies in milliseconds, as JSON.
fn latency_summary(values: &mut [f64]) -> Value {
    values.sort_by(f64::total_cmp);
    let mean = if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    };
    json!({
        "n": values.len(),
        "p50_ms": round2(percentile(values, 50.0)),
        "p95_ms": round2(percentile(values, 95.0)),
        "p99_ms": round2(percentile(values, 99.0)),
        "max_ms": round2(values.last().copied().unwrap_or(f64::NAN)),
        "mean_ms": round2(mean),
        "min_ms": round2(values.first().copied().unwrap_or(f64::NAN)),
    })
}

/// Rounds to two decimals for the JSON (NaN becomes null there).
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Reads a number out of a JSON object (NaN when absent).
fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// The run context: settings, names, services, the worker process.
// ---------------------------------------------------------------------------------------------

/// Everything shared by the phases of one benchmark run.
struct Ctx {
    /// The command line.
    args: Args,
    /// The worker's config (`--config` plus environment), for Kafka, MongoDB and `[dsp]`.
    settings: Settings,
    /// The `specflow` binary.
    specflow: PathBuf,
    /// `bench-<unix seconds>`: prefix of every topic, group and database of this run.
    run_id: String,
    /// Where worker and producer logs go.
    log_dir: PathBuf,
    /// Clock ticks per second of `/proc/<pid>/stat`.
    ticks: f64,
    /// Partitions of every topic this run creates.
    partitions: i32,
    /// The broker's pid at the start (re-read at every CPU snapshot).
    kafka_pid: Option<u32>,
    /// The MongoDB server's pid at the start (re-read at every CPU snapshot).
    mongo_pid: Option<u32>,
    /// Topics created, deleted at the end.
    topics: std::sync::Mutex<Vec<String>>,
    /// Databases used, dropped at the end.
    databases: std::sync::Mutex<Vec<String>>,
}

/// Topics, group and database of one worker run.
struct Names {
    /// `source.topic`.
    input: String,
    /// `output.topic`.
    output: String,
    /// `dead_letter.topic`.
    dead_letter: String,
    /// `source.group_id`.
    group: String,
    /// `mongo.database`.
    database: String,
}

impl Ctx {
    /// Fresh names for a run labelled `tag`, reading from `input`.
    fn names(&self, tag: &str, input: &str) -> Names {
        let base = format!("{}.{tag}", self.run_id);
        let names = Names {
            input: input.to_string(),
            output: format!("{base}.out"),
            dead_letter: format!("{base}.dlq"),
            group: format!("{base}.group"),
            database: base.replace('.', "_"),
        };
        self.databases
            .lock()
            .expect("lock")
            .push(names.database.clone());
        names
    }

    /// A Kafka admin client.
    fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        self.settings
            .kafka
            .client_config(&Default::default())
            .map_err(|p| anyhow::anyhow!("{p}"))?
            .create()
            .context("cannot create Kafka admin client")
    }

    /// Creates topics (remembered for the clean-up).
    async fn create_topics(&self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        let admin = self.admin()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        for result in admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await?
        {
            match result {
                Ok(topic) => self.topics.lock().expect("lock").push(topic),
                Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
            }
        }
        Ok(())
    }

    /// A MongoDB client from the config's URI.
    async fn mongo(&self) -> anyhow::Result<mongodb::Client> {
        Ok(mongodb::Client::with_uri_str(&self.settings.mongo.uri).await?)
    }

    /// A consumer with the worker's librdkafka settings, reading `topic` from the start.
    fn consumer(&self, group: &str, extra: &[(&str, &str)]) -> anyhow::Result<StreamConsumer> {
        let mut config: ClientConfig = self
            .settings
            .kafka
            .client_config(&self.settings.kafka.consumer)
            .map_err(|p| anyhow::anyhow!("{p}"))?;
        config
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        Ok(config.create()?)
    }

    #[allow(clippy::too_many_arguments)]
    /// `specflow produce` with the benchmark's signal and chunking, sending to `topic`.
    fn produce_command(
        &self,
        topic: &str,
        streams: usize,
        seconds: f64,
        chunk_ms: u64,
        prefix: &str,
        realtime: bool,
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
        if realtime {
            command.arg("--realtime");
        }
        if !eos {
            command.arg("--no-eos");
        }
        command
    }

    /// Runs `specflow produce` to completion; returns its wall seconds.
    fn produce(&self, command: &mut Command, log: &str) -> anyhow::Result<f64> {
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

    /// Starts `specflow run` on `names` with `worker_threads` (None: the config's).
    fn spawn_worker(
        &self,
        names: &Names,
        threads: Option<usize>,
        tag: &str,
    ) -> anyhow::Result<Worker> {
        let port = free_port()?;
        let log = self.log_dir.join(format!("worker-{tag}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(&self.specflow);
        command
            .arg("run")
            .arg("--config")
            .arg(&self.args.config)
            .env("SPECFLOW__SOURCE__TOPIC", &names.input)
            .env("SPECFLOW__SOURCE__GROUP_ID", &names.group)
            .env("SPECFLOW__SOURCE__CREATE_TOPICS", "true")
            .env(
                "SPECFLOW__SOURCE__TOPIC_PARTITIONS",
                self.partitions.to_string(),
            )
            .env("SPECFLOW__OUTPUT__TOPIC", &names.output)
            .env("SPECFLOW__DEAD_LETTER__TOPIC", &names.dead_letter)
            .env("SPECFLOW__MONGO__DATABASE", &names.database)
            .env("SPECFLOW__HTTP__ENABLED", "true")
            .env("SPECFLOW__HTTP__ADDRESS", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if let Some(threads) = threads {
            command.env("SPECFLOW__RUNTIME__WORKER_THREADS", threads.to_string());
        }
        let child = command.spawn().context("cannot start specflow run")?;
        Ok(Worker {
            pid: child.id(),
            child,
            port,
            log,
            started: Instant::now(),
            services: service_pids(),
        })
    }

    /// CPU seconds of the worker, the broker, the database server, this process and the
    /// machine, now.
    fn cpu_snapshot(&self, worker: u32, producer: Option<u32>) -> CpuSnapshot {
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
struct Worker {
    /// The process.
    child: Child,
    /// Its pid.
    pid: u32,
    /// Its `/metrics` port on 127.0.0.1.
    port: u16,
    /// Its log file.
    log: PathBuf,
    /// When it was spawned.
    started: Instant,
    /// The services' pids when the worker started (a change means a restart).
    services: (Option<u32>, Option<u32>),
}

impl Worker {
    /// One scrape of the worker's `/metrics`.
    async fn scrape(&self) -> anyhow::Result<Scrape> {
        let (status, body) = http_get(self.port, "/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(Scrape::parse(&body))
    }

    /// Fails when the process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
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
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            self.check_alive()?;
            if let Ok((status, body)) = http_get(self.port, "/readyz").await {
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

    /// SIGTERM, then waits for the drain; returns whether it exited 0.
    async fn stop(mut self) -> anyhow::Result<bool> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(45);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        say(format!(
            "worker {} did not stop within 45 s; killing it",
            self.pid
        ));
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(false)
    }
}

impl Drop for Worker {
    /// Kills the worker if a phase failed before stopping it.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The broker's and the MongoDB server's pids now (see [`service_pid`]).
fn service_pids() -> (Option<u32>, Option<u32>) {
    (service_pid("kafka"), service_pid("mongo"))
}

/// Whether a worker run was disturbed: a service restarted (its pid changed) since the
/// worker started, and the warnings and errors the worker logged (counted, first few shown).
fn run_health(log: &Path, services_at_start: (Option<u32>, Option<u32>)) -> Value {
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
    json!({
        "kafka_restarted": services_at_start.0 != now.0,
        "mongo_restarted": services_at_start.1 != now.1,
        "worker_warnings_and_errors": count,
        "first_distinct": distinct,
    })
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
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// CPU counters at one instant.
#[derive(Debug, Clone, Copy)]
struct CpuSnapshot {
    /// When it was taken.
    at: Instant,
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
    fn until(&self, later: &CpuSnapshot) -> Value {
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
        json!({
            "wall_s": round3(wall),
            "worker_cpu_s": round3(worker),
            "kafka_cpu_s": kafka.map(round3),
            "mongo_cpu_s": mongo.map(round3),
            "bench_cpu_s": round3(bench),
            "producer_cpu_s": producer.map(round3),
            "machine_busy_cpu_s": round3(busy),
            "machine_cores_seen": round2(cores),
            "other_processes_cpu_s": round3((busy - known).max(0.0)),
        })
    }
}

/// Rounds to three decimals for the JSON.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The audio the benchmark sends.
enum Signal {
    /// `specflow produce`'s default 440 Hz tone, 16 kHz.
    Tone,
    /// White noise (`--noise`), 16 kHz.
    Noise,
    /// A WAV file (`--wav`), looped, at its own rate and channels.
    Wav(PathBuf),
}

/// Parses `--signal`: `tone`, `noise` or `wav:PATH` (anything else: the tone).
fn signal(spec: &str) -> Signal {
    match spec {
        "noise" => Signal::Noise,
        s if s.starts_with("wav:") => Signal::Wav(PathBuf::from(&s[4..])),
        _ => Signal::Tone,
    }
}

/// What a load of `streams` × `seconds` must produce.
#[derive(Debug, Clone, Copy, Default)]
struct Expect {
    /// Input messages.
    messages: u64,
    /// Input payload bytes.
    bytes: u64,
    /// Feature records (messages that complete at least one frame).
    records: u64,
    /// Frames over all streams.
    frames: u64,
    /// Seconds of audio over all streams.
    audio_seconds: f64,
}

impl Ctx {
    /// Sample rate and channels of the benchmark's audio.
    fn audio_format(&self) -> anyhow::Result<(u32, u16)> {
        Ok(match signal(&self.args.signal) {
            Signal::Wav(path) => {
                let spec = hound::WavReader::open(&path)?.spec();
                (spec.sample_rate, spec.channels)
            }
            _ => (16_000, 1),
        })
    }

    /// The chunks of one stream of `seconds` cut like `specflow produce` does: for each
    /// chunk, the number of frames completed once it is processed (`[dsp]` framing).
    fn chunk_frames(&self, seconds: f64, chunk_ms: u64) -> anyhow::Result<(u64, Vec<u64>)> {
        let (rate, _) = self.audio_format()?;
        let samples = (seconds * f64::from(rate)).round() as u64;
        let chunk = (u64::from(rate) * chunk_ms / 1000).max(1);
        let n = self.settings.dsp.frame_length as u64;
        let hop = self.settings.dsp.hop_length as u64;
        // With pYIN a frame is emitted `pitch_lag_frames` frames after it is complete; the
        // last chunk (audio.eos) emits the rest.
        let lag = match self.settings.dsp.pitch_method {
            specflow::dsp::PitchMethod::Pyin
                if self
                    .settings
                    .dsp
                    .selected_features()
                    .contains(&specflow::dsp::FeatureName::F0) =>
            {
                self.settings.dsp.pitch_lag_frames as u64
            }
            _ => 0,
        };
        let mut done = Vec::new();
        let mut start = 0;
        while start < samples {
            let end = (start + chunk).min(samples);
            let complete = if end >= n { (end - n) / hop + 1 } else { 0 };
            done.push(if end == samples {
                complete
            } else {
                complete.saturating_sub(lag)
            });
            start = end;
        }
        Ok((samples, done))
    }

    /// (chunk index, first frame) of every record of one stream of `seconds`.
    fn record_chunks(&self, seconds: f64, chunk_ms: u64) -> anyhow::Result<Vec<(u64, u64)>> {
        let (_, done) = self.chunk_frames(seconds, chunk_ms)?;
        let mut previous = 0;
        let mut records = Vec::new();
        for (chunk, &frames) in done.iter().enumerate() {
            if frames > previous {
                records.push((chunk as u64, previous));
            }
            previous = frames;
        }
        Ok(records)
    }

    /// Messages, bytes, records and frames of `streams` streams of `seconds` each, with the
    /// same chunking as `specflow produce` and the framing of `[dsp]`.
    fn expect(&self, streams: usize, seconds: f64, chunk_ms: u64) -> anyhow::Result<Expect> {
        let (rate, channels) = self.audio_format()?;
        let (samples, done) = self.chunk_frames(seconds, chunk_ms)?;
        let records = self.record_chunks(seconds, chunk_ms)?.len() as u64;
        let frames = done.last().copied().unwrap_or(0);
        let s = streams as u64;
        Ok(Expect {
            messages: done.len() as u64 * s,
            bytes: samples * 2 * u64::from(channels) * s,
            records: records * s,
            frames: frames * s,
            audio_seconds: samples as f64 / f64::from(rate) * streams as f64,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput: one worker run over a preloaded topic.
// ---------------------------------------------------------------------------------------------

/// Runs the worker over the preloaded `input` until every record is stored.
async fn worker_run(
    ctx: &Ctx,
    input: &str,
    expect: &Expect,
    threads: Option<usize>,
    tag: &str,
) -> anyhow::Result<Value> {
    let names = ctx.names(tag, input);
    ctx.create_topics(&[&names.output, &names.dead_letter], ctx.partitions)
        .await?;
    say(format!(
        "worker run '{tag}' (worker_threads={}) on {} messages",
        threads.map_or("config".into(), |t| t.to_string()),
        expect.messages
    ));
    let mut worker = ctx.spawn_worker(&names, threads, tag)?;
    let poll = Duration::from_millis(ctx.args.metrics_poll_ms);
    let deadline = Instant::now() + Duration::from_secs(ctx.args.run_timeout);
    let mut start: Option<(CpuSnapshot, Scrape)> = None;
    let mut last = Scrape::default();
    let end = loop {
        worker.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "run '{tag}' timed out: consumed {} written {} of {} records",
                last.get("messages_consumed_total"),
                last.get("mongo_documents_written_total"),
                expect.records
            );
        }
        let Ok(scrape) = worker.scrape().await else {
            tokio::time::sleep(poll).await;
            continue;
        };
        let snapshot = ctx.cpu_snapshot(worker.pid, None);
        if start.is_none() && scrape.get("messages_consumed_total") > 0.0 {
            start = Some((snapshot, scrape.clone()));
        }
        let done = scrape.get("mongo_documents_written_total") >= expect.records as f64
            && scrape.get("messages_consumed_total") >= expect.messages as f64;
        last = scrape;
        if done {
            break snapshot;
        }
        tokio::time::sleep(poll).await;
    };
    let (start, start_scrape) = start.context("no message consumed")?;
    let peak_rss = proc_status_bytes(worker.pid, "VmHWM").unwrap_or(0);
    let total_cpu = proc_cpu_seconds(worker.pid, ctx.ticks).unwrap_or(0.0);
    let startup_s = start.at.duration_since(worker.started).as_secs_f64();
    let cpu = start.until(&end);
    // Interpolation error of the window is at most one polling interval at each end.
    let wall = end.at.duration_since(start.at).as_secs_f64();
    let consumed_before = start_scrape.get("messages_consumed_total");
    let (log, services) = (worker.log.clone(), worker.services);
    let clean = worker.stop().await?;
    let run_health = run_health(&log, services);

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
    let frames = last.get("frames_computed_total");
    let worker_cpu = num(&cpu, "worker_cpu_s");
    let processing = last.get("processing_seconds_sum");
    let mongo_write = last.get("mongo_write_seconds_sum");
    let batches = last.get("processing_seconds_count");
    let result = json!({
        "tag": tag,
        "worker_threads": threads,
        "messages": expect.messages,
        "bytes": expect.bytes,
        "records": expect.records,
        "frames_counted": frames,
        "frames_expected": expect.frames,
        "stored_documents": stored,
        "dead_letters": last.sum_of("dead_letters_total"),
        "startup_s": round3(startup_s),
        "wall_s": round3(wall),
        "messages_in_flight_at_start": consumed_before,
        "x_realtime": round2(expect.audio_seconds / wall),
        "messages_per_s": round2(expect.messages as f64 / wall),
        "mb_per_s": round3(expect.bytes as f64 / 1e6 / wall),
        "frames_per_s": round2(expect.frames as f64 / wall),
        "records_per_s": round2(expect.records as f64 / wall),
        "worker_cpu_s": round3(worker_cpu),
        "worker_cpu_total_s": round3(total_cpu),
        "worker_cores_used": round2(worker_cpu / wall),
        "cpu_us_per_message": round2(worker_cpu * 1e6 / expect.messages as f64),
        "peak_rss_mb": round2(peak_rss as f64 / 1e6),
        "cpu": cpu,
        "batches": batches,
        "mean_batch_messages": round2(last.get("messages_consumed_total") / batches.max(1.0)),
        "processing_s": round3(processing),
        "mongo_write_s": round3(mongo_write),
        "processing_share": round3(processing / wall),
        "mongo_write_share": round3(mongo_write / wall),
        "clean_exit": clean,
        "run_health": run_health,
    });
    say(format!(
        "  {:.1} s, {:.0} msg/s, {:.0}× real time, worker {:.2} cores, peak RSS {:.0} MB",
        wall,
        expect.messages as f64 / wall,
        expect.audio_seconds / wall,
        worker_cpu / wall,
        peak_rss as f64 / 1e6
    ));
    if stored != expect.records {
        say(format!(
            "  WARNING: {stored} documents stored, {} expected",
            expect.records
        ));
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Ceilings.
// ---------------------------------------------------------------------------------------------

/// Consume-only rate of `topic` with rdkafka and the worker's consumer settings.
async fn kafka_ceiling(ctx: &Ctx, topic: &str, expect: &Expect) -> anyhow::Result<Value> {
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
    Ok(json!({
        "what": "Kafka consume, rdkafka StreamConsumer (worker's settings)",
        "messages": count,
        "wall_s": round3(wall),
        "first_message_after_s": first_after.map(round3),
        "messages_per_s": round2(count as f64 / wall),
        "mb_per_s": round3(bytes as f64 / 1e6 / wall),
    }))
}

/// Kafka's `ConsumerPerformance` (Java client) on `topic`; fetch-phase rates.
fn java_ceiling(ctx: &Ctx, topic: &str, expect: &Expect) -> anyhow::Result<Value> {
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
    Ok(json!({
        "what": "Kafka consume, Java ConsumerPerformance (fetch phase, group join excluded)",
        "messages": field("data.consumed.in.nMsg"),
        "fetch_time_ms": field("fetch.time.ms"),
        "messages_per_s": round2(field("fetch.nMsg.sec")),
        "mb_per_s": round3(field("fetch.MB.sec") * mib),
        "messages_per_s_incl_join": round2(field("nMsg.sec")),
    }))
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
    let json = if json { record.to_json()? } else { Vec::new() };
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

/// MongoDB `insert_many` (unordered, the worker's `insert_idempotent`) of the same records,
/// built by the worker's code, into a scratch collection with the worker's indexes. Only the
/// inserts are timed.
async fn mongo_ceiling(
    ctx: &Ctx,
    extractor: &FeatureExtractor,
    streams: &[StreamAudio],
    topic: &str,
) -> anyhow::Result<Value> {
    let batch_size = ctx
        .args
        .mongo_batch
        .unwrap_or(ctx.settings.source.batch_max_messages)
        .max(1);
    let database = format!("{}_mongo_ceiling", ctx.run_id.replace('.', "_"));
    ctx.databases.lock().expect("lock").push(database.clone());
    let config = specflow::sinks::mongo::MongoSinkConfig {
        database: database.clone(),
        ..ctx.settings.mongo.clone()
    };
    let sink = config.build().await?;
    sink.ensure_indexes().await?;
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
    // Encode first (not timed), then insert with the worker's concurrency, timed as a whole.
    let mut batches: Vec<Vec<mongodb::bson::RawDocumentBuf>> = vec![Vec::new()];
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
                if batches.last().is_some_and(|b| b.len() >= batch_size) {
                    batches.push(Vec::new());
                }
                batches.last_mut().expect("one batch").push(document);
                encoded += 1;
                if encoded >= limit {
                    break 'outer;
                }
            }
        }
    }
    let concurrency = ctx.settings.mongo.concurrent_writes.max(1);
    let inserts = batches.len();
    let started = Instant::now();
    let took: Vec<anyhow::Result<f64>> = futures::stream::iter(batches.iter())
        .map(|batch| async {
            let started = Instant::now();
            sink.insert_idempotent(batch).await?;
            Ok(started.elapsed().as_secs_f64())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let insert_time = started.elapsed().as_secs_f64();
    let mut slowest: f64 = 0.0;
    for t in took {
        slowest = slowest.max(t?);
    }
    let inserted = encoded;
    let stored = sink.collection().count_documents(doc! {}).await?;
    if !ctx.args.keep {
        let client = ctx.mongo().await?;
        let _ = client.database(&database).drop().await;
    }
    // Input messages per document (1 when every chunk completes a frame).
    let messages_per_doc = chunks_covered as f64 / inserted.max(1) as f64;
    let chunk_s = ctx.args.chunk_ms as f64 / 1000.0;
    let bytes_per_message = streams
        .first()
        .and_then(|s| s.chunks.first())
        .map_or(0.0, |c| c.samples.len() as f64 * 2.0);
    let docs_per_s = inserted as f64 / insert_time;
    Ok(json!({
        "what": format!("MongoDB insert_many unordered, {batch_size} docs per call, {concurrency} at once, worker's indexes"),
        "documents": inserted,
        "stored": stored,
        "inserts": inserts,
        "insert_s": round3(insert_time),
        "slowest_insert_s": round3(slowest),
        "documents_per_s": round2(docs_per_s),
        "bson_mb_per_s": round3(bson_bytes as f64 / 1e6 / insert_time),
        "mean_document_bytes": round2(bson_bytes as f64 / inserted.max(1) as f64),
        "messages_per_s": round2(docs_per_s * messages_per_doc),
        "mb_per_s": round3(docs_per_s * messages_per_doc * bytes_per_message / 1e6),
        "x_realtime": round2(docs_per_s * messages_per_doc * chunk_s),
    }))
}

/// Every ceiling on the preloaded data; returns the ceilings as JSON rows.
async fn ceilings(ctx: &Ctx, topic: &str, expect: &Expect) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    say("ceiling: Kafka consume (rdkafka)");
    let mut kafka = kafka_ceiling(ctx, topic, expect).await?;
    kafka["kind"] = json!("kafka");
    rows.push(kafka);
    if !ctx.args.skip_java_ceiling {
        say("ceiling: Kafka consume (ConsumerPerformance)");
        match java_ceiling(ctx, topic, expect) {
            Ok(mut java) => {
                java["kind"] = json!("kafka");
                rows.push(java);
            }
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
    let dsp_row = |label: &str, kind: &str, threads: usize, encode: bool| {
        say(format!("ceiling: {label}"));
        // Best of `repeat` passes: the ceiling is what the machine can do.
        let mut runs: Vec<(f64, DspTotals)> = (0..ctx.args.repeat.max(1))
            .map(|_| dsp_pass(ctx, &extractor, &streams, threads, encode, topic))
            .collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let walls: Vec<f64> = runs.iter().map(|r| round3(r.0)).collect();
        let (wall, totals) = runs[0];
        let messages = expect.messages as f64;
        json!({
            "what": label,
            "kind": kind,
            "threads": threads,
            "wall_s": round3(wall),
            "pass_walls_s": walls,
            "frames": totals.frames,
            "frames_per_s": round2(totals.frames as f64 / wall),
            "messages_per_s": round2(messages / wall),
            "mb_per_s": round3(messages * bytes_per_message / 1e6 / wall),
            "x_realtime": round2(messages * chunk_s / wall),
            "us_per_frame_per_thread": round3(wall * 1e6 * threads as f64 / totals.frames.max(1) as f64),
            "json_bytes_per_record": (totals.records > 0 && encode).then(|| round2(totals.json_bytes as f64 / totals.records as f64)),
            "bson_bytes_per_record": (totals.records > 0 && encode).then(|| round2(totals.bson_bytes as f64 / totals.records as f64)),
        })
    };
    rows.push(dsp_row("DSP only, 1 thread", "dsp_single", 1, false));
    rows.push(dsp_row(
        &format!("DSP only, {cores} threads"),
        "dsp",
        cores,
        false,
    ));
    rows.push(dsp_row(
        &format!("DSP + JSON + BSON encode, {cores} threads"),
        "dsp_encode",
        cores,
        true,
    ));
    rows.push(dsp_row(
        "DSP + JSON + BSON encode, 1 thread",
        "dsp_encode_single",
        1,
        true,
    ));

    say("ceiling: MongoDB insert_many");
    let mut mongo = mongo_ceiling(ctx, &extractor, &streams, topic).await?;
    mongo["kind"] = json!("mongo");
    rows.push(mongo);
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Latency.
// ---------------------------------------------------------------------------------------------

/// One record seen on the output topic.
struct Observed {
    /// Record id `<stream>:<first frame>`.
    id: String,
    /// `source.timestamp_ms` (the chunk's send time).
    source_ms: i64,
    /// Wall-clock ms when the observer received it.
    seen_ms: f64,
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
                    (i, matches!(found, Ok(Some(_))), wall_ms())
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
    let now = wall_ms();
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
    port: u16,
    poll: Duration,
    stop: CancellationToken,
) -> (Vec<(f64, f64)>, Vec<f64>) {
    let mut events: Vec<(f64, f64)> = Vec::new();
    let mut scrapes = Vec::new();
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0.0;
    while !stop.is_cancelled() {
        ticker.tick().await;
        let started = Instant::now();
        let Ok((200, body)) = http_get(port, "/metrics").await else {
            continue;
        };
        let now = wall_ms();
        scrapes.push(started.elapsed().as_secs_f64() * 1000.0);
        let written = Scrape::parse(&body).get("mongo_documents_written_total");
        if written > last {
            events.push((now, written));
            last = written;
        }
    }
    (events, scrapes)
}

/// Latency summary where `censored` records were never seen: they count as slower than every
/// seen one; a percentile that falls among them is reported as null with `censored` set, and
/// `censored_min_ms` is the least any of them would have taken.
fn censored_summary(values: &mut [f64], censored: &[f64]) -> Value {
    let mut summary = latency_summary(values);
    if censored.is_empty() {
        return summary;
    }
    let total = values.len() + censored.len();
    for (key, p) in [("p50_ms", 50.0), ("p95_ms", 95.0), ("p99_ms", 99.0)] {
        let rank = ((p / 100.0) * total as f64).ceil() as usize;
        summary[key] = if rank.clamp(1, total) <= values.len() {
            json!(round2(values[rank.clamp(1, total) - 1]))
        } else {
            Value::Null
        };
    }
    summary["max_ms"] = Value::Null;
    summary["n"] = json!(total);
    summary["censored"] = json!(censored.len());
    summary["censored_min_ms"] = json!(round2(
        censored.iter().copied().fold(f64::INFINITY, f64::min)
    ));
    summary
}

/// A steady real-time load of `streams` streams through a fresh worker; latency from produce
/// time to the output topic and to MongoDB.
async fn latency_phase(ctx: &Ctx, streams: usize, tag: &str) -> anyhow::Result<Value> {
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
        "latency '{tag}': {streams} real-time streams for {duration} s ({} records expected)",
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
                let now = wall_ms();
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
                    });
                }
                seen.push(Observed {
                    id,
                    source_ms,
                    seen_ms: now,
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
        worker.port,
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
            true,
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
    let scrape_start = worker.scrape().await.unwrap_or_default();
    tokio::time::sleep(Duration::from_secs_f64(
        (args.latency_seconds - 0.2).max(0.1),
    ))
    .await;
    let window_end = ctx.cpu_snapshot(worker.pid, Some(producer_pid));
    let scrape_end = worker.scrape().await.unwrap_or_default();
    let cpu = window_start.until(&window_end);
    let producer_status = tokio::task::spawn_blocking(move || producer.wait()).await??;
    let producer_wall = load_started.elapsed().as_secs_f64();
    let load_end_ms = wall_ms();
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
    let observed_until_ms = wall_ms();
    stop.cancel();
    while !poller.is_finished() && Instant::now() < drain_deadline + Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    poll_stop.cancel();
    let polled = poller.await?;
    written_stop.cancel();
    let (written_events, scrape_ms) = written_poller.await?;
    let peak_rss = proc_status_bytes(worker.pid, "VmHWM").unwrap_or(0);
    let final_scrape = worker.scrape().await.unwrap_or_default();
    let (log, services) = (worker.log.clone(), worker.services);
    let clean = worker.stop().await?;
    let run_health = run_health(&log, services);
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
    let mut seen_ids: std::collections::HashSet<&str> = Default::default();
    for o in &seen {
        seen_ids.insert(o.id.as_str());
        let latency = o.seen_ms - o.source_ms as f64;
        if measured(&o.id) {
            to_kafka.push(latency);
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
    let window = num(&cpu, "wall_s");
    let consumed =
        scrape_end.get("messages_consumed_total") - scrape_start.get("messages_consumed_total");
    let worker_cpu = num(&cpu, "worker_cpu_s");
    let batches =
        scrape_end.get("processing_seconds_count") - scrape_start.get("processing_seconds_count");
    let per_batch = |name: &str| {
        round2((scrape_end.get(name) - scrape_start.get(name)) * 1000.0 / batches.max(1.0))
    };
    let to_output_topic = censored_summary(&mut to_kafka, &kafka_censored);
    let to_mongodb = censored_summary(&mut to_mongo, &mongo_censored);
    say(format!(
        "  to output topic p50 {} p99 {} ms; to MongoDB p50 {} p99 {} ms; {} of {} records seen",
        to_output_topic["p50_ms"],
        to_output_topic["p99_ms"],
        to_mongodb["p50_ms"],
        to_mongodb["p99_ms"],
        seen.len(),
        expect.records
    ));
    Ok(json!({
        "tag": tag,
        "streams": streams,
        "chunk_ms": args.chunk_ms,
        "warmup_s": args.warmup_seconds,
        "measured_s": args.latency_seconds,
        "drain_limit_s": args.latency_drain_seconds,
        "offered_messages_per_s": round2(streams as f64 * 1000.0 / args.chunk_ms as f64),
        "offered_mb_per_s": round3(expect.bytes as f64 / 1e6 / duration),
        "records_expected": expect.records,
        "records_seen": seen.len(),
        "duplicates_seen": duplicates,
        "unparsed": unparsed,
        "producer_wall_s": round3(producer_wall),
        "to_output_topic": to_output_topic,
        "to_output_topic_warmup": latency_summary(&mut warm_kafka),
        "to_mongodb": to_mongodb,
        "mongodb_method": {
            "what": "time the worker's specflow_mongo_documents_written_total first covered the record's rank in output-topic order (the counter is bumped right after MongoDB acknowledged the insert_many) minus source.timestamp_ms",
            "metrics_interval_ms": args.poll_ms,
            "scrape_mean_ms": round2(mean(&scrape_ms)),
            "scrape_p99_ms": round2(percentile(&scrape_ms, 99.0)),
            "resolution_ms": round2(args.poll_ms as f64 + mean(&scrape_ms)),
            "write_events": written_events.len(),
        },
        "to_mongodb_by_id_lookup": lookups_on.then(|| censored_summary(&mut by_lookup, &lookup_censored)),
        "mongodb_lookups": {
            "enabled": lookups_on,
            "interval_ms": args.poll_ms,
            "sampled": format!("1 stream in {sample_every}"),
            "method": format!("find_one by _id, oldest {POLL_BATCH} pending per round, {POLL_CONCURRENCY} at a time; latency taken when the finding lookup returned"),
            "lookups": polled.lookups,
            "rounds": polled.rounds,
            "found_on_first_lookup": polled.found_first_try,
            "unresolved": polled.unresolved.len(),
            "resolution_mean_ms": round2(mean(&gaps)),
            "resolution_p99_ms": round2(percentile(&gaps, 99.0)),
            "round_mean_ms": round2(mean(&rounds)),
            "round_max_ms": round2(rounds.last().copied().unwrap_or(f64::NAN)),
        },
        "window": {
            "messages_per_s": round2(consumed / window),
            "worker_cores_used": round2(worker_cpu / window),
            "mean_batch_messages": round2(consumed / batches.max(1.0)),
            "processing_ms_per_batch": per_batch("processing_seconds_sum"),
            "mongo_write_ms_per_batch": per_batch("mongo_write_seconds_sum"),
            "cpu": cpu,
        },
        "whole_run": {
            "batches": final_scrape.get("processing_seconds_count"),
            "mean_batch_messages": round2(final_scrape.get("messages_consumed_total") / final_scrape.get("processing_seconds_count").max(1.0)),
            "processing_ms_per_batch": round2(final_scrape.get("processing_seconds_sum") * 1000.0 / final_scrape.get("processing_seconds_count").max(1.0)),
            "mongo_write_ms_per_batch": round2(final_scrape.get("mongo_write_seconds_sum") * 1000.0 / final_scrape.get("mongo_write_seconds_count").max(1.0)),
            "mongo_docs_per_s_while_writing": round2(final_scrape.get("mongo_documents_written_total") / final_scrape.get("mongo_write_seconds_sum").max(1e-9)),
            // The checkpoint topic's share: records and bytes per input message, and per batch.
            "checkpoints_per_message": round2(final_scrape.get("checkpoints_written_total") / final_scrape.get("messages_consumed_total").max(1.0)),
            "checkpoint_bytes_per_message": round2(final_scrape.get("checkpoint_bytes_total") / final_scrape.get("messages_consumed_total").max(1.0)),
            "checkpoints_per_batch": round2(final_scrape.get("checkpoints_written_total") / final_scrape.get("processing_seconds_count").max(1.0)),
        },
        "worker_peak_rss_mb": round2(peak_rss as f64 / 1e6),
        "readyz_while_idle": readyz_idle.trim(),
        "worker_dead_letters": final_scrape.sum_of("dead_letters_total"),
        "clean_exit": clean,
        "run_health": run_health,
    }))
}

/// Arithmetic mean (NaN when empty).
fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Memory.
// ---------------------------------------------------------------------------------------------

/// `streams` one-chunk streams through a fresh worker; with `eos` false their state stays
/// live. The chunk is one sample shorter than a frame (or `--memory-chunk-ms`), so the state
/// is fully allocated but no record is written: the figure is the stream table alone, not
/// MongoDB or producer buffers. Returns RSS before and after, peak RSS and the worker's own
/// state estimate.
async fn memory_run(ctx: &Ctx, streams: usize, eos: bool) -> anyhow::Result<Value> {
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
        &mut ctx.produce_command(&input, streams, chunk_s, chunk_ms, "mem-", false, eos),
        &format!("produce-{tag}.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(ctx.args.run_timeout);
    let mut last;
    loop {
        worker.check_alive()?;
        last = worker.scrape().await.unwrap_or_default();
        let consumed = last.get("messages_consumed_total") >= expect.messages as f64;
        let written = last.get("mongo_documents_written_total") >= expect.records as f64;
        let swept = eos || last.get("live_streams") >= streams as f64;
        if consumed && written && swept {
            break;
        }
        if Instant::now() > deadline {
            bail!("memory run {tag} timed out");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the loop settle (idle sweeps) before reading RSS.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let scrape = worker.scrape().await.unwrap_or(last);
    let rss_after = proc_status_bytes(worker.pid, "VmRSS").unwrap_or(0);
    let hwm = proc_status_bytes(worker.pid, "VmHWM").unwrap_or(0);
    let (log, services) = (worker.log.clone(), worker.services);
    let clean = worker.stop().await?;
    let run_health = run_health(&log, services);
    if !ctx.args.keep {
        let _ = ctx.mongo().await?.database(&names.database).drop().await;
    }
    Ok(json!({
        "streams": streams,
        "chunk_ms": chunk_ms,
        "eos": eos,
        "records_written": scrape.get("mongo_documents_written_total"),
        "live_streams": scrape.get("live_streams"),
        "stream_state_bytes_metric": scrape.get("stream_state_bytes"),
        "rss_before_mb": round2(rss_before as f64 / 1e6),
        "rss_after_mb": round2(rss_after as f64 / 1e6),
        "peak_rss_mb": round2(hwm as f64 / 1e6),
        "clean_exit": clean,
        "run_health": run_health,
    }))
}

/// Live vs freed runs for every count; growth per 1000 live streams.
async fn memory_phase(ctx: &Ctx) -> anyhow::Result<Value> {
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
        rows.push(json!({
            "streams": streams,
            "live": live,
            "freed": freed,
            "rss_growth_mb_per_1000_streams": per_k(num(&live, "rss_after_mb"), num(&freed, "rss_after_mb")),
            "peak_rss_growth_mb_per_1000_streams": per_k(num(&live, "peak_rss_mb"), num(&freed, "peak_rss_mb")),
            "rss_growth_vs_idle_mb_per_1000_streams": per_k(num(&live, "rss_after_mb"), num(&live, "rss_before_mb")),
            "state_metric_mb_per_1000_streams": round3(num(&live, "stream_state_bytes_metric") / 1e6 / streams as f64 * 1000.0),
        }));
    }
    Ok(json!(rows))
}

// ---------------------------------------------------------------------------------------------
// The whole run, the table and the JSON.
// ---------------------------------------------------------------------------------------------

/// nproc, CPU model, RAM, kernel, load, service versions.
async fn machine(ctx: &Ctx) -> Value {
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
    json!({
        "idle_before_run": {
            "kafka_cores": cores(before.0, after.0),
            "mongo_cores": cores(before.1, after.1),
            "machine_busy_cores": round2((after.2 - before.2) / 3.0),
        },
        "nproc": std::thread::available_parallelism().map_or(1, usize::from),
        "cpu_model": model,
        "ram_gb": mem_gb,
        "kernel": kernel,
        "loadavg_at_start": load,
        "mongodb_server_version": mongo_version,
        "kafka_pid": ctx.kafka_pid,
        "mongo_pid": ctx.mongo_pid,
    })
}

/// Deletes what the run created (unless `--keep`).
async fn clean_up(ctx: &Ctx) {
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

/// Scaling thread counts: 1, 2, 4, … and the core count.
fn thread_counts(args: &Args, cores: usize) -> Vec<usize> {
    if let Some(list) = &args.threads {
        return list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .collect();
    }
    let mut counts = Vec::new();
    let mut t = 1;
    while t < cores {
        counts.push(t);
        t *= 2;
    }
    counts.push(cores);
    counts
}

/// Every phase in order; returns the whole report.
async fn run(ctx: &Ctx) -> anyhow::Result<Value> {
    let args = &ctx.args;
    let machine = machine(ctx).await;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut report = json!({
        "run_id": ctx.run_id,
        "machine": machine,
        "parameters": {
            "streams": args.streams,
            "seconds": args.seconds,
            "chunk_ms": args.chunk_ms,
            "signal": args.signal,
            "partitions": ctx.partitions,
            "frame_length": ctx.settings.dsp.frame_length,
            "hop_length": ctx.settings.dsp.hop_length,
            "features": ctx.settings.dsp.features,
            "batch_max_messages": ctx.settings.source.batch_max_messages,
            "config": args.config,
        },
        "command_line": std::env::args().collect::<Vec<_>>().join(" "),
        "logs": ctx.log_dir,
    });

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
            false,
            true,
        ),
        "produce-throughput.log",
    )?;
    report["preload"] = json!({
        "messages": expect.messages,
        "bytes": expect.bytes,
        "records_expected": expect.records,
        "frames_expected": expect.frames,
        "audio_seconds": expect.audio_seconds,
        "produce_wall_s": round3(preload_s),
        "produce_messages_per_s": round2(expect.messages as f64 / preload_s),
    });
    let main = worker_run(ctx, &input, &expect, None, "main").await?;

    // 4. Scaling (the core count is the main run: worker_threads = 0 resolves to it).
    let mut scaling = Vec::new();
    if !args.skip_scaling {
        for threads in thread_counts(args, cores) {
            if threads == cores {
                let mut row = main.clone();
                row["worker_threads"] = json!(threads);
                row["note"] = json!("main run (worker_threads = 0 = one per core)");
                scaling.push(row);
            } else {
                scaling.push(
                    worker_run(ctx, &input, &expect, Some(threads), &format!("t{threads}")).await?,
                );
            }
        }
    }

    // 2. Ceilings on the same data.
    let rows = ceilings(ctx, &input, &expect).await?;
    let worker_rate = num(&main, "messages_per_s");
    let mut bound: Option<(f64, String)> = None;
    let mut ceilings_out = Vec::new();
    let kafka_best = rows
        .iter()
        .filter(|r| r["kind"] == "kafka")
        .map(|r| num(r, "messages_per_s"))
        .fold(f64::NAN, f64::max);
    for mut row in rows {
        let rate = num(&row, "messages_per_s");
        row["worker_ratio"] = json!(round3(worker_rate / rate));
        let kind = row["kind"].as_str().unwrap_or("").to_string();
        let candidate = match kind.as_str() {
            "kafka" => rate == kafka_best,
            "dsp" | "mongo" => true,
            _ => false,
        };
        row["candidate_bound"] = json!(candidate);
        if candidate && bound.as_ref().is_none_or(|(r, _)| rate < *r) {
            bound = Some((rate, row["what"].as_str().unwrap_or("").to_string()));
        }
        ceilings_out.push(row);
    }
    report["throughput"] = main.clone();
    report["ceilings"] = json!(ceilings_out);
    if let Some((rate, what)) = &bound {
        report["bound"] = json!({
            "what": what,
            "messages_per_s": rate,
            "worker_ratio": round3(worker_rate / rate),
            "target_ratio": 0.7,
            "met": worker_rate / rate >= 0.7,
        });
    }
    report["scaling"] = json!(scaling);

    // 3. Latency.
    if !args.skip_latency {
        let mut latency = latency_phase(ctx, args.latency_streams, "lat").await?;
        let p99 = num(&latency["to_output_topic"], "p99_ms");
        latency["target_p99_ms"] = json!(50);
        // A censored p99 (records never seen) is a miss too.
        latency["met"] = json!(p99 < 50.0);
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
            runs.push(latency_phase(ctx, light, "light").await?);
        }
        report["latency"] = json!(runs);
    }

    // 5. Memory.
    if !args.skip_memory {
        report["memory"] = memory_phase(ctx).await?;
    }
    report["loadavg_at_end"] = json!(
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok(report)
}

/// Formats a number for the table (`-` when absent).
fn f(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

/// The human-readable table.
fn table(r: &Value) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let m = &r["machine"];
    let p = &r["parameters"];
    line(format!(
        "specflow end-to-end benchmark  run {}",
        r["run_id"].as_str().unwrap_or("")
    ));
    line(format!(
        "machine: {} cores, {}, {} GB RAM, kernel {}, load at start {}, MongoDB server {}",
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["ram_gb"],
        m["kernel"].as_str().unwrap_or("?"),
        m["loadavg_at_start"].as_str().unwrap_or("?"),
        m["mongodb_server_version"].as_str().unwrap_or("?"),
    ));
    let idle = &m["idle_before_run"];
    line(format!(
        "busy before the run (3 s, nothing of ours running): machine {} cores, MongoDB server {} cores, Kafka {} cores",
        f(num(idle, "machine_busy_cores"), 2),
        f(num(idle, "mongo_cores"), 2),
        f(num(idle, "kafka_cores"), 2)
    ));
    line(format!(
        "load: {} streams × {} s, {} ms chunks, signal {}, {} partitions, frame {}/{} hop, features {}",
        p["streams"],
        p["seconds"],
        p["chunk_ms"],
        p["signal"].as_str().unwrap_or(""),
        p["partitions"],
        p["frame_length"],
        p["hop_length"],
        p["features"]
    ));
    let pre = &r["preload"];
    line(format!(
        "preloaded {} messages ({:.1} MB, {} records expected) in {} s",
        pre["messages"],
        num(pre, "bytes") / 1e6,
        pre["records_expected"],
        f(num(pre, "produce_wall_s"), 1)
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
    let mut rows: Vec<&Value> = Vec::new();
    if let Some(scaling) = r["scaling"].as_array().filter(|s| !s.is_empty()) {
        rows.extend(scaling.iter());
    } else {
        rows.push(&r["throughput"]);
    }
    for row in rows {
        let cpu = &row["cpu"];
        line(format!(
            "  {:<10} {:>7} {:>8} {:>9} {:>8} {:>7} {:>10} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8}",
            row["worker_threads"]
                .as_u64()
                .map_or("config".into(), |t| t.to_string()),
            f(num(row, "wall_s"), 2),
            f(num(row, "x_realtime"), 0),
            f(num(row, "messages_per_s"), 0),
            f(num(row, "mb_per_s"), 2),
            f(num(row, "frames_per_s"), 0),
            "",
            f(num(row, "worker_cpu_s"), 2),
            f(num(row, "worker_cores_used"), 2),
            f(num(row, "peak_rss_mb"), 0),
            f(num(cpu, "kafka_cpu_s"), 2),
            f(num(cpu, "mongo_cpu_s"), 2),
            f(num(cpu, "other_processes_cpu_s"), 2),
        ));
    }
    let t = &r["throughput"];
    line(format!(
        "  main run: startup {} s, {} batches of {} msgs, DSP+encode {:.0}% of wall, MongoDB insert {:.0}% of wall, {} µs CPU/msg, {} docs stored, {} dead letters",
        f(num(t, "startup_s"), 1),
        t["batches"],
        f(num(t, "mean_batch_messages"), 0),
        num(t, "processing_share") * 100.0,
        num(t, "mongo_write_share") * 100.0,
        f(num(t, "cpu_us_per_message"), 0),
        t["stored_documents"],
        t["dead_letters"],
    ));
    line(String::new());
    line("CEILINGS (same data, each alone)".into());
    line(format!(
        "  {:<66} {:>9} {:>8} {:>8} {:>8}",
        "ceiling", "msg/s", "MB/s", "×rt", "worker%"
    ));
    for row in r["ceilings"].as_array().into_iter().flatten() {
        line(format!(
            "  {:<66} {:>9} {:>8} {:>8} {:>8}",
            row["what"].as_str().unwrap_or(""),
            f(num(row, "messages_per_s"), 0),
            f(num(row, "mb_per_s"), 2),
            f(num(row, "x_realtime"), 0),
            f(num(row, "worker_ratio") * 100.0, 1),
        ));
    }
    if let Some(b) = r.get("bound") {
        line(format!(
            "  bound that holds: {} ({} msg/s); worker at {:.1}% of it (target ≥ 70%: {})",
            b["what"].as_str().unwrap_or(""),
            f(num(b, "messages_per_s"), 0),
            num(b, "worker_ratio") * 100.0,
            if b["met"] == true { "met" } else { "MISSED" }
        ));
    }
    for l in r["latency"].as_array().into_iter().flatten() {
        line(String::new());
        line(format!(
            "LATENCY '{}' ({} real-time streams, {} ms chunks = {} msg/s offered, {} s after {} s warm-up, drain ≤ {} s; {} of {} records seen)",
            l["tag"].as_str().unwrap_or(""),
            l["streams"],
            l["chunk_ms"],
            f(num(l, "offered_messages_per_s"), 0),
            l["measured_s"],
            l["warmup_s"],
            l["drain_limit_s"],
            l["records_seen"],
            l["records_expected"]
        ));
        line(format!(
            "  {:<66} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "from produce (source.timestamp_ms) to", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"
        ));
        let method = &l["mongodb_method"];
        let lookups = &l["mongodb_lookups"];
        let mut rows = vec![
            (
                "output topic (observer consuming it)".to_string(),
                "to_output_topic",
            ),
            (
                format!(
                    "MongoDB (worker's acked-write counter, /metrics every {} ms)",
                    method["metrics_interval_ms"]
                ),
                "to_mongodb",
            ),
        ];
        if lookups["enabled"] == true {
            rows.push((
                format!(
                    "MongoDB (_id lookups every {} ms, {}; ~{} ms)",
                    lookups["interval_ms"],
                    lookups["sampled"].as_str().unwrap_or(""),
                    f(num(lookups, "resolution_mean_ms"), 0)
                ),
                "to_mongodb_by_id_lookup",
            ));
        }
        for (label, key) in rows {
            let s = &l[key];
            // A percentile among records never seen: at least the least of their waits.
            let cell = |k: &str| {
                if s[k].is_null() && s.get("censored").is_some() {
                    format!(">{}", f(num(s, "censored_min_ms"), 0))
                } else {
                    f(num(s, k), 1)
                }
            };
            line(format!(
                "  {:<66} {:>7} {:>9} {:>9} {:>9} {:>9}",
                label,
                s["n"],
                cell("p50_ms"),
                cell("p95_ms"),
                cell("p99_ms"),
                cell("max_ms")
            ));
        }
        let w = &l["window"];
        let whole = &l["whole_run"];
        line(format!(
            "  worker: {} msg/s and {} cores in the window; whole run: {} batches of {} msgs, {} ms DSP+encode and {} ms MongoDB insert per batch ({} docs/s while inserting)",
            f(num(w, "messages_per_s"), 0),
            f(num(w, "worker_cores_used"), 2),
            whole["batches"],
            f(num(whole, "mean_batch_messages"), 0),
            f(num(whole, "processing_ms_per_batch"), 1),
            f(num(whole, "mongo_write_ms_per_batch"), 1),
            f(num(whole, "mongo_docs_per_s_while_writing"), 0),
        ));
        if l.get("met").is_some() {
            line(format!(
                "  p99 < 50 ms to the output topic at the default load: {}",
                if l["met"] == true { "met" } else { "MISSED" }
            ));
        }
    }
    if let Some(rows) = r.get("memory").and_then(Value::as_array) {
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
                row["streams"],
                f(num(&row["live"], "rss_after_mb"), 1),
                f(num(&row["freed"], "rss_after_mb"), 1),
                f(num(&row["live"], "peak_rss_mb"), 1),
                f(num(&row["freed"], "peak_rss_mb"), 1),
                f(num(row, "rss_growth_mb_per_1000_streams"), 2),
                f(num(row, "state_metric_mb_per_1000_streams"), 2),
            ));
        }
    }
    // Disturbances: a service restarted under a run, or the worker logged problems.
    let mut runs: Vec<(String, &Value)> = Vec::new();
    for row in r["scaling"].as_array().into_iter().flatten() {
        runs.push((
            format!("throughput {}", row["tag"].as_str().unwrap_or("")),
            row,
        ));
    }
    if r["scaling"].as_array().is_none_or(|s| s.is_empty()) {
        runs.push(("throughput main".into(), &r["throughput"]));
    }
    for row in r["latency"].as_array().into_iter().flatten() {
        runs.push((
            format!("latency {}", row["tag"].as_str().unwrap_or("")),
            row,
        ));
    }
    for row in r["memory"].as_array().into_iter().flatten() {
        runs.push((format!("memory {} live", row["streams"]), &row["live"]));
        runs.push((format!("memory {} freed", row["streams"]), &row["freed"]));
    }
    let mut notes = Vec::new();
    for (name, row) in runs {
        let h = &row["run_health"];
        let restarted: Vec<&str> = [("Kafka", "kafka_restarted"), ("MongoDB", "mongo_restarted")]
            .into_iter()
            .filter(|(_, k)| h[*k] == true)
            .map(|(n, _)| n)
            .collect();
        let problems = h["worker_warnings_and_errors"].as_u64().unwrap_or(0);
        if !restarted.is_empty() || problems > 0 {
            notes.push(format!(
                "  {name}: {}{problems} worker warnings/errors{}",
                if restarted.is_empty() {
                    String::new()
                } else {
                    format!("{} RESTARTED during the run; ", restarted.join(" and "))
                },
                h["first_distinct"]
                    .as_array()
                    .and_then(|d| d.first())
                    .and_then(Value::as_str)
                    .map_or(String::new(), |m| format!(", first: {m}"))
            ));
        }
    }
    if !notes.is_empty() {
        line(String::new());
        line("RUN HEALTH (see run_health in the JSON)".into());
        for note in notes {
            line(note);
        }
    }
    out
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
            "{} not found; build it with cargo build --release",
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
    let text = table(&report);
    println!("{text}");
    let path = ctx
        .args
        .out
        .clone()
        .unwrap_or_else(|| ctx.log_dir.join("bench.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    say(format!("figures written to {}", path.display()));
    Ok(())
}
