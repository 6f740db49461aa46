//! The `[dsp]` section of the daemon configuration and its validation.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::chroma::N_CHROMA;
use super::feature_table::{FEATURES, Width};
pub use super::feature_table::{FeatureName, UnknownFeature};
use super::pyin::{Pyin, PyinParams};

use crate::validation::Problem;

/// Largest accepted `frame_length`, a guard against typos that would allocate huge plans.
pub const MAX_FRAME_LENGTH: usize = 1 << 16;

/// Smallest accepted `frame_length`.
pub const MIN_FRAME_LENGTH: usize = 16;

/// Feature extraction parameters, shared by every stream with the same sample rate.
///
/// Frame `k` covers samples `[k * hop_length, k * hop_length + frame_length)` of the stream
/// (librosa's `center=False` framing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DspConfig {
    /// Samples per analysis frame (also the FFT length). Any length from 16 up, not only powers of two.
    pub frame_length: usize,
    /// Samples between the starts of consecutive frames, `1..=frame_length`.
    pub hop_length: usize,
    /// Analysis window applied before the FFT (periodic, as `scipy.signal.get_window(..., fftbins=True)`).
    pub window: WindowKind,
    /// Features to compute: `["all"]` or a list of feature names (see [`FeatureName`]);
    /// duplicates are ignored, unknown words reported by [`DspConfig::validate`].
    pub features: Vec<FeatureChoice>,
    /// Number of mel bands.
    pub n_mels: usize,
    /// Lowest mel filter edge in Hz.
    pub fmin: f64,
    /// Highest mel filter edge in Hz; `None` means half the sample rate.
    pub fmax: Option<f64>,
    /// Mel scale formula.
    pub mel_scale: MelScale,
    /// Number of MFCC coefficients, at most `n_mels`.
    pub n_mfcc: usize,
    /// Fraction of the spectral magnitude below the roll-off frequency, in `(0, 1)`.
    pub rolloff_percent: f64,
    /// Lowest f0 the pitch tracker (YIN or pYIN) looks for, in Hz.
    pub pitch_fmin: f64,
    /// Highest f0 the pitch tracker (YIN or pYIN) looks for, in Hz.
    pub pitch_fmax: f64,
    /// YIN trough threshold (`pitch_method = "yin"`): a frame is voiced when its normalised
    /// difference dips below it.
    pub pitch_threshold: f64,
    /// Pitch tracker for `f0`: `pyin` (librosa.pyin's probabilistic YIN with a streaming
    /// fixed-lag Viterbi decode; adds `voiced_prob`) or `yin` (librosa.yin's trough rule; no
    /// added latency).
    pub pitch_method: PitchMethod,
    /// pYIN: frames a pitch decision waits for (fixed-lag Viterbi). A frame is emitted, with
    /// all its features, `pitch_lag_frames × hop_length` samples after it ends.
    pub pitch_lag_frames: usize,
    /// pYIN: thresholds of the YIN prior (librosa's `n_thresholds`).
    pub pyin_n_thresholds: usize,
    /// pYIN: shape of the beta prior over thresholds (librosa's `beta_parameters`; positive
    /// integers).
    pub pyin_beta_parameters: [u32; 2],
    /// pYIN: Boltzmann parameter of the prior over trough ranks.
    pub pyin_boltzmann_parameter: f64,
    /// pYIN: pitch bin width in semitones.
    pub pyin_resolution: f64,
    /// pYIN: largest pitch change, in octaves per second.
    pub pyin_max_transition_rate: f64,
    /// pYIN: probability of switching between voiced and unvoiced.
    pub pyin_switch_prob: f64,
    /// pYIN: probability mass given to the global minimum when no trough is below a threshold.
    pub pyin_no_trough_prob: f64,
    /// Frequency bands `[low, high)` in Hz for `band_energy`; bands reaching past Nyquist are clipped to it.
    pub bands: Vec<[f64; 2]>,
}

impl Default for DspConfig {
    fn default() -> Self {
        Self {
            frame_length: 512,
            hop_length: 160,
            window: WindowKind::Hann,
            features: vec![FeatureChoice::All],
            n_mels: 40,
            fmin: 0.0,
            fmax: None,
            mel_scale: MelScale::Slaney,
            n_mfcc: 13,
            rolloff_percent: 0.85,
            pitch_fmin: 65.0,
            pitch_fmax: 2093.0,
            pitch_threshold: 0.1,
            pitch_method: PitchMethod::Pyin,
            pitch_lag_frames: 20,
            pyin_n_thresholds: 100,
            pyin_beta_parameters: [2, 18],
            pyin_boltzmann_parameter: 2.0,
            pyin_resolution: 0.1,
            pyin_max_transition_rate: 35.92,
            pyin_switch_prob: 0.01,
            pyin_no_trough_prob: 0.01,
            bands: vec![[0.0, 300.0], [300.0, 2000.0], [2000.0, 8000.0]],
        }
    }
}

