//! Analysis windows with `scipy.signal.get_window(..., fftbins=True)` (periodic) semantics.

use std::f64::consts::PI;

use super::config::WindowKind;

/// The periodic window of `kind` with `length` samples, in f64.
///
/// Periodic means the symmetric window of `length + 1` samples without its last sample,
/// which is what `scipy.signal.get_window` returns with `fftbins=True` and what librosa uses.
pub fn periodic_window(kind: WindowKind, length: usize) -> Vec<f64> {
    let n = length as f64;
    (0..length)
        .map(|i| {
            let phase = 2.0 * PI * i as f64 / n;
            match kind {
                WindowKind::Hann => 0.5 - 0.5 * phase.cos(),
                WindowKind::Hamming => 0.54 - 0.46 * phase.cos(),
                WindowKind::Blackman => 0.42 - 0.5 * phase.cos() + 0.08 * (2.0 * phase).cos(),
                WindowKind::Rectangular => 1.0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hann_is_periodic() {
        let w = periodic_window(WindowKind::Hann, 8);
        assert_eq!(w[0], 0.0);
        assert!((w[4] - 1.0).abs() < 1e-15);
        assert!((w[2] - 0.5).abs() < 1e-15);
        assert!((w[1] - w[7]).abs() < 1e-15);
    }

    #[test]
    fn blackman_starts_at_zero() {
        let w = periodic_window(WindowKind::Blackman, 16);
        assert!(w[0].abs() < 1e-15);
        assert!((w[8] - 1.0).abs() < 1e-12);
    }
}
