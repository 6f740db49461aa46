//! Probabilistic YIN (pYIN) fundamental frequency tracking, following `librosa.pyin` (0.11)
//! parameter for parameter, split into a per-frame observation step and a streaming decoder.
//!
//! # Algorithm (as librosa 0.11)
//! Per frame ([`Pyin::observe`]):
//! 1. The cumulative mean normalised difference `cmnd(tau)` for `tau` in
//!    `min_period = floor(sr / fmax) ..= max_period = min(ceil(sr / fmin), frame_length - 1)`,
//!    from the linear autocorrelation of the whole frame (computed by FFT):
//!    `d(tau) = 2 (acf(0) - acf(tau)) - sum_{m < tau} x(m)^2`, except `d(1) = 2 (acf(0) - acf(1))`
//!    (librosa overwrites the first cumulative energy with 0 before it reads it), and
//!    `cmnd(tau) = d(tau) / (mean(d(1..=tau)) + tiny)`. (librosa 0.11 deprecated `win_length`;
//!    the difference uses the full frame.)
//! 2. Troughs: local minima of `cmnd` (strictly below the left neighbour, not above the right
//!    one; the first value is a trough when below the second, the last when below the one
//!    before it).
//! 3. A prior over `n_thresholds` thresholds `linspace(0, 1, n + 1)[1..]`: the probability mass
//!    of a beta distribution between consecutive thresholds. For each threshold, the troughs
//!    below it share its mass by a Boltzmann distribution over their rank (smaller periods
//!    first); when no trough is below a threshold, `no_trough_prob` times its mass goes to the
//!    global minimum trough.
//! 4. Each trough with non-zero probability becomes a candidate `f0 = sr / (period + parabolic
//!    shift)` and lands in pitch bin `round(12 * bins_per_semitone * log2(f0 / fmin))` (rounded
//!    half to even, clipped to `0..=n_pitch_bins`; a candidate clipped to `n_pitch_bins` itself
//!    is dropped, as in librosa, where it lands in the first unvoiced row, which is then
//!    overwritten; when two candidates share a bin the one with the longer period wins, as
//!    numpy's fancy assignment). `voiced_prob` is the sum of the voiced bins clipped to
//!    `[0, 1]`; each of the `n_pitch_bins` unvoiced states gets `(1 - voiced_prob) / n_pitch_bins`.
//!
//! Decoding ([`PyinDecoder`]): a hidden Markov model over `2 * n_pitch_bins` states (voiced
//! pitch bins, then unvoiced copies). The transition matrix is librosa's
//! `kron(transition_loop(2, 1 - switch_prob), transition_local(n_pitch_bins, width, "triangle"))`
//! with `width = round(max_transition_rate * 12 * hop / sr) * bins_per_semitone + 1`, the initial
//! distribution is uniform, and decoding is `librosa.sequence.viterbi` in the log domain with
//! `log(p + tiny)` for every probability (so a transition outside the band costs
//! `log(tiny) ≈ -708.4`, not minus infinity; this module keeps that, exactly, while only
//! visiting the band explicitly). Ties take the first (lowest) state, as numpy's `argmax`.
//! The log-transitions are bit-identical to librosa's (numpy's pairwise row sums included), and
//! nothing is normalised, as in librosa.
//!
//! Streaming: [`PyinDecoder`] is a fixed-lag Viterbi. Frame `t` is decided once frame `t + lag`
//! has been pushed, by backtracking from the best state at `t + lag`; at the end of a stream
//! [`PyinDecoder::finish`] backtracks all pending frames from the best final state, which is
//! exactly librosa's full backtrack when `lag` is at least the number of frames
//! ([`decode_offline`]). A lag of about 20 frames agrees with offline decoding on ~99 % of
//! frames even on hard material (noise, weak tones), and on nearly all of clean speech.
//!
//! ```ignore
//! let pyin = Pyin::new(&PyinParams::default(), 16000.0, 512, 160)?; // shared, immutable
//! let mut scratch = pyin.scratch(); // per thread
//! let mut decoder = PyinDecoder::new(&pyin, 20); // per stream
//! let mut observation = vec![0.0; pyin.n_states()];
//! for frame in frames {
//!     let voiced_prob = pyin.observe(frame, &mut scratch, &mut observation);
//!     if let Some(decision) = decoder.push(&pyin, &observation, voiced_prob) {
//!         // decision for the frame 20 frames back
//!     }
//! }
//! decoder.finish(&pyin, &mut |decision| { /* the last 20 frames */ });
//! ```
//!
//! Every computation is in `f64`. Nothing is allocated per frame: [`PyinScratch`] and the
//! decoder's ring buffers are allocated once.

use super::real_fft::{Autocorrelation, RealFftWork, fast_even_len};
use rustfft::FftPlanner;

/// `numpy.finfo(float64).tiny`: librosa adds it before every logarithm.
const TINY: f64 = f64::MIN_POSITIVE;

/// Most HMM states: back-pointers are `u16` (as librosa's).
const MAX_STATES: usize = 1 << 16;

/// Version byte of [`PyinDecoder::to_bytes`].
const STATE_VERSION: u8 = 1;

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
    /// The hop-dependent transition width is checked by [`Pyin::new`].
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
fn bins_per_semitone(params: &PyinParams) -> usize {
    (1.0 / params.resolution).ceil() as usize
}

/// `floor(12 * bins_per_semitone * log2(fmax / fmin)) + 1`.
fn n_pitch_bins(params: &PyinParams) -> usize {
    let per_octave = (12 * bins_per_semitone(params)) as f64;
    (per_octave * (params.fmax / params.fmin).log2()).floor() as usize + 1
}

/// numpy's pairwise summation of a contiguous `float64` slice (`np.sum`), bit for bit.
fn numpy_sum(a: &[f64]) -> f64 {
    fn pairwise(a: &[f64]) -> f64 {
        let n = a.len();
        if n < 8 {
            a.iter().fold(-0.0, |s, &x| s + x)
        } else if n <= 128 {
            let mut r = [0.0; 8];
            r.copy_from_slice(&a[..8]);
            let whole = n - n % 8;
            for chunk in a[8..whole].chunks_exact(8) {
                for (acc, &x) in r.iter_mut().zip(chunk) {
                    *acc += x;
                }
            }
            let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for &x in &a[whole..] {
                s += x;
            }
            s
        } else {
            let mut n2 = n / 2;
            n2 -= n2 % 8;
            pairwise(&a[..n2]) + pairwise(&a[n2..])
        }
    }
    0.0 + pairwise(a)
}

/// Regularised incomplete beta `I_x(a, b)` for positive integers: the binomial tail
/// `sum_{j=a}^{n} C(n, j) x^j (1-x)^(n-j)` with `n = a + b - 1`, summed for whichever of
/// `I_x(a, b)` and `1 - I_x(a, b) = I_{1-x}(b, a)` is the smaller, so that the upper tail rounds
/// to 1 (as scipy's) instead of oscillating around it.
fn beta_cdf_int(x: f64, a: u32, b: u32) -> f64 {
    /// `sum_{j=a}^{n} C(n, j) y^j (1-y)^(n-j)`.
    fn tail(y: f64, a: u32, n: u32) -> f64 {
        let mut coefficient = 1.0; // C(n, j), built up from j = 0
        let mut sum = 0.0;
        for j in 0..=n {
            if j > 0 {
                coefficient = coefficient * f64::from(n - j + 1) / f64::from(j);
            }
            if j >= a {
                sum += coefficient * y.powi(j as i32) * (1.0 - y).powi((n - j) as i32);
            }
        }
        sum
    }
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let n = a + b - 1;
    if x * f64::from(a + b) <= f64::from(a) {
        tail(x, a, n).min(1.0)
    } else {
        (1.0 - tail(1.0 - x, b, n)).max(0.0)
    }
}

