//! Per-stream carry state between calls to `FeatureExtractor::process`, and its plain-data
//! [`StreamSnapshot`] (what a checkpoint stores to restore a stream exactly).

use serde::{Deserialize, Serialize};

use super::batch::{BatchColumns, FrameBatch};
use super::pyin::PyinDecoder;

/// What one stream carries from one chunk of samples to the next: the samples not yet consumed
/// by a frame (at most `frame_length - 1`), the previous magnitude spectrum (for flux) and the
/// position on the global frame grid.
#[derive(Debug, Clone)]
pub struct StreamState {
    pub(crate) frame_length: usize,
    pub(crate) hop_length: usize,
    /// Absolute index of the next expected sample.
    pub(crate) next_sample: u64,
    /// Index of the next frame to emit; it starts at `next_frame * hop_length`.
    pub(crate) next_frame: u64,
    /// Buffered samples `[next_sample - tail.len(), next_sample)`.
    pub(crate) tail: Vec<f32>,
    /// Magnitude spectrum of the last emitted frame, when flux is computed and one exists.
    pub(crate) previous_magnitude: Vec<f64>,
    /// True when `previous_magnitude` holds the spectrum of the frame just before `next_frame`.
    pub(crate) has_previous: bool,
    /// With pYIN: the decoder, and the frames computed but waiting for their pitch decision.
    pub(crate) pitch: Option<PitchTrack>,
}

/// A stream's pYIN decoder and the frames (all features computed) that wait for its decision.
#[derive(Debug, Clone)]
pub(crate) struct PitchTrack {
    pub(crate) decoder: PyinDecoder,
    pub(crate) pending: FrameBatch,
}

impl StreamState {
    /// A stream for frames of `frame_length` every `hop_length` whose next sample is `start_sample`.
    pub(crate) fn new(
        frame_length: usize,
        hop_length: usize,
        n_bins_for_flux: usize,
        start_sample: u64,
    ) -> Self {
        let mut state = Self {
            frame_length,
            hop_length,
            next_sample: 0,
            next_frame: 0,
            tail: Vec::with_capacity(frame_length),
            previous_magnitude: Vec::with_capacity(n_bins_for_flux),
            has_previous: false,
            pitch: None,
        };
        state.reset(start_sample);
        state
    }

    /// Absolute index of the next expected sample.
    pub fn next_sample(&self) -> u64 {
        self.next_sample
    }

    /// Index of the next frame to be emitted (it covers `[k * hop, k * hop + frame_length)`).
    pub fn next_frame(&self) -> u64 {
        self.next_frame
    }

    /// Absolute index of the oldest sample still buffered (`next_sample` when none is).
    /// Every sample before it has been fully used; a consumer may commit offsets up to it.
    pub fn oldest_needed_sample(&self) -> u64 {
        self.next_sample - self.tail.len() as u64
    }

    /// Continues at `start_sample` after a gap (or a seek): drops the buffered samples and the
    /// previous spectrum (the next frame's flux is 0) and stays on the same frame grid, so the
    /// next frame is `ceil(start_sample / hop_length)`.
    pub fn reset(&mut self, start_sample: u64) {
        self.tail.clear();
        self.previous_magnitude.clear();
        self.has_previous = false;
        self.next_sample = start_sample;
        self.next_frame = start_sample.div_ceil(self.hop_length as u64);
    }

    /// Heap memory held by this state, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.tail.capacity() * std::mem::size_of::<f32>()
            + self.previous_magnitude.capacity() * std::mem::size_of::<f64>()
            + self
                .pitch
                .as_ref()
                .map_or(0, |p| p.pending.heap_bytes() + p.decoder.heap_bytes())
    }

    /// Frames computed but waiting for their pitch decision (pYIN), emitted later.
    pub fn pending_frames(&self) -> usize {
        self.pitch.as_ref().map_or(0, |p| p.pending.len())
    }

    /// Absolute index of the first sample of the next frame.
    pub(crate) fn next_frame_start(&self) -> u64 {
        self.next_frame * self.hop_length as u64
    }

    /// Everything this state holds, as plain data. Restoring it with
    /// `FeatureExtractor::restore_stream` continues the stream bit for bit.
    pub fn snapshot(&self) -> StreamSnapshot {
        StreamSnapshot {
            frame_length: self.frame_length as u32,
            hop_length: self.hop_length as u32,
            next_sample: self.next_sample,
            next_frame: self.next_frame,
            tail: self.tail.clone(),
            previous_magnitude: self.has_previous.then(|| self.previous_magnitude.clone()),
            pitch_decoder: self.pitch.as_ref().map(|p| p.decoder.to_bytes()),
            pending_frames: self.pitch.as_ref().map(|p| p.pending.to_columns()),
        }
    }
}

/// A [`StreamState`] as plain data (serde), for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamSnapshot {
    /// Samples per frame of the extractor that made the state.
    pub frame_length: u32,
    /// Samples between frame starts.
    pub hop_length: u32,
    /// Absolute index of the next expected sample.
    pub next_sample: u64,
    /// Index of the next frame to emit.
    pub next_frame: u64,
    /// Buffered samples `[next_sample - tail.len(), next_sample)`.
    pub tail: Vec<f32>,
    /// Magnitude spectrum of the frame before `next_frame`, when flux is computed and it exists.
    pub previous_magnitude: Option<Vec<f64>>,
    /// With pYIN: the decoder's state (its own versioned encoding).
    pub pitch_decoder: Option<Vec<u8>>,
    /// With pYIN: the frames waiting for their pitch decision.
    pub pending_frames: Option<BatchColumns>,
}
