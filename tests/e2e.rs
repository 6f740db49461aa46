//! End to end against the real local Kafka and FerretDB: reference WAVs cut into random
//! chunks go through the broker, the worker runs in-process, and every expected frame must
//! appear exactly once in MongoDB and in the output topic, with the values the offline DSP
//! computes for the whole signal.

use specflow_test_support::testing as common;

use common::*;
use mongodb::bson::Document;
use rdkafka::message::{Headers, Message};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use specflow::audio::{SampleFormat, decode_pcm};
use specflow::dsp::{DspConfig, FeatureExtractor, FrameBatch};

/// Expected frames of a whole signal, by index, as JSON.
fn expected_frames(
    pcm: &[i16],
    channels: u16,
    sample_rate: u32,
    dsp: &DspConfig,
) -> BTreeMap<u64, Value> {
    let mut mono = Vec::new();
    decode_pcm(SampleFormat::S16le, channels, &s16le_bytes(pcm), &mut mono).unwrap();
    let extractor = FeatureExtractor::new(dsp, sample_rate).unwrap();
    let mut ws = extractor.workspace();
    let mut state = extractor.new_stream(0);
    let mut batch = FrameBatch::new();
    extractor.process(&mut ws, &mut state, &mono, &mut batch);
    extractor.finish_stream(&mut state, &mut batch);
    (0..batch.len())
        .map(|i| {
            (
                batch.index(i),
                serde_json::to_value(batch.frame(i)).unwrap(),
            )
        })
        .collect()
}

