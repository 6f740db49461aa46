//! Per-stream state of one partition: alignment on `audio.start_sample`, gaps, overlaps,
//! end of stream, idle eviction, the live-stream cap, and the checkpoints that restore it.
//!
//! Checkpoints are what make restarts and rebalances exact: every stream a batch touched gets
//! one (its whole [`StreamState`], the last message it handled, its sample rate and channels)
//! in the checkpoint topic before the batch's offsets are committed, so a new owner of the
//! partition continues each stream where it was and skips the messages it had already handled.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

use super::checkpoint::StreamCheckpoint;
use super::config::StreamsConfig;
use crate::audio::ChunkMeta;
use crate::dsp::{DspConfig, FeatureExtractor, FrameBatch, StreamState, Workspace};

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
#[path = "streams_tests.rs"]
mod tests;
