//! The `[dsp]` framing arithmetic: how many frames each chunk of a stream completes, which
//! chunks produce a record, and what a load of fixed-size chunks must produce.

use specflow::dsp::{DspConfig, FeatureName, PitchMethod};

/// How the worker cuts a stream into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Samples per frame (`dsp.frame_length`).
    pub frame_length: u64,
    /// Samples between frame starts (`dsp.hop_length`).
    pub hop_length: u64,
    /// Frames a complete frame waits before it is emitted: `dsp.pitch_lag_frames` with pYIN
    /// pitch selected, else 0. The chunk with `audio.eos` emits the rest.
    pub lag: u64,
}

impl Framing {
    /// The framing of a `[dsp]` section.
    pub fn of(dsp: &DspConfig) -> Self {
        let pyin = dsp.pitch_method == PitchMethod::Pyin
            && dsp.selected_features().contains(&FeatureName::F0);
        Self {
            frame_length: dsp.frame_length as u64,
            hop_length: dsp.hop_length as u64,
            lag: if pyin { dsp.pitch_lag_frames as u64 } else { 0 },
        }
    }

    /// Frames complete once the first `samples` samples of a stream arrived.
    pub fn complete(&self, samples: u64) -> u64 {
        if samples >= self.frame_length {
            (samples - self.frame_length) / self.hop_length + 1
        } else {
            0
        }
    }

    /// A stream of `samples` samples cut into chunks of `chunk` samples (the last one shorter,
    /// with `audio.eos`): for each chunk, the frames emitted once it is processed (cumulative).
    pub fn frames_per_chunk(&self, samples: u64, chunk: u64) -> Vec<u64> {
        let chunk = chunk.max(1);
        let mut done = Vec::with_capacity(samples.div_ceil(chunk) as usize);
        let mut start = 0;
        while start < samples {
            let end = (start + chunk).min(samples);
            let complete = self.complete(end);
            done.push(if end == samples {
                complete
            } else {
                complete.saturating_sub(self.lag)
            });
            start = end;
        }
        done
    }

    /// (chunk index, first frame) of every record of such a stream: one per chunk that emits
    /// at least one frame.
    pub fn record_chunks(&self, samples: u64, chunk: u64) -> Vec<(u64, u64)> {
        let mut previous = 0;
        let mut records = Vec::new();
        for (index, &frames) in self.frames_per_chunk(samples, chunk).iter().enumerate() {
            if frames > previous {
                records.push((index as u64, previous));
            }
            previous = frames;
        }
        records
    }

    /// What `streams` streams of `seconds` s16 audio at `rate` Hz with `channels`, in chunks
    /// of `chunk_ms`, must produce (the chunking of `specflow produce`).
    pub fn expect(
        &self,
        streams: usize,
        seconds: f64,
        chunk_ms: u64,
        rate: u32,
        channels: u16,
    ) -> Expect {
        let samples = (seconds * f64::from(rate)).round() as u64;
        let chunk = (u64::from(rate) * chunk_ms / 1000).max(1);
        let done = self.frames_per_chunk(samples, chunk);
        let records = self.record_chunks(samples, chunk).len() as u64;
        let s = streams as u64;
        Expect {
            messages: done.len() as u64 * s,
            bytes: samples * 2 * u64::from(channels) * s,
            records: records * s,
            frames: done.last().copied().unwrap_or(0) * s,
            audio_seconds: samples as f64 / f64::from(rate) * streams as f64,
        }
    }
}

/// What a load must produce.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Expect {
    /// Input messages.
    pub messages: u64,
    /// Input payload bytes.
    pub bytes: u64,
    /// Feature records (messages that complete at least one frame).
    pub records: u64,
    /// Frames over all streams.
    pub frames: u64,
    /// Seconds of audio over all streams.
    pub audio_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Framing = Framing {
        frame_length: 400,
        hop_length: 160,
        lag: 0,
    };

    #[test]
    fn frames_complete_on_the_hop_grid() {
        assert_eq!(PLAIN.complete(399), 0);
        assert_eq!(PLAIN.complete(400), 1);
        assert_eq!(PLAIN.complete(559), 1);
        assert_eq!(PLAIN.complete(560), 2);
    }

    #[test]
    fn records_are_the_chunks_that_emit_frames() {
        // 1000 samples in chunks of 300: ends 300, 600, 900, 1000.
        assert_eq!(PLAIN.frames_per_chunk(1000, 300), [0, 2, 4, 4]);
        assert_eq!(PLAIN.record_chunks(1000, 300), [(1, 0), (2, 2)]);
    }

    #[test]
    fn lag_holds_frames_back_until_end_of_stream() {
        let lagged = Framing { lag: 2, ..PLAIN };
        assert_eq!(lagged.frames_per_chunk(1000, 300), [0, 0, 2, 4]);
        assert_eq!(lagged.record_chunks(1000, 300), [(2, 0), (3, 2)]);
    }

    #[test]
    fn expect_multiplies_by_streams() {
        let e = PLAIN.expect(3, 1.0, 100, 16_000, 1);
        assert_eq!(e.messages, 30);
        assert_eq!(e.bytes, 96_000);
        assert_eq!(e.records, 30);
        assert_eq!(e.frames, 3 * ((16_000 - 400) / 160 + 1));
        assert!((e.audio_seconds - 3.0).abs() < 1e-9);
    }
}