/// `scipy.signal.windows.triang(m, sym=True)`.
fn triangle(m: usize) -> Vec<f64> {
    let half = m.div_ceil(2);
    let mut w: Vec<f64> = (1..=half)
        .map(|n| {
            if m.is_multiple_of(2) {
                (2.0 * n as f64 - 1.0) / m as f64
            } else {
                2.0 * n as f64 / (m as f64 + 1.0)
            }
        })
        .collect();
    let mirrored: Vec<f64> = if m.is_multiple_of(2) {
        w.iter().rev().copied().collect()
    } else {
        w.iter().rev().skip(1).copied().collect()
    };
    w.extend(mirrored);
    w
}

/// 64-bit FNV-1a, for the configuration fingerprint in serialised decoder state.
fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One decoded frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PitchDecision {
    /// Fundamental frequency in Hz (the centre of the decoded pitch bin), `None` when unvoiced.
    pub f0: Option<f64>,
    /// Whether the decoded state is voiced.
    pub voiced: bool,
    /// The frame's voiced probability (sum of its voiced observation probabilities).
    pub voiced_prob: f64,
}

/// Immutable pYIN tables for one `(params, sample_rate, frame_length, hop_length)`: FFT plans,
/// the threshold and trough priors, the pitch-bin frequencies and the banded log-transition
/// matrix. Build once and share (it is `Send + Sync`); per-thread buffers come from
/// [`Pyin::scratch`], per-stream state from [`PyinDecoder::new`].
pub struct Pyin {
    params: PyinParams,
    sample_rate: f64,
    frame_length: usize,
    hop_length: usize,
    min_period: usize,
    max_period: usize,
    /// The autocorrelation, zero-padded to `frame_length + max_period` or more.
    acf: Autocorrelation<f64>,
    /// `linspace(0, 1, n_thresholds + 1)[1..]`.
    thresholds: Vec<f64>,
    /// Beta mass between consecutive thresholds.
    beta_probs: Vec<f64>,
    /// `no_trough_prob * sum(beta_probs[..n])` for `n` in `0..=n_thresholds`.
    no_trough_mass: Vec<f64>,
    /// Boltzmann normalisers `(1 - e^-λ) / (1 - e^-λN)` for `N` troughs (index `N`).
    boltzmann_norm: Vec<f64>,
    /// `e^-λk` for rank `k`.
    boltzmann_decay: Vec<f64>,
    n_pitch_bins: usize,
    /// `12 * bins_per_semitone`.
    bins_per_octave: f64,
    /// Centre frequency of each pitch bin.
    freqs: Vec<f64>,
    transition_width: usize,
    /// Half-width `h` of the band: state `i` reaches `j` (within or across voicing) when
    /// `|i - j| <= h` (modulo `n_pitch_bins`).
    half_width: usize,
    /// First predecessor bin of each target bin (`max(0, j - h)`).
    band_lo: Vec<usize>,
    /// Number of predecessor bins of each target bin.
    band_len: Vec<usize>,
    /// `log(T + tiny)` for transitions within the same voicing, by target bin `j` (stride
    /// `2h + 1`), predecessor bins `band_lo[j]..`.
    log_same: Vec<f64>,
    /// The same across voicing.
    log_cross: Vec<f64>,
    /// Largest entry of each target bin's `log_same` band.
    max_same: Vec<f64>,
    /// Largest entry of each target bin's `log_cross` band.
    max_cross: Vec<f64>,
    /// `log(0 + tiny)`: every transition outside the band.
    log_floor: f64,
    /// `log(1 / n_states + tiny)`: the initial distribution.
    log_init: f64,
    fingerprint: u64,
    /// Run the Viterbi step compiled for AVX2 (same results, detected at run time).
    use_avx2: bool,
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

/// Per-thread buffers for [`Pyin::observe`], from [`Pyin::scratch`].
pub struct PyinScratch {
    acf: RealFftWork<f64>,
    /// Cumulative mean normalised difference for periods `min_period..=max_period`.
    cmnd: Vec<f64>,
    /// Trough positions (indices into `cmnd`), heights, first threshold below which each
    /// lies, and probabilities.
    trough_index: Vec<usize>,
    trough_height: Vec<f64>,
    trough_first: Vec<usize>,
    trough_prob: Vec<f64>,
    /// Troughs whose first threshold is `m`, for `m` in `0..=n_thresholds`.
    first_count: Vec<usize>,
}

impl std::fmt::Debug for PyinScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyinScratch")
            .field("acf", &self.acf)
            .field("periods", &self.cmnd.len())
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

        // transition_local(n_bins, width, window="triangle", wrap=False), row by row as librosa
        // builds it, then kron(transition_loop(2, 1 - switch_prob), ·) and log(· + tiny).
        let half_width = transition_width / 2;
        let stride = 2 * half_width + 1;
        let window = triangle(transition_width);
        let lpad = (n_bins - transition_width) / 2;
        let p_same = 1.0 - params.switch_prob;
        let p_cross = (1.0 - p_same) / 1.0; // transition_loop's (1 - p) / (n_states - 1)
        let band_lo: Vec<usize> = (0..n_bins).map(|j| j.saturating_sub(half_width)).collect();
        let band_len: Vec<usize> = (0..n_bins)
            .map(|j| (j + half_width).min(n_bins - 1) + 1 - band_lo[j])
            .collect();
        let log_floor = TINY.ln();
        let mut log_same = vec![log_floor; n_bins * stride];
        let mut log_cross = vec![log_floor; n_bins * stride];
        let mut row = vec![0.0; n_bins];
        for i in 0..n_bins {
            let shift = (n_bins / 2 + i + 1) % n_bins;
            let keep_lo = i.saturating_sub(half_width);
            let keep_hi = (i + half_width + 1).min(n_bins);
            for (j, r) in row.iter_mut().enumerate() {
                // np.roll(pad_center(window, n_bins), shift)[j], knocked out off the band.
                let p = (j + n_bins - shift) % n_bins;
                *r = if (keep_lo..keep_hi).contains(&j)
                    && (lpad..lpad + transition_width).contains(&p)
                {
                    window[p - lpad]
                } else {
                    0.0
                };
            }
            let total = numpy_sum(&row);
            for j in keep_lo..keep_hi {
                let t = row[j] / total;
                let at = j * stride + (i - band_lo[j]);
                log_same[at] = (p_same * t + TINY).ln();
                log_cross[at] = (p_cross * t + TINY).ln();
            }
        }
        let band_maxima = |table: &[f64]| -> Vec<f64> {
            (0..n_bins)
                .map(|j| {
                    table[j * stride..j * stride + band_len[j]]
                        .iter()
                        .fold(f64::NEG_INFINITY, |m, &x| m.max(x))
                })
                .collect()
        };
        let max_same = band_maxima(&log_same);
        let max_cross = band_maxima(&log_cross);
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
            half_width,
            band_lo,
            band_len,
            log_same,
            log_cross,
            max_same,
            max_cross,
            log_floor,
            log_init,
            fingerprint,
            use_avx2: avx2_available(),
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

