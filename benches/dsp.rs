//! Throughput of the full feature set, in input samples per second.
//!
//! The same synthetic signal (linear chirp + white noise, 10 s) and parameters as
//! `scripts/librosa_bench.py`; see `benches/README.md` for figures and commands. The `speech`
//! cases run on the shipped speech recording instead (issue 13's workload).

use std::f64::consts::PI;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use specflow::dsp::{DspConfig, FeatureExtractor, FrameBatch, PitchMethod};
use specflow::record::{DocumentLayout, FeatureRecord, SourcePosition};

const SECONDS: usize = 10;
/// Samples per `process` call (100 ms), like one decoded message.
const CHUNK_SECONDS: f64 = 0.1;

/// Linear chirp from 100 Hz to 0.45 * rate at amplitude 0.5 plus uniform noise of amplitude 0.05.
/// The noise is a xorshift sequence written out, not `rand`: it is the signal every earlier
/// criterion round measured, so a bench built at an older commit (the back-to-back comparisons in
/// `benches/README.md`) draws the very same samples.
fn chirp_plus_noise(rate: u32) -> Vec<f32> {
    let rate = f64::from(rate);
    let len = SECONDS * rate as usize;
    let (f0, f1, duration) = (100.0, 0.45 * rate, SECONDS as f64);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|i| {
            let t = i as f64 / rate;
            let phase = 2.0 * PI * (f0 * t + (f1 - f0) * t * t / (2.0 * duration));
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            (0.5 * phase.sin() + 0.05 * noise) as f32
        })
        .collect()
}

/// The shipped speech recording (`tests/data/signals/speech_16k.wav`, mono 16 kHz s16): the
/// signal of issue 13's workload, where most frames are unvoiced or silent and YIN scans every
/// period, unlike the chirp.
fn speech_16k() -> Vec<f32> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/signals/speech_16k.wav"
    );
    let (samples, rate) = specflow_test_support::read_mono_wav(std::path::Path::new(path))
        .expect("the shipped speech recording");
    assert_eq!(rate, 16_000, "{path}");
    samples
}

