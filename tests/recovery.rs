//! Restart recovery from the checkpoint topic, against the real local Kafka and FerretDB.
//!
//! The case that defeated the MongoDB-lookup recovery: one partition receives `A[0, 8000)`,
//! `B[0, 8000)` (then B goes idle), a message X for stream A, and `A[8000, 16000)`. After a
//! restart that replays from B's offset, MongoDB, the output topic and the dead-letter topic
//! must hold exactly what one uninterrupted run wrote, whatever X is: ragged, a re-sent first
//! chunk, or a dead letter of any reason.

use specflow_test_support::testing as common;

use common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use specflow::audio::SampleFormat;
use specflow::audio::headers::ChunkHeaders;
use std::collections::BTreeMap;
use std::time::Duration;

/// One variant of X, on its own partition with its own streams `A-<n>` and `B-<n>`.
struct Variant {
    name: &'static str,
    /// X for stream A (or, for the key errors, for no stream at all).
    x: Chunk,
    /// What its dead letter says.
    reason: &'static str,
    /// X names stream A, so its checkpoint records it and a replay skips it.
    names_stream_a: bool,
}

fn header(key: &str, value: &str) -> (String, String) {
    (key.to_string(), value.to_string())
}

/// A mono 16 kHz s16le chunk of stream `key` starting at sample `start` (no `audio.eos`).
fn pcm_chunk(key: &str, pcm: &[i16], start: usize) -> Chunk {
    let headers = ChunkHeaders::pcm(SampleFormat::S16le, 16_000, 1, start as u64)
        .with_timestamp_ms(EPOCH_MS + start as i64 / 16);
    Chunk::new(key, s16le_bytes(pcm), &headers)
}

