//! Bit-exact guard of pYIN's outputs: every `f0`, `voiced` and `voiced_prob` bit, on every
//! reference signal (with its reference parameters) and on two synthetic 16 kHz signals, through
//! the extractor in several chunkings (whole, 1-sample, prime-sized, random, random with a
//! snapshot and restore at every chunk, a restart mid-stream) and through the decoder alone at
//! several lags (its `f64` decisions and its serialised state), hashed per case and compared
//! with `tests/data/pyin_golden.txt`. A change to pYIN that moves a single bit fails here.
//! `SPECFLOW_BLESS_PYIN_GOLDEN=1` rewrites the file (only for an intended change of results).

use std::collections::BTreeMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use specflow::dsp::pyin::{Pyin, PyinDecoder, decode_offline};
use specflow::dsp::{DspConfig, FeatureExtractor, FeatureName, FrameBatch, PitchMethod};

use specflow_test_support::testing as common;

/// One signal and the configuration it is run with.
struct Case {
    name: String,
    sample_rate: u32,
    config: DspConfig,
    samples: Vec<f32>,
}

/// xorshift64*, in `[0, 1)`. The synthetic signals and random chunkings hashed in
/// `tests/data/pyin_golden.txt` are drawn from it, so it is part of those cases' definition and
/// stays written out here: `rand`'s generators do not promise the same stream across releases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() * n as f64) as usize
    }
}

/// Held-out-like material: glides, noise, two tones, silence, a tone under noise and an
/// amplitude-modulated one, in 1.25 s segments at 16 kHz.
fn synthetic(seed: u64, seconds: usize) -> Vec<f32> {
    let rate = 16000.0;
    let len = seconds * 16000;
    let mut rng = Rng(seed);
    let mut phase = 0.0f64;
    (0..len)
        .map(|i| {
            let t = i as f64 / rate;
            let tau = std::f64::consts::TAU;
            let x = match (i * 8 / len, seed % 2) {
                (0, _) | (5, _) => 1e-4 * (rng.next() - 0.5),
                (1 | 2, s) => {
                    let f = 90.0 + (300.0 + 200.0 * s as f64) * (i as f64 / len as f64);
                    phase += tau * f / rate;
                    0.5 * phase.sin() + 0.01 * (rng.next() - 0.5)
                }
                (3, _) => 0.3 * (rng.next() - 0.5),
                (4, _) => 0.4 * (tau * 440.0 * t).sin() + 0.2 * (tau * 880.0 * t).sin(),
                (6, _) => 0.5 * (tau * 1500.0 * t).sin() * (rng.next() - 0.5),
                _ => 0.05 * (rng.next() - 0.5) + 0.3 * (tau * 196.0 * (1.0 + 0.02 * t)).sin(),
            };
            x as f32
        })
        .collect()
}

fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = common::pyin_references()
        .into_iter()
        .map(|reference| Case {
            name: reference.name,
            sample_rate: reference.sample_rate,
            config: reference.config,
            samples: reference.samples,
        })
        .collect();
    for seed in [1u64, 2] {
        cases.push(Case {
            name: format!("synthetic{seed}_16k"),
            sample_rate: 16000,
            config: DspConfig {
                features: vec!["f0".into()],
                pitch_method: PitchMethod::Pyin,
                ..DspConfig::default()
            },
            samples: synthetic(seed, 10),
        });
    }
    // The daemon's default configuration (every feature), on speech.
    let speech = cases
        .iter()
        .find(|c| c.name == "speech_16k")
        .expect("speech case");
    cases.push(Case {
        name: "speech_16k_default_config".into(),
        sample_rate: speech.sample_rate,
        config: DspConfig::default(),
        samples: speech.samples.clone(),
    });
    cases
}

/// Hashes the pitch outputs of every frame of `out` (in order) and clears it.
fn hash_batch(hasher: &mut Sha256, next_index: &mut u64, out: &mut FrameBatch) {
    for i in 0..out.len() {
        assert_eq!(out.index(i), *next_index, "frames in order");
        *next_index += 1;
        hasher.update(out.index(i).to_le_bytes());
        hasher.update(out.start_sample(i).to_le_bytes());
        let f0 = out
            .scalar(FeatureName::F0, i)
            .map_or(u32::MAX, f32::to_bits);
        hasher.update(f0.to_le_bytes());
        hasher.update([u8::from(out.voiced(i).expect("f0 selected"))]);
        let vp = out.voiced_prob(i).expect("pyin adds voiced_prob");
        hasher.update(vp.to_bits().to_le_bytes());
    }
    out.clear();
}

