//! Chroma filter bank, a port of `librosa.filters.chroma` (Ellis' `chromagram_E`).

use super::kernels::Kernels;

/// Number of pitch classes.
pub const N_CHROMA: usize = 12;

/// Dense 12 x `n_fft / 2 + 1` chroma weights, as `librosa.filters.chroma(sr, n_fft, tuning=0,
/// n_chroma=12, ctroct=5, octwidth=2, norm=2, base_c=True)`.
#[derive(Debug, Clone)]
pub struct ChromaFilterBank {
    n_bins: usize,
    /// Row-major weights: `weights[c * n_bins + k]`, float32 like librosa's.
    weights: Vec<f32>,
}

impl ChromaFilterBank {
    /// Builds the chroma filters for an `n_fft`-point real FFT at `sample_rate`.
    pub fn new(sample_rate: f64, n_fft: usize) -> Self {
        const CTROCT: f64 = 5.0;
        const OCTWIDTH: f64 = 2.0;
        let n_chroma = N_CHROMA as f64;
        let a440 = 440.0; // tuning = 0

        // Fractional chroma bin of every FFT bin 1..n_fft; bin 0 (DC) is put 1.5 octaves below bin 1.
        let mut frqbins = Vec::with_capacity(n_fft);
        frqbins.push(0.0);
        for k in 1..n_fft {
            let freq = k as f64 * (sample_rate / n_fft as f64);
            frqbins.push(n_chroma * (freq / (a440 / 16.0)).log2());
        }
        frqbins[0] = frqbins[1] - 1.5 * n_chroma;

        let binwidth: Vec<f64> = (0..n_fft)
            .map(|k| {
                if k + 1 < n_fft {
                    (frqbins[k + 1] - frqbins[k]).max(1.0)
                } else {
                    1.0
                }
            })
            .collect();

        let half = (n_chroma / 2.0).round();
        let mut dense = vec![0.0; N_CHROMA * n_fft];
        for k in 0..n_fft {
            let mut sum_sq = 0.0;
            for c in 0..N_CHROMA {
                let d = frqbins[k] - c as f64;
                let d = (d + half + 10.0 * n_chroma).rem_euclid(n_chroma) - half;
                let w = (-0.5 * (2.0 * d / binwidth[k]).powi(2)).exp();
                dense[c * n_fft + k] = w;
                sum_sq += w * w;
            }
            let norm = sum_sq.sqrt();
            let octave_weight =
                (-0.5 * ((frqbins[k] / n_chroma - CTROCT) / OCTWIDTH).powi(2)).exp();
            let scale = if norm < f64::MIN_POSITIVE {
                1.0
            } else {
                1.0 / norm
            };
            for c in 0..N_CHROMA {
                dense[c * n_fft + k] *= scale * octave_weight;
            }
        }

        // base_c: roll so that row 0 is C (A is row 9), then keep the non-negative frequencies.
        let n_bins = n_fft / 2 + 1;
        let mut weights = vec![0.0f32; N_CHROMA * n_bins];
        for c in 0..N_CHROMA {
            let src = (c + 3) % N_CHROMA;
            for k in 0..n_bins {
                weights[c * n_bins + k] = dense[src * n_fft + k] as f32;
            }
        }
        Self { n_bins, weights }
    }

    /// Writes the 12 chroma values of `power` (a power spectrum, in f32 as librosa computes
    /// chroma), divided by their maximum (`norm=inf`); a frame whose maximum is below the
    /// smallest normal f32 is left unnormalised.
    #[inline(always)]
    pub fn apply<K: Kernels>(&self, kernels: K, power: &[f32], out: &mut [f64]) {
        let mut sums = [0.0f32; N_CHROMA];
        kernels.dot_rows_f32(&self.weights, &power[..self.n_bins], &mut sums);
        let mut max = 0.0f64;
        for (o, &v) in out.iter_mut().zip(&sums) {
            *o = f64::from(v);
            max = max.max(o.abs());
        }
        if max >= f64::from(f32::MIN_POSITIVE) {
            for o in out.iter_mut() {
                *o /= max;
            }
        }
    }
}
