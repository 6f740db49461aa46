//! `specflow gateway` over a WebSocket against the real local Kafka and FerretDB: a streamed
//! stream ends in MongoDB exactly as audio produced straight to Kafka, whether it ends with
//! `{"eos": true}` or a plain close, and stopping the gateway ends an open session once its
//! audio is durable.

use specflow_test_support::testing as common;
mod gateway_support;

use common::*;
use futures::{SinkExt, StreamExt};
use gateway_support::{RATE, RunningGateway, SERVICES, all_frames, setup};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

use specflow_test_support::chunks::EPOCH_MS;
use specflow_test_support::framing::Framing;

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
    let mut rng = StdRng::seed_from_u64(7 + stream.len() as u64);
    while start < pcm.len() {
        let len = rng.random_range(1..=1_500).min(pcm.len() - start);
        let part = &pcm[start..start + len];
        socket
            .send(tungstenite::Message::Binary(s16le_bytes(part).into()))
            .await
            .unwrap();
        let headers = ChunkHeaders::pcm(SampleFormat::S16le, RATE, 1, start as u64);
        sent.push(Chunk::new(stream, s16le_bytes(part), &headers));
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
    let address = gateway.address.to_string();
    let produced = async || {
        let (_, body) = http_get(&address, "/metrics").await;
        metric(&body, "specflow_gateway_chunks_produced_total")
    };
    let before = produced().await;
    let url = format!("ws://{}/v1/streams/open/ws?format=s16le", gateway.address);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    socket
        .send(tungstenite::Message::Binary(
            s16le_bytes(&pcm[..3_200]).into(),
        ))
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
    // The session's audio reached the broker: the stop finds it open and durable.
    assert!(
        eventually(Duration::from_secs(30), async || produced().await > before).await,
        "the session's chunk was not produced"
    );
    gateway.stop().await;
    let last = reader.await.unwrap().expect("a last message");
    assert_eq!(last["error"], "shutting_down", "{last}");
    assert_eq!(last["durable_samples"], 3_200, "{last}");
    worker.stop().await;
}
