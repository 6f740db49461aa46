//! Unit tests of the feature extractor: the AVX2 and portable kernels agree bit for bit, and
//! the extractor can be shared between threads.

use super::*;

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn avx2_and_portable_kernels_agree_bit_for_bit() {
    let config = DspConfig {
        frame_length: 400,
        hop_length: 123,
        pitch_fmin: 90.0,
        ..DspConfig::default()
    };
    let mut extractor = FeatureExtractor::new(&config, 16000).unwrap();
    let signal: Vec<f32> = (0..8000u32)
        .map(|i| {
            (0.4 * (f64::from(i) * 0.07).sin() + 0.1 * (f64::from(i * i % 977) / 977.0 - 0.5))
                as f32
        })
        .collect();
    let mut run = |use_avx2: bool| {
        extractor.avx2 = if use_avx2 { Avx2::detect() } else { None };
        let mut ws = extractor.workspace();
        let mut state = extractor.new_stream(0);
        let mut out = FrameBatch::new();
        extractor.process(&mut ws, &mut state, &signal, &mut out);
        out.frames()
            .map(|f| serde_json::to_string(&f).unwrap())
            .collect::<Vec<_>>()
    };
    let portable = run(false);
    assert!(!portable.is_empty());
    if Avx2::detect().is_some() {
        assert_eq!(portable, run(true));
    }
}

#[test]
fn extractor_is_send_sync() {
    assert_send_sync::<FeatureExtractor>();
    assert_send_sync::<Workspace>();
    assert_send_sync::<StreamState>();
}