    /// Buffers for [`Pyin::observe`]; one per thread.
    pub fn scratch(&self) -> PyinScratch {
        let n_periods = self.max_period - self.min_period + 1;
        PyinScratch {
            acf: self.acf.work(),
            cmnd: vec![0.0; n_periods],
            trough_index: Vec::with_capacity(n_periods),
            trough_height: Vec::with_capacity(n_periods),
            trough_first: Vec::with_capacity(n_periods),
            trough_prob: Vec::with_capacity(n_periods),
            first_count: vec![0; self.params.n_thresholds + 1],
        }
    }

    /// Observation probabilities of one frame: writes the `2 * n_pitch_bins` state
    /// probabilities to `out` (voiced bins, then unvoiced) and returns the frame's voiced
    /// probability. Allocation-free.
    ///
    /// # Panics
    /// When `frame.len() != frame_length`, `out.len() != n_states()` or `scratch` was made by
    /// tables of another size.
    pub fn observe(&self, frame: &[f32], scratch: &mut PyinScratch, out: &mut [f64]) -> f64 {
        assert_eq!(frame.len(), self.frame_length, "pyin frame length");
        assert_eq!(out.len(), self.n_states(), "pyin observation length");
        assert!(self.acf.fits(&scratch.acf), "pyin scratch size");
        self.difference(frame, scratch);
        self.trough_probabilities(scratch);

        let n_bins = self.n_pitch_bins;
        let (voiced, unvoiced) = out.split_at_mut(n_bins);
        voiced.fill(0.0);
        let cmnd = &scratch.cmnd;
        let last = cmnd.len() - 1;
        // Candidates in order of period: a later one overwrites an earlier one in the same bin.
        for (&index, &prob) in scratch.trough_index.iter().zip(&scratch.trough_prob) {
            if prob == 0.0 {
                continue; // np.nonzero(yin_probs) skips it
            }
            let shift = if index == 0 || index == last {
                0.0
            } else {
                let a = cmnd[index + 1] + cmnd[index - 1] - 2.0 * cmnd[index];
                let b = (cmnd[index + 1] - cmnd[index - 1]) / 2.0;
                if b.abs() >= a.abs() { 0.0 } else { -b / a }
            };
            let period = (self.min_period + index) as f64 + shift;
            let f0 = self.sample_rate / period;
            let bin = (self.bins_per_octave * (f0 / self.params.fmin).log2()).round_ties_even();
            let bin = bin.clamp(0.0, n_bins as f64) as usize;
            if bin < n_bins {
                voiced[bin] = prob;
            }
        }
        // np.sum over axis 0 of an (n_bins, frames) array adds the rows in order.
        let total = voiced.iter().fold(0.0, |s, &p| s + p);
        let voiced_prob = total.clamp(0.0, 1.0);
        unvoiced.fill((1.0 - voiced_prob) / n_bins as f64);
        voiced_prob
    }

    /// `scratch.cmnd` := cumulative mean normalised difference of `frame`.
    fn difference(&self, frame: &[f32], scratch: &mut PyinScratch) {
        let PyinScratch { acf, cmnd, .. } = scratch;
        // Autocorrelation by FFT: acf[tau] = sum_j x[j] x[j + tau], times the transform length.
        let acf = self.acf.compute(frame, acf);
        let scale = 1.0 / self.acf.transform_len() as f64;
        let acf0 = acf[0] * scale;
        let mut cumulative = 0.0;
        // sum_{m < tau} x(m)^2, except that librosa zeroes the first cumulative energy before
        // reading it: d(1) = 2 (acf(0) - acf(1)) has no energy term.
        let mut energy = f64::from(frame[0]) * f64::from(frame[0]);
        for tau in 1..=self.max_period {
            let lagged = 2.0 * (acf0 - acf[tau] * scale);
            let d = if tau == 1 {
                lagged
            } else {
                let x = f64::from(frame[tau - 1]);
                energy += x * x;
                lagged - energy
            };
            cumulative += d;
            if tau >= self.min_period {
                let mean = cumulative / tau as f64;
                cmnd[tau - self.min_period] = d / (mean + TINY);
            }
        }
    }

    /// Troughs of `scratch.cmnd` and their probabilities (steps 2, 3 and 5 of librosa).
    fn trough_probabilities(&self, scratch: &mut PyinScratch) {
        let PyinScratch {
            cmnd,
            trough_index,
            trough_height,
            trough_first,
            trough_prob,
            first_count,
            ..
        } = scratch;
        trough_index.clear();
        trough_height.clear();
        trough_first.clear();
        trough_prob.clear();
        let n = cmnd.len();
        for i in 0..n {
            let x = cmnd[i];
            let is_trough = if i == 0 {
                x < cmnd[1]
            } else if i == n - 1 {
                x < cmnd[n - 2]
            } else {
                x < cmnd[i - 1] && x <= cmnd[i + 1]
            };
            if is_trough {
                trough_index.push(i);
                trough_height.push(x);
                // Number of thresholds the trough is not below: the first one it is below.
                trough_first.push(self.thresholds.partition_point(|&t| t <= x || x.is_nan()));
                trough_prob.push(0.0);
            }
        }
        if trough_index.is_empty() {
            return;
        }

        // For each threshold m, the troughs below it share beta_probs[m] by the Boltzmann pmf of
        // their rank among those troughs.
        first_count.fill(0);
        for &f in trough_first.iter() {
            first_count[f] += 1;
        }
        let mut below = 0;
        for (m, (&count, &mass)) in first_count.iter().zip(&self.beta_probs).enumerate() {
            below += count;
            if below == 0 {
                continue;
            }
            let norm = self.boltzmann_norm[below];
            let mut rank = 0;
            for (p, &f) in trough_prob.iter_mut().zip(trough_first.iter()) {
                if f <= m {
                    *p += norm * self.boltzmann_decay[rank] * mass;
                    rank += 1;
                }
            }
        }

        // The global minimum (first one) gets no_trough_prob of the mass of every threshold it
        // is not below.
        let mut global_min = 0;
        for (i, &h) in trough_height.iter().enumerate() {
            if h < trough_height[global_min] {
                global_min = i;
            }
        }
        trough_prob[global_min] += self.no_trough_mass[trough_first[global_min]];
    }
}

/// Fixed-lag Viterbi decoder for one stream (see the module documentation).
///
/// Holds the log-probability of the best path into every state after the last pushed frame,
/// a ring of `lag` back-pointer rows (`u16` state indices, `2 * lag * n_states` bytes) and the
/// voiced probabilities of the undecided frames; plus work buffers. Everything is allocated in
/// [`PyinDecoder::new`]. As in librosa the log-probabilities are never renormalised: they fall
/// by a few nats per frame, which `f64` absorbs for years of audio (after 10^8 frames the
/// resolution is still ~10^-8 nats).
#[derive(Clone)]
pub struct PyinDecoder {
    n_states: usize,
    lag: usize,
    fingerprint: u64,
    /// Frames pushed since the start (or the last [`PyinDecoder::finish`]).
    frames: u64,
    /// Best-path log-probability per state after the last frame.
    value: Vec<f64>,
    /// Back-pointers of frame `f` (>= 1) at row `f % lag`.
    pointers: Vec<u16>,
    /// Voiced probability of frame `f` at `f % (lag + 1)`.
    voiced_probs: Vec<f64>,
    // Work buffers (not part of the state).
    next: Vec<f64>,
    log_obs: Vec<f64>,
    /// `value + log(tiny)`: the score of any predecessor outside the band.
    floor_score: Vec<f64>,
    /// First argmax of `floor_score` over `[block start, block start + i)`, per block
    /// (`n_pitch_bins + 1` entries per block; `u32::MAX` when empty).
    prefix_best: Vec<u32>,
    /// First argmax of `floor_score` over `[block start + i, block end)`, per block.
    suffix_best: Vec<u32>,
    /// Largest value in the band of each target (voiced block, then unvoiced).
    band_top: Vec<f64>,
    /// Work buffers of [`window_max`].
    to_block_end: Vec<f64>,
    from_block_start: Vec<f64>,
    /// States of the pending frames during [`PyinDecoder::finish`].
    path: Vec<u16>,
}

