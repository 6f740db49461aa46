//! Streaming properties of the DSP core: chunking invariance (bit-identical output), the global
//! frame grid across stream starts and resets, the carried-state bounds, and no allocation per
//! frame once buffers have grown.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use specflow::dsp::{
    DspConfig, FeatureExtractor, FeatureName, FrameBatch, PitchMethod, StreamState, WindowKind,
};

/// Counts allocations made by the current thread, so tests running in parallel do not interfere.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed on unchanged to the system allocator, which upholds
// `GlobalAlloc`'s contract; counting touches only a thread-local counter (no allocation).
// A global allocator has no safe way to be written.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's `layout` contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. the system allocator, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as `dealloc`, with the caller's `new_size` contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

const SAMPLE_RATE: u32 = 16000;

/// Every feature, with pitch limits that fit any frame length from 16 up.
fn config(frame_length: usize, hop_length: usize, window: WindowKind) -> DspConfig {
    let rate = f64::from(SAMPLE_RATE);
    DspConfig {
        frame_length,
        hop_length,
        window,
        pitch_fmin: (2.2 * rate / frame_length as f64).max(65.0),
        pitch_fmax: rate / 2.0,
        ..DspConfig::default()
    }
}

/// One JSON line per frame: every selected feature, bit for bit (shortest round-trip floats).
fn serialised(batch: &FrameBatch) -> Vec<String> {
    batch
        .frames()
        .map(|f| serde_json::to_string(&f).expect("serialise frame"))
        .collect()
}

/// YIN instead of the default pYIN: for the grid tests, whose streams start or restart at other
/// frames (pYIN's decisions depend on the stream's past by design).
fn yin(mut config: DspConfig) -> DspConfig {
    config.pitch_method = PitchMethod::Yin;
    config
}

/// Feeds `signal` (whose first sample has absolute index `start`) in chunks cycling through
/// `chunk_sizes`, checking the state invariants after every call, then ends the stream (as
/// `audio.eos`: frames waiting for pYIN's decision are decided).
fn run_chunked(
    extractor: &FeatureExtractor,
    start: u64,
    signal: &[f32],
    chunk_sizes: &[usize],
) -> (FrameBatch, StreamState) {
    let mut ws = extractor.workspace();
    let mut state = extractor.new_stream(start);
    let mut out = FrameBatch::new();
    let hop = extractor.hop_length() as u64;
    let mut offset = 0;
    for &size in chunk_sizes.iter().cycle() {
        if offset >= signal.len() {
            break;
        }
        let end = (offset + size.max(1)).min(signal.len());
        extractor.process(&mut ws, &mut state, &signal[offset..end], &mut out);
        offset = end;
        assert_eq!(state.next_sample(), start + offset as u64);
        let buffered = state.next_sample() - state.oldest_needed_sample();
        assert!(
            buffered < extractor.frame_length() as u64,
            "buffered {buffered} samples"
        );
        assert_eq!(
            state.oldest_needed_sample(),
            (state.next_frame() * hop).min(state.next_sample())
        );
        assert!(
            state.pending_frames() <= extractor.pitch_lag_frames(),
            "{} frames wait for pitch",
            state.pending_frames()
        );
    }
    extractor.finish_stream(&mut state, &mut out);
    assert_eq!(state.pending_frames(), 0);
    (out, state)
}

fn signal_strategy() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        // Uniform noise in [-1, 1).
        prop::collection::vec(-1.0f32..1.0, 0..3000),
        // Sparse: mostly exact zeros (silent frames), a few spikes.
        prop::collection::vec(prop_oneof![9 => Just(0.0f32), 1 => -1.0f32..1.0], 0..3000),
    ]
}

fn chunking_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![1]),
        prop::collection::vec(1usize..8, 1..12),
        prop::collection::vec(1usize..2500, 1..8),
    ]
}

