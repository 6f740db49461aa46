//! [`Pyin`], the immutable pYIN tables for one configuration: FFT plans, the threshold and
//! trough priors, the pitch-bin frequencies, the banded transitions and the configuration
//! fingerprint, with their construction and accessors. The per-frame observation that reads
//! them is in `observation`, the decoder in `decoder` and `streaming`.

use rustfft::FftPlanner;

use super::numeric::{TINY, beta_cdf_int, fnv1a, numpy_sum};
use super::params::{PyinParams, bins_per_semitone, n_pitch_bins};
use super::transitions::TransitionBands;
use crate::dsp::kernels::Avx2;
use crate::dsp::real_fft::{Autocorrelation, fast_even_len};

/// Immutable pYIN tables for one `(params, sample_rate, frame_length, hop_length)`: FFT plans,
/// the threshold and trough priors, the pitch-bin frequencies and the banded log-transition
/// matrix. Build once and share (it is `Send + Sync`); per-thread buffers come from
/// [`Pyin::scratch`], per-stream state from `PyinDecoder::new`.
pub struct Pyin {
    /// The parameters the tables were built from.
    pub(super) params: PyinParams,
    /// Sample rate in Hz.
    pub(super) sample_rate: f64,
    /// Samples per frame.
    pub(super) frame_length: usize,
    /// Samples between frames.
    pub(super) hop_length: usize,
    /// Shortest period searched, `floor(sr / fmax)`.
    pub(super) min_period: usize,
    /// Longest period searched, `min(ceil(sr / fmin), frame_length - 1)`.
    pub(super) max_period: usize,
    /// The autocorrelation, zero-padded to `frame_length + max_period` or more.
    pub(super) acf: Autocorrelation<f64>,
    /// `linspace(0, 1, n_thresholds + 1)[1..]`.
    pub(super) thresholds: Vec<f64>,
    /// Beta mass between consecutive thresholds.
    pub(super) beta_probs: Vec<f64>,
    /// `no_trough_prob * sum(beta_probs[..n])` for `n` in `0..=n_thresholds`.
    pub(super) no_trough_mass: Vec<f64>,
    /// Boltzmann normalisers `(1 - e^-λ) / (1 - e^-λN)` for `N` troughs (index `N`).
    pub(super) boltzmann_norm: Vec<f64>,
    /// `e^-λk` for rank `k`.
    pub(super) boltzmann_decay: Vec<f64>,
    /// Number of pitch bins.
    pub(super) n_pitch_bins: usize,
    /// `12 * bins_per_semitone`.
    pub(super) bins_per_octave: f64,
    /// Centre frequency of each pitch bin.
    pub(super) freqs: Vec<f64>,
    /// Width of librosa's triangular local transition (in pitch bins).
    pub(super) transition_width: usize,
    /// The banded log-transition matrix.
    pub(super) bands: TransitionBands,
    /// `log(1 / n_states + tiny)`: the initial distribution.
    pub(super) log_init: f64,
    /// Hash of the parameters and sizes, checked by the decoder and its snapshots.
    pub(super) fingerprint: u64,
    /// The AVX2 kernels for the Viterbi step, when the CPU has AVX2 (same results).
    pub(super) avx2: Option<Avx2>,
}

impl std::fmt::Debug for Pyin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pyin")
            .field("params", &self.params)
            .field("sample_rate", &self.sample_rate)
            .field("frame_length", &self.frame_length)
            .field("hop_length", &self.hop_length)
            .field("min_period", &self.min_period)
            .field("max_period", &self.max_period)
            .field("fft_len", &self.acf.transform_len())
            .field("n_pitch_bins", &self.n_pitch_bins)
            .field("transition_width", &self.transition_width)
            .finish()
    }
}

impl Pyin {
    /// Tables for `frame_length`-sample frames every `hop_length` samples at `sample_rate`, with
    /// a private FFT planner. Fails with every problem found (see [`PyinParams::validate`],
    /// plus `hop_length >= 1` and a transition width of at most `n_pitch_bins`).
    pub fn new(
        params: &PyinParams,
        sample_rate: f64,
        frame_length: usize,
        hop_length: usize,
    ) -> Result<Self, Vec<String>> {
        Self::with_planner(
            params,
            sample_rate,
            frame_length,
            hop_length,
            &mut FftPlanner::new(),
        )
    }

