//! Per-stream state of one partition: alignment on `audio.start_sample`, gaps, overlaps,
//! end of stream, idle eviction, the live-stream cap, and the offset watermark.
//!
//! The watermark is what makes restarts lossless: a partition's committed offset never
//! passes the oldest message whose samples a live stream still needs (for its next frame,
//! and for the previous frame's spectrum that `spectral_flux` compares against).

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

use crate::audio::ChunkMeta;
use crate::dsp::{DspConfig, FeatureExtractor, FrameBatch, StreamState, Workspace};
use crate::validation::Problem;

/// `[streams]`: limits on per-stream state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Seconds without a chunk after which a stream's state is dropped.
    pub idle_timeout_secs: u64,
    /// Most live streams per worker; at the cap the least recently seen stream is evicted.
    pub max_streams: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 300,
            max_streams: 100_000,
        }
    }
}

impl StreamsConfig {
    /// Every problem with these settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.idle_timeout_secs == 0 {
            problems.push(Problem::new(
                "streams.idle_timeout_secs",
                0,
                "must be at least 1",
            ));
        }
        if self.max_streams == 0 {
            problems.push(Problem::new("streams.max_streams", 0, "must be at least 1"));
        }
        problems
    }
}

/// Why a chunk could not be applied to its stream (it is dead-lettered).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StreamError {
    /// The chunk lies entirely before what the stream has already consumed.
    #[error(
        "audio.start_sample {start} goes backwards: stream {stream} is already at sample {expected}"
    )]
    Backwards {
        /// Stream id.
        stream: String,
        /// The chunk's start sample.
        start: u64,
        /// The next sample the stream expects.
        expected: u64,
    },
    /// The DSP parameters do not fit this chunk's sample rate.
    #[error("sample rate {sample_rate} Hz does not fit the [dsp] settings: {reason}")]
    Dsp {
        /// The chunk's sample rate.
        sample_rate: u32,
        /// What does not fit.
        reason: String,
    },
}

/// Shares one [`FeatureExtractor`] per sample rate between all streams and threads.
pub struct ExtractorCache {
    config: DspConfig,
    by_rate: Mutex<HashMap<u32, Result<Arc<FeatureExtractor>, String>>>,
}

impl ExtractorCache {
    /// A cache for `config`.
    pub fn new(config: DspConfig) -> Self {
        Self {
            config,
            by_rate: Mutex::default(),
        }
    }

    /// The extractor for `sample_rate`, built on first use.
    pub fn get(&self, sample_rate: u32) -> Result<Arc<FeatureExtractor>, StreamError> {
        let mut map = self.by_rate.lock().expect("extractor cache lock");
        map.entry(sample_rate)
            .or_insert_with(|| match FeatureExtractor::new(&self.config, sample_rate) {
                Ok(extractor) => Ok(Arc::new(extractor)),
                Err(e) => Err(e.to_string()),
            })
            .clone()
            .map_err(|reason| StreamError::Dsp {
                sample_rate,
                reason,
            })
    }

    /// The DSP settings.
    pub fn config(&self) -> &DspConfig {
        &self.config
    }
}

struct StreamEntry {
    extractor: Arc<FeatureExtractor>,
    state: StreamState,
    last_seen: Instant,
    /// Sample where the state's continuity began (stream start, gap or recovery point).
    continuous_from: u64,
    /// (first sample, offset) of recent messages, oldest first; the front one is the oldest
    /// message that still holds samples the stream needs.
    messages: VecDeque<(u64, i64)>,
    /// Frames up to and including this index were stored before a restart: do not emit them.
    stored_through: Option<u64>,
}

impl StreamEntry {
    /// Oldest stream sample the next frames need, including the previous frame for flux.
    fn needed_from(&self) -> u64 {
        let next_frame = self.state.next_frame();
        let hop = self.extractor.hop_length() as u64;
        let previous_frame_start = next_frame.saturating_sub(1) * hop;
        self.state
            .oldest_needed_sample()
            .min(previous_frame_start.max(self.continuous_from))
    }

    fn release_messages(&mut self) {
        let needed = self.needed_from();
        while self.messages.len() >= 2 && self.messages[1].0 <= needed {
            self.messages.pop_front();
        }
    }
}

/// What applying a chunk did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOutcome {
    /// The chunk started after the stream's next sample: state was reset.
    pub gap: bool,
    /// Samples dropped because the stream had already consumed them.
    pub trimmed: usize,
    /// The stream was created by this chunk.
    pub new_stream: bool,
    /// A stream was evicted to respect `max_streams`.
    pub evicted_for_cap: bool,
    /// Frames computed but withheld because they were stored before a restart.
    pub skipped_frames: usize,
}

