//! Pure, synchronous audio feature extraction: framing, windows, FFT, and per-frame features.
//!
//! Layout:
//! - [`config`]: the `[dsp]` settings ([`DspConfig`]), feature names and validation.
//! - [`extractor`]: [`FeatureExtractor`] (plans and filter banks, shared via `Arc`) and its
//!   per-thread [`Workspace`]; `process` runs the frame loop.
//! - [`stream`]: [`StreamState`], what one stream carries between chunks.
//! - [`batch`]: [`FrameBatch`], columnar output with serde views.
//! - [`features`]: the per-frame formulas (and the definitions of specflow's own features),
//!   [`window`], [`mel`], [`chroma`], [`pitch`] (YIN): the building blocks.
//!
//! Nothing here does I/O or async work; the caller runs it off the async runtime.

pub mod batch;
pub mod chroma;
pub mod config;
pub mod extractor;
pub mod features;
pub mod mel;
pub mod pitch;
pub mod stream;
pub mod window;

pub use batch::{FrameBatch, FrameView, Summaries, Summary};
pub use config::{DspConfig, FeatureName, MelScale, UnknownFeature, WindowKind};
pub use extractor::{FeatureExtractor, Workspace};
pub use stream::StreamState;

use crate::validation::Problem;

/// Errors of the DSP core.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DspError {
    /// The configuration cannot be used at this sample rate; every problem is listed.
    /// Retrying does not help: the configuration (or the stream's sample rate) must change.
    #[error("invalid dsp configuration: {}", join_problems(.0))]
    InvalidConfig(Vec<Problem>),
}

impl DspError {
    /// Whether retrying the same operation could succeed (never, for configuration errors).
    pub fn retryable(&self) -> bool {
        match self {
            DspError::InvalidConfig(_) => false,
        }
    }
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
