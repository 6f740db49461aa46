//! Config validation problems, collected rather than returned one at a time.

use std::fmt;

/// One thing wrong with a configuration value, named by its dotted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, for example `dsp.hop_length`.
    pub key: String,
    /// The offending value as the user wrote it (already redacted for secrets).
    pub value: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl Problem {
    /// Builds a problem for `key` whose current value is `value`.
    pub fn new(
        key: impl Into<String>,
        value: impl fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            value: value.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.key, self.value, self.message)
    }
}
