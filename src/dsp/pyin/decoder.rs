//! pYIN's Viterbi step: [`StepWork`], the per-thread work buffers of a step, and [`step`],
//! which advances a stream's best-path log-probabilities by one frame over the banded
//! transitions (`transitions`) and writes the back-pointers of the new frame. The fixed-lag
//! bookkeeping around it (the ring of back-pointer rows, decisions, snapshots) is in
//! `streaming`.

use super::numeric::larger;
use super::transitions::TransitionBands;
use crate::dsp::kernels::{Avx2, Kernels, Portable, WINDOW};

/// Per-thread work buffers of [`step`], allocated once by [`StepWork::new`]; a stream's own
/// state is only its best-path log-probabilities (and its back-pointers, in `streaming`).
#[derive(Clone, Debug, Default)]
pub(super) struct StepWork {
    /// The next frame's best-path log-probabilities, swapped with the stream's after a step.
    next: Vec<f64>,
    /// `log(p + tiny)` of the new frame's observation probabilities, filled before a step.
    pub(super) log_obs: Vec<f64>,
    /// The largest value in the band of each target (voiced block, then unvoiced).
    band_top: Vec<f64>,
    /// Work buffers of [`band_tops`].
    windows: Vec<f64>,
    doubled: Vec<f64>,
}

impl StepWork {
    /// Buffers for `n_bins` pitch bins (`2 * n_bins` states).
    pub(super) fn new(n_bins: usize) -> Self {
        let n_states = 2 * n_bins;
        Self {
            next: vec![0.0; n_states],
            log_obs: vec![0.0; n_states],
            band_top: vec![0.0; n_states],
            windows: vec![0.0; n_bins],
            doubled: vec![0.0; n_bins],
        }
    }

    /// Whether the buffers are sized for `n_bins` pitch bins.
    pub(super) fn fits(&self, n_bins: usize) -> bool {
        self.next.len() == 2 * n_bins && self.windows.len() == n_bins
    }
}

/// One Viterbi step (see [`step_portable`]), with the AVX2 kernels and compiled for AVX2 when
/// `avx2` is given. `value` holds the best-path log-probability of every state after the last
/// frame and is advanced to the new frame, whose `log(p + tiny)` observations are in
/// `work.log_obs`; `pointers`, when given, receives the back-pointer of every state of the new
/// frame.
pub(super) fn step(
    value: &mut Vec<f64>,
    work: &mut StepWork,
    bands: &TransitionBands,
    avx2: Option<Avx2>,
    pointers: Option<&mut [u16]>,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(kernels) = avx2 {
        // SAFETY: an `Avx2` exists only on a CPU with AVX2 (`Avx2::detect`).
        unsafe { step_avx2(kernels, value, work, bands, pointers) };
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = avx2;
    step_portable(Portable, value, work, bands, pointers);
}

/// [`step_portable`] with the AVX2 kernels, compiled with AVX2 enabled. No FMA (LLVM does not
/// fuse without fast-math) and a fixed order of operations: bit-identical to the portable
/// build.
///
/// # Safety
/// The CPU must have AVX2: the caller holds the `Avx2` that `Avx2::detect` made.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn step_avx2(
    kernels: Avx2,
    value: &mut Vec<f64>,
    work: &mut StepWork,
    bands: &TransitionBands,
    pointers: Option<&mut [u16]>,
) {
    step_portable(kernels, value, work, bands, pointers);
}

