//! Real-input transforms on rustfft's complex FFT of half the length, fused with what the
//! features need: the power spectrum of a windowed frame, and a frame's linear autocorrelation.
//!
//! An even-length real transform is a complex transform of the samples packed in pairs
//! (`z[n] = x[2n] + i x[2n+1]`, `N/2` points) followed by a split pass that combines bins `k`
//! and `N/2 - k` with twiddles `e^{-2πik/N}` (realfft does the same). realfft's split passes
//! are scalar loops over interleaved complex values, about a fifth of the DSP's time at 16 kHz
//! (benches/README.md, rounds 3 and 6). Here they run over split real and imaginary arrays in
//! straight loops the compiler vectorises, one pass yields both bins of a pair, and the power
//! spectrum comes out of the same pass. Odd lengths (allowed for `frame_length`) take a complex
//! transform of all `N` samples.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::num_traits::{Float, Zero};
use rustfft::{Fft, FftNum, FftPlanner};

/// The sample types the transforms run in: `f32` (YIN) and `f64` (spectrum, pYIN).
pub trait Real: FftNum + Float + bytemuck::Pod {
    /// The value of an input sample.
    fn from_sample(x: f32) -> Self;
    /// The nearest value to `x` (plan constants).
    fn from_constant(x: f64) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn from_sample(x: f32) -> Self {
        x
    }
    fn from_constant(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    #[inline(always)]
    fn from_sample(x: f32) -> Self {
        f64::from(x)
    }
    fn from_constant(x: f64) -> Self {
        x
    }
}

/// Buffers for [`PowerSpectrum::compute`] and [`Autocorrelation::compute`]: one per thread and
/// plan, from the plan's `work()`.
pub struct RealFftWork<T> {
    /// The complex transform's input and output, in place.
    packed: Vec<Complex<T>>,
    scratch: Vec<Complex<T>>,
    /// The half-length transform `Z[k]`, `k` in `0..N/2`, split.
    re: Vec<T>,
    im: Vec<T>,
    /// `Z[N/2 - k]` for `k` in `1..=N/4`, split. `re_rev` also holds the power spectrum in
    /// reverse (`N/2 + 1` values) for the autocorrelation's inverse.
    re_rev: Vec<T>,
    im_rev: Vec<T>,
    /// `|X[N/2 - k]|^2` for `k` in `1..=N/4`, before it is written to its bin.
    high: Vec<T>,
    /// The power spectrum, bins `0..=N/2` (autocorrelation only).
    power: Vec<T>,
}

impl<T> std::fmt::Debug for RealFftWork<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealFftWork")
            .field("packed", &self.packed.len())
            .finish_non_exhaustive()
    }
}

/// The half-length complex transforms of an even length `N` and the split pass's twiddles.
struct EvenSplit<T> {
    half: usize,
    forward: Arc<dyn Fft<T>>,
    inverse: Option<Arc<dyn Fft<T>>>,
    /// `cos(2πk/N)` and `sin(2πk/N)` for `k` in `0..=N/2`.
    cos: Vec<T>,
    sin: Vec<T>,
}

impl<T: Real> EvenSplit<T> {
    fn new(len: usize, with_inverse: bool, planner: &mut FftPlanner<T>) -> Self {
        debug_assert!(len >= 2 && len.is_multiple_of(2));
        let half = len / 2;
        let angle = |k: usize| 2.0 * std::f64::consts::PI * k as f64 / len as f64;
        Self {
            half,
            forward: planner.plan_fft_forward(half),
            inverse: with_inverse.then(|| planner.plan_fft_inverse(half)),
            cos: (0..=half)
                .map(|k| T::from_constant(angle(k).cos()))
                .collect(),
            sin: (0..=half)
                .map(|k| T::from_constant(angle(k).sin()))
                .collect(),
        }
    }

