//! Frames as columns, and as the Python dict of numpy arrays every function returns.
//!
//! Keys in order: `index`, `start_sample` (int64), then each feature in the worker's output
//! order (float32; vectors `frames × width`); `f0` (NaN where unvoiced) is followed by `voiced`
//! (bool) and, with pYIN, `voiced_prob`; `timestamp_ms` (int64) last when asked for.

use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use specflow::dsp::{DspConfig, FeatureExtractor, FeatureName, FrameBatch, PitchMethod};

/// One output column.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// One float32 per frame.
    F32(Vec<f32>),
    /// `width` float32 per frame, row-major.
    Rows(Vec<f32>, usize),
    /// One bool per frame.
    Bool(Vec<bool>),
    /// One int64 per frame.
    I64(Vec<i64>),
}

/// Frames as named columns of equal length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Frames {
    /// Number of frames.
    pub len: usize,
    /// Columns in output order.
    pub columns: Vec<(&'static str, Column)>,
}

/// Which columns an extractor's frames have: its features with their vector widths, and
/// whether pYIN adds `voiced_prob`.
#[derive(Debug, Clone)]
pub struct Layout {
    features: Vec<(FeatureName, Option<usize>)>,
    voiced_prob: bool,
}

impl Layout {
    /// The columns of `extractor`, made from `dsp`.
    pub fn new(extractor: &FeatureExtractor, dsp: &DspConfig) -> Self {
        let features: Vec<_> = extractor
            .selected()
            .iter()
            .map(|&name| (name, extractor.vector_len(name)))
            .collect();
        let f0 = features.iter().any(|&(name, _)| name == FeatureName::F0);
        Self {
            features,
            voiced_prob: f0 && dsp.pitch_method == PitchMethod::Pyin,
        }
    }

    /// The selected features' names, in output order.
    pub fn feature_names(&self) -> Vec<&'static str> {
        self.features
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// `u64` frame positions as int64 (as the records store them).
fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Frames {
    /// The frames of `batch`, an extractor of `layout`'s output (empty columns when the batch
    /// has never been written to).
    pub fn of_batch(batch: &FrameBatch, layout: &Layout) -> Self {
        let len = batch.len();
        let mut columns = vec![
            (
                "index",
                Column::I64((0..len).map(|i| as_i64(batch.index(i))).collect()),
            ),
            (
                "start_sample",
                Column::I64((0..len).map(|i| as_i64(batch.start_sample(i))).collect()),
            ),
        ];
        for &(name, width) in &layout.features {
            if let Some(width) = width {
                let values = batch
                    .vector_column(name)
                    .map_or_else(Vec::new, |(values, _)| values.to_vec());
                columns.push((name.as_str(), Column::Rows(values, width)));
            } else if name == FeatureName::F0 {
                let f0 = (0..len)
                    .map(|i| batch.scalar(name, i).unwrap_or(f32::NAN))
                    .collect();
                columns.push(("f0", Column::F32(f0)));
                let voiced = batch.voiced_column();
                columns.push((
                    "voiced",
                    Column::Bool(voiced[..len.min(voiced.len())].to_vec()),
                ));
                if layout.voiced_prob {
                    let prob = batch.voiced_prob_column();
                    columns.push((
                        "voiced_prob",
                        Column::F32(prob[..len.min(prob.len())].to_vec()),
                    ));
                }
            } else {
                let values = batch
                    .scalar_column(name)
                    .map_or_else(Vec::new, <[f32]>::to_vec);
                columns.push((name.as_str(), Column::F32(values)));
            }
        }
        Self { len, columns }
    }

    /// The dict of numpy arrays.
    pub fn into_dict(self, py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
        let dict = PyDict::new(py);
        let len = self.len;
        for (name, column) in self.columns {
            match column {
                Column::F32(values) => dict.set_item(name, PyArray1::from_vec(py, values))?,
                Column::Rows(values, width) => {
                    dict.set_item(name, PyArray1::from_vec(py, values).reshape([len, width])?)?
                }
                Column::Bool(values) => dict.set_item(name, PyArray1::from_vec(py, values))?,
                Column::I64(values) => dict.set_item(name, PyArray1::from_vec(py, values))?,
            }
        }
        Ok(dict)
    }
}
