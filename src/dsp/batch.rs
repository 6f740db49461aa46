//! Columnar, reusable storage of computed frames, and its serde views.

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::feature_table::{FeatureName, N_FEATURES, N_SCALARS, N_VECTORS};

/// Which features a batch holds and how long each vector feature is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BatchLayout {
    /// Selected features in [`FeatureName::ALL`] order.
    pub(crate) selected: Vec<FeatureName>,
    /// Bit `1 << feature as u32` is set for every selected feature.
    pub(crate) mask: u32,
    /// Values per frame of each feature, by `feature as usize` (0 when not selected).
    pub(crate) widths: [usize; N_FEATURES],
    /// `f0` comes from pYIN, which adds `voiced_prob` to every frame.
    pub(crate) voiced_prob: bool,
}

impl BatchLayout {
    pub(crate) fn contains(&self, name: FeatureName) -> bool {
        self.mask & (1 << name as u32) != 0
    }

    /// Values per frame of `name`; 0 when not selected.
    pub(crate) fn width(&self, name: FeatureName) -> usize {
        self.widths[name as usize]
    }
}

/// Computed frames in columns, reused between calls: [`FrameBatch::clear`] keeps the capacity.
/// Only the selected features are stored. All values are finite.
#[derive(Debug, Clone, Default)]
pub struct FrameBatch {
    layout: BatchLayout,
    indexes: Vec<u64>,
    start_samples: Vec<u64>,
    scalars: [Vec<f32>; N_SCALARS],
    voiced: Vec<bool>,
    /// pYIN's voicing probability per frame (only with a pYIN layout).
    voiced_prob: Vec<f32>,
    vectors: [Vec<f32>; N_VECTORS],
}

