//! Mel filter bank (a port of `librosa.filters.mel`) and the MFCC DCT.

use super::config::MelScale;
use super::kernels::Kernels;

/// Hz to mel on the chosen scale (`librosa.hz_to_mel`).
pub fn hz_to_mel(hz: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + hz / 700.0).log10(),
        MelScale::Slaney => {
            const F_SP: f64 = 200.0 / 3.0;
            const MIN_LOG_HZ: f64 = 1000.0;
            const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
            let logstep = 6.4f64.ln() / 27.0;
            if hz >= MIN_LOG_HZ {
                MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / logstep
            } else {
                hz / F_SP
            }
        }
    }
}

/// Mel to Hz on the chosen scale (`librosa.mel_to_hz`).
pub fn mel_to_hz(mel: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(mel / 2595.0) - 1.0),
        MelScale::Slaney => {
            const F_SP: f64 = 200.0 / 3.0;
            const MIN_LOG_HZ: f64 = 1000.0;
            const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
            let logstep = 6.4f64.ln() / 27.0;
            if mel >= MIN_LOG_MEL {
                MIN_LOG_HZ * (logstep * (mel - MIN_LOG_MEL)).exp()
            } else {
                F_SP * mel
            }
        }
    }
}

/// One triangular mel filter: weights for the contiguous FFT bins from `first_bin`.
#[derive(Debug, Clone)]
struct MelFilter {
    first_bin: usize,
    weights: Vec<f64>,
}

/// Slaney-normalised triangular mel filters over the bins of an `n_fft`-point real FFT.
#[derive(Debug, Clone)]
pub struct MelFilterBank {
    filters: Vec<MelFilter>,
}

impl MelFilterBank {
    /// Builds `n_mels` filters between `fmin` and `fmax` Hz exactly as
    /// `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk, norm="slaney")`, stored sparsely.
    pub fn new(
        sample_rate: f64,
        n_fft: usize,
        n_mels: usize,
        fmin: f64,
        fmax: f64,
        scale: MelScale,
    ) -> Self {
        let n_bins = n_fft / 2 + 1;
        let fft_freqs: Vec<f64> = (0..n_bins)
            .map(|k| k as f64 * sample_rate / n_fft as f64)
            .collect();

        // n_mels + 2 points evenly spaced on the mel scale (np.linspace semantics).
        let min_mel = hz_to_mel(fmin, scale);
        let max_mel = hz_to_mel(fmax, scale);
        let n_points = n_mels + 2;
        let step = (max_mel - min_mel) / (n_points - 1) as f64;
        let mel_f: Vec<f64> = (0..n_points)
            .map(|i| {
                let mel = if i == n_points - 1 {
                    max_mel
                } else {
                    min_mel + i as f64 * step
                };
                mel_to_hz(mel, scale)
            })
            .collect();

        let filters = (0..n_mels)
            .map(|i| {
                let lower_width = mel_f[i + 1] - mel_f[i];
                let upper_width = mel_f[i + 2] - mel_f[i + 1];
                let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
                let dense: Vec<f64> = fft_freqs
                    .iter()
                    .map(|&f| {
                        let lower = (f - mel_f[i]) / lower_width;
                        let upper = (mel_f[i + 2] - f) / upper_width;
                        let w = lower.min(upper).max(0.0);
                        // librosa stores the basis as float32.
                        (w * enorm) as f32 as f64
                    })
                    .collect();
                match dense.iter().position(|&w| w > 0.0) {
                    Some(first) => {
                        let last = dense.iter().rposition(|&w| w > 0.0).unwrap_or(first);
                        // Whole lanes of eight (zero weights added after the filter, or
                        // before it at the top of the spectrum): the dot product then has no
                        // scalar tail. Zero weights add exact zeros.
                        let len = (last + 1 - first).next_multiple_of(8).min(dense.len());
                        let first = first.min(dense.len() - len);
                        MelFilter {
                            first_bin: first,
                            weights: dense[first..first + len].to_vec(),
                        }
                    }
                    None => MelFilter {
                        first_bin: 0,
                        weights: Vec::new(),
                    },
                }
            })
            .collect();
        Self { filters }
    }

    /// Number of mel bands.
    pub fn n_mels(&self) -> usize {
        self.filters.len()
    }

    /// Writes the mel power of each band of `power` (a power spectrum) into `out`.
    #[inline(always)]
    pub fn apply<K: Kernels>(&self, kernels: K, power: &[f64], out: &mut [f64]) {
        for (filter, o) in self.filters.iter().zip(out.iter_mut()) {
            let bins = &power[filter.first_bin..filter.first_bin + filter.weights.len()];
            *o = kernels.dot(&filter.weights, bins);
        }
    }
}

/// DCT-II with orthonormal scaling (`scipy.fft.dct(type=2, norm="ortho")`), first `n_out` rows.
#[derive(Debug, Clone)]
pub struct DctMatrix {
    n_in: usize,
    rows: Vec<f64>,
}

impl DctMatrix {
    /// The `n_out` x `n_in` orthonormal DCT-II matrix.
    pub fn new(n_in: usize, n_out: usize) -> Self {
        let n = n_in as f64;
        let mut rows = Vec::with_capacity(n_in * n_out);
        for k in 0..n_out {
            let scale = if k == 0 {
                (1.0 / n).sqrt()
            } else {
                (2.0 / n).sqrt()
            };
            for i in 0..n_in {
                let angle = std::f64::consts::PI * k as f64 * (2 * i + 1) as f64 / (2.0 * n);
                rows.push(scale * angle.cos());
            }
        }
        Self { n_in, rows }
    }

    /// Writes `out.len()` DCT coefficients of `input`.
    #[inline(always)]
    pub fn apply<K: Kernels>(&self, kernels: K, input: &[f64], out: &mut [f64]) {
        kernels.dot_rows(&self.rows, &input[..self.n_in], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_scale_round_trips() {
        for hz in [0.0, 100.0, 999.0, 1000.0, 4000.0, 11025.0] {
            for scale in [MelScale::Slaney, MelScale::Htk] {
                let back = mel_to_hz(hz_to_mel(hz, scale), scale);
                assert!(
                    (back - hz).abs() < 1e-9 * hz.max(1.0),
                    "{hz} {scale:?} {back}"
                );
            }
        }
        assert!((hz_to_mel(1000.0, MelScale::Slaney) - 15.0).abs() < 1e-12);
    }

    #[test]
    fn dct_of_constant_is_only_dc() {
        let dct = DctMatrix::new(8, 4);
        let mut out = [0.0; 4];
        dct.apply(crate::dsp::kernels::Portable, &[1.0; 8], &mut out);
        assert!((out[0] - 8f64.sqrt()).abs() < 1e-12);
        assert!(out[1..].iter().all(|v| v.abs() < 1e-12));
    }
}
