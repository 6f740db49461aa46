//! The live feed (`GET /v1/streams/{id}/features/live`) and the recent streams
//! (`GET /v1/streams`) against the real local Kafka and FerretDB: history from MongoDB then
//! live from Kafka with every frame exactly once, Kafka-only mode, the token (as a WebSocket
//! subprotocol), the client limit, the metrics, and a broker that does not answer.

use specflow_test_support::testing as common;
mod gateway_support;

use common::*;
use futures::StreamExt;
use gateway_support::{RunningGateway, SERVICES, settled_frames, setup};
use serde_json::Value;
use sha2::Digest;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the live feed of `stream` with `query`, offering `token` as the subprotocol.
async fn connect(
    gateway: &RunningGateway,
    stream: &str,
    query: &str,
    token: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let url = format!(
        "ws://{}/v1/streams/{stream}/features/live?{query}",
        gateway.address
    );
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            format!("bearer, {token}").parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The next JSON message (panics after 30 s or on a close).
async fn next_message(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("a message within 30 s")
            .expect("the socket is open")
            .expect("a message");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Frame indexes received until `total` frames arrived; and the sources of the messages.
async fn read_frames(socket: &mut Socket, total: usize) -> (Vec<i64>, Vec<String>) {
    let mut indexes = Vec::new();
    let mut sources = Vec::new();
    while indexes.len() < total {
        let message = next_message(socket).await;
        match message["type"].as_str() {
            Some("frames") => {
                sources.push(message["source"].as_str().unwrap().to_owned());
                for frame in message["frames"].as_array().unwrap() {
                    indexes.push(frame["index"].as_i64().unwrap());
                }
            }
            Some("live") => sources.push("live-marker".into()),
            other => panic!("unexpected message {other:?}: {message}"),
        }
    }
    (indexes, sources)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_then_live_sends_every_frame_once() {
    let _shared = SERVICES.read().await;
    let (names, settings) = setup("gateway-live-seam").await;
    let worker = spawn_worker(settings.clone());
    let gateway = RunningGateway::start(&settings).await;
    let producer = common::producer();
    let key = unique("seam");
    let chunks = fixed_chunks(&key, &synthetic_pcm(5, 4.0), 1_600);
    let (first, second) = chunks.split_at(chunks.len() / 2);
    send_all(&producer, &names.input, first).await;
    let collection = collection(&names).await;
    let before = settled_frames(&collection).await as usize;

    // History first: everything stored, then the marker. The Kafka tail starts a minute back,
    // so it reads the first half's records again: they must not be repeated.
    let mut socket = connect(&gateway, &key, "from_ms=0&features=rms,f0", None)
        .await
        .expect("live feed opens");
    let (history, sources) = read_frames(&mut socket, before).await;
    assert_eq!(history, (0..before as i64).collect::<Vec<_>>());
    assert!(sources.iter().all(|s| s == "history"), "{sources:?}");
    let marker = next_message(&mut socket).await;
    assert_eq!(marker["type"], "live");
    assert_eq!(marker["history"], true);
    assert_eq!(marker["known"], true);

    send_all(&producer, &names.input, second).await;
    let total = settled_frames(&collection).await as usize;
    assert!(total > before, "the second half adds frames");
    let (live, sources) = read_frames(&mut socket, total - before).await;
    assert_eq!(live, (before as i64..total as i64).collect::<Vec<_>>());
    assert!(sources.iter().all(|s| s == "live"), "{sources:?}");
    // Nothing else comes: no repeat of a frame already sent.
    let extra = tokio::time::timeout(Duration::from_secs(2), socket.next()).await;
    assert!(extra.is_err(), "no more frames: {extra:?}");
    let frame_fields = {
        let mut probe = connect(&gateway, &key, "from_ms=0&features=rms", None)
            .await
            .unwrap();
        let first = next_message(&mut probe).await;
        let mut keys: Vec<String> = first["frames"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        frame_fields,
        ["index", "rms", "start_sample", "timestamp_ms"]
    );

    // The recent streams list the stream; the metrics count the frames sent.
    let streams: Value = reqwest::get(gateway.url("/v1/streams"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        streams["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["stream_id"] == key.as_str() && s["last_seen_ms"].as_i64() > Some(0)),
        "{streams}"
    );
    let (_, metrics) = http_get(&gateway.address.to_string(), "/metrics").await;
    assert!(metric(&metrics, "specflow_gateway_live_frames_sent_total") >= total as f64);
    assert!(metric(&metrics, "specflow_gateway_live_clients") >= 1.0);
    drop(socket);
    gateway.stop().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_only_mode_is_live_only_with_tokens_and_a_client_limit() {
    let _shared = SERVICES.read().await;
    let (names, mut settings) = setup("gateway-live-kafka-only").await;
    settings.mongo.enabled = false;
    settings.gateway.tokens = vec![hex::encode(sha2::Sha256::digest(b"s3cret"))];
    settings.gateway.live_max_clients = 1;
    let worker = spawn_worker(settings.clone());
    let gateway = RunningGateway::start(&settings).await;
    let key = unique("kafka-only");

    match connect(&gateway, &key, "", None).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 401),
        other => panic!("a live feed without a token must be refused, got {other:?}"),
    }
    match connect(&gateway, &key, "", Some("wrong")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 401),
        other => panic!("a wrong token must be refused, got {other:?}"),
    }
    let mut socket = connect(&gateway, &key, "from_ms=0", Some("s3cret"))
        .await
        .expect("the token as a subprotocol is accepted");
    let marker = next_message(&mut socket).await;
    assert_eq!(marker["type"], "live");
    assert_eq!(marker["history"], false, "no MongoDB, no history");
    assert_eq!(marker["known"], Value::Null);
    match connect(&gateway, &key, "", Some("s3cret")).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"], "too_many_live_clients");
        }
        other => panic!("a second client is over live_max_clients = 1, got {other:?}"),
    }

    let chunks = fixed_chunks(&key, &synthetic_pcm(6, 2.0), 1_600);
    send_all(&common::producer(), &names.input, &chunks).await;
    let (indexes, _) = read_frames(&mut socket, 150).await;
    assert_eq!(indexes[..150], (0..150).collect::<Vec<_>>()[..]);

    let client = reqwest::Client::new();
    let listed = client.get(gateway.url("/v1/streams")).send().await.unwrap();
    assert_eq!(listed.status().as_u16(), 401);
    let listed: Value = client
        .get(gateway.url("/v1/streams"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed.to_string().contains(&key), "{listed}");
    drop(socket);
    gateway.stop().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_broker_is_an_error_message_not_a_hang() {
    let _shared = SERVICES.read().await;
    let (_names, mut settings) = setup("gateway-live-no-broker").await;
    settings.kafka.brokers = "127.0.0.1:1".into();
    settings.mongo.enabled = false;
    let gateway = RunningGateway::start(&settings).await;
    let mut socket = connect(&gateway, "anyone", "", None)
        .await
        .expect("the upgrade itself needs no broker");
    let started = std::time::Instant::now();
    let error = next_message(&mut socket).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"], "kafka_unavailable");
    assert!(started.elapsed() < Duration::from_secs(15));
    match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            assert_eq!(u16::from(frame.code), 1011);
            assert_eq!(frame.reason.as_str(), "kafka_unavailable");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let listed = reqwest::get(gateway.url("/v1/streams")).await.unwrap();
    assert_eq!(listed.status().as_u16(), 503);
    assert_eq!(
        listed.json::<Value>().await.unwrap()["error"],
        "kafka_unavailable"
    );
    let (_, metrics) = http_get(&gateway.address.to_string(), "/metrics").await;
    assert!(metrics.contains("specflow_gateway_live_ended_total{reason=\"kafka_unavailable\"} 1"));
    gateway.stop().await;
}
