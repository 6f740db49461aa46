//! Per-stream state of one partition: alignment on `audio.start_sample`, gaps, overlaps,
//! end of stream, idle eviction, the live-stream cap, and the checkpoints that restore it.
//!
//! Checkpoints are what make restarts and rebalances exact: every stream a batch touched gets
//! one (its whole [`StreamState`], the last message it handled, its sample rate and channels)
//! in the checkpoint topic before the batch's offsets are committed, so a new owner of the
//! partition continues each stream where it was and skips the messages it had already handled.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

use crate::audio::ChunkMeta;
use crate::checkpoint::StreamCheckpoint;
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

impl StreamError {
    /// Short label of the error: the `reason` of `dead_letters_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Backwards { .. } => "start_sample_backwards",
            Self::Dsp { .. } => "unsupported_sample_rate",
        }
    }
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
    channels: u16,
    last_seen: Instant,
    /// Offset of the last message of this stream that was handled (applied or rejected).
    applied_offset: i64,
}

/// A stream that ended (`audio.eos`): kept until idle eviction so that a replay of its chunks
/// is recognised as such and not taken for a new stream.
struct EndedStream {
    applied_offset: i64,
    last_seen: Instant,
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
    /// The message was handled before the stream's checkpoint was taken (a replay after a
    /// restart or rebalance): it was skipped, and nothing is emitted for it again.
    pub replayed: bool,
}

/// All streams of one partition, and which of them changed since their last checkpoint.
pub struct PartitionStreams {
    partition: i32,
    streams: HashMap<String, StreamEntry>,
    ended: HashMap<String, EndedStream>,
    /// Streams whose checkpoint is due (a value, or a tombstone when neither map holds them).
    changed: HashSet<String>,
    last_offset: Option<i64>,
    last_sweep: Instant,
}

impl PartitionStreams {
    /// An empty table for `partition`.
    pub fn new(partition: i32) -> Self {
        Self {
            partition,
            streams: HashMap::new(),
            ended: HashMap::new(),
            changed: HashSet::new(),
            last_offset: None,
            last_sweep: Instant::now(),
        }
    }

    /// A table rebuilt from the checkpoints of `partition` (the latest value per stream). A
    /// checkpoint that does not fit the current `[dsp]` settings or sample rate is dropped with a
    /// warning: that stream starts afresh at its next chunk.
    pub fn restore(
        partition: i32,
        cache: &ExtractorCache,
        checkpoints: impl IntoIterator<Item = (String, StreamCheckpoint)>,
    ) -> Self {
        let mut table = Self::new(partition);
        let now = Instant::now();
        for (id, checkpoint) in checkpoints {
            let Some(snapshot) = &checkpoint.state else {
                table.ended.insert(
                    id,
                    EndedStream {
                        applied_offset: checkpoint.applied_offset,
                        last_seen: now,
                    },
                );
                continue;
            };
            let restored = cache
                .get(checkpoint.sample_rate)
                .map_err(|e| e.to_string())
                .and_then(|extractor| {
                    extractor
                        .restore_stream(snapshot)
                        .map(|state| (extractor, state))
                        .map_err(|e| e.to_string())
                });
            match restored {
                Ok((extractor, state)) => {
                    table.streams.insert(
                        id,
                        StreamEntry {
                            extractor,
                            state,
                            channels: checkpoint.channels,
                            last_seen: now,
                            applied_offset: checkpoint.applied_offset,
                        },
                    );
                }
                Err(reason) => {
                    warn!(partition, stream = %id, %reason, "Checkpoint does not fit; the stream starts afresh.");
                }
            }
        }
        table
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
            .map(|(id, e)| id.len() + e.state.heap_bytes() + 96)
            .chain(self.ended.keys().map(|id| id.len() + 48))
            .sum()
    }

    /// True when the message at `offset` for `stream_id` was handled before the stream's
    /// checkpoint was taken: a replay, to be skipped (it was emitted or dead-lettered then).
    pub fn already_handled(&self, stream_id: &str, offset: i64) -> bool {
        let applied = match (self.streams.get(stream_id), self.ended.get(stream_id)) {
            (Some(live), _) => live.applied_offset,
            (None, Some(ended)) => ended.applied_offset,
            (None, None) => return false,
        };
        offset <= applied
    }

    /// Records that the message at `offset` was rejected (dead-lettered) without touching any
    /// stream's samples. When it names a known stream, that stream's checkpoint records it, so a
    /// replay does not dead-letter it twice.
    pub fn reject(&mut self, stream_id: Option<&str>, offset: i64) {
        self.mark_done(offset);
        let Some(id) = stream_id else { return };
        let applied = match (self.streams.get_mut(id), self.ended.get_mut(id)) {
            (Some(live), _) => &mut live.applied_offset,
            (None, Some(ended)) => &mut ended.applied_offset,
            (None, None) => return,
        };
        *applied = (*applied).max(offset);
        self.changed.insert(id.to_string());
    }

