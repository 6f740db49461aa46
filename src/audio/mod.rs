//! Input wire format: one Kafka message (key, headers, PCM payload) → mono samples
//! and their [`ChunkMeta`].
//!
//! Pure and synchronous: the Kafka source hands in borrowed bytes, this module returns
//! mono `f32` samples (integer PCM scaled into `[-1, 1)`; `f32le` samples as sent, any finite
//! value, not clamped) plus the chunk's metadata, or a [`DecodeError`] that names exactly what
//! was wrong (it becomes the dead-letter `error` header).

pub mod headers;
pub mod wav;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::validation::Problem;
use headers::{
    CHANNELS as HEADER_CHANNELS, EOS as HEADER_EOS, FORMAT as HEADER_FORMAT,
    SAMPLE_RATE as HEADER_SAMPLE_RATE, START_SAMPLE as HEADER_START_SAMPLE,
    TIMESTAMP_MS as HEADER_TIMESTAMP_MS,
};

/// Longest accepted stream id (the message key), in bytes.
pub const MAX_STREAM_ID_BYTES: usize = 256;

/// Sample encoding of a PCM payload (always little-endian, interleaved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleFormat {
    /// Signed 16-bit integers.
    S16le,
    /// Signed 32-bit integers.
    S32le,
    /// IEEE 754 32-bit floats; must be finite.
    F32le,
}

impl SampleFormat {
    /// Bytes per sample of one channel.
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Self::S16le => 2,
            Self::S32le | Self::F32le => 4,
        }
    }

    /// The name used in headers and config.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::S16le => "s16le",
            Self::S32le => "s32le",
            Self::F32le => "f32le",
        }
    }
}

impl fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SampleFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "s16le" => Ok(Self::S16le),
            "s32le" => Ok(Self::S32le),
            "f32le" => Ok(Self::F32le),
            _ => Err(()),
        }
    }
}

/// `[input]`: defaults for headers a message leaves out, and limits on what is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Sample encoding when `audio.format` is absent.
    pub format: SampleFormat,
    /// Sample rate in Hz when `audio.sample_rate` is absent.
    pub sample_rate: u32,
    /// Channel count when `audio.channels` is absent.
    pub channels: u16,
    /// Largest accepted payload in bytes; larger messages are dead-lettered.
    pub max_message_bytes: usize,
    /// Highest accepted sample rate in Hz.
    pub max_sample_rate: u32,
    /// Highest accepted channel count.
    pub max_channels: u16,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            format: SampleFormat::S16le,
            sample_rate: 16_000,
            channels: 1,
            max_message_bytes: 8 * 1024 * 1024,
            max_sample_rate: 384_000,
            max_channels: 64,
        }
    }
}

impl InputConfig {
    /// Every problem with these settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.max_sample_rate == 0 {
            problems.push(Problem::new(
                "input.max_sample_rate",
                0,
                "must be at least 1",
            ));
        }
        if self.sample_rate == 0 || self.sample_rate > self.max_sample_rate {
            problems.push(Problem::new(
                "input.sample_rate",
                self.sample_rate,
                format!(
                    "must be between 1 and input.max_sample_rate ({})",
                    self.max_sample_rate
                ),
            ));
        }
        if self.max_channels == 0 {
            problems.push(Problem::new("input.max_channels", 0, "must be at least 1"));
        }
        if self.channels == 0 || self.channels > self.max_channels {
            problems.push(Problem::new(
                "input.channels",
                self.channels,
                format!(
                    "must be between 1 and input.max_channels ({})",
                    self.max_channels
                ),
            ));
        }
        if self.max_message_bytes == 0 {
            problems.push(Problem::new(
                "input.max_message_bytes",
                0,
                "must be at least 1",
            ));
        }
        problems
    }
}

