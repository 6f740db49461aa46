//! The feature extractor: everything fixed per (parameters, sample rate), and the frame loop.

use rustfft::FftPlanner;

use super::batch::{BatchLayout, FrameBatch};
use super::chroma::{ChromaFilterBank, N_CHROMA};
use super::config::{DspConfig, PitchMethod};
use super::error::DspError;
use super::feature_table::{FeatureName, N_FEATURES, Needs};
use super::features::{self, BandBins};
use super::kernels::{Avx2, Kernels, Portable};
use super::mel::{DctMatrix, MelFilterBank};
use super::pitch::{Yin, YinScratch};
use super::pyin::{PitchDecision, Pyin, PyinDecoder, PyinScratch};
use super::real_fft::{PowerSpectrum, RealFftWork};
use super::stream::{PitchTrack, StreamSnapshot, StreamState};
use super::window::periodic_window;
use crate::validation::Problem;

/// Immutable, `Send + Sync`, shared via `Arc` by all streams with the same parameters and sample
/// rate. Holds the FFT plans, window, mel and chroma filter banks, DCT matrix and band bin ranges.
pub struct FeatureExtractor {
    sample_rate: u32,
    frame_length: usize,
    hop_length: usize,
    rolloff_percent: f64,
    /// Hz between FFT bin centres.
    bin_hz: f64,
    /// Centre frequency of every FFT bin, `k * sample_rate / frame_length`.
    bin_freqs: Vec<f64>,
    n_bins: usize,
    layout: BatchLayout,
    /// What the selected features need computed (from the feature table).
    needs: Needs,
    /// The windowed power spectrum.
    spectrum: Option<PowerSpectrum<f64>>,
    mel: Option<MelFilterBank>,
    dct: Option<DctMatrix>,
    chroma: Option<ChromaFilterBank>,
    bands: Option<BandBins>,
    yin: Option<Yin>,
    /// pYIN tables, and the decoder lag, when `f0` comes from pYIN.
    pyin: Option<(Pyin, usize)>,
    /// The AVX2 kernels when this CPU has them (same results as the portable ones, faster).
    pub(crate) avx2: Option<Avx2>,
}

impl std::fmt::Debug for FeatureExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureExtractor")
            .field("sample_rate", &self.sample_rate)
            .field("frame_length", &self.frame_length)
            .field("hop_length", &self.hop_length)
            .field("selected", &self.layout.selected)
            .finish_non_exhaustive()
    }
}

/// Per-thread scratch buffers for [`FeatureExtractor::process`]: one per worker thread, reused.
/// A workspace made by another extractor is rebuilt on first use (one allocation).
pub struct Workspace {
    shape: WorkspaceShape,
    frame: Vec<f32>,
    /// The spectrum transform's buffers (`None` when no feature needs the spectrum).
    spectrum: Option<RealFftWork<f64>>,
    magnitude: Vec<f64>,
    power: Vec<f64>,
    /// The power spectrum in f32, filled only for chroma.
    power_f32: Vec<f32>,
    mel: Vec<f64>,
    mfcc: Vec<f64>,
    chroma: Vec<f64>,
    bands: Vec<f64>,
    yin: Option<YinScratch>,
    pyin: Option<PyinWork>,
}

/// Moves the oldest waiting frames of `pending`, one for each of `decided` (their pitch
/// decisions, in frame order), to the end of `out` with their decisions, shifting the frames
/// still waiting once for all of them.
fn emit_decided(pending: &mut FrameBatch, decided: &[PitchDecision], out: &mut FrameBatch) {
    let first = out.len();
    pending.move_front_to(out, decided.len());
    for (i, decision) in decided.iter().enumerate() {
        out.set_pitch(first + i, decision.f0, decision.voiced_prob);
    }
}

/// Per-thread pYIN buffers: FFT scratch, the frame's observation probabilities and its
/// voicing probability, and the decisions of one [`FeatureExtractor::process`] call.
struct PyinWork {
    scratch: PyinScratch,
    observation: Vec<f64>,
    voiced_prob: f64,
    /// Decisions made during the call for the oldest waiting frames, in frame order, not yet
    /// handed out: they go out together ([`emit_decided`]) half a lag's worth at a time and at
    /// the end of the call, so that the waiting frames are not all shifted for every decision.
    decided: Vec<PitchDecision>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// The buffer sizes a workspace was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WorkspaceShape {
    frame_length: usize,
    spectrum: bool,
    n_mels: usize,
    n_mfcc: usize,
    n_bands: usize,
    yin: bool,
    pyin_states: usize,
}

