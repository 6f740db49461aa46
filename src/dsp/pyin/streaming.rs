//! The streaming side of the pYIN decoder: [`PyinDecoder`], the fixed-lag state of one stream
//! (the ring of back-pointer rows, the pending voiced probabilities, the frame count) around
//! the Viterbi step of `decoder`, its [`PitchDecision`]s, its exact byte snapshots
//! ([`PyinDecoder::to_bytes`], [`PyinDecoder::from_bytes`]) and the full offline decode
//! ([`decode_offline`]).

use super::decoder::step;
use super::numeric::{TINY, first_argmax};
use super::observation::PyinScratch;
use super::tables::Pyin;

/// Version byte of [`PyinDecoder::to_bytes`].
const STATE_VERSION: u8 = 1;

/// One decoded frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PitchDecision {
    /// Fundamental frequency in Hz (the centre of the decoded pitch bin), `None` when unvoiced.
    pub f0: Option<f64>,
    /// Whether the decoded state is voiced.
    pub voiced: bool,
    /// The frame's voiced probability (sum of its voiced observation probabilities).
    pub voiced_prob: f64,
}

/// Fixed-lag Viterbi decoder for one stream (see the module documentation).
///
/// Holds the log-probability of the best path into every state after the last pushed frame,
/// a ring of `lag` back-pointer rows (`u16` state indices, `2 * lag * n_states` bytes) and the
/// voiced probabilities of the undecided frames; the work buffers of a step are per thread, in
/// [`PyinScratch`]. Everything is allocated in [`PyinDecoder::new`]. As in librosa the log-probabilities are never renormalised: they fall
/// by a few nats per frame, which `f64` absorbs for years of audio (after 10^8 frames the
/// resolution is still ~10^-8 nats).
#[derive(Clone)]
pub struct PyinDecoder {
    /// Number of HMM states.
    n_states: usize,
    /// Frames a decision waits for.
    lag: usize,
    /// Fingerprint of the [`Pyin`] configuration the decoder was made for.
    fingerprint: u64,
    /// Frames pushed since the start (or the last [`PyinDecoder::finish`]).
    frames: u64,
    /// Best-path log-probability per state after the last frame.
    pub(super) value: Vec<f64>,
    /// Back-pointers of frame `f` (>= 1) at row `f % lag`.
    pub(super) pointers: Vec<u16>,
    /// Voiced probability of frame `f` at `f % (lag + 1)`.
    voiced_probs: Vec<f64>,
    /// States of the pending frames during [`PyinDecoder::finish`] (a work buffer).
    path: Vec<u16>,
}

impl std::fmt::Debug for PyinDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyinDecoder")
            .field("n_states", &self.n_states)
            .field("lag", &self.lag)
            .field("frames", &self.frames)
            .field("pending", &self.pending())
            .finish()
    }
}

impl PyinDecoder {
    /// A decoder for streams observed with `pyin`, deciding each frame `lag` frames late.
    /// `lag` = 0 decides each frame from its own best state (no smoothing).
    pub fn new(pyin: &Pyin, lag: usize) -> Self {
        let n_states = pyin.n_states();
        Self {
            n_states,
            lag,
            fingerprint: pyin.fingerprint,
            frames: 0,
            value: vec![0.0; n_states],
            pointers: vec![0; lag * n_states],
            voiced_probs: vec![0.0; lag + 1],
            path: vec![0; lag],
        }
    }

    /// The decision lag in frames.
    pub fn lag(&self) -> usize {
        self.lag
    }

    /// Frames pushed since the start of the stream.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Frames pushed but not yet decided (`min(frames, lag)`).
    pub fn pending(&self) -> usize {
        self.frames.min(self.lag as u64) as usize
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        (self.value.capacity() + self.voiced_probs.capacity()) * 8
            + (self.pointers.capacity() + self.path.capacity()) * 2
    }

    /// Forget the stream (as a new decoder with the same lag).
    pub fn reset(&mut self) {
        self.frames = 0;
    }

