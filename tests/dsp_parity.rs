//! Parity of the DSP core with librosa 0.11 on the reference signals, and known-answer tests for
//! the features librosa lacks (flux, band energy, loudness, dominant frequency).
//!
//! Reference cases are every `features/*.json` under `tests/data/` (or `$SPECFLOW_REFERENCE_DIR`),
//! all made by `scripts/make_reference.py`. Run with `--nocapture` to see the error table.

use std::f64::consts::PI;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

use specflow::dsp::{
    DspConfig, FeatureExtractor, FeatureName, FrameBatch, MelScale, PitchMethod, WindowKind,
};
use specflow_test_support::testing as common;

fn config_from_params(params: &Value) -> DspConfig {
    let num = |key: &str| params.get(key).and_then(Value::as_f64);
    let int = |key: &str| params.get(key).and_then(Value::as_u64).map(|v| v as usize);
    let defaults = DspConfig::default();
    DspConfig {
        frame_length: int("frame_length").expect("frame_length"),
        hop_length: int("hop_length").expect("hop_length"),
        window: match params
            .get("window")
            .and_then(Value::as_str)
            .unwrap_or("hann")
        {
            "hann" => WindowKind::Hann,
            "hamming" => WindowKind::Hamming,
            "blackman" => WindowKind::Blackman,
            "rectangular" | "boxcar" => WindowKind::Rectangular,
            other => panic!("unsupported window {other}"),
        },
        features: vec!["all".into()],
        n_mels: int("n_mels").unwrap_or(defaults.n_mels),
        fmin: num("fmin").unwrap_or(defaults.fmin),
        fmax: num("fmax"),
        mel_scale: match params.get("mel").and_then(Value::as_str) {
            Some("htk") => MelScale::Htk,
            _ => MelScale::Slaney,
        },
        n_mfcc: int("n_mfcc").unwrap_or(defaults.n_mfcc),
        rolloff_percent: num("roll_percent").unwrap_or(defaults.rolloff_percent),
        pitch_fmin: num("pitch_fmin").unwrap_or(defaults.pitch_fmin),
        pitch_fmax: num("pitch_fmax").unwrap_or(defaults.pitch_fmax),
        pitch_threshold: num("pitch_threshold").unwrap_or(defaults.pitch_threshold),
        bands: defaults.bands,
        // These cases hold librosa.yin's f0 and trough rule; pYIN has its own parity test.
        pitch_method: PitchMethod::Yin,
        ..DspConfig::default()
    }
}

/// Every frame of a whole signal: fed at once, then the stream ended (`finish_stream`), so
/// pYIN's lag holds no frame back.
fn run_whole(config: &DspConfig, sample_rate: u32, samples: &[f32]) -> FrameBatch {
    let extractor = FeatureExtractor::new(config, sample_rate).expect("valid config");
    let mut ws = extractor.workspace();
    let mut state = extractor.new_stream(0);
    let mut out = FrameBatch::new();
    extractor.process(&mut ws, &mut state, samples, &mut out);
    extractor.finish_stream(&mut state, &mut out);
    out
}

/// Frames of `frame_length` every `hop_length` that fit entirely in `samples` samples.
fn complete_frames(config: &DspConfig, samples: usize) -> usize {
    if samples < config.frame_length {
        0
    } else {
        (samples - config.frame_length) / config.hop_length + 1
    }
}

/// Asserts frame `i` of `batch` serialises with a number wherever a number is due: serde_json
/// writes a non-finite float as null, so the only null allowed is the `f0` of an unvoiced frame.
fn assert_serialises_finite(batch: &FrameBatch, i: usize, context: &str) {
    fn no_null(value: &Value, path: &str, context: &str) {
        match value {
            Value::Null => panic!("{context}: {path} is null (a non-finite value)"),
            Value::Number(n) => assert!(
                n.as_f64().is_some_and(f64::is_finite),
                "{context}: {path} = {n}"
            ),
            Value::Array(items) => {
                for (j, item) in items.iter().enumerate() {
                    no_null(item, &format!("{path}[{j}]"), context);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    no_null(item, &format!("{path}.{key}"), context);
                }
            }
            Value::Bool(_) | Value::String(_) => {}
        }
    }
    let json = serde_json::to_value(batch.frame(i)).expect("serialise frame");
    let frame = json.as_object().expect("a frame is a JSON object");
    for (key, value) in frame {
        if key == "f0" && value.is_null() {
            assert_eq!(
                frame["voiced"],
                Value::Bool(false),
                "{context}: frame {i} has no f0 but is voiced"
            );
            continue;
        }
        no_null(value, &format!("frame {i}.{key}"), context);
    }
}

