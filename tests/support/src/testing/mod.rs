//! What only the integration tests use, as one prelude (`use specflow_test_support::testing::*`):
//! the services' addresses from the environment (SPECFLOW_TEST_BROKERS, SPECFLOW_TEST_MONGO_URI;
//! the services come from `scripts/services.sh up`), settings for a test's names, producers,
//! the worker in process and as a process, stopping a service, polling helpers, pYIN's
//! observations of a whole signal ([`observe_every_frame`]), and (in [`records`]) what MongoDB
//! and the output topic hold against an uninterrupted run. Helpers panic with a message instead
//! of returning `Result`s.

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use rdkafka::util::Timeout;
use specflow::shutdown::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate as support;
use specflow::config::Settings;
use specflow::telemetry::health::Health;
use specflow::telemetry::metrics::Metrics;

// Not every test binary uses every helper.
mod observations;
mod private;
mod records;

pub use observations::{Observed, PyinReference, observe_every_frame, pyin_references};
pub use private::PrivateServices;
pub use records::*;
pub use support::chunks::{EPOCH_MS, s16le_bytes};
pub use support::{
    Chunk, Names, Scrape, Supervised, chunk_stream, fixed_chunks, synthetic_pcm, unique,
};

pub fn brokers() -> String {
    std::env::var("SPECFLOW_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn mongo_uri() -> String {
    std::env::var("SPECFLOW_TEST_MONGO_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

/// The reference data shipped in the repository: `signals/*.wav`, librosa's `features/*.json`
/// and `pyin/*.json` (made by `scripts/make_reference.py`). `SPECFLOW_REFERENCE_DIR` points the
/// tests at another directory of the same layout (for example held-out recordings).
pub fn reference_dir() -> PathBuf {
    std::env::var_os("SPECFLOW_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository_root().join("tests/data"))
}

/// The reference files `SUBDIR/*.json` of [`reference_dir`] (`features`, `pyin`), sorted by
/// name. Fails the test when the directory cannot be read or holds none.
pub fn reference_jsons(subdir: &str) -> Vec<PathBuf> {
    let dir = reference_dir().join(subdir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no reference files in {}", dir.display());
    paths
}

/// The path of a shipped reference signal, `signals/NAME`.
pub fn reference_signal(name: &str) -> PathBuf {
    reference_dir().join("signals").join(name)
}

/// Settings pointing at the local services and this test's names.
pub fn settings(names: &Names) -> Settings {
    let mut s = Settings::default();
    s.kafka.brokers = brokers();
    s.source.topic = names.input.clone();
    s.source.group_id = names.group.clone();
    s.source.commit_interval_ms = 200;
    s.output.topic = names.output.clone();
    s.dead_letter.topic = names.dead_letter.clone();
    s.checkpoint.topic = names.checkpoint.clone();
    s.mongo.uri = mongo_uri();
    s.mongo.database = names.database.clone();
    s.http.enabled = false;
    s.runtime.worker_threads = 2;
    s
}

/// Writes `settings` as a TOML config file at `path` (for `specflow --config`).
pub fn write_config(path: &Path, settings: &Settings) {
    let text = toml::to_string(settings).expect("the settings as TOML");
    std::fs::write(path, text)
        .unwrap_or_else(|e| panic!("config file {} not written: {e}", path.display()));
}

/// Creates the four topics of `names` (the checkpoint topic compacted) with `partitions`.
pub async fn create_topics(names: &Names, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    support::create_topics(&admin, &names.new_topics(partitions))
        .await
        .expect("create topics (is Kafka up? scripts/services.sh up)");
}

pub fn producer() -> FutureProducer {
    producer_for(&brokers())
}

/// An idempotent producer for `brokers`.
pub fn producer_for(brokers: &str) -> FutureProducer {
    test_producer_config(brokers).create().expect("producer")
}

/// [`producer_for`] whose deliveries fail after 15 s instead of librdkafka's 300: for feeders
/// that retry with a fresh producer, since after a broker restart a producer can keep a
/// partition without a leader for good and never deliver again (confluentinc/librdkafka#5430).
pub fn renewable_producer_for(brokers: &str) -> FutureProducer {
    test_producer_config(brokers)
        .set("message.timeout.ms", "15000")
        .create()
        .expect("producer")
}

/// The test feeders' producer settings: the worker's own producer configuration
/// ([`specflow::kafka::producer::producer_config`]: idempotent, `acks=all`) for `brokers`,
/// with a 2 ms linger.
fn test_producer_config(brokers: &str) -> ClientConfig {
    let kafka = specflow::kafka::KafkaConfig {
        brokers: brokers.to_owned(),
        ..Default::default()
    };
    specflow::kafka::producer::producer_config(&kafka, &[("linger.ms", "2".to_owned())])
        .expect("producer configuration")
}

pub async fn send_all(producer: &FutureProducer, topic: &str, chunks: &[Chunk]) {
    try_send_all(producer, topic, chunks)
        .await
        .expect("delivered");
}

/// `count` synthetic streams keyed `"{prefix}-{i}"`, stream `i` being
/// `synthetic_pcm(first_seed + i, seconds)` cut into 100 ms chunks.
pub fn synthetic_streams(
    prefix: &str,
    count: u64,
    first_seed: u64,
    seconds: f64,
) -> Vec<(String, Vec<Chunk>)> {
    (0..count)
        .map(|i| {
            let key = format!("{prefix}-{i}");
            let chunks = fixed_chunks(&key, &synthetic_pcm(first_seed + i, seconds), 1_600);
            (key, chunks)
        })
        .collect()
}

/// Sends every stream's chunks, stream after stream, each acknowledged.
pub async fn send_streams(
    producer: &FutureProducer,
    topic: &str,
    streams: &[(String, Vec<Chunk>)],
) {
    for (_, chunks) in streams {
        send_all(producer, topic, chunks).await;
    }
}

/// Sends `chunks` and waits for every acknowledgement; the first delivery error is returned.
pub async fn try_send_all(
    producer: &FutureProducer,
    topic: &str,
    chunks: &[Chunk],
) -> Result<(), rdkafka::error::KafkaError> {
    let sends = chunks
        .iter()
        .map(|c| producer.send(c.record(topic), Timeout::After(Duration::from_secs(30))));
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// A worker running in this process, on a runtime and a thread of its own as `main` runs it:
/// a worker that does not stop fails its test ([`RunningWorker::stop`]) instead of holding up
/// the shutdown of the test's runtime, and a test that fails first asks its worker to stop.
pub struct RunningWorker {
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    outcome: Option<tokio::sync::oneshot::Receiver<anyhow::Result<()>>>,
}

pub fn spawn_worker(settings: Settings) -> RunningWorker {
    // The worker's log, on stderr (not captured by the test harness), when RUST_LOG asks.
    if std::env::var_os("RUST_LOG").is_some() {
        settings.log.init();
    }
    let shutdown = Shutdown::new(Duration::from_secs(settings.shutdown.drain_timeout_secs));
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let (report, outcome) = tokio::sync::oneshot::channel();
    let run = specflow::pipeline::run(settings, metrics.clone(), health.clone(), shutdown.clone());
    std::thread::Builder::new()
        .name("specflow-worker".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("the worker's runtime");
            let _ = report.send(runtime.block_on(run));
            runtime.shutdown_timeout(Duration::from_secs(5));
        })
        .expect("the worker's thread");
    RunningWorker {
        shutdown,
        metrics,
        health,
        outcome: Some(outcome),
    }
}

impl RunningWorker {
    /// Asks the worker to stop and waits up to `timeout` for it; `None` if it still runs.
    pub async fn stop_within(self, timeout: Duration) -> Option<anyhow::Result<()>> {
        self.shutdown.request();
        self.exited_within(timeout).await
    }

    /// Waits up to `timeout` for the worker to end by itself (no stop asked); `None` if it
    /// still runs (it is then asked to stop, as on drop).
    pub async fn exited_within(mut self, timeout: Duration) -> Option<anyhow::Result<()>> {
        let outcome = self.outcome.as_mut().expect("awaited once");
        let ended = tokio::time::timeout(timeout, outcome).await.ok()?;
        self.outcome = None;
        Some(ended.expect("the worker's thread reports its outcome"))
    }

    /// Stops the worker, which must exit cleanly within 60 s.
    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(60))
            .await
            .expect("worker stops within 60 s")
            .expect("worker exits cleanly");
    }
}

/// One consumer group growing from one instance to three: starts a worker, waits up to 30 s
/// for `working` to hold of its metrics (`what` names it in the failure), then starts two
/// more with the same settings and waits up to 60 s until each of the three has partitions.
pub async fn three_instances(
    settings: &Settings,
    working: impl Fn(&Metrics) -> bool,
    what: &str,
) -> [RunningWorker; 3] {
    let first = spawn_worker(settings.clone());
    assert!(
        eventually(Duration::from_secs(30), async || working(&first.metrics)).await,
        "{what}"
    );
    let workers = [
        first,
        spawn_worker(settings.clone()),
        spawn_worker(settings.clone()),
    ];
    assert!(
        eventually(Duration::from_secs(60), async || workers.iter().all(|w| w
            .metrics
            .assigned_partitions
            .get()
            > 0))
        .await,
        "the partitions were spread over the three instances"
    );
    workers
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        if self.outcome.is_some() {
            self.shutdown.request();
        }
    }
}

/// The repository's root (this crate lives in `tests/support`).
pub fn repository_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Committed offsets of `group` on `topic` (partition → offset; -1001 when none).
pub fn committed_offsets(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::TopicPartitionList;
    use rdkafka::consumer::BaseConsumer;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(-1))
        .collect()
}

/// Held for the whole run of a test that stops or restarts the shared services, so that such
/// tests in one binary run one at a time (each test has its own runtime, so holding it across
/// awaits cannot deadlock). A test that failed while holding it does not block the others.
pub fn services_to_myself() -> std::sync::MutexGuard<'static, ()> {
    static SERVICES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERVICES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `scripts/services.sh ARGS`.
pub fn services(args: &[&str]) {
    let status = std::process::Command::new("bash")
        .arg(repository_root().join("scripts/services.sh"))
        .args(args)
        .status()
        .expect("run scripts/services.sh");
    assert!(status.success(), "scripts/services.sh {args:?} failed");
}

/// A local service stopped by a test (`scripts/services.sh stop <name>`). It is started again
/// by [`StoppedService::start`], or on drop if the test fails first, so one failing fault test
/// cannot take the service away from the tests after it.
pub struct StoppedService {
    name: &'static str,
    started: bool,
}

impl StoppedService {
    /// Stops `name` (`kafka` or `mongo`).
    pub fn stop(name: &'static str) -> Self {
        services(&["stop", name]);
        Self {
            name,
            started: false,
        }
    }

    /// Starts it again and waits until it answers.
    pub fn start(mut self) {
        self.started = true;
        services(&["start", self.name]);
    }
}

impl Drop for StoppedService {
    fn drop(&mut self) {
        if !self.started {
            let _ = std::process::Command::new("bash")
                .arg(repository_root().join("scripts/services.sh"))
                .args(["start", self.name])
                .status();
        }
    }
}

/// `GET path` on the worker's HTTP endpoint at `address` (`host:port`): status and body.
pub async fn http_get(address: &str, path: &str) -> (u16, String) {
    let address = address.parse().expect("a host:port address");
    support::http_get(address, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {address}: {e:#}"))
}

/// The value of `full_name` (`specflow_…`) in a `/metrics` body: its sample, or the sum over
/// its label sets (0 while a labelled family has none yet).
pub fn metric(body: &str, full_name: &str) -> f64 {
    let scrape = Scrape::parse(body);
    scrape.sample(full_name).unwrap_or_else(|| {
        scrape.sum_of(
            full_name
                .strip_prefix(Scrape::PREFIX)
                .expect("a specflow_ metric"),
        )
    })
}

/// Polls the async `condition` every 100 ms for `window`; whether it held at every poll.
pub async fn holds_for(window: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + window;
    loop {
        if !condition().await {
            return false;
        }
        if Instant::now() >= deadline {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes; whether it held.
pub async fn eventually(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `log` contains `needle`; its text then.
pub async fn wait_for_log(log: &std::path::Path, needle: &str, timeout: Duration) -> String {
    let mut text = String::new();
    let logged = eventually(timeout, async || {
        text = std::fs::read_to_string(log).unwrap_or_default();
        text.contains(needle)
    })
    .await;
    assert!(logged, "{needle:?} not logged within {timeout:?}:\n{text}");
    text
}

/// A `specflow run` child process (the test binary's own build). Dropping it kills the
/// process, so a failing test never leaves a worker running against the shared services.
pub struct WorkerProcess(support::WorkerProcess);

impl WorkerProcess {
    /// Starts `specflow run --config <config>`, its log appended to `log`.
    pub fn start(
        binary: &std::path::Path,
        config: &std::path::Path,
        log: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        let process = support::WorkerProcess::start(binary, config, log, env.iter().copied())
            .expect("start specflow");
        Self(process)
    }

    /// The process itself (for [`support::Supervised`]).
    pub fn into_process(self) -> support::WorkerProcess {
        self.0
    }

    /// SIGKILL, no drain.
    pub fn kill(mut self) {
        self.0.kill().expect("SIGKILL");
    }

    /// SIGSTOP: the process freezes where it is (a zombie-to-be).
    pub fn pause(&self) {
        self.0.signal("STOP").expect("SIGSTOP");
    }

    /// SIGCONT: a paused process goes on.
    pub fn resume(&self) {
        self.0.signal("CONT").expect("SIGCONT");
    }

    /// SIGTERM; asserts a clean exit within `within` (else the drop kills it).
    pub fn terminate(mut self, within: Duration) {
        self.0.sigterm().expect("SIGTERM");
        let status = self.0.wait_within(within).expect("wait for the worker");
        let status = status.unwrap_or_else(|| panic!("worker did not drain within {within:?}"));
        assert!(
            status.success(),
            "worker exit status after SIGTERM: {status}"
        );
    }

    /// SIGTERM, then SIGKILL after `within` (for a worker that may still be starting).
    pub fn terminate_or_kill(mut self, within: Duration) {
        let _ = self.0.sigterm();
        let _ = self.0.wait_within(within);
    }
}

/// How [`kill_at_random_moments`] crashes a worker process: `kills` times, each a random
/// `moment_ms` (from `seed`) after the log shows its latest start's `started` line.
pub struct RandomKills<'a> {
    /// A line the worker logs once per start, once it is running (`"Consuming."`, ...).
    pub started: &'a str,
    /// How many times the worker is killed.
    pub kills: usize,
    /// The range of the delay between that line and the kill, in milliseconds.
    pub moment_ms: std::ops::Range<u64>,
    /// The seed of the delays.
    pub seed: u64,
}

/// SIGKILLs `worker` (logging to `log`) at random moments of its runs and starts it again with
/// `start` each time, as [`RandomKills`] says; returns the last one, still running. Each start
/// must log `started` within 60 s.
pub async fn kill_at_random_moments(
    mut worker: WorkerProcess,
    start: impl Fn() -> WorkerProcess,
    log: &Path,
    kills: &RandomKills<'_>,
) -> WorkerProcess {
    use rand::{RngExt, SeedableRng};
    let started = || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches(kills.started)
            .count()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(kills.seed);
    for run in 1..=kills.kills {
        assert!(
            eventually(Duration::from_secs(60), async || started() >= run).await,
            "worker run {run} did not log {:?} within 60 s",
            kills.started
        );
        // Pacing: a random moment in the run.
        let moment = Duration::from_millis(rng.random_range(kills.moment_ms.clone()));
        tokio::time::sleep(moment).await;
        worker.kill();
        worker = start();
    }
    worker
}

/// Dead letters a worker sent, over every reason (`specflow_dead_letters_total`).
pub fn dead_letters_sent(metrics: &Metrics) -> u64 {
    Scrape::parse(&metrics.render()).sum_of("dead_letters_total") as u64
}

/// Rounds every number to f32, the precision features are computed in (JSON text carries the
/// shortest f32 representation, BSON the exact f32 value widened to f64).
pub fn as_f32(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            serde_json::Number::from_f64(f64::from(n.as_f64().unwrap() as f32))
                .map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(as_f32).collect())
        }
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.into_iter().map(|(k, v)| (k, as_f32(v))).collect())
        }
        other => other,
    }
}

/// Sends `chunk` to `partition` of `topic` and waits for the acknowledgement.
pub async fn send_to_partition(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    chunk: &Chunk,
) {
    producer
        .send(
            chunk.record(topic).partition(partition),
            Timeout::After(Duration::from_secs(30)),
        )
        .await
        .expect("delivered");
}

/// Mono samples of a 16-bit WAV as the reference script makes them (int16 / 32768, channels
/// averaged in f64), and its sample rate.
pub fn read_mono_wav(path: &std::path::Path) -> (Vec<f32>, u32) {
    support::read_mono_wav(path).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `specflow produce` (the binary at `binary`, see [`specflow_binary!`]) on the shipped
/// speech, with `settings` as its config file and `args` after `--wav`; returns its standard
/// output, and fails the test with its standard error when it fails.
pub fn produce_speech(binary: &std::path::Path, settings: &Settings, args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("specflow.toml");
    write_config(&config, settings);
    let output = std::process::Command::new(binary)
        .args(["produce", "--config"])
        .arg(&config)
        .arg("--wav")
        .arg(reference_signal("speech_16k.wav"))
        .args(args)
        .output()
        .expect("run specflow produce");
    assert!(
        output.status.success(),
        "specflow produce failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The test crate's own `specflow` binary (`CARGO_BIN_EXE_specflow` of the crate that expands
/// it), for [`WorkerProcess::start`].
#[macro_export]
macro_rules! specflow_binary {
    () => {
        std::path::Path::new(env!("CARGO_BIN_EXE_specflow"))
    };
}
