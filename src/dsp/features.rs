//! Per-frame feature formulas.
//!
//! `x` is one frame of `N = frame_length` samples, `w` the analysis window,
//! `S[k] = |rfft(w * x)[k]|` for `k = 0..=N/2` the magnitude spectrum, `P[k] = S[k]^2` the power
//! spectrum and `f[k] = k * sample_rate / N` the bin centre frequencies. The librosa features
//! (`rms`, `zcr`, spectral centroid / bandwidth / rolloff / flatness, mel, mfcc, chroma, YIN f0)
//! follow librosa 0.11 with `center=False`. The others are specflow's own:
//!
//! - **spectral_flux** = `sqrt(sum_k max(S_t[k] - S_{t-1}[k], 0)^2)`: the L2 norm of the
//!   half-wave rectified magnitude increase since the previous frame of the same stream (so
//!   energy appearing counts, energy fading does not). The first frame of a stream, and the first
//!   after `StreamState::reset`, has flux 0.
//! - **dominant_frequency**: `k*` = the first bin with the largest `S[k]` among `k >= 1` (DC is
//!   ignored), refined by fitting a parabola through the *natural log* magnitudes of bins
//!   `k*-1, k*, k*+1`: `f = (k* + p) * sr / N` with `p = (a - c) / (2 (a - 2b + c))`,
//!   `a, b, c = ln S[k*-1], ln S[k*], ln S[k*+1]`, `p` clamped to `[-0.5, 0.5]` (no refinement at
//!   the Nyquist bin). With the Hann window the bias is below 0.017 bins. 0 Hz when the frame is silent.
//! - **band_energy**: for each configured band `[lo, hi)`, the bins with `lo <= f[k] < hi` (a band
//!   with `hi` at or above Nyquist is clipped to Nyquist and includes the Nyquist bin), then
//!   `E = sum_k c_k P[k] / (N * sum_n w[n]^2)` with `c_k = 2` for bins that stand for a positive
//!   and a negative frequency and `c_k = 1` for DC and (even `N`) Nyquist. By Parseval the bands
//!   that cover `0..=Nyquist` add up to the window-weighted mean square
//!   `sum_n (w[n] x[n])^2 / sum_n w[n]^2`, so a sine of amplitude `A` inside a band reads about
//!   `A^2 / 2`, the same scale as `rms^2`.
//! - **loudness_dbfs** = `20 * log10(max(rms, 1e-10))`: full-scale square wave (±1) 0 dBFS,
//!   full-scale sine -3.01 dBFS, digital silence -200 dBFS.

/// The portable lane kernels the formulas below build on, defined in
/// [`super::kernels::portable`] and re-exported here under their original paths.
pub use super::kernels::portable::{
    dot, dot_f32, reduce_lanes, square_deviation, sum, sum_squares,
};

use super::kernels::Kernels;

/// Natural logarithm of a positive normal `x` (branch-free, vectorisable), accurate to ~1e-15
/// relative: `x = m * 2^e` with `m` in `[sqrt(1/2), sqrt(2))`, `ln m = 2 atanh(s)`,
/// `s = (m - 1) / (m + 1)`, summed to `s^17`.
#[inline(always)]
pub fn ln_positive(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut mantissa = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if mantissa > std::f64::consts::SQRT_2 {
        mantissa *= 0.5;
        exponent += 1;
    }
    let s = (mantissa - 1.0) / (mantissa + 1.0);
    let s2 = s * s;
    let series = 1.0
        + s2 * (1.0 / 3.0
            + s2 * (1.0 / 5.0
                + s2 * (1.0 / 7.0
                    + s2 * (1.0 / 9.0
                        + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0 + s2 * (1.0 / 15.0 + s2 / 17.0)))))));
    2.0 * s * series + exponent as f64 * std::f64::consts::LN_2
}

/// `10 * log10(max(x, 1e-10))` for each value, in place (`power_to_db(ref=1, amin=1e-10, top_db=None)`).
#[inline(always)]
pub fn power_to_db_in_place(values: &mut [f64]) {
    const DB_PER_NEPER: f64 = 10.0 / std::f64::consts::LN_10;
    for v in values.iter_mut() {
        *v = DB_PER_NEPER * ln_positive(v.max(1e-10));
    }
}

/// Root mean square of the frame (time domain, no window), as `librosa.feature.rms(y)`.
#[inline(always)]
pub fn rms(frame: &[f32]) -> f64 {
    rms_of_sum_squares(sum_squares(frame), frame.len())
}