impl FeatureExtractor {
    /// Builds plans, window and filter banks for `config` at `sample_rate`.
    ///
    /// # Errors
    /// [`DspError::InvalidConfig`] with every problem of [`DspConfig::validate_for_rate`].
    pub fn new(config: &DspConfig, sample_rate: u32) -> Result<Self, DspError> {
        let problems = config.validate_for_rate(sample_rate);
        if !problems.is_empty() {
            return Err(DspError::InvalidConfig(problems));
        }
        let selected = config.selected_features();
        let needs = Needs::of(&selected);
        let rate = f64::from(sample_rate);
        let n = config.frame_length;
        let n_bins = n / 2 + 1;

        let mut planner = FftPlanner::<f64>::new();
        let spectrum = needs
            .contains(Needs::SPECTRUM)
            .then(|| PowerSpectrum::new(periodic_window(config.window, n), &mut planner));
        let window_power: f64 = periodic_window(config.window, n)
            .iter()
            .map(|w| w * w)
            .sum();

        let fmax = config.fmax.unwrap_or(rate / 2.0);
        let mel = needs.contains(Needs::MEL_BANK).then(|| {
            MelFilterBank::new(rate, n, config.n_mels, config.fmin, fmax, config.mel_scale)
        });
        let dct = needs
            .contains(Needs::DCT)
            .then(|| DctMatrix::new(config.n_mels, config.n_mfcc));
        let chroma = needs
            .contains(Needs::CHROMA_BANK)
            .then(|| ChromaFilterBank::new(rate, n));
        let bands = needs
            .contains(Needs::BAND_BINS)
            .then(|| BandBins::new(&config.bands, rate, n, window_power));
        let pitch = needs.contains(Needs::PITCH);
        let pyin_selected = config.pitch_method == PitchMethod::Pyin;
        let pyin = if pitch && pyin_selected {
            let pyin = Pyin::with_planner(
                &config.pyin_params(),
                rate,
                n,
                config.hop_length,
                &mut planner,
            )
            .map_err(|messages| {
                DspError::InvalidConfig(
                    messages
                        .into_iter()
                        .map(|m| Problem::new("dsp.pitch_method", "\"pyin\"", m))
                        .collect(),
                )
            })?;
            Some((pyin, config.pitch_lag_frames.max(1)))
        } else {
            None
        };
        let yin = (pitch && !pyin_selected).then(|| {
            Yin::new(
                rate,
                n,
                config.pitch_fmin,
                config.pitch_fmax,
                config.pitch_threshold,
                &mut FftPlanner::<f32>::new(),
            )
        });

        let mut widths = [0; N_FEATURES];
        for &name in &selected {
            widths[name as usize] = name.width().resolve(config);
        }
        let mask = selected.iter().fold(0u32, |m, &f| m | (1 << f as u32));

        Ok(Self {
            sample_rate,
            frame_length: n,
            hop_length: config.hop_length,
            rolloff_percent: config.rolloff_percent,
            bin_hz: rate / n as f64,
            bin_freqs: (0..n_bins).map(|k| k as f64 * rate / n as f64).collect(),
            n_bins,
            layout: BatchLayout {
                selected,
                mask,
                widths,
                voiced_prob: pyin.is_some(),
            },
            needs,
            spectrum,
            mel,
            dct,
            chroma,
            bands,
            yin,
            pyin,
            avx2: Avx2::detect(),
        })
    }

    /// Sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Samples per frame.
    pub fn frame_length(&self) -> usize {
        self.frame_length
    }

    /// Samples between frame starts.
    pub fn hop_length(&self) -> usize {
        self.hop_length
    }

    /// The computed features, de-duplicated, in [`FeatureName::ALL`] order.
    pub fn selected(&self) -> &[FeatureName] {
        &self.layout.selected
    }