/// How a case's samples are cut and whether the stream is snapshotted or restarted.
#[derive(Clone, Copy)]
enum Chunking {
    Whole,
    Fixed(usize),
    Random(u64),
    RandomRestored(u64),
    RestartAt(usize),
}

fn extract_hash(case: &Case, chunking: Chunking) -> String {
    let extractor = FeatureExtractor::new(&case.config, case.sample_rate).expect("config");
    let mut ws = extractor.workspace();
    let mut state = extractor.new_stream(0);
    let mut out = FrameBatch::new();
    let mut hasher = Sha256::new();
    let mut next_index = 0;
    let samples = &case.samples[..];
    let mut rng = Rng(match chunking {
        Chunking::Random(s) | Chunking::RandomRestored(s) => s,
        _ => 1,
    });
    let mut at = 0;
    while at < samples.len() {
        let take = match chunking {
            Chunking::Whole => samples.len(),
            Chunking::Fixed(n) => n,
            Chunking::Random(_) | Chunking::RandomRestored(_) => 1 + rng.below(3000),
            Chunking::RestartAt(n) if at < n => n,
            Chunking::RestartAt(_) => samples.len(),
        }
        .min(samples.len() - at);
        extractor.process(&mut ws, &mut state, &samples[at..at + take], &mut out);
        hash_batch(&mut hasher, &mut next_index, &mut out);
        at += take;
        match chunking {
            Chunking::RandomRestored(_) => {
                let snapshot = state.snapshot();
                hasher.update(snapshot.pitch_decoder.as_deref().unwrap_or_default());
                state = extractor.restore_stream(&snapshot).expect("restore");
            }
            Chunking::RestartAt(n) if at == n => {
                // A gap: the waiting frames are decoded in full, the stream goes on later.
                let resume = at as u64 + 1000;
                extractor.restart_stream(&mut state, resume, &mut out);
                hash_batch(&mut hasher, &mut next_index, &mut out);
                next_index = resume.div_ceil(case.config.hop_length as u64);
                at += 1000.min(samples.len() - at);
            }
            _ => {}
        }
    }
    extractor.finish_stream(&mut state, &mut out);
    hash_batch(&mut hasher, &mut next_index, &mut out);
    hex(&hasher.finalize())
}

/// The decoder alone at `lag` (`None`: offline), on the case's observations: every decision's
/// `f64` bits and the serialised state every 17 frames.
fn decoder_hash(case: &Case, lag: Option<usize>) -> String {
    let common::Observed {
        pyin,
        frames,
        observations,
        voiced_probs,
    } = common::observe_every_frame(&case.config, case.sample_rate, &case.samples);
    let n = pyin.n_states();
    let mut scratch = pyin.scratch();
    let mut hasher = Sha256::new();
    for o in &observations {
        hasher.update(o.to_bits().to_le_bytes());
    }
    let mut decisions = Vec::new();
    match lag {
        None => decisions = decode_offline(&pyin, &observations, &voiced_probs),
        Some(lag) => {
            let mut decoder = PyinDecoder::new(&pyin, lag);
            for (k, (o, &vp)) in observations.chunks_exact(n).zip(&voiced_probs).enumerate() {
                decisions.extend(decoder.push(&pyin, &mut scratch, o, vp));
                if k % 17 == 5 {
                    let bytes = decoder.to_bytes();
                    hasher.update(&bytes);
                    decoder = PyinDecoder::from_bytes(&pyin, &bytes).expect("restore");
                }
            }
            decoder.finish(&pyin, &mut |d| decisions.push(d));
        }
    }
    assert_eq!(decisions.len(), frames);
    for d in decisions {
        hasher.update(d.f0.map_or(u64::MAX, f64::to_bits).to_le_bytes());
        hasher.update([u8::from(d.voiced)]);
        hasher.update(d.voiced_prob.to_bits().to_le_bytes());
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn golden_path() -> PathBuf {
    common::reference_dir().join("pyin_golden.txt")
}

#[test]
fn pyin_outputs_are_bit_identical_to_the_golden_hashes() {
    let mut got = BTreeMap::new();
    for case in cases() {
        let hop = case.config.hop_length;
        let restart = case.samples.len() / 2;
        let chunkings = [
            ("whole", Chunking::Whole),
            ("1", Chunking::Fixed(1)),
            ("97", Chunking::Fixed(97)),
            ("hop", Chunking::Fixed(hop)),
            ("1601", Chunking::Fixed(1601)),
            ("random", Chunking::Random(7)),
            ("random_restored", Chunking::RandomRestored(11)),
            ("restart", Chunking::RestartAt(restart)),
        ];
        for (label, chunking) in chunkings {
            let key = format!("{} extract {label}", case.name);
            got.insert(key, extract_hash(&case, chunking));
        }
        for lag in [Some(0), Some(1), Some(2), Some(7), Some(20), None] {
            let label = lag.map_or("offline".to_string(), |l| format!("lag{l}"));
            got.insert(
                format!("{} decoder {label}", case.name),
                decoder_hash(&case, lag),
            );
        }
    }
    let text: String = got.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect();
    if std::env::var_os("SPECFLOW_BLESS_PYIN_GOLDEN").is_some() {
        std::fs::write(golden_path(), &text).expect("write golden");
        return;
    }
    let golden = std::fs::read_to_string(golden_path()).expect("tests/data/pyin_golden.txt");
    let expected: BTreeMap<String, String> = golden
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let differing: Vec<&String> = got
        .keys()
        .chain(expected.keys())
        .filter(|k| got.get(*k) != expected.get(*k))
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} cases differ from the golden bits: {differing:?}",
        differing.len(),
        got.len()
    );
}