/// How `f0` is tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PitchMethod {
    /// `librosa.pyin`: probabilistic YIN and an HMM over pitch bins and voicing, decoded with a
    /// fixed lag of `pitch_lag_frames`.
    #[default]
    Pyin,
    /// `librosa.yin` with its trough rule for voicing: per frame, no added latency.
    Yin,
}

/// Analysis window shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// Periodic Hann window (librosa's default).
    #[default]
    Hann,
    /// Periodic Hamming window (0.54 / 0.46).
    Hamming,
    /// Periodic Blackman window (0.42 / 0.5 / 0.08).
    Blackman,
    /// No window (all ones).
    Rectangular,
}

/// Mel scale formula, as librosa's `htk` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MelScale {
    /// Slaney's Auditory Toolbox scale: linear below 1 kHz, logarithmic above (`htk=False`).
    #[default]
    Slaney,
    /// HTK formula `2595 * log10(1 + f / 700)` (`htk=True`).
    Htk,
}

/// The `dsp.features` word that selects every feature.
pub const ALL_FEATURES_ALIAS: &str = "all";

/// One entry of `dsp.features`: `"all"`, a feature name, or a word that is neither.
///
/// Deserialising never fails on an unknown word: it is kept as [`FeatureChoice::Unknown`] so
/// that [`DspConfig::validate`] reports it as a `dsp.features` problem alongside every other
/// problem of the configuration (a serde error would stop at the first). Serialises back to the
/// word as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FeatureChoice {
    /// `"all"`: every feature in [`FEATURES`] order.
    All,
    /// One feature.
    Feature(FeatureName),
    /// A word that names no feature; [`DspConfig::validate`] reports it.
    Unknown(String),
}

impl FeatureChoice {
    /// The word as written in the configuration.
    pub fn as_str(&self) -> &str {
        match self {
            FeatureChoice::All => ALL_FEATURES_ALIAS,
            FeatureChoice::Feature(feature) => feature.as_str(),
            FeatureChoice::Unknown(word) => word,
        }
    }
}

impl From<&str> for FeatureChoice {
    fn from(word: &str) -> Self {
        if word == ALL_FEATURES_ALIAS {
            FeatureChoice::All
        } else {
            word.parse().map_or_else(
                |_| FeatureChoice::Unknown(word.to_owned()),
                FeatureChoice::Feature,
            )
        }
    }
}

impl From<String> for FeatureChoice {
    fn from(word: String) -> Self {
        FeatureChoice::from(word.as_str())
    }
}

impl From<FeatureName> for FeatureChoice {
    fn from(feature: FeatureName) -> Self {
        FeatureChoice::Feature(feature)
    }
}

impl fmt::Display for FeatureChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FeatureChoice {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FeatureChoice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(FeatureChoice::from)
    }
}

/// Key prefix of every problem reported by [`DspConfig::validate`].
const KEY: &str = "dsp";

fn key(field: &str) -> String {
    format!("{KEY}.{field}")
}

impl DspConfig {
    /// The selected features, de-duplicated, in [`FeatureName::ALL`] order.
    /// Unknown names are skipped here; [`DspConfig::validate`] reports them.
    pub fn selected_features(&self) -> Vec<FeatureName> {
        let all = self.features.contains(&FeatureChoice::All);
        FeatureName::ALL
            .into_iter()
            .filter(|&f| all || self.features.contains(&FeatureChoice::Feature(f)))
            .collect()
    }

