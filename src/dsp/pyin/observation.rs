//! The YIN-based observation probabilities of pYIN (steps 1 to 4 of the `pyin` module docs):
//! [`PyinScratch`], the per-thread buffers, and [`Pyin::observe`], which turns one frame into
//! the probability of every HMM state through the cumulative mean normalised difference, its
//! troughs and the threshold and Boltzmann priors.

use super::decoder::StepWork;
use super::numeric::TINY;
use super::tables::Pyin;
use crate::dsp::real_fft::RealFftWork;

/// Per-thread buffers for [`Pyin::observe`] and the decoder's step (`PyinDecoder::push`), from
/// [`Pyin::scratch`].
pub struct PyinScratch {
    acf: RealFftWork<f64>,
    /// Cumulative mean normalised difference for periods `min_period..=max_period`.
    pub(super) cmnd: Vec<f64>,
    /// Trough positions (indices into `cmnd`), heights, first threshold below which each
    /// lies, and probabilities.
    trough_index: Vec<usize>,
    trough_height: Vec<f64>,
    trough_first: Vec<usize>,
    trough_prob: Vec<f64>,
    /// Troughs whose first threshold is `m`, for `m` in `0..=n_thresholds`.
    first_count: Vec<usize>,
    /// The troughs ordered by first threshold (then by position), and where each threshold's
    /// run starts in that order.
    by_first: Vec<usize>,
    first_start: Vec<usize>,
    /// The troughs below the current threshold, by position.
    below: Vec<usize>,
    /// The voiced bins written by the last frame's candidates, in candidate order.
    written: Vec<usize>,
    /// The work buffers of a Viterbi step.
    pub(super) step: StepWork,
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
    /// Buffers for [`Pyin::observe`] and `PyinDecoder::push`; one per thread.
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
            by_first: vec![0; n_periods],
            first_start: vec![0; self.params.n_thresholds + 1],
            below: Vec::with_capacity(n_periods),
            written: Vec::with_capacity(n_periods),
            step: StepWork::new(self.n_pitch_bins),
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
        let written = &mut scratch.written;
        written.clear();
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
                written.push(bin);
            }
        }
        // np.sum over axis 0 of an (n_bins, frames) array adds the rows in order. Adding the
        // +0.0 of an unwritten bin leaves a sum of non-negative terms as it is, so only the
        // written bins are added, in bin order: candidates come by increasing period, so their
        // bins do not increase (checked; otherwise every bin is added).
        let total = if written.windows(2).all(|w| w[0] >= w[1]) {
            let mut total = 0.0;
            let mut previous = usize::MAX;
            for &bin in written.iter().rev() {
                if bin != previous {
                    total += voiced[bin];
                    previous = bin;
                }
            }
            total
        } else {
            voiced.iter().fold(0.0, |s, &p| s + p)
        };
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

    /// Troughs of `scratch.cmnd` and their probabilities (steps 2 and 3 of the `pyin` module docs).
    fn trough_probabilities(&self, scratch: &mut PyinScratch) {
        let PyinScratch {
            cmnd,
            trough_index,
            trough_height,
            trough_first,
            trough_prob,
            first_count,
            by_first,
            first_start,
            below,
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
        // The troughs grouped by first threshold (a counting sort, positions kept in order).
        let mut start = 0;
        for (s, &count) in first_start.iter_mut().zip(first_count.iter()) {
            *s = start;
            start += count;
        }
        for (i, &f) in trough_first.iter().enumerate() {
            by_first[first_start[f]] = i;
            first_start[f] += 1;
        }
        // Threshold by threshold, the troughs below it (by position, so by rank) each add
        // their share, in the same order and with the same operations as a pass over all
        // troughs that skips those above the threshold.
        below.clear();
        let mut joined = 0;
        for (&count, &mass) in first_count.iter().zip(&self.beta_probs) {
            for &i in &by_first[joined..joined + count] {
                let at = below.partition_point(|&k| k < i);
                below.insert(at, i);
            }
            joined += count;
            if below.is_empty() {
                continue;
            }
            let norm = self.boltzmann_norm[below.len()];
            for (&i, &decay) in below.iter().zip(&self.boltzmann_decay) {
                trough_prob[i] += norm * decay * mass;
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
