//! Shared helpers for integration tests against the real local Kafka and FerretDB
//! (started by `scripts/services.sh up`; addresses overridable with SPECFLOW_TEST_BROKERS
//! and SPECFLOW_TEST_MONGO_URI).
//!
//! What the end-to-end benchmark needs too (names, topics, chunks and test audio, the worker
//! process, WAV reading, `/metrics` parsing) lives in the `specflow-test-support` crate
//! (`tests/support/`); this module re-exports it and adds what only tests use: the services'
//! addresses from the environment, assertions on MongoDB and the output topic, panics instead
//! of `Result`s.
#![allow(dead_code)]

use mongodb::bson::{Bson, Document, doc};
use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::util::Timeout;
use specflow::shutdown::Shutdown;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

use specflow::config::Settings;
use specflow::telemetry::health::Health;
use specflow::telemetry::metrics::Metrics;
use specflow_test_support as support;

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use support::{Chunk, Names, Scrape, chunk_stream, fixed_chunks, synthetic_pcm, unique};

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
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data"))
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
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .expect("producer")
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

/// A worker running in this process.
pub struct RunningWorker {
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

pub fn spawn_worker(settings: Settings) -> RunningWorker {
    let shutdown = Shutdown::new(Duration::from_secs(settings.shutdown.drain_timeout_secs));
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let handle = tokio::spawn(specflow::pipeline::run(
        settings,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    RunningWorker {
        shutdown,
        metrics,
        health,
        handle,
    }
}

impl RunningWorker {
    pub async fn stop(self) {
        self.shutdown.request();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("worker stops within 60 s")
            .expect("worker task")
            .expect("worker exits cleanly");
    }
}

pub async fn collection(names: &Names) -> mongodb::Collection<Document> {
    let client = mongodb::Client::with_uri_str(mongo_uri())
        .await
        .expect("mongo client");
    client.database(&names.database).collection("features")
}

/// Sum of `frame_count` over the stored records.
pub async fn stored_frames(collection: &mongodb::Collection<Document>) -> i64 {
    use futures::TryStreamExt;
    let docs: Vec<Document> = collection
        .find(doc! {})
        .projection(doc! { "frame_count": 1 })
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("cursor");
    docs.iter()
        .map(|d| d.get_i64("frame_count").unwrap_or(0))
        .sum()
}

pub async fn wait_for_frames(
    collection: &mongodb::Collection<Document>,
    expected: i64,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = stored_frames(collection).await;
        if got >= expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {expected} frames stored after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn all_documents(collection: &mongodb::Collection<Document>) -> Vec<Document> {
    use futures::TryStreamExt;
    collection
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("cursor")
}

/// Reads `topic` from the start until `expected` messages arrived (or the timeout).
pub async fn consume(topic: &str, expected: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < expected {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("consume error: {e}"),
            Err(_) => break,
        }
    }
    // Anything beyond `expected` would be a duplicate: give it a moment to show up.
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(1500), consumer.recv()).await {
        out.push(m.detach());
    }
    out
}

/// The records an uninterrupted run stores: `_id` → frames (without timestamps), computed by
/// feeding each stream's chunks through the DSP one message at a time.
pub fn expected_records(
    streams: &[(String, Vec<Chunk>)],
    dsp: &specflow::dsp::DspConfig,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    use specflow::dsp::{FeatureExtractor, FrameBatch};
    let extractor = FeatureExtractor::new(dsp, 16_000).unwrap();
    let mut ws = extractor.workspace();
    let mut out = std::collections::BTreeMap::new();
    for (key, chunks) in streams {
        let mut state = extractor.new_stream(0);
        let mut batch = FrameBatch::new();
        let mut samples = Vec::new();
        for chunk in chunks {
            samples.clear();
            specflow::audio::decode_pcm(
                specflow::audio::SampleFormat::S16le,
                1,
                &chunk.payload,
                &mut samples,
            )
            .unwrap();
            batch.clear();
            extractor.process(&mut ws, &mut state, &samples, &mut batch);
            if chunk.is_eos() {
                extractor.finish_stream(&mut state, &mut batch);
            }
            if !batch.is_empty() {
                let frames: Vec<serde_json::Value> = (0..batch.len())
                    .map(|i| serde_json::to_value(batch.frame(i)).unwrap())
                    .collect();
                out.insert(
                    format!("{key}:{}", batch.index(0)),
                    serde_json::Value::Array(frames),
                );
            }
        }
    }
    out
}

/// Stored records as `_id` → frames without timestamps.
pub async fn stored_records(
    collection: &mongodb::Collection<Document>,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    all_documents(collection)
        .await
        .into_iter()
        .map(|doc| {
            let id = doc.get_str("_id").unwrap().to_string();
            if doc.contains_key("columns") {
                return (id, frames_of_columns(&doc));
            }
            let mut json = serde_json::to_value(&doc).unwrap();
            let mut frames = json["frames"].take();
            for frame in frames.as_array_mut().unwrap() {
                frame.as_object_mut().unwrap().remove("timestamp_ms");
            }
            (id, frames)
        })
        .collect()
}

/// The frames (as JSON, without `timestamp_ms`) of a document in the `columns` layout.
pub fn frames_of_columns(doc: &Document) -> serde_json::Value {
    use mongodb::bson::binary::Vector;
    use serde_json::json;
    let n = doc.get_i64("frame_count").unwrap() as usize;
    let first = doc.get_i64("first_frame").unwrap();
    let hop = doc.get_i64("hop_length").unwrap();
    let mut frames: Vec<serde_json::Map<String, serde_json::Value>> = (0..n)
        .map(|i| {
            let index = first + i as i64;
            let mut frame = serde_json::Map::new();
            frame.insert("index".into(), json!(index));
            frame.insert("start_sample".into(), json!(index * hop));
            frame
        })
        .collect();
    for (name, value) in doc.get_document("columns").unwrap() {
        match (name.as_str(), value) {
            ("timestamp_ms", _) => {}
            ("index", Bson::Array(values)) => {
                for (frame, v) in frames.iter_mut().zip(values) {
                    let index = v.as_i64().unwrap();
                    frame.insert("index".into(), json!(index));
                    frame.insert("start_sample".into(), json!(index * hop));
                }
            }
            ("voiced", Bson::Array(values)) => {
                for (frame, v) in frames.iter_mut().zip(values) {
                    frame.insert(name.clone(), json!(v.as_bool().unwrap()));
                }
            }
            (_, Bson::Binary(binary)) => {
                let Ok(Vector::Float32(values)) = Vector::try_from(binary) else {
                    panic!("{name} is not a float32 vector")
                };
                let vector = name
                    .parse::<specflow::dsp::FeatureName>()
                    .is_ok_and(|f| !f.is_scalar());
                let width = values.len() / n;
                assert_eq!(values.len(), n * width, "{name}: length");
                for (i, frame) in frames.iter_mut().enumerate() {
                    let row = &values[i * width..(i + 1) * width];
                    let value = if vector {
                        serde_json::to_value(row).unwrap()
                    } else if row[0].is_nan() {
                        serde_json::Value::Null
                    } else {
                        serde_json::to_value(row[0]).unwrap()
                    };
                    frame.insert(name.clone(), value);
                }
            }
            (_, other) => panic!("unexpected column {name}: {other:?}"),
        }
    }
    serde_json::to_value(frames).unwrap()
}

/// Asserts MongoDB holds exactly the expected records with identical frames.
pub async fn assert_mongo_equals(
    collection: &mongodb::Collection<Document>,
    expected: &std::collections::BTreeMap<String, serde_json::Value>,
) {
    let stored = stored_records(collection).await;
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !stored.contains_key(*k))
        .take(10)
        .collect();
    let extra: Vec<_> = stored
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "records differ: missing {missing:?}, unexpected {extra:?} ({} stored, {} expected)",
        stored.len(),
        expected.len()
    );
    for (id, frames) in expected {
        assert_eq!(&stored[id], frames, "frames of record {id}");
    }
}