    /// Every problem that does not depend on the sample rate, keys like `dsp.hop_length`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut push = |field: &str, value: &dyn fmt::Display, message: String| {
            problems.push(Problem::new(key(field), value, message));
        };

        if self.frame_length < MIN_FRAME_LENGTH || self.frame_length > MAX_FRAME_LENGTH {
            push(
                "frame_length",
                &self.frame_length,
                format!("must be between {MIN_FRAME_LENGTH} and {MAX_FRAME_LENGTH}"),
            );
        }
        if self.hop_length == 0 || self.hop_length > self.frame_length {
            push(
                "hop_length",
                &self.hop_length,
                "must be between 1 and frame_length".to_owned(),
            );
        }

        if self.features.is_empty() {
            push(
                "features",
                &"[]",
                "must name at least one feature (or \"all\")".to_owned(),
            );
        }
        for choice in &self.features {
            if let FeatureChoice::Unknown(word) = choice {
                let known: Vec<&str> = FEATURES.iter().map(|spec| spec.name).collect();
                push(
                    "features",
                    word,
                    format!(
                        "unknown feature; expected \"{ALL_FEATURES_ALIAS}\" or one of {}",
                        known.join(", ")
                    ),
                );
            }
        }

        if self.n_mels == 0 {
            push("n_mels", &self.n_mels, "must be at least 1".to_owned());
        }
        if !(self.fmin.is_finite() && self.fmin >= 0.0) {
            push(
                "fmin",
                &self.fmin,
                "must be a finite frequency >= 0 Hz".to_owned(),
            );
        }
        if let Some(fmax) = self.fmax {
            if !(fmax.is_finite() && fmax > 0.0) {
                push(
                    "fmax",
                    &fmax,
                    "must be a finite frequency > 0 Hz".to_owned(),
                );
            } else if self.fmin.is_finite() && self.fmin >= fmax {
                push(
                    "fmin",
                    &self.fmin,
                    format!("must be less than fmax ({fmax} Hz)"),
                );
            }
        }
        if self.n_mfcc == 0 {
            push("n_mfcc", &self.n_mfcc, "must be at least 1".to_owned());
        } else if self.n_mfcc > self.n_mels && self.n_mels > 0 {
            push(
                "n_mfcc",
                &self.n_mfcc,
                format!("must not exceed n_mels ({})", self.n_mels),
            );
        }
        if !(self.rolloff_percent > 0.0 && self.rolloff_percent < 1.0) {
            push(
                "rolloff_percent",
                &self.rolloff_percent,
                "must be between 0 and 1 (exclusive)".to_owned(),
            );
        }

        let pitch_fmin_ok = self.pitch_fmin.is_finite() && self.pitch_fmin > 0.0;
        if !pitch_fmin_ok {
            push(
                "pitch_fmin",
                &self.pitch_fmin,
                "must be a finite frequency > 0 Hz".to_owned(),
            );
        }
        if !(self.pitch_fmax.is_finite() && self.pitch_fmax > 0.0) {
            push(
                "pitch_fmax",
                &self.pitch_fmax,
                "must be a finite frequency > 0 Hz".to_owned(),
            );
        } else if pitch_fmin_ok && self.pitch_fmax <= self.pitch_fmin {
            push(
                "pitch_fmax",
                &self.pitch_fmax,
                format!("must be greater than pitch_fmin ({} Hz)", self.pitch_fmin),
            );
        }
        if self.pitch_lag_frames == 0 || self.pitch_lag_frames > 1000 {
            push(
                "pitch_lag_frames",
                &self.pitch_lag_frames,
                "must be between 1 and 1000".to_owned(),
            );
        }
        if !(self.pitch_threshold.is_finite() && self.pitch_threshold > 0.0) {
            push(
                "pitch_threshold",
                &self.pitch_threshold,
                "must be a finite number > 0".to_owned(),
            );
        }

        for (i, [low, high]) in self.bands.iter().copied().enumerate() {
            let field = format!("bands[{i}]");
            let value = format!("[{low}, {high}]");
            if !(low.is_finite() && high.is_finite() && low >= 0.0) {
                push(
                    &field,
                    &value,
                    "band edges must be finite frequencies >= 0 Hz".to_owned(),
                );
            } else if low >= high {
                push(
                    &field,
                    &value,
                    "band low edge must be below its high edge".to_owned(),
                );
            }
        }
        problems
    }

    /// The pYIN parameters of this configuration.
    pub fn pyin_params(&self) -> PyinParams {
        PyinParams {
            fmin: self.pitch_fmin,
            fmax: self.pitch_fmax,
            n_thresholds: self.pyin_n_thresholds,
            beta_parameters: (self.pyin_beta_parameters[0], self.pyin_beta_parameters[1]),
            boltzmann_parameter: self.pyin_boltzmann_parameter,
            resolution: self.pyin_resolution,
            max_transition_rate: self.pyin_max_transition_rate,
            switch_prob: self.pyin_switch_prob,
            no_trough_prob: self.pyin_no_trough_prob,
        }
    }

    /// What pYIN rejects at `rate`, each under the key it comes from (the pitch range
    /// conditions already reported by [`DspConfig::validate`] are not repeated).
    fn pyin_problems(&self, rate: f64) -> Vec<Problem> {
        let Err(messages) = Pyin::new(
            &self.pyin_params(),
            rate,
            self.frame_length,
            self.hop_length.max(1),
        ) else {
            return Vec::new();
        };
        let keys = [
            ("fmin=", "pitch_fmin", self.pitch_fmin.to_string()),
            ("fmax=", "pitch_fmax", self.pitch_fmax.to_string()),
            (
                "n_thresholds",
                "pyin_n_thresholds",
                self.pyin_n_thresholds.to_string(),
            ),
            (
                "beta_parameters",
                "pyin_beta_parameters",
                format!("{:?}", self.pyin_beta_parameters),
            ),
            (
                "boltzmann_parameter",
                "pyin_boltzmann_parameter",
                self.pyin_boltzmann_parameter.to_string(),
            ),
            (
                "resolution",
                "pyin_resolution",
                self.pyin_resolution.to_string(),
            ),
            (
                "max_transition_rate",
                "pyin_max_transition_rate",
                self.pyin_max_transition_rate.to_string(),
            ),
            (
                "switch_prob",
                "pyin_switch_prob",
                self.pyin_switch_prob.to_string(),
            ),
            (
                "no_trough_prob",
                "pyin_no_trough_prob",
                self.pyin_no_trough_prob.to_string(),
            ),
        ];
        let already_reported = |m: &str| {
            (m.starts_with("fmin=") || m.starts_with("fmax="))
                && (m.contains("must be finite")
                    || m.contains("must be less than")
                    || m.contains("Nyquist"))
        };
        messages
            .into_iter()
            .filter(|m| !already_reported(m))
            .map(|message| {
                let (field, value) = keys
                    .iter()
                    .find(|(prefix, _, _)| message.starts_with(prefix))
                    .map_or(
                        ("pitch_method", "\"pyin\"".to_string()),
                        |(_, field, value)| (*field, value.clone()),
                    );
                Problem::new(key(field), value, format!("pyin: {message}"))
            })
            .collect()
    }

    /// Every problem for this sample rate, [`DspConfig::validate`] included.
    ///
    /// Pitch limits are checked against the frame only when `f0` is selected.
    pub fn validate_for_rate(&self, sample_rate: u32) -> Vec<Problem> {
        let mut problems = self.validate();
        if sample_rate == 0 {
            problems.push(Problem::new("sample_rate", 0, "must be greater than 0 Hz"));
            return problems;
        }
        let rate = f64::from(sample_rate);
        let nyquist = rate / 2.0;

        match self.fmax {
            Some(fmax) if fmax.is_finite() && fmax > nyquist => problems.push(Problem::new(
                key("fmax"),
                fmax,
                format!("must not exceed the Nyquist frequency ({nyquist} Hz at {sample_rate} Hz)"),
            )),
            None if self.fmin.is_finite() && self.fmin >= nyquist => problems.push(Problem::new(
                key("fmin"),
                self.fmin,
                format!("must be below the Nyquist frequency ({nyquist} Hz at {sample_rate} Hz)"),
            )),
            _ => {}
        }

        for (i, [low, high]) in self.bands.iter().copied().enumerate() {
            if low.is_finite() && high.is_finite() && low < high && low >= nyquist {
                problems.push(Problem::new(
                    key(&format!("bands[{i}]")),
                    format!("[{low}, {high}]"),
                    format!("band lies entirely above the Nyquist frequency ({nyquist} Hz at {sample_rate} Hz)"),
                ));
            }
        }

        if self.selected_features().contains(&FeatureName::F0) {
            if self.pitch_fmax.is_finite() && self.pitch_fmax > nyquist {
                problems.push(Problem::new(
                    key("pitch_fmax"),
                    self.pitch_fmax,
                    format!(
                        "must not exceed the Nyquist frequency ({nyquist} Hz at {sample_rate} Hz)"
                    ),
                ));
            }
            if self.pitch_method == PitchMethod::Pyin {
                problems.extend(self.pyin_problems(rate));
            } else if self.pitch_fmin.is_finite() && self.pitch_fmin > 0.0 {
                let period = rate / self.pitch_fmin;
                if period >= (self.frame_length / 2) as f64 {
                    let lowest = rate / (self.frame_length / 2) as f64;
                    problems.push(Problem::new(
                        key("pitch_fmin"),
                        self.pitch_fmin,
                        format!(
                            "its period ({period:.1} samples at {sample_rate} Hz) must fit twice in \
                             frame_length ({}); raise pitch_fmin above {lowest:.3} Hz or use a frame_length \
                             of at least {}",
                            self.frame_length,
                            2 * (period.floor() as usize + 1)
                        ),
                    ));
                }
            }
        }
        problems
    }
}

impl Width {
    /// The number of values per frame under `config`.
    pub fn resolve(self, config: &DspConfig) -> usize {
        match self {
            Width::One => 1,
            Width::NMels => config.n_mels,
            Width::NMfcc => config.n_mfcc,
            Width::Chroma => N_CHROMA,
            Width::Bands => config.bands.len(),
        }
    }
}

#[cfg(test)]
mod tests;