fn window_strategy() -> impl Strategy<Value = WindowKind> {
    prop_oneof![
        Just(WindowKind::Hann),
        Just(WindowKind::Hamming),
        Just(WindowKind::Blackman),
        Just(WindowKind::Rectangular),
    ]
}

proptest! {
    // 96 cases unless PROPTEST_CASES says otherwise.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn chunked_processing_is_bit_identical_to_whole(
        signal in signal_strategy(),
        frame_length in 16usize..=600,
        hop_fraction in 0.0f64..1.0,
        window in window_strategy(),
        chunks in chunking_strategy(),
        start in prop_oneof![Just(0u64), 0u64..100_000],
        pitch_method in prop_oneof![Just(PitchMethod::Pyin), Just(PitchMethod::Yin)],
        lag in 1usize..40,
    ) {
        let hop_length = 1 + ((frame_length - 1) as f64 * hop_fraction) as usize;
        let mut config = config(frame_length, hop_length, window);
        config.pitch_method = pitch_method;
        config.pitch_lag_frames = lag;
        let extractor = FeatureExtractor::new(&config, SAMPLE_RATE)
            .expect("valid config");
        let (whole, whole_state) = run_chunked(&extractor, start, &signal, &[signal.len().max(1)]);
        let (chunked, chunked_state) = run_chunked(&extractor, start, &signal, &chunks);

        let first = start.div_ceil(hop_length as u64);
        let available = (start + signal.len() as u64).saturating_sub(first * hop_length as u64);
        let expected_frames = if available >= frame_length as u64 {
            (available - frame_length as u64) / hop_length as u64 + 1
        } else {
            0
        };
        prop_assert_eq!(whole.len() as u64, expected_frames);
        prop_assert_eq!(serialised(&whole), serialised(&chunked));
        for i in 0..whole.len() {
            prop_assert_eq!(whole.index(i), first + i as u64);
            prop_assert_eq!(whole.start_sample(i), (first + i as u64) * hop_length as u64);
        }
        prop_assert_eq!(whole_state.next_frame(), chunked_state.next_frame());
        prop_assert_eq!(whole_state.oldest_needed_sample(), chunked_state.oldest_needed_sample());
    }
}

fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-0.5..0.5)).collect()
}

/// Frames of `late` equal the frames of `early` with the same index, apart from flux on the first.
fn assert_same_frames_except_first_flux(early: &FrameBatch, late: &FrameBatch) {
    assert!(!late.is_empty());
    for i in 0..late.len() {
        let j = (0..early.len())
            .find(|&j| early.index(j) == late.index(i))
            .expect("frame in both");
        assert_eq!(early.start_sample(j), late.start_sample(i));
        for &name in late.selected() {
            if name == FeatureName::SpectralFlux && i == 0 {
                assert_eq!(
                    late.scalar(name, i),
                    Some(0.0),
                    "first flux after a (re)start is 0"
                );
                continue;
            }
            assert_eq!(
                early.scalar(name, j).map(f32::to_bits),
                late.scalar(name, i).map(f32::to_bits),
                "{name} frame {}",
                late.index(i)
            );
            assert_eq!(
                early.vector(name, j),
                late.vector(name, i),
                "{name} frame {}",
                late.index(i)
            );
        }
    }
}

#[test]
fn stream_starting_off_grid_emits_ceil_start_over_hop_first() {
    let extractor =
        FeatureExtractor::new(&yin(config(400, 160, WindowKind::Hann)), SAMPLE_RATE).unwrap();
    let signal = noise(6000, 7);
    let (from_zero, _) = run_chunked(&extractor, 0, &signal, &[6000]);

    for start in [1u64, 159, 160, 161, 1000, 1234] {
        let (late, state) =
            run_chunked(&extractor, start, &signal[start as usize..], &[333, 1, 17]);
        let first = start.div_ceil(160);
        assert_eq!(late.index(0), first, "start {start}");
        assert_eq!(late.start_sample(0), first * 160, "start {start}");
        assert_eq!(state.next_sample(), 6000);
        assert_same_frames_except_first_flux(&from_zero, &late);
    }
}

