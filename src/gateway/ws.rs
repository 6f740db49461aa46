//! `GET /v1/streams/{stream_id}/ws`: one stream over a WebSocket.
//!
//! - The first text message gives the format as JSON:
//!   `{"format": "s16le", "sample_rate": 16000, "channels": 1, "start_sample": 0}` (each
//!   optional; defaults from `[input]`, `start_sample` 0, `timestamp_ms` the time it arrives).
//!   The format may come as query parameters instead (`?format=s16le&sample_rate=16000&
//!   channels=1&start_sample=0&timestamp_ms=`); then binary messages may follow at once.
//! - Binary messages then carry PCM; the gateway assigns `audio.start_sample` continuously and
//!   splits a message larger than `gateway.max_chunk_bytes`. The PCM is a byte stream: a
//!   message need not end on a sample-frame boundary (the rest waits for the next message), but
//!   the stream must, when it closes.
//! - Every `gateway.ws_ack_interval_ms` the server sends `{"durable_samples": N}`: the first N
//!   samples (per channel) are acknowledged by the broker.
//! - The text message `{"eos": true}` ends the stream: the gateway produces the `audio.eos`
//!   chunk, waits for every acknowledgement, sends a last `{"durable_samples": N, "eos": true}`
//!   and closes. A normal close from the client produces the `audio.eos` chunk too (and waits
//!   for it), but the protocol leaves no room for a last acknowledgement after it.
//! - A refused message (the decoder's checks) or a broker failure ends the session with
//!   `{"error": reason, "message": …, "durable_samples": N}` and close code 1007 or 1011;
//!   reconnect with `start_sample` = N to go on. When the gateway stops, open sessions settle
//!   and end the same way (`shutting_down`, close code 1001).

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tracing::{info, warn};

use super::Shared;
use super::chunks::{BodyPlace, PcmLayout, plan_chunks, raw_layout};
use super::error::ApiError;
use crate::audio::decode_stream_id;
use crate::audio::headers::capture_time_ms;
use crate::clock::unix_ms;
use crate::kafka::producer::Stored;

/// The session's first (text) message (other fields are ignored).
#[derive(Debug, Default, Deserialize)]
pub struct StreamFormat {
    /// `s16le`, `s32le` or `f32le`.
    pub format: Option<String>,
    /// Sample rate in Hz.
    pub sample_rate: Option<u32>,
    /// Interleaved channels.
    pub channels: Option<u16>,
    /// The first sample's index within the stream (default 0; a reconnect continues here).
    pub start_sample: Option<u64>,
    /// Capture time of the first sample, Unix milliseconds (default: when it arrives).
    pub timestamp_ms: Option<i64>,
}

/// The client's last text message, `{"eos": true}`: ends the stream and asks for the final
/// acknowledgement before the server closes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndOfStream {
    eos: bool,
}

/// The close code of a refusal: 1007 for bad data (4xx), 1011 for a failure on our side or
/// the broker's (429, 5xx: reconnect and go on).
fn close_code_of(error: &ApiError) -> u16 {
    if error.status.is_client_error() && error.status != axum::http::StatusCode::TOO_MANY_REQUESTS {
        close_code::INVALID
    } else {
        close_code::ERROR
    }
}

/// `503 kafka_unavailable`: chunks were queued but the broker did not acknowledge every one.
fn chunks_unacknowledged(gateway: &Shared) -> ApiError {
    ApiError::retry_later(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "kafka_unavailable",
        "the broker did not acknowledge every chunk; reconnect with start_sample = durable_samples",
        gateway.settings.gateway.retry_after_secs,
    )
}

/// A text message from the server.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerMessage {
    /// Samples (per channel, counted from the stream's start) acknowledged by the broker.
    pub durable_samples: u64,
    /// Set on the last acknowledgement, sent after the client's `{"eos": true}` once every
    /// chunk, the `audio.eos` one included, is acknowledged (never after a close frame).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eos: bool,
    /// The refusal reason, when the session ends on an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Refuses a bad stream id before upgrading; then runs the session.
