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
    /// The cumulative mean normalised difference for periods `min_period..=max_period` is
    /// `numerator[i] / denominator[i]` (period `min_period + i`).
    numerator: Vec<f64>,
    /// See `numerator`.
    denominator: Vec<f64>,
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
            numerator: vec![0.0; self.max_period - self.min_period + 1],
            denominator: vec![0.0; self.max_period - self.min_period + 1],
        }
    }

    /// True when `scratch` was made by a plan with the same sizes.
    pub fn fits(&self, scratch: &YinScratch) -> bool {
        self.acf.fits(&scratch.acf)
            && scratch.numerator.len() == self.max_period - self.min_period + 1
            && scratch.denominator.len() == scratch.numerator.len()
    }

    /// The f0 of `frame` in Hz, or `None` when no trough of the cumulative mean normalised
    /// difference falls below the threshold (unvoiced; librosa would take the global minimum).
    #[inline(always)]
    pub fn estimate(&self, frame: &[f32], scratch: &mut YinScratch) -> Option<f64> {
        debug_assert_eq!(frame.len(), self.frame_length);
        let YinScratch {
            acf,
            numerator,
            denominator,
        } = scratch;

        // Autocorrelation by FFT: acf[tau] = sum_j x[j] x[j + tau], times the transform length.
        let acf = self.acf.compute(frame, acf);
        let scale = 1.0 / self.acf.transform_len() as f64;

        // librosa's difference d(tau) = 2 * (acf[0] - acf[tau]) - energy(x[0..tau]) and the
        // cumulative mean normalised difference cmnd(tau) = d(tau) / (mean of d(1..=tau)), for
        // periods min_period..=max_period (index i = tau - min_period). Computed in order of tau,
        // stopping at the first trough below the threshold (troughs need one value beyond them).
        let acf0 = f64::from(acf[0]) * scale;
        let n = numerator.len();
        let mut cumulative = 0.0;
        let mut energy = 0.0;
        let mut found = None;
        // cmnd(i) is numerator[i] / denominator[i], divided only where it is needed: a period is
        // a candidate when its cmnd is below the threshold, which (denominator > 0) a product
        // with a small margin tells without the division; the candidates and their neighbours
        // are then divided exactly, so the decisions are those of dividing every period.
        let cmnd = |num: &[f64], den: &[f64], i: usize| num[i] / den[i];
        let loose_threshold = self.threshold + self.threshold.abs() * 1e-9;
        let (min_period, max_period) = (self.min_period, self.max_period);
        let (frame, acf) = (&frame[..max_period], &acf[..=max_period]);
        // Periods below min_period only feed the two sums.
        for tau in 1..min_period {
            let x = f64::from(frame[tau - 1]);
            energy += x * x;
            cumulative += 2.0 * (acf0 - f64::from(acf[tau]) * scale) - energy;
        }
        // The previous period's numerator and denominator, kept in registers.
        let (mut previous_numerator, mut previous_denominator) = (0.0, 0.0);
        let periods = frame[min_period - 1..]
            .iter()
            .zip(&acf[min_period..])
            .zip(&self.inverse_period[min_period..=max_period]);
        for (i, ((&x, &acf_tau), &inverse_period)) in periods.enumerate() {
            let x = f64::from(x);
            energy += x * x;
            let d = 2.0 * (acf0 - f64::from(acf_tau) * scale) - energy;
            cumulative += d;
            let denominator_i = cumulative * inverse_period + f64::MIN_POSITIVE;
            numerator[i] = d;
            denominator[i] = denominator_i;
            // Is i - 1 a trough (strictly below its left neighbour, not above its right one)
            // below the threshold? The threshold goes first: on noise the neighbour comparisons
            // are coin flips, which a branch mispredicts half the time.
            // (A denominator that is not a normal positive number, or NaN, goes to the division.)
            let normal_denominator = previous_denominator > 1e-290;
            let maybe_below =
                !normal_denominator || previous_numerator < loose_threshold * previous_denominator;
            if i > 0 && maybe_below {
                let j = i - 1;
                let here = cmnd(numerator, denominator, j);
                if here < self.threshold {
                    let trough = if j == 0 {
                        here < cmnd(numerator, denominator, 1)
                    } else {
                        (here < cmnd(numerator, denominator, j - 1))
                            & (here <= cmnd(numerator, denominator, i))
                    };
                    if trough {
                        found = Some(j);
                        break;
                    }
                }
            }
            previous_numerator = d;
            previous_denominator = denominator_i;
        }
        let (num, den) = (&numerator[..], &denominator[..]);
        let index = match found {
            Some(j) => j,
            // The last period is a trough when it is below its left neighbour.
            None if cmnd(num, den, n - 1) < cmnd(num, den, n - 2)
                && cmnd(num, den, n - 1) < self.threshold =>
            {
                n - 1
            }
            None => return None,
        };

        let shift = if index == 0 || index == n - 1 {
            0.0
        } else {
            let (left, mid, right) = (
                cmnd(num, den, index - 1),
                cmnd(num, den, index),
                cmnd(num, den, index + 1),
            );
            let a = right + left - 2.0 * mid;
            let b = (right - left) / 2.0;
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
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

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

    /// The scan as first written: every period divided, then the first trough below the
    /// threshold. The deferred divisions must decide exactly as it does.
    fn estimate_dividing_every_period(yin: &Yin, frame: &[f32]) -> Option<f64> {
        let mut scratch = yin.scratch();
        let acf = yin.acf.compute(frame, &mut scratch.acf);
        let scale = 1.0 / yin.acf.transform_len() as f64;
        let acf0 = f64::from(acf[0]) * scale;
        let mut cmnd = vec![0.0; yin.max_period - yin.min_period + 1];
        let (mut cumulative, mut energy) = (0.0, 0.0);
        for tau in 1..=yin.max_period {
            let x = f64::from(frame[tau - 1]);
            energy += x * x;
            let d = 2.0 * (acf0 - f64::from(acf[tau]) * scale) - energy;
            cumulative += d;
            if tau >= yin.min_period {
                cmnd[tau - yin.min_period] =
                    d / (cumulative * yin.inverse_period[tau] + f64::MIN_POSITIVE);
            }
        }
        let n = cmnd.len();
        let is_trough = |j: usize| match j {
            0 => cmnd[0] < cmnd[1],
            j if j == n - 1 => cmnd[j] < cmnd[j - 1],
            j => cmnd[j] < cmnd[j - 1] && cmnd[j] <= cmnd[j + 1],
        };
        let index = (0..n).find(|&j| is_trough(j) && cmnd[j] < yin.threshold)?;
        let shift = if index == 0 || index == n - 1 {
            0.0
        } else {
            let a = cmnd[index + 1] + cmnd[index - 1] - 2.0 * cmnd[index];
            let b = (cmnd[index + 1] - cmnd[index - 1]) / 2.0;
            if b.abs() >= a.abs() { 0.0 } else { -b / a }
        };
        let f0 = yin.sample_rate / ((yin.min_period + index) as f64 + shift);
        f0.is_finite().then_some(f0)
    }

    #[test]
    fn deferred_divisions_decide_as_dividing_every_period() {
        let sr = 16000.0;
        let mut planner = FftPlanner::new();
        let yin = Yin::new(sr, 512, 65.0, 2093.0, 0.1, &mut planner);
        let mut scratch = yin.scratch();
        let mut rng = StdRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
        let mut noise = move || rng.random_range(-1.0..1.0);
        let (mut voiced, mut frames) = (0, 0);
        // Tones from 70 Hz to 1.9 kHz under noise from none to drowning, at amplitudes from
        // full scale down to the denormal range, and silence.
        for amplitude in [1.0, 1e-3, 1e-20, 1e-40, 0.0] {
            for step in 0..60 {
                let hz = 70.0 * 1.06_f64.powi(step);
                let noise_level = [0.0, 0.05, 0.5, 4.0][step as usize % 4];
                let frame: Vec<f32> = (0..512)
                    .map(|i| {
                        let tone = (2.0 * std::f64::consts::PI * hz * i as f64 / sr).sin();
                        (amplitude * (tone + noise_level * noise())) as f32
                    })
                    .collect();
                let expected = estimate_dividing_every_period(&yin, &frame);
                let got = yin.estimate(&frame, &mut scratch);
                assert_eq!(
                    got.map(f64::to_bits),
                    expected.map(f64::to_bits),
                    "{hz} Hz, amplitude {amplitude}, noise {noise_level}: {got:?} against {expected:?}"
                );
                frames += 1;
                voiced += usize::from(expected.is_some());
            }
        }
        // Both kinds of frame were compared.
        assert!(
            voiced >= 30 && frames - voiced >= 30,
            "{voiced} of {frames} voiced"
        );
    }
}