/// Why a message could not be decoded. The `Display` text is what operators see in the
/// dead-letter `error` header and in logs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The message has no key.
    #[error("message key (stream id) is missing")]
    MissingKey,
    /// The key is empty.
    #[error("message key (stream id) is empty")]
    EmptyKey,
    /// The key is not valid UTF-8.
    #[error("message key (stream id) is not valid UTF-8")]
    KeyNotUtf8,
    /// The key is longer than [`MAX_STREAM_ID_BYTES`].
    #[error("message key (stream id) is {0} bytes, more than the {MAX_STREAM_ID_BYTES} allowed")]
    KeyTooLong(usize),
    /// A header value is not valid UTF-8.
    #[error("header {0} is not valid UTF-8")]
    HeaderNotUtf8(&'static str),
    /// A header value could not be parsed.
    #[error("header {header} = {value:?}: {reason}")]
    BadHeader {
        /// Header name.
        header: &'static str,
        /// The value as received (truncated).
        value: String,
        /// What was expected.
        reason: String,
    },
    /// The payload is empty and the message is not an end-of-stream marker.
    #[error("payload is empty (only a message with audio.eos=1 may be empty)")]
    EmptyPayload,
    /// The payload exceeds `input.max_message_bytes`.
    #[error("payload is {size} bytes, more than input.max_message_bytes ({max})")]
    PayloadTooLarge {
        /// Payload size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The payload does not hold a whole number of sample frames.
    #[error(
        "payload length {len} is not a multiple of {frame_bytes} bytes ({channels} channel(s) of {format})"
    )]
    RaggedPayload {
        /// Payload length.
        len: usize,
        /// Bytes per interleaved sample frame.
        frame_bytes: usize,
        /// Channel count.
        channels: u16,
        /// Sample encoding.
        format: SampleFormat,
    },
    /// An `f32le` sample is NaN or infinite.
    #[error("f32le sample {index} is not finite ({value})")]
    NonFiniteSample {
        /// Index of the offending sample in the payload (interleaved).
        index: usize,
        /// Its value.
        value: f32,
    },
}

impl DecodeError {
    /// Short label of the error: the `reason` of `dead_letters_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingKey | Self::EmptyKey | Self::KeyNotUtf8 | Self::KeyTooLong(_) => "bad_key",
            Self::HeaderNotUtf8(_) | Self::BadHeader { .. } => "bad_header",
            Self::EmptyPayload => "empty_payload",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::RaggedPayload { .. } => "ragged_payload",
            Self::NonFiniteSample { .. } => "non_finite_sample",
        }
    }
}

/// What a chunk is, apart from its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkMeta {
    /// Stream id (the message key).
    pub stream_id: String,
    /// Encoding of the payload.
    pub format: SampleFormat,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Interleaved channels in the payload (the decoded samples are mono).
    pub channels: u16,
    /// Index of the first sample within the stream, when the producer said so.
    pub start_sample: Option<u64>,
    /// Capture time of the first sample, Unix milliseconds, when known.
    pub timestamp_ms: Option<i64>,
    /// This is the stream's last chunk.
    pub eos: bool,
    /// Mono samples decoded (payload frames).
    pub frames: usize,
}

fn header_str<'h>(name: &'static str, value: &'h [u8]) -> Result<&'h str, DecodeError> {
    std::str::from_utf8(value)
        .map(str::trim)
        .map_err(|_| DecodeError::HeaderNotUtf8(name))
}

fn bad_header(header: &'static str, value: &str, reason: impl Into<String>) -> DecodeError {
    let mut value = value.to_string();
    if value.len() > 64 {
        let mut cut = 64;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
        value.push('…');
    }
    DecodeError::BadHeader {
        header,
        value,
        reason: reason.into(),
    }
}

fn parse_num<T: FromStr>(header: &'static str, raw: &[u8]) -> Result<T, DecodeError> {
    let text = header_str(header, raw)?;
    text.parse::<T>()
        .map_err(|_| bad_header(header, text, "not a non-negative integer"))
}

/// Validates the stream id key.
pub fn decode_stream_id(key: Option<&[u8]>) -> Result<&str, DecodeError> {
    let key = key.ok_or(DecodeError::MissingKey)?;
    if key.is_empty() {
        return Err(DecodeError::EmptyKey);
    }
    if key.len() > MAX_STREAM_ID_BYTES {
        return Err(DecodeError::KeyTooLong(key.len()));
    }
    std::str::from_utf8(key).map_err(|_| DecodeError::KeyNotUtf8)
}