/// One Viterbi step: `value := log_obs + max_k (value[k] + log_trans[k, ·])`, storing the
/// back-pointers (numpy's first argmax) of the new frame.
///
/// For target bin `j` (voiced and unvoiced together), the predecessors are the voiced and the
/// unvoiced bins of the band around `j` (log-transition tables `log_same` / `log_cross`, see
/// [`Frame::decide`]), and every other state at the constant `log(tiny)`. Of those, only the
/// first argmax `g` of `value + log(tiny)` over all states can win: when `g` lies outside the
/// band it is the best of them, and when it lies inside, its own band score is at least its
/// floor score (rounding is monotone) with a lower index than any other state's equal floor
/// score. A block's band is skipped when an upper bound of its scores (its largest value plus
/// its largest log-transition) is below the best candidate found; the bound holds in floating
/// point, so skipping is exact.
///
/// The first argmax of a band (one block of predecessors, one table) is monotone in the
/// target: at least that of any lower target, at most that of any higher one. For targets
/// `j, j + 1` and the first argmax `a` of `j`: every `i < a` in the band of `j + 1` is in the
/// band of `j`, where its rounded score is below `a`'s, so its exact score is too (rounding is
/// monotone). For `j + 1` each exact score gains `T[j + 1][i] - T[j][i]`, and `i` gains less
/// than `a` by at least the tables' concavity (`TransitionBands::concavity`), so `a`'s exact
/// score exceeds `i`'s by more than that. When the concavity exceeds a unit in the last place
/// of every score (the frame's test on `deepest`; always, unless the values reach about 10^12,
/// centuries of audio), the rounded scores keep that order strictly, and no `i < a` is the
/// first argmax of `j + 1`. So targets are decided in groups of eight: the end of the group
/// from its whole bands, then each target halfway between two decided ones, searching only
/// between their first argmaxes: a few bins, taken [`WINDOW`] at a time without a branch
/// ([`Kernels::window_argmax`]).
#[inline(always)]
fn step_portable<K: Kernels>(
    kernels: K,
    value: &mut Vec<f64>,
    work: &mut StepWork,
    bands: &TransitionBands,
    pointers: Option<&mut [u16]>,
) {
    let n = bands.n_bins;
    let StepWork {
        next,
        log_obs,
        band_top,
        windows,
        doubled,
    } = work;
    // The first argmax of the floor scores (`NONE` when every score is -inf).
    let floor_top = band_max(value, &bands.floor_row);
    let floor = if floor_top > f64::NEG_INFINITY {
        Best {
            score: floor_top,
            state: first_equal(value, &bands.floor_row, floor_top),
        }
    } else {
        Best::NONE
    };
    // The bin of `g` (`n`: none), to test whether it lies in a band.
    let floor_bin = if floor.state == usize::MAX {
        n
    } else {
        floor.state % n
    };
    for block in 0..2 {
        let states = block * n..block * n + n;
        band_tops(
            &value[states.clone()],
            bands,
            [windows, doubled],
            &mut band_top[states],
        );
    }
    // Every score is a value plus a log-transition, so of magnitude below `deepest`.
    let deepest = largest_magnitude(value) + bands.band_magnitude;
    let frame = Frame {
        kernels,
        value,
        bands,
        band_top,
        floor,
        floor_bin,
    };
    let mut out = Decided {
        next,
        log_obs,
        pointers,
    };
    if bands.concavity > deepest * (2.0 * f64::EPSILON) {
        // The first argmax is monotone: in groups of eight, the end, then the middle between
        // the ends, then the two between those, then the four between those.
        let mut at_start = frame.decide(0, UNKNOWN, UNKNOWN, &mut out);
        let mut start = 0;
        while start + 8 < n {
            let end = start + 8;
            let at_end = frame.decide(end, UNKNOWN, UNKNOWN, &mut out);
            let at_4 = frame.decide(start + 4, at_start, at_end, &mut out);
            let at_2 = frame.decide(start + 2, at_start, at_4, &mut out);
            let at_6 = frame.decide(start + 6, at_4, at_end, &mut out);
            frame.decide(start + 1, at_start, at_2, &mut out);
            frame.decide(start + 3, at_2, at_4, &mut out);
            frame.decide(start + 5, at_4, at_6, &mut out);
            frame.decide(start + 7, at_6, at_end, &mut out);
            (start, at_start) = (end, at_end);
        }
        for j in start + 1..n {
            at_start = frame.decide(j, at_start, UNKNOWN, &mut out);
        }
    } else {
        for j in 0..n {
            frame.decide(j, UNKNOWN, UNKNOWN, &mut out);
        }
    }
    std::mem::swap(value, next);
}

/// The first argmax (bin) of a band for each of the four problems (block of the
/// predecessors, table), `u32::MAX` when it is not known.
type Argmaxes = [u32; 4];

/// No first argmax known.
const UNKNOWN: Argmaxes = [u32::MAX; 4];

