//! Reading WAV files: the header with `hound`, the samples with the library's own reader
//! ([`specflow::audio::wav`]).

use anyhow::{Context as _, ensure};
use specflow::audio::wav::read_wav;
use std::path::Path;

/// Sample rate and channel count of a WAV file.
pub fn wav_format(path: &Path) -> anyhow::Result<(u32, u16)> {
    let reader =
        hound::WavReader::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec = reader.spec();
    Ok((spec.sample_rate, spec.channels))
}

/// Mono samples of a 16-bit WAV as the reference script makes them (int16 / 32768, channels
/// averaged in f64), and its sample rate: [`specflow::audio::wav::read_wav`], which reads them
/// so, limited to 16-bit files.
pub fn read_mono_wav(path: &Path) -> anyhow::Result<(Vec<f32>, u32)> {
    let audio = read_wav(path)?;
    ensure!(
        audio.bits_per_sample == 16,
        "{}: expected 16-bit PCM",
        path.display()
    );
    Ok((audio.samples, audio.sample_rate))
}