    fn work(&self) -> RealFftWork<T> {
        let scratch_len = self.forward.get_inplace_scratch_len().max(
            self.inverse
                .as_ref()
                .map_or(0, |f| f.get_inplace_scratch_len()),
        );
        let (half, bins, pairs) = (self.half, self.half + 1, self.half / 2);
        RealFftWork {
            packed: vec![Complex::zero(); half],
            scratch: vec![Complex::zero(); scratch_len],
            re: vec![T::zero(); half],
            im: vec![T::zero(); half],
            re_rev: vec![T::zero(); bins],
            im_rev: vec![T::zero(); pairs],
            high: vec![T::zero(); pairs],
            power: vec![T::zero(); bins],
        }
    }

    fn fits(&self, work: &RealFftWork<T>) -> bool {
        work.packed.len() == self.half && work.re.len() == self.half
    }

    /// Transforms `work.packed` (the samples in pairs) and writes `|X[k]|^2` for `k` in
    /// `0..=N/2` to `power`.
    #[inline(always)]
    fn forward_power(&self, work: &mut RealFftWork<T>, power: &mut [T]) {
        let m = self.half;
        self.forward
            .process_with_scratch(&mut work.packed, &mut work.scratch);

        // Bins k and m - k come from the same two values Z[k] and Z[m - k]: with
        // A = Z[k], B = conj(Z[m - k]), the even part E = (A + B) / 2, the odd part
        // O = (A - B) / 2i and W = e^{-2πik/N}, X[k] = E + W O and X[m - k] = conj(E - W O).
        // So one pass over k in 1..=m/2 gives both powers, from split arrays read forwards.
        let pairs = m / 2;
        let (re, im) = (&mut work.re[..m], &mut work.im[..m]);
        for ((r, i), c) in re.iter_mut().zip(im.iter_mut()).zip(&work.packed) {
            *r = c.re;
            *i = c.im;
        }
        // re_rev[j] = re[m - 1 - j]: Z[m - k] for k = 1 + j.
        let (re_rev, im_rev) = (&mut work.re_rev[..pairs], &mut work.im_rev[..pairs]);
        for ((dr, di), (&r, &i)) in re_rev.iter_mut().zip(im_rev.iter_mut()).zip(
            re[m - pairs..]
                .iter()
                .rev()
                .zip(im[m - pairs..].iter().rev()),
        ) {
            *dr = r;
            *di = i;
        }
        // X[0] and X[m] are real: Re Z[0] + Im Z[0] and Re Z[0] - Im Z[0].
        let (dc, nyquist) = (re[0] + im[0], re[0] - im[0]);
        power[0] = dc * dc;
        power[m] = nyquist * nyquist;

        let half = T::from_constant(0.5);
        let (cos, sin) = (&self.cos[1..=pairs], &self.sin[1..=pairs]);
        let (re, im) = (&re[1..=pairs], &im[1..=pairs]);
        let (re_rev, im_rev) = (&*re_rev, &*im_rev);
        let (low, high) = (&mut power[1..=pairs], &mut work.high[..pairs]);
        for j in 0..pairs {
            let (ar, ai, br, bi) = (re[j], im[j], re_rev[j], im_rev[j]);
            let even_re = half * (ar + br);
            let even_im = half * (ai - bi);
            let odd_re = half * (ai + bi);
            let odd_im = half * (br - ar);
            let turned_re = cos[j] * odd_re + sin[j] * odd_im;
            let turned_im = cos[j] * odd_im - sin[j] * odd_re;
            let (sum_re, sum_im) = (even_re + turned_re, even_im + turned_im);
            let (diff_re, diff_im) = (even_re - turned_re, even_im - turned_im);
            low[j] = sum_re * sum_re + sum_im * sum_im;
            high[j] = diff_re * diff_re + diff_im * diff_im;
        }
        // high[j] is bin m - 1 - j; for even m the middle bin m/2 is in both, keep `low`'s.
        let upper = &mut power[pairs + 1..m];
        for (p, &h) in upper.iter_mut().rev().zip(&work.high[..pairs]) {
            *p = h;
        }
    }
}

/// How a [`PowerSpectrum`] transforms.
enum SpectrumPlan<T> {
    Even(EvenSplit<T>),
    /// Odd length `N`: a complex transform of all `N` samples.
    Odd(Arc<dyn Fft<T>>),
}