/// Decodes one message into mono samples written to `samples` (cleared first, capacity reused).
///
/// `headers` yields `(name, value)` pairs; unknown headers are ignored, and a header that
/// appears twice takes its last value. `message_timestamp_ms` is the Kafka timestamp, used
/// when `audio.timestamp_ms` is absent.
pub fn decode<'h>(
    input: &InputConfig,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    message_timestamp_ms: Option<i64>,
    samples: &mut Vec<f32>,
) -> Result<ChunkMeta, DecodeError> {
    samples.clear();
    let stream_id = decode_stream_id(key)?;

    let mut format = input.format;
    let mut sample_rate = input.sample_rate;
    let mut channels = input.channels;
    let mut start_sample = None;
    let mut timestamp_ms = message_timestamp_ms.filter(|t| *t >= 0);
    let mut eos = false;
    for (name, value) in headers {
        let value = value.unwrap_or_default();
        match name {
            HEADER_FORMAT => {
                let text = header_str(HEADER_FORMAT, value)?;
                format = text.parse().map_err(|()| {
                    bad_header(
                        HEADER_FORMAT,
                        text,
                        "unknown format; expected s16le, s32le or f32le",
                    )
                })?;
            }
            HEADER_SAMPLE_RATE => {
                let rate: u32 = parse_num(HEADER_SAMPLE_RATE, value)?;
                if rate == 0 || rate > input.max_sample_rate {
                    return Err(bad_header(
                        HEADER_SAMPLE_RATE,
                        &rate.to_string(),
                        format!("must be between 1 and {} Hz", input.max_sample_rate),
                    ));
                }
                sample_rate = rate;
            }
            HEADER_CHANNELS => {
                let count: u16 = parse_num(HEADER_CHANNELS, value)?;
                if count == 0 || count > input.max_channels {
                    return Err(bad_header(
                        HEADER_CHANNELS,
                        &count.to_string(),
                        format!("must be between 1 and {}", input.max_channels),
                    ));
                }
                channels = count;
            }
            HEADER_START_SAMPLE => {
                start_sample = Some(parse_num::<u64>(HEADER_START_SAMPLE, value)?)
            }
            HEADER_TIMESTAMP_MS => {
                let text = header_str(HEADER_TIMESTAMP_MS, value)?;
                let ts: i64 = text.parse().ok().filter(|t| *t >= 0).ok_or_else(|| {
                    bad_header(
                        HEADER_TIMESTAMP_MS,
                        text,
                        "not a non-negative integer (Unix milliseconds)",
                    )
                })?;
                timestamp_ms = Some(ts);
            }
            HEADER_EOS => {
                let text = header_str(HEADER_EOS, value)?;
                eos = headers::parse_eos(text)
                    .ok_or_else(|| bad_header(HEADER_EOS, text, "expected 1 or 0"))?;
            }
            _ => {}
        }
    }

    let payload = payload.unwrap_or_default();
    if payload.len() > input.max_message_bytes {
        return Err(DecodeError::PayloadTooLarge {
            size: payload.len(),
            max: input.max_message_bytes,
        });
    }
    if payload.is_empty() && !eos {
        return Err(DecodeError::EmptyPayload);
    }
    let frame_bytes = format.bytes_per_sample() * usize::from(channels);
    if !payload.len().is_multiple_of(frame_bytes) {
        return Err(DecodeError::RaggedPayload {
            len: payload.len(),
            frame_bytes,
            channels,
            format,
        });
    }
    let frames = payload.len() / frame_bytes;
    decode_pcm(format, channels, payload, samples)?;
    Ok(ChunkMeta {
        stream_id: stream_id.to_string(),
        format,
        sample_rate,
        channels,
        start_sample,
        timestamp_ms,
        eos,
        frames,
    })
}