/// What a step reads for every target.
struct Frame<'a, K> {
    /// The kernels of the band searches.
    kernels: K,
    /// Best-path log-probabilities after the last frame.
    value: &'a [f64],
    bands: &'a TransitionBands,
    /// The largest value in each target's band, voiced block then unvoiced.
    band_top: &'a [f64],
    /// The first argmax of `value + log(tiny)` and its bin (`n_bins`: none).
    floor: Best,
    floor_bin: usize,
}

/// What a step writes for every target.
struct Decided<'a> {
    /// The new frame's best-path log-probabilities.
    next: &'a mut [f64],
    /// `log(p + tiny)` of the new frame's observations, added to each target's best score.
    log_obs: &'a [f64],
    /// The new frame's back-pointers, when kept.
    pointers: Option<&'a mut [u16]>,
}

impl<K: Kernels> Frame<'_, K> {
    /// Decides target bin `j`, voiced and unvoiced, into `out`, and returns the first argmax
    /// of each of its bands that was computed. `left` and `right` are those of decided
    /// targets below and above `j` (or [`UNKNOWN`]), which bound `j`'s when the first argmax
    /// is monotone.
    #[inline(always)]
    fn decide(&self, j: usize, left: Argmaxes, right: Argmaxes, out: &mut Decided<'_>) -> Argmaxes {
        let bands = self.bands;
        let n = bands.n_bins;
        let lo = bands.band_lo[j];
        let len = bands.band_len[j];
        let (same, cross) = (bands.same(j), bands.cross(j));
        let (mut voiced, mut unvoiced) = (Best::NONE, Best::NONE);
        // The best state outside the band first: its score often shows that a block's band
        // cannot win.
        if self.floor_bin < n && !(lo..lo + len).contains(&self.floor_bin) {
            voiced = self.floor;
            unvoiced = self.floor;
        }
        let from_voiced = &self.value[lo..lo + len];
        let from_unvoiced = &self.value[n + lo..n + lo + len];
        let (top_v, top_u) = (self.band_top[j], self.band_top[n + j]);
        let (max_same, max_cross) = (bands.max_same[j], bands.max_cross[j]);
        let band = |p: usize| Hints {
            lo,
            left: left[p],
            right: right[p],
        };
        let tables = Tables {
            same,
            cross,
            max_same,
            max_cross,
        };
        let voiced_band = BlockBand {
            values: from_voiced,
            first: lo,
            top: top_v,
        };
        let unvoiced_band = BlockBand {
            values: from_unvoiced,
            first: n + lo,
            top: top_u,
        };
        let mut found = UNKNOWN;
        let k = self.kernels;
        // The more promising block first, so that the other one is often skipped.
        if top_v >= top_u {
            [found[0], found[1]] =
                voiced_band.offer(k, &tables, &mut voiced, &mut unvoiced, [band(0), band(1)]);
            [found[2], found[3]] =
                unvoiced_band.offer(k, &tables, &mut unvoiced, &mut voiced, [band(2), band(3)]);
        } else {
            [found[2], found[3]] =
                unvoiced_band.offer(k, &tables, &mut unvoiced, &mut voiced, [band(2), band(3)]);
            [found[0], found[1]] =
                voiced_band.offer(k, &tables, &mut voiced, &mut unvoiced, [band(0), band(1)]);
        }
        out.next[j] = out.log_obs[j] + voiced.score;
        out.next[n + j] = out.log_obs[n + j] + unvoiced.score;
        if let Some(row) = out.pointers.as_deref_mut() {
            row[j] = voiced.state as u16;
            row[n + j] = unvoiced.state as u16;
        }
        found
    }
}

/// The log-transitions into one target bin from its band: `same` from the predecessors of
/// the target's voicing, `cross` from the other, and their largest entries.
struct Tables<'a> {
    same: &'a [f64],
    cross: &'a [f64],
    max_same: f64,
    max_cross: f64,
}

/// The band of one block of predecessors around a target bin: its values, the state of the
/// first, and an upper bound of the values.
struct BlockBand<'a> {
    values: &'a [f64],
    first: usize,
    top: f64,
}