    /// Number of values of a selected vector feature (`mel`, `mfcc`, `chroma`, `band_energy`).
    pub fn vector_len(&self, name: FeatureName) -> Option<usize> {
        (name.width().is_vector() && self.layout.contains(name)).then(|| self.layout.width(name))
    }

    fn wants(&self, name: FeatureName) -> bool {
        self.layout.contains(name)
    }

    fn workspace_shape(&self) -> WorkspaceShape {
        WorkspaceShape {
            frame_length: self.frame_length,
            spectrum: self.spectrum.is_some(),
            n_mels: self.mel.as_ref().map_or(0, MelFilterBank::n_mels),
            n_mfcc: self.layout.width(FeatureName::Mfcc),
            n_bands: self.bands.as_ref().map_or(0, BandBins::len),
            yin: self.yin.is_some(),
            pyin_states: self.pyin.as_ref().map_or(0, |(p, _)| p.n_states()),
        }
    }

    /// Per-thread scratch (FFT buffers, spectrum, YIN buffers). One per worker thread, reused.
    pub fn workspace(&self) -> Workspace {
        let shape = self.workspace_shape();
        let n_spectrum = if shape.spectrum { self.n_bins } else { 0 };
        Workspace {
            shape,
            frame: vec![0.0; self.frame_length],
            spectrum: self.spectrum.as_ref().map(PowerSpectrum::work),
            magnitude: vec![0.0; n_spectrum],
            power: vec![0.0; n_spectrum],
            power_f32: vec![0.0; if self.chroma.is_some() { n_spectrum } else { 0 }],
            mel: vec![0.0; shape.n_mels],
            mfcc: vec![0.0; shape.n_mfcc],
            chroma: vec![0.0; if self.chroma.is_some() { N_CHROMA } else { 0 }],
            bands: vec![0.0; shape.n_bands],
            yin: self.yin.as_ref().map(Yin::scratch),
            pyin: self.pyin.as_ref().map(|(pyin, _)| PyinWork {
                scratch: pyin.scratch(),
                observation: vec![0.0; pyin.n_states()],
                voiced_prob: 0.0,
                decided: Vec::new(),
            }),
        }
    }

    /// A stream whose next sample has absolute index `start_sample`. Frames stay on the global
    /// grid: frame `k` covers `[k * hop, k * hop + frame_length)`, so the first frame such a
    /// stream can emit is `ceil(start_sample / hop)`.
    pub fn new_stream(&self, start_sample: u64) -> StreamState {
        let flux_bins = if self.needs.contains(Needs::PREVIOUS_SPECTRUM) {
            self.n_bins
        } else {
            0
        };
        let mut state =
            StreamState::new(self.frame_length, self.hop_length, flux_bins, start_sample);
        state.pitch = self.pyin.as_ref().map(|(pyin, lag)| {
            let mut pending = FrameBatch::new();
            pending.set_layout(&self.layout);
            PitchTrack {
                decoder: PyinDecoder::new(pyin, *lag),
                pending,
            }
        });
        state
    }

    /// Frames a stream's records trail its newest sample by: pYIN's decoder lag (0 with YIN).
    pub fn pitch_lag_frames(&self) -> usize {
        self.pyin.as_ref().map_or(0, |(_, lag)| *lag)
    }

    /// Ends a stream (`audio.eos`): with pYIN, decodes the frames still waiting for their pitch
    /// in full (as librosa's backtrack) and appends them to `out`. Nothing to do with YIN.
    pub fn finish_stream(&self, state: &mut StreamState, out: &mut FrameBatch) {
        let (Some((pyin, _)), Some(track)) = (&self.pyin, state.pitch.as_mut()) else {
            return;
        };
        let PitchTrack { decoder, pending } = track;
        let mut decided = Vec::with_capacity(pending.len());
        decoder.finish(pyin, &mut |decision: PitchDecision| decided.push(decision));
        emit_decided(pending, &decided, out);
    }

    /// Continues a stream at `start_sample` after a gap: its waiting frames are decoded in full
    /// and appended to `out` ([`Self::finish_stream`]), then the state is reset there.
    pub fn restart_stream(&self, state: &mut StreamState, start_sample: u64, out: &mut FrameBatch) {
        self.finish_stream(state, out);
        state.reset(start_sample);
    }