/// `sqrt(total / len)`: the RMS of `len` samples whose squares add up to `total` (0 when empty).
#[inline(always)]
pub fn rms_of_sum_squares(total: f64, len: usize) -> f64 {
    if len == 0 {
        return 0.0;
    }
    (total / len as f64).sqrt()
}

/// Zero-crossing rate as `librosa.feature.zero_crossing_rate(y, center=False)`: the fraction of
/// samples `i >= 1` whose sign differs from sample `i - 1`'s, where `|x| <= 1e-10` counts as 0 and
/// 0 counts as positive; the count is divided by the full frame length.
#[inline(always)]
pub fn zero_crossing_rate(frame: &[f32]) -> f64 {
    const THRESHOLD: f32 = 1e-10;
    let negative = |x: f32| -> bool { x < -THRESHOLD };
    if frame.is_empty() {
        return 0.0;
    }
    // A u32 count per pair (not `filter().count()`), so the loop vectorises.
    let crossings: u32 = frame
        .iter()
        .zip(&frame[1..])
        .map(|(&a, &b)| u32::from(negative(a) != negative(b)))
        .sum();
    f64::from(crossings) / frame.len() as f64
}

/// Level of the frame in dB relative to full scale: `20 * log10(max(rms, 1e-10))`.
#[inline(always)]
pub fn loudness_dbfs(rms: f64) -> f64 {
    20.0 * rms.max(1e-10).log10()
}

/// Magnitude-weighted mean of the bin frequencies `freqs` (`librosa.feature.spectral_centroid`).
/// A frame whose magnitudes sum below the smallest normal float is not normalised (so reads ~0).
#[inline(always)]
pub fn spectral_centroid(magnitude: &[f64], freqs: &[f64]) -> f64 {
    centroid_of(sum(magnitude), dot(magnitude, freqs))
}

/// [`spectral_centroid`] from the magnitudes' `total` and the frequency-weighted sum `weighted`.
#[inline(always)]
pub fn centroid_of(total: f64, weighted: f64) -> f64 {
    if total < f64::MIN_POSITIVE {
        weighted
    } else {
        weighted / total
    }
}

/// Second-order spectral bandwidth around `centroid` (`librosa.feature.spectral_bandwidth`, p=2).
#[inline(always)]
pub fn spectral_bandwidth(magnitude: &[f64], freqs: &[f64], centroid: f64) -> f64 {
    bandwidth_from_spread(square_deviation(magnitude, freqs, centroid), sum(magnitude))
}

/// `sqrt(spread / total)`, the total replaced by 1 when below the smallest normal float.
#[inline(always)]
pub fn bandwidth_from_spread(spread: f64, total: f64) -> f64 {
    let norm = if total < f64::MIN_POSITIVE {
        1.0
    } else {
        total
    };
    (spread / norm).sqrt()
}

/// The centre frequency of the lowest bin at which the cumulative magnitude reaches
/// `roll_percent` of the total (`librosa.feature.spectral_rolloff`); 0 for a silent frame.
#[inline(always)]
pub fn spectral_rolloff(magnitude: &[f64], bin_hz: f64, roll_percent: f64) -> f64 {
    rolloff_of(magnitude, bin_hz, roll_percent, sum(magnitude))
}

/// [`spectral_rolloff`] given the magnitudes' `total`.
#[inline(always)]
pub fn rolloff_of(magnitude: &[f64], bin_hz: f64, roll_percent: f64, total: f64) -> f64 {
    const BLOCK: usize = 16;
    let threshold = roll_percent * total;
    // Skip whole blocks while the running sum stays below the threshold, then scan bin by bin.
    let mut cumulative = 0.0;
    let mut start = 0;
    for block in magnitude.chunks_exact(BLOCK) {
        let block_sum = sum(block);
        if cumulative + block_sum >= threshold {
            break;
        }
        cumulative += block_sum;
        start += BLOCK;
    }
    for (k, &s) in magnitude.iter().enumerate().skip(start) {
        cumulative += s;
        if cumulative >= threshold {
            return k as f64 * bin_hz;
        }
    }
    (magnitude.len().saturating_sub(1)) as f64 * bin_hz
}