pub(super) async fn upgrade(
    State(gateway): State<Shared>,
    Path(stream_id): Path<String>,
    Query(query): Query<StreamFormat>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    decode_stream_id(Some(stream_id.as_bytes()))?;
    gateway.producer.check_reachable()?;
    let given = query.format.is_some()
        || query.sample_rate.is_some()
        || query.channels.is_some()
        || query.start_sample.is_some()
        || query.timestamp_ms.is_some();
    // Checked before the upgrade, so that a bad query is a plain 400.
    let from_query = if given {
        Some(position_of(&gateway, &stream_id, query)?)
    } else {
        None
    };
    let max_message = gateway.settings.gateway.max_body_bytes;
    // Tracked from here to the session's end: the server waits for it before it returns.
    let tracked = gateway.sessions.token();
    Ok(ws
        .protocols(["bearer"])
        .max_message_size(max_message)
        .on_upgrade(move |socket| async move {
            let _tracked = tracked;
            gateway.metrics.websocket_sessions.inc();
            let mut session = Session {
                gateway: gateway.clone(),
                stream_id,
                socket,
                from_query,
            };
            session.run().await;
            gateway.metrics.websocket_sessions.dec();
        }))
}

struct Session {
    gateway: Shared,
    stream_id: String,
    socket: WebSocket,
    /// The format from the query, when it came that way.
    from_query: Option<Position>,
}

/// A session's start from its format (defaults from `[input]`).
fn position_of(
    gateway: &Shared,
    stream_id: &str,
    format: StreamFormat,
) -> Result<Position, ApiError> {
    let rate = format.sample_rate.map(|r| r.to_string());
    let channels = format.channels.map(|c| c.to_string());
    let layout = raw_layout(
        &gateway.settings.input,
        stream_id,
        format.format.as_deref(),
        rate.as_deref(),
        channels.as_deref(),
    )?;
    let start_sample = format.start_sample.unwrap_or(0);
    Ok(Position {
        layout,
        start_sample,
        timestamp_ms: format.timestamp_ms.unwrap_or_else(unix_ms),
        next_sample: start_sample,
        durable: start_sample,
        reported: None,
        carry: Vec::new(),
    })
}

/// Where the stream stands: the next sample to assign and the samples acknowledged.
struct Position {
    layout: PcmLayout,
    start_sample: u64,
    timestamp_ms: i64,
    next_sample: u64,
    durable: u64,
    reported: Option<u64>,
    /// Bytes of an incomplete sample frame, waiting for the next message.
    carry: Vec<u8>,
}

impl Position {
    fn timestamp_of(&self, sample: u64) -> i64 {
        capture_time_ms(
            self.timestamp_ms,
            self.start_sample,
            sample,
            self.layout.sample_rate,
        )
    }
}

type PendingAck =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u64, Result<Stored, ApiError>)> + Send>>;

