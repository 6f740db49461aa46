//! `specflow gateway` against the real local Kafka and FerretDB: audio POSTed or streamed over
//! a WebSocket ends in MongoDB exactly as audio produced straight to Kafka; every refusal class
//! answers its code and produces nothing; tokens; a broker outage answers 503 and the client's
//! retries lose and duplicate nothing; the features endpoint returns exactly the stored frames.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use mongodb::bson::Document;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use specflow::config::Settings;
use specflow_test_support::chunks::EPOCH_MS;
use specflow_test_support::framing::Framing;

/// The outage test stops the broker: it runs alone, the others side by side.
static SERVICES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

const RATE: u32 = 16_000;

struct RunningGateway {
    address: SocketAddr,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningGateway {
    async fn start(settings: &Settings) -> Self {
        let mut settings = settings.clone();
        settings.gateway.address = "127.0.0.1:0".into();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let (address, server) =
            specflow::gateway::bind(settings, async move { token.cancelled().await })
                .await
                .expect("gateway binds");
        Self {
            address,
            stop,
            handle: tokio::spawn(server),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("gateway stops within 30 s")
            .expect("gateway task")
            .expect("gateway exits cleanly");
    }
}

/// Settings for one test: the local services, fresh names, splitting at 1,600 samples.
async fn setup(test: &str) -> (Names, Settings) {
    let names = Names::new(test);
    create_topics(&names, 2).await;
    let mut settings = common::settings(&names);
    settings.gateway.max_chunk_bytes = 3_200;
    (names, settings)
}

fn s16(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn wav_of(pcm: &[i16]) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut file = std::io::Cursor::new(Vec::new());
    {
        let mut writer = hound::WavWriter::new(&mut file, spec).unwrap();
        for &s in pcm {
            writer.write_sample(s).unwrap();
        }
        writer.finalize().unwrap();
    }
    file.into_inner()
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    query: Vec<(&'static str, String)>,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let response = client
        .post(url)
        .query(&query)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request answered");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body, headers)
}

/// POSTs `len` zero bytes to the chunks endpoint with `Transfer-Encoding: chunked`, in 4 KiB
/// chunks written one by one, then reads the status and JSON body of the answer.
async fn post_chunked(
    address: SocketAddr,
    query: &[(&'static str, String)],
    len: usize,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/streams/s/chunks?{} HTTP/1.1\r\nhost: {address}\r\n\
         content-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        query.join("&")
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![0u8; 4096];
    for _ in 0..len.div_ceil(chunk.len()) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if socket.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = socket.read(&mut buf).await.expect("the answer arrives");
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(at) = text.find("\r\n\r\n") {
            let length = text[..at]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().expect("length"))
                })
                .expect("content-length");
            if answer.len() >= at + 4 + length {
                break at;
            }
        }
    };
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text[9..12].parse().expect("status");
    let body = serde_json::from_str(&text[end + 4..]).unwrap_or(Value::Null);
    (status, body)
}

fn raw_query(start: u64, eos: bool) -> Vec<(&'static str, String)> {
    vec![
        ("format", "s16le".into()),
        ("sample_rate", RATE.to_string()),
        ("channels", "1".into()),
        ("start_sample", start.to_string()),
        (
            "timestamp_ms",
            (EPOCH_MS + start as i64 * 1000 / i64::from(RATE)).to_string(),
        ),
        ("eos", u8::from(eos).to_string()),
    ]
}

/// Stored documents of `stream` keyed by first frame, without what names the stream and the
/// input message (`_id`, `stream_id`, `source`).
async fn documents_of(
    collection: &mongodb::Collection<Document>,
    stream: &str,
) -> BTreeMap<i64, Value> {
    all_documents(collection)
        .await
        .into_iter()
        .filter(|d| d.get_str("stream_id") == Ok(stream))
        .map(|d| {
            let mut json = serde_json::to_value(&d).unwrap();
            let map = json.as_object_mut().unwrap();
            for key in ["_id", "stream_id", "source"] {
                map.remove(key);
            }
            (d.get_i64("first_frame").unwrap(), json)
        })
        .collect()
}

/// Sum of the end offsets of `topic`'s partitions: how many messages it ever received. A topic
/// created a moment ago may not be in every broker's metadata yet (`UnknownPartition`): asked
/// again for up to 30 s.
fn messages_in(topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("consumer");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    (0..partitions)
        .map(|p| {
            loop {
                match consumer.fetch_watermarks(topic, p, Duration::from_secs(10)) {
                    Ok((_, high)) => break high,
                    Err(e) if std::time::Instant::now() < deadline => {
                        eprintln!("watermarks of {topic}/{p} not yet known ({e}); asking again");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("watermarks of {topic}/{p}: {e}"),
                }
            }
        })
        .sum()
}

fn all_frames(framing: &Framing, samples: usize) -> i64 {
    framing.complete(samples as u64) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posted_audio_is_stored_like_audio_produced_to_kafka() {
    let _shared = SERVICES.read().await;
    let (names, settings) = setup("gateway-post").await;
    let worker = spawn_worker(settings.clone());
    let gateway = RunningGateway::start(&settings).await;
    let client = reqwest::Client::new();
    let pcm = synthetic_pcm(3, 2.0);

    // Straight to Kafka, in chunks of 1,600 samples.
    send_all(
        &producer(),
        &names.input,
        &fixed_chunks("direct", &pcm, 1_600),
    )
    .await;
    // Raw PCM bodies of 4,800 samples: each split into three chunks of 1,600.
    for (i, body) in pcm.chunks(4_800).enumerate() {
        let start = (i * 4_800) as u64;
        let eos = start as usize + body.len() == pcm.len();
        let (status, answer, _) = post(
            &client,
            &gateway.url("/v1/streams/posted/chunks"),
            raw_query(start, eos),
            "application/octet-stream",
            s16(body),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["stream_id"], "posted");
        assert_eq!(answer["start_sample"], start);
        assert_eq!(answer["samples"], body.len());
        assert_eq!(answer["chunks"], body.len().div_ceil(1_600));
        assert!(answer["offset"].as_i64().unwrap() >= answer["first_offset"].as_i64().unwrap());
        assert!(answer["partition"].as_i64().unwrap() >= 0);
    }
    // One WAV file of the whole stream: its own header gives the format.
    let (status, answer, _) = post(
        &client,
        &gateway.url("/v1/streams/wav/chunks"),
        vec![
            ("start_sample", "0".into()),
            ("timestamp_ms", EPOCH_MS.to_string()),
            ("eos", "1".into()),
        ],
        "audio/wav",
        wav_of(&pcm),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["chunks"], pcm.len().div_ceil(1_600));

    let framing = Framing::of(&settings.dsp);
    let collection = collection(&names).await;
    wait_for_frames(
        &collection,
        3 * all_frames(&framing, pcm.len()),
        Duration::from_secs(120),
    )
    .await;
    let direct = documents_of(&collection, "direct").await;
    assert!(!direct.is_empty());
    for stream in ["posted", "wav"] {
        let stored = documents_of(&collection, stream).await;
        assert_eq!(
            stored.keys().collect::<Vec<_>>(),
            direct.keys().collect::<Vec<_>>(),
            "{stream}: record ids"
        );
        for (first, document) in &direct {
            assert_eq!(&stored[first], document, "{stream}: record {first}");
        }
    }
    gateway.stop().await;
    worker.stop().await;
}

/// Streams `pcm` over a WebSocket as `stream`, in messages of uneven sizes (each below
/// gateway.max_chunk_bytes, so each is one chunk), then ends with `{"eos": true}` or a close.
/// Returns the chunks the worker must have seen (the end of stream as an empty eos chunk) and
/// the server's last text message.
async fn stream_over_ws(
    address: SocketAddr,
    stream: &str,
    pcm: &[i16],
    end_with_eos_message: bool,
) -> (Vec<Chunk>, Option<Value>) {
    use specflow::audio::SampleFormat;
    use specflow::audio::headers::ChunkHeaders;
    let url = format!("ws://{address}/v1/streams/{stream}/ws");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    socket
        .send(tungstenite::Message::Text(
            json!({"format": "s16le", "sample_rate": RATE, "channels": 1, "start_sample": 0,
                   "timestamp_ms": EPOCH_MS})
            .to_string()
            .into(),
        ))
        .await
        .unwrap();
    let mut sent = Vec::new();
    let mut start = 0usize;
    let mut rng = 7u64 + stream.len() as u64;
    while start < pcm.len() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let len = (1 + rng as usize % 1_500).min(pcm.len() - start);
        let part = &pcm[start..start + len];
        socket
            .send(tungstenite::Message::Binary(s16(part).into()))
            .await
            .unwrap();
        let headers = ChunkHeaders::pcm(SampleFormat::S16le, RATE, 1, start as u64);
        sent.push(Chunk::new(stream, s16(part), &headers));
        start += len;
    }
    let end = if end_with_eos_message {
        tungstenite::Message::Text(json!({"eos": true}).to_string().into())
    } else {
        tungstenite::Message::Close(None)
    };
    socket.send(end).await.unwrap();
    let mut last = None;
    while let Some(Ok(message)) = socket.next().await {
        if let tungstenite::Message::Text(text) = message {
            last = Some(serde_json::from_str::<Value>(text.as_str()).unwrap());
        }
    }
    let eos = ChunkHeaders::pcm(SampleFormat::S16le, RATE, 1, pcm.len() as u64).with_eos(true);
    sent.push(Chunk::new(stream, Vec::new(), &eos));
    (sent, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_stream_with_close_gives_eos_and_every_frame() {
    let _shared = SERVICES.read().await;
    let (names, settings) = setup("gateway-ws").await;
    let worker = spawn_worker(settings.clone());
    let gateway = RunningGateway::start(&settings).await;
    let pcm = synthetic_pcm(5, 2.0);
    // Ended by {"eos": true}: the last acknowledgement covers the whole stream.
    let (live, last) = stream_over_ws(gateway.address, "live", &pcm, true).await;
    let last = last.expect("a final acknowledgement");
    assert_eq!(last["durable_samples"], pcm.len(), "{last}");
    assert_eq!(last["eos"], true, "{last}");
    // Ended by a plain close: the end of stream is produced all the same.
    let (closed, _) = stream_over_ws(gateway.address, "closed", &pcm, false).await;
    let expected = expected_records(
        &[("live".to_string(), live), ("closed".to_string(), closed)],
        &settings.dsp,
    );
    let collection = collection(&names).await;
    let framing = Framing::of(&settings.dsp);
    wait_for_frames(
        &collection,
        2 * all_frames(&framing, pcm.len()),
        Duration::from_secs(120),
    )
    .await;
    assert_mongo_equals(&collection, &expected).await;
    // Stopping the gateway ends an open session once its audio is durable, instead of waiting
    // for the client.
    let url = format!("ws://{}/v1/streams/open/ws?format=s16le", gateway.address);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    socket
        .send(tungstenite::Message::Binary(s16(&pcm[..3_200]).into()))
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut last = None;
        while let Some(Ok(message)) = socket.next().await {
            if let tungstenite::Message::Text(text) = message {
                last = Some(serde_json::from_str::<Value>(text.as_str()).unwrap());
            }
        }
        last
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.stop().await;
    let last = reader.await.unwrap().expect("a last message");
    assert_eq!(last["error"], "shutting_down", "{last}");
    assert_eq!(last["durable_samples"], 3_200, "{last}");
    worker.stop().await;
}

/// A refused request: what it is, URL, query, content type, body, status, reason.
type Refusal<'a> = (
    &'a str,
    &'a str,
    Vec<(&'static str, String)>,
    &'a str,
    Vec<u8>,
    u16,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_refusal_answers_its_code_and_produces_nothing() {
    let _shared = SERVICES.read().await;
    let (names, mut settings) = setup("gateway-refusals").await;
    settings.gateway.max_body_bytes = 64 * 1024;
    let gateway = RunningGateway::start(&settings).await;
    let client = reqwest::Client::new();
    let chunks = gateway.url("/v1/streams/s/chunks");
    let f32_with_nan: Vec<u8> = [0.25f32, f32::NAN, 0.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let long_id = "x".repeat(300);
    let long_id_url = gateway.url(&format!("/v1/streams/{long_id}/chunks"));
    let mut no_start = raw_query(0, false);
    no_start.retain(|(k, _)| *k != "start_sample");
    let mut unknown_format = raw_query(0, false);
    unknown_format[0].1 = "u8".into();
    let mut f32_query = raw_query(0, false);
    f32_query[0].1 = "f32le".into();
    let cases: Vec<Refusal> = vec![
        (
            "ragged",
            &chunks,
            raw_query(0, false),
            "application/octet-stream",
            vec![1, 2, 3],
            400,
            "ragged_payload",
        ),
        (
            "unknown format",
            &chunks,
            unknown_format,
            "application/octet-stream",
            vec![0; 4],
            400,
            "bad_header",
        ),
        (
            "non-finite f32le",
            &chunks,
            f32_query,
            "application/octet-stream",
            f32_with_nan,
            400,
            "non_finite_sample",
        ),
        (
            "bad stream id",
            &long_id_url,
            raw_query(0, false),
            "application/octet-stream",
            vec![0; 4],
            400,
            "bad_key",
        ),
        (
            "missing start_sample",
            &chunks,
            no_start,
            "application/octet-stream",
            vec![0; 4],
            400,
            "missing_start_sample",
        ),
        (
            "empty without eos",
            &chunks,
            raw_query(0, false),
            "application/octet-stream",
            Vec::new(),
            400,
            "empty_payload",
        ),
        (
            "not a WAV",
            &chunks,
            raw_query(0, false),
            "audio/wav",
            b"RIFF0000WAVE".to_vec(),
            400,
            "bad_wav",
        ),
        (
            "too large",
            &chunks,
            raw_query(0, false),
            "application/octet-stream",
            vec![0; 100 * 1024],
            413,
            "body_too_large",
        ),
        (
            "content type",
            &chunks,
            raw_query(0, false),
            "application/json",
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, url, query, content_type, body, code, reason) in cases {
        let (status, answer, _) = post(&client, url, query, content_type, body).await;
        assert_eq!(status, code, "{what}: {answer}");
        assert_eq!(answer["error"], reason, "{what}: {answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {answer}"
        );
    }
    // A chunked body (no Content-Length) that grows past the limit is refused the same way,
    // while the client is still sending, and the answer reaches it.
    let (status, answer) = post_chunked(gateway.address, &raw_query(0, false), 100 * 1024).await;
    assert_eq!(status, 413, "chunked too large: {answer}");
    assert_eq!(
        answer["error"], "body_too_large",
        "chunked too large: {answer}"
    );
    // WebSockets: a non-finite f32le sample is refused at once; a stream that ends in the
    // middle of a sample frame is ragged. Each ends with an error message, nothing produced.
    let nan: Vec<u8> = [0.5f32, f32::INFINITY]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    for (format, message, close, reason) in [
        (json!({"format": "f32le"}), nan, false, "non_finite_sample"),
        (
            json!({"format": "s32le", "channels": 2}),
            vec![1u8, 2, 3],
            true,
            "ragged_payload",
        ),
    ] {
        let url = format!("ws://{}/v1/streams/s/ws", gateway.address);
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
        socket
            .send(tungstenite::Message::Text(format.to_string().into()))
            .await
            .unwrap();
        socket
            .send(tungstenite::Message::Binary(message.into()))
            .await
            .unwrap();
        if close {
            socket
                .send(tungstenite::Message::Text(
                    json!({"eos": true}).to_string().into(),
                ))
                .await
                .unwrap();
        }
        let mut error = None;
        while let Some(Ok(message)) = socket.next().await {
            if let tungstenite::Message::Text(text) = message {
                error = Some(serde_json::from_str::<Value>(text.as_str()).unwrap());
            }
        }
        let error = error.expect("an error message");
        assert_eq!(error["error"], reason, "{error}");
        assert_eq!(error["durable_samples"], 0, "{error}");
    }
    // A bad format in the WebSocket's query is a plain 400 before the upgrade.
    let bad = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/streams/s/ws?format=u8",
        gateway.address
    ))
    .await;
    match bad {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 400),
        other => panic!("a bad WebSocket format must be refused, got {other:?}"),
    }
    // A producer queue too small for one chunk: 429 with Retry-After, nothing produced.
    let mut tiny_queue = settings.clone();
    tiny_queue.gateway.queue_max_kbytes = 1;
    let full = RunningGateway::start(&tiny_queue).await;
    let (status, answer, headers) = post(
        &client,
        &full.url("/v1/streams/s/chunks"),
        raw_query(0, false),
        "application/octet-stream",
        vec![0; 3_200],
    )
    .await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"], "queue_full", "{answer}");
    assert_eq!(headers["retry-after"], "1");
    full.stop().await;
    assert_eq!(
        messages_in(&names.input, 2),
        0,
        "refused requests produced nothing"
    );
    // The same gateway does produce a valid request: the check above is not vacuous.
    let (status, answer, _) = post(
        &client,
        &chunks,
        raw_query(0, false),
        "application/octet-stream",
        vec![0; 640],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(messages_in(&names.input, 2), 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bearer_tokens_are_required_once_configured() {
    let _shared = SERVICES.read().await;
    let (names, mut settings) = setup("gateway-auth").await;
    settings.gateway.tokens = vec![hex::encode(sha2::Sha256::digest(b"s3cret"))];
    let gateway = RunningGateway::start(&settings).await;
    let client = reqwest::Client::new();
    let chunks = gateway.url("/v1/streams/s/chunks");
    let send = |token: Option<&'static str>| {
        let mut request = client
            .post(&chunks)
            .query(&raw_query(0, false))
            .body(vec![0u8; 320]);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let none = send(None).await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(none.json::<Value>().await.unwrap()["error"], "unauthorized");
    assert_eq!(send(Some("s3cre")).await.unwrap().status().as_u16(), 401);
    assert_eq!(messages_in(&names.input, 2), 0);
    assert_eq!(send(Some("s3cret")).await.unwrap().status().as_u16(), 202);
    assert_eq!(messages_in(&names.input, 2), 1);
    let features = client
        .get(gateway.url("/v1/streams/s/features"))
        .send()
        .await
        .unwrap();
    assert_eq!(features.status().as_u16(), 401);
    let ws =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/streams/s/ws", gateway.address)).await;
    match ws {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 401),
        other => panic!("a WebSocket without a token must be refused, got {other:?}"),
    }
    // Operations endpoints stay open (probes and scrapers carry no token).
    let health = client.get(gateway.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let metrics = client.get(gateway.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("specflow_gateway_requests_total{code=\"401\",route=\"/v1/streams/{stream_id}/chunks\"} 2"),
        "{text}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_answers_503_and_retries_lose_and_duplicate_nothing() {
    let _alone = SERVICES.write().await;
    let (names, mut settings) = setup("gateway-outage").await;
    settings.gateway.delivery_timeout_ms = 3_000;
    let worker = spawn_worker(settings.clone());
    let gateway = RunningGateway::start(&settings).await;
    let client = reqwest::Client::new();
    let url = gateway.url("/v1/streams/out/chunks");
    let pcm = synthetic_pcm(2, 2.0);
    let chunks = fixed_chunks("out", &pcm, 1_600);
    let send = |i: usize| {
        let start = i * 1_600;
        let body = s16(&pcm[start..(start + 1_600).min(pcm.len())]);
        let eos = i + 1 == chunks.len();
        post(
            &client,
            &url,
            raw_query(start as u64, eos),
            "application/octet-stream",
            body,
        )
    };
    for i in 0..8 {
        assert_eq!(send(i).await.0, 202);
    }
    let kafka = StoppedService::stop("kafka");
    let readyz = gateway.url("/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let (status, answer, headers) = send(8).await;
        if status == 503 {
            break (answer, headers);
        }
        assert!(
            Instant::now() < deadline,
            "no 503 while the broker is down (last {status} {answer})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(refused.0["error"], "kafka_unavailable", "{}", refused.0);
    assert_eq!(refused.1["retry-after"], "1");
    let ready = client.get(&readyz).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    kafka.start();
    // The client retries with the same start_sample, as the 503 tells it to, then goes on.
    for i in 8..chunks.len() {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, answer, _) = send(i).await;
            if status == 202 {
                break;
            }
            assert!(matches!(status, 503 | 429), "chunk {i}: {status} {answer}");
            assert!(
                Instant::now() < deadline,
                "chunk {i} not accepted after the broker came back"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let expected = expected_records(&[("out".to_string(), chunks)], &settings.dsp);
    let collection = collection(&names).await;
    let framing = Framing::of(&settings.dsp);
    wait_for_frames(
        &collection,
        all_frames(&framing, pcm.len()),
        Duration::from_secs(120),
    )
    .await;
    assert_mongo_equals(&collection, &expected).await;
    assert_topic_has_every_record(&names.output, &expected).await;
    gateway.stop().await;
    worker.stop().await;
}

/// Stored frames of `stream` with `from_ms <= timestamp_ms < to_ms`, read straight from the
/// frames-layout documents, in index order.
async fn stored_frames_between(
    collection: &mongodb::Collection<Document>,
    from_ms: i64,
    to_ms: i64,
) -> Vec<Value> {
    let mut frames: Vec<Value> = all_documents(collection)
        .await
        .into_iter()
        .flat_map(|d| {
            serde_json::to_value(&d).unwrap()["frames"]
                .as_array()
                .unwrap()
                .clone()
        })
        .filter(|f| {
            let t = f["timestamp_ms"].as_i64().unwrap();
            from_ms <= t && t < to_ms
        })
        .collect();
    frames.sort_by_key(|f| f["index"].as_i64().unwrap());
    frames
}

/// Asserts two frame lists are equal, naming the first difference instead of printing both.
fn assert_same_frames(got: &[Value], expected: &[Value], what: &str) {
    let indexes = |frames: &[Value]| -> Vec<i64> {
        frames
            .iter()
            .map(|f| f["index"].as_i64().unwrap_or(-1))
            .collect()
    };
    assert_eq!(indexes(got), indexes(expected), "{what}: frame indexes");
    for (g, e) in got.iter().zip(expected) {
        for (key, value) in e.as_object().unwrap() {
            assert_eq!(
                g.get(key),
                Some(value),
                "{what}: frame {} field {key}",
                e["index"]
            );
        }
        assert_eq!(
            g.as_object().unwrap().len(),
            e.as_object().unwrap().len(),
            "{what}: frame {} fields {g}",
            e["index"]
        );
    }
}

/// Every page of the features endpoint for a range; also returns the page count.
async fn read_pages(
    client: &reqwest::Client,
    gateway: &RunningGateway,
    query: &[(&str, String)],
) -> (Vec<Value>, usize) {
    let mut frames = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = query.to_vec();
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let response = client
            .get(gateway.url("/v1/streams/timed/features"))
            .query(&q)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let page: Value = response.json().await.unwrap();
        pages += 1;
        frames.extend(page["frames"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (frames, pages),
        }
        assert!(pages < 1_000, "pagination does not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn features_endpoint_returns_exactly_the_stored_frames_for_a_time_range() {
    let _shared = SERVICES.read().await;
    let (names, settings) = setup("gateway-features").await;
    // A second worker group stores the same input in the columns layout.
    let columns_names = Names::new("gateway-features-columns");
    let mut columns = settings.clone();
    columns.source.group_id = columns_names.group.clone();
    columns.checkpoint.topic = columns_names.checkpoint.clone();
    columns.mongo.database = columns_names.database.clone();
    columns.mongo.layout = specflow::record::DocumentLayout::Columns;
    columns.source.create_topics = true;
    let frames_worker = spawn_worker(settings.clone());
    let columns_worker = spawn_worker(columns.clone());
    let pcm = synthetic_pcm(4, 3.0);
    send_all(
        &producer(),
        &names.input,
        &chunk_stream("timed", &pcm, 1, RATE, 11, 2_500),
    )
    .await;
    let framing = Framing::of(&settings.dsp);
    let frames_collection = collection(&names).await;
    let columns_collection = collection(&columns_names).await;
    for c in [&frames_collection, &columns_collection] {
        wait_for_frames(c, all_frames(&framing, pcm.len()), Duration::from_secs(120)).await;
    }
    let (from_ms, to_ms) = (EPOCH_MS + 700, EPOCH_MS + 2_300);
    let expected = stored_frames_between(&frames_collection, from_ms, to_ms).await;
    assert!(expected.len() > 100, "{} frames in range", expected.len());
    let client = reqwest::Client::new();
    let range = vec![
        ("from_ms", from_ms.to_string()),
        ("to_ms", to_ms.to_string()),
        ("limit", "37".to_string()),
    ];
    let frames_gateway = RunningGateway::start(&settings).await;
    let columns_gateway = RunningGateway::start(&columns).await;
    let (got, pages) = read_pages(&client, &frames_gateway, &range).await;
    // Features are float32: compared at that precision (JSON text of a widened float32 need
    // not parse back to the same f64 in the last bit, but it does to the same float32).
    let expected_f32: Vec<Value> = expected.iter().cloned().map(as_f32).collect();
    assert_same_frames(
        &got.into_iter().map(as_f32).collect::<Vec<_>>(),
        &expected_f32,
        "frames layout",
    );
    assert_eq!(pages, expected.len().div_ceil(37));
    let (got, _) = read_pages(&client, &columns_gateway, &range).await;
    assert_same_frames(
        &got.into_iter().map(as_f32).collect::<Vec<_>>(),
        &expected_f32,
        "columns layout",
    );
    // A selection keeps the frame's position and the named features (f0 with its voicing).
    let mut selected = range.clone();
    selected.push(("features", "rms,f0".into()));
    for gateway in [&frames_gateway, &columns_gateway] {
        let (got, _) = read_pages(&client, gateway, &selected).await;
        assert_eq!(got.len(), expected.len());
        for (frame, full) in got.iter().zip(&expected) {
            let mut keys: Vec<&str> = frame
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort();
            let mut want: Vec<&str> = vec![
                "f0",
                "index",
                "rms",
                "start_sample",
                "timestamp_ms",
                "voiced",
            ];
            if full.get("voiced_prob").is_some() {
                want.push("voiced_prob");
            }
            want.sort();
            assert_eq!(keys, want);
            assert_eq!(as_f32(frame["rms"].clone()), as_f32(full["rms"].clone()));
        }
    }
    // An empty range, a reversed range and an unknown feature.
    let empty = vec![("from_ms", "0".to_string()), ("to_ms", "1000".to_string())];
    let (got, pages) = read_pages(&client, &frames_gateway, &empty).await;
    assert!(got.is_empty() && pages == 1);
    for (query, reason) in [
        (vec![("from_ms", "10"), ("to_ms", "5")], "bad_parameter"),
        (vec![("features", "rms,nope")], "unknown_feature"),
    ] {
        let response = client
            .get(frames_gateway.url("/v1/streams/timed/features"))
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        assert_eq!(response.json::<Value>().await.unwrap()["error"], reason);
    }
    frames_gateway.stop().await;
    columns_gateway.stop().await;
    frames_worker.stop().await;
    columns_worker.stop().await;
}