/// Geometric mean over arithmetic mean of `max(P[k], 1e-10)` (`librosa.feature.spectral_flatness`).
///
/// The geometric mean is taken as a product of mantissas with a separate binary exponent
/// (one `ln` per frame instead of one per bin), in eight independent lanes (vectorisable; a
/// fixed order); it equals `exp(mean(ln P))` to ~1e-13.
#[inline(always)]
pub fn spectral_flatness(power: &[f64]) -> f64 {
    const AMIN: f64 = 1e-10;
    const EXPONENT_BIAS: i64 = 1023;
    const MANTISSA_BITS: u64 = 0x000f_ffff_ffff_ffff;
    const ONE_BITS: u64 = 0x3ff0_0000_0000_0000;
    /// Lane products of mantissas in `[1, 2)` stay below `2^BLOCKS` between renormalisations.
    const BLOCKS: usize = 256;
    if power.is_empty() {
        return 0.0;
    }
    // `x = mantissa * 2^(biased exponent - 1023)` for a positive normal `x`.
    let mantissa = |x: f64| f64::from_bits((x.to_bits() & MANTISSA_BITS) | ONE_BITS);
    let biased_exponent = |x: f64| (x.to_bits() >> 52) as i64;
    let mut products = [1.0f64; 8];
    let mut exponents = [0i64; 8];
    let mut totals = [0.0f64; 8];
    let mut blocks = power.chunks_exact(8 * BLOCKS);
    let mut step = |block: &[f64], products: &mut [f64; 8], exponents: &mut [i64; 8]| {
        for chunk in block.chunks_exact(8) {
            for lane in 0..8 {
                let p = chunk[lane].max(AMIN);
                totals[lane] += p;
                exponents[lane] += biased_exponent(p);
                products[lane] *= mantissa(p);
            }
        }
        // Renormalise: each product back into [1, 2), its exponent moved to the lane's sum.
        for lane in 0..8 {
            exponents[lane] += biased_exponent(products[lane]) - EXPONENT_BIAS;
            products[lane] = mantissa(products[lane]);
        }
    };
    for block in &mut blocks {
        step(block, &mut products, &mut exponents);
    }
    step(blocks.remainder(), &mut products, &mut exponents);
    // The last < 8 values, then the lanes together; every value's exponent carries the bias.
    let mut tail_total = 0.0;
    let mut product = 1.0f64;
    let mut exponent = -(power.len() as i64) * EXPONENT_BIAS;
    for &p in power.chunks_exact(8).remainder() {
        let p = p.max(AMIN);
        tail_total += p;
        exponent += biased_exponent(p);
        product *= mantissa(p);
    }
    for lane in 0..8 {
        // Below 2^8 * 2^7 after the lanes' mantissas and the tail's: far inside the normal range.
        product *= products[lane];
        exponent += exponents[lane];
    }
    let total = reduce_lanes(totals) + tail_total;
    let n = power.len() as f64;
    let log_geometric = (product.ln() + exponent as f64 * std::f64::consts::LN_2) / n;
    log_geometric.exp() / (total / n)
}

/// Half-wave rectified L2 spectral flux: `sqrt(sum_k max(S_t[k] - S_{t-1}[k], 0)^2)`.
#[inline(always)]
pub fn spectral_flux(magnitude: &[f64], previous: &[f64]) -> f64 {
    // Eight partial sums (vectorisable; a fixed summation order), as `dot` and `sum`.
    let len = magnitude.len().min(previous.len());
    let (now, before) = (&magnitude[..len], &previous[..len]);
    let mut lanes = [0.0f64; 8];
    let mut now_chunks = now.chunks_exact(8);
    let mut before_chunks = before.chunks_exact(8);
    for (x, y) in (&mut now_chunks).zip(&mut before_chunks) {
        for lane in 0..8 {
            let rise = (x[lane] - y[lane]).max(0.0);
            lanes[lane] += rise * rise;
        }
    }
    let mut tail = 0.0;
    for (x, y) in now_chunks.remainder().iter().zip(before_chunks.remainder()) {
        let rise = (x - y).max(0.0);
        tail += rise * rise;
    }
    (reduce_lanes(lanes) + tail).sqrt()
}

/// The largest of `values` (`-inf` when empty), with eight independent running maxima so the
/// scan vectorises instead of waiting on one compare chain.
#[inline(always)]
fn max_value(values: &[f64]) -> f64 {
    let mut lanes = [f64::NEG_INFINITY; 8];
    let mut chunks = values.chunks_exact(8);
    for x in &mut chunks {
        for lane in 0..8 {
            if x[lane] > lanes[lane] {
                lanes[lane] = x[lane];
            }
        }
    }
    let mut max = f64::NEG_INFINITY;
    for &v in lanes.iter().chain(chunks.remainder()) {
        if v > max {
            max = v;
        }
    }
    max
}

