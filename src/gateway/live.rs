//! `GET /v1/streams/{stream_id}/features/live` (WebSocket): a stream's frames as the worker
//! computes them, and `GET /v1/streams`: the streams seen recently on the output topic.
//!
//! Query: `from_ms` (Unix ms; frames captured from then on: history first, from MongoDB when
//! `mongo.enabled`, then live), `features` (as for the stored-frames route). Without `from_ms`
//! the feed starts "now". Server messages, all JSON text:
//! - `{"type":"frames","source":"history"|"live","frames":[…]}`: frames in index order, each
//!   sent once;
//! - `{"type":"live","history":bool,"known":bool|null}`: history is over, live frames follow;
//!   `known` says whether MongoDB holds any record of the stream (`null` without MongoDB);
//! - `{"type":"error","error":reason,"message":…}` then a close frame with the reason:
//!   `kafka_unavailable` / `mongodb_unavailable` (1011), `slow_client` (1008),
//!   `shutting_down` (1001).
//!
//! The seam: the Kafka offsets are fixed (at `now − gateway.live_seam_margin_ms`) before MongoDB
//! is read, so every record MongoDB did not have yet is still read from Kafka; frames at or
//! below the last index sent are dropped. A client that does not keep up has at most
//! `gateway.live_queue_records` records waiting; one more and it is disconnected.

use axum::Json;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use rdkafka::message::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::{info, warn};

use super::Shared;
use super::error::ApiError;
use super::features::{FrameRange, parse_i64, selected_fields};
use super::tail::{StartAt, TailConfig, TailError};
use crate::audio::decode_stream_id;
use crate::clock::unix_ms;

/// How long one message may take to reach a client before it counts as slow.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Records read from the end of each partition for `GET /v1/streams`.
const RECENT_RECORDS_PER_PARTITION: i64 = 500;

/// Query parameters of the live feed (all optional).
#[derive(Debug, Default, Deserialize)]
pub struct LiveQuery {
    from_ms: Option<String>,
    features: Option<String>,
}

/// Why a live session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEnd {
    /// Short reason (the close frame's reason and the metric label).
    pub reason: &'static str,
    /// What happened, in words.
    pub message: String,
    /// WebSocket close code.
    pub code: u16,
}

impl LiveEnd {
    fn new(reason: &'static str, message: impl Into<String>, code: u16) -> Self {
        Self {
            reason,
            message: message.into(),
            code,
        }
    }
}

impl From<TailError> for LiveEnd {
    fn from(error: TailError) -> Self {
        Self::new("kafka_unavailable", error.to_string(), close_code::ERROR)
    }
}

fn tail_config(gateway: &Shared) -> TailConfig {
    TailConfig {
        kafka: gateway.settings.kafka.clone(),
        topic: gateway.settings.output.topic.clone(),
    }
}

/// What a blocking output-topic read that panicked or was cancelled becomes, in words.
fn reader_failed(error: tokio::task::JoinError) -> String {
    format!("the output topic reader failed: {error}")
}

fn kafka_refusal(gateway: &Shared, error: TailError) -> ApiError {
    ApiError::retry_later(
        StatusCode::SERVICE_UNAVAILABLE,
        "kafka_unavailable",
        format!("cannot read the output topic: {error}"),
        gateway.settings.gateway.retry_after_secs,
    )
}

/// One recently seen stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecentStream {
    /// The stream id.
    pub stream_id: String,
    /// When its newest record was produced, Unix ms.
    pub last_seen_ms: i64,
}

/// `GET /v1/streams`: the streams of the last records of every output partition, newest first.
pub(super) async fn recent_streams(State(gateway): State<Shared>) -> Result<Json<Value>, ApiError> {
    let config = tail_config(&gateway);
    let found =
        tokio::task::spawn_blocking(move || config.recent_streams(RECENT_RECORDS_PER_PARTITION))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    reader_failed(e),
                )
            })?;
    let streams: Vec<RecentStream> = found
        .map_err(|e| kafka_refusal(&gateway, e))?
        .into_iter()
        .map(|(stream_id, last_seen_ms)| RecentStream {
            stream_id,
            last_seen_ms,
        })
        .collect();
    Ok(Json(json!({ "streams": streams })))
}

/// A message waiting for the client, and how many frames it carries (for the metrics).
#[derive(Debug)]
struct Outgoing {
    text: String,
    frames: u64,
}

impl Outgoing {
    fn new(message: &Value) -> Self {
        let frames = message["frames"].as_array().map_or(0, Vec::len) as u64;
        Self {
            text: message.to_string(),
            frames,
        }
    }
}