    /// Adds one frame's observation (from [`Pyin::observe`]) and returns the decision for
    /// frame `t - lag`, where `t` is this frame's index, once there is one. `scratch` (from
    /// [`Pyin::scratch`], per thread) lends the work buffers of the step. Allocation-free.
    ///
    /// # Panics
    /// When `pyin` is not the configuration the decoder was made for,
    /// `observation.len() != n_states` or `scratch` was made by tables of another size.
    pub fn push(
        &mut self,
        pyin: &Pyin,
        scratch: &mut PyinScratch,
        observation: &[f64],
        voiced_prob: f64,
    ) -> Option<PitchDecision> {
        assert_eq!(
            self.fingerprint, pyin.fingerprint,
            "pyin decoder configuration"
        );
        assert_eq!(observation.len(), self.n_states, "pyin observation length");
        let work = &mut scratch.step;
        assert!(work.fits(pyin.n_pitch_bins), "pyin scratch size");
        // log(p + tiny), reusing the last logarithm for runs of equal probabilities (the
        // unvoiced block and the empty voiced bins).
        let mut last: Option<(u64, f64)> = None;
        for (l, &p) in work.log_obs.iter_mut().zip(observation) {
            *l = match last {
                Some((bits, log)) if bits == p.to_bits() => log,
                _ => {
                    let log = (p + TINY).ln();
                    last = Some((p.to_bits(), log));
                    log
                }
            };
        }
        if self.frames == 0 {
            for (v, &l) in self.value.iter_mut().zip(&work.log_obs) {
                *v = l + pyin.log_init;
            }
        } else {
            // Back-pointers of this frame into its row of the ring (none without a lag).
            let pointers = if self.lag > 0 {
                let row = (self.frames % self.lag as u64) as usize * self.n_states;
                Some(&mut self.pointers[row..row + self.n_states])
            } else {
                None
            };
            step(&mut self.value, work, &pyin.bands, pyin.avx2, pointers);
        }
        let frame = self.frames;
        self.voiced_probs[(frame % (self.lag as u64 + 1)) as usize] = voiced_prob;
        self.frames += 1;
        if frame < self.lag as u64 {
            return None;
        }
        // Backtrack `lag` frames from the best current state.
        let mut state = first_argmax(&self.value);
        for f in (frame + 1 - self.lag as u64..=frame).rev() {
            let row = (f % self.lag as u64) as usize * self.n_states;
            state = usize::from(self.pointers[row + state]);
        }
        let decided = frame - self.lag as u64;
        Some(self.decision(pyin, state, decided))
    }

    /// Decides every pending frame by backtracking from the best final state (librosa's
    /// backtrack), calls `out` with each decision in frame order, and resets the decoder for
    /// a new stream. Allocation-free.
    pub fn finish(&mut self, pyin: &Pyin, out: &mut impl FnMut(PitchDecision)) {
        assert_eq!(
            self.fingerprint, pyin.fingerprint,
            "pyin decoder configuration"
        );
        let pending = self.pending();
        if pending > 0 {
            let last = self.frames - 1;
            let mut state = first_argmax(&self.value);
            self.path[pending - 1] = state as u16;
            for k in (0..pending - 1).rev() {
                // Frame last - (pending - 1 - k) from the pointers of the frame after it.
                let f = last - (pending - 2 - k) as u64;
                let row = (f % self.lag as u64) as usize * self.n_states;
                state = usize::from(self.pointers[row + state]);
                self.path[k] = state as u16;
            }
            let first = self.frames - pending as u64;
            for k in 0..pending {
                let decision = self.decision(pyin, usize::from(self.path[k]), first + k as u64);
                out(decision);
            }
        }
        self.reset();
    }

    /// The decision for `frame` in `state`.
    fn decision(&self, pyin: &Pyin, state: usize, frame: u64) -> PitchDecision {
        let voiced = state < pyin.n_pitch_bins;
        PitchDecision {
            f0: voiced.then(|| pyin.freqs[state]),
            voiced,
            voiced_prob: self.voiced_probs[(frame % (self.lag as u64 + 1)) as usize],
        }
    }

