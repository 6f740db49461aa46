//! Reading WAV files with the library's own reader ([`specflow::audio::wav`]).

use anyhow::ensure;
use specflow::audio::wav::read_wav;
use std::path::Path;

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