/// All live streams of one partition.
pub struct PartitionStreams {
    partition: i32,
    streams: HashMap<String, StreamEntry>,
    last_offset: Option<i64>,
    last_sweep: Instant,
}

impl PartitionStreams {
    /// An empty table for `partition`.
    pub fn new(partition: i32) -> Self {
        Self {
            partition,
            streams: HashMap::new(),
            last_offset: None,
            last_sweep: Instant::now(),
        }
    }

    /// Live streams.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// True when no stream is live.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// True when `stream_id` has live state.
    pub fn contains(&self, stream_id: &str) -> bool {
        self.streams.contains_key(stream_id)
    }

    /// Heap bytes held by stream state (approximate).
    pub fn heap_bytes(&self) -> usize {
        self.streams
            .iter()
            .map(|(id, e)| id.len() + e.state.heap_bytes() + e.messages.len() * 16 + 96)
            .sum()
    }

    /// Records that the message at `offset` was handled without touching any stream state
    /// (dead-lettered), so the watermark may pass it.
    pub fn mark_done(&mut self, offset: i64) {
        self.last_offset = Some(self.last_offset.map_or(offset, |o| o.max(offset)));
    }

    /// Applies one decoded chunk from `offset`: frames it completes are appended to `out`
    /// (cleared first). `stored_through` is the last frame already stored for a stream seen
    /// for the first time since this worker took the partition (restart recovery).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        cache: &ExtractorCache,
        limits: &StreamsConfig,
        workspace: &mut WorkspaceSet,
        meta: &ChunkMeta,
        samples: &[f32],
        offset: i64,
        stored_through: Option<u64>,
        out: &mut FrameBatch,
    ) -> Result<ChunkOutcome, StreamError> {
        out.clear();
        let mut outcome = ChunkOutcome::default();
        let extractor = cache.get(meta.sample_rate)?;
        let now = Instant::now();

        if self
            .streams
            .get(&meta.stream_id)
            .is_some_and(|e| e.extractor.sample_rate() != meta.sample_rate)
        {
            info!(stream = %meta.stream_id, sample_rate = meta.sample_rate, "Sample rate changed; stream restarted.");
            self.streams.remove(&meta.stream_id);
        }
        if !self.streams.contains_key(&meta.stream_id) {
            if self.streams.len() >= limits.max_streams {
                self.evict_least_recent(limits.max_streams);
                outcome.evicted_for_cap = true;
            }
            let start = meta.start_sample.unwrap_or(0);
            // A recovered stream may only trust frames whose context lies in replayed data;
            // if nothing stored lies there, the original run restarted here too.
            let hop = extractor.hop_length() as u64;
            let stored_through = stored_through.filter(|last| last * hop >= start);
            self.streams.insert(
                meta.stream_id.clone(),
                StreamEntry {
                    state: extractor.new_stream(start),
                    extractor: extractor.clone(),
                    last_seen: now,
                    continuous_from: start,
                    messages: VecDeque::new(),
                    stored_through,
                },
            );
            outcome.new_stream = true;
        }
        let entry = self
            .streams
            .get_mut(&meta.stream_id)
            .expect("stream inserted above");
        entry.last_seen = now;

        let expected = entry.state.next_sample();
        let start = meta.start_sample.unwrap_or(expected);
        let mut feed = samples;
        if start > expected {
            outcome.gap = true;
            entry.state.reset(start);
            entry.continuous_from = start;
            entry.messages.clear();
        } else if start < expected {
            let overlap = (expected - start) as usize;
            if overlap >= samples.len() && !samples.is_empty() {
                return Err(StreamError::Backwards {
                    stream: meta.stream_id.clone(),
                    start,
                    expected,
                });
            }
            outcome.trimmed = overlap.min(samples.len());
            feed = &samples[outcome.trimmed..];
        }
        entry
            .messages
            .push_back((start + outcome.trimmed as u64, offset));

        let ws = workspace.for_extractor(&entry.extractor);
        entry.extractor.process(ws, &mut entry.state, feed, out);
        if let Some(stored) = entry.stored_through {
            if !out.is_empty() && out.index(0) <= stored {
                outcome.skipped_frames = out.len();
                out.clear();
            }
            if entry.state.next_frame() > stored + 1 {
                entry.stored_through = None;
            }
        }
        entry.release_messages();
        if meta.eos {
            self.streams.remove(&meta.stream_id);
        }
        self.mark_done(offset);
        Ok(outcome)
    }

    /// The offset to commit: the oldest message a live stream still needs, or the one after
    /// the last message handled. `None` before any message was handled.
    pub fn commit_offset(&self) -> Option<i64> {
        let after_last = self.last_offset? + 1;
        let oldest_needed = self
            .streams
            .values()
            .filter_map(|e| e.messages.front().map(|m| m.1))
            .min();
        Some(oldest_needed.map_or(after_last, |o| o.min(after_last)))
    }

    /// Drops streams idle for longer than the timeout (checked at most once a second).
    /// Returns how many were dropped.
    pub fn evict_idle(&mut self, idle_timeout: Duration) -> usize {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) < Duration::from_secs(1) {
            return 0;
        }
        self.last_sweep = now;
        let before = self.streams.len();
        self.streams
            .retain(|_, e| now.duration_since(e.last_seen) < idle_timeout);
        let dropped = before - self.streams.len();
        if dropped > 0 {
            info!(
                partition = self.partition,
                dropped,
                live = self.streams.len(),
                "Idle streams evicted."
            );
        }
        dropped
    }

    fn evict_least_recent(&mut self, cap: usize) {
        if let Some(victim) = self
            .streams
            .iter()
            .min_by_key(|(_, e)| e.last_seen)
            .map(|(id, _)| id.clone())
        {
            warn!(
                partition = self.partition,
                max_streams = cap,
                evicted = %victim,
                "Live stream cap reached; least recently seen stream evicted (raise streams.max_streams)."
            );
            self.streams.remove(&victim);
        }
    }
}

