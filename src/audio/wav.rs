//! WAV files and bodies, read with `hound`: the one WAV reader of the crate.
//!
//! - [`read_wav`]: a whole file, downmixed to mono `f32` (for `specflow extract` and
//!   `specflow produce`, and the tests' reference signals), with its 16-bit PCM.
//! - [`decode_wav_pcm`]: WAV bytes (a gateway request body) as the wire carries PCM, in a
//!   [`SampleFormat`] the worker decodes.

use std::io::{Cursor, Read};
use std::path::Path;

use super::SampleFormat;

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
    /// Bits per sample in the file (8, 16, 24 or 32).
    pub bits_per_sample: u16,
    /// Mono samples: integer PCM scaled into `[-1, 1)`; 32-bit float samples as stored (not
    /// clamped or checked).
    pub samples: Vec<f32>,
    /// The file's interleaved samples as 16-bit PCM (what `produce` sends), per channel.
    pub pcm_s16: Vec<i16>,
}

/// Reads a whole WAV file (8/16/24/32-bit integer or 32-bit float PCM).
///
/// Integer samples are scaled by `2^(bits-1)` in `f64`, channels averaged in `f64`, then
/// rounded once to `f32`.
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
    let per_frame = usize::from(channels);
    // 16-bit PCM, the common case, is read straight into its `i16`s: its `f64` value `v / 2^15`
    // is exact, so the mono mix below is the same as through the general path.
    if (spec.sample_format, spec.bits_per_sample) == (hound::SampleFormat::Int, 16) {
        let pcm_s16 = read_pcm_s16(reader).map_err(data_err)?;
        let samples = pcm_s16
            .chunks_exact(per_frame)
            .map(|frame| mono_of(frame.iter().map(|&v| f64::from(v) / 32_768.0), per_frame))
            .collect();
        return Ok(MonoAudio {
            sample_rate: spec.sample_rate,
            channels,
            bits_per_sample: spec.bits_per_sample,
            samples,
            pcm_s16,
        });
    }
    let mut interleaved: Vec<f64> = Vec::with_capacity(first_allocation(&reader));
    match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, bits @ (8 | 24 | 32)) => {
            let scale = f64::from(1u32 << (bits - 1));
            for sample in reader.into_samples::<i32>() {
                interleaved.push(f64::from(sample.map_err(data_err)?) / scale);
            }
        }
        (hound::SampleFormat::Float, 32) => {
            for sample in reader.into_samples::<f32>() {
                interleaved.push(f64::from(sample.map_err(data_err)?));
            }
        }
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
    }
    let samples = interleaved
        .chunks_exact(per_frame)
        .map(|frame| mono_of(frame.iter().copied(), per_frame))
        .collect();
    let pcm_s16 = interleaved
        .iter()
        .map(|v| (v * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16)
        .collect();
    Ok(MonoAudio {
        sample_rate: spec.sample_rate,
        channels,
        bits_per_sample: spec.bits_per_sample,
        samples,
        pcm_s16,
    })
}

/// Samples to allocate for before reading: the header's count, trusted only up to 2^26 (a
/// header that claims more grows its buffer as the samples arrive).
fn first_allocation<R: Read>(reader: &hound::WavReader<R>) -> usize {
    (reader.len() as usize).min(1 << 26)
}

/// The samples of a 16-bit PCM file whose header `reader` has read: the first through hound,
/// which checks that a sample takes two bytes, the rest converted from the data chunk's bytes
/// in 64 KiB blocks (hound reads one sample per call).
fn read_pcm_s16<R: Read>(mut reader: hound::WavReader<R>) -> Result<Vec<i16>, hound::Error> {
    let len = reader.len() as usize;
    let mut pcm = Vec::with_capacity(first_allocation(&reader));
    let Some(first) = reader.samples::<i16>().next() else {
        return Ok(pcm);
    };
    pcm.push(first?);
    let mut data = reader.into_inner();
    let mut block = vec![0u8; 1 << 16];
    let mut remaining = (len - 1) * 2;
    while remaining > 0 {
        let bytes = &mut block[..remaining.min(1 << 16)];
        // A data chunk that ends early fails here (UnexpectedEof), as hound's own reads would.
        data.read_exact(bytes)?;
        pcm.extend(
            bytes
                .chunks_exact(2)
                .map(|pair| i16::from_le_bytes([pair[0], pair[1]])),
        );
        remaining -= bytes.len();
    }
    Ok(pcm)
}

/// The mono sample of one frame's channel values (in `[-1, 1)` for integer PCM; a float file's
/// as stored): their mean in `f64`, rounded once to `f32`.
fn mono_of(values: impl Iterator<Item = f64>, channels: usize) -> f32 {
    (values.sum::<f64>() / channels as f64) as f32
}

