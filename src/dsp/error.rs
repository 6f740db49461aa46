//! [`DspError`], the errors of the DSP core.

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

/// The problems' messages, separated by `; `.
fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