/// Asserts every expected record id appears at least once on the output topic.
pub async fn assert_topic_has_every_record(
    topic: &str,
    expected: &std::collections::BTreeMap<String, serde_json::Value>,
) -> usize {
    use rdkafka::Message;
    let messages = consume(topic, expected.len(), Duration::from_secs(60)).await;
    let mut seen = std::collections::HashSet::new();
    for m in &messages {
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        seen.insert(value["id"].as_str().unwrap().to_string());
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !seen.contains(*k))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "records missing from {topic}: {missing:?}"
    );
    messages.len()
}

/// Sends rounds of chunks (one chunk of every stream per round) every `pace`.
pub fn spawn_paced_producer(
    topic: String,
    streams: Vec<(String, Vec<Chunk>)>,
    pace: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut producer = producer();
        let rounds = streams.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
        for round in 0..rounds {
            let batch: Vec<Chunk> = streams
                .iter()
                .filter_map(|(_, c)| c.get(round).cloned())
                .collect();
            // A broker restart can fail a delivery: send the round again with a fresh producer
            // (a chunk delivered twice overlaps itself and is dead-lettered, not recomputed).
            let mut attempts = 0;
            while let Err(e) = try_send_all(&producer, &topic, &batch).await {
                attempts += 1;
                assert!(attempts < 10, "cannot deliver round {round}: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                producer = self::producer();
            }
            tokio::time::sleep(pace).await;
        }
    })
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

/// Runs `scripts/services.sh ARGS`.
pub fn services(args: &[&str]) {
    let status = std::process::Command::new("bash")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh"))
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
                .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh"))
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
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `specflow run` child process (the test binary's own build). Dropping it kills the
/// process, so a failing test never leaves a worker running against the shared services.
pub struct WorkerProcess(support::WorkerProcess);

impl WorkerProcess {
    /// Starts `specflow run --config <config>`, its log appended to `log`.
    pub fn start(config: &std::path::Path, log: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_specflow"));
        let process = support::WorkerProcess::start(binary, config, log, env.iter().copied())
            .expect("start specflow");
        Self(process)
    }

    /// SIGKILL, no drain.
    pub fn kill(mut self) {
        self.0.kill().expect("SIGKILL");
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