/// Frequency of the strongest non-DC bin, refined by a parabola through the log magnitudes of it
/// and its neighbours (see the module docs); 0 when every non-DC bin is 0.
#[inline(always)]
pub fn dominant_frequency(magnitude: &[f64], bin_hz: f64) -> f64 {
    if magnitude.len() < 2 {
        return 0.0;
    }
    // The first bin holding the largest value: its maximum first (vectorised), then where it is.
    let largest = max_value(&magnitude[1..]);
    let peak = 1 + magnitude[1..]
        .iter()
        .position(|&m| m == largest)
        .unwrap_or(0);
    let b = magnitude[peak];
    if b.is_nan() || b <= 0.0 {
        return 0.0;
    }
    let mut offset = 0.0;
    if peak + 1 < magnitude.len() {
        let ln = |s: f64| s.max(f64::MIN_POSITIVE).ln();
        let (a, b, c) = (ln(magnitude[peak - 1]), ln(b), ln(magnitude[peak + 1]));
        let curvature = a - 2.0 * b + c;
        if curvature < 0.0 {
            offset = (0.5 * (a - c) / curvature).clamp(-0.5, 0.5);
        }
    }
    (peak as f64 + offset) * bin_hz
}

/// Band edges resolved to FFT bins, and the normalisation of [`BandBins::energies`].
#[derive(Debug, Clone)]
pub struct BandBins {
    ranges: Vec<std::ops::Range<usize>>,
    n_fft: usize,
    scale: f64,
}

impl BandBins {
    /// Resolves `[lo, hi)` Hz bands to bins of an `n_fft`-point real FFT whose window has
    /// `window_power = sum(w^2)`.
    pub fn new(bands: &[[f64; 2]], sample_rate: f64, n_fft: usize, window_power: f64) -> Self {
        let n_bins = n_fft / 2 + 1;
        let nyquist = sample_rate / 2.0;
        let bin_of = |hz: f64| -> usize {
            // First bin whose centre frequency is >= hz.
            (0..n_bins)
                .find(|&k| k as f64 * sample_rate / n_fft as f64 >= hz)
                .unwrap_or(n_bins)
        };
        let ranges = bands
            .iter()
            .map(|&[lo, hi]| {
                let start = bin_of(lo);
                let end = if hi >= nyquist { n_bins } else { bin_of(hi) };
                start.min(end)..end
            })
            .collect();
        let scale = if window_power > 0.0 {
            1.0 / (n_fft as f64 * window_power)
        } else {
            0.0
        };
        Self {
            ranges,
            n_fft,
            scale,
        }
    }