fn variants(a: &[i16]) -> Vec<(String, Variant)> {
    let keyed = |payload: Vec<u8>, headers: Vec<(String, String)>| Chunk {
        key: Some(Vec::new()),
        payload,
        headers,
    };
    let list = vec![
        Variant {
            name: "ragged without start_sample",
            x: keyed(vec![0; 3], vec![]),
            reason: "payload length 3 is not a multiple of 2 bytes",
            names_stream_a: true,
        },
        Variant {
            name: "re-sent first chunk",
            x: pcm_chunk("", &a[..8_000], 0),
            reason: "goes backwards",
            names_stream_a: true,
        },
        Variant {
            name: "unknown format",
            x: keyed(vec![0; 4], vec![header("audio.format", "mp3")]),
            reason: "unknown format",
            names_stream_a: true,
        },
        Variant {
            name: "bad sample rate",
            x: keyed(vec![0; 4], vec![header("audio.sample_rate", "0")]),
            reason: "header audio.sample_rate = \"0\"",
            names_stream_a: true,
        },
        Variant {
            name: "bad channels",
            x: keyed(vec![0; 4], vec![header("audio.channels", "abc")]),
            reason: "header audio.channels = \"abc\"",
            names_stream_a: true,
        },
        Variant {
            name: "non-finite sample",
            x: keyed(
                [f32::NAN, 0.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                vec![header("audio.format", "f32le")],
            ),
            reason: "is not finite",
            names_stream_a: true,
        },
        Variant {
            name: "empty payload",
            x: keyed(vec![], vec![]),
            reason: "payload is empty",
            names_stream_a: true,
        },
        Variant {
            name: "too large",
            x: keyed(vec![0; 70_000], vec![]),
            reason: "more than input.max_message_bytes",
            names_stream_a: true,
        },
        Variant {
            name: "sample rate the dsp settings cannot serve",
            x: keyed(
                vec![0; 4],
                vec![
                    header("audio.sample_rate", "4000"),
                    header("audio.start_sample", "8000"),
                ],
            ),
            reason: "does not fit the [dsp] settings",
            names_stream_a: true,
        },
        Variant {
            name: "missing key",
            x: Chunk {
                key: None,
                payload: vec![0; 4],
                headers: vec![],
            },
            reason: "message key (stream id) is missing",
            names_stream_a: false,
        },
        Variant {
            name: "key not UTF-8",
            x: Chunk {
                key: Some(vec![0xff, 0xfe]),
                payload: vec![0; 4],
                headers: vec![],
            },
            reason: "not valid UTF-8",
            names_stream_a: false,
        },
    ];
    list.into_iter()
        .enumerate()
        .map(|(n, mut v)| {
            let a_key = format!("A-{n}");
            if v.x.key.as_deref() == Some(b"".as_slice()) {
                v.x.key = Some(a_key.as_bytes().to_vec());
            }
            (a_key, v)
        })
        .collect()
}

/// Sets the group's committed offset of every input partition to `offset` (no member runs).
fn rewind(names: &Names, partitions: i32, offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &names.group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(&names.input, p, Offset::Offset(offset))
            .unwrap();
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .expect("rewind commit");
}

fn error_of(letter: &OwnedMessage) -> String {
    header_of(letter, "error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_after_a_bad_or_resent_chunk_stores_nothing_twice() {
    let a = synthetic_pcm(1, 1.0);
    let b = synthetic_pcm(2, 0.5);
    let variants = variants(&a);
    let partitions = variants.len() as i32;
    let names = Names::new("recovery");
    create_topics(&names, partitions).await;
    let mut settings = settings(&names);
    settings.input.max_message_bytes = 64_000;
    settings.source.commit_interval_ms = 100;

    // Per variant, on its own partition: A[0, 8000), B[0, 8000), X, A[8000, 16000).
    let producer = producer();
    let mut streams: Vec<(String, Vec<Chunk>)> = Vec::new();
    for (n, (a_key, variant)) in variants.iter().enumerate() {
        let b_key = format!("B-{n}");
        let a0 = pcm_chunk(a_key, &a[..8_000], 0);
        let b0 = pcm_chunk(&b_key, &b[..8_000], 0);
        let a1 = pcm_chunk(a_key, &a[8_000..], 8_000);
        let sequence = [a0.clone(), b0.clone(), variant.x.clone(), a1.clone()];
        for chunk in &sequence {
            send_to_partition(&producer, &names.input, n as i32, chunk).await;
        }
        streams.push((a_key.clone(), vec![a0, a1]));
        streams.push((b_key, vec![b0]));
    }
    // What one uninterrupted run stores: X changes nothing.
    let expected = expected_records(&streams, &settings.dsp);
    let total: i64 = expected
        .values()
        .map(|f| f.as_array().unwrap().len() as i64)
        .sum();

    // The uninterrupted run.
    let worker = spawn_worker(settings.clone());
    let collection = collection(&names).await;
    wait_for_frames(&collection, total, Duration::from_secs(120)).await;
    // Every partition holds 4 messages.
    let all_committed = || {
        committed_offsets(&names.group, &names.input, partitions)
            .iter()
            .all(|o| *o == 4)
    };
    assert!(
        eventually(Duration::from_secs(30), async || all_committed()).await,
        "every partition committed through its last message: {:?}",
        committed_offsets(&names.group, &names.input, partitions)
    );
    worker.stop().await;
    assert_mongo_equals(&collection, &expected).await;

    // A restart that replays from B's message, as when B's idleness held the commit back.
    rewind(&names, partitions, 1);
    let worker = spawn_worker(settings.clone());
    assert!(
        eventually(Duration::from_secs(60), async || all_committed()).await,
        "the replay was consumed"
    );
    let replayed = worker.metrics.messages_replayed_total.get();
    let recomputed = worker.metrics.frames_computed_total.get();
    worker.stop().await;
    let stream_messages: u64 = variants
        .iter()
        .map(|(_, v)| 2 + u64::from(v.names_stream_a))
        .sum();
    assert_eq!(
        replayed, stream_messages,
        "B's chunk, X (when it names A) and A's second chunk are recognised as handled"
    );
    assert_eq!(recomputed, 0, "nothing is computed twice");

    // MongoDB and the output topic hold exactly the uninterrupted run's records.
    assert_mongo_equals(&collection, &expected).await;
    let outputs = consume(&names.output, expected.len(), Duration::from_secs(30)).await;
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for m in &outputs {
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        *ids.entry(value["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        ids.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the output topic has the same records"
    );
    assert!(
        ids.values().all(|n| *n == 1),
        "no output record twice: {ids:?}"
    );

    // Every X was dead-lettered in the original run; the ones naming stream A never again.
    let letters = consume(&names.dead_letter, variants.len(), Duration::from_secs(30)).await;
    for (_, variant) in &variants {
        let matching = letters
            .iter()
            .filter(|l| error_of(l).contains(variant.reason))
            .count();
        if variant.names_stream_a {
            assert_eq!(matching, 1, "{}: one dead letter", variant.name);
        } else {
            // A message without a stream id cannot be tied to a checkpoint: the replay
            // dead-letters it again.
            assert!(matching >= 1, "{}: dead-lettered", variant.name);
        }
    }
}

/// `mongo.enabled = false`: the output topic is the only sink, recovery needs no MongoDB (the
/// URI points nowhere), and a replay after a rewind emits nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_only_mode_needs_no_mongodb() {
    let names = Names::new("kafka-only");
    create_topics(&names, 2).await;
    let mut settings = settings(&names);
    settings.mongo.enabled = false;
    settings.mongo.uri = "mongodb://127.0.0.1:1".into();
    settings.mongo.connect_timeout_ms = 500;
    settings.source.commit_interval_ms = 100;
    let streams = synthetic_streams("only", 4, 3, 1.5);
    let expected = expected_records(&streams, &settings.dsp);
    send_streams(&producer(), &names.input, &streams).await;
    let messages: i64 = streams.iter().map(|(_, c)| c.len() as i64).sum();
    let all_committed = || {
        committed_offsets(&names.group, &names.input, 2)
            .iter()
            .map(|o| (*o).max(0))
            .sum::<i64>()
            == messages
    };

    let worker = spawn_worker(settings.clone());
    assert!(
        eventually(Duration::from_secs(60), async || all_committed()).await,
        "consumed"
    );
    assert_eq!(worker.metrics.mongo_documents_written_total.get(), 0);
    worker.stop().await;

    rewind(&names, 2, 0);
    let worker = spawn_worker(settings.clone());
    assert!(
        eventually(Duration::from_secs(60), async || all_committed()).await,
        "replayed"
    );
    assert_eq!(
        worker.metrics.messages_replayed_total.get() as i64,
        messages
    );
    worker.stop().await;

    let outputs = consume(&names.output, expected.len(), Duration::from_secs(30)).await;
    assert_eq!(outputs.len(), expected.len(), "each record once");
    for m in &outputs {
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let id = value["id"].as_str().unwrap();
        let frames = without_timestamps(value["frames"].clone());
        assert_eq!(
            Some(as_f32(frames)),
            expected.get(id).cloned().map(as_f32),
            "frames of {id}"
        );
    }
}