/// Largest error seen for one feature of one file, and where.
#[derive(Default)]
struct Worst {
    error: f64,
    frame: usize,
    got: f64,
    expected: f64,
}

impl Worst {
    fn record(&mut self, error: f64, frame: usize, got: f64, expected: f64) {
        if error >= self.error {
            *self = Worst {
                error,
                frame,
                got,
                expected,
            };
        }
    }
}

/// Checks every frame of every feature of one reference case; returns failure messages.
fn check_case(json_path: &Path, signals: &Path, table: &mut Vec<String>) -> Vec<String> {
    let file = json_path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(json_path).expect("read reference json");
    let reference: Value = serde_json::from_str(&text).expect("parse reference json");
    let signal = reference["signal"].as_str().expect("signal");
    let (samples, sample_rate) = common::read_mono_wav(&signals.join(signal));
    assert_eq!(
        u64::from(sample_rate),
        reference["sample_rate"].as_u64().unwrap(),
        "{file}: sample rate"
    );
    let config = config_from_params(&reference["params"]);
    let batch = run_whole(&config, sample_rate, &samples);
    let expected_frames = reference["frames"].as_u64().unwrap() as usize;

    let mut failures = Vec::new();
    if batch.len() != expected_frames {
        failures.push(format!(
            "{file}: {} frames, expected {expected_frames}",
            batch.len()
        ));
        return failures;
    }
    let features = &reference["features"];

    // Every emitted value is finite: it serialises as a number, never as null.
    for i in 0..batch.len() {
        assert_serialises_finite(&batch, i, &file);
    }

    let scalars = [
        ("rms", FeatureName::Rms),
        ("zcr", FeatureName::Zcr),
        ("spectral_centroid", FeatureName::SpectralCentroid),
        ("spectral_bandwidth", FeatureName::SpectralBandwidth),
        ("spectral_rolloff", FeatureName::SpectralRolloff),
        ("spectral_flatness", FeatureName::SpectralFlatness),
    ];
    for (key, name) in scalars {
        let values = features[key]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no {key}"));
        assert_eq!(values.len(), batch.len(), "{file}: {key} length");
        let mut worst = Worst::default();
        for (i, value) in values.iter().enumerate() {
            let expected = value.as_f64().unwrap();
            let got = f64::from(batch.scalar(name, i).unwrap());
            let error = (got - expected).abs();
            let allowed = (1e-4 * expected.abs()).max(1e-6);
            worst.record(error / expected.abs().max(1e-6), i, got, expected);
            if error > allowed {
                failures.push(format!(
                    "{file}: {key} frame {i}: got {got}, expected {expected}"
                ));
            }
        }
        table.push(format!(
            "{file:<28} {key:<20} max rel err {:.2e} (frame {}: got {}, expected {})",
            worst.error, worst.frame, worst.got, worst.expected
        ));
    }

    // Vector features: (key, feature, tolerance rule).
    for (key, name) in [
        ("mel", FeatureName::Mel),
        ("mfcc", FeatureName::Mfcc),
        ("chroma", FeatureName::Chroma),
    ] {
        let frames = features[key]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no {key}"));
        assert_eq!(frames.len(), batch.len(), "{file}: {key} length");
        let mut worst = Worst::default();
        for (i, frame) in frames.iter().enumerate() {
            let expected: Vec<f64> = frame
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = batch.vector(name, i).unwrap();
            assert_eq!(got.len(), expected.len(), "{file}: {key} frame {i} length");
            let frame_max = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let allowed = match name {
                FeatureName::Mel => (1e-3 * frame_max).max(1e-12),
                FeatureName::Mfcc => 0.01,
                _ => 1e-3,
            };
            for (j, (&g, &e)) in got.iter().zip(&expected).enumerate() {
                let g = f64::from(g);
                let error = (g - e).abs();
                let scaled = if name == FeatureName::Mel {
                    error / frame_max.max(1e-12)
                } else {
                    error
                };
                worst.record(scaled, i, g, e);
                if error > allowed {
                    failures.push(format!(
                        "{file}: {key}[{j}] frame {i}: got {g}, expected {e}"
                    ));
                }
            }
        }
        let unit = if name == FeatureName::Mel {
            "max err / frame max"
        } else {
            "max abs err"
        };
        table.push(format!(
            "{file:<28} {key:<20} {unit} {:.2e} (frame {}: got {}, expected {})",
            worst.error, worst.frame, worst.got, worst.expected
        ));
    }

    // Pitch, over the reference's own selection. Voicing: the YIN rule (a trough of the
    // cumulative mean normalised difference below the threshold within [sr/fmax, sr/fmin]),
    // recorded by make_reference.py as `yin_voiced`, must agree on >= 99% of ALL frames. f0: on
    // every frame the reference calls voiced, within 1% of librosa.yin on >= 97% of them.
    let f0_ref = features["f0_yin"].as_array().expect("f0_yin");
    assert_eq!(f0_ref.len(), batch.len(), "{file}: f0_yin length");
    let voiced_ref: Vec<bool> = features["yin_voiced"]
        .as_array()
        .unwrap_or_else(|| {
            panic!("{file}: no yin_voiced; regenerate with scripts/make_reference.py")
        })
        .iter()
        .map(|v| v.as_bool().expect("yin_voiced is a bool"))
        .collect();
    assert_eq!(voiced_ref.len(), batch.len(), "{file}: yin_voiced length");
    let mut voicing_agree = 0usize;
    let mut reference_voiced = 0usize;
    let mut close = 0usize;
    let mut worst = Worst::default();
    for (i, (value, &expected_voiced)) in f0_ref.iter().zip(&voiced_ref).enumerate() {
        let got = batch.scalar(FeatureName::F0, i);
        if got.is_some() == expected_voiced {
            voicing_agree += 1;
        }
        if !expected_voiced {
            continue;
        }
        reference_voiced += 1;
        let expected = value.as_f64().unwrap();
        let Some(got) = got else {
            worst.record(f64::INFINITY, i, f64::NAN, expected);
            continue;
        };
        let rel = (f64::from(got) - expected).abs() / expected;
        worst.record(rel, i, f64::from(got), expected);
        if rel <= 0.01 {
            close += 1;
        }
    }
    let agreement = voicing_agree as f64 / batch.len().max(1) as f64;
    let close_fraction = if reference_voiced == 0 {
        1.0
    } else {
        close as f64 / reference_voiced as f64
    };
    table.push(format!(
        "{file:<28} {:<20} voicing agrees {voicing_agree}/{} ({:.1}%), reference voiced {reference_voiced}, f0 within 1%: {:.1}%, max rel err {:.2e} (frame {}: got {}, expected {})",
        "f0",
        batch.len(),
        100.0 * agreement,
        100.0 * close_fraction,
        worst.error,
        worst.frame,
        worst.got,
        worst.expected
    ));
    if agreement < 0.99 {
        failures.push(format!(
            "{file}: YIN voicing agrees with the reference trough rule on only {:.1}% of {} frames",
            100.0 * agreement,
            batch.len()
        ));
    }
    if close_fraction < 0.97 {
        failures.push(format!(
            "{file}: f0 within 1% of librosa on only {:.1}% of the {reference_voiced} frames the reference calls voiced (worst frame {}: got {}, expected {})",
            100.0 * close_fraction,
            worst.frame,
            worst.got,
            worst.expected
        ));
    }
    failures
}

