//! Pure, synchronous audio feature extraction: framing, windows, FFT, and per-frame features.
//!
//! Layout:
//! - [`feature_table`]: [`FEATURES`], the one list of features (name, width, what each needs)
//!   that everything else derives from, and [`FeatureName`].
//! - [`config`]: the `[dsp]` settings ([`DspConfig`], [`FeatureChoice`]) and their validation.
//! - [`extractor`]: [`FeatureExtractor`] (plans and filter banks, shared via `Arc`) and its
//!   per-thread [`Workspace`]; `process` runs the frame loop.
//! - [`stream`]: [`StreamState`], what one stream carries between chunks.
//! - [`batch`]: [`FrameBatch`], columnar output with serde views.
//! - [`features`]: the per-frame formulas (and the definitions of specflow's own features),
//!   [`window`], [`mel`], [`chroma`], [`pitch`] (YIN), [`pyin`] (probabilistic YIN and its
//!   streaming fixed-lag decoder), [`real_fft`] (the power spectrum and the autocorrelation on
//!   rustfft, with vectorised split passes), [`kernels`] (dot products and sums in a fixed
//!   order, portable and AVX2, bit-identical): the building blocks.
//!
//! Nothing here does I/O or async work; the caller runs it off the async runtime.

pub mod batch;
pub mod chroma;
pub mod config;
pub mod extractor;
pub mod feature_table;
pub mod features;
pub mod kernels;
pub mod mel;
pub mod pitch;
pub mod pyin;
pub mod real_fft;
pub mod stream;
pub mod window;

pub use batch::BatchColumns;
pub use batch::{FrameBatch, FrameView, Summaries, Summary};
pub use config::{DspConfig, FeatureChoice, MelScale, PitchMethod, WindowKind};
pub use extractor::{FeatureExtractor, Workspace};
pub use feature_table::{FEATURES, FeatureName, FeatureSpec, Needs, UnknownFeature, Width};
pub use stream::{StreamSnapshot, StreamState};

use crate::validation::Problem;

/// Errors of the DSP core.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DspError {
    /// The configuration cannot be used at this sample rate; every problem is listed.
    /// Retrying does not help: the configuration (or the stream's sample rate) must change.
    #[error("invalid dsp configuration: {}", join_problems(.0))]
    InvalidConfig(Vec<Problem>),
    /// A stream snapshot does not fit the extractor asked to restore it (the `[dsp]` settings
    /// changed since it was taken). Retrying does not help; the stream starts afresh.
    #[error("stream snapshot does not fit: {0}")]
    Snapshot(String),
}

impl DspError {
    /// Whether retrying the same operation could succeed (never, for configuration errors).
    pub fn retryable(&self) -> bool {
        match self {
            DspError::InvalidConfig(_) | DspError::Snapshot(_) => false,
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
