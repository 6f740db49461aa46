//! pYIN parity with `librosa.pyin` (0.11) on every `pyin/<case>.json` of the reference data,
//! through the daemon's own path: the [`FeatureExtractor`] with `pitch_method = "pyin"` and the
//! default `pitch_lag_frames`, fed in uneven chunks, the stream ended as `audio.eos` ends it.
//! On every case, over the reference's own frames: voicing equal on >= 99 % of all frames, f0
//! within 1 % on >= 99 % of the frames both call voiced, `voiced_prob` within 1e-3 on >= 99 % of
//! all frames. Run with `--nocapture` for the table. The decoder alone (offline Viterbi and
//! every lag) is compared too.

use specflow::dsp::pyin::{PitchDecision, PyinDecoder, decode_offline};
use specflow::dsp::{DspConfig, FeatureExtractor, FrameBatch};

use specflow_test_support::testing as common;

struct Reference {
    name: String,
    sample_rate: u32,
    config: DspConfig,
    samples: Vec<f32>,
    f0: Vec<Option<f64>>,
    voiced: Vec<bool>,
    voiced_prob: Vec<f64>,
}

fn references() -> Vec<Reference> {
    common::pyin_references()
        .into_iter()
        .map(|case| {
            let column = |key: &str| case.json[key].as_array().unwrap().clone();
            let reference = Reference {
                name: case.name,
                sample_rate: case.sample_rate,
                config: case.config,
                samples: case.samples,
                f0: column("f0").iter().map(serde_json::Value::as_f64).collect(),
                voiced: column("voiced")
                    .iter()
                    .map(|v| v.as_bool().unwrap())
                    .collect(),
                voiced_prob: column("voiced_prob")
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect(),
            };
            let frames = case.json["frames"].as_u64().unwrap() as usize;
            assert_eq!(
                (
                    reference.f0.len(),
                    reference.voiced.len(),
                    reference.voiced_prob.len()
                ),
                (frames, frames, frames),
                "{}",
                reference.name
            );
            reference
        })
        .collect()
}

/// Agreement counts over all of the reference's frames.
#[derive(Clone, Copy, Default, Debug)]
struct Agreement {
    voicing: usize,
    frames: usize,
    f0: usize,
    both_voiced: usize,
    voiced_prob: usize,
}

impl Agreement {
    fn of(reference: &Reference, decisions: &[PitchDecision]) -> Self {
        assert_eq!(
            decisions.len(),
            reference.voiced.len(),
            "{}: frame count",
            reference.name
        );
        let mut a = Self {
            frames: decisions.len(),
            ..Self::default()
        };
        for (k, d) in decisions.iter().enumerate() {
            a.voicing += usize::from(d.voiced == reference.voiced[k]);
            a.voiced_prob += usize::from((d.voiced_prob - reference.voiced_prob[k]).abs() <= 1e-3);
            if let (Some(ours), Some(theirs)) = (d.f0, reference.f0[k]) {
                a.both_voiced += 1;
                a.f0 += usize::from((ours / theirs - 1.0).abs() <= 0.01);
            }
        }
        a
    }

    /// Each requirement, as a failure message when it is not met.
    fn failures(&self, what: &str) -> Vec<String> {
        let share = |n: usize, of: usize| if of == 0 { 1.0 } else { n as f64 / of as f64 };
        let mut failures = Vec::new();
        if share(self.voicing, self.frames) < 0.99 {
            failures.push(format!(
                "{what}: voicing equal on {}/{}",
                self.voicing, self.frames
            ));
        }
        if share(self.f0, self.both_voiced) < 0.99 {
            failures.push(format!(
                "{what}: f0 within 1% on {}/{} both-voiced frames",
                self.f0, self.both_voiced
            ));
        }
        if share(self.voiced_prob, self.frames) < 0.99 {
            failures.push(format!(
                "{what}: voiced_prob within 1e-3 on {}/{}",
                self.voiced_prob, self.frames
            ));
        }
        failures
    }
}

/// The daemon's path: uneven chunks through the extractor, then the end of the stream.
fn extract(reference: &Reference) -> Vec<PitchDecision> {
    let extractor = FeatureExtractor::new(&reference.config, reference.sample_rate)
        .unwrap_or_else(|e| panic!("{}: {e}", reference.name));
    let mut ws = extractor.workspace();
    let mut state = extractor.new_stream(0);
    let mut out = FrameBatch::new();
    let mut decisions = Vec::new();
    let mut collect = |out: &mut FrameBatch| {
        for i in 0..out.len() {
            assert_eq!(out.index(i), decisions.len() as u64, "frames in order");
            decisions.push(PitchDecision {
                f0: out.scalar(specflow::dsp::FeatureName::F0, i).map(f64::from),
                voiced: out.voiced(i).expect("f0 selected"),
                voiced_prob: f64::from(out.voiced_prob(i).expect("pyin adds voiced_prob")),
            });
        }
        out.clear();
    };
    let mut rest = &reference.samples[..];
    let mut size = 37;
    while !rest.is_empty() {
        let take = size.min(rest.len());
        extractor.process(&mut ws, &mut state, &rest[..take], &mut out);
        collect(&mut out);
        rest = &rest[take..];
        size = size * 7 % 3001 + 1;
    }
    extractor.finish_stream(&mut state, &mut out);
    collect(&mut out);
    decisions
}

#[test]
fn streaming_pyin_matches_librosa_on_every_reference_case() {
    let mut failures = Vec::new();
    for reference in references() {
        let agreement = Agreement::of(&reference, &extract(&reference));
        println!(
            "{:<30} lag {}: voicing {}/{}, f0 within 1% {}/{}, voiced_prob within 1e-3 {}/{}",
            reference.name,
            reference.config.pitch_lag_frames,
            agreement.voicing,
            agreement.frames,
            agreement.f0,
            agreement.both_voiced,
            agreement.voiced_prob,
            agreement.frames
        );
        failures.extend(agreement.failures(&reference.name));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn offline_viterbi_and_every_lag_match_librosa() {
    let mut failures = Vec::new();
    for reference in references() {
        let common::Observed {
            pyin,
            frames,
            observations,
            voiced_probs,
        } = common::observe_every_frame(
            &reference.config,
            reference.sample_rate,
            &reference.samples,
        );
        let n = pyin.n_states();
        let mut scratch = pyin.scratch();
        let offline = decode_offline(&pyin, &observations, &voiced_probs);
        failures.extend(
            Agreement::of(&reference, &offline).failures(&format!("{} offline", reference.name)),
        );
        for lag in [10, 15, 20, 30] {
            let mut decoder = PyinDecoder::new(&pyin, lag);
            let mut decided = Vec::with_capacity(frames);
            for (o, &vp) in observations.chunks_exact(n).zip(&voiced_probs) {
                decided.extend(decoder.push(&pyin, &mut scratch, o, vp));
            }
            decoder.finish(&pyin, &mut |d| decided.push(d));
            let agreement = Agreement::of(&reference, &decided);
            println!(
                "{:<30} lag {lag:>2}: voicing {}/{}",
                reference.name, agreement.voicing, agreement.frames
            );
            failures.extend(agreement.failures(&format!("{} lag {lag}", reference.name)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