impl BlockBand<'_> {
    /// Offers the band to `own`, the target of the block's voicing (through `same`), and to
    /// `other`, the target of the other voicing (through `cross`); returns the first argmax
    /// (bin) found for each (`u32::MAX`: none), searched where `hints` say.
    #[inline(always)]
    fn offer<K: Kernels>(
        &self,
        kernels: K,
        tables: &Tables<'_>,
        own: &mut Best,
        other: &mut Best,
        [same_hints, cross_hints]: [Hints; 2],
    ) -> [u32; 2] {
        let (values, first, top) = (self.values, self.first, self.top);
        [
            own.offer_band(
                kernels,
                values,
                tables.same,
                first,
                top + tables.max_same,
                same_hints,
            ),
            other.offer_band(
                kernels,
                values,
                tables.cross,
                first,
                top + tables.max_cross,
                cross_hints,
            ),
        ]
    }
}

/// Where a band starts (`lo`, its first bin) and the first argmaxes (bins) of the same
/// problem for a decided target below (`left`) and above (`right`), `u32::MAX` when unknown.
#[derive(Clone, Copy)]
struct Hints {
    lo: usize,
    left: u32,
    right: u32,
}

impl Hints {
    /// The offsets `from..=to` in a band of `len` where its first argmax lies.
    #[inline(always)]
    fn range(self, len: usize) -> (usize, usize) {
        let from = if self.left == u32::MAX {
            0
        } else {
            (self.left as usize).saturating_sub(self.lo)
        };
        let to = if self.right == u32::MAX {
            len - 1
        } else {
            (self.right as usize).saturating_sub(self.lo).min(len - 1)
        };
        if from <= to { (from, to) } else { (0, len - 1) }
    }
}

/// Best predecessor so far: numpy's first argmax, i.e. the highest score and, among equal
/// scores, the lowest state (so candidates may be offered in any order).
#[derive(Clone, Copy)]
struct Best {
    score: f64,
    state: usize,
}

impl Best {
    /// No candidate yet.
    const NONE: Self = Self {
        score: f64::NEG_INFINITY,
        state: usize::MAX,
    };

    #[inline(always)]
    fn offer(&mut self, score: f64, state: usize) {
        if score > self.score || (score == self.score && state < self.state) {
            self.score = score;
            self.state = state;
        }
    }

    /// Offers the best of `values[r] + trans[r]` (state `first + r`), unless `bound` (an
    /// upper bound of those sums) shows that it cannot win; the first argmax lies in
    /// `hints.range`. Returns its bin when it was found (`u32::MAX` when not).
    #[inline(always)]
    fn offer_band<K: Kernels>(
        &mut self,
        kernels: K,
        values: &[f64],
        trans: &[f64],
        first: usize,
        bound: f64,
        hints: Hints,
    ) -> u32 {
        if bound < self.score {
            return u32::MAX;
        }
        let (from, to) = hints.range(values.len());
        let (top, r) = if to - from < WINDOW && values.len() >= WINDOW {
            kernels.window_argmax(values, trans, from, to)
        } else {
            let (values, trans) = (&values[from..=to], &trans[from..=to]);
            let top = band_max(values, trans);
            if top < self.score {
                return u32::MAX;
            }
            (top, from + first_equal(values, trans, top))
        };
        self.offer(top, first + r);
        (hints.lo + r) as u32
    }
}

/// `max_r (values[r] + trans[r])`, in four independent lanes (vectorisable).
#[inline(always)]
fn band_max(values: &[f64], trans: &[f64]) -> f64 {
    let mut lanes = [f64::NEG_INFINITY; 4];
    let mut v4 = values.chunks_exact(4);
    let mut t4 = trans.chunks_exact(4);
    for (v, t) in (&mut v4).zip(&mut t4) {
        for lane in 0..4 {
            let s = v[lane] + t[lane];
            lanes[lane] = if s > lanes[lane] { s } else { lanes[lane] };
        }
    }
    // A lane only ever takes a sum larger than it, so no lane is NaN and `larger` is `max`
    // (`f64::max` also tests for NaN, in the chain every band waits on).
    let mut top = larger(larger(lanes[0], lanes[1]), larger(lanes[2], lanes[3]));
    for (&v, &t) in v4.remainder().iter().zip(t4.remainder()) {
        let s = v + t;
        top = if s > top { s } else { top };
    }
    top
}