/// The power spectrum `|rfft(w * x)[k]|^2`, `k` in `0..=N/2`, of frames of one length `N`
/// under one window `w`.
pub struct PowerSpectrum<T> {
    len: usize,
    window: Vec<T>,
    plan: SpectrumPlan<T>,
}

impl<T> std::fmt::Debug for PowerSpectrum<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerSpectrum")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<T: Real> PowerSpectrum<T> {
    /// Plans the spectrum of `window.len()`-sample frames under `window`.
    pub fn new(window: Vec<T>, planner: &mut FftPlanner<T>) -> Self {
        let len = window.len();
        assert!(len >= 2, "spectrum of frames of {len} samples");
        let plan = if len.is_multiple_of(2) {
            SpectrumPlan::Even(EvenSplit::new(len, false, planner))
        } else {
            SpectrumPlan::Odd(planner.plan_fft_forward(len))
        };
        Self { len, window, plan }
    }

    /// Number of bins, `N/2 + 1`.
    pub fn bins(&self) -> usize {
        self.len / 2 + 1
    }

    /// Buffers for [`Self::compute`].
    pub fn work(&self) -> RealFftWork<T> {
        match &self.plan {
            SpectrumPlan::Even(split) => split.work(),
            SpectrumPlan::Odd(fft) => RealFftWork {
                packed: vec![Complex::zero(); self.len],
                scratch: vec![Complex::zero(); fft.get_inplace_scratch_len()],
                re: Vec::new(),
                im: Vec::new(),
                re_rev: Vec::new(),
                im_rev: Vec::new(),
                high: Vec::new(),
                power: Vec::new(),
            },
        }
    }

    /// True when `work` was made by a plan of the same length.
    pub fn fits(&self, work: &RealFftWork<T>) -> bool {
        match &self.plan {
            SpectrumPlan::Even(split) => split.fits(work),
            SpectrumPlan::Odd(_) => work.packed.len() == self.len && work.re.is_empty(),
        }
    }

    /// Writes the power spectrum of `frame` (length `N`) under the window to `power`
    /// (length `N/2 + 1`). Allocation-free.
    ///
    /// # Panics
    /// When the lengths differ from the plan's, or `work` was made by another plan.
    #[inline(always)]
    pub fn compute(&self, frame: &[f32], work: &mut RealFftWork<T>, power: &mut [T]) {
        assert!(frame.len() == self.len && power.len() == self.bins() && self.fits(work));
        match &self.plan {
            SpectrumPlan::Even(split) => {
                // The samples in pairs: z[n] = x[2n] + i x[2n+1], written as one flat run.
                let flat = as_flat(&mut work.packed);
                for ((z, &x), &w) in flat.iter_mut().zip(frame).zip(&self.window) {
                    *z = w * T::from_sample(x);
                }
                split.forward_power(work, power);
            }
            SpectrumPlan::Odd(fft) => {
                for ((c, &x), &w) in work.packed.iter_mut().zip(frame).zip(&self.window) {
                    *c = Complex::new(w * T::from_sample(x), T::zero());
                }
                fft.process_with_scratch(&mut work.packed, &mut work.scratch);
                for (p, c) in power.iter_mut().zip(&work.packed) {
                    *p = c.re * c.re + c.im * c.im;
                }
            }
        }
    }
}

/// Smallest even length `>= n` whose only prime factors are 2, 3 and 5 (fast for rustfft's
/// mixed-radix transforms; even for the half-length split).
pub fn fast_even_len(n: usize) -> usize {
    let half = n.div_ceil(2).max(1);
    let mut best = half.next_power_of_two();
    let mut p5 = 1;
    while p5 < best {
        let mut p35 = p5;
        while p35 < best {
            let mut p = p35;
            while p < half {
                p *= 2;
            }
            best = best.min(p);
            p35 *= 3;
        }
        p5 *= 5;
    }
    2 * best
}