/// One DSP workspace per extractor, owned by a worker thread.
#[derive(Default)]
pub struct WorkspaceSet {
    by_extractor: Vec<(Arc<FeatureExtractor>, Workspace)>,
}

impl WorkspaceSet {
    /// The workspace for `extractor`, made on first use.
    pub fn for_extractor(&mut self, extractor: &Arc<FeatureExtractor>) -> &mut Workspace {
        let position = self
            .by_extractor
            .iter()
            .position(|(e, _)| Arc::ptr_eq(e, extractor));
        let index = position.unwrap_or_else(|| {
            self.by_extractor
                .push((extractor.clone(), extractor.workspace()));
            self.by_extractor.len() - 1
        });
        &mut self.by_extractor[index].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::SampleFormat;

    fn cache() -> ExtractorCache {
        ExtractorCache::new(DspConfig {
            frame_length: 64,
            hop_length: 16,
            features: vec!["rms".into(), "spectral_flux".into()],
            ..DspConfig::default()
        })
    }

    fn meta(stream: &str, start: Option<u64>, frames: usize, eos: bool) -> ChunkMeta {
        ChunkMeta {
            stream_id: stream.into(),
            format: SampleFormat::S16le,
            sample_rate: 16_000,
            channels: 1,
            start_sample: start,
            timestamp_ms: Some(0),
            eos,
            frames,
        }
    }

    fn signal(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    }

    struct Harness {
        cache: ExtractorCache,
        limits: StreamsConfig,
        ws: WorkspaceSet,
        table: PartitionStreams,
        out: FrameBatch,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                cache: cache(),
                limits: StreamsConfig::default(),
                ws: WorkspaceSet::default(),
                table: PartitionStreams::new(0),
                out: FrameBatch::new(),
            }
        }

        /// Applies a chunk described by `m` (frames land in `self.out`).
        fn apply(
            &mut self,
            m: &ChunkMeta,
            samples: &[f32],
            offset: i64,
            stored_through: Option<u64>,
        ) -> Result<ChunkOutcome, StreamError> {
            self.table.apply(
                &self.cache,
                &self.limits,
                &mut self.ws,
                m,
                samples,
                offset,
                stored_through,
                &mut self.out,
            )
        }