/// Decodes interleaved PCM into mono by averaging channels. `payload` must hold whole frames.
pub fn decode_pcm(
    format: SampleFormat,
    channels: u16,
    payload: &[u8],
    samples: &mut Vec<f32>,
) -> Result<(), DecodeError> {
    let channels = usize::from(channels.max(1));
    let bytes = format.bytes_per_sample();
    let frame_bytes = bytes * channels;
    samples.reserve(payload.len() / frame_bytes);
    // Mono s16 (the common case): one conversion per sample that the compiler vectorises;
    // the same value as the general path (a 16-bit integer over 2^15 is exact in f32).
    if channels == 1 && format == SampleFormat::S16le {
        samples.extend(
            payload
                .chunks_exact(2)
                .map(|raw| f32::from(i16::from_le_bytes([raw[0], raw[1]])) * (1.0 / 32_768.0)),
        );
        return Ok(());
    }
    let scale = 1.0 / channels as f64;
    for (frame_index, frame) in payload.chunks_exact(frame_bytes).enumerate() {
        let mut sum = 0.0f64;
        for (channel, raw) in frame.chunks_exact(bytes).enumerate() {
            sum += match format {
                SampleFormat::S16le => f64::from(i16::from_le_bytes([raw[0], raw[1]])) / 32_768.0,
                SampleFormat::S32le => {
                    f64::from(i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
                        / 2_147_483_648.0
                }
                SampleFormat::F32le => {
                    let value = f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                    if !value.is_finite() {
                        return Err(DecodeError::NonFiniteSample {
                            index: frame_index * channels + channel,
                            value,
                        });
                    }
                    f64::from(value)
                }
            };
        }
        samples.push(if channels == 1 {
            sum as f32
        } else {
            (sum * scale) as f32
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary keys, payloads and headers decode to Ok or a typed error, never a panic,
        /// and Ok always means whole frames of finite samples.
        #[test]
        fn arbitrary_messages_never_panic(
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            headers in proptest::collection::vec(
                (prop_oneof![
                    Just(HEADER_FORMAT), Just(HEADER_SAMPLE_RATE), Just(HEADER_CHANNELS),
                    Just(HEADER_START_SAMPLE), Just(HEADER_TIMESTAMP_MS), Just(HEADER_EOS), Just("other")
                ], proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12))),
                0..6,
            ),
        ) {
            let input = InputConfig { max_message_bytes: 400, ..InputConfig::default() };
            let pairs: Vec<(&str, Option<&[u8]>)> = headers.iter().map(|(k, v)| (*k, v.as_deref())).collect();
            let mut samples = Vec::new();
            if let Ok(meta) = decode(&input, key.as_deref(), Some(&payload), pairs, None, &mut samples) {
                prop_assert_eq!(samples.len(), meta.frames);
                prop_assert!(samples.iter().all(|s| s.is_finite()));
                prop_assert!(payload.len() <= 400);
            }
        }
    }

    fn hdr<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, Option<&'a [u8]>)> {
        pairs
            .iter()
            .map(|(k, v)| (*k, Some(v.as_bytes())))
            .collect()
    }

    fn run(
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(ChunkMeta, Vec<f32>), DecodeError> {
        let mut out = Vec::new();
        let meta = decode(
            &InputConfig::default(),
            key,
            Some(payload),
            hdr(headers),
            Some(5),
            &mut out,
        )?;
        Ok((meta, out))
    }

    #[test]
    fn s16_mono_uses_defaults_and_kafka_timestamp() {
        let payload: Vec<u8> = [0i16, 16384, -32768]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let (meta, samples) = run(Some(b"mic-1"), &payload, &[]).unwrap();
        assert_eq!(samples, vec![0.0, 0.5, -1.0]);
        assert_eq!(meta.stream_id, "mic-1");
        assert_eq!(meta.sample_rate, 16_000);
        assert_eq!(meta.timestamp_ms, Some(5));
        assert_eq!(meta.start_sample, None);
        assert!(!meta.eos);
    }

    #[test]
    fn s16_mono_fast_path_matches_the_general_conversion_for_every_value() {
        let payload: Vec<u8> = (i16::MIN..=i16::MAX).flat_map(i16::to_le_bytes).collect();
        let mut samples = Vec::new();
        decode_pcm(SampleFormat::S16le, 1, &payload, &mut samples).unwrap();
        assert_eq!(samples.len(), 65_536);
        for (value, sample) in (i16::MIN..=i16::MAX).zip(&samples) {
            let general = (f64::from(value) / 32_768.0) as f32;
            assert_eq!(sample.to_bits(), general.to_bits(), "sample {value}");
        }
    }

    #[test]
    fn s32_stereo_downmixes_by_averaging() {
        let payload: Vec<u8> = [i32::MIN, 0, 1 << 30, 1 << 30]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let (meta, samples) = run(
            Some(b"s"),
            &payload,
            &[
                ("audio.format", "s32le"),
                ("audio.channels", "2"),
                ("audio.start_sample", "42"),
                ("audio.eos", "1"),
            ],
        )
        .unwrap();
        assert_eq!(samples, vec![-0.5, 0.5]);
        assert_eq!(meta.frames, 2);
        assert_eq!(meta.start_sample, Some(42));
        assert!(meta.eos);
    }

    #[test]
    fn f32_rejects_nan_and_names_the_sample() {
        let payload: Vec<u8> = [0.25f32, f32::NAN]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let err = run(Some(b"s"), &payload, &[("audio.format", "f32le")]).unwrap_err();
        assert_eq!(err.to_string(), "f32le sample 1 is not finite (NaN)");
        let ok: Vec<u8> = [0.25f32, -0.75]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(
            run(Some(b"s"), &ok, &[("audio.format", "f32le")])
                .unwrap()
                .1,
            vec![0.25, -0.75]
        );
    }

    #[test]
    fn bad_inputs_get_clear_errors() {
        let two = [0u8, 0];
        assert_eq!(run(None, &two, &[]).unwrap_err(), DecodeError::MissingKey);
        assert_eq!(
            run(Some(b""), &two, &[]).unwrap_err(),
            DecodeError::EmptyKey
        );
        assert_eq!(
            run(Some(&[0xff, 0xfe]), &two, &[]).unwrap_err(),
            DecodeError::KeyNotUtf8
        );
        assert_eq!(
            run(Some(&[b'a'; 257]), &two, &[]).unwrap_err(),
            DecodeError::KeyTooLong(257)
        );
        assert_eq!(
            run(Some(b"s"), &[], &[]).unwrap_err(),
            DecodeError::EmptyPayload
        );
        assert!(run(Some(b"s"), &[], &[("audio.eos", "1")]).is_ok());
        let err = run(Some(b"s"), &[0u8; 3], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "payload length 3 is not a multiple of 2 bytes (1 channel(s) of s16le)"
        );
        let err = run(Some(b"s"), &two, &[("audio.format", "mp3")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "header audio.format = \"mp3\": unknown format; expected s16le, s32le or f32le"
        );
        let err = run(Some(b"s"), &two, &[("audio.sample_rate", "0")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("header audio.sample_rate = \"0\": must be between 1 and"),
            "{err}"
        );
        let err = run(Some(b"s"), &two, &[("audio.sample_rate", "fast")]).unwrap_err();
        assert!(
            err.to_string().contains("not a non-negative integer"),
            "{err}"
        );
        let err = run(Some(b"s"), &two, &[("audio.channels", "1000")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("header audio.channels = \"1000\""),
            "{err}"
        );
        let err = run(Some(b"s"), &two, &[("audio.start_sample", "-4")]).unwrap_err();
        assert!(
            err.to_string().starts_with("header audio.start_sample"),
            "{err}"
        );
        let input = InputConfig {
            max_message_bytes: 4,
            ..InputConfig::default()
        };
        let err = decode(
            &input,
            Some(b"s"),
            Some(&[0u8; 6]),
            hdr(&[]),
            None,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(err, DecodeError::PayloadTooLarge { size: 6, max: 4 });
    }
}
