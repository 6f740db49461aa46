//! pYIN's observations of every frame of a signal, computed once for the decoder tests
//! (`pyin_parity`, `pyin_golden`), which then decode them offline and at several lags.

use specflow::dsp::DspConfig;
use specflow::dsp::pyin::Pyin;

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