    /// Exact little-endian serialisation of the stream state (not the work buffers):
    /// version byte, configuration fingerprint, `n_states` (u32), `lag` (u32), `frames` (u64),
    /// then when `frames > 0` the `n_states` best-path log-probabilities (f64 bits), the
    /// `min(frames, lag) - 1` back-pointer rows still needed (u16, oldest first) and the
    /// `min(frames, lag)` pending voiced probabilities (f64 bits, oldest first).
    pub fn to_bytes(&self) -> Vec<u8> {
        let pending = self.pending();
        let rows = pending.saturating_sub(1);
        let mut bytes =
            Vec::with_capacity(25 + 8 * self.n_states + 2 * rows * self.n_states + 8 * pending);
        bytes.push(STATE_VERSION);
        bytes.extend_from_slice(&self.fingerprint.to_le_bytes());
        bytes.extend_from_slice(&(self.n_states as u32).to_le_bytes());
        bytes.extend_from_slice(&(self.lag as u32).to_le_bytes());
        bytes.extend_from_slice(&self.frames.to_le_bytes());
        if self.frames == 0 {
            return bytes;
        }
        for v in &self.value {
            bytes.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        for f in self.frames - rows as u64..self.frames {
            let row = (f % self.lag as u64) as usize * self.n_states;
            for p in &self.pointers[row..row + self.n_states] {
                bytes.extend_from_slice(&p.to_le_bytes());
            }
        }
        for f in self.frames - pending as u64..self.frames {
            let v = self.voiced_probs[(f % (self.lag as u64 + 1)) as usize];
            bytes.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        bytes
    }

    /// Restores a decoder saved by [`PyinDecoder::to_bytes`] under the same `pyin`
    /// configuration; it continues bit for bit as the saved one would have.
    pub fn from_bytes(pyin: &Pyin, bytes: &[u8]) -> Result<Self, String> {
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.take::<1>()?[0];
        if version != STATE_VERSION {
            return Err(format!(
                "pyin decoder state version {version}, expected {STATE_VERSION}"
            ));
        }
        let fingerprint = u64::from_le_bytes(reader.take()?);
        if fingerprint != pyin.fingerprint {
            return Err("pyin decoder state was saved under another pyin configuration".into());
        }
        let n_states = u32::from_le_bytes(reader.take()?) as usize;
        if n_states != pyin.n_states() {
            return Err(format!(
                "pyin decoder state has {n_states} states, the configuration {}",
                pyin.n_states()
            ));
        }
        let lag = u32::from_le_bytes(reader.take()?) as usize;
        let frames = u64::from_le_bytes(reader.take()?);
        let pending = frames.min(lag as u64) as usize;
        let rows = pending.saturating_sub(1);
        let expected = 25
            + if frames > 0 {
                8 * n_states + 2 * rows * n_states + 8 * pending
            } else {
                0
            };
        if bytes.len() != expected {
            return Err(format!(
                "pyin decoder state is {} bytes, expected {expected}",
                bytes.len()
            ));
        }
        let mut decoder = Self::new(pyin, lag);
        decoder.frames = frames;
        if frames == 0 {
            return Ok(decoder);
        }
        for v in decoder.value.iter_mut() {
            *v = f64::from_bits(u64::from_le_bytes(reader.take()?));
        }
        for f in frames - rows as u64..frames {
            let row = (f % lag as u64) as usize * n_states;
            for p in &mut decoder.pointers[row..row + n_states] {
                *p = u16::from_le_bytes(reader.take()?);
                if usize::from(*p) >= n_states {
                    return Err(format!("pyin decoder state has back-pointer {p}"));
                }
            }
        }
        for f in frames - pending as u64..frames {
            let slot = (f % (lag as u64 + 1)) as usize;
            decoder.voiced_probs[slot] = f64::from_bits(u64::from_le_bytes(reader.take()?));
        }
        Ok(decoder)
    }
}

/// Little-endian field reader for [`PyinDecoder::from_bytes`].
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.at + N;
        let field = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| "pyin decoder state is truncated".to_string())?;
        self.at = end;
        Ok(field.try_into().expect("slice of length N"))
    }
}

/// Full (offline) Viterbi over a whole signal, as `librosa.pyin`: `observations` holds
/// `n_states` probabilities per frame (frame after frame), `voiced_probs` one value per frame.
/// Keeps `frames x n_states` back-pointers (2 bytes each); meant for tests and offline tools.
pub fn decode_offline(
    pyin: &Pyin,
    observations: &[f64],
    voiced_probs: &[f64],
) -> Vec<PitchDecision> {
    let n_states = pyin.n_states();
    assert_eq!(
        observations.len(),
        voiced_probs.len() * n_states,
        "pyin observations"
    );
    let mut decoder = PyinDecoder::new(pyin, voiced_probs.len());
    let mut scratch = pyin.scratch();
    let mut decisions = Vec::with_capacity(voiced_probs.len());
    for (observation, &vp) in observations.chunks_exact(n_states).zip(voiced_probs) {
        let early = decoder.push(pyin, &mut scratch, observation, vp);
        debug_assert!(early.is_none());
    }
    decoder.finish(pyin, &mut |d| decisions.push(d));
    decisions
}
