//! WAV files (for `specflow extract` and `specflow produce`): read whole into mono `f32`.

use std::path::Path;

/// Why a WAV file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// The file is not a readable WAV (missing, not RIFF/WAVE, truncated header).
    #[error("{path}: not a readable WAV file: {source}")]
    Open {
        /// The file.
        path: String,
        /// What the WAV reader said.
        source: hound::Error,
    },
    /// The sample encoding is not one we decode.
    #[error("{path}: unsupported WAV encoding: {bits}-bit {kind}")]
    Unsupported {
        /// The file.
        path: String,
        /// Bits per sample.
        bits: u16,
        /// `integer` or `float`.
        kind: &'static str,
    },
    /// The data chunk ends early or holds a bad sample.
    #[error("{path}: truncated or corrupt sample data: {source}")]
    Data {
        /// The file.
        path: String,
        /// What the WAV reader said.
        source: hound::Error,
    },
}

/// A WAV file's audio, downmixed to mono by averaging channels.
#[derive(Debug, Clone)]
pub struct MonoAudio {
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Channels in the file.
    pub channels: u16,
    /// Mono samples in `[-1, 1)`.
    pub samples: Vec<f32>,
    /// The file's interleaved samples as 16-bit PCM (what `produce` sends), per channel.
    pub pcm_s16: Vec<i16>,
}

/// Reads a whole WAV file (8/16/24/32-bit integer or 32-bit float PCM).
pub fn read_wav(path: &Path) -> Result<MonoAudio, WavError> {
    let name = path.display().to_string();
    let reader = hound::WavReader::open(path).map_err(|source| WavError::Open {
        path: name.clone(),
        source,
    })?;
    let spec = reader.spec();
    let channels = spec.channels.max(1);
    let data_err = |source| WavError::Data {
        path: name.clone(),
        source,
    };
    let interleaved: Vec<f64> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = f64::from(1u32 << (bits - 1));
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| f64::from(v) / scale))
                .collect::<Result<_, _>>()
                .map_err(data_err)?
        }
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .map(|s| s.map(f64::from))
            .collect::<Result<_, _>>()
            .map_err(data_err)?,
        (format, bits) => {
            return Err(WavError::Unsupported {
                path: name,
                bits,
                kind: if format == hound::SampleFormat::Float {
                    "float"
                } else {
                    "integer"
                },
            });
        }
    };
    let per_frame = usize::from(channels);
    let samples = interleaved
        .chunks_exact(per_frame)
        .map(|frame| (frame.iter().sum::<f64>() / per_frame as f64) as f32)
        .collect();
    let pcm_s16 = interleaved
        .iter()
        .map(|v| (v * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16)
        .collect();
    Ok(MonoAudio {
        sample_rate: spec.sample_rate,
        channels,
        samples,
        pcm_s16,
    })
}