        /// Applies a chunk; returns its outcome and the (index, rms bits) of its frames.
        fn feed(
            &mut self,
            stream: &str,
            start: Option<u64>,
            samples: &[f32],
            offset: i64,
        ) -> Result<(ChunkOutcome, Vec<(u64, u32)>), StreamError> {
            let m = meta(stream, start, samples.len(), false);
            let outcome = self.apply(&m, samples, offset, None)?;
            let frames = (0..self.out.len())
                .map(|i| {
                    (
                        self.out.index(i),
                        self.out
                            .scalar(crate::dsp::FeatureName::Rms, i)
                            .unwrap()
                            .to_bits(),
                    )
                })
                .collect();
            Ok((outcome, frames))
        }
    }

    fn whole(samples: &[f32]) -> Vec<(u64, u32)> {
        let mut h = Harness::new();
        h.feed("s", Some(0), samples, 0).unwrap().1
    }

    #[test]
    fn overlapping_chunk_is_trimmed_and_frames_match_the_whole_signal() {
        let x = signal(400);
        let mut h = Harness::new();
        let (_, mut frames) = h.feed("s", Some(0), &x[..200], 0).unwrap();
        let (outcome, more) = h.feed("s", Some(150), &x[150..], 1).unwrap();
        assert_eq!(outcome.trimmed, 50);
        assert!(!outcome.gap);
        frames.extend(more);
        assert_eq!(frames, whole(&x));
    }

    #[test]
    fn chunk_wholly_before_the_stream_position_goes_backwards() {
        let x = signal(200);
        let mut h = Harness::new();
        h.feed("s", Some(0), &x, 0).unwrap();
        let err = h.feed("s", Some(10), &x[10..50], 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "audio.start_sample 10 goes backwards: stream s is already at sample 200"
        );
    }

    #[test]
    fn gap_resets_on_the_same_grid() {
        let x = signal(1000);
        let mut h = Harness::new();
        h.feed("s", Some(0), &x[..100], 0).unwrap();
        let (outcome, frames) = h.feed("s", Some(500), &x[500..], 1).unwrap();
        assert!(outcome.gap);
        // First frame after the gap starts at the first grid point at or after 500.
        assert_eq!(frames[0].0, 500_u64.div_ceil(16));
    }

    #[test]
    fn chunks_without_start_sample_continue_the_stream() {
        let x = signal(300);
        let mut h = Harness::new();
        let (_, mut frames) = h.feed("s", None, &x[..123], 0).unwrap();
        frames.extend(h.feed("s", None, &x[123..], 1).unwrap().1);
        assert_eq!(frames, whole(&x));
    }

    #[test]
    fn eos_frees_the_stream_and_idle_streams_are_evicted() {
        let x = signal(100);
        let mut h = Harness::new();
        let m = meta("s", Some(0), 100, true);
        h.apply(&m, &x, 0, None).unwrap();
        assert!(!h.table.contains("s"));
        h.feed("t", Some(0), &x, 1).unwrap();
        h.table.last_sweep = Instant::now() - Duration::from_secs(2);
        assert_eq!(h.table.evict_idle(Duration::ZERO), 1);
        assert!(h.table.is_empty());
    }

    #[test]
    fn the_live_stream_cap_evicts_the_least_recently_seen() {
        let x = signal(50);
        let mut h = Harness::new();
        h.limits.max_streams = 2;
        h.feed("a", Some(0), &x, 0).unwrap();
        h.feed("b", Some(0), &x, 1).unwrap();
        h.feed("a", Some(50), &x, 2).unwrap();
        let (outcome, _) = h.feed("c", Some(0), &x, 3).unwrap();
        assert!(outcome.evicted_for_cap);
        assert!(h.table.contains("a") && h.table.contains("c") && !h.table.contains("b"));
    }

    #[test]
    fn watermark_holds_the_oldest_message_a_stream_still_needs() {
        let x = signal(1000);
        let mut h = Harness::new();
        // 10-sample chunks at offsets 0..; frame 64, hop 16.
        for (i, chunk) in x.chunks(10).enumerate().take(20) {
            h.feed("s", Some(i as u64 * 10), chunk, i as i64).unwrap();
        }
        // 200 samples seen: frames 0..=8 emitted (frame 8 covers 128..192), next is 9 (144..208).
        // Flux of frame 9 needs frame 8, which starts at sample 128: message 12 (120..130).
        assert_eq!(h.table.commit_offset(), Some(12));
        // A stream that ended releases everything.
        let m = meta("s", Some(200), 10, true);
        h.apply(&m, &x[200..210], 20, None).unwrap();
        assert_eq!(h.table.commit_offset(), Some(21));
    }

    #[test]
    fn recovered_stream_withholds_frames_stored_before_the_restart() {
        let x = signal(600);
        let reference = whole(&x);
        let mut h = Harness::new();
        // Replay starts at sample 128 with the message whose record (frames 8..=16, all that end
        // before sample 328) was stored before the restart: records are stored whole.
        let m = meta("s", Some(128), 200, false);
        h.apply(&m, &x[128..328], 5, Some(16)).unwrap();
        assert!(h.out.is_empty(), "frames 8..=16 were stored already");
        let (_, frames) = h.feed("s", Some(328), &x[328..], 6).unwrap();
        assert_eq!(frames.first().map(|f| f.0), Some(17));
        let tail: Vec<_> = reference.iter().filter(|f| f.0 >= 17).copied().collect();
        // rms depends only on the frame's samples: identical to the uninterrupted run.
        assert_eq!(frames, tail);
    }
}
