//! YIN fundamental frequency estimation, following `librosa.yin` (0.11) on one frame.
//!
//! The autocorrelation runs in float32, as librosa's does (numpy 2 keeps float32 frames in
//! float32 through `rfft`/`irfft`), at twice the width of a float64 transform; the difference
//! function and its normalisation are then taken in float64 from those values.

use rustfft::FftPlanner;

use super::real_fft::{Autocorrelation, RealFftWork, fast_even_len};

/// Plans and constants for YIN on frames of one length at one sample rate.
pub struct Yin {
    frame_length: usize,
    min_period: usize,
    max_period: usize,
    threshold: f64,
    sample_rate: f64,
    /// `1 / tau` for `tau` in `0..=max_period` (index 0 unused).
    inverse_period: Vec<f64>,
    /// The float32 autocorrelation, zero-padded to `frame_length + max_period` or more.
    acf: Autocorrelation<f32>,
}

impl std::fmt::Debug for Yin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Yin")
            .field("frame_length", &self.frame_length)
            .field("min_period", &self.min_period)
            .field("max_period", &self.max_period)
            .field("threshold", &self.threshold)
            .field("fft_len", &self.acf.transform_len())
            .finish()
    }
}

/// Reusable buffers for [`Yin::estimate`].
pub struct YinScratch {
    acf: RealFftWork<f32>,
    /// Cumulative mean normalised difference for periods `min_period..=max_period`.
    cmnd: Vec<f64>,
}

impl Yin {
    /// YIN for `frame_length`-sample frames looking for f0 in `[fmin, fmax]` Hz.
    ///
    /// As librosa: `min_period = floor(sr / fmax)`, `max_period = min(ceil(sr / fmin), frame_length - 1)`.
    pub fn new(
        sample_rate: f64,
        frame_length: usize,
        fmin: f64,
        fmax: f64,
        threshold: f64,
        planner: &mut FftPlanner<f32>,
    ) -> Self {
        let min_period = ((sample_rate / fmax).floor() as usize).max(1);
        let max_period = ((sample_rate / fmin).ceil() as usize)
            .min(frame_length - 1)
            .max(min_period + 1);
        // Linear (not circular) autocorrelation up to lag max_period needs frame_length + max_period points.
        let fft_len = fast_even_len(frame_length + max_period);
        Self {
            frame_length,
            min_period,
            max_period,
            threshold,
            sample_rate,
            inverse_period: (0..=max_period)
                .map(|tau| 1.0 / tau.max(1) as f64)
                .collect(),
            acf: Autocorrelation::new(fft_len, planner),
        }
    }

    /// Buffers sized for this plan.
    pub fn scratch(&self) -> YinScratch {
        YinScratch {
            acf: self.acf.work(),
            cmnd: vec![0.0; self.max_period - self.min_period + 1],
        }
    }

    /// True when `scratch` was made by a plan with the same sizes.
    pub fn fits(&self, scratch: &YinScratch) -> bool {
        self.acf.fits(&scratch.acf) && scratch.cmnd.len() == self.max_period - self.min_period + 1
    }

    /// The f0 of `frame` in Hz, or `None` when no trough of the cumulative mean normalised
    /// difference falls below the threshold (unvoiced; librosa would take the global minimum).
    #[inline(always)]
    pub fn estimate(&self, frame: &[f32], scratch: &mut YinScratch) -> Option<f64> {
        debug_assert_eq!(frame.len(), self.frame_length);
        let YinScratch { acf, cmnd } = scratch;

        // Autocorrelation by FFT: acf[tau] = sum_j x[j] x[j + tau], times the transform length.
        let acf = self.acf.compute(frame, acf);
        let scale = 1.0 / self.acf.transform_len() as f64;

        // librosa's difference d(tau) = 2 * (acf[0] - acf[tau]) - energy(x[0..tau]) and the
        // cumulative mean normalised difference cmnd(tau) = d(tau) / (mean of d(1..=tau)), for
        // periods min_period..=max_period (index i = tau - min_period). Computed in order of tau,
        // stopping at the first trough below the threshold (troughs need one value beyond them).
        let acf0 = f64::from(acf[0]) * scale;
        let n = cmnd.len();
        let mut cumulative = 0.0;
        let mut energy = 0.0;
        let mut found = None;
        for tau in 1..=self.max_period {
            let x = f64::from(frame[tau - 1]);
            energy += x * x;
            let d = 2.0 * (acf0 - f64::from(acf[tau]) * scale) - energy;
            cumulative += d;
            if tau < self.min_period {
                continue;
            }
            let i = tau - self.min_period;
            cmnd[i] = d / (cumulative * self.inverse_period[tau] + f64::MIN_POSITIVE);
            if i == 0 {
                continue;
            }
            // Is i - 1 a trough (strictly below its left neighbour, not above its right one)?
            let j = i - 1;
            let trough = if j == 0 {
                cmnd[0] < cmnd[1]
            } else {
                cmnd[j] < cmnd[j - 1] && cmnd[j] <= cmnd[i]
            };
            if trough && cmnd[j] < self.threshold {
                found = Some(j);
                break;
            }
        }
        let index = match found {
            Some(j) => j,
            // The last period is a trough when it is below its left neighbour.
            None if cmnd[n - 1] < cmnd[n - 2] && cmnd[n - 1] < self.threshold => n - 1,
            None => return None,
        };

        let shift = if index == 0 || index == n - 1 {
            0.0
        } else {
            let a = cmnd[index + 1] + cmnd[index - 1] - 2.0 * cmnd[index];
            let b = (cmnd[index + 1] - cmnd[index - 1]) / 2.0;
            if b.abs() >= a.abs() { 0.0 } else { -b / a }
        };
        let period = (self.min_period + index) as f64 + shift;
        let f0 = self.sample_rate / period;
        f0.is_finite().then_some(f0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sine_pitch() {
        let sr = 16000.0;
        let mut planner = FftPlanner::new();
        let yin = Yin::new(sr, 1024, 65.0, 2093.0, 0.1, &mut planner);
        let mut scratch = yin.scratch();
        let frame: Vec<f32> = (0..1024)
            .map(|i| (0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / sr).sin()) as f32)
            .collect();
        let f0 = yin.estimate(&frame, &mut scratch).expect("voiced");
        assert!((f0 - 440.0).abs() < 2.0, "{f0}");
        assert_eq!(yin.estimate(&[0.0; 1024], &mut scratch), None);
    }
}