#[test]
fn reset_after_a_gap_continues_on_the_grid() {
    let extractor =
        FeatureExtractor::new(&yin(config(512, 160, WindowKind::Hann)), SAMPLE_RATE).unwrap();
    let signal = noise(10_000, 11);
    let (from_zero, _) = run_chunked(&extractor, 0, &signal, &[10_000]);

    let mut ws = extractor.workspace();
    let mut state = extractor.new_stream(0);
    let mut out = FrameBatch::new();
    extractor.process(&mut ws, &mut state, &signal[..3000], &mut out);
    let before_gap = out.len();
    assert!(
        state.oldest_needed_sample() < 3000,
        "a partial frame is buffered"
    );

    // Samples 3000..4321 are lost; the stream resumes at 4321.
    state.reset(4321);
    assert_eq!(state.next_sample(), 4321);
    assert_eq!(state.oldest_needed_sample(), 4321);
    assert_eq!(state.next_frame(), 4321u64.div_ceil(160));
    out.clear();
    extractor.process(&mut ws, &mut state, &signal[4321..], &mut out);
    assert!(before_gap > 0);
    assert_eq!(out.index(0), 28);
    assert_eq!(out.start_sample(0), 28 * 160);
    assert_same_frames_except_first_flux(&from_zero, &out);
}

#[test]
fn carried_state_is_small() {
    // YIN: the sample tail and the previous spectrum. pYIN adds its decoder (the best score per
    // state, back-pointers for `pitch_lag_frames` frames, work rows) and the waiting frames.
    for (method, bound) in [
        (PitchMethod::Yin, 2048 * 4 + 1025 * 8),
        (PitchMethod::Pyin, 2048 * 4 + 1025 * 8 + 256 * 1024),
    ] {
        let mut config = config(2048, 480, WindowKind::Hann);
        config.pitch_method = method;
        let extractor = FeatureExtractor::new(&config, 48000).unwrap();
        let mut ws = extractor.workspace();
        let mut state = extractor.new_stream(0);
        let mut out = FrameBatch::new();
        for chunk in noise(48_000, 3).chunks(1000) {
            extractor.process(&mut ws, &mut state, chunk, &mut out);
            assert!(
                state.heap_bytes() <= bound,
                "{method:?}: {} bytes",
                state.heap_bytes()
            );
        }
        assert!(state.heap_bytes() > 0);
    }
}

#[test]
fn no_allocation_per_frame_once_buffers_have_grown() {
    // The counter sees this thread's allocations.
    let before = allocations();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(16)));
    assert!(allocations() > before, "allocation counter is not counting");

    for selection in [
        vec!["all"],
        vec!["rms", "zcr", "f0"],
        vec!["mfcc"],
        vec!["spectral_flux", "band_energy"],
    ] {
        let mut config = config(512, 160, WindowKind::Hann);
        config.features = selection.iter().map(|s| (*s).into()).collect();
        let extractor = FeatureExtractor::new(&config, SAMPLE_RATE).unwrap();
        let signal = noise(40_000, 5);
        let mut ws = extractor.workspace();
        let mut state = extractor.new_stream(0);
        let mut out = FrameBatch::new();
        // Warm up: grow the batch columns to hold a chunk's frames.
        extractor.process(&mut ws, &mut state, &signal[..20_000], &mut out);
        let capacity_frames = out.len();
        out.clear();

        let before = allocations();
        for chunk in signal[20_000..].chunks(997) {
            extractor.process(&mut ws, &mut state, chunk, &mut out);
            if out.len() + 10 > capacity_frames {
                out.clear();
            }
        }
        let made = allocations() - before;
        assert_eq!(
            made, 0,
            "{selection:?}: {made} allocations in the steady state"
        );
    }
}