impl std::fmt::Debug for PyinDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyinDecoder")
            .field("n_states", &self.n_states)
            .field("lag", &self.lag)
            .field("frames", &self.frames)
            .field("pending", &self.pending())
            .finish()
    }
}

/// Best predecessor so far: numpy's first argmax, i.e. the highest score and, among equal
/// scores, the lowest state (so candidates may be offered in any order).
#[derive(Clone, Copy)]
struct Best {
    score: f64,
    state: usize,
}

impl Best {
    #[inline(always)]
    fn offer(&mut self, score: f64, state: usize) {
        if score > self.score || (score == self.score && state < self.state) {
            self.score = score;
            self.state = state;
        }
    }

    /// Offers the best of `values[r] + trans[r]` (state `first + r`), unless `bound` (an upper
    /// bound of those sums) shows that it cannot win.
    #[inline(always)]
    fn offer_band(&mut self, values: &[f64], trans: &[f64], first: usize, bound: f64) {
        if bound < self.score {
            return;
        }
        let top = band_max(values, trans);
        if top < self.score {
            return;
        }
        self.offer(top, first + first_equal(values, trans, top));
    }
}

/// `max_r (values[r] + trans[r])`, in four independent lanes (vectorisable).
#[inline(always)]
fn band_max(values: &[f64], trans: &[f64]) -> f64 {
    let mut lanes = [f64::NEG_INFINITY; 4];
    let mut v4 = values.chunks_exact(4);
    let mut t4 = trans.chunks_exact(4);
    for (v, t) in (&mut v4).zip(&mut t4) {
        for lane in 0..4 {
            let s = v[lane] + t[lane];
            lanes[lane] = if s > lanes[lane] { s } else { lanes[lane] };
        }
    }
    let mut top = lanes[0].max(lanes[1]).max(lanes[2].max(lanes[3]));
    for (&v, &t) in v4.remainder().iter().zip(t4.remainder()) {
        let s = v + t;
        top = if s > top { s } else { top };
    }
    top
}

/// The first `r` with `values[r] + trans[r] == top` (which must exist), testing four at a time.
#[inline(always)]
fn first_equal(values: &[f64], trans: &[f64], top: f64) -> usize {
    let mut v4 = values.chunks_exact(4);
    let mut t4 = trans.chunks_exact(4);
    let mut base = 0;
    for (v, t) in (&mut v4).zip(&mut t4) {
        let hits = u32::from(v[0] + t[0] == top)
            | u32::from(v[1] + t[1] == top) << 1
            | u32::from(v[2] + t[2] == top) << 2
            | u32::from(v[3] + t[3] == top) << 3;
        if hits != 0 {
            return base + hits.trailing_zeros() as usize;
        }
        base += 4;
    }
    let rest = v4.remainder().iter().zip(t4.remainder());
    base + rest.take_while(|&(&v, &t)| v + t != top).count()
}

/// An upper bound of `max(values[lo[j]..lo[j] + len[j]])` for windows of at most `width`
/// entries (van Herk / Gil-Werman, branch-free): with blocks of `width` entries, the maximum from
/// the window start to the end of its block and from the start of the block of the window end
/// to that end. Exact when the window spans two blocks or starts a block; otherwise it may
/// include a few entries after the window, which keeps it an upper bound.
#[inline(always)]
fn window_max(
    values: &[f64],
    lo: &[usize],
    len: &[usize],
    width: usize,
    [to_end, from_start]: [&mut [f64]; 2],
    out: &mut [f64],
) {
    for ((v, e), s) in values
        .chunks(width)
        .zip(to_end.chunks_mut(width))
        .zip(from_start.chunks_mut(width))
    {
        let mut m = f64::NEG_INFINITY;
        for (&x, y) in v.iter().zip(s.iter_mut()) {
            m = if x > m { x } else { m };
            *y = m;
        }
        let mut m = f64::NEG_INFINITY;
        for (&x, y) in v.iter().zip(e.iter_mut()).rev() {
            m = if x > m { x } else { m };
            *y = m;
        }
    }
    for ((o, &lo), &len) in out.iter_mut().zip(lo).zip(len) {
        let (a, b) = (to_end[lo], from_start[lo + len - 1]);
        *o = if a > b { a } else { b };
    }
}

impl PyinDecoder {
    /// A decoder for streams observed with `pyin`, deciding each frame `lag` frames late.
    /// `lag` = 0 decides each frame from its own best state (no smoothing).
    pub fn new(pyin: &Pyin, lag: usize) -> Self {
        let n_states = pyin.n_states();
        let n_bins = pyin.n_pitch_bins;
        Self {
            n_states,
            lag,
            fingerprint: pyin.fingerprint,
            frames: 0,
            value: vec![0.0; n_states],
            pointers: vec![0; lag * n_states],
            voiced_probs: vec![0.0; lag + 1],
            next: vec![0.0; n_states],
            log_obs: vec![0.0; n_states],
            floor_score: vec![0.0; n_states],
            prefix_best: vec![u32::MAX; 2 * (n_bins + 1)],
            suffix_best: vec![u32::MAX; 2 * (n_bins + 1)],
            band_top: vec![0.0; n_states],
            to_block_end: vec![0.0; n_bins],
            from_block_start: vec![0.0; n_bins],
            path: vec![0; lag],
        }
    }

    /// The decision lag in frames.
    pub fn lag(&self) -> usize {
        self.lag
    }

    /// Frames pushed since the start of the stream.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Frames pushed but not yet decided (`min(frames, lag)`).
    pub fn pending(&self) -> usize {
        self.frames.min(self.lag as u64) as usize
    }

    /// Heap bytes held (state and work buffers).
    pub fn heap_bytes(&self) -> usize {
        (self.value.capacity()
            + self.voiced_probs.capacity()
            + self.next.capacity()
            + self.log_obs.capacity()
            + self.floor_score.capacity()
            + self.band_top.capacity()
            + self.to_block_end.capacity()
            + self.from_block_start.capacity())
            * 8
            + (self.prefix_best.capacity() + self.suffix_best.capacity()) * 4
            + (self.pointers.capacity() + self.path.capacity()) * 2
    }

    /// Forget the stream (as a new decoder with the same lag).
    pub fn reset(&mut self) {
        self.frames = 0;
    }

