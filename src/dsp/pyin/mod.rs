//! Probabilistic YIN (pYIN) fundamental frequency tracking, following `librosa.pyin` (0.11)
//! parameter for parameter, split into a per-frame observation step and a streaming decoder.
//!
//! # Algorithm (as librosa 0.11)
//! Per frame ([`Pyin::observe`]):
//! 1. The cumulative mean normalised difference `cmnd(tau)` for `tau` in
//!    `min_period = floor(sr / fmax) ..= max_period = min(ceil(sr / fmin), frame_length - 1)`,
//!    from the linear autocorrelation of the whole frame (computed by FFT):
//!    `d(tau) = 2 (acf(0) - acf(tau)) - sum_{m < tau} x(m)^2`, except `d(1) = 2 (acf(0) - acf(1))`
//!    (librosa overwrites the first cumulative energy with 0 before it reads it), and
//!    `cmnd(tau) = d(tau) / (mean(d(1..=tau)) + tiny)`. (librosa 0.11 deprecated `win_length`;
//!    the difference uses the full frame.)
//! 2. Troughs: local minima of `cmnd` (strictly below the left neighbour, not above the right
//!    one; the first value is a trough when below the second, the last when below the one
//!    before it).
//! 3. A prior over `n_thresholds` thresholds `linspace(0, 1, n + 1)[1..]`: the probability mass
//!    of a beta distribution between consecutive thresholds. For each threshold, the troughs
//!    below it share its mass by a Boltzmann distribution over their rank (smaller periods
//!    first); when no trough is below a threshold, `no_trough_prob` times its mass goes to the
//!    global minimum trough.
//! 4. Each trough with non-zero probability becomes a candidate `f0 = sr / (period + parabolic
//!    shift)` and lands in pitch bin `round(12 * bins_per_semitone * log2(f0 / fmin))` (rounded
//!    half to even, clipped to `0..=n_pitch_bins`; a candidate clipped to `n_pitch_bins` itself
//!    is dropped, as in librosa, where it lands in the first unvoiced row, which is then
//!    overwritten; when two candidates share a bin the one with the longer period wins, as
//!    numpy's fancy assignment). `voiced_prob` is the sum of the voiced bins clipped to
//!    `[0, 1]`; each of the `n_pitch_bins` unvoiced states gets `(1 - voiced_prob) / n_pitch_bins`.
//!
//! Decoding ([`PyinDecoder`]): a hidden Markov model over `2 * n_pitch_bins` states (voiced
//! pitch bins, then unvoiced copies). The transition matrix is librosa's
//! `kron(transition_loop(2, 1 - switch_prob), transition_local(n_pitch_bins, width, "triangle"))`
//! with `width = round(max_transition_rate * 12 * hop / sr) * bins_per_semitone + 1`, the initial
//! distribution is uniform, and decoding is `librosa.sequence.viterbi` in the log domain with
//! `log(p + tiny)` for every probability (so a transition outside the band costs
//! `log(tiny) ≈ -708.4`, not minus infinity; this module keeps that, exactly, while only
//! visiting the band explicitly). Ties take the first (lowest) state, as numpy's `argmax`.
//! The log-transitions are bit-identical to librosa's (numpy's pairwise row sums included), and
//! nothing is normalised, as in librosa.
//!
//! Streaming: [`PyinDecoder`] is a fixed-lag Viterbi. Frame `t` is decided once frame `t + lag`
//! has been pushed, by backtracking from the best state at `t + lag`; at the end of a stream
//! [`PyinDecoder::finish`] backtracks all pending frames from the best final state, which is
//! exactly librosa's full backtrack when `lag` is at least the number of frames
//! ([`decode_offline`]). A lag of about 20 frames agrees with offline decoding on ~99 % of
//! frames even on hard material (noise, weak tones), and on nearly all of clean speech.
//!
//! ```ignore
//! let pyin = Pyin::new(&PyinParams::default(), 16000.0, 512, 160)?; // shared, immutable
//! let mut scratch = pyin.scratch(); // per thread
//! let mut decoder = PyinDecoder::new(&pyin, 20); // per stream
//! let mut observation = vec![0.0; pyin.n_states()];
//! for frame in frames {
//!     let voiced_prob = pyin.observe(frame, &mut scratch, &mut observation);
//!     if let Some(decision) = decoder.push(&pyin, &mut scratch, &observation, voiced_prob) {
//!         // decision for the frame 20 frames back
//!     }
//! }
//! decoder.finish(&pyin, &mut |decision| { /* the last 20 frames */ });
//! ```
//!
//! Every computation is in `f64`. Nothing is allocated per frame: [`PyinScratch`] (per thread:
//! the observation's buffers and the Viterbi step's work rows) and the decoder's state (per
//! stream: best-path values, back-pointer ring) are allocated once.
//!
//! # Layout
//! Each file holds one concern and depends only on the ones listed before it (this file holds
//! no items, only the re-exports):
//! - `numeric`: numpy / scipy helpers reproduced bit for bit (pairwise sum, argmax, beta CDF,
//!   triangle window, `tiny`) and the fingerprint hash.
//! - `params`: [`PyinParams`] and their validation.
//! - `transitions`: the banded log-transition tables (one row per distinct band) and the
//!   bounds the step relies on.
//! - `decoder`: the Viterbi step with its back-pointers and its per-thread work buffers.
//! - `tables`: [`Pyin`], the immutable tables of one configuration.
//! - `observation`: [`PyinScratch`] and [`Pyin::observe`], the per-frame probabilities.
//! - `streaming`: [`PyinDecoder`], the fixed-lag state of a stream and its snapshots,
//!   [`PitchDecision`] and [`decode_offline`].

mod decoder;
mod numeric;
mod observation;
mod params;
mod streaming;
mod tables;
#[cfg(test)]
mod tests;
mod transitions;

pub use observation::PyinScratch;
pub use params::PyinParams;
pub use streaming::{PitchDecision, PyinDecoder, decode_offline};
pub use tables::Pyin;