fn read_pcm(name: &str) -> (Vec<i16>, u16, u32) {
    let audio = specflow::audio::wav::read_wav(&reference_signal(name)).expect("reference WAV");
    (audio.pcm_s16, audio.channels, audio.sample_rate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reference_streams_arrive_exactly_once_with_offline_values() {
    let names = Names::new("e2e");
    create_topics(&names, 3).await;
    let mut settings = settings(&names);
    // 2048/512 frames hold pYIN's longest period (65 Hz, within frame_length - 1 samples) at
    // 44.1 kHz as well as at 16 kHz.
    settings.dsp.frame_length = 2048;
    settings.dsp.hop_length = 512;
    let dsp = settings.dsp.clone();

    let streams = [
        ("sine", "sine440_16k.wav", 4_000usize),
        ("speech", "speech_16k.wav", 1_600),
        ("twotone", "twotone_stereo_44k.wav", 9_000),
        ("chirp-tiny-chunks", "chirp_16k.wav", 90),
    ];
    let mut expected: HashMap<String, BTreeMap<u64, Value>> = HashMap::new();
    let mut messages = Vec::new();
    for (seed, (key, file, max_chunk)) in streams.iter().enumerate() {
        let (pcm, channels, rate) = read_pcm(file);
        expected.insert(key.to_string(), expected_frames(&pcm, channels, rate, &dsp));
        messages.push(chunk_stream(
            key,
            &pcm,
            channels,
            rate,
            7 + seed as u64,
            *max_chunk,
        ));
    }
    // Interleave the streams the way concurrent producers would.
    let mut interleaved = Vec::new();
    let longest = messages.iter().map(Vec::len).max().unwrap();
    for i in 0..longest {
        for stream in &messages {
            if let Some(chunk) = stream.get(i) {
                interleaved.push(chunk.clone());
            }
        }
    }
    let input_messages = interleaved.len();
    let producer = producer();
    send_all(&producer, &names.input, &interleaved).await;

    let worker = spawn_worker(settings);
    let total: usize = expected.values().map(BTreeMap::len).sum();
    let collection = collection(&names).await;
    wait_for_frames(&collection, total as i64, Duration::from_secs(120)).await;
    let metrics = worker.metrics.clone();
    worker.stop().await;

    // MongoDB: each frame exactly once, with the offline values; _id is deterministic.
    let docs = all_documents(&collection).await;
    let mut seen: HashMap<String, BTreeMap<u64, Value>> = HashMap::new();
    for doc in &docs {
        let stream = doc.get_str("stream_id").unwrap().to_string();
        let first = doc.get_i64("first_frame").unwrap();
        assert_eq!(doc.get_str("_id").unwrap(), format!("{stream}:{first}"));
        assert_eq!(
            doc.get_i32("schema")
                .or_else(|_| doc.get_i64("schema").map(|v| v as i32))
                .unwrap(),
            1
        );
        let json: Value = serde_json::to_value(doc).unwrap();
        for frame in json["frames"].as_array().unwrap() {
            let index = frame["index"].as_u64().unwrap();
            let previous = seen
                .entry(stream.clone())
                .or_default()
                .insert(index, without_timestamps(frame.clone()));
            assert!(previous.is_none(), "frame {index} of {stream} stored twice");
        }
    }
    for (stream, frames) in &expected {
        let got = seen
            .get(stream)
            .unwrap_or_else(|| panic!("no records for {stream}"));
        assert_eq!(got.len(), frames.len(), "frame count of {stream}");
        for (index, want) in frames {
            assert_eq!(&got[index], want, "frame {index} of {stream}");
        }
    }

    // Kafka: the same records, each once.
    let records = consume(&names.output, docs.len(), Duration::from_secs(30)).await;
    assert_eq!(
        records.len(),
        docs.len(),
        "output records vs stored documents"
    );
    let mut kafka_frames: HashMap<String, usize> = HashMap::new();
    for record in &records {
        let value: Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
        let stream = value["stream_id"].as_str().unwrap().to_string();
        assert_eq!(record.key().unwrap(), stream.as_bytes());
        for frame in value["frames"].as_array().unwrap() {
            let index = frame["index"].as_u64().unwrap();
            assert_eq!(
                as_f32(without_timestamps(frame.clone())),
                as_f32(expected[&stream][&index].clone()),
                "kafka frame {index} of {stream}"
            );
            *kafka_frames.entry(stream.clone()).or_default() += 1;
        }
        assert!(value["source"]["offset"].as_i64().is_some());
        assert!(
            value["summary"]["rms"]["mean"].as_f64().is_some(),
            "summary present: {}",
            value["summary"]
        );
    }
    for (stream, frames) in &expected {
        assert_eq!(
            kafka_frames[stream],
            frames.len(),
            "kafka frames of {stream}"
        );
    }
    assert_eq!(
        metrics.messages_consumed_total.get() as usize,
        input_messages
    );
    assert_eq!(metrics.frames_computed_total.get() as usize, total);
    assert_eq!(metrics.records_produced_total.get() as usize, docs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_messages_go_to_the_dead_letter_topic_and_good_streams_complete() {
    let names = Names::new("poison");
    create_topics(&names, 2).await;
    let mut settings = settings(&names);
    settings.input.max_message_bytes = 64_000;
    let dsp = settings.dsp.clone();
    let (pcm, channels, rate) = read_pcm("sine440_16k.wav");
    let good = chunk_stream("good", &pcm, channels, rate, 3, 2_000);
    let expected = expected_frames(&pcm, channels, rate, &dsp);

    let header = |k: &str, v: &str| (k.to_string(), v.to_string());
    let poison = vec![
        (
            Chunk {
                key: Some(b"bad".to_vec()),
                payload: vec![0; 3],
                headers: vec![],
            },
            "payload length 3 is not a multiple of 2 bytes",
        ),
        (
            Chunk {
                key: Some(b"bad".to_vec()),
                payload: vec![0; 4],
                headers: vec![header("audio.format", "mp3")],
            },
            "header audio.format = \"mp3\": unknown format",
        ),
        (
            Chunk {
                key: Some(b"bad".to_vec()),
                payload: vec![0; 4],
                headers: vec![header("audio.sample_rate", "0")],
            },
            "header audio.sample_rate = \"0\"",
        ),
        (
            Chunk {
                key: Some(b"bad".to_vec()),
                payload: vec![0; 4],
                headers: vec![header("audio.channels", "abc")],
            },
            "header audio.channels = \"abc\": not a non-negative integer",
        ),
        (
            Chunk {
                key: Some(b"bad".to_vec()),
                payload: [f32::NAN, 0.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                headers: vec![header("audio.format", "f32le")],
            },
            "f32le sample 0 is not finite",
        ),
        (
            Chunk {
                key: Some(b"bad".to_vec()),
                payload: vec![],
                headers: vec![],
            },
            "payload is empty",
        ),
        (
            Chunk {
                key: Some(b"bad".to_vec()),
                payload: vec![0; 70_000],
                headers: vec![],
            },
            "more than input.max_message_bytes",
        ),
        (
            Chunk {
                key: None,
                payload: vec![0; 4],
                headers: vec![],
            },
            "message key (stream id) is missing",
        ),
        (
            Chunk {
                key: Some(vec![0xff, 0xfe]),
                payload: vec![0; 4],
                headers: vec![],
            },
            "not valid UTF-8",
        ),
        (
            Chunk {
                key: Some(b"good".to_vec()),
                payload: vec![0; 4],
                headers: vec![header("audio.start_sample", "0")],
            },
            "goes backwards",
        ),
    ];
    // Good chunks first half, then poison (the backwards one needs the stream to have moved on),
    // then the rest of the good stream.
    let half = good.len() / 2;
    let mut sequence: Vec<Chunk> = good[..half].to_vec();
    sequence.extend(poison.iter().map(|(c, _)| c.clone()));
    sequence.extend(good[half..].iter().cloned());
    let producer = producer();
    // All on one partition so the backwards chunk lands after the good stream's first half.
    for chunk in &sequence {
        send_to_partition(&producer, &names.input, 0, chunk).await;
    }

    let worker = spawn_worker(settings);
    let collection = collection(&names).await;
    wait_for_frames(&collection, expected.len() as i64, Duration::from_secs(120)).await;
    let letters = consume(&names.dead_letter, poison.len(), Duration::from_secs(30)).await;
    let metrics = worker.metrics.clone();
    worker.stop().await;

    assert_eq!(
        letters.len(),
        poison.len(),
        "one dead letter per poison message"
    );
    // The dead-letter topic has several partitions: match letters by reason, not by order.
    let error_of = |letter: &rdkafka::message::OwnedMessage| header_of(letter, "error");
    for (chunk, reason) in &poison {
        let matching: Vec<_> = letters
            .iter()
            .filter(|l| error_of(l).contains(reason))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "exactly one dead letter should say {reason:?}; got {:?}",
            letters.iter().map(error_of).collect::<Vec<_>>()
        );
        let letter = matching[0];
        let headers = letter.headers().expect("headers");
        assert_eq!(
            letter.key().map(<[u8]>::to_vec),
            chunk.key,
            "original key kept"
        );
        assert_eq!(
            letter.payload().unwrap_or_default(),
            chunk.payload.as_slice(),
            "original payload kept"
        );
        for (k, v) in &chunk.headers {
            assert!(
                headers
                    .iter()
                    .any(|h| h.key == k && h.value == Some(v.as_bytes())),
                "original header {k} kept"
            );
        }
    }
    let docs: Vec<Document> = all_documents(&collection).await;
    let frames: usize = docs
        .iter()
        .map(|d| d.get_i64("frame_count").unwrap() as usize)
        .sum();
    assert_eq!(
        frames,
        expected.len(),
        "good stream complete despite poison"
    );
    assert_eq!(dead_letters_sent(&metrics) as usize, poison.len());
}

/// Sends three synthetic streams (`"{prefix}-{i}"`, seeds from `first_seed`) to the input
/// topic, runs a worker until MongoDB holds every frame, stops it; returns the offline records
/// and the collection.
async fn run_until_stored(
    names: &Names,
    settings: specflow::config::Settings,
    prefix: &str,
    first_seed: u64,
) -> (BTreeMap<String, Value>, mongodb::Collection<Document>) {
    let streams = synthetic_streams(prefix, 3, first_seed, 1.5);
    let expected = expected_records(&streams, &settings.dsp);
    send_streams(&producer(), &names.input, &streams).await;
    let worker = spawn_worker(settings);
    let collection = collection(names).await;
    let frames: usize = expected.values().map(|f| f.as_array().unwrap().len()).sum();
    wait_for_frames(&collection, frames as i64, Duration::from_secs(60)).await;
    worker.stop().await;
    (expected, collection)
}

/// `mongo.layout = "columns"` stores the same frames as packed float32 vectors, which a real
/// MongoDB-compatible server accepts and returns intact; the output topic keeps the frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn columns_layout_stores_the_same_values_as_packed_vectors() {
    let names = Names::new("columns");
    create_topics(&names, 2).await;
    let mut settings = settings(&names);
    settings.mongo.layout = specflow::record::DocumentLayout::Columns;
    let (expected, collection) = run_until_stored(&names, settings, "col", 40).await;
    let docs = all_documents(&collection).await;
    assert!(
        docs.iter()
            .all(|d| d.contains_key("columns") && !d.contains_key("frames"))
    );
    assert_mongo_equals(&collection, &expected).await;
    assert_topic_has_every_record(&names.output, &expected).await;
}

/// `mongo.insert_max_bytes` at its smallest (1 KiB, below one record) sends every document of a
/// batch in an insert call of its own, one after the other: the real server still holds every
/// record exactly once, with the offline values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_insert_calls_store_every_record_exactly_once() {
    let names = Names::new("insert-split");
    create_topics(&names, 2).await;
    let mut settings = settings(&names);
    settings.mongo.insert_max_bytes = 1024;
    let (expected, collection) = run_until_stored(&names, settings, "split", 60).await;
    assert_mongo_equals(&collection, &expected).await;
}

/// `specflow produce` without `--realtime` sends faster than real time, yet stamps every chunk
/// with its capture time: the stream's start + start_sample / sample_rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_stamps_capture_time_not_send_time() {
    let names = Names::new("produce-time");
    create_topics(&names, 1).await;
    let settings = settings(&names);
    let stdout = produce_speech(
        specflow_test_support::specflow_binary!(),
        &settings,
        &[
            "--streams",
            "2",
            "--stream-prefix",
            "speaker-",
            "--chunk-ms",
            "70",
        ],
    );
    // "produced N messages, B bytes"
    let produced: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    let messages = consume(&names.input, produced as usize, Duration::from_secs(30)).await;
    assert_eq!(messages.len() as u64, produced);
    let header = |m: &rdkafka::message::OwnedMessage, name: &str| -> i64 {
        let value = header_of(m, name);
        value
            .parse()
            .unwrap_or_else(|e| panic!("header {name} = {value:?}: {e}"))
    };
    let mut first: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut checked = 0;
    for m in &messages {
        let key = m.key().expect("key").to_vec();
        let start_sample = header(m, "audio.start_sample");
        let timestamp = header(m, "audio.timestamp_ms");
        let start = *first.entry(key).or_insert_with(|| {
            assert_eq!(start_sample, 0, "first chunk of a stream starts at 0");
            timestamp
        });
        // 70 ms chunks at 16 kHz: chunk k starts at sample 1120 k, captured 70 k ms in.
        assert_eq!(
            timestamp - start,
            start_sample * 1000 / 16_000,
            "chunk at sample {start_sample}"
        );
        checked += 1;
    }
    assert_eq!(first.len(), 2);
    assert!(checked > 2 * 60, "speech is ~4.5 s: {checked} chunks");
}

/// The sink's raw insert (`insert_many` of raw BSON documents): split
/// into calls of at most `insert_max_bytes`, documents already stored (same `_id`) count as
/// written, and the server holds each document once, field for field as it was sent, values
/// of every BSON type the records use included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_inserts_store_each_document_once_as_sent() {
    use mongodb::bson::{RawDocumentBuf, doc};
    let names = Names::new("raw-insert");
    let sink = specflow::sinks::mongo::MongoSinkConfig {
        uri: mongo_uri(),
        database: names.database.clone(),
        insert_max_bytes: 4096,
        ..Default::default()
    }
    .build()
    .await
    .expect("mongo sink");
    let document = |i: i64| {
        let values: Vec<f64> = (0..40).map(|k| (i * 40 + k) as f64 * 0.5 - 3.25).collect();
        doc! {
            "_id": format!("stream-{}:{i}", i % 3),
            "stream_id": format!("stream-{}", i % 3),
            "start_ms": i * 100,
            "frame_count": i32::try_from(i % 7).unwrap(),
            "voiced": i % 2 == 0,
            "pitch": if i % 2 == 0 { mongodb::bson::Bson::Double(110.0 + i as f64) } else { mongodb::bson::Bson::Null },
            "mel": values,
            "source": { "topic": "audio.raw", "partition": 0, "offset": i },
        }
    };
    let raw = |docs: &[Document]| -> Vec<RawDocumentBuf> {
        docs.iter()
            .map(|d| RawDocumentBuf::from_document(d).unwrap())
            .collect()
    };
    let first: Vec<Document> = (0..30).map(document).collect();
    sink.insert_idempotent(&raw(&first))
        .await
        .expect("first insert");
    // Half of these are stored already: they count as written, the rest are added.
    let second: Vec<Document> = (15..60).map(document).collect();
    sink.insert_idempotent(&raw(&second))
        .await
        .expect("insert over stored documents");
    let mut stored = all_documents(sink.collection()).await;
    stored.sort_by_key(|d| d.get_i64("start_ms").unwrap());
    let expected: Vec<Document> = (0..60).map(document).collect();
    assert_eq!(stored.len(), expected.len(), "each document stored once");
    for (got, want) in stored.iter().zip(&expected) {
        assert_eq!(got, want);
    }
}
