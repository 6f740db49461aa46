//! `specflow gateway` ingest over HTTP against the real local Kafka and FerretDB: POSTed
//! audio (raw PCM and WAV) ends in MongoDB exactly as audio produced straight to Kafka; every
//! refusal class (HTTP and WebSocket) answers its code and produces nothing; a broker outage
//! answers 503 and the client's retries lose and duplicate nothing.

use specflow_test_support::testing as common;
mod gateway_support;

use common::*;
use futures::{SinkExt, StreamExt};
use gateway_support::{RATE, RunningGateway, SERVICES, all_frames, messages_in, raw_query, setup};
use mongodb::bson::Document;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

use specflow_test_support::chunks::EPOCH_MS;
use specflow_test_support::framing::Framing;

/// A mono 16-bit WAV file of `pcm` at [`RATE`].
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

/// POSTs `body` with `query` and `content_type`; the status, JSON body and headers.
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
            s16le_bytes(body),
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
        messages_in(&names.input, 2).await,
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
    assert_eq!(messages_in(&names.input, 2).await, 1);
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
        let body = s16le_bytes(&pcm[start..(start + 1_600).min(pcm.len())]);
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
    let mut last = (0, Value::Null, Default::default());
    let refused = eventually(Duration::from_secs(30), async || {
        last = send(8).await;
        last.0 == 503
    })
    .await;
    assert!(
        refused,
        "no 503 while the broker is down (last {} {})",
        last.0, last.1
    );
    let refused = (last.1, last.2);
    assert_eq!(refused.0["error"], "kafka_unavailable", "{}", refused.0);
    assert_eq!(refused.1["retry-after"], "1");
    let ready = client.get(&readyz).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    kafka.start();
    // The client retries with the same start_sample, as the 503 tells it to, then goes on.
    for i in 8..chunks.len() {
        let mut last = (0, Value::Null);
        let accepted = eventually(Duration::from_secs(120), async || {
            let (status, answer, _) = send(i).await;
            assert!(
                matches!(status, 202 | 503 | 429),
                "chunk {i}: {status} {answer}"
            );
            last = (status, answer);
            status == 202
        })
        .await;
        assert!(
            accepted,
            "chunk {i} not accepted after the broker came back (last {} {})",
            last.0, last.1
        );
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