#[test]
fn matches_librosa_reference_features() {
    let mut failures = Vec::new();
    let mut table = Vec::new();
    let mut cases = 0;
    let dir = common::reference_dir();
    for json in common::reference_jsons("features") {
        cases += 1;
        failures.extend(check_case(&json, &dir.join("signals"), &mut table));
    }
    println!("{}", table.join("\n"));
    assert!(cases >= 1, "no reference case found in {}", dir.display());
    if !failures.is_empty() {
        let shown = failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("{} parity failures (first 40):\n{shown}", failures.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Known answers for the features librosa does not have.

fn sine(freq: f64, amplitude: f64, sample_rate: u32, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            (amplitude * (2.0 * PI * freq * i as f64 / f64::from(sample_rate) + 0.1).sin()) as f32
        })
        .collect()
}

fn config_with(features: &[&str]) -> DspConfig {
    DspConfig {
        features: features.iter().map(|s| (*s).into()).collect(),
        ..DspConfig::default()
    }
}

#[test]
fn dominant_frequency_of_a_sine_is_within_half_a_hertz() {
    let config = config_with(&["dominant_frequency", "spectral_centroid"]);
    for freq in [1000.3, 440.0, 3141.59, 123.4] {
        let batch = run_whole(&config, 16000, &sine(freq, 0.5, 16000, 4000));
        assert!(batch.len() > 10);
        for i in 0..batch.len() {
            let got = f64::from(batch.scalar(FeatureName::DominantFrequency, i).unwrap());
            assert!(
                (got - freq).abs() < 0.5,
                "{freq} Hz sine, frame {i}: dominant frequency {got}"
            );
        }
    }
}

#[test]
fn centroid_of_a_sine_is_near_its_frequency() {
    let config = config_with(&["spectral_centroid"]);
    for freq in [1000.0, 2500.0] {
        let batch = run_whole(&config, 16000, &sine(freq, 0.5, 16000, 4000));
        for i in 0..batch.len() {
            let got = f64::from(batch.scalar(FeatureName::SpectralCentroid, i).unwrap());
            assert!(
                (got - freq).abs() < 0.01 * freq,
                "{freq} Hz sine, frame {i}: centroid {got}"
            );
        }
    }
}

#[test]
fn full_scale_square_wave_is_zero_dbfs_and_sine_minus_three() {
    let config = config_with(&["loudness_dbfs", "rms"]);
    let square: Vec<f32> = (0..4000)
        .map(|i| if (i / 20) % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let batch = run_whole(&config, 16000, &square);
    for i in 0..batch.len() {
        let db = batch.scalar(FeatureName::LoudnessDbfs, i).unwrap();
        assert!(db.abs() < 1e-4, "square frame {i}: {db} dBFS");
    }
    // 500 Hz at 16 kHz: 32 samples per period, exactly 16 periods per 512-sample frame.
    let batch = run_whole(&config, 16000, &sine(500.0, 1.0, 16000, 4000));
    for i in 0..batch.len() {
        let db = batch.scalar(FeatureName::LoudnessDbfs, i).unwrap();
        assert!((db + 3.0103).abs() < 1e-3, "sine frame {i}: {db} dBFS");
    }
    let batch = run_whole(&config, 16000, &[0.0; 2000]);
    assert_eq!(batch.scalar(FeatureName::LoudnessDbfs, 0), Some(-200.0));
}

#[test]
fn band_energy_of_a_sine_falls_in_its_band() {
    let config = DspConfig {
        bands: vec![[0.0, 300.0], [300.0, 2000.0], [2000.0, 8000.0]],
        ..config_with(&["band_energy", "rms"])
    };
    for (freq, band) in [(1000.0, 1), (150.0, 0), (5000.0, 2)] {
        let amplitude = 0.5;
        let batch = run_whole(&config, 16000, &sine(freq, amplitude, 16000, 4000));
        for i in 0..batch.len() {
            let energy = batch.vector(FeatureName::BandEnergy, i).unwrap();
            let total: f32 = energy.iter().sum();
            // Mean-square scale: a sine of amplitude A reads A^2 / 2.
            let expected = amplitude * amplitude / 2.0;
            assert!(
                (f64::from(total) - expected).abs() < 0.01 * expected,
                "{freq} Hz frame {i}: {energy:?}"
            );
            assert!(
                energy[band] > 0.99 * total,
                "{freq} Hz frame {i}: {energy:?}"
            );
        }
    }
}

#[test]
fn band_energy_of_white_noise_sums_to_its_mean_square() {
    // A fixed pseudo-random sequence, uniform in [-0.5, 0.5).
    let mut rng = StdRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
    let noise: Vec<f32> = (0..16000).map(|_| rng.random_range(-0.5..0.5)).collect();
    let config = DspConfig {
        bands: vec![[0.0, 4000.0], [4000.0, 8000.0]],
        ..config_with(&["band_energy"])
    };
    let batch = run_whole(&config, 16000, &noise);
    let mut low = 0.0;
    let mut high = 0.0;
    for i in 0..batch.len() {
        let e = batch.vector(FeatureName::BandEnergy, i).unwrap();
        low += f64::from(e[0]);
        high += f64::from(e[1]);
    }
    let frames = batch.len() as f64;
    let mean_square = 1.0 / 12.0;
    assert!(
        ((low + high) / frames - mean_square).abs() < 0.05 * mean_square,
        "{low} {high}"
    );
    assert!(
        (low / high - 1.0).abs() < 0.1,
        "white noise bands should be equal: {low} {high}"
    );
}

#[test]
fn flux_is_zero_on_a_stationary_sine_and_positive_at_an_onset() {
    // 500 Hz at 16 kHz with hop 160 = 5 periods: every frame sees the same waveform.
    let config = DspConfig {
        frame_length: 512,
        hop_length: 160,
        ..config_with(&["spectral_flux", "rms"])
    };
    let batch = run_whole(&config, 16000, &sine(500.0, 0.5, 16000, 8000));
    assert_eq!(batch.scalar(FeatureName::SpectralFlux, 0), Some(0.0));
    for i in 1..batch.len() {
        let flux = batch.scalar(FeatureName::SpectralFlux, i).unwrap();
        assert!(flux < 1e-6, "stationary frame {i}: flux {flux}");
    }

    // Silence, then a tone from sample 4000: frames overlapping the onset have positive flux.
    let mut onset = vec![0.0f32; 4000];
    onset.extend(sine(1000.0, 0.5, 16000, 4000));
    let batch = run_whole(&config, 16000, &onset);
    let mut onset_peak = 0.0f32;
    for i in 0..batch.len() {
        let start = batch.start_sample(i);
        let flux = batch.scalar(FeatureName::SpectralFlux, i).unwrap();
        if start + 512 <= 4000 {
            assert_eq!(flux, 0.0, "silent frame {i}");
        } else if start < 4000 {
            assert!(flux > 0.0, "onset frame {i}: flux {flux}");
            onset_peak = onset_peak.max(flux);
        }
    }
    // A 0.5-amplitude tone fully entering a Hann frame of 512 raises the peak bin by ~64.
    assert!(onset_peak > 20.0, "onset flux peak {onset_peak}");
}

#[test]
fn silence_and_all_zero_frames_are_finite_and_unvoiced() {
    let config = DspConfig::default();
    let mut signal = vec![0.0f32; 3000];
    signal.extend(sine(220.0, 1e-6, 16000, 3000));
    let non_finite_at = signal.len();
    signal.extend([f32::NAN, f32::INFINITY, 0.5, -0.5]);
    // A frame's length of silence after them: every frame over them is complete.
    signal.extend(vec![0.0f32; config.frame_length]);
    let batch = run_whole(&config, 16000, &signal);
    assert_eq!(
        batch.len(),
        complete_frames(&config, signal.len()),
        "every complete frame of the signal is emitted"
    );
    let frame_length = config.frame_length as u64;
    let covers = |i: usize, sample: usize| {
        let start = batch.start_sample(i);
        start <= sample as u64 && (sample as u64) < start + frame_length
    };
    assert!(
        (0..batch.len()).any(|i| covers(i, 4500)),
        "a frame of the 1e-6 sine"
    );
    assert!(
        (0..batch.len()).any(|i| covers(i, non_finite_at) && covers(i, non_finite_at + 1)),
        "a frame over the NaN and the infinity"
    );
    for i in 0..batch.len() {
        assert_serialises_finite(&batch, i, "silence, faint sine, non-finite samples");
        for &name in batch.selected() {
            if let Some(v) = batch.scalar(name, i) {
                assert!(v.is_finite(), "frame {i} {name}: {v}");
            }
            if let Some(values) = batch.vector(name, i) {
                assert!(
                    values.iter().all(|v| v.is_finite()),
                    "frame {i} {name}: {values:?}"
                );
            }
        }
    }
    assert_eq!(batch.voiced(0), Some(false));
    let first: Value = serde_json::to_value(batch.frame(0)).unwrap();
    assert_eq!(first["f0"], Value::Null);
    assert_eq!(first["voiced"], Value::Bool(false));
    assert_eq!(first["spectral_centroid"], 0.0);
    assert_eq!(first["chroma"].as_array().unwrap().len(), 12);
    let summaries = serde_json::to_value(batch.summaries()).unwrap();
    assert!(summaries["rms"]["mean"].is_number());
}
