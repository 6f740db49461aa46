//! Columnar, reusable storage of computed frames, and its serde views.

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::config::FeatureName;

/// Scalar features in storage order; `f0` is stored as 0 when unvoiced, next to `voiced`.
const SCALARS: [FeatureName; 10] = [
    FeatureName::Rms,
    FeatureName::Zcr,
    FeatureName::SpectralCentroid,
    FeatureName::SpectralBandwidth,
    FeatureName::SpectralRolloff,
    FeatureName::SpectralFlatness,
    FeatureName::SpectralFlux,
    FeatureName::DominantFrequency,
    FeatureName::F0,
    FeatureName::LoudnessDbfs,
];

/// Vector features in storage order.
const VECTORS: [FeatureName; 4] = [
    FeatureName::Mel,
    FeatureName::Mfcc,
    FeatureName::Chroma,
    FeatureName::BandEnergy,
];

/// Storage slot of a scalar feature.
pub(crate) const fn scalar_slot(name: FeatureName) -> Option<usize> {
    Some(match name {
        FeatureName::Rms => 0,
        FeatureName::Zcr => 1,
        FeatureName::SpectralCentroid => 2,
        FeatureName::SpectralBandwidth => 3,
        FeatureName::SpectralRolloff => 4,
        FeatureName::SpectralFlatness => 5,
        FeatureName::SpectralFlux => 6,
        FeatureName::DominantFrequency => 7,
        FeatureName::F0 => 8,
        FeatureName::LoudnessDbfs => 9,
        _ => return None,
    })
}

/// Storage slot of a vector feature.
pub(crate) const fn vector_slot(name: FeatureName) -> Option<usize> {
    Some(match name {
        FeatureName::Mel => 0,
        FeatureName::Mfcc => 1,
        FeatureName::Chroma => 2,
        FeatureName::BandEnergy => 3,
        _ => return None,
    })
}

/// Which features a batch holds and how long each vector feature is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BatchLayout {
    /// Selected features in [`FeatureName::ALL`] order.
    pub(crate) selected: Vec<FeatureName>,
    /// Bit `1 << feature as u32` is set for every selected feature.
    pub(crate) mask: u32,
    /// Length of each vector feature, by [`vector_slot`] (0 when not selected).
    pub(crate) vector_lens: [usize; VECTORS.len()],
}

impl BatchLayout {
    pub(crate) fn contains(&self, name: FeatureName) -> bool {
        self.mask & (1 << name as u32) != 0
    }
}

/// Computed frames in columns, reused between calls: [`FrameBatch::clear`] keeps the capacity.
/// Only the selected features are stored. All values are finite.
#[derive(Debug, Clone, Default)]
pub struct FrameBatch {
    layout: BatchLayout,
    indexes: Vec<u64>,
    start_samples: Vec<u64>,
    scalars: [Vec<f32>; SCALARS.len()],
    voiced: Vec<bool>,
    vectors: [Vec<f32>; VECTORS.len()],
}

/// Converts a computed value to the stored f32, never letting a non-finite value out.
fn finite_f32(value: f64) -> f32 {
    let v = value as f32;
    debug_assert!(v.is_finite(), "non-finite feature value {value}");
    if v.is_finite() { v } else { 0.0 }
}

impl FrameBatch {
    /// An empty batch; its layout is set by the first extractor that appends to it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes every frame, keeping the allocated capacity.
    pub fn clear(&mut self) {
        self.indexes.clear();
        self.start_samples.clear();
        self.scalars.iter_mut().for_each(Vec::clear);
        self.voiced.clear();
        self.vectors.iter_mut().for_each(Vec::clear);
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.indexes.len()
    }