/// A [`FrameBatch`]'s frames as plain columns (serde), for checkpoints of frames that wait for
/// their pitch decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchColumns {
    /// Frame indexes.
    pub indexes: Vec<u64>,
    /// First sample of each frame.
    pub start_samples: Vec<u64>,
    /// Scalar columns in storage order (empty when not selected).
    pub scalars: Vec<Vec<f32>>,
    /// Voicing decisions.
    pub voiced: Vec<bool>,
    /// Voicing probabilities (pYIN).
    pub voiced_prob: Vec<f32>,
    /// Vector columns in storage order, row-major.
    pub vectors: Vec<Vec<f32>>,
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
        self.voiced_prob.clear();
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

    /// Numbers stored per frame, every selected feature's values together.
    pub fn values_per_frame(&self) -> usize {
        self.layout.widths.iter().sum::<usize>() + usize::from(self.layout.voiced_prob)
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
        FrameView {
            batch: self,
            i,
            timestamp_ms: None,
        }
    }

    /// Iterates over the frames.
    pub fn frames(&self) -> impl ExactSizeIterator<Item = FrameView<'_>> + '_ {
        (0..self.len()).map(move |i| self.frame(i))
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
        name.scalar_slot().map(|slot| self.scalars[slot][i])
    }

    /// pYIN's probability that frame `i` is voiced; `None` unless `f0` comes from pYIN.
    pub fn voiced_prob(&self, i: usize) -> Option<f32> {
        (self.layout.voiced_prob && self.layout.contains(FeatureName::F0))
            .then(|| self.voiced_prob[i])
    }

    /// Every frame's pYIN voicing probability, in frame order (empty unless `f0` comes from
    /// pYIN).
    pub fn voiced_prob_column(&self) -> &[f32] {
        &self.voiced_prob
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
        let slot = name.vector_slot()?;
        let len = self.layout.width(name);
        Some(&self.vectors[slot][i * len..(i + 1) * len])
    }

    /// Every frame's values of a scalar feature, in frame order (`f0` holds a value for
    /// unvoiced frames too; see [`FrameBatch::voiced_column`]). `None` when not selected or not
    /// a scalar.
    pub fn scalar_column(&self, name: FeatureName) -> Option<&[f32]> {
        if !self.layout.contains(name) {
            return None;
        }
        name.scalar_slot().map(|slot| &self.scalars[slot][..])
    }

    /// Every frame's voicing decision, in frame order (empty when `f0` is not selected).
    pub fn voiced_column(&self) -> &[bool] {
        &self.voiced
    }

    /// Every frame's values of a vector feature, frame after frame (row-major
    /// `len() × width`), with the width. `None` when not selected or not a vector.
    pub fn vector_column(&self, name: FeatureName) -> Option<(&[f32], usize)> {
        if !self.layout.contains(name) {
            return None;
        }
        let slot = name.vector_slot()?;
        Some((&self.vectors[slot][..], self.layout.width(name)))
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
        self.layout.widths = layout.widths;
        self.layout.voiced_prob = layout.voiced_prob;
    }

    /// Starts a new frame; the caller then pushes every selected feature once.
    pub(crate) fn push_frame(&mut self, index: u64, start_sample: u64) {
        self.indexes.push(index);
        self.start_samples.push(start_sample);
    }

    /// Appends a scalar feature value of the frame being pushed.
    pub(crate) fn push_scalar(&mut self, name: FeatureName, value: f64) {
        if let Some(slot) = name.scalar_slot() {
            self.scalars[slot].push(finite_f32(value));
        }
    }

    /// Appends the f0 (`None` when unvoiced) of the frame being pushed.
    pub(crate) fn push_f0(&mut self, f0: Option<f64>) {
        let slot = FeatureName::F0.scalar_slot().unwrap_or_default();
        self.scalars[slot].push(f0.map_or(0.0, finite_f32));
        self.voiced.push(f0.is_some());
    }

    /// Appends a pitch still to be decided (pYIN): unvoiced, probability 0, until
    /// [`Self::set_pitch`].
    pub(crate) fn push_pending_pitch(&mut self) {
        self.push_f0(None);
        self.voiced_prob.push(0.0);
    }

    /// Sets the pitch decision of frame `i`.
    pub(crate) fn set_pitch(&mut self, i: usize, f0: Option<f64>, voiced_prob: f64) {
        let slot = FeatureName::F0.scalar_slot().unwrap_or_default();
        if let (Some(value), Some(voiced), Some(prob)) = (
            self.scalars[slot].get_mut(i),
            self.voiced.get_mut(i),
            self.voiced_prob.get_mut(i),
        ) {
            *value = f0.map_or(0.0, finite_f32);
            *voiced = f0.is_some();
            *prob = finite_f32(voiced_prob);
        }
    }

    /// Moves the `count` oldest frames to the end of `out` (which takes this batch's layout),
    /// shifting the frames left behind once.
    ///
    /// # Panics
    /// When the batch holds fewer than `count` frames.
    pub(crate) fn move_front_to(&mut self, out: &mut FrameBatch, count: usize) {
        assert!(
            count <= self.len(),
            "{count} frames to move, {} held",
            self.len()
        );
        out.set_layout(&self.layout);
        out.indexes.extend(self.indexes.drain(..count));
        out.start_samples.extend(self.start_samples.drain(..count));
        for (from, to) in self.scalars.iter_mut().zip(out.scalars.iter_mut()) {
            if !from.is_empty() {
                to.extend(from.drain(..count));
            }
        }
        if !self.voiced.is_empty() {
            out.voiced.extend(self.voiced.drain(..count));
        }
        if !self.voiced_prob.is_empty() {
            out.voiced_prob.extend(self.voiced_prob.drain(..count));
        }
        for &name in &self.layout.selected {
            let (Some(slot), width) = (name.vector_slot(), self.layout.width(name)) else {
                continue;
            };
            let (from, to) = (&mut self.vectors[slot], &mut out.vectors[slot]);
            if width > 0 && from.len() >= count * width {
                to.extend(from.drain(..count * width));
            }
        }
    }

    /// The frames as plain columns.
    pub fn to_columns(&self) -> BatchColumns {
        BatchColumns {
            indexes: self.indexes.clone(),
            start_samples: self.start_samples.clone(),
            scalars: self.scalars.to_vec(),
            voiced: self.voiced.clone(),
            voiced_prob: self.voiced_prob.clone(),
            vectors: self.vectors.to_vec(),
        }
    }

    /// Replaces the frames with `columns`, taken from a batch of `layout`. `None` when the
    /// columns do not fit the layout.
    pub(crate) fn set_columns(
        &mut self,
        layout: &BatchLayout,
        columns: &BatchColumns,
    ) -> Option<()> {
        let n = columns.indexes.len();
        let column_fits = |name: FeatureName, column: Option<&Vec<f32>>| {
            column.is_some_and(|c| c.len() == n * layout.width(name))
        };
        let fits = columns.start_samples.len() == n
            && columns.scalars.len() == N_SCALARS
            && columns.vectors.len() == N_VECTORS
            && FeatureName::ALL.into_iter().all(|name| {
                let column = match (name.scalar_slot(), name.vector_slot()) {
                    (Some(slot), _) => columns.scalars.get(slot),
                    (_, Some(slot)) => columns.vectors.get(slot),
                    (None, None) => None,
                };
                column_fits(name, column)
            })
            && columns.voiced.len()
                == if layout.contains(FeatureName::F0) {
                    n
                } else {
                    0
                }
            && columns.voiced_prob.len()
                == if layout.voiced_prob && layout.contains(FeatureName::F0) {
                    n
                } else {
                    0
                };
        if !fits {
            return None;
        }
        self.clear();
        self.set_layout(layout);
        self.indexes.extend_from_slice(&columns.indexes);
        self.start_samples.extend_from_slice(&columns.start_samples);
        for (to, from) in self.scalars.iter_mut().zip(&columns.scalars) {
            to.extend_from_slice(from);
        }
        self.voiced.extend_from_slice(&columns.voiced);
        self.voiced_prob.extend_from_slice(&columns.voiced_prob);
        for (to, from) in self.vectors.iter_mut().zip(&columns.vectors) {
            to.extend_from_slice(from);
        }
        Some(())
    }

    /// Heap bytes held (capacity).
    pub(crate) fn heap_bytes(&self) -> usize {
        (self.indexes.capacity() + self.start_samples.capacity()) * 8
            + self.scalars.iter().map(|c| c.capacity() * 4).sum::<usize>()
            + self.voiced.capacity()
            + self.voiced_prob.capacity() * 4
            + self.vectors.iter().map(|c| c.capacity() * 4).sum::<usize>()
    }

    /// Appends a vector feature of the frame being pushed.
    pub(crate) fn push_vector(&mut self, name: FeatureName, values: &[f64]) {
        if let Some(slot) = name.vector_slot() {
            debug_assert_eq!(values.len(), self.layout.width(name));
            self.vectors[slot].extend(values.iter().map(|&v| finite_f32(v)));
        }
    }
}