    /// Records that the message at `offset` was skipped as a replay (see
    /// [`Self::already_handled`]), so the committed offset moves past it.
    pub fn skip_replayed(&mut self, offset: i64) {
        self.mark_done(offset);
    }

    fn mark_done(&mut self, offset: i64) {
        self.last_offset = Some(self.last_offset.map_or(offset, |o| o.max(offset)));
    }

    /// Applies one decoded chunk from `offset`: frames it completes are appended to `out`
    /// (cleared first).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        cache: &ExtractorCache,
        limits: &StreamsConfig,
        workspace: &mut WorkspaceSet,
        meta: &ChunkMeta,
        samples: &[f32],
        offset: i64,
        out: &mut FrameBatch,
    ) -> Result<ChunkOutcome, StreamError> {
        out.clear();
        let mut outcome = ChunkOutcome::default();
        if self.already_handled(&meta.stream_id, offset) {
            self.mark_done(offset);
            outcome.replayed = true;
            return Ok(outcome);
        }
        let extractor = cache.get(meta.sample_rate)?;
        let now = Instant::now();
        self.ended.remove(&meta.stream_id);

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
            self.streams.insert(
                meta.stream_id.clone(),
                StreamEntry {
                    state: extractor.new_stream(start),
                    extractor: extractor.clone(),
                    channels: meta.channels,
                    last_seen: now,
                    applied_offset: offset,
                },
            );
            outcome.new_stream = true;
        }
        let entry = self
            .streams
            .get_mut(&meta.stream_id)
            .expect("stream inserted above");
        entry.last_seen = now;
        entry.channels = meta.channels;

        let expected = entry.state.next_sample();
        let start = meta.start_sample.unwrap_or(expected);
        let mut feed = samples;
        if start > expected {
            outcome.gap = true;
            // Frames still waiting for their pitch (pYIN) are decided and emitted first.
            entry.extractor.restart_stream(&mut entry.state, start, out);
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
        entry.applied_offset = offset;

        let ws = workspace.for_extractor(&entry.extractor);
        entry.extractor.process(ws, &mut entry.state, feed, out);
        if meta.eos {
            entry.extractor.finish_stream(&mut entry.state, out);
            self.streams.remove(&meta.stream_id);
            self.ended.insert(
                meta.stream_id.clone(),
                EndedStream {
                    applied_offset: offset,
                    last_seen: now,
                },
            );
        }
        self.changed.insert(meta.stream_id.clone());
        self.mark_done(offset);
        Ok(outcome)
    }

    /// The offset to commit: the one after the last message handled (every stream's state up
    /// to it is in its checkpoint once [`Self::take_checkpoints`]' records are acknowledged).
    /// `None` before any message was handled.
    pub fn commit_offset(&self) -> Option<i64> {
        Some(self.last_offset? + 1)
    }

    /// The checkpoint records due since the last call, keyed by stream id: the stream's
    /// [`StreamCheckpoint`], encoded, or `None` (a tombstone) for a stream that was evicted.
    pub fn take_checkpoints(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut records = Vec::with_capacity(self.changed.len());
        for id in self.changed.drain() {
            let value = if let Some(live) = self.streams.get(&id) {
                Some(StreamCheckpoint {
                    applied_offset: live.applied_offset,
                    sample_rate: live.extractor.sample_rate(),
                    channels: live.channels,
                    state: Some(live.state.snapshot()),
                })
            } else {
                self.ended.get(&id).map(|ended| StreamCheckpoint {
                    applied_offset: ended.applied_offset,
                    sample_rate: 0,
                    channels: 0,
                    state: None,
                })
            };
            records.push((id, value.map(|c| c.encode())));
        }
        records
    }

    /// Drops streams (and ended-stream markers) idle for longer than the timeout (checked at most
    /// once a second); each gets a tombstone at the next [`Self::take_checkpoints`]. Returns how
    /// many live streams were dropped.
    pub fn evict_idle(&mut self, idle_timeout: Duration) -> usize {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) < Duration::from_secs(1) {
            return 0;
        }
        self.last_sweep = now;
        let idle = |last_seen: Instant| now.duration_since(last_seen) >= idle_timeout;
        let dropped = remove_where(&mut self.streams, |e| idle(e.last_seen));
        let forgotten = remove_where(&mut self.ended, |e| idle(e.last_seen));
        self.changed
            .extend(dropped.iter().chain(&forgotten).cloned());
        if !dropped.is_empty() {
            info!(
                partition = self.partition,
                dropped = dropped.len(),
                live = self.streams.len(),
                "Idle streams evicted."
            );
        }
        dropped.len()
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
            self.changed.insert(victim);
        }
    }
}