impl Session {
    async fn run(&mut self) {
        let mut position = match self.receive_format().await {
            Ok(Some(position)) => position,
            Ok(None) => return,
            Err(e) => {
                self.fail(e, 0, close_code::INVALID).await;
                return;
            }
        };
        let interval = Duration::from_millis(self.gateway.settings.gateway.ws_ack_interval_ms);
        let mut ticker = tokio::time::interval(interval);
        let mut pending: FuturesOrdered<PendingAck> = FuturesOrdered::new();
        loop {
            tokio::select! {
                message = self.socket.recv() => match message {
                    Some(Ok(Message::Binary(pcm))) => {
                        if let Err(e) = self.produce(&mut position, &pcm, false, &mut pending).await {
                            let durable = self.settle(&mut position, &mut pending).await;
                            let code = close_code_of(&e);
                            self.fail(e, durable, code).await;
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) => {
                        // The close is already answered (the protocol does it), so nothing more
                        // can be said: the end of stream is produced and waited for all the same.
                        let eos = self.produce(&mut position, &[], true, &mut pending).await;
                        let durable = self.settle(&mut position, &mut pending).await;
                        match eos {
                            Ok(()) if durable == position.next_sample => {
                                info!(stream_id = %self.stream_id, durable, "WebSocket stream closed; eos produced.");
                            }
                            Ok(()) => warn!(stream_id = %self.stream_id, durable, "WebSocket stream closed; not every chunk was acknowledged."),
                            Err(e) => warn!(stream_id = %self.stream_id, durable, reason = e.reason, message = %e.message, "WebSocket stream closed; no eos."),
                        }
                        return;
                    }
                    Some(Ok(Message::Text(text))) => {
                        let ends = serde_json::from_str::<EndOfStream>(text.as_str()).is_ok_and(|m| m.eos);
                        if !ends {
                            let durable = self.settle(&mut position, &mut pending).await;
                            let e = ApiError::bad_request(
                                "unexpected_text",
                                r#"after the format, send PCM as binary messages, and {"eos": true} to end the stream"#,
                            );
                            self.fail(e, durable, close_code::INVALID).await;
                            return;
                        }
                        let eos = self.produce(&mut position, &[], true, &mut pending).await;
                        let durable = self.settle(&mut position, &mut pending).await;
                        match eos {
                            Ok(()) if durable == position.next_sample => {
                                let _ = self.send(&ServerMessage {
                                    durable_samples: durable,
                                    eos: true,
                                    error: None,
                                    message: None,
                                }).await;
                                let _ = self.socket.send(Message::Close(Some(CloseFrame {
                                    code: close_code::NORMAL,
                                    reason: "eos".into(),
                                }))).await;
                                info!(stream_id = %self.stream_id, durable, "WebSocket stream ended; eos produced.");
                            }
                            Ok(()) => {
                                let e = chunks_unacknowledged(&self.gateway);
                                self.fail(e, durable, close_code::ERROR).await;
                            }
                            Err(e) => {
                                let code = close_code_of(&e);
                                self.fail(e, durable, code).await;
                            }
                        }
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        // Gone without a close: no eos; what was produced stays produced.
                        let durable = self.settle(&mut position, &mut pending).await;
                        info!(stream_id = %self.stream_id, durable, "WebSocket dropped without a close.");
                        return;
                    }
                },
                Some((end, result)) = pending.next(), if !pending.is_empty() => {
                    match result {
                        Ok(_) => position.durable = position.durable.max(end),
                        Err(e) => {
                            let durable = self.settle(&mut position, &mut pending).await;
                            self.fail(e, durable, close_code::ERROR).await;
                            return;
                        }
                    }
                }
                _ = self.gateway.stopping.cancelled() => {
                    // The gateway stops: what was sent is made durable and reported; the
                    // client reconnects (to another instance) with start_sample = N.
                    let durable = self.settle(&mut position, &mut pending).await;
                    let e = ApiError::retry_later(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "shutting_down",
                        "the gateway is stopping; reconnect with start_sample = durable_samples",
                        self.gateway.settings.gateway.retry_after_secs,
                    );
                    self.fail(e, durable, close_code::AWAY).await;
                    return;
                }
                _ = ticker.tick() => {
                    if position.reported != Some(position.durable) {
                        position.reported = Some(position.durable);
                        let ack = ServerMessage { durable_samples: position.durable, eos: false, error: None, message: None };
                        if self.send(&ack).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Reads the first message; `Ok(None)` when the client left first.
    async fn receive_format(&mut self) -> Result<Option<Position>, ApiError> {
        if let Some(position) = self.from_query.take() {
            return Ok(Some(position));
        }
        let text = loop {
            match self.socket.recv().await {
                Some(Ok(Message::Text(text))) => break text,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(None),
                Some(Ok(Message::Binary(_))) => {
                    return Err(ApiError::bad_request(
                        "missing_format",
                        "the first message must be the format as JSON text",
                    ));
                }
            }
        };
        let format: StreamFormat = serde_json::from_str(text.as_str()).map_err(|e| {
            ApiError::bad_request("bad_format_message", format!("the format message: {e}"))
        })?;
        position_of(&self.gateway, &self.stream_id, format).map(Some)
    }

    /// Validates and queues one message's chunks (waiting while the producer queue is full,
    /// which slows the client down instead of buffering).
    async fn produce(
        &mut self,
        position: &mut Position,
        pcm: &[u8],
        eos: bool,
        pending: &mut FuturesOrdered<PendingAck>,
    ) -> Result<(), ApiError> {
        let frame_bytes = position.layout.frame_bytes();
        let mut data = std::mem::take(&mut position.carry);
        data.extend_from_slice(pcm);
        if eos && !data.is_empty() {
            return Err(crate::audio::DecodeError::RaggedPayload {
                len: data.len(),
                frame_bytes,
                channels: position.layout.channels,
                format: position.layout.format,
            }
            .into());
        }
        let whole = data.len() / frame_bytes * frame_bytes;
        position.carry = data.split_off(whole);
        let pcm = data.as_slice();
        if pcm.is_empty() && !eos {
            return Ok(());
        }
        let gateway = &self.gateway;
        let start = position.next_sample;
        let chunks = plan_chunks(
            &gateway.settings.input,
            &self.stream_id,
            position.layout,
            pcm,
            BodyPlace {
                start_sample: start,
                timestamp_ms: position.timestamp_of(start),
                eos,
            },
            gateway
                .settings
                .gateway
                .chunk_bytes(&gateway.settings.input),
        )?;
        gateway.producer.check_reachable()?;
        let frame_bytes = frame_bytes as u64;
        let deadline = gateway.producer.queue_deadline();
        for chunk in &chunks {
            let payload = &pcm[chunk.range.clone()];
            let Some(delivery) = gateway
                .producer
                .enqueue_before(&self.stream_id, payload, &chunk.headers, deadline)
                .await?
            else {
                return Err(gateway.producer.queue_full());
            };
            let end = start + chunk.range.end as u64 / frame_bytes;
            let shared = gateway.clone();
            let bytes = chunk.range.len() as u64;
            pending.push_back(Box::pin(async move {
                let result = shared.producer.acknowledged(delivery).await;
                if result.is_ok() {
                    shared.metrics.chunks_produced_total.inc();
                    shared.metrics.bytes_accepted_total.inc_by(bytes);
                }
                (end, result)
            }));
        }
        position.next_sample = start + pcm.len() as u64 / frame_bytes;
        Ok(())
    }

    /// Waits for every queued chunk; returns the durable sample count.
    async fn settle(
        &mut self,
        position: &mut Position,
        pending: &mut FuturesOrdered<PendingAck>,
    ) -> u64 {
        while let Some((end, result)) = pending.next().await {
            if result.is_err() {
                // Later chunks may be acknowledged, but the stream is durable only up to here.
                while pending.next().await.is_some() {}
                break;
            }
            position.durable = position.durable.max(end);
        }
        position.durable
    }

    async fn send(&mut self, message: &ServerMessage) -> Result<(), axum::Error> {
        let text = serde_json::to_string(message).expect("serialisable");
        self.socket.send(Message::Text(text.into())).await
    }

    async fn fail(&mut self, error: ApiError, durable: u64, code: u16) {
        warn!(stream_id = %self.stream_id, reason = error.reason, message = %error.message, durable, "WebSocket stream refused.");
        let _ = self
            .send(&ServerMessage {
                durable_samples: durable,
                eos: false,
                error: Some(error.reason.to_owned()),
                message: Some(error.message.clone()),
            })
            .await;
        let _ = self
            .socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: error.reason.into(),
            })))
            .await;
    }
}