    /// As [`Pyin::new`], planning the FFTs with `planner` (to share plans with other features).
    pub fn with_planner(
        params: &PyinParams,
        sample_rate: f64,
        frame_length: usize,
        hop_length: usize,
        planner: &mut FftPlanner<f64>,
    ) -> Result<Self, Vec<String>> {
        let mut problems = params.validate(sample_rate, frame_length);
        if hop_length == 0 {
            problems.push("hop_length must be at least 1".to_string());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let n_bins = n_pitch_bins(params);
        let per_semitone = bins_per_semitone(params);
        // round() in Python rounds half to even.
        let max_semitones_per_frame = (params.max_transition_rate * 12.0 * hop_length as f64
            / sample_rate)
            .round_ties_even() as usize;
        let transition_width = max_semitones_per_frame * per_semitone + 1;
        if transition_width > n_bins {
            return Err(vec![format!(
                "transition width {transition_width} (max_transition_rate over one hop) exceeds \
                 the {n_bins} pitch bins"
            )]);
        }

        let min_period = (sample_rate / params.fmax).floor() as usize;
        let max_period = ((sample_rate / params.fmin).ceil() as usize).min(frame_length - 1);
        let n_periods = max_period - min_period + 1;
        // Linear autocorrelation up to lag max_period needs frame_length + max_period points.
        let fft_len = fast_even_len(frame_length + max_period);

        // Threshold prior: np.diff(beta.cdf(np.linspace(0, 1, n + 1), a, b)).
        let n_thr = params.n_thresholds;
        let step = 1.0 / n_thr as f64;
        let grid: Vec<f64> = (0..=n_thr)
            .map(|m| {
                if m == n_thr {
                    1.0
                } else {
                    m as f64 * step + 0.0
                }
            })
            .collect();
        let (a, b) = params.beta_parameters;
        let cdf: Vec<f64> = grid.iter().map(|&x| beta_cdf_int(x, a, b)).collect();
        let beta_probs: Vec<f64> = cdf.windows(2).map(|w| w[1] - w[0]).collect();
        let no_trough_mass = (0..=n_thr)
            .map(|n| params.no_trough_prob * numpy_sum(&beta_probs[..n]))
            .collect();

        // Boltzmann pmf as scipy: (1 - exp(-λ)) / (1 - exp(-λN)) * exp(-λk).
        let lambda = params.boltzmann_parameter;
        let max_troughs = n_periods;
        let boltzmann_norm = (0..=max_troughs)
            .map(|n| (1.0 - (-lambda).exp()) / (1.0 - (-lambda * n as f64).exp()))
            .collect();
        let boltzmann_decay = (0..max_troughs)
            .map(|k| (-lambda * k as f64).exp())
            .collect();

        let bins_per_octave = (12 * per_semitone) as f64;
        let freqs = (0..n_bins)
            .map(|k| params.fmin * 2f64.powf(k as f64 / bins_per_octave))
            .collect();

        let bands = TransitionBands::new(n_bins, transition_width, params.switch_prob);
        let log_init = (1.0 / (2 * n_bins) as f64 + TINY).ln();

        let mut fingerprint = fnv1a(b"specflow-pyin", 0xcbf2_9ce4_8422_2325);
        for x in [
            params.fmin,
            params.fmax,
            params.boltzmann_parameter,
            params.resolution,
            params.max_transition_rate,
            params.switch_prob,
            params.no_trough_prob,
            sample_rate,
        ] {
            fingerprint = fnv1a(&x.to_bits().to_le_bytes(), fingerprint);
        }
        for n in [
            params.n_thresholds as u64,
            u64::from(a),
            u64::from(b),
            frame_length as u64,
            hop_length as u64,
        ] {
            fingerprint = fnv1a(&n.to_le_bytes(), fingerprint);
        }

        Ok(Self {
            params: params.clone(),
            sample_rate,
            frame_length,
            hop_length,
            min_period,
            max_period,
            acf: Autocorrelation::new(fft_len, planner),
            thresholds: grid[1..].to_vec(),
            beta_probs,
            no_trough_mass,
            boltzmann_norm,
            boltzmann_decay,
            n_pitch_bins: n_bins,
            bins_per_octave,
            freqs,
            transition_width,
            bands,
            log_init,
            fingerprint,
            avx2: Avx2::detect(),
        })
    }

    /// The parameters these tables were built from.
    pub fn params(&self) -> &PyinParams {
        &self.params
    }

    /// Sample rate in Hz.
    pub fn sample_rate(&self) -> f64 {
        self.sample_rate
    }

    /// Samples per frame.
    pub fn frame_length(&self) -> usize {
        self.frame_length
    }

    /// Samples between frames.
    pub fn hop_length(&self) -> usize {
        self.hop_length
    }

    /// Number of pitch bins; states `0..n` are voiced, `n..2n` unvoiced.
    pub fn n_pitch_bins(&self) -> usize {
        self.n_pitch_bins
    }

    /// Number of HMM states (`2 * n_pitch_bins`), the length of an observation vector.
    pub fn n_states(&self) -> usize {
        2 * self.n_pitch_bins
    }

    /// Width of librosa's triangular local transition (in pitch bins).
    pub fn transition_width(&self) -> usize {
        self.transition_width
    }

    /// Centre frequency in Hz of pitch bin `bin`: `fmin * 2^(bin / (12 * bins_per_semitone))`.
    pub fn bin_frequency(&self, bin: usize) -> f64 {
        self.freqs[bin]
    }
}
