//! `POST /v1/streams/{stream_id}/chunks`: a request body becomes the worker's own input
//! messages.
//!
//! The body is read (within `gateway.max_body_bytes`), decoded when it is a WAV file
//! ([`crate::audio::wav`]), planned into chunks that the worker's decoder accepts
//! ([`super::chunks`]) and produced ([`super::producer`]). The answer waits for the broker's
//! acknowledgement of every chunk (`acks=all`, idempotent producer).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use super::Shared;
use super::chunks::{BodyPlace, PcmLayout, plan_chunks, raw_layout};
use super::error::{ApiError, parse_parameter};
use super::producer::produce_chunks;
use crate::audio::decode_stream_id;
use crate::audio::headers::parse_eos;
use crate::audio::wav::decode_wav_pcm;
use crate::clock::unix_ms;
use crate::kafka::producer::Stored;

/// Query parameters of `POST /v1/streams/{id}/chunks` (each may also come as a header:
/// `Audio-Format`, `Audio-Sample-Rate`, `Audio-Channels`, `Audio-Start-Sample`,
/// `Audio-Timestamp-Ms`, `Audio-Eos`).
#[derive(Debug, Default, Deserialize)]
pub struct ChunkQuery {
    format: Option<String>,
    sample_rate: Option<String>,
    channels: Option<String>,
    start_sample: Option<String>,
    timestamp_ms: Option<String>,
    eos: Option<String>,
}

/// The `202` answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accepted {
    /// The stream.
    pub stream_id: String,
    /// The body's first sample (per channel) within the stream.
    pub start_sample: u64,
    /// Samples (per channel) accepted.
    pub samples: u64,
    /// Partition of `source.topic`.
    pub partition: i32,
    /// Offset of the last chunk produced.
    pub offset: i64,
    /// Offset of the first chunk produced.
    pub first_offset: i64,
    /// Chunks the body was produced as.
    pub chunks: usize,
}

/// How the body is encoded, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Raw interleaved PCM described by parameters.
    RawPcm,
    /// A WAV file.
    Wav,
}

/// The body kind of a `Content-Type`, or `415`.
pub fn body_kind(content_type: Option<&str>) -> Result<BodyKind, ApiError> {
    let Some(content_type) = content_type else {
        return Ok(BodyKind::RawPcm);
    };
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "" | "application/octet-stream" | "audio/pcm" => Ok(BodyKind::RawPcm),
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Ok(BodyKind::Wav),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {content_type:?} is not supported; send application/octet-stream (raw PCM) or audio/wav"
            ),
        )),
    }
}

/// A WAV body's PCM as the wire carries it: 16-bit as `s16le`, 24- and 32-bit integers as
/// `s32le`, 8-bit as `s16le`, 32-bit float as `f32le` ([`decode_wav_pcm`]); a body it cannot
/// decode is `400 bad_wav`.
pub fn wav_pcm(body: &[u8]) -> Result<(PcmLayout, Bytes), ApiError> {
    let wav = decode_wav_pcm(body)?;
    Ok((
        PcmLayout {
            format: wav.format,
            sample_rate: wav.sample_rate,
            channels: wav.channels,
        },
        Bytes::from(wav.pcm),
    ))
}

/// A parameter from the query, else the HTTP header `header_name` (`Audio-Format`, …), else
/// the wire header itself (`audio.format`, …).
fn param<'a>(
    query: &'a Option<String>,
    headers: &'a HeaderMap,
    header_name: &str,
) -> Option<&'a str> {
    let wire_name = header_name
        .replacen("audio-", "audio.", 1)
        .replace('-', "_");
    query.as_deref().or_else(|| {
        [header_name, wire_name.as_str()]
            .into_iter()
            .find_map(|name| headers.get(name).and_then(|v| v.to_str().ok()))
    })
}

/// How much of a refused body the gateway still reads and throws away, and for how long.
///
/// A server that closes a socket with unread bytes in it makes the kernel answer with a reset,
/// which can destroy the `413` on its way to a client that is still sending; reading the rest
/// (within these bounds) lets the client see the answer and keeps the connection usable.
const REFUSED_BODY_DRAIN_BYTES: u64 = 16 * 1024 * 1024;
const REFUSED_BODY_DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads the body, refusing one above `max` bytes with `413`.
pub async fn read_body(headers: &HeaderMap, mut body: Body, max: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than gateway.max_body_bytes ({max})"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        // A client waiting for `100 Continue` has sent nothing yet, and reading would ask it to.
        let waits_to_send = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits_to_send {
            discard_refused_body(body).await;
        }
        return Err(too_large());
    }
    match http_body_util::Limited::new(&mut body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            discard_refused_body(body).await;
            Err(too_large())
        }
        Err(e) => Err(ApiError::bad_request(
            "body_unreadable",
            format!("cannot read the body: {e}"),
        )),
    }
}

/// Reads and drops what is left of a refused body, within [`REFUSED_BODY_DRAIN_BYTES`] and
/// [`REFUSED_BODY_DRAIN_TIME`].
async fn discard_refused_body(mut body: Body) {
    let mut budget = REFUSED_BODY_DRAIN_BYTES;
    let drain = async {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |data| data.len() as u64);
            budget = budget.saturating_sub(len);
            if budget == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_BODY_DRAIN_TIME, drain).await;
}