/// The first `r` with `values[r] + trans[r] == top` (which must exist), testing four at a time.
#[inline(always)]
fn first_equal(values: &[f64], trans: &[f64], top: f64) -> usize {
    let mut v4 = values.chunks_exact(4);
    let mut t4 = trans.chunks_exact(4);
    let mut base = 0;
    for (v, t) in (&mut v4).zip(&mut t4) {
        let hits = u32::from(v[0] + t[0] == top)
            | u32::from(v[1] + t[1] == top) << 1
            | u32::from(v[2] + t[2] == top) << 2
            | u32::from(v[3] + t[3] == top) << 3;
        if hits != 0 {
            return base + hits.trailing_zeros() as usize;
        }
        base += 4;
    }
    let rest = v4.remainder().iter().zip(t4.remainder());
    base + rest.take_while(|&(&v, &t)| v + t != top).count()
}

/// The largest `|v|` of `values` (`0` when empty), in four independent lanes (vectorisable).
#[inline(always)]
fn largest_magnitude(values: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 4];
    let mut chunks = values.chunks_exact(4);
    for chunk in &mut chunks {
        for lane in 0..4 {
            lanes[lane] = larger(chunk[lane].abs(), lanes[lane]);
        }
    }
    let top = larger(larger(lanes[0], lanes[1]), larger(lanes[2], lanes[3]));
    chunks
        .remainder()
        .iter()
        .fold(top, |m, &v| larger(v.abs(), m))
}

/// The largest value of each target's band of one block, `values[lo[j]..lo[j] + len[j]]`
/// (`values`: the block's `n_bins` values; `lo`, `len`: the bands' `band_lo` and `band_len`).
/// The clipped bands at the edges (targets outside `full_bands`: from the first value, or to
/// the last) as running maxima. The bands of `width = 2h + 1` values (targets `full_bands`,
/// band `j - h..`) from window maxima doubled in place (`windows[i]` the largest of
/// `values[i..i + 2^k]`, one vectorisable pass per doubling), each band the larger of two
/// overlapping windows.
#[inline(always)]
pub(super) fn band_tops(
    values: &[f64],
    bands: &TransitionBands,
    [windows, doubled]: [&mut [f64]; 2],
    out: &mut [f64],
) {
    let (lo, len, full) = (&bands.band_lo, &bands.band_len, bands.full_bands.clone());
    let width = 2 * bands.half_width + 1;
    let n = values.len();
    let (mut top, mut seen) = (f64::NEG_INFINITY, 0);
    for j in 0..full.start {
        debug_assert_eq!(lo[j], 0);
        let end = lo[j] + len[j];
        top = values[seen..end].iter().fold(top, |m, &x| larger(x, m));
        (out[j], seen) = (top, end);
    }
    let (mut top, mut seen) = (f64::NEG_INFINITY, n);
    for j in (full.end..n).rev() {
        debug_assert_eq!(lo[j] + len[j], n);
        top = values[lo[j]..seen].iter().fold(top, |m, &x| larger(x, m));
        (out[j], seen) = (top, lo[j]);
    }
    if full.is_empty() {
        return;
    }
    let (mut windows, mut doubled) = (windows, doubled);
    windows.copy_from_slice(values);
    let mut span = 1;
    while 2 * span <= width {
        for ((d, &a), &b) in doubled[..n - span]
            .iter_mut()
            .zip(&windows[..n - span])
            .zip(&windows[span..])
        {
            *d = larger(a, b);
        }
        // The last windows end at the last value: they stay as they are.
        doubled[n - span..].copy_from_slice(&windows[n - span..]);
        std::mem::swap(&mut windows, &mut doubled);
        span *= 2;
    }
    // Band `a..a + width` is covered by the windows at `a` and at `a + width - span`.
    let first = full.start - width / 2;
    let count = full.len();
    for ((o, &a), &b) in out[full]
        .iter_mut()
        .zip(&windows[first..first + count])
        .zip(&windows[first + width - span..first + width - span + count])
    {
        *o = larger(a, b);
    }
}
