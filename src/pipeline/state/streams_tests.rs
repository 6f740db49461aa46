//! Tests of a partition's stream table: alignment, gaps, overlaps, eviction, checkpoints.

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