/// Removes the entries of `map` that `drop` selects; returns their keys.
fn remove_where<T>(map: &mut HashMap<String, T>, mut drop: impl FnMut(&T) -> bool) -> Vec<String> {
    let mut removed = Vec::new();
    map.retain(|id, entry| {
        let keep = !drop(entry);
        if !keep {
            removed.push(id.clone());
        }
        keep
    });
    removed
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
        ) -> Result<ChunkOutcome, StreamError> {
            self.table.apply(
                &self.cache,
                &self.limits,
                &mut self.ws,
                m,
                samples,
                offset,
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
            let outcome = self.apply(&m, samples, offset)?;
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
        h.apply(&m, &x, 0).unwrap();
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

    /// Decodes the table's due checkpoints as a restore would read them (latest per stream).
    fn checkpoints(table: &mut PartitionStreams) -> Vec<(String, Option<StreamCheckpoint>)> {
        table
            .take_checkpoints()
            .into_iter()
            .map(|(id, value)| (id, value.map(|v| StreamCheckpoint::decode(&v).unwrap())))
            .collect()
    }

    #[test]
    fn a_restored_stream_continues_bit_for_bit_and_skips_what_it_handled() {
        let x = signal(1000);
        let reference = whole(&x);
        let mut h = Harness::new();
        let (_, mut frames) = h.feed("s", Some(0), &x[..333], 0).unwrap();
        frames.extend(h.feed("s", Some(333), &x[333..517], 1).unwrap().1);
        let saved = checkpoints(&mut h.table);
        assert_eq!(saved.len(), 1);
        assert_eq!(
            h.table.commit_offset(),
            Some(2),
            "commits right after the last message"
        );
        assert!(
            h.table.take_checkpoints().is_empty(),
            "nothing changed since"
        );

        // A new owner restores from the checkpoint and replays from an older offset.
        let mut restored = Harness::new();
        restored.table = PartitionStreams::restore(
            0,
            &restored.cache,
            saved.into_iter().map(|(id, c)| (id, c.unwrap())),
        );
        let (outcome, replayed) = restored.feed("s", Some(333), &x[333..517], 1).unwrap();
        assert!(
            outcome.replayed && replayed.is_empty(),
            "offset 1 was handled"
        );
        let (outcome, more) = restored.feed("s", Some(517), &x[517..], 2).unwrap();
        assert!(!outcome.replayed && !outcome.gap && outcome.trimmed == 0);
        frames.extend(more);
        assert_eq!(
            frames, reference,
            "flux and every frame as in one uninterrupted run"
        );
    }

    #[test]
    fn a_rejected_message_of_a_known_stream_is_recorded_in_its_checkpoint() {
        let x = signal(200);
        let mut h = Harness::new();
        h.feed("s", Some(0), &x, 0).unwrap();
        h.table.take_checkpoints();
        h.table.reject(Some("s"), 1);
        h.table.reject(Some("unknown"), 2);
        let saved = checkpoints(&mut h.table);
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].1.as_ref().unwrap().applied_offset, 1);
        assert!(h.table.already_handled("s", 1));
        assert!(!h.table.already_handled("unknown", 2));
        assert_eq!(h.table.commit_offset(), Some(3));
    }

    #[test]
    fn an_ended_stream_leaves_a_marker_then_a_tombstone() {
        let x = signal(100);
        let mut h = Harness::new();
        h.apply(&meta("s", Some(0), 100, true), &x, 4).unwrap();
        let saved = checkpoints(&mut h.table);
        assert_eq!(saved.len(), 1);
        let marker = saved[0]
            .1
            .as_ref()
            .expect("an ended marker, not a tombstone");
        assert!(marker.state.is_none());
        assert_eq!(marker.applied_offset, 4);
        // A replay of the last chunk is recognised; a later chunk starts a new stream.
        assert!(h.table.already_handled("s", 4));
        let (outcome, _) = h.feed("s", Some(0), &x, 5).unwrap();
        assert!(outcome.new_stream);
        h.table.take_checkpoints();
        h.table.last_sweep = Instant::now() - Duration::from_secs(2);
        assert_eq!(h.table.evict_idle(Duration::ZERO), 1);
        assert_eq!(checkpoints(&mut h.table), vec![("s".to_string(), None)]);
    }

    #[test]
    fn a_checkpoint_for_other_dsp_settings_is_dropped() {
        let x = signal(300);
        let mut h = Harness::new();
        h.feed("s", Some(0), &x, 0).unwrap();
        let saved = checkpoints(&mut h.table);
        let other = ExtractorCache::new(DspConfig {
            frame_length: 128,
            hop_length: 32,
            features: vec!["rms".into()],
            ..DspConfig::default()
        });
        let table =
            PartitionStreams::restore(0, &other, saved.into_iter().map(|(i, c)| (i, c.unwrap())));
        assert!(table.is_empty());
    }
}