    /// Rebuilds a stream from a [`StreamSnapshot`] taken by an extractor with the same frame and
    /// hop length and feature selection; it then continues exactly as the original would have.
    ///
    /// # Errors
    /// [`DspError::Snapshot`] naming what does not fit this extractor.
    pub fn restore_stream(&self, snapshot: &StreamSnapshot) -> Result<StreamState, DspError> {
        let mismatch = |what: String| Err(DspError::Snapshot(what));
        if snapshot.frame_length as usize != self.frame_length
            || snapshot.hop_length as usize != self.hop_length
        {
            return mismatch(format!(
                "made for frame/hop {}/{}, the extractor uses {}/{}",
                snapshot.frame_length, snapshot.hop_length, self.frame_length, self.hop_length
            ));
        }
        if snapshot.tail.len() >= self.frame_length
            || snapshot.tail.len() as u64 > snapshot.next_sample
        {
            return mismatch(format!(
                "{} buffered samples at sample {} with frame length {}",
                snapshot.tail.len(),
                snapshot.next_sample,
                self.frame_length
            ));
        }
        let mut state = self.new_stream(snapshot.next_sample);
        state.next_frame = snapshot.next_frame;
        state.tail.extend_from_slice(&snapshot.tail);
        if let Some(previous) = &snapshot.previous_magnitude {
            let carries_previous = self.needs.contains(Needs::PREVIOUS_SPECTRUM);
            if !carries_previous || previous.len() != self.n_bins {
                return mismatch(format!(
                    "previous spectrum of {} bins; the extractor {}",
                    previous.len(),
                    if carries_previous {
                        format!("has {} bins", self.n_bins)
                    } else {
                        "does not compute spectral_flux".to_string()
                    }
                ));
            }
            state.previous_magnitude.extend_from_slice(previous);
            state.has_previous = true;
        }
        match (
            &self.pyin,
            state.pitch.as_mut(),
            &snapshot.pitch_decoder,
            &snapshot.pending_frames,
        ) {
            (None, None, None, None) => {}
            (Some((pyin, lag)), Some(track), Some(decoder), Some(pending)) => {
                let decoder = PyinDecoder::from_bytes(pyin, decoder)
                    .map_err(|e| DspError::Snapshot(format!("pitch decoder: {e}")))?;
                if decoder.lag() != *lag || decoder.pending() != pending.indexes.len() {
                    return mismatch(format!(
                        "pitch decoder with lag {} and {} waiting frames; the extractor uses lag {lag}",
                        decoder.lag(),
                        pending.indexes.len()
                    ));
                }
                track.decoder = decoder;
                track
                    .pending
                    .set_columns(&self.layout, pending)
                    .ok_or_else(|| {
                        DspError::Snapshot("waiting frames do not fit the feature selection".into())
                    })?;
            }
            _ => {
                return mismatch(
                    "pitch method (pyin or yin) differs from the snapshot's".to_string(),
                );
            }
        }
        Ok(state)
    }