/// The linear autocorrelation `acf[τ] = Σ_j x[j] x[j + τ]` of frames zero-padded to an even
/// transform length `L` (`L >= frame length + largest lag` keeps it linear), through
/// `irfft(|rfft(x)|^2)`.
pub struct Autocorrelation<T> {
    len: usize,
    split: EvenSplit<T>,
}

impl<T> std::fmt::Debug for Autocorrelation<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autocorrelation")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<T: Real> Autocorrelation<T> {
    /// Plans transforms of `len` points.
    ///
    /// # Panics
    /// When `len` is odd or below 2 (use [`fast_even_len`]).
    pub fn new(len: usize, planner: &mut FftPlanner<T>) -> Self {
        assert!(
            len >= 2 && len.is_multiple_of(2),
            "autocorrelation length {len} must be even"
        );
        Self {
            len,
            split: EvenSplit::new(len, true, planner),
        }
    }

    /// The transform length `L`.
    pub fn transform_len(&self) -> usize {
        self.len
    }

    /// Buffers for [`Self::compute`].
    pub fn work(&self) -> RealFftWork<T> {
        self.split.work()
    }

    /// True when `work` was made by a plan of the same length.
    pub fn fits(&self, work: &RealFftWork<T>) -> bool {
        self.split.fits(work)
    }

    /// The autocorrelation of `frame` (at most `L` samples) for lags `0..L`, each times `L`
    /// (unnormalised, as an unscaled inverse FFT). Allocation-free.
    ///
    /// # Panics
    /// When `frame` is longer than `L` or `work` was made by another plan.
    #[inline(always)]
    pub fn compute<'w>(&self, frame: &[f32], work: &'w mut RealFftWork<T>) -> &'w [T] {
        assert!(frame.len() <= self.len && self.fits(work));
        // The samples in pairs, z[n] = x[2n] + i x[2n+1], zero-padded: one flat run.
        let flat = as_flat(&mut work.packed);
        for (z, &x) in flat.iter_mut().zip(frame) {
            *z = T::from_sample(x);
        }
        flat[frame.len()..].fill(T::zero());

        let mut power = std::mem::take(&mut work.power);
        self.split.forward_power(work, &mut power);

        // The inverse of a real even spectrum P: Z[k] = (P[k] + P[m-k]) - (P[k] - P[m-k]) sin
        // + i (P[k] - P[m-k]) cos (twice the even part plus i times twice the odd part), whose
        // half-length inverse holds acf[2n] + i acf[2n+1], times L.
        let m = self.split.half;
        let bins = m + 1;
        let reversed = &mut work.re_rev[..bins];
        for (r, &p) in reversed.iter_mut().zip(power[..bins].iter().rev()) {
            *r = p;
        }
        let (cos, sin) = (&self.split.cos[..m], &self.split.sin[..m]);
        let (forward, reversed) = (&power[..m], &reversed[..m]);
        for (k, c) in work.packed[..m].iter_mut().enumerate() {
            let sum = forward[k] + reversed[k];
            let difference = forward[k] - reversed[k];
            *c = Complex::new(sum - difference * sin[k], difference * cos[k]);
        }
        work.power = power;
        self.split
            .inverse
            .as_ref()
            .expect("autocorrelation plans its inverse")
            .process_with_scratch(&mut work.packed, &mut work.scratch);
        as_flat(&mut work.packed)
    }
}

