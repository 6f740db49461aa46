//! pYIN's reference cases and the observations of every frame of a signal, for the decoder
//! tests (`pyin_parity`, `pyin_golden`), which decode them offline and at several lags.

use specflow::dsp::pyin::Pyin;
use specflow::dsp::{DspConfig, PitchMethod};

/// One of the `pyin/*.json` references: what `librosa.pyin` computed on a shipped signal, the
/// signal, and the `[dsp]` section (pYIN, `f0` only) of the reference's parameters.
pub struct PyinReference {
    /// The file's stem, e.g. `speech_16k`.
    pub name: String,
    /// The whole reference (its `params`, `frames`, `f0`, `voiced`, `voiced_prob`).
    pub json: serde_json::Value,
    /// The signal, mixed to mono, and its sample rate.
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    pub config: DspConfig,
}

/// Every `pyin/*.json` of [`super::reference_dir`], by file name ([`super::reference_jsons`]).
/// Fails the test when there is none, when one was made with `center = True`, or when its
/// signal's sample rate is not the one it names.
pub fn pyin_references() -> Vec<PyinReference> {
    super::reference_jsons("pyin")
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let json: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let params = &json["params"];
            assert_eq!(params["center"], false, "{path:?}");
            let signal = json["signal"].as_str().expect("the reference's signal");
            let (samples, sample_rate) = super::read_mono_wav(&super::reference_signal(signal));
            assert_eq!(
                f64::from(sample_rate),
                json["sample_rate"].as_f64().unwrap(),
                "{path:?}"
            );
            let config = DspConfig {
                frame_length: params["frame_length"].as_u64().unwrap() as usize,
                hop_length: params["hop_length"].as_u64().unwrap() as usize,
                features: vec!["f0".into()],
                pitch_fmin: params["fmin"].as_f64().unwrap(),
                pitch_fmax: params["fmax"].as_f64().unwrap(),
                pitch_method: PitchMethod::Pyin,
                ..DspConfig::default()
            };
            PyinReference {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                json,
                samples,
                sample_rate,
                config,
            }
        })
        .collect()
}

/// The model of a `[dsp]` section at a sample rate, and what it observes in every frame.
pub struct Observed {
    /// The model the observations were made with (the decoders need it too).
    pub pyin: Pyin,
    /// Frames of the signal: `(samples - frame_length) / hop_length + 1`, at least 1.
    pub frames: usize,
    /// The observation probabilities of each frame, `pyin.n_states()` a frame, frame by frame.
    pub observations: Vec<f64>,
    /// The voiced probability of each frame.
    pub voiced_probs: Vec<f64>,
}

/// Observes every frame of `samples` with the pYIN model of `config` at `sample_rate`.
pub fn observe_every_frame(config: &DspConfig, sample_rate: u32, samples: &[f32]) -> Observed {
    let pyin = Pyin::new(
        &config.pyin_params(),
        f64::from(sample_rate),
        config.frame_length,
        config.hop_length,
    )
    .expect("valid pYIN parameters");
    let (len, hop, n) = (config.frame_length, config.hop_length, pyin.n_states());
    let frames = samples.len().saturating_sub(len) / hop + 1;
    let mut scratch = pyin.scratch();
    let mut observations = vec![0.0; frames * n];
    let voiced_probs = observations
        .chunks_exact_mut(n)
        .enumerate()
        .map(|(k, out)| pyin.observe(&samples[k * hop..k * hop + len], &mut scratch, out))
        .collect();
    Observed {
        pyin,
        frames,
        observations,
        voiced_probs,
    }
}