    /// True when the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.indexes.is_empty()
    }

    /// The features stored for each frame, in output order.
    pub fn selected(&self) -> &[FeatureName] {
        &self.layout.selected
    }

    /// Frame index (frame `k` starts at sample `k * hop_length`) of the `i`-th frame.
    pub fn index(&self, i: usize) -> u64 {
        self.indexes[i]
    }

    /// Absolute index of the first sample of the `i`-th frame.
    pub fn start_sample(&self, i: usize) -> u64 {
        self.start_samples[i]
    }

    /// A serialisable view of the `i`-th frame.
    pub fn frame(&self, i: usize) -> FrameView<'_> {
        assert!(
            i < self.len(),
            "frame {i} out of range for a batch of {}",
            self.len()
        );
        FrameView { batch: self, i }
    }

    /// Iterates over the frames.
    pub fn frames(&self) -> impl ExactSizeIterator<Item = FrameView<'_>> + '_ {
        (0..self.len()).map(move |i| FrameView { batch: self, i })
    }

    /// The value of a scalar feature on frame `i`; `None` when not selected, not a scalar, or
    /// (for `f0`) the frame is unvoiced.
    pub fn scalar(&self, name: FeatureName, i: usize) -> Option<f32> {
        if !self.layout.contains(name) {
            return None;
        }
        if name == FeatureName::F0 && !self.voiced[i] {
            return None;
        }
        scalar_slot(name).map(|slot| self.scalars[slot][i])
    }

    /// Whether frame `i` is voiced; `None` when `f0` is not selected.
    pub fn voiced(&self, i: usize) -> Option<bool> {
        self.layout
            .contains(FeatureName::F0)
            .then(|| self.voiced[i])
    }

    /// The values of a vector feature on frame `i`; `None` when not selected or not a vector.
    pub fn vector(&self, name: FeatureName, i: usize) -> Option<&[f32]> {
        if !self.layout.contains(name) {
            return None;
        }
        let slot = vector_slot(name)?;
        let len = self.layout.vector_lens[slot];
        Some(&self.vectors[slot][i * len..(i + 1) * len])
    }

    /// Every frame's values of a scalar feature, in frame order (`f0` holds a value for
    /// unvoiced frames too; see [`FrameBatch::voiced_column`]). `None` when not selected or not
    /// a scalar.
    pub fn scalar_column(&self, name: FeatureName) -> Option<&[f32]> {
        if !self.layout.contains(name) {
            return None;
        }
        scalar_slot(name).map(|slot| &self.scalars[slot][..])
    }

    /// Every frame's voicing decision, in frame order (all false when `f0` is not selected).
    pub fn voiced_column(&self) -> &[bool] {
        &self.voiced
    }

    /// Every frame's values of a vector feature, frame after frame (row-major
    /// `len() × width`), with the width. `None` when not selected or not a vector.
    pub fn vector_column(&self, name: FeatureName) -> Option<(&[f32], usize)> {
        if !self.layout.contains(name) {
            return None;
        }
        let slot = vector_slot(name)?;
        Some((&self.vectors[slot][..], self.layout.vector_lens[slot]))
    }

    /// Mean, standard deviation, minimum and maximum of each selected scalar feature over this
    /// batch (`f0` over voiced frames only).
    pub fn summaries(&self) -> Summaries<'_> {
        Summaries { batch: self }
    }

    /// Makes the batch hold frames of `layout`. An empty batch takes any layout.
    ///
    /// # Panics
    /// When the batch still holds frames of another layout (clear it first).
    pub(crate) fn set_layout(&mut self, layout: &BatchLayout) {
        if self.layout == *layout {
            return;
        }
        assert!(
            self.is_empty(),
            "FrameBatch holds frames with another feature layout; clear() it before reusing it with another extractor"
        );
        self.layout.selected.clear();
        self.layout.selected.extend_from_slice(&layout.selected);
        self.layout.mask = layout.mask;
        self.layout.vector_lens = layout.vector_lens;
    }

    /// Starts a new frame; the caller then pushes every selected feature once.
    pub(crate) fn push_frame(&mut self, index: u64, start_sample: u64) {
        self.indexes.push(index);
        self.start_samples.push(start_sample);
    }

    /// Appends a scalar feature value of the frame being pushed.
    pub(crate) fn push_scalar(&mut self, name: FeatureName, value: f64) {
        if let Some(slot) = scalar_slot(name) {
            self.scalars[slot].push(finite_f32(value));
        }
    }

    /// Appends the f0 (`None` when unvoiced) of the frame being pushed.
    pub(crate) fn push_f0(&mut self, f0: Option<f64>) {
        let slot = scalar_slot(FeatureName::F0).unwrap_or_default();
        self.scalars[slot].push(f0.map_or(0.0, finite_f32));
        self.voiced.push(f0.is_some());
    }

    /// Appends a vector feature of the frame being pushed.
    pub(crate) fn push_vector(&mut self, name: FeatureName, values: &[f64]) {
        if let Some(slot) = vector_slot(name) {
            debug_assert_eq!(values.len(), self.layout.vector_lens[slot]);
            self.vectors[slot].extend(values.iter().map(|&v| finite_f32(v)));
        }
    }
}