/// What one live stream holds with pYIN (the daemon's default configuration, 16 kHz, after a
/// second of audio in one call): the decoder keeps only its best-path values, its back-pointer
/// ring and the pending voiced probabilities (the step's work rows are per thread, in
/// `PyinScratch`); besides it the stream holds its buffered samples, the previous spectrum and
/// the frames waiting for their pitch (not the call's other frames). A work row kept in the
/// stream (`n_states` f64) would exceed that.
#[test]
fn a_pyin_stream_holds_no_work_rows() {
    let config = DspConfig::default();
    let extractor = FeatureExtractor::new(&config, 16000).expect("config");
    let mut ws = extractor.workspace();
    let mut state = extractor.new_stream(0);
    let mut out = FrameBatch::new();
    extractor.process(&mut ws, &mut state, &synthetic(1, 1), &mut out);
    let pyin = Pyin::new(&config.pyin_params(), 16000.0, 512, 160).expect("pyin");
    let (n, lag) = (pyin.n_states(), config.pitch_lag_frames);
    assert_eq!(
        state.pending_frames(),
        lag,
        "frames waiting for their pitch"
    );
    // Values (8 bytes per state), back-pointers (2 bytes per state and frame of lag), voiced
    // probabilities (8 bytes per frame of lag, plus one) and the finish path (2 per frame).
    let decoder = 8 * n + 2 * lag * n + 8 * (lag + 1) + 2 * lag;
    assert_eq!(PyinDecoder::new(&pyin, lag).heap_bytes(), decoder);
    // Buffered samples (at most a frame of f32) and the previous magnitude spectrum (f64).
    let samples = 4 * config.frame_length + 8 * (config.frame_length / 2 + 1);
    // The waiting frames' columns as the snapshot lists them; their vectors may have grown to
    // twice that.
    let snapshot = state.snapshot();
    let columns = snapshot
        .pending_frames
        .as_ref()
        .expect("pYIN's waiting frames");
    let pending = 8 * (columns.indexes.len() + columns.start_samples.len())
        + columns.voiced.len()
        + 4 * columns.voiced_prob.len()
        + 4 * columns
            .scalars
            .iter()
            .chain(&columns.vectors)
            .map(Vec::len)
            .sum::<usize>();
    let held = state.heap_bytes();
    println!(
        "pyin stream: {held} heap bytes; decoder {decoder} ({n} states, lag {lag}), samples and \
         spectrum up to {samples}, {} waiting frames {pending}",
        state.pending_frames()
    );
    assert!(
        held >= decoder + pending,
        "{held} bytes cannot hold the decoder ({decoder}) and the waiting frames ({pending})"
    );
    let bound = decoder + samples + 2 * pending;
    assert!(
        held <= bound,
        "the stream holds {held} bytes, above {bound} (a work row is {} bytes)",
        8 * n
    );
}