/// Frame indexes are u64; BSON has no unsigned 64-bit integer, so they are written as i64.
pub(crate) fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// One frame of a [`FrameBatch`]. Serialises as a flat map: `index`, `start_sample`, then every
/// selected feature by name (`f0` is null when unvoiced and is followed by `voiced`, and with
/// pYIN by `voiced_prob`), then `timestamp_ms` when one was given ([`FrameView::at_time`]).
#[derive(Debug, Clone, Copy)]
pub struct FrameView<'a> {
    batch: &'a FrameBatch,
    i: usize,
    timestamp_ms: Option<i64>,
}

impl FrameView<'_> {
    /// The same frame, serialised with a last `timestamp_ms` entry (the record's frames).
    pub fn at_time(self, timestamp_ms: i64) -> Self {
        Self {
            timestamp_ms: Some(timestamp_ms),
            ..self
        }
    }

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
        let with_prob = with_f0 * usize::from(batch.layout.voiced_prob);
        let with_time = usize::from(self.timestamp_ms.is_some());
        let entries = 2 + selected.len() + with_f0 + with_prob + with_time;
        let mut map = serializer.serialize_map(Some(entries))?;
        map.serialize_entry("index", &as_i64(batch.indexes[i]))?;
        map.serialize_entry("start_sample", &as_i64(batch.start_samples[i]))?;
        for &name in selected {
            if name == FeatureName::F0 {
                map.serialize_entry("f0", &batch.scalar(name, i))?;
                map.serialize_entry("voiced", &batch.voiced[i])?;
                if batch.layout.voiced_prob {
                    map.serialize_entry("voiced_prob", &batch.voiced_prob[i])?;
                }
            } else if let Some(slot) = name.scalar_slot() {
                map.serialize_entry(name.as_str(), &batch.scalars[slot][i])?;
            } else if let Some(values) = batch.vector(name, i) {
                map.serialize_entry(name.as_str(), values)?;
            }
        }
        if let Some(timestamp_ms) = self.timestamp_ms {
            map.serialize_entry("timestamp_ms", &timestamp_ms)?;
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
        let column = &batch.scalars[name.scalar_slot()?];
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