/// Checks the query and the client limit, then runs the session.
pub(super) async fn upgrade(
    State(gateway): State<Shared>,
    Path(stream_id): Path<String>,
    Query(query): Query<LiveQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    decode_stream_id(Some(stream_id.as_bytes()))?;
    if !gateway.settings.output.enabled {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "output_disabled",
            "output.enabled is off: there is no output topic to follow",
        ));
    }
    let from_ms = query
        .from_ms
        .as_deref()
        .map(|t| parse_i64("from_ms", t))
        .transpose()?;
    let fields: Option<Vec<&'static str>> = selected_fields(query.features.as_deref())?;
    let permit = gateway
        .live_clients
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_live_clients",
                format!(
                    "{} live clients are connected (gateway.live_max_clients)",
                    gateway.settings.gateway.live_max_clients
                ),
                gateway.settings.gateway.retry_after_secs,
            )
        })?;
    let tracked = gateway.sessions.token();
    Ok(ws
        .protocols(["bearer"])
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            let _tracked = tracked;
            let _permit = permit;
            gateway.metrics.live_clients.inc();
            let end = run(&gateway, &stream_id, from_ms, fields, socket).await;
            gateway.metrics.live_clients.dec();
            gateway
                .metrics
                .live_ended_total
                .with_label_values(&[end.reason])
                .inc();
            info!(stream_id, reason = end.reason, message = %end.message, "Live feed ended.");
        }))
}

/// Sends queued messages to the socket while the feeder reads MongoDB and Kafka.
async fn run(
    gateway: &Shared,
    stream_id: &str,
    from_ms: Option<i64>,
    fields: Option<Vec<&'static str>>,
    socket: WebSocket,
) -> LiveEnd {
    let (mut sink, mut incoming) = socket.split();
    let (queue, mut queued) =
        mpsc::channel::<Outgoing>(gateway.settings.gateway.live_queue_records);
    let mut feeder = tokio::spawn(feed(
        gateway.clone(),
        stream_id.to_owned(),
        from_ms,
        fields,
        queue,
    ));
    let end = loop {
        tokio::select! {
            _ = gateway.stopping.cancelled() => {
                break LiveEnd::new("shutting_down", "the gateway is stopping", close_code::AWAY);
            }
            message = queued.recv() => match message {
                Some(Outgoing { text, frames }) => {
                    match tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Text(Utf8Bytes::from(text)))).await {
                        Ok(Ok(())) => gateway.metrics.live_frames_sent_total.inc_by(frames),
                        Ok(Err(_)) => break LiveEnd::new("client_gone", "the connection broke", close_code::AWAY),
                        Err(_) => break LiveEnd::new("slow_client", "a message took longer than 10 s to send", close_code::POLICY),
                    }
                }
                // The feeder ended and everything it queued is sent.
                None => break match (&mut feeder).await {
                    Ok(end) => end,
                    Err(e) => LiveEnd::new("internal_error", e.to_string(), close_code::ERROR),
                },
            },
            finished = &mut feeder => {
                let end = finished.unwrap_or_else(|e| LiveEnd::new("internal_error", e.to_string(), close_code::ERROR));
                if end.reason == "slow_client" {
                    break end;
                }
                // Anything else: what was queued goes out first.
                while let Ok(Outgoing { text, frames }) = queued.try_recv() {
                    if sink.send(Message::Text(Utf8Bytes::from(text))).await.is_err() {
                        break;
                    }
                    gateway.metrics.live_frames_sent_total.inc_by(frames);
                }
                break end;
            }
            message = incoming.next() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    break LiveEnd::new("client_closed", "the client closed the connection", close_code::NORMAL);
                }
                Some(Ok(_)) => {}
            },
        }
    };
    feeder.abort();
    if end.reason != "client_closed" && end.reason != "client_gone" {
        if end.code != close_code::NORMAL {
            warn!(stream_id, reason = end.reason, message = %end.message, "Live feed ends with an error.");
        }
        let body = json!({"type": "error", "error": end.reason, "message": end.message});
        let goodbye = async {
            let _ = sink.send(Message::Text(body.to_string().into())).await;
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: end.code,
                    reason: end.reason.into(),
                })))
                .await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), goodbye).await;
    }
    end
}

/// Queues a live message; a full queue ends the session as `slow_client` (the output topic
/// does not wait for a client).
fn enqueue(queue: &mpsc::Sender<Outgoing>, message: Value) -> Result<(), LiveEnd> {
    match queue.try_send(Outgoing::new(&message)) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => Err(LiveEnd::new(
            "slow_client",
            "the client does not read its frames fast enough (gateway.live_queue_records)",
            close_code::POLICY,
        )),
        Err(TrySendError::Closed(_)) => Err(LiveEnd::new(
            "client_gone",
            "the session ended",
            close_code::AWAY,
        )),
    }
}

/// Queues a history message, waiting for room: MongoDB is read at the client's pace (a client
/// that stops reading is caught by the send timeout).
async fn enqueue_waiting(queue: &mpsc::Sender<Outgoing>, message: Value) -> Result<(), LiveEnd> {
    queue
        .send(Outgoing::new(&message))
        .await
        .map_err(|_| LiveEnd::new("client_gone", "the session ended", close_code::AWAY))
}

/// History (MongoDB), then live (Kafka), each frame once.
async fn feed(
    gateway: Shared,
    stream_id: String,
    from_ms: Option<i64>,
    fields: Option<Vec<&'static str>>,
    queue: mpsc::Sender<Outgoing>,
) -> LiveEnd {
    match feed_frames(&gateway, &stream_id, from_ms, fields.as_deref(), &queue).await {
        Ok(never) => match never {},
        Err(end) => end,
    }
}