/// Frame indexes are u64; BSON has no unsigned 64-bit integer, so they are written as i64.
fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// One frame of a [`FrameBatch`]. Serialises as a flat map: `index`, `start_sample`, then every
/// selected feature by name (`f0` is null when unvoiced and is followed by `voiced`).
#[derive(Debug, Clone, Copy)]
pub struct FrameView<'a> {
    batch: &'a FrameBatch,
    i: usize,
}

impl FrameView<'_> {
    /// Frame index.
    pub fn index(&self) -> u64 {
        self.batch.index(self.i)
    }

    /// Absolute index of the frame's first sample.
    pub fn start_sample(&self) -> u64 {
        self.batch.start_sample(self.i)
    }

    /// See [`FrameBatch::scalar`].
    pub fn scalar(&self, name: FeatureName) -> Option<f32> {
        self.batch.scalar(name, self.i)
    }

    /// See [`FrameBatch::vector`].
    pub fn vector(&self, name: FeatureName) -> Option<&[f32]> {
        self.batch.vector(name, self.i)
    }
}

impl Serialize for FrameView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let batch = self.batch;
        let i = self.i;
        let selected = &batch.layout.selected;
        let with_f0 = usize::from(batch.layout.contains(FeatureName::F0));
        let mut map = serializer.serialize_map(Some(2 + selected.len() + with_f0))?;
        map.serialize_entry("index", &as_i64(batch.indexes[i]))?;
        map.serialize_entry("start_sample", &as_i64(batch.start_samples[i]))?;
        for &name in selected {
            if name == FeatureName::F0 {
                map.serialize_entry("f0", &batch.scalar(name, i))?;
                map.serialize_entry("voiced", &batch.voiced[i])?;
            } else if let Some(slot) = scalar_slot(name) {
                map.serialize_entry(name.as_str(), &batch.scalars[slot][i])?;
            } else if let Some(values) = batch.vector(name, i) {
                map.serialize_entry(name.as_str(), values)?;
            }
        }
        map.end()
    }
}

/// Statistics of one scalar feature over a batch.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Arithmetic mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of frames that contributed (voiced frames for `f0`).
    #[serde(skip)]
    pub count: usize,
}

/// Per-feature [`Summary`] of a batch, like openSMILE functionals. Serialises as a map from
/// scalar feature name to `{"mean", "std", "min", "max"}`, or null when no frame contributed.
#[derive(Debug, Clone, Copy)]
pub struct Summaries<'a> {
    batch: &'a FrameBatch,
}

impl Summaries<'_> {
    /// The summary of scalar feature `name`; `None` when not selected, not a scalar, or no frame
    /// contributed (an empty batch, or no voiced frame for `f0`).
    pub fn get(&self, name: FeatureName) -> Option<Summary> {
        let batch = self.batch;
        if !batch.layout.contains(name) {
            return None;
        }
        let column = &batch.scalars[scalar_slot(name)?];
        let values = column
            .iter()
            .zip(0..)
            .filter(|&(_, i)| name != FeatureName::F0 || batch.voiced[i])
            .map(|(&v, _)| f64::from(v));
        let (mut count, mut sum, mut min, mut max) =
            (0usize, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        for v in values.clone() {
            count += 1;
            sum += v;
            min = min.min(v);
            max = max.max(v);
        }
        if count == 0 {
            return None;
        }
        let mean = sum / count as f64;
        let variance = values.map(|v| (v - mean) * (v - mean)).sum::<f64>() / count as f64;
        Some(Summary {
            mean,
            std: variance.sqrt(),
            min,
            max,
            count,
        })
    }
}

impl Serialize for Summaries<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let scalars: Vec<FeatureName> = self
            .batch
            .layout
            .selected
            .iter()
            .copied()
            .filter(|f| f.is_scalar())
            .collect();
        let mut map = serializer.serialize_map(Some(scalars.len()))?;
        for name in scalars {
            map.serialize_entry(name.as_str(), &self.get(name))?;
        }
        map.end()
    }
}