/// Complex values as their interleaved real and imaginary parts.
#[inline(always)]
fn as_flat<T: bytemuck::Pod>(values: &mut [Complex<T>]) -> &mut [T] {
    // `Complex<T>` is `#[repr(C)]` { re, im } and plain old data (num-complex's `bytemuck`
    // feature), so `n` complex values are `2n` contiguous `T`s.
    bytemuck::cast_slice_mut(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct DFT power spectrum, for comparison.
    fn dft_power(x: &[f64]) -> Vec<f64> {
        let n = x.len();
        (0..=n / 2)
            .map(|k| {
                let (mut re, mut im) = (0.0, 0.0);
                for (j, &v) in x.iter().enumerate() {
                    let a = -2.0 * std::f64::consts::PI * (k * j) as f64 / n as f64;
                    re += v * a.cos();
                    im += v * a.sin();
                }
                re * re + im * im
            })
            .collect()
    }

    fn signal(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f64;
                (0.5 * (t * 0.37).sin() + 0.2 * (t * 1.91).cos() + 0.05 * ((t * t) % 7.0 - 3.0))
                    as f32
            })
            .collect()
    }

    #[test]
    fn power_spectrum_matches_the_dft_for_even_and_odd_lengths() {
        for n in [2, 3, 4, 6, 8, 10, 15, 400, 401, 402, 512] {
            let x = signal(n);
            let window: Vec<f64> = (0..n).map(|i| 1.0 - 0.3 * (i as f64 / n as f64)).collect();
            let plan = PowerSpectrum::new(window.clone(), &mut FftPlanner::new());
            let mut work = plan.work();
            let mut power = vec![0.0; plan.bins()];
            let louder: Vec<f32> = x.iter().rev().map(|v| 3.0 * v + 0.5).collect();
            plan.compute(&louder, &mut work, &mut power);
            plan.compute(&x, &mut work, &mut power);
            let windowed: Vec<f64> = x
                .iter()
                .zip(&window)
                .map(|(&v, w)| w * f64::from(v))
                .collect();
            let expected = dft_power(&windowed);
            let scale = expected.iter().fold(0.0f64, |m, &v| m.max(v));
            for (k, (&got, &want)) in power.iter().zip(&expected).enumerate() {
                assert!(
                    (got - want).abs() <= 1e-12 * scale.max(1.0),
                    "n {n} bin {k}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn autocorrelation_is_linear_and_matches_the_direct_sum() {
        for (frame_len, max_lag) in [
            (1, 1),
            (7, 5),
            (512, 247),
            (401, 300),
            (512, 400),
            (2048, 739),
        ] {
            let x = signal(frame_len);
            let len = fast_even_len(frame_len + max_lag);
            let plan = Autocorrelation::<f64>::new(len, &mut FftPlanner::new());
            let mut work = plan.work();
            // A first, different frame: nothing of it may leak into the next.
            let louder: Vec<f32> = x.iter().rev().map(|v| 3.0 * v + 0.5).collect();
            plan.compute(&louder, &mut work);
            let acf = plan.compute(&x, &mut work).to_vec();
            for tau in 0..=max_lag.min(frame_len - 1) {
                let direct: f64 = (0..frame_len - tau)
                    .map(|j| f64::from(x[j]) * f64::from(x[j + tau]))
                    .sum();
                let got = acf[tau] / len as f64;
                assert!(
                    (got - direct).abs() < 1e-10 * (1.0 + direct.abs()),
                    "frame {frame_len} lag {tau}: {got} vs {direct}"
                );
            }
            // The same in f32, within float32 rounding.
            let plan32 = Autocorrelation::<f32>::new(len, &mut FftPlanner::new());
            let mut work32 = plan32.work();
            plan32.compute(&louder, &mut work32);
            let acf32 = plan32.compute(&x, &mut work32);
            for tau in 0..=max_lag.min(frame_len - 1) {
                let got = f64::from(acf32[tau]) / len as f64;
                let want = acf[tau] / len as f64;
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + acf[0] / len as f64),
                    "f32 lag {tau}"
                );
            }
        }
    }

    #[test]
    fn fast_even_len_is_even_and_smooth() {
        assert_eq!(fast_even_len(759), 768);
        assert_eq!(fast_even_len(2787), 2880);
        assert_eq!(fast_even_len(1024), 1024);
        assert_eq!(fast_even_len(1), 2);
        for n in 1..3000 {
            let len = fast_even_len(n);
            assert!(len >= n && len.is_multiple_of(2), "{n} -> {len}");
            let mut rest = len;
            for p in [2, 3, 5] {
                while rest.is_multiple_of(p) {
                    rest /= p;
                }
            }
            assert_eq!(rest, 1, "{n} -> {len}");
        }
    }
}