    /// Adds one frame's observation (from [`Pyin::observe`]) and returns the decision for
    /// frame `t - lag`, where `t` is this frame's index, once there is one. Allocation-free.
    ///
    /// # Panics
    /// When `pyin` is not the configuration the decoder was made for, or
    /// `observation.len() != n_states`.
    pub fn push(
        &mut self,
        pyin: &Pyin,
        observation: &[f64],
        voiced_prob: f64,
    ) -> Option<PitchDecision> {
        assert_eq!(
            self.fingerprint, pyin.fingerprint,
            "pyin decoder configuration"
        );
        assert_eq!(observation.len(), self.n_states, "pyin observation length");
        // log(p + tiny), reusing the last logarithm for runs of equal probabilities (the
        // unvoiced block and the empty voiced bins).
        let mut last: Option<(u64, f64)> = None;
        for (l, &p) in self.log_obs.iter_mut().zip(observation) {
            *l = match last {
                Some((bits, log)) if bits == p.to_bits() => log,
                _ => {
                    let log = (p + TINY).ln();
                    last = Some((p.to_bits(), log));
                    log
                }
            };
        }
        if self.frames == 0 {
            for (v, &l) in self.value.iter_mut().zip(&self.log_obs) {
                *v = l + pyin.log_init;
            }
        } else {
            self.step(pyin);
        }
        let frame = self.frames;
        self.voiced_probs[(frame % (self.lag as u64 + 1)) as usize] = voiced_prob;
        self.frames += 1;
        if frame < self.lag as u64 {
            return None;
        }
        // Backtrack `lag` frames from the best current state.
        let mut state = first_argmax(&self.value);
        for f in (frame + 1 - self.lag as u64..=frame).rev() {
            let row = (f % self.lag as u64) as usize * self.n_states;
            state = usize::from(self.pointers[row + state]);
        }
        let decided = frame - self.lag as u64;
        Some(self.decision(pyin, state, decided))
    }

    /// Decides every pending frame by backtracking from the best final state (librosa's
    /// backtrack), calls `out` with each decision in frame order, and resets the decoder for
    /// a new stream. Allocation-free.
    pub fn finish(&mut self, pyin: &Pyin, out: &mut impl FnMut(PitchDecision)) {
        assert_eq!(
            self.fingerprint, pyin.fingerprint,
            "pyin decoder configuration"
        );
        let pending = self.pending();
        if pending > 0 {
            let last = self.frames - 1;
            let mut state = first_argmax(&self.value);
            self.path[pending - 1] = state as u16;
            for k in (0..pending - 1).rev() {
                // Frame last - (pending - 1 - k) from the pointers of the frame after it.
                let f = last - (pending - 2 - k) as u64;
                let row = (f % self.lag as u64) as usize * self.n_states;
                state = usize::from(self.pointers[row + state]);
                self.path[k] = state as u16;
            }
            let first = self.frames - pending as u64;
            for k in 0..pending {
                let decision = self.decision(pyin, usize::from(self.path[k]), first + k as u64);
                out(decision);
            }
        }
        self.reset();
    }

    /// The decision for `frame` in `state`.
    fn decision(&self, pyin: &Pyin, state: usize, frame: u64) -> PitchDecision {
        let voiced = state < pyin.n_pitch_bins;
        PitchDecision {
            f0: voiced.then(|| pyin.freqs[state]),
            voiced,
            voiced_prob: self.voiced_probs[(frame % (self.lag as u64 + 1)) as usize],
        }
    }

    /// One Viterbi step (see [`PyinDecoder::step_portable`]).
    fn step(&mut self, pyin: &Pyin) {
        #[cfg(target_arch = "x86_64")]
        if pyin.use_avx2 {
            // SAFETY: `use_avx2` is only true when the CPU reports AVX2 (`avx2_available`).
            unsafe { self.step_avx2(pyin) };
            return;
        }
        self.step_portable(pyin);
    }