#[allow(clippy::too_many_arguments)]
fn bench_case(
    c: &mut Criterion,
    name: &str,
    rate: u32,
    frame_length: usize,
    hop_length: usize,
    features: &[&str],
    pitch_method: PitchMethod,
    signal: &[f32],
) {
    let config = DspConfig {
        frame_length,
        hop_length,
        features: features.iter().map(|s| (*s).into()).collect(),
        pitch_method,
        ..DspConfig::default()
    };
    let extractor = FeatureExtractor::new(&config, rate).expect("valid bench config");
    let chunk = (CHUNK_SECONDS * f64::from(rate)) as usize;
    let mut ws = extractor.workspace();
    let mut out = FrameBatch::new();

    let mut group = c.benchmark_group("dsp");
    group.throughput(Throughput::Elements(signal.len() as u64));
    group.sample_size(10);
    group.bench_function(name, |b| {
        b.iter(|| {
            let mut state = extractor.new_stream(0);
            let mut frames = 0;
            for samples in signal.chunks(chunk) {
                out.clear();
                extractor.process(&mut ws, &mut state, black_box(samples), &mut out);
                frames += out.len();
            }
            out.clear();
            extractor.finish_stream(&mut state, &mut out);
            black_box(frames + out.len())
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    use PitchMethod::{Pyin, Yin};
    let (chirp_16k, chirp_48k) = (chirp_plus_noise(16_000), chirp_plus_noise(48_000));
    // Every feature, with pYIN (the default) and with YIN.
    bench_case(
        c,
        "all/16k_512_160",
        16_000,
        512,
        160,
        &["all"],
        Pyin,
        &chirp_16k,
    );
    bench_case(
        c,
        "all/48k_2048_480",
        48_000,
        2048,
        480,
        &["all"],
        Pyin,
        &chirp_48k,
    );
    bench_case(
        c,
        "all_yin/16k_512_160",
        16_000,
        512,
        160,
        &["all"],
        Yin,
        &chirp_16k,
    );
    bench_case(
        c,
        "all_yin/48k_2048_480",
        48_000,
        2048,
        480,
        &["all"],
        Yin,
        &chirp_48k,
    );
    // pYIN alone, against `librosa.pyin` (scripts/librosa_bench.py --pyin).
    bench_case(
        c,
        "pyin_only/16k_512_160",
        16_000,
        512,
        160,
        &["f0"],
        Pyin,
        &chirp_16k,
    );
    bench_case(
        c,
        "pyin_only/48k_2048_480",
        48_000,
        2048,
        480,
        &["f0"],
        Pyin,
        &chirp_48k,
    );
    // The librosa subset (what scripts/librosa_bench.py computes), for a like-for-like ratio.
    let librosa_set = [
        "rms",
        "zcr",
        "spectral_centroid",
        "spectral_bandwidth",
        "spectral_rolloff",
        "spectral_flatness",
        "mel",
        "mfcc",
        "chroma",
        "f0",
    ];
    bench_case(
        c,
        "librosa_set/16k_512_160",
        16_000,
        512,
        160,
        &librosa_set,
        Yin,
        &chirp_16k,
    );
    bench_case(
        c,
        "librosa_set/48k_2048_480",
        48_000,
        2048,
        480,
        &librosa_set,
        Yin,
        &chirp_48k,
    );
    // Breakdown: spectral features only, and YIN only.
    bench_case(
        c,
        "no_f0/16k_512_160",
        16_000,
        512,
        160,
        &[
            "rms",
            "zcr",
            "spectral_centroid",
            "spectral_bandwidth",
            "spectral_rolloff",
            "spectral_flatness",
            "spectral_flux",
            "dominant_frequency",
            "mel",
            "mfcc",
            "chroma",
            "band_energy",
            "loudness_dbfs",
        ],
        Yin,
        &chirp_16k,
    );
    bench_case(
        c,
        "f0_only/16k_512_160",
        16_000,
        512,
        160,
        &["f0"],
        Yin,
        &chirp_16k,
    );
    bench_case(
        c,
        "f0_only/48k_2048_480",
        48_000,
        2048,
        480,
        &["f0"],
        Yin,
        &chirp_48k,
    );
    // Issue 13's signal: the shipped speech, every feature and YIN alone.
    let speech = speech_16k();
    bench_case(
        c,
        "all_yin/speech_16k_512_160",
        16_000,
        512,
        160,
        &["all"],
        Yin,
        &speech,
    );
    bench_case(
        c,
        "f0_only/speech_16k_512_160",
        16_000,
        512,
        160,
        &["f0"],
        Yin,
        &speech,
    );
}

/// The record encoders alone: every 100 ms record of the 16 kHz chirp (every feature, YIN,
/// 10 frames each) to JSON (output topic) and BSON (MongoDB) in both layouts, in records per
/// second. The frames are computed once, outside the timing.
fn record_benches(c: &mut Criterion) {
    let rate = 16_000;
    let config = DspConfig {
        features: vec!["all".into()],
        pitch_method: PitchMethod::Yin,
        ..DspConfig::default()
    };
    let extractor = FeatureExtractor::new(&config, rate).expect("valid bench config");
    let signal = chirp_plus_noise(rate);
    let chunk = (CHUNK_SECONDS * f64::from(rate)) as usize;
    let mut ws = extractor.workspace();
    let mut state = extractor.new_stream(0);
    let mut batches = Vec::new();
    for samples in signal.chunks(chunk) {
        let mut out = FrameBatch::new();
        extractor.process(&mut ws, &mut state, samples, &mut out);
        if !out.is_empty() {
            batches.push(out);
        }
    }
    let source = SourcePosition {
        topic: "audio.raw".into(),
        partition: 0,
        offset: 0,
        timestamp_ms: Some(1_700_000_000_000),
    };
    let records: Vec<FeatureRecord<'_>> = batches
        .iter()
        .map(|batch| FeatureRecord {
            stream_id: "bench-stream-0001",
            sample_rate: rate,
            frame_length: config.frame_length,
            hop_length: config.hop_length,
            batch,
            chunk_start_sample: batch.start_sample(0),
            chunk_timestamp_ms: 1_700_000_000_000,
            source: &source,
        })
        .collect();

    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.sample_size(20);
    group.bench_function("json/16k_512_160", |b| {
        b.iter(|| {
            records
                .iter()
                .map(|r| black_box(r.to_json()).len())
                .sum::<usize>()
        });
    });
    for (name, layout) in [
        ("bson_frames/16k_512_160", DocumentLayout::Frames),
        ("bson_columns/16k_512_160", DocumentLayout::Columns),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                records
                    .iter()
                    .map(|r| {
                        black_box(r.to_document(layout).expect("encodes"))
                            .as_bytes()
                            .len()
                    })
                    .sum::<usize>()
            });
        });
    }
    group.finish();
}

criterion_group!(dsp, benches, record_benches);
criterion_main!(dsp);
