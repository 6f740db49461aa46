//! Shared helpers for integration tests against the real local Kafka and FerretDB
//! (started by `scripts/services.sh up`; addresses overridable with SPECFLOW_TEST_BROKERS
//! and SPECFLOW_TEST_MONGO_URI).
#![allow(dead_code)]

use mongodb::bson::{Document, doc};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use specflow::config::Settings;
use specflow::telemetry::health::Health;
use specflow::telemetry::metrics::Metrics;

pub fn brokers() -> String {
    std::env::var("SPECFLOW_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn mongo_uri() -> String {
    std::env::var("SPECFLOW_TEST_MONGO_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

pub fn reference_dir() -> PathBuf {
    std::env::var_os("SPECFLOW_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference"))
}

/// Topics and database of one test.
pub struct Names {
    pub input: String,
    pub output: String,
    pub dead_letter: String,
    pub database: String,
    pub group: String,
}

impl Names {
    pub fn new(test: &str) -> Self {
        let id = unique(test);
        Self {
            input: format!("{id}.in"),
            output: format!("{id}.out"),
            dead_letter: format!("{id}.dlq"),
            database: id.replace('.', "_"),
            group: format!("{id}.group"),
        }
    }
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
    s.mongo.uri = mongo_uri();
    s.mongo.database = names.database.clone();
    s.http.enabled = false;
    s.runtime.worker_threads = 2;
    s
}

pub async fn create_topics(names: &Names, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let topics = [&names.input, &names.output, &names.dead_letter];
    let new: Vec<_> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create topics (is Kafka up? scripts/services.sh up)")
    {
        result.expect("topic created");
    }
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .expect("producer")
}

/// One message to send.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

pub async fn send_all(producer: &FutureProducer, topic: &str, chunks: &[Chunk]) {
    let sends = chunks.iter().map(|c| {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &c.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&c.payload)
            .headers(headers);
        if let Some(key) = &c.key {
            record = record.key(key.as_slice());
        }
        producer.send(record, Timeout::After(Duration::from_secs(30)))
    });
    for result in futures::future::join_all(sends).await {
        result.expect("delivered");
    }
}

/// Cuts interleaved s16 PCM of one stream into chunks of random sizes with every header.
pub fn chunk_stream(
    key: &str,
    pcm: &[i16],
    channels: u16,
    sample_rate: u32,
    seed: u64,
    max_frames: usize,
) -> Vec<Chunk> {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let frames = pcm.len() / usize::from(channels);
    let mut chunks = Vec::new();
    let mut start = 0usize;
    while start < frames {
        let len = (1 + (next() as usize % max_frames)).min(frames - start);
        let payload = pcm[start * usize::from(channels)..(start + len) * usize::from(channels)]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let mut headers = vec![
            ("audio.format".to_string(), "s16le".to_string()),
            ("audio.sample_rate".to_string(), sample_rate.to_string()),
            ("audio.channels".to_string(), channels.to_string()),
            ("audio.start_sample".to_string(), start.to_string()),
            (
                "audio.timestamp_ms".to_string(),
                (1_700_000_000_000i64 + (start as i64 * 1000 / i64::from(sample_rate))).to_string(),
            ),
        ];
        if start + len == frames {
            headers.push(("audio.eos".to_string(), "1".to_string()));
        }
        chunks.push(Chunk {
            key: Some(key.as_bytes().to_vec()),
            payload,
            headers,
        });
        start += len;
    }
    chunks
}

/// A worker running in this process.
pub struct RunningWorker {
    pub token: CancellationToken,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

pub fn spawn_worker(settings: Settings) -> RunningWorker {
    let token = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let handle = tokio::spawn(specflow::pipeline::run(
        settings,
        metrics.clone(),
        health.clone(),
        token.clone(),
    ));
    RunningWorker {
        token,
        metrics,
        health,
        handle,
    }
}

impl RunningWorker {
    pub async fn stop(self) {
        self.token.cancel();
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
