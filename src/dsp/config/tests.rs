//! Unit tests of the `[dsp]` settings: defaults, feature selection, and validation.

use super::*;

fn problem_for<'a>(problems: &'a [Problem], key: &str) -> &'a Problem {
    problems
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem for {key} in {problems:?}"))
}

#[test]
fn defaults_are_valid_at_16k_and_2048_frames_at_higher_rates() {
    assert_eq!(DspConfig::default().validate_for_rate(16000), Vec::new());
    // pYIN (the default) needs one period of pitch_fmin within frame_length - 1 samples: 512
    // samples cannot hold one 65 Hz period above about 33.2 kHz.
    assert_eq!(DspConfig::default().validate_for_rate(48000).len(), 1);
    let long = DspConfig {
        frame_length: 2048,
        hop_length: 480,
        ..DspConfig::default()
    };
    for rate in [22050, 44100, 48000] {
        assert_eq!(long.validate_for_rate(rate), Vec::new(), "{rate} Hz");
    }
}

#[test]
fn hop_length_zero() {
    let config = DspConfig {
        hop_length: 0,
        ..DspConfig::default()
    };
    let problems = config.validate();
    assert_eq!(
        problems,
        vec![Problem::new(
            "dsp.hop_length",
            "0",
            "must be between 1 and frame_length"
        )]
    );
    assert_eq!(
        problems[0].to_string(),
        "dsp.hop_length = 0: must be between 1 and frame_length"
    );
}

#[test]
fn hop_longer_than_frame() {
    let config = DspConfig {
        frame_length: 400,
        hop_length: 401,
        ..DspConfig::default()
    };
    assert_eq!(
        problem_for(&config.validate(), "dsp.hop_length").value,
        "401"
    );
}

#[test]
fn fmax_above_nyquist() {
    let config = DspConfig {
        fmax: Some(8000.0),
        ..DspConfig::default()
    };
    assert!(config.validate_for_rate(16000).is_empty());
    let problems = config.validate_for_rate(8000);
    let problem = problem_for(&problems, "dsp.fmax");
    assert_eq!(problem.value, "8000");
    assert_eq!(
        problem.message,
        "must not exceed the Nyquist frequency (4000 Hz at 8000 Hz)"
    );
}

#[test]
fn n_mfcc_above_n_mels() {
    let config = DspConfig {
        n_mels: 10,
        n_mfcc: 13,
        ..DspConfig::default()
    };
    let problems = config.validate();
    assert_eq!(
        problems,
        vec![Problem::new(
            "dsp.n_mfcc",
            13,
            "must not exceed n_mels (10)"
        )]
    );
}

#[test]
fn pitch_fmin_too_low_for_the_frame() {
    // YIN: 65 Hz at 16 kHz is a 246-sample period: it fits twice in 512 but not in 400.
    // (pYIN only needs one period inside the frame, as librosa.pyin.)
    let config = DspConfig {
        frame_length: 400,
        pitch_method: PitchMethod::Yin,
        ..DspConfig::default()
    };
    assert!(
        DspConfig {
            pitch_method: PitchMethod::Pyin,
            ..config.clone()
        }
        .validate_for_rate(16000)
        .is_empty()
    );
    assert!(config.validate().is_empty());
    let problems = config.validate_for_rate(16000);
    let problem = problem_for(&problems, "dsp.pitch_fmin");
    assert_eq!(problem.value, "65");
    assert!(
        problem
            .message
            .contains("must fit twice in frame_length (400)"),
        "{}",
        problem.message
    );
    assert!(problem.message.contains("80.000 Hz"), "{}", problem.message);

    // Not a problem when f0 is not computed.
    let without_f0 = DspConfig {
        features: vec!["rms".into(), "mfcc".into()],
        ..config
    };
    assert!(without_f0.validate_for_rate(16000).is_empty());
}

#[test]
fn unknown_feature_name() {
    let config = DspConfig {
        features: vec!["rms".into(), "loudness".into()],
        ..DspConfig::default()
    };
    let problems = config.validate();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "dsp.features");
    assert_eq!(problems[0].value, "loudness");
    assert!(
        problems[0]
            .message
            .starts_with("unknown feature; expected \"all\" or one of rms, zcr,")
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let config = DspConfig {
        frame_length: 8,
        hop_length: 0,
        features: vec![],
        rolloff_percent: 1.5,
        bands: vec![[300.0, 100.0], [9000.0, 10000.0]],
        ..DspConfig::default()
    };
    let keys: Vec<String> = config
        .validate_for_rate(16000)
        .into_iter()
        .map(|p| p.key)
        .collect();
    for key in [
        "dsp.frame_length",
        "dsp.hop_length",
        "dsp.features",
        "dsp.rolloff_percent",
        "dsp.bands[0]",
        "dsp.bands[1]",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }
}

#[test]
fn feature_names_round_trip() {
    for name in FeatureName::ALL {
        assert_eq!(name.as_str().parse::<FeatureName>(), Ok(name));
    }
    assert!("all".parse::<FeatureName>().is_err());
}

#[test]
fn selection_is_canonical_and_deduplicated() {
    let config = DspConfig {
        features: vec!["mfcc".into(), "rms".into(), "mfcc".into()],
        ..DspConfig::default()
    };
    assert_eq!(
        config.selected_features(),
        vec![FeatureName::Rms, FeatureName::Mfcc]
    );
    assert_eq!(
        DspConfig::default().selected_features(),
        FeatureName::ALL.to_vec()
    );
}

#[test]
fn deserialises_from_toml_like_json() {
    let config: DspConfig = serde_json::from_str(
        r#"{"frame_length": 400, "window": "hamming", "mel_scale": "htk", "features": ["rms", "f0"]}"#,
    )
    .unwrap();
    assert_eq!(config.frame_length, 400);
    assert_eq!(config.hop_length, 160);
    assert_eq!(config.window, WindowKind::Hamming);
    assert_eq!(config.mel_scale, MelScale::Htk);
    assert!(serde_json::from_str::<DspConfig>(r#"{"frame_lenght": 400}"#).is_err());
}

#[test]
fn feature_words_are_typed_and_unknown_ones_kept_for_validation() {
    let config: DspConfig =
        serde_json::from_str(r#"{"features": ["all", "mfcc", "loudness", "rms"]}"#).unwrap();
    assert_eq!(
        config.features,
        vec![
            FeatureChoice::All,
            FeatureChoice::Feature(FeatureName::Mfcc),
            FeatureChoice::Unknown("loudness".into()),
            FeatureChoice::Feature(FeatureName::Rms),
        ]
    );
    // Serialises back as written (`specflow check --print`).
    assert_eq!(
        serde_json::to_value(&config.features).unwrap(),
        serde_json::json!(["all", "mfcc", "loudness", "rms"])
    );
    let problems = config.validate();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].to_string().starts_with(
            "dsp.features = loudness: unknown feature; expected \"all\" or one of rms, zcr,"
        ),
        "{}",
        problems[0]
    );
}