    /// [`PyinDecoder::step_portable`] compiled with AVX2 enabled. No FMA (LLVM does not fuse
    /// without fast-math) and a fixed order of operations: bit-identical to the portable build.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn step_avx2(&mut self, pyin: &Pyin) {
        self.step_portable(pyin);
    }

    /// One Viterbi step: `value := log_obs + max_k (value[k] + log_trans[k, ·])`, storing the
    /// back-pointers of the new frame.
    ///
    /// For target bin `j` (voiced or unvoiced), the predecessors are the voiced and the unvoiced
    /// bins of the band around `j` (log-transition tables `log_same` / `log_cross`), and every
    /// other state at the constant `log(tiny)`: the best of those comes from prefix and suffix
    /// argmaxes within each voicing block. A band is skipped when an upper bound of its scores
    /// (its largest value plus its largest log-transition) is below the best candidate found;
    /// rounding is monotone, so the bound holds in floating point and skipping is exact.
    #[inline(always)]
    fn step_portable(&mut self, pyin: &Pyin) {
        let n = pyin.n_pitch_bins;
        let n1 = n + 1;
        for (s, &v) in self.floor_score.iter_mut().zip(&self.value) {
            *s = v + pyin.log_floor;
        }
        for block in 0..2 {
            let states = block * n..block * n + n;
            // Prefix and suffix first-argmax of the floor scores within the block.
            let scores = &self.floor_score[states.clone()];
            let prefix = &mut self.prefix_best[block * n1..block * n1 + n1];
            prefix[0] = u32::MAX;
            let mut best = (f64::NEG_INFINITY, u32::MAX);
            for (i, &s) in scores.iter().enumerate() {
                if s > best.0 {
                    best = (s, (block * n + i) as u32);
                }
                prefix[i + 1] = best.1;
            }
            let suffix = &mut self.suffix_best[block * n1..block * n1 + n1];
            suffix[n] = u32::MAX;
            let mut best = (f64::NEG_INFINITY, u32::MAX);
            for (i, &s) in scores.iter().enumerate().rev() {
                if s >= best.0 {
                    best = (s, (block * n + i) as u32);
                }
                suffix[i] = best.1;
            }
            // Largest value in each target's band.
            window_max(
                &self.value[states.clone()],
                &pyin.band_lo,
                &pyin.band_len,
                2 * pyin.half_width + 1,
                [&mut self.to_block_end, &mut self.from_block_start],
                &mut self.band_top[states],
            );
        }

        let stride = 2 * pyin.half_width + 1;
        let row = if self.lag > 0 {
            (self.frames % self.lag as u64) as usize * self.n_states
        } else {
            0
        };
        let keep_pointers = self.lag > 0;
        let scores = &self.floor_score;
        let floor_top = scores
            .iter()
            .fold(f64::NEG_INFINITY, |m, &s| if s > m { s } else { m });
        let floor = |k: u32, best: &mut Best| {
            if k != u32::MAX {
                best.offer(scores[k as usize], k as usize);
            }
        };
        for j in 0..n {
            let lo = pyin.band_lo[j];
            let len = pyin.band_len[j];
            let same = &pyin.log_same[j * stride..j * stride + len];
            let cross = &pyin.log_cross[j * stride..j * stride + len];
            let voiced = &self.value[lo..lo + len];
            let unvoiced = &self.value[n + lo..n + lo + len];
            let (top_v, top_u) = (self.band_top[j], self.band_top[n + j]);
            let (max_same, max_cross) = (pyin.max_same[j], pyin.max_cross[j]);
            for (target, from_voiced, from_unvoiced, bound_v, bound_u) in [
                (j, same, cross, top_v + max_same, top_u + max_cross),
                (n + j, cross, same, top_v + max_cross, top_u + max_same),
            ] {
                let mut best = Best {
                    score: f64::NEG_INFINITY,
                    state: usize::MAX,
                };
                // The more promising band first, so that the other one is often skipped.
                if bound_v >= bound_u {
                    best.offer_band(voiced, from_voiced, lo, bound_v);
                    best.offer_band(unvoiced, from_unvoiced, n + lo, bound_u);
                } else {
                    best.offer_band(unvoiced, from_unvoiced, n + lo, bound_u);
                    best.offer_band(voiced, from_voiced, lo, bound_v);
                }
                // States outside the band can only win when no band state beats all of them.
                if best.score <= floor_top {
                    floor(self.prefix_best[lo], &mut best);
                    floor(self.suffix_best[lo + len], &mut best);
                    floor(self.prefix_best[n1 + lo], &mut best);
                    floor(self.suffix_best[n1 + lo + len], &mut best);
                }
                self.next[target] = self.log_obs[target] + best.score;
                if keep_pointers {
                    self.pointers[row + target] = best.state as u16;
                }
            }
        }
        std::mem::swap(&mut self.value, &mut self.next);
    }

    /// Exact little-endian serialisation of the stream state (not the work buffers):
    /// version byte, configuration fingerprint, `n_states` (u32), `lag` (u32), `frames` (u64),
    /// then when `frames > 0` the `n_states` best-path log-probabilities (f64 bits), the
    /// `min(frames, lag) - 1` back-pointer rows still needed (u16, oldest first) and the
    /// `min(frames, lag)` pending voiced probabilities (f64 bits, oldest first).
    pub fn to_bytes(&self) -> Vec<u8> {
        let pending = self.pending();
        let rows = pending.saturating_sub(1);
        let mut bytes =
            Vec::with_capacity(25 + 8 * self.n_states + 2 * rows * self.n_states + 8 * pending);
        bytes.push(STATE_VERSION);
        bytes.extend_from_slice(&self.fingerprint.to_le_bytes());
        bytes.extend_from_slice(&(self.n_states as u32).to_le_bytes());
        bytes.extend_from_slice(&(self.lag as u32).to_le_bytes());
        bytes.extend_from_slice(&self.frames.to_le_bytes());
        if self.frames == 0 {
            return bytes;
        }
        for v in &self.value {
            bytes.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        for f in self.frames - rows as u64..self.frames {
            let row = (f % self.lag as u64) as usize * self.n_states;
            for p in &self.pointers[row..row + self.n_states] {
                bytes.extend_from_slice(&p.to_le_bytes());
            }
        }
        for f in self.frames - pending as u64..self.frames {
            let v = self.voiced_probs[(f % (self.lag as u64 + 1)) as usize];
            bytes.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        bytes
    }

    /// Restores a decoder saved by [`PyinDecoder::to_bytes`] under the same `pyin`
    /// configuration; it continues bit for bit as the saved one would have.
    pub fn from_bytes(pyin: &Pyin, bytes: &[u8]) -> Result<Self, String> {
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.take::<1>()?[0];
        if version != STATE_VERSION {
            return Err(format!(
                "pyin decoder state version {version}, expected {STATE_VERSION}"
            ));
        }
        let fingerprint = u64::from_le_bytes(reader.take()?);
        if fingerprint != pyin.fingerprint {
            return Err("pyin decoder state was saved under another pyin configuration".into());
        }
        let n_states = u32::from_le_bytes(reader.take()?) as usize;
        if n_states != pyin.n_states() {
            return Err(format!(
                "pyin decoder state has {n_states} states, the configuration {}",
                pyin.n_states()
            ));
        }
        let lag = u32::from_le_bytes(reader.take()?) as usize;
        let frames = u64::from_le_bytes(reader.take()?);
        let pending = frames.min(lag as u64) as usize;
        let rows = pending.saturating_sub(1);
        let expected = 25
            + if frames > 0 {
                8 * n_states + 2 * rows * n_states + 8 * pending
            } else {
                0
            };
        if bytes.len() != expected {
            return Err(format!(
                "pyin decoder state is {} bytes, expected {expected}",
                bytes.len()
            ));
        }
        let mut decoder = Self::new(pyin, lag);
        decoder.frames = frames;
        if frames == 0 {
            return Ok(decoder);
        }
        for v in decoder.value.iter_mut() {
            *v = f64::from_bits(u64::from_le_bytes(reader.take()?));
        }
        for f in frames - rows as u64..frames {
            let row = (f % lag as u64) as usize * n_states;
            for p in &mut decoder.pointers[row..row + n_states] {
                *p = u16::from_le_bytes(reader.take()?);
                if usize::from(*p) >= n_states {
                    return Err(format!("pyin decoder state has back-pointer {p}"));
                }
            }
        }
        for f in frames - pending as u64..frames {
            let slot = (f % (lag as u64 + 1)) as usize;
            decoder.voiced_probs[slot] = f64::from_bits(u64::from_le_bytes(reader.take()?));
        }
        Ok(decoder)
    }
}

/// Little-endian field reader for [`PyinDecoder::from_bytes`].
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.at + N;
        let field = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| "pyin decoder state is truncated".to_string())?;
        self.at = end;
        Ok(field.try_into().expect("slice of length N"))
    }
}