    /// Feeds `samples` (mono, nominally in `[-1, 1)`) that continue exactly at
    /// `state.next_sample()`, and appends every frame they complete to `out`. Non-finite samples
    /// are read as 0. Allocates nothing per frame once `out` and `ws` have grown.
    ///
    /// # Panics
    /// When `state` was made by an extractor with another frame or hop length, or `out` still
    /// holds frames of an extractor with another feature selection.
    pub fn process(
        &self,
        ws: &mut Workspace,
        state: &mut StreamState,
        samples: &[f32],
        out: &mut FrameBatch,
    ) {
        assert!(
            state.frame_length == self.frame_length && state.hop_length == self.hop_length,
            "StreamState made for frame/hop {}/{} used with an extractor for {}/{}",
            state.frame_length,
            state.hop_length,
            self.frame_length,
            self.hop_length
        );
        if ws.shape != self.workspace_shape() {
            *ws = self.workspace();
        }
        out.set_layout(&self.layout);

        let n = self.frame_length as u64;
        let fed_from = state.next_sample;
        let end = fed_from + samples.len() as u64;
        let tail_start = state.oldest_needed_sample();

        loop {
            let start = state.next_frame_start();
            if start + n > end {
                break;
            }
            // Gather the frame from the buffered tail and the new samples.
            let mut filled = 0;
            if start < fed_from {
                let from = (start - tail_start) as usize;
                let take = (state.tail.len() - from).min(self.frame_length);
                copy_finite(&mut ws.frame[..take], &state.tail[from..from + take]);
                filled = take;
            }
            let from = (start + filled as u64 - fed_from) as usize;
            let rest = self.frame_length - filled;
            copy_finite(&mut ws.frame[filled..], &samples[from..from + rest]);

            match (&self.pyin, state.pitch.take()) {
                (Some((pyin, lag)), Some(mut track)) => {
                    // With pYIN the frame waits for its pitch decision in the stream's state.
                    track.pending.push_frame(state.next_frame, start);
                    self.compute_frame(ws, state, &mut track.pending);
                    let work = ws.pyin.as_mut().expect("pyin workspace");
                    if let Some(decision) = track.decoder.push(
                        pyin,
                        &mut work.scratch,
                        &work.observation,
                        work.voiced_prob,
                    ) {
                        work.decided.push(decision);
                        // Half a lag's worth at a time: the stream holds at most one and a half
                        // lags of waiting frames (the columns keep their size), and each frame
                        // is shifted about twice instead of once per later decision.
                        if work.decided.len() >= (*lag / 2).max(1) {
                            emit_decided(&mut track.pending, &work.decided, out);
                            work.decided.clear();
                        }
                    }
                    state.pitch = Some(track);
                }
                (_, track) => {
                    state.pitch = track;
                    out.push_frame(state.next_frame, start);
                    self.compute_frame(ws, state, out);
                }
            }
            state.next_frame += 1;
        }
        if let (Some(track), Some(work)) = (state.pitch.as_mut(), ws.pyin.as_mut()) {
            emit_decided(&mut track.pending, &work.decided, out);
            work.decided.clear();
        }

        // Keep only the samples the next frame still needs.
        let keep_from = state.next_frame_start().max(tail_start);
        if keep_from >= end {
            state.tail.clear();
        } else if keep_from >= fed_from {
            state.tail.clear();
            state
                .tail
                .extend_from_slice(&samples[(keep_from - fed_from) as usize..]);
        } else {
            state.tail.drain(..(keep_from - tail_start) as usize);
            state.tail.extend_from_slice(samples);
        }
        state.next_sample = end;
    }

    /// Computes the selected features of `ws.frame` and pushes them onto the frame just started in `out`.
    fn compute_frame(&self, ws: &mut Workspace, state: &mut StreamState, out: &mut FrameBatch) {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = self.avx2 {
            // SAFETY: an `Avx2` is only made on a CPU that reports AVX2 (`Avx2::detect`).
            unsafe { self.compute_frame_avx2(avx2, ws, state, out) };
            return;
        }
        self.compute_frame_with(Portable, ws, state, out);
    }