    /// Number of bands.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when no band is configured.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Writes the mean-square energy of each band of `power` into `out`: each bin counts twice
    /// (its negative-frequency twin), but DC and the Nyquist bin of an even `n_fft` once. The
    /// bins between them are summed with `kernels` (vectorised), the edges added alone.
    #[inline(always)]
    pub fn energies<K: Kernels>(&self, kernels: K, power: &[f64], out: &mut [f64]) {
        let nyquist_bin = if self.n_fft.is_multiple_of(2) {
            Some(self.n_fft / 2)
        } else {
            None
        };
        for (range, o) in self.ranges.iter().zip(out.iter_mut()) {
            let (mut start, mut end) = (range.start, range.end);
            let mut once = 0.0;
            if start == 0 && end > 0 {
                once += power[0];
                start = 1;
            }
            if end > start && Some(end - 1) == nyquist_bin {
                once += power[end - 1];
                end -= 1;
            }
            let twice = if end > start {
                kernels.sum(&power[start..end])
            } else {
                0.0
            };
            *o = (2.0 * twice + once) * self.scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zcr_counts_zero_as_positive() {
        assert_eq!(zero_crossing_rate(&[1.0, -1.0, 1.0, -1.0]), 0.75);
        assert_eq!(zero_crossing_rate(&[0.0, -0.0, 1e-11, -1e-11]), 0.0);
        assert_eq!(zero_crossing_rate(&[-1.0, 0.0, 0.0, -1.0]), 0.5);
    }

    #[test]
    fn silent_frames_are_finite() {
        let zeros = [0.0; 9];
        let freqs: Vec<f64> = (0..9).map(|k| k as f64 * 10.0).collect();
        assert_eq!(spectral_centroid(&zeros, &freqs), 0.0);
        assert_eq!(spectral_bandwidth(&zeros, &freqs, 0.0), 0.0);
        assert_eq!(spectral_rolloff(&zeros, 10.0, 0.85), 0.0);
        assert!((spectral_flatness(&zeros) - 1.0).abs() < 1e-12);
        assert_eq!(dominant_frequency(&zeros, 10.0), 0.0);
        assert_eq!(loudness_dbfs(0.0), -200.0);
    }

    /// Spectral flatness by its definition: `exp(mean(ln P)) / mean(P)`, `P` floored at 1e-10.
    fn flatness_by_logs(power: &[f64]) -> f64 {
        let n = power.len() as f64;
        let logs: f64 = power.iter().map(|p| p.max(1e-10).ln()).sum();
        let mean: f64 = power.iter().map(|p| p.max(1e-10)).sum::<f64>() / n;
        (logs / n).exp() / mean
    }

    #[test]
    fn flatness_matches_log_definition() {
        let power: Vec<f64> = (0..1025)
            .map(|k| 1e-12 + (k as f64 * 0.37).sin().abs() * 1e3 / (1.0 + k as f64))
            .collect();
        let expected = flatness_by_logs(&power);
        let got = spectral_flatness(&power);
        assert!(
            (got - expected).abs() < 1e-12 * expected,
            "{got} {expected}"
        );
    }

    #[test]
    fn flatness_of_long_and_extreme_spectra_matches_log_definition() {
        // Long enough to renormalise the lane products several times, with values from the
        // 1e-10 floor up to 1e30, and lengths that leave a tail.
        for len in [1, 7, 8, 9, 2049, 40_003] {
            let power: Vec<f64> = (0..len)
                .map(|k| {
                    let x = (k as f64 * 0.731).sin().abs();
                    if k % 3 == 0 { x * 1e30 } else { x * 1e-12 }
                })
                .collect();
            let expected = flatness_by_logs(&power);
            let got = spectral_flatness(&power);
            assert!(
                (got - expected).abs() < 1e-11 * expected,
                "{len}: {got} {expected}"
            );
        }
    }

    #[test]
    fn ln_positive_matches_std() {
        let mut x = 1e-10;
        while x < 1e12 {
            let sqrt2 = std::f64::consts::SQRT_2;
            for y in [
                x,
                x * sqrt2 * (1.0 - 1e-12),
                x * sqrt2 * (1.0 + 1e-12),
                x * 1.999_999,
            ] {
                let (got, want) = (ln_positive(y), y.ln());
                assert!(
                    (got - want).abs() <= 4e-16 * want.abs().max(1.0),
                    "ln({y}) = {got}, std {want}"
                );
            }
            x *= 1.37;
        }
        let mut db = [0.0, 1.0, 1e-3, 123.0];
        power_to_db_in_place(&mut db);
        for (got, want) in db.iter().zip([-100.0, 0.0, -30.0, 10.0 * 123f64.log10()]) {
            assert!((got - want).abs() < 1e-12, "{got} dB, expected {want}");
        }
    }

    #[test]
    fn dot_and_sum_match_naive() {
        let a: Vec<f64> = (0..37).map(|i| i as f64 * 0.5 - 3.0).collect();
        let b: Vec<f64> = (0..37).map(|i| (i as f64).sqrt()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-12);
        assert!((sum(&a) - a.iter().sum::<f64>()).abs() < 1e-12);
    }

    #[test]
    fn flux_and_peak_match_their_plain_loops() {
        let now: Vec<f64> = (0..257).map(|i| ((i * 37 % 101) as f64).sqrt()).collect();
        let before: Vec<f64> = (0..257).map(|i| ((i * 53 % 97) as f64).sqrt()).collect();
        let naive = now
            .iter()
            .zip(&before)
            .map(|(a, b)| (a - b).max(0.0).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((spectral_flux(&now, &before) - naive).abs() < 1e-12 * naive);
        // The first of equal maxima wins (bins 3 and 9 hold 5.0); DC is ignored.
        let mut magnitude = vec![1.0; 21];
        magnitude[0] = 50.0;
        magnitude[3] = 5.0;
        magnitude[9] = 5.0;
        magnitude[2] = 2.0;
        magnitude[4] = 2.0;
        assert_eq!(dominant_frequency(&magnitude, 10.0), 30.0);
        assert_eq!(dominant_frequency(&[3.0, 0.0, 0.0], 10.0), 0.0);
    }

    #[test]
    fn rolloff_picks_lowest_bin_reaching_threshold() {
        let s = [1.0, 0.0, 2.0, 1.0];
        assert_eq!(spectral_rolloff(&s, 100.0, 0.5), 200.0);
        assert_eq!(spectral_rolloff(&s, 100.0, 0.25), 0.0);
    }
}
