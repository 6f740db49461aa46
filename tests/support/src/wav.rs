//! Reading WAV files with `hound`.

use anyhow::{Context as _, ensure};
use std::path::Path;

/// Sample rate and channel count of a WAV file.
pub fn wav_format(path: &Path) -> anyhow::Result<(u32, u16)> {
    let reader =
        hound::WavReader::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec = reader.spec();
    Ok((spec.sample_rate, spec.channels))
}

/// Mono samples of a 16-bit WAV as the reference script makes them (int16 / 32768, channels
/// averaged in f64), and its sample rate.
pub fn read_mono_wav(path: &Path) -> anyhow::Result<(Vec<f32>, u32)> {
    let mut reader =
        hound::WavReader::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec = reader.spec();
    ensure!(
        spec.bits_per_sample == 16,
        "{}: expected 16-bit PCM",
        path.display()
    );
    let channels = usize::from(spec.channels);
    let raw = reader
        .samples::<i16>()
        .collect::<Result<Vec<i16>, _>>()
        .with_context(|| format!("{}: bad sample", path.display()))?;
    let mono = raw
        .chunks_exact(channels)
        .map(|frame| {
            let sum: f64 = frame.iter().map(|&s| f64::from(s) / 32768.0).sum();
            (sum / channels as f64) as f32
        })
        .collect();
    Ok((mono, spec.sample_rate))
}
