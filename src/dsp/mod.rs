//! Pure, synchronous audio feature extraction: framing, windows, FFT, and per-frame features.
//!
//! Layout:
//! - [`feature_table`]: [`FEATURES`], the one list of features (name, width, what each needs)
//!   that everything else derives from, and [`FeatureName`].
//! - [`config`]: the `[dsp]` settings ([`DspConfig`], [`FeatureChoice`]) and their validation
//!   (and [`Width::resolve`], a feature's width under a configuration).
//! - [`error`]: [`DspError`], the errors of the DSP core.
//! - [`extractor`]: [`FeatureExtractor`] (plans and filter banks, shared via `Arc`) and its
//!   per-thread [`Workspace`]; `process` runs the frame loop.
//! - [`stream`]: [`StreamState`], what one stream carries between chunks.
//! - [`batch`]: [`FrameBatch`], columnar output with serde views.
//! - [`features`]: the per-frame formulas (and the definitions of specflow's own features),
//!   [`window`], [`mel`], [`chroma`], [`pitch`] (YIN), [`pyin`] (probabilistic YIN and its
//!   streaming fixed-lag decoder), [`real_fft`] (the power spectrum and the autocorrelation on
//!   rustfft, with vectorised split passes), [`kernels`] (dot products and sums in a fixed
//!   order, portable in [`kernels::portable`] and AVX2, bit-identical): the building blocks.
//!
//! Imports between these modules point one way (no module imports one that imports it back):
//! `feature_table` knows nothing of `config`, `kernels` nothing of `features`, and no module
//! uses an item defined in this file (it only re-exports).
//!
//! Nothing here does I/O or async work; the caller runs it off the async runtime.

pub mod batch;
pub mod chroma;
pub mod config;
pub mod error;
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
pub use error::DspError;
pub use extractor::{FeatureExtractor, Workspace};
pub use feature_table::{FEATURES, FeatureName, FeatureSpec, Needs, UnknownFeature, Width};
pub use stream::{StreamSnapshot, StreamState};
