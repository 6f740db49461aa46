//! pYIN parameters ([`PyinParams`]), named and defaulted as `librosa.pyin`'s keyword arguments,
//! their validation, and the pitch-bin counts derived from them.

/// Most HMM states: back-pointers are `u16` (as librosa's).
pub(super) const MAX_STATES: usize = 1 << 16;

/// pYIN parameters, named and defaulted as `librosa.pyin`'s keyword arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct PyinParams {
    /// Lowest frequency searched, in Hz (librosa requires it; default here 65 Hz ≈ C2).
    pub fmin: f64,
    /// Highest frequency searched, in Hz (librosa requires it; default here 2093 Hz ≈ C7).
    pub fmax: f64,
    /// Number of thresholds of the beta prior (librosa: 100).
    pub n_thresholds: usize,
    /// Shape parameters `(a, b)` of the beta prior over thresholds (librosa: `(2, 18)`).
    /// Only positive integers are supported (the CDF is the closed-form binomial sum), with
    /// `a + b <= 1000`.
    pub beta_parameters: (u32, u32),
    /// Shape of the Boltzmann prior over trough ranks; larger favours shorter periods
    /// (librosa: 2).
    pub boltzmann_parameter: f64,
    /// Pitch-bin width in semitones (librosa: 0.1); `ceil(1 / resolution)` bins per semitone.
    pub resolution: f64,
    /// Largest pitch change in octaves per second (librosa: 35.92).
    pub max_transition_rate: f64,
    /// Probability of switching between voiced and unvoiced per frame (librosa: 0.01).
    pub switch_prob: f64,
    /// Largest probability given to the global minimum when no trough is below a threshold
    /// (librosa: 0.01).
    pub no_trough_prob: f64,
}

impl Default for PyinParams {
    fn default() -> Self {
        Self {
            fmin: 65.0,
            fmax: 2093.0,
            n_thresholds: 100,
            beta_parameters: (2, 18),
            boltzmann_parameter: 2.0,
            resolution: 0.1,
            max_transition_rate: 35.92,
            switch_prob: 0.01,
            no_trough_prob: 0.01,
        }
    }
}

impl PyinParams {
    /// Every problem with these parameters for `frame_length`-sample frames at `sample_rate`
    /// (empty when usable). Checks librosa's own conditions (`0 < fmin < fmax <= sr / 2`,
    /// `sr / fmin < frame_length - 1`) and the ranges of the other parameters.
    /// The hop-dependent transition width is checked by `Pyin::new`.
    pub fn validate(&self, sample_rate: f64, frame_length: usize) -> Vec<String> {
        let mut problems = Vec::new();
        let sr_ok = sample_rate.is_finite() && sample_rate > 0.0;
        if !sr_ok {
            problems.push(format!("sample_rate={sample_rate} must be finite and > 0"));
        }
        if !(self.fmin.is_finite() && self.fmin > 0.0) {
            problems.push(format!("fmin={} must be finite and > 0", self.fmin));
        }
        if !(self.fmax.is_finite() && self.fmax > 0.0) {
            problems.push(format!("fmax={} must be finite and > 0", self.fmax));
        }
        if self.fmin.is_finite() && self.fmax.is_finite() && self.fmin >= self.fmax {
            problems.push(format!(
                "fmin={} must be less than fmax={}",
                self.fmin, self.fmax
            ));
        }
        if sr_ok && self.fmax > sample_rate / 2.0 {
            problems.push(format!(
                "fmax={} cannot exceed the Nyquist frequency {}",
                self.fmax,
                sample_rate / 2.0
            ));
        }
        if sr_ok && self.fmin > 0.0 && sample_rate / self.fmin >= frame_length as f64 - 1.0 {
            problems.push(format!(
                "fmin={} is too low for frame_length={frame_length} at {sample_rate} Hz: \
                 one period (sr / fmin = {:.3} samples) must fit in frame_length - 1",
                self.fmin,
                sample_rate / self.fmin
            ));
        }
        if self.n_thresholds == 0 {
            problems.push("n_thresholds must be at least 1".to_string());
        }
        let (a, b) = self.beta_parameters;
        if a == 0 || b == 0 || u64::from(a) + u64::from(b) > 1000 {
            problems.push(format!(
                "beta_parameters=({a}, {b}) must be positive integers with a + b <= 1000"
            ));
        }
        if !(self.boltzmann_parameter.is_finite() && self.boltzmann_parameter > 0.0) {
            problems.push(format!(
                "boltzmann_parameter={} must be finite and > 0",
                self.boltzmann_parameter
            ));
        }
        if !(self.resolution > 0.0 && self.resolution <= 1.0) {
            problems.push(format!("resolution={} must be in (0, 1]", self.resolution));
        }
        if !(self.max_transition_rate.is_finite() && self.max_transition_rate > 0.0) {
            problems.push(format!(
                "max_transition_rate={} must be finite and > 0",
                self.max_transition_rate
            ));
        }
        if !(self.switch_prob > 0.0 && self.switch_prob < 1.0) {
            problems.push(format!(
                "switch_prob={} must be in (0, 1)",
                self.switch_prob
            ));
        }
        if !(self.no_trough_prob > 0.0 && self.no_trough_prob < 1.0) {
            problems.push(format!(
                "no_trough_prob={} must be in (0, 1)",
                self.no_trough_prob
            ));
        }
        if self.fmin > 0.0 && self.fmax > self.fmin && self.resolution > 0.0 {
            let bins = n_pitch_bins(self);
            if !(2..=MAX_STATES / 2).contains(&bins) {
                problems.push(format!(
                    "{bins} pitch bins (from fmin, fmax and resolution): need 2..={}",
                    MAX_STATES / 2
                ));
            }
        }
        problems
    }
}

/// `ceil(1 / resolution)`.
pub(super) fn bins_per_semitone(params: &PyinParams) -> usize {
    (1.0 / params.resolution).ceil() as usize
}

/// `floor(12 * bins_per_semitone * log2(fmax / fmin)) + 1`.
pub(super) fn n_pitch_bins(params: &PyinParams) -> usize {
    let per_octave = (12 * bins_per_semitone(params)) as f64;
    (per_octave * (params.fmax / params.fmin).log2()).floor() as usize + 1
}
