//! `specflow extract`: features of a WAV file as JSON lines, through the daemon's own DSP path.

use std::io::Write;
use std::path::Path;

use specflow::audio::wav::{WavError, read_wav};
use specflow::dsp::{DspConfig, DspError, FeatureExtractor, FrameBatch};

/// Why extraction failed.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The file could not be read as WAV.
    #[error(transparent)]
    Wav(#[from] WavError),
    /// The parameters do not fit the file.
    #[error("{0}")]
    Dsp(#[from] DspError),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

/// Computes every frame of `path` with `config` and writes one JSON object per line to `out`.
/// Returns the number of frames.
pub fn extract_wav(
    path: &Path,
    config: &DspConfig,
    out: &mut impl Write,
) -> Result<usize, ExtractError> {
    let audio = read_wav(path)?;
    let extractor = FeatureExtractor::new(config, audio.sample_rate)?;
    let mut workspace = extractor.workspace();
    let mut state = extractor.new_stream(0);
    let mut frames = FrameBatch::new();
    let mut count = 0;
    // Feed in one-second chunks, exactly as the daemon would see a stream, then end it (the
    // frames still waiting for their pitch decision with pYIN are decided in full).
    let mut chunks = audio
        .samples
        .chunks(audio.sample_rate.max(1) as usize)
        .peekable();
    while let Some(chunk) = chunks.next() {
        extractor.process(&mut workspace, &mut state, chunk, &mut frames);
        if chunks.peek().is_none() {
            extractor.finish_stream(&mut state, &mut frames);
        }
        for i in 0..frames.len() {
            serde_json::to_writer(&mut *out, &frames.frame(i)).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        count += frames.len();
        frames.clear();
    }
    out.flush()?;
    Ok(count)
}
