//! What MongoDB and the output topic hold, against what an uninterrupted run stores: the
//! stored documents and frames, reading a topic, the expected records, the paced producer.

use mongodb::bson::{Bson, Document, doc};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use std::time::Duration;
use tokio::task::JoinHandle;

use super::*;

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
    let mut got = 0;
    let stored = eventually(timeout, async || {
        got = stored_frames(collection).await;
        got >= expected
    })
    .await;
    assert!(
        stored,
        "only {got} of {expected} frames stored after {timeout:?}"
    );
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

/// Reads `topic` from the start until `expected` messages arrived (or the timeout), as a
/// `read_committed` reader.
pub async fn consume(topic: &str, expected: usize, timeout: Duration) -> Vec<OwnedMessage> {
    consume_from(&brokers(), topic, expected, timeout).await
}

/// [`consume`] from the cluster at `brokers`.
pub async fn consume_from(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
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
            (id, without_timestamps(json["frames"].take()))
        })
        .collect()
}

/// `frames` without `timestamp_ms` (the only value that depends on when a frame was computed):
/// one frame (a JSON object) or every frame of an array of them.
pub fn without_timestamps(mut frames: serde_json::Value) -> serde_json::Value {
    match &mut frames {
        serde_json::Value::Array(items) => {
            for frame in items {
                frame
                    .as_object_mut()
                    .expect("a frame is a JSON object")
                    .remove("timestamp_ms");
            }
        }
        serde_json::Value::Object(frame) => {
            frame.remove("timestamp_ms");
        }
        other => panic!("not a frame nor frames: {other}"),
    }
    frames
}

/// The value of header `name` of a Kafka message, as text; panics when it has none.
pub fn header_of(message: &OwnedMessage, name: &str) -> String {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    message
        .headers()
        .and_then(|headers| headers.iter().find(|h| h.key == name))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| panic!("message without header {name}"))
}

/// The `id`s of output records (JSON payloads with an `id` field).
pub fn record_ids(messages: &[OwnedMessage]) -> std::collections::HashSet<String> {
    use rdkafka::Message;
    messages
        .iter()
        .map(|m| {
            let value: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("a JSON record");
            value["id"].as_str().expect("a record id").to_owned()
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
    let messages = consume(topic, expected.len(), Duration::from_secs(60)).await;
    let seen = record_ids(&messages);
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
    spawn_paced_producer_to(brokers(), topic, streams, pace)
}

/// [`spawn_paced_producer`] to the cluster at `brokers`.
pub fn spawn_paced_producer_to(
    brokers: String,
    topic: String,
    streams: Vec<(String, Vec<Chunk>)>,
    pace: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut producer = renewable_producer_for(&brokers);
        let rounds = streams.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
        for round in 0..rounds {
            let batch: Vec<Chunk> = streams
                .iter()
                .filter_map(|(_, c)| c.get(round).cloned())
                .collect();
            // A broker restart can fail a delivery, or leave the producer unable to deliver
            // (its deliveries then time out): send the round again with a fresh producer (a
            // chunk delivered twice overlaps itself and is dead-lettered, not recomputed).
            let mut attempts = 0;
            while let Err(e) = try_send_all(&producer, &topic, &batch).await {
                attempts += 1;
                assert!(attempts < 10, "cannot deliver round {round}: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                producer = renewable_producer_for(&brokers);
            }
            tokio::time::sleep(pace).await;
        }
    })
}

/// Once every expected frame is stored (up to 180 s), MongoDB holds exactly `expected` (no
/// more frames a second later) and the output topic every expected record.
pub async fn assert_stored_as_uninterrupted(
    names: &Names,
    expected: &std::collections::BTreeMap<String, serde_json::Value>,
) {
    let total: i64 = expected
        .values()
        .map(|f| f.as_array().unwrap().len() as i64)
        .sum();
    let collection = collection(names).await;
    let started = Instant::now();
    wait_for_frames(&collection, total, Duration::from_secs(180)).await;
    eprintln!("all frames stored after {:?}", started.elapsed());
    // An in-flight duplicate (which must not exist) would land now: the count must stay.
    assert!(
        holds_for(Duration::from_secs(1), async || stored_frames(&collection)
            .await
            == total)
        .await,
        "more than the expected {total} frames were stored"
    );
    assert_mongo_equals(&collection, expected).await;
    let records = assert_topic_has_every_record(&names.output, expected).await;
    eprintln!(
        "{records} output records for {} expected, checked after {:?}",
        expected.len(),
        started.elapsed()
    );
}
