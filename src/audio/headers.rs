//! The `audio.*` message headers: their names, and the encoding every producer uses.
//!
//! [`crate::audio::decode`] reads these headers; [`ChunkHeaders::to_pairs`] writes them.
//! `specflow produce`, the tests and the benchmark all encode through this one type, so the wire
//! format is defined here once.

use super::SampleFormat;

/// Header naming the sample encoding of the payload.
pub const FORMAT: &str = "audio.format";
/// Header carrying the sample rate in Hz.
pub const SAMPLE_RATE: &str = "audio.sample_rate";
/// Header carrying the number of interleaved channels.
pub const CHANNELS: &str = "audio.channels";
/// Header carrying the index (per channel) of the chunk's first sample within its stream.
pub const START_SAMPLE: &str = "audio.start_sample";
/// Header carrying the capture time of the chunk's first sample, in Unix milliseconds.
pub const TIMESTAMP_MS: &str = "audio.timestamp_ms";
/// Header set to `1` on a stream's last chunk.
pub const EOS: &str = "audio.eos";

/// The value of an `audio.eos` header (or the gateway's `eos` parameter): `1`/`true` is the
/// end of the stream, `0`/`false`/empty is not; anything else is `None`.
pub fn parse_eos(text: &str) -> Option<bool> {
    match text {
        "1" | "true" => Some(true),
        "0" | "false" | "" => Some(false),
        _ => None,
    }
}

/// Capture time, in Unix milliseconds, of the stream sample `sample` (per channel) when the
/// sample `reference_sample` was captured at `reference_ms` (`audio.timestamp_ms` of
/// `audio.start_sample`): whole milliseconds, truncated toward the reference; a rate of 0
/// counts as 1.
pub fn capture_time_ms(
    reference_ms: i64,
    reference_sample: u64,
    sample: u64,
    sample_rate: u32,
) -> i64 {
    let delta = i128::from(sample) - i128::from(reference_sample);
    reference_ms + (delta * 1000 / i128::from(sample_rate.max(1))) as i64
}

/// The headers of one chunk, as a producer sets them. A header left `None` is not sent, and
/// the worker falls back to its `[input]` default (or, for the timestamp, the Kafka timestamp).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkHeaders {
    /// `audio.format`.
    pub format: Option<SampleFormat>,
    /// `audio.sample_rate`.
    pub sample_rate: Option<u32>,
    /// `audio.channels`.
    pub channels: Option<u16>,
    /// `audio.start_sample`.
    pub start_sample: Option<u64>,
    /// `audio.timestamp_ms`.
    pub timestamp_ms: Option<i64>,
    /// `audio.eos=1` when true; absent otherwise.
    pub eos: bool,
}

impl ChunkHeaders {
    /// Headers that describe PCM in `format` at `sample_rate` with `channels`, starting at
    /// `start_sample`.
    pub fn pcm(format: SampleFormat, sample_rate: u32, channels: u16, start_sample: u64) -> Self {
        Self {
            format: Some(format),
            sample_rate: Some(sample_rate),
            channels: Some(channels),
            start_sample: Some(start_sample),
            ..Self::default()
        }
    }

    /// The same headers with `audio.timestamp_ms` set.
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// The same headers with `audio.eos` set as given.
    pub fn with_eos(mut self, eos: bool) -> Self {
        self.eos = eos;
        self
    }

    /// `(name, value)` of every header that is set, in a fixed order.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::with_capacity(6);
        if let Some(format) = self.format {
            pairs.push((FORMAT, format.as_str().to_owned()));
        }
        if let Some(rate) = self.sample_rate {
            pairs.push((SAMPLE_RATE, rate.to_string()));
        }
        if let Some(channels) = self.channels {
            pairs.push((CHANNELS, channels.to_string()));
        }
        if let Some(start) = self.start_sample {
            pairs.push((START_SAMPLE, start.to_string()));
        }
        if let Some(timestamp) = self.timestamp_ms {
            pairs.push((TIMESTAMP_MS, timestamp.to_string()));
        }
        if self.eos {
            pairs.push((EOS, "1".to_owned()));
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{InputConfig, decode};

    #[test]
    fn encoded_headers_decode_to_the_same_chunk() {
        let headers = ChunkHeaders::pcm(SampleFormat::S32le, 44_100, 2, 4_410)
            .with_timestamp_ms(1_700_000_000_100)
            .with_eos(true);
        let pairs = headers.to_pairs();
        let payload = [0u8; 16];
        let mut samples = Vec::new();
        let meta = decode(
            &InputConfig::default(),
            Some(b"mic-1"),
            Some(&payload),
            pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes()))),
            None,
            &mut samples,
        )
        .unwrap();
        assert_eq!(meta.format, SampleFormat::S32le);
        assert_eq!(meta.sample_rate, 44_100);
        assert_eq!(meta.channels, 2);
        assert_eq!(meta.start_sample, Some(4_410));
        assert_eq!(meta.timestamp_ms, Some(1_700_000_000_100));
        assert!(meta.eos);
        assert_eq!(meta.frames, 2);
    }

    #[test]
    fn capture_time_follows_the_sample_position() {
        assert_eq!(capture_time_ms(1_000, 0, 0, 16_000), 1_000);
        assert_eq!(capture_time_ms(1_000, 0, 1_120, 16_000), 1_070);
        assert_eq!(capture_time_ms(5, 0, 44_100, 44_100), 1_005);
        assert_eq!(capture_time_ms(1_000, 160, 0, 16_000), 990);
        assert_eq!(capture_time_ms(1_000, 1, 0, 16_000), 1_000);
    }

    #[test]
    fn unset_headers_are_not_sent() {
        assert!(ChunkHeaders::default().to_pairs().is_empty());
        let names: Vec<_> = ChunkHeaders::pcm(SampleFormat::S16le, 16_000, 1, 0)
            .to_pairs()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(names, [FORMAT, SAMPLE_RATE, CHANNELS, START_SAMPLE]);
    }
}