/// Why WAV bytes could not be decoded to wire PCM.
#[derive(Debug, thiserror::Error)]
pub enum WavDecodeError {
    /// The bytes do not start with a readable WAV header.
    #[error("not a readable WAV file: {source}")]
    Header {
        /// What the WAV reader said.
        source: hound::Error,
    },
    /// The sample encoding has no wire format.
    #[error(
        "WAV samples of {bits}-bit {kind:?} are not supported (integer up to 32 bits or 32-bit float)"
    )]
    Unsupported {
        /// Bits per sample.
        bits: u16,
        /// Integer or float.
        kind: hound::SampleFormat,
    },
    /// The data chunk ends early or holds a bad sample.
    #[error("the WAV data cannot be read: {source}")]
    Data {
        /// What the WAV reader said.
        source: hound::Error,
    },
}

/// WAV samples as the wire carries them: interleaved little-endian PCM and its layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavPcm {
    /// The wire encoding of the samples.
    pub format: SampleFormat,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u16,
    /// The samples, interleaved, in `format`.
    pub pcm: Vec<u8>,
}

/// Decodes WAV bytes to wire PCM: integers up to 16 bits as `s16le`, 17 to 32 bits as
/// `s32le` (each left-aligned: 8-bit `v` is `v << 8`, 24-bit `v << 8`), 32-bit float as
/// `f32le`.
pub fn decode_wav_pcm(bytes: &[u8]) -> Result<WavPcm, WavDecodeError> {
    let mut reader = hound::WavReader::new(Cursor::new(bytes))
        .map_err(|source| WavDecodeError::Header { source })?;
    let spec = reader.spec();
    let truncated = |source: hound::Error| WavDecodeError::Data { source };
    // hound reads each sample from its container, whatever its width (24-bit samples in
    // 4-byte slots included).
    let (format, pcm): (SampleFormat, Vec<u8>) = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 1..=16) => {
            let shift = 16 - u32::from(spec.bits_per_sample);
            let mut pcm = Vec::with_capacity(reader.len() as usize * 2);
            for sample in reader.samples::<i32>() {
                pcm.extend_from_slice(
                    &((sample.map_err(truncated)? << shift) as i16).to_le_bytes(),
                );
            }
            (SampleFormat::S16le, pcm)
        }
        (hound::SampleFormat::Int, 17..=32) => {
            let shift = 32 - u32::from(spec.bits_per_sample);
            let mut pcm = Vec::with_capacity(reader.len() as usize * 4);
            for sample in reader.samples::<i32>() {
                pcm.extend_from_slice(&(sample.map_err(truncated)? << shift).to_le_bytes());
            }
            (SampleFormat::S32le, pcm)
        }
        (hound::SampleFormat::Float, 32) => {
            let mut pcm = Vec::with_capacity(reader.len() as usize * 4);
            for sample in reader.samples::<f32>() {
                pcm.extend_from_slice(&sample.map_err(truncated)?.to_le_bytes());
            }
            (SampleFormat::F32le, pcm)
        }
        (kind, bits) => return Err(WavDecodeError::Unsupported { bits, kind }),
    };
    Ok(WavPcm {
        format,
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        pcm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAV file of `samples` (interleaved) in memory.
    fn wav_bytes<S: hound::Sample + Copy>(spec: hound::WavSpec, samples: &[S]) -> Vec<u8> {
        let mut file = Cursor::new(Vec::new());
        {
            let mut writer = hound::WavWriter::new(&mut file, spec).unwrap();
            for &s in samples {
                writer.write_sample(s).unwrap();
            }
            writer.finalize().unwrap();
        }
        file.into_inner()
    }

    fn int_spec(channels: u16, sample_rate: u32, bits: u16) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        }
    }

    fn written(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        file
    }

    #[test]
    fn a_16_bit_stereo_file_is_averaged_in_f64_and_kept_as_pcm() {
        let pcm: [i16; 6] = [1_000, -3_001, 32_767, 32_767, -32_768, 7];
        let file = written(&wav_bytes(int_spec(2, 44_100, 16), &pcm));
        let audio = read_wav(file.path()).unwrap();
        assert_eq!(
            (audio.sample_rate, audio.channels, audio.bits_per_sample),
            (44_100, 2, 16)
        );
        assert_eq!(audio.pcm_s16, pcm);
        let expected: Vec<f32> = pcm
            .chunks_exact(2)
            .map(|f| ((f64::from(f[0]) / 32_768.0 + f64::from(f[1]) / 32_768.0) / 2.0) as f32)
            .collect();
        assert_eq!(audio.samples, expected);
    }

    #[test]
    fn long_and_empty_16_bit_files_read_as_hound_reads_them() {
        // 100,001 samples: the data chunk spans four 64 KiB blocks and ends inside the last.
        let pcm: Vec<i16> = (0..100_001u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 16) as u16 as i16)
            .collect();
        let file = written(&wav_bytes(int_spec(1, 16_000, 16), &pcm));
        let by_hound: Vec<i16> = hound::WavReader::open(file.path())
            .unwrap()
            .into_samples::<i16>()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(by_hound, pcm);
        let audio = read_wav(file.path()).unwrap();
        assert_eq!(audio.pcm_s16, pcm);
        assert_eq!(audio.samples.len(), pcm.len());
        assert_eq!(audio.samples[7], (f64::from(pcm[7]) / 32_768.0) as f32);

        let empty = written(&wav_bytes::<i16>(int_spec(1, 16_000, 16), &[]));
        let audio = read_wav(empty.path()).unwrap();
        assert!(audio.samples.is_empty() && audio.pcm_s16.is_empty());
    }

    #[test]
    fn wider_files_are_scaled_by_their_own_width() {
        let file = written(&wav_bytes(
            int_spec(1, 8_000, 24),
            &[8_388_607i32, -4_194_304, 1],
        ));
        let audio = read_wav(file.path()).unwrap();
        assert_eq!(
            audio.samples,
            [
                (8_388_607.0f64 / 8_388_608.0) as f32,
                -0.5,
                (1.0 / 8_388_608.0f64) as f32
            ]
        );
        assert_eq!(audio.pcm_s16, [32_767, -16_384, 0]);
        let float = hound::WavSpec {
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
            ..int_spec(1, 8_000, 32)
        };
        let file = written(&wav_bytes(float, &[0.25f32, -1.5]));
        let audio = read_wav(file.path()).unwrap();
        assert_eq!(audio.samples, [0.25, -1.5]);
        assert_eq!(audio.pcm_s16, [8_192, -32_768]);
    }

    #[test]
    fn unreadable_files_name_the_path() {
        let missing = Path::new("/nonexistent/specflow-test.wav");
        let error = read_wav(missing).unwrap_err();
        assert!(matches!(error, WavError::Open { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("/nonexistent/specflow-test.wav: not a readable WAV file: "),
            "{error}"
        );
        let mut bytes = wav_bytes(int_spec(1, 8_000, 16), &[1i16, 2, 3, 4]);
        bytes.truncate(bytes.len() - 3);
        let file = written(&bytes);
        let error = read_wav(file.path()).unwrap_err();
        assert!(matches!(error, WavError::Data { .. }), "{error:?}");
    }

    #[test]
    fn wav_bytes_keep_their_samples_on_the_wire() {
        let bytes = wav_bytes(int_spec(2, 22_050, 24), &[1i32, -1, 8_388_607, -8_388_608]);
        let wav = decode_wav_pcm(&bytes).unwrap();
        assert_eq!(
            (wav.format, wav.sample_rate, wav.channels),
            (SampleFormat::S32le, 22_050, 2)
        );
        let values: Vec<i32> = wav
            .pcm
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(values, [256, -256, 8_388_607 << 8, -8_388_608 << 8]);
        let eight = decode_wav_pcm(&wav_bytes(int_spec(1, 8_000, 8), &[1i8, -128, 127])).unwrap();
        assert_eq!(eight.format, SampleFormat::S16le);
        let values: Vec<i16> = eight
            .pcm
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(values, [256, -32_768, 32_512]);
    }

    #[test]
    fn bad_wav_bytes_say_what_was_wrong() {
        let header = decode_wav_pcm(b"RIFF....").unwrap_err();
        assert!(
            matches!(header, WavDecodeError::Header { .. }),
            "{header:?}"
        );
        assert!(
            header.to_string().starts_with("not a readable WAV file: "),
            "{header}"
        );
        let mut bytes = wav_bytes(int_spec(1, 8_000, 16), &[1i16, 2, 3, 4]);
        bytes.truncate(bytes.len() - 3);
        let data = decode_wav_pcm(&bytes).unwrap_err();
        assert!(
            data.to_string()
                .starts_with("the WAV data cannot be read: "),
            "{data}"
        );
        let unsupported = WavDecodeError::Unsupported {
            bits: 64,
            kind: hound::SampleFormat::Float,
        };
        assert_eq!(
            unsupported.to_string(),
            "WAV samples of 64-bit Float are not supported (integer up to 32 bits or 32-bit float)"
        );
    }
}