/// Whether the CPU has AVX2 (for [`PyinDecoder`]'s step, compiled twice).
fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Index of the first maximum (numpy's `argmax`).
fn first_argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Full (offline) Viterbi over a whole signal, as `librosa.pyin`: `observations` holds
/// `n_states` probabilities per frame (frame after frame), `voiced_probs` one value per frame.
/// Keeps `frames x n_states` back-pointers (2 bytes each); meant for tests and offline tools.
pub fn decode_offline(
    pyin: &Pyin,
    observations: &[f64],
    voiced_probs: &[f64],
) -> Vec<PitchDecision> {
    let n_states = pyin.n_states();
    assert_eq!(
        observations.len(),
        voiced_probs.len() * n_states,
        "pyin observations"
    );
    let mut decoder = PyinDecoder::new(pyin, voiced_probs.len());
    let mut decisions = Vec::with_capacity(voiced_probs.len());
    for (observation, &vp) in observations.chunks_exact(n_states).zip(voiced_probs) {
        let early = decoder.push(pyin, observation, vp);
        debug_assert!(early.is_none());
    }
    decoder.finish(pyin, &mut |d| decisions.push(d));
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    const SR: f64 = 16000.0;

    fn pyin() -> Pyin {
        Pyin::new(&PyinParams::default(), SR, 512, 160).expect("valid parameters")
    }

    /// A test signal: silence, a 220 Hz tone gliding to 330 Hz, silence, noise, a 440 Hz tone.
    fn signal() -> Vec<f32> {
        let mut state = 0x1234_5678_u32;
        let mut noise = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            f64::from(state) / f64::from(u32::MAX) - 0.5
        };
        let mut phase = 0.0;
        (0..24000)
            .map(|i| {
                let t = i as f64 / SR;
                let x = match i {
                    0..3000 => 0.0,
                    3000..11000 => {
                        let f = 220.0 + 110.0 * (i - 3000) as f64 / 8000.0;
                        phase += 2.0 * std::f64::consts::PI * f / SR;
                        0.5 * phase.sin()
                    }
                    11000..14000 => 0.0,
                    14000..17000 => 0.3 * noise(),
                    _ => 0.4 * (2.0 * std::f64::consts::PI * 440.0 * t).sin(),
                };
                x as f32
            })
            .collect()
    }

    /// Observations and voiced probabilities of every full frame of `samples`.
    fn observe_all(pyin: &Pyin, samples: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let mut scratch = pyin.scratch();
        let n = pyin.n_states();
        let frames = (samples.len() - pyin.frame_length()) / pyin.hop_length() + 1;
        let mut obs = vec![0.0; frames * n];
        let mut vps = Vec::with_capacity(frames);
        for (k, out) in obs.chunks_exact_mut(n).enumerate() {
            let start = k * pyin.hop_length();
            let frame = &samples[start..start + pyin.frame_length()];
            vps.push(pyin.observe(frame, &mut scratch, out));
        }
        (obs, vps)
    }

    /// librosa's `viterbi` with the dense `n_states x n_states` log-transition matrix (as
    /// `log(T + tiny)` from the band tables): the value and back-pointer of every state at
    /// every frame.
    fn dense_viterbi(pyin: &Pyin, obs: &[f64]) -> (Vec<f64>, Vec<usize>) {
        let n = pyin.n_pitch_bins;
        let ns = 2 * n;
        let stride = 2 * pyin.half_width + 1;
        let mut log_trans = vec![pyin.log_floor; ns * ns];
        for j in 0..n {
            for r in 0..pyin.band_len[j] {
                let i = pyin.band_lo[j] + r;
                let (same, cross) = (
                    pyin.log_same[j * stride + r],
                    pyin.log_cross[j * stride + r],
                );
                log_trans[i * ns + j] = same;
                log_trans[(n + i) * ns + n + j] = same;
                log_trans[i * ns + n + j] = cross;
                log_trans[(n + i) * ns + j] = cross;
            }
        }
        let frames = obs.len() / ns;
        let log_prob: Vec<f64> = obs.iter().map(|&p| (p + TINY).ln()).collect();
        let mut value = vec![0.0; frames * ns];
        let mut ptr = vec![0usize; frames * ns];
        for (v, &l) in value.iter_mut().zip(&log_prob[..ns]) {
            *v = l + pyin.log_init;
        }
        for t in 1..frames {
            for j in 0..ns {
                let (mut best, mut best_score) = (0, f64::NEG_INFINITY);
                for k in 0..ns {
                    let s = value[(t - 1) * ns + k] + log_trans[k * ns + j];
                    if s > best_score {
                        (best, best_score) = (k, s);
                    }
                }
                ptr[t * ns + j] = best;
                value[t * ns + j] = log_prob[t * ns + j] + best_score;
            }
        }
        (value, ptr)
    }

    /// Banded decoding equals dense decoding bit for bit: every value and every back-pointer
    /// of every frame, then the decisions.
    fn assert_banded_equals_dense(pyin: &Pyin, samples: &[f32], every: usize) -> usize {
        let (obs, vps) = observe_all(pyin, samples);
        let ns = pyin.n_states();
        let frames: Vec<usize> = (0..vps.len()).step_by(every).collect();
        let obs: Vec<f64> = frames
            .iter()
            .flat_map(|&k| obs[k * ns..(k + 1) * ns].iter().copied())
            .collect();
        let vps: Vec<f64> = frames.iter().map(|&k| vps[k]).collect();
        let (value, ptr) = dense_viterbi(pyin, &obs);
        let mut decoder = PyinDecoder::new(pyin, vps.len());
        let mut out_of_band = 0;
        let n = pyin.n_pitch_bins;
        for (t, (o, &vp)) in obs.chunks_exact(ns).zip(&vps).enumerate() {
            assert!(decoder.push(pyin, o, vp).is_none());
            for s in 0..ns {
                assert_eq!(
                    decoder.value[s].to_bits(),
                    value[t * ns + s].to_bits(),
                    "frame {t} state {s}"
                );
                if t > 0 {
                    let p = usize::from(decoder.pointers[t * ns + s]);
                    assert_eq!(p, ptr[t * ns + s], "frame {t} state {s}");
                    out_of_band += usize::from((p % n).abs_diff(s % n) > pyin.half_width);
                }
            }
        }
        let mut decisions = Vec::new();
        decoder.finish(pyin, &mut |d| decisions.push(d));
        let mut state = first_argmax(&value[(vps.len() - 1) * ns..]);
        for t in (0..vps.len()).rev() {
            let voiced = state < n;
            assert_eq!(decisions[t].voiced, voiced, "frame {t}");
            assert_eq!(
                decisions[t].f0,
                voiced.then(|| pyin.bin_frequency(state)),
                "frame {t}"
            );
            if t > 0 {
                state = ptr[t * ns + state];
            }
        }
        out_of_band
    }

    #[test]
    fn defaults_match_librosa() {
        let p = PyinParams::default();
        assert_eq!(p.n_thresholds, 100);
        assert_eq!(p.beta_parameters, (2, 18));
        assert!(p.validate(SR, 512).is_empty());
        let pyin = pyin();
        assert_eq!(pyin.n_pitch_bins(), 602);
        assert_eq!(pyin.transition_width(), 41);
        assert!((pyin.beta_probs.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // As scipy's: no negative mass, and the CDF reaches exactly 1 from threshold 0.91 on.
        assert!(pyin.beta_probs.iter().all(|&p| p >= 0.0));
        assert_eq!(pyin.beta_probs.iter().filter(|&&p| p == 0.0).count(), 10);
        // scipy.stats.beta.cdf(0.05, 2, 18) and (0.37, 2, 18)
        assert!((beta_cdf_int(0.05, 2, 18) - 0.24529279492938452).abs() < 1e-15);
        assert!((beta_cdf_int(0.37, 2, 18) - 0.9981277723286026).abs() < 1e-15);
        assert_eq!(pyin.log_floor, -708.3964185322641);
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Pyin>();
        send_sync::<PyinDecoder>();
    }

    #[test]
    fn validate_lists_every_problem() {
        let p = PyinParams {
            fmin: 3000.0,
            fmax: 2000.0,
            switch_prob: 1.0,
            n_thresholds: 0,
            ..PyinParams::default()
        };
        let problems = p.validate(SR, 512);
        assert_eq!(problems.len(), 3, "{problems:?}");
        let p = PyinParams {
            fmin: 20.0,
            fmax: 9000.0,
            ..PyinParams::default()
        };
        let problems = p.validate(SR, 512);
        assert_eq!(problems.len(), 2, "{problems:?}"); // Nyquist and frame too short
        assert!(Pyin::new(&PyinParams::default(), SR, 512, 0).is_err());
    }

    #[test]
    fn triangle_and_pairwise_sum_as_numpy() {
        assert_eq!(triangle(4), vec![0.25, 0.75, 0.75, 0.25]);
        assert_eq!(triangle(3), vec![0.5, 1.0, 0.5]);
        // np.sum of the same values (a plain left-to-right sum differs in the last bits).
        let a: Vec<f64> = (0..300).map(|i| 1.0 / (i as f64 + 1.0)).collect();
        assert_eq!(numpy_sum(&a), 6.282663880299504);
        let b: Vec<f64> = (0..602)
            .map(|i| ((i * 7919) % 1000) as f64 / 997.0)
            .collect();
        assert_eq!(numpy_sum(&b), 301.9247743229689);
    }

    #[test]
    fn sine_is_voiced_at_its_pitch() {
        let pyin = pyin();
        let samples: Vec<f32> = (0..16000)
            .map(|i| (0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / SR).sin()) as f32)
            .collect();
        let (obs, vps) = observe_all(&pyin, &samples);
        // librosa.pyin gives 0.89114449 for every frame of this signal.
        assert!(
            vps.iter().all(|&v| (v - 0.891_144_49).abs() < 1e-6),
            "{vps:?}"
        );
        for d in decode_offline(&pyin, &obs, &vps) {
            assert!(d.voiced);
            let f0 = d.f0.expect("voiced");
            assert!((f0 / 440.0 - 1.0).abs() < 0.01, "{f0}");
        }
    }

    #[test]
    fn silence_is_unvoiced() {
        let pyin = pyin();
        let (obs, vps) = observe_all(&pyin, &vec![0.0; 8000]);
        assert!(vps.iter().all(|&v| v == 0.0));
        let decisions = decode_offline(&pyin, &obs, &vps);
        assert_eq!(decisions.len(), vps.len());
        assert!(decisions.iter().all(|d| !d.voiced && d.f0.is_none()));
    }

    #[test]
    fn banded_viterbi_equals_dense_viterbi() {
        // The test signal plus a 2 kHz tone (period 8 samples: its voiced probability is 1, so
        // the unvoiced states fall to log(tiny) and out-of-band transitions win for some states).
        let mut samples = signal();
        samples.extend(
            (0..6000).map(|i| {
                (0.5 * (2.0 * std::f64::consts::PI * 2000.0 * i as f64 / SR).sin()) as f32
            }),
        );
        // Every 4th frame keeps the dense reference affordable in unoptimised builds.
        let out_of_band = assert_banded_equals_dense(&pyin(), &samples, 4);
        assert!(out_of_band > 0, "out-of-band transitions not exercised");
        // An even transition width (5 bins per semitone, 3 semitones per hop: width 16), whose
        // triangle is asymmetric.
        let params = PyinParams {
            resolution: 0.2,
            ..PyinParams::default()
        };
        let even = Pyin::new(&params, SR, 512, 128).expect("valid parameters");
        assert_eq!(even.transition_width(), 16);
        assert_banded_equals_dense(&even, &samples, 5);
    }

    #[test]
    fn avx2_and_portable_steps_agree() {
        let fast = pyin();
        let mut portable = pyin();
        portable.use_avx2 = false;
        let (obs, vps) = observe_all(&fast, &signal());
        let n = fast.n_states();
        let mut a = PyinDecoder::new(&fast, 8);
        let mut b = PyinDecoder::new(&portable, 8);
        for (o, &vp) in obs.chunks_exact(n).zip(&vps) {
            assert_eq!(a.push(&fast, o, vp), b.push(&portable, o, vp));
            assert_eq!(a.to_bytes(), b.to_bytes());
        }
    }

    #[test]
    fn difference_as_librosa() {
        // Direct O(n^2) evaluation of librosa's cumulative mean normalised difference, including
        // its d(1) without energy term.
        let pyin = pyin();
        let samples = signal();
        let mut scratch = pyin.scratch();
        let mut out = vec![0.0; pyin.n_states()];
        for start in [3000, 14000, 20000] {
            let frame = &samples[start..start + 512];
            pyin.observe(frame, &mut scratch, &mut out);
            let x: Vec<f64> = frame.iter().map(|&v| f64::from(v)).collect();
            let acf = |tau: usize| (0..512 - tau).map(|m| x[m] * x[m + tau]).sum::<f64>();
            let mut cumulative = 0.0;
            for tau in 1..=pyin.max_period {
                let energy = if tau == 1 {
                    0.0
                } else {
                    x[..tau].iter().map(|v| v * v).sum()
                };
                let d = 2.0 * (acf(0) - acf(tau)) - energy;
                cumulative += d;
                if tau >= pyin.min_period {
                    let expected = d / (cumulative / tau as f64 + TINY);
                    let got = scratch.cmnd[tau - pyin.min_period];
                    assert!(
                        (got - expected).abs() < 1e-9,
                        "tau {tau}: {got} vs {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn fixed_lag_streaming() {
        let pyin = pyin();
        let (obs, vps) = observe_all(&pyin, &signal());
        let n = pyin.n_states();
        let offline = decode_offline(&pyin, &obs, &vps);
        let run = |lag: usize| {
            let mut decoder = PyinDecoder::new(&pyin, lag);
            let mut out = Vec::new();
            for (k, (o, &vp)) in obs.chunks_exact(n).zip(&vps).enumerate() {
                let d = decoder.push(&pyin, o, vp);
                assert_eq!(d.is_some(), k >= lag);
                out.extend(d);
                assert_eq!(decoder.pending(), (k + 1).min(lag));
            }
            decoder.finish(&pyin, &mut |d| out.push(d));
            assert_eq!(decoder.pending(), 0);
            out
        };
        // A lag at least the stream length is the full Viterbi.
        assert_eq!(run(vps.len()), offline);
        assert_eq!(run(vps.len() + 7), offline);
        // Shorter lags decide every frame once, in order, with its own voiced probability.
        for lag in [0, 1, 5, 20] {
            let out = run(lag);
            assert_eq!(out.len(), vps.len());
            for (d, &vp) in out.iter().zip(&vps) {
                assert_eq!(d.voiced_prob, vp);
            }
            let agree = out.iter().zip(&offline).filter(|(a, b)| a == b).count();
            assert!(
                agree * 10 >= out.len() * 9,
                "lag {lag}: {agree}/{}",
                out.len()
            );
        }
    }

    #[test]
    fn serialised_state_continues_identically() {
        let pyin = pyin();
        let (obs, vps) = observe_all(&pyin, &signal());
        let n = pyin.n_states();
        for lag in [0, 1, 12] {
            for cut in [0, 1, 5, 12, 13, 60] {
                let mut whole = PyinDecoder::new(&pyin, lag);
                let mut restored = PyinDecoder::new(&pyin, lag);
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for (k, (o, &vp)) in obs.chunks_exact(n).zip(&vps).enumerate() {
                    if k == cut {
                        let bytes = restored.to_bytes();
                        restored = PyinDecoder::from_bytes(&pyin, &bytes).expect("restore");
                        assert_eq!(restored.to_bytes(), bytes);
                        assert_eq!(restored.pending(), whole.pending());
                    }
                    a.extend(whole.push(&pyin, o, vp));
                    b.extend(restored.push(&pyin, o, vp));
                }
                whole.finish(&pyin, &mut |d| a.push(d));
                restored.finish(&pyin, &mut |d| b.push(d));
                assert_eq!(a, b, "lag {lag} cut {cut}");
                assert_eq!(whole.value, restored.value);
            }
        }
        // Corrupt or foreign state is refused.
        let mut decoder = PyinDecoder::new(&pyin, 4);
        for (o, &vp) in obs.chunks_exact(n).zip(&vps).take(9) {
            decoder.push(&pyin, o, vp);
        }
        let bytes = decoder.to_bytes();
        assert_eq!(bytes.len(), 25 + 8 * n + 2 * 3 * n + 8 * 4);
        assert!(PyinDecoder::from_bytes(&pyin, &bytes[..bytes.len() - 1]).is_err());
        let other = Pyin::new(&PyinParams::default(), SR, 512, 128).expect("valid");
        assert!(PyinDecoder::from_bytes(&other, &bytes).is_err());
        let mut bad = bytes.clone();
        bad[0] = 99;
        assert!(PyinDecoder::from_bytes(&pyin, &bad).is_err());
    }
}
