//! `specflow gateway`'s other routes against the real local Kafka and FerretDB: bearer tokens
//! guard the `/v1` routes (not the operations endpoints), and the features endpoint returns
//! exactly the stored frames of a time range, in both MongoDB layouts.

use specflow_test_support::testing as common;
mod gateway_support;

use common::*;
use gateway_support::{RATE, RunningGateway, SERVICES, all_frames, messages_in, raw_query, setup};
use mongodb::bson::Document;
use serde_json::Value;
use sha2::Digest;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

use specflow_test_support::chunks::EPOCH_MS;
use specflow_test_support::framing::Framing;

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
    assert_eq!(messages_in(&names.input, 2).await, 0);
    assert_eq!(send(Some("s3cret")).await.unwrap().status().as_u16(), 202);
    assert_eq!(messages_in(&names.input, 2).await, 1);
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