async fn feed_frames(
    gateway: &Shared,
    stream_id: &str,
    from_ms: Option<i64>,
    fields: Option<&[&str]>,
    queue: &mpsc::Sender<Outgoing>,
) -> Result<std::convert::Infallible, LiveEnd> {
    let history = from_ms.is_some() && gateway.features.is_some();
    let margin = gateway.settings.gateway.live_seam_margin_ms as i64;
    let start = if history {
        StartAt::Since(unix_ms() - margin)
    } else {
        StartAt::Now
    };
    // The offsets are fixed before MongoDB is read: the seam.
    let config = tail_config(gateway);
    let tail = tokio::task::spawn_blocking(move || config.open(start))
        .await
        .map_err(|e| LiveEnd::new("internal_error", reader_failed(e), close_code::ERROR))??;
    let from_ms = from_ms.unwrap_or(i64::MIN);
    let mut last_sent = -1i64;
    let mut known = None;
    if let Some(store) = &gateway.features {
        let mongo_down = |e: mongodb::error::Error| {
            LiveEnd::new(
                "mongodb_unavailable",
                format!("cannot read MongoDB: {e}"),
                close_code::ERROR,
            )
        };
        known = Some(store.knows(stream_id).await.map_err(mongo_down)?);
    }
    if let (true, Some(store)) = (history, &gateway.features) {
        let page = gateway.settings.gateway.max_page_frames;
        let mut cursor = Some(i64::MIN);
        while let Some(from_index) = cursor {
            let range = FrameRange {
                from_ms,
                to_ms: i64::MAX,
                cursor: from_index,
            };
            let (frames, next) = store
                .read_frames(stream_id, range, page, fields, 1)
                .await
                .map_err(|e| LiveEnd::new(e.reason, e.message, close_code::ERROR))?;
            if let Some(index) = frames.last().and_then(|f| f["index"].as_i64()) {
                last_sent = index;
                let message = json!({"type": "frames", "source": "history", "frames": frames});
                enqueue_waiting(queue, message).await?;
            }
            cursor = next;
        }
    }
    let marker = json!({"type": "live", "history": history, "known": known});
    enqueue_waiting(queue, marker).await?;
    loop {
        let record = tail.next().await?;
        if record.key() != Some(stream_id.as_bytes()) {
            continue;
        }
        let Some(frames) = record
            .payload()
            .and_then(|p| new_frames(p, last_sent, from_ms, fields))
        else {
            continue;
        };
        if let Some(index) = frames.last().and_then(|f| f["index"].as_i64()) {
            last_sent = index;
            enqueue(
                queue,
                json!({"type": "frames", "source": "live", "frames": frames}),
            )?;
        }
    }
}

/// The frames of an output record past `last_sent` and captured at or after `from_ms`, with
/// only `fields`; `None` when the payload is not a record.
pub fn new_frames(
    payload: &[u8],
    last_sent: i64,
    from_ms: i64,
    fields: Option<&[&str]>,
) -> Option<Vec<Value>> {
    let mut record: Value = serde_json::from_slice(payload).ok()?;
    let Value::Array(frames) = record.get_mut("frames")?.take() else {
        return None;
    };
    Some(
        frames
            .into_iter()
            .filter(|f| {
                f["index"].as_i64().is_some_and(|i| i > last_sent)
                    && f["timestamp_ms"].as_i64().is_some_and(|t| t >= from_ms)
            })
            .map(|mut frame| {
                if let (Some(fields), Value::Object(map)) = (fields, &mut frame) {
                    map.retain(|key, _| fields.contains(&key.as_str()));
                }
                frame
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_already_sent_or_too_early_are_dropped_and_fields_kept() {
        let record = json!({"stream_id": "s", "frames": [
            {"index": 4, "timestamp_ms": 1000, "rms": 0.1, "zcr": 0.0},
            {"index": 5, "timestamp_ms": 1010, "rms": 0.2, "zcr": 0.0},
            {"index": 6, "timestamp_ms": 1020, "rms": 0.3, "zcr": 0.0},
        ]})
        .to_string();
        let fields = ["index", "timestamp_ms", "rms"];
        let frames = new_frames(record.as_bytes(), 4, 1015, Some(&fields)).unwrap();
        assert_eq!(
            frames,
            [json!({"index": 6, "timestamp_ms": 1020, "rms": 0.3})]
        );
        let all = new_frames(record.as_bytes(), -1, i64::MIN, None).unwrap();
        assert_eq!(all.len(), 3);
        assert!(new_frames(b"not json", -1, 0, None).is_none());
    }

    #[tokio::test]
    async fn a_full_queue_ends_the_session_as_a_slow_client() {
        let (queue, _receiver) = mpsc::channel(2);
        enqueue(&queue, json!(1)).unwrap();
        enqueue(&queue, json!(2)).unwrap();
        let end = enqueue(&queue, json!(3)).unwrap_err();
        assert_eq!(end.reason, "slow_client");
        assert_eq!(end.code, close_code::POLICY);
    }
}
