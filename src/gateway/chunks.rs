//! Chunk planning: a body's PCM becomes the worker's own input messages.
//!
//! Every chunk is checked by the worker's decoder ([`crate::audio::decode`]) before anything is
//! produced, so a body the worker would dead-letter is refused with `400` and the decoder's
//! reason; its headers are written by [`ChunkHeaders`], the one encoding of the wire format.
//! A body larger than the chunk size is split on sample-frame boundaries, in order, with
//! `audio.start_sample` advancing. Used by both ingest routes (HTTP and WebSocket).

use std::ops::Range;

use super::error::ApiError;
use crate::audio::headers::{self as wire, ChunkHeaders, capture_time_ms};
use crate::audio::{ChunkMeta, DecodeError, InputConfig, SampleFormat, decode};

/// How a body's PCM is laid out, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmLayout {
    /// Sample encoding.
    pub format: SampleFormat,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u16,
}

impl PcmLayout {
    /// Bytes of one interleaved sample frame.
    pub fn frame_bytes(&self) -> usize {
        self.format.bytes_per_sample() * usize::from(self.channels)
    }
}

/// One validated chunk of a body: its byte range and its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChunk {
    /// Bytes of the PCM body.
    pub range: Range<usize>,
    /// The headers it is produced with.
    pub headers: ChunkHeaders,
}

/// Where a body sits in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPlace {
    /// Index (per channel) of the body's first sample.
    pub start_sample: u64,
    /// Capture time of that sample, Unix milliseconds.
    pub timestamp_ms: i64,
    /// The body ends the stream.
    pub eos: bool,
}

/// Splits `pcm` (placed at `place`) into chunks of at most `max_chunk_bytes`, on sample-frame
/// boundaries, and checks each with the worker's decoder. `place.eos` marks the last chunk (an
/// empty body with it is one empty end-of-stream chunk).
pub fn plan_chunks(
    input: &InputConfig,
    stream_id: &str,
    layout: PcmLayout,
    pcm: &[u8],
    place: BodyPlace,
    max_chunk_bytes: usize,
) -> Result<Vec<PlannedChunk>, ApiError> {
    let BodyPlace {
        start_sample,
        timestamp_ms,
        eos,
    } = place;
    let frame_bytes = layout.frame_bytes();
    let frames = (pcm.len() / frame_bytes) as u64;
    let span_ms =
        i64::try_from(frames * 1000 / u64::from(layout.sample_rate.max(1))).unwrap_or(i64::MAX);
    if start_sample.checked_add(frames).is_none() || timestamp_ms.checked_add(span_ms).is_none() {
        return Err(ApiError::bad_request(
            "bad_parameter",
            format!(
                "start_sample ({start_sample}) or timestamp_ms ({timestamp_ms}) is too large for {frames} more samples"
            ),
        ));
    }
    let per_chunk = (max_chunk_bytes / frame_bytes).max(1) * frame_bytes;
    let mut ranges: Vec<Range<usize>> = (0..pcm.len())
        .step_by(per_chunk)
        .map(|start| start..(start + per_chunk).min(pcm.len()))
        .collect();
    if ranges.is_empty() {
        ranges.push(0..0);
    }
    let mut scratch = Vec::new();
    let last = ranges.len() - 1;
    let mut chunks = Vec::with_capacity(ranges.len());
    for (i, range) in ranges.into_iter().enumerate() {
        let offset = (range.start / frame_bytes) as u64;
        let headers = ChunkHeaders::pcm(
            layout.format,
            layout.sample_rate,
            layout.channels,
            start_sample + offset,
        )
        .with_timestamp_ms(capture_time_ms(
            timestamp_ms,
            start_sample,
            start_sample + offset,
            layout.sample_rate,
        ))
        .with_eos(eos && i == last);
        let pairs = headers.to_pairs();
        decode(
            input,
            Some(stream_id.as_bytes()),
            Some(&pcm[range.clone()]),
            pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes()))),
            None,
            &mut scratch,
        )
        .map_err(|e| {
            shift_sample_index(e, (range.start / layout.format.bytes_per_sample()) as u64)
        })?;
        chunks.push(PlannedChunk { range, headers });
    }
    Ok(chunks)
}