    /// [`Self::compute_frame_with`] on the AVX2 kernels, compiled with AVX2 enabled. No FMA:
    /// LLVM does not fuse `a * b + c` without fast-math, and the kernels fix their summation
    /// order, so the results are bit-identical to the portable build.
    ///
    /// # Safety
    /// The CPU must have AVX2: the caller holds the `Avx2` that `Avx2::detect` made.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn compute_frame_avx2(
        &self,
        avx2: Avx2,
        ws: &mut Workspace,
        state: &mut StreamState,
        out: &mut FrameBatch,
    ) {
        self.compute_frame_with(avx2, ws, state, out);
    }

    #[inline(always)]
    fn compute_frame_with<K: Kernels>(
        &self,
        kernels: K,
        ws: &mut Workspace,
        state: &mut StreamState,
        out: &mut FrameBatch,
    ) {
        let frame = &ws.frame[..];

        let rms = self
            .needs
            .contains(Needs::RMS)
            .then(|| features::rms_of_sum_squares(kernels.sum_squares(frame), frame.len()));

        if let (Some(plan), Some(work)) = (&self.spectrum, &mut ws.spectrum) {
            plan.compute(frame, work, &mut ws.power);
            for (m, &p) in ws.magnitude.iter_mut().zip(&ws.power) {
                *m = p.sqrt();
            }
        }
        let magnitude = &ws.magnitude[..];
        let power = &ws.power[..];
        let magnitude_total = if self.needs.contains(Needs::MAGNITUDE_TOTAL) {
            kernels.sum(magnitude)
        } else {
            0.0
        };
        let centroid = if self.needs.contains(Needs::CENTROID) {
            features::centroid_of(magnitude_total, kernels.dot(magnitude, &self.bin_freqs))
        } else {
            0.0
        };

        for &name in &self.layout.selected {
            match name {
                FeatureName::Rms => out.push_scalar(name, rms.unwrap_or_default()),
                FeatureName::Zcr => out.push_scalar(name, features::zero_crossing_rate(frame)),
                FeatureName::SpectralCentroid => out.push_scalar(name, centroid),
                FeatureName::SpectralBandwidth => {
                    out.push_scalar(
                        name,
                        features::bandwidth_from_spread(
                            kernels.square_deviation(magnitude, &self.bin_freqs, centroid),
                            magnitude_total,
                        ),
                    );
                }
                FeatureName::SpectralRolloff => {
                    out.push_scalar(
                        name,
                        features::rolloff_of(
                            magnitude,
                            self.bin_hz,
                            self.rolloff_percent,
                            magnitude_total,
                        ),
                    );
                }
                FeatureName::SpectralFlatness => {
                    out.push_scalar(name, features::spectral_flatness(power))
                }
                FeatureName::SpectralFlux => {
                    let flux = if state.has_previous {
                        features::spectral_flux(magnitude, &state.previous_magnitude)
                    } else {
                        0.0
                    };
                    out.push_scalar(name, flux);
                    state.previous_magnitude.clear();
                    state.previous_magnitude.extend_from_slice(magnitude);
                    state.has_previous = true;
                }
                FeatureName::DominantFrequency => {
                    out.push_scalar(name, features::dominant_frequency(magnitude, self.bin_hz));
                }
                FeatureName::F0 => match (&self.pyin, &mut ws.pyin) {
                    (Some((pyin, _)), Some(work)) => {
                        work.voiced_prob =
                            pyin.observe(frame, &mut work.scratch, &mut work.observation);
                        out.push_pending_pitch();
                    }
                    _ => {
                        let f0 = match (&self.yin, &mut ws.yin) {
                            (Some(yin), Some(scratch)) => yin.estimate(frame, scratch),
                            _ => None,
                        };
                        out.push_f0(f0);
                    }
                },
                FeatureName::Mel => {
                    if let Some(mel) = &self.mel {
                        mel.apply(kernels, power, &mut ws.mel);
                    }
                    out.push_vector(name, &ws.mel);
                }
                FeatureName::Mfcc => {
                    if let (Some(mel), Some(dct)) = (&self.mel, &self.dct) {
                        // When mel is selected its arm (earlier in the canonical order) has
                        // already filled ws.mel; the dB conversion below happens after it was pushed.
                        if !self.wants(FeatureName::Mel) {
                            mel.apply(kernels, power, &mut ws.mel);
                        }
                        features::power_to_db_in_place(&mut ws.mel);
                        dct.apply(kernels, &ws.mel, &mut ws.mfcc);
                    }
                    out.push_vector(name, &ws.mfcc);
                }
                FeatureName::Chroma => {
                    if let Some(chroma) = &self.chroma {
                        for (p32, &p) in ws.power_f32.iter_mut().zip(power) {
                            *p32 = p as f32;
                        }
                        chroma.apply(kernels, &ws.power_f32, &mut ws.chroma);
                    }
                    out.push_vector(name, &ws.chroma);
                }
                FeatureName::BandEnergy => {
                    if let Some(bands) = &self.bands {
                        bands.energies(kernels, power, &mut ws.bands);
                    }
                    out.push_vector(name, &ws.bands);
                }
                FeatureName::LoudnessDbfs => {
                    out.push_scalar(name, features::loudness_dbfs(rms.unwrap_or_default()));
                }
            }
        }
    }
}

/// Copies samples, reading non-finite ones as 0.
fn copy_finite(dst: &mut [f32], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = if s.is_finite() { s } else { 0.0 };
    }
}

#[cfg(test)]
#[path = "extractor_tests.rs"]
mod tests;