/// A query or header value as an unsigned integer, or `400 bad_parameter` naming it.
fn parse_u64(name: &str, text: &str) -> Result<u64, ApiError> {
    parse_parameter(name, text, "not a non-negative integer")
}

/// `POST /v1/streams/{stream_id}/chunks`.
pub(super) async fn post_chunks(
    State(gateway): State<Shared>,
    Path(stream_id): Path<String>,
    Query(query): Query<ChunkQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let settings = &gateway.settings;
    decode_stream_id(Some(stream_id.as_bytes()))?;
    let kind = body_kind(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )?;
    let start_sample = param(&query.start_sample, &headers, "audio-start-sample")
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_start_sample",
                "start_sample is required (query ?start_sample= or header Audio-Start-Sample): \
                 it makes a retried request safe",
            )
        })
        .and_then(|text| parse_u64("start_sample", text))?;
    let timestamp_ms = match param(&query.timestamp_ms, &headers, "audio-timestamp-ms") {
        Some(text) => i64::try_from(parse_u64("timestamp_ms", text)?)
            .map_err(|_| ApiError::bad_parameter("timestamp_ms", text, "too large"))?,
        None => unix_ms(),
    };
    let eos = match param(&query.eos, &headers, "audio-eos").map(str::trim) {
        None => false,
        Some(text) => parse_eos(text)
            .ok_or_else(|| ApiError::bad_parameter("eos", text, "expected 1 or 0"))?,
    };
    let body = read_body(&headers, body, settings.gateway.max_body_bytes).await?;
    let described = raw_layout(
        &settings.input,
        &stream_id,
        param(&query.format, &headers, "audio-format"),
        param(&query.sample_rate, &headers, "audio-sample-rate"),
        param(&query.channels, &headers, "audio-channels"),
    )?;
    let (layout, pcm) = match kind {
        BodyKind::RawPcm => (described, body),
        BodyKind::Wav => wav_pcm(&body)?,
    };
    let chunks = plan_chunks(
        &settings.input,
        &stream_id,
        layout,
        &pcm,
        BodyPlace {
            start_sample,
            timestamp_ms,
            eos,
        },
        settings.gateway.chunk_bytes(&settings.input),
    )?;
    let started = Instant::now();
    let delivered = produce_chunks(&gateway.producer, &stream_id, &pcm, &chunks).await?;
    gateway
        .metrics
        .broker_ack_seconds
        .observe(started.elapsed().as_secs_f64());
    gateway
        .metrics
        .chunks_produced_total
        .inc_by(chunks.len() as u64);
    gateway
        .metrics
        .bytes_accepted_total
        .inc_by(pcm.len() as u64);
    let first = delivered.first().copied().unwrap_or(Stored {
        partition: -1,
        offset: -1,
    });
    let last = delivered.last().copied().unwrap_or(first);
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            stream_id,
            start_sample,
            samples: (pcm.len() / layout.frame_bytes()) as u64,
            partition: last.partition,
            offset: last.offset,
            first_offset: first.offset,
            chunks: chunks.len(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::SampleFormat;

    #[test]
    fn parameters_come_from_the_query_or_either_header_name() {
        let mut headers = HeaderMap::new();
        headers.insert("audio.sample_rate", "8000".parse().unwrap());
        headers.insert("audio-channels", "2".parse().unwrap());
        assert_eq!(param(&None, &headers, "audio-sample-rate"), Some("8000"));
        assert_eq!(param(&None, &headers, "audio-channels"), Some("2"));
        assert_eq!(
            param(&Some("4".into()), &headers, "audio-channels"),
            Some("4")
        );
        assert_eq!(param(&None, &headers, "audio-format"), None);
    }

    #[test]
    fn content_types_pick_the_body_kind_or_415() {
        assert_eq!(body_kind(None).unwrap(), BodyKind::RawPcm);
        assert_eq!(
            body_kind(Some("application/octet-stream")).unwrap(),
            BodyKind::RawPcm
        );
        assert_eq!(
            body_kind(Some("audio/wav; codec=1")).unwrap(),
            BodyKind::Wav
        );
        assert_eq!(
            body_kind(Some("application/json")).unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn wav_bodies_keep_their_samples_or_are_bad_wav() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 22_050,
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
        };
        let mut file = std::io::Cursor::new(Vec::new());
        {
            let mut writer = hound::WavWriter::new(&mut file, spec).unwrap();
            for s in [1, -1, 8_388_607, -8_388_608] {
                writer.write_sample(s).unwrap();
            }
            writer.finalize().unwrap();
        }
        let (layout, pcm) = wav_pcm(file.get_ref()).unwrap();
        assert_eq!(
            layout,
            PcmLayout {
                format: SampleFormat::S32le,
                sample_rate: 22_050,
                channels: 2
            }
        );
        let values: Vec<i32> = pcm
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(values, [256, -256, 8_388_607 << 8, -8_388_608 << 8]);
        let bad = wav_pcm(b"RIFF....").unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.reason, "bad_wav");
        assert!(
            bad.message.starts_with("not a readable WAV file: "),
            "{}",
            bad.message
        );
    }
}