/// A non-finite sample's index counted from the body's start, not the chunk's.
fn shift_sample_index(error: DecodeError, by: u64) -> ApiError {
    match error {
        DecodeError::NonFiniteSample { index, value } => DecodeError::NonFiniteSample {
            index: index + by as usize,
            value,
        }
        .into(),
        other => other.into(),
    }
}

/// The layout a raw body's parameters describe (defaults from `[input]`), checked by the
/// decoder on an empty end-of-stream chunk so that its errors name the header.
pub fn raw_layout(
    input: &InputConfig,
    stream_id: &str,
    format: Option<&str>,
    sample_rate: Option<&str>,
    channels: Option<&str>,
) -> Result<PcmLayout, ApiError> {
    let pairs = [
        (wire::FORMAT, format),
        (wire::SAMPLE_RATE, sample_rate),
        (wire::CHANNELS, channels),
        (wire::EOS, Some("1")),
    ];
    let meta: ChunkMeta = decode(
        input,
        Some(stream_id.as_bytes()),
        Some(&[]),
        pairs
            .iter()
            .filter_map(|(k, v)| v.map(|v| (*k, Some(v.as_bytes())))),
        None,
        &mut Vec::new(),
    )?;
    Ok(PcmLayout {
        format: meta.format,
        sample_rate: meta.sample_rate,
        channels: meta.channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start_sample: u64, timestamp_ms: i64, eos: bool) -> BodyPlace {
        BodyPlace {
            start_sample,
            timestamp_ms,
            eos,
        }
    }

    const S16_MONO: PcmLayout = PcmLayout {
        format: SampleFormat::S16le,
        sample_rate: 16_000,
        channels: 1,
    };

    #[test]
    fn a_large_body_is_split_on_frame_boundaries_with_start_sample_advancing() {
        let pcm = vec![0u8; 10_000];
        let chunks = plan_chunks(
            &InputConfig::default(),
            "s",
            S16_MONO,
            &pcm,
            at(1_000, 5_000, true),
            3_001,
        )
        .unwrap();
        let ranges: Vec<_> = chunks.iter().map(|c| c.range.clone()).collect();
        assert_eq!(ranges, [0..3000, 3000..6000, 6000..9000, 9000..10_000]);
        let starts: Vec<_> = chunks.iter().map(|c| c.headers.start_sample).collect();
        assert_eq!(starts, [Some(1000), Some(2500), Some(4000), Some(5500)]);
        let stamps: Vec<_> = chunks.iter().map(|c| c.headers.timestamp_ms).collect();
        assert_eq!(stamps, [Some(5000), Some(5093), Some(5187), Some(5281)]);
        let eos: Vec<_> = chunks.iter().map(|c| c.headers.eos).collect();
        assert_eq!(eos, [false, false, false, true]);
    }

    #[test]
    fn the_decoder_refuses_what_the_worker_would_dead_letter() {
        let input = InputConfig::default();
        let ragged =
            plan_chunks(&input, "s", S16_MONO, &[0u8; 7], at(0, 0, false), 4096).unwrap_err();
        assert_eq!(ragged.reason, "ragged_payload");
        let empty = plan_chunks(&input, "s", S16_MONO, &[], at(0, 0, false), 4096).unwrap_err();
        assert_eq!(empty.reason, "empty_payload");
        let eos_only = plan_chunks(&input, "s", S16_MONO, &[], at(7, 0, true), 4096).unwrap();
        assert_eq!(eos_only.len(), 1);
        assert!(eos_only[0].headers.eos);
        let f32_layout = PcmLayout {
            format: SampleFormat::F32le,
            ..S16_MONO
        };
        let mut pcm: Vec<u8> = (0..2000).flat_map(|_| 0.5f32.to_le_bytes()).collect();
        pcm[1500 * 4..1501 * 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let nan = plan_chunks(&input, "s", f32_layout, &pcm, at(0, 0, false), 4096).unwrap_err();
        assert_eq!(nan.reason, "non_finite_sample");
        assert!(nan.message.contains("sample 1500"), "{}", nan.message);
        let unknown = raw_layout(&input, "s", Some("u8"), None, None).unwrap_err();
        assert_eq!(unknown.reason, "bad_header");
        assert!(
            unknown.message.contains("audio.format"),
            "{}",
            unknown.message
        );
    }
}
