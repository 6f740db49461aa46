//! The pYIN hidden Markov model's transitions and its Viterbi step: [`TransitionBands`], the
//! banded log-transition tables (librosa's triangular local transition within and across
//! voicing), [`StepWork`], the per-thread work buffers of a step, and [`step`], which advances
//! a stream's best-path log-probabilities by one frame and writes the back-pointers of the new
//! frame. The fixed-lag bookkeeping around it (the ring of back-pointer rows, decisions,
//! snapshots) is in `streaming`.

use super::numeric::{TINY, larger, numpy_sum, triangle};

/// The banded log-transition matrix of the HMM over `2 * n_bins` states: librosa's
/// `kron(transition_loop(2, 1 - switch_prob), transition_local(n_bins, width, "triangle"))`
/// as `log(T + tiny)`, kept only within the band of each target bin.
#[derive(Clone, Debug)]
pub(super) struct TransitionBands {
    /// Number of pitch bins; states `0..n_bins` are voiced, `n_bins..2 * n_bins` unvoiced.
    pub(super) n_bins: usize,
    /// Half-width `h` of the band: state `i` reaches `j` (within or across voicing) when
    /// `|i - j| <= h` (modulo `n_bins`).
    pub(super) half_width: usize,
    /// First predecessor bin of each target bin (`max(0, j - h)`).
    pub(super) band_lo: Vec<usize>,
    /// Number of predecessor bins of each target bin.
    pub(super) band_len: Vec<usize>,
    /// The row of [`Self::log_same`] and [`Self::log_cross`] of each target bin: bins whose
    /// bands hold the same log-transitions, bit for bit, share one (most interior bins do:
    /// 97 rows for the 602 bins of the defaults), so that the tables stay in the cache.
    row: Vec<usize>,
    /// `log(T + tiny)` for transitions within the same voicing, by row (stride `2h + 1`);
    /// the row of target bin `j` holds predecessor bins `band_lo[j]..`.
    log_same: Vec<f64>,
    /// The same across voicing.
    log_cross: Vec<f64>,
    /// Largest entry of each target bin's `log_same` band.
    pub(super) max_same: Vec<f64>,
    /// Largest entry of each target bin's `log_cross` band.
    pub(super) max_cross: Vec<f64>,
    /// `log(0 + tiny)`: every transition outside the band.
    pub(super) log_floor: f64,
}

impl TransitionBands {
    /// The bands for `n_bins` pitch bins, a triangle of `transition_width <= n_bins` bins and
    /// `switch_prob` between voiced and unvoiced.
    pub(super) fn new(n_bins: usize, transition_width: usize, switch_prob: f64) -> Self {
        let half_width = transition_width / 2;
        let stride = 2 * half_width + 1;
        let (band_lo, band_len) = bands(n_bins, half_width);
        let [log_same, log_cross] = per_target_tables(n_bins, transition_width, switch_prob);
        let log_floor = TINY.ln();
        let band_maxima = |table: &[f64]| -> Vec<f64> {
            (0..n_bins)
                .map(|j| {
                    table[j * stride..j * stride + band_len[j]]
                        .iter()
                        .fold(f64::NEG_INFINITY, |m, &x| m.max(x))
                })
                .collect()
        };
        let max_same = band_maxima(&log_same);
        let max_cross = band_maxima(&log_cross);
        // One row per distinct band (both tables, bit for bit), in order of first use.
        let mut rows = std::collections::HashMap::new();
        let (mut same_rows, mut cross_rows) = (Vec::new(), Vec::new());
        let row = (0..n_bins)
            .map(|j| {
                let band = j * stride..(j + 1) * stride;
                let key: Vec<u64> = log_same[band.clone()]
                    .iter()
                    .chain(&log_cross[band.clone()])
                    .map(|x| x.to_bits())
                    .collect();
                *rows.entry(key).or_insert_with(|| {
                    same_rows.extend_from_slice(&log_same[band.clone()]);
                    cross_rows.extend_from_slice(&log_cross[band]);
                    same_rows.len() / stride - 1
                })
            })
            .collect();
        Self {
            n_bins,
            half_width,
            band_lo,
            band_len,
            row,
            log_same: same_rows,
            log_cross: cross_rows,
            max_same,
            max_cross,
            log_floor,
        }
    }
}

/// The first predecessor bin (`max(0, j - h)`) and the number of predecessor bins of each
/// target bin `j` of a band of half-width `h`.
fn bands(n_bins: usize, half_width: usize) -> (Vec<usize>, Vec<usize>) {
    let band_lo: Vec<usize> = (0..n_bins).map(|j| j.saturating_sub(half_width)).collect();
    let band_len = (0..n_bins)
        .map(|j| (j + half_width).min(n_bins - 1) + 1 - band_lo[j])
        .collect();
    (band_lo, band_len)
}

/// The log-transitions within and across voicing into every target bin `j` (a row of
/// `2h + 1` entries, predecessor bins `max(0, j - h)..`, `log(tiny)` past the band), one row
/// per target: librosa's `transition_local(n_bins, width, window="triangle", wrap=False)`
/// row by row as librosa builds it, then `kron(transition_loop(2, 1 - switch_prob), ·)` and
/// `log(· + tiny)`.
pub(super) fn per_target_tables(
    n_bins: usize,
    transition_width: usize,
    switch_prob: f64,
) -> [Vec<f64>; 2] {
    let half_width = transition_width / 2;
    let stride = 2 * half_width + 1;
    let (band_lo, _) = bands(n_bins, half_width);
    let window = triangle(transition_width);
    let lpad = (n_bins - transition_width) / 2;
    let p_same = 1.0 - switch_prob;
    let p_cross = (1.0 - p_same) / 1.0; // transition_loop's (1 - p) / (n_states - 1)
    let mut log_same = vec![TINY.ln(); n_bins * stride];
    let mut log_cross = vec![TINY.ln(); n_bins * stride];
    let mut row = vec![0.0; n_bins];
    for i in 0..n_bins {
        let shift = (n_bins / 2 + i + 1) % n_bins;
        let keep_lo = i.saturating_sub(half_width);
        let keep_hi = (i + half_width + 1).min(n_bins);
        for (j, r) in row.iter_mut().enumerate() {
            // np.roll(pad_center(window, n_bins), shift)[j], knocked out off the band.
            let p = (j + n_bins - shift) % n_bins;
            *r = if (keep_lo..keep_hi).contains(&j) && (lpad..lpad + transition_width).contains(&p)
            {
                window[p - lpad]
            } else {
                0.0
            };
        }
        let total = numpy_sum(&row);
        for j in keep_lo..keep_hi {
            let t = row[j] / total;
            let at = j * stride + (i - band_lo[j]);
            log_same[at] = (p_same * t + TINY).ln();
            log_cross[at] = (p_cross * t + TINY).ln();
        }
    }
    [log_same, log_cross]
}

impl TransitionBands {
    /// `log(T + tiny)` into target bin `j` from the band's bins `band_lo[j]..` of the same
    /// voicing.
    #[inline(always)]
    pub(super) fn same(&self, j: usize) -> &[f64] {
        let at = self.row[j] * (2 * self.half_width + 1);
        &self.log_same[at..at + self.band_len[j]]
    }

    /// The same from the other voicing.
    #[inline(always)]
    pub(super) fn cross(&self, j: usize) -> &[f64] {
        let at = self.row[j] * (2 * self.half_width + 1);
        &self.log_cross[at..at + self.band_len[j]]
    }
}

/// Per-thread work buffers of [`step`], allocated once by [`StepWork::new`]; a stream's own
/// state is only its best-path log-probabilities (and its back-pointers, in `streaming`).
#[derive(Clone, Debug, Default)]
pub(super) struct StepWork {
    /// The next frame's best-path log-probabilities, swapped with the stream's after a step.
    next: Vec<f64>,
    /// `log(p + tiny)` of the new frame's observation probabilities, filled before a step.
    pub(super) log_obs: Vec<f64>,
    /// An upper bound of the largest value in the band of each target (voiced block, then
    /// unvoiced).
    band_top: Vec<f64>,
    /// Work buffers of [`window_max`].
    to_block_end: Vec<f64>,
    from_block_start: Vec<f64>,
}

impl StepWork {
    /// Buffers for `n_bins` pitch bins (`2 * n_bins` states).
    pub(super) fn new(n_bins: usize) -> Self {
        let n_states = 2 * n_bins;
        Self {
            next: vec![0.0; n_states],
            log_obs: vec![0.0; n_states],
            band_top: vec![0.0; n_states],
            to_block_end: vec![0.0; n_bins],
            from_block_start: vec![0.0; n_bins],
        }
    }

    /// Whether the buffers are sized for `n_bins` pitch bins.
    pub(super) fn fits(&self, n_bins: usize) -> bool {
        self.next.len() == 2 * n_bins && self.to_block_end.len() == n_bins
    }
}

/// One Viterbi step (see [`step_portable`]), compiled for AVX2 when `use_avx2`. `value` holds
/// the best-path log-probability of every state after the last frame and is advanced to the
/// new frame, whose `log(p + tiny)` observations are in `work.log_obs`; `pointers`, when given,
/// receives the back-pointer of every state of the new frame.
pub(super) fn step(
    value: &mut Vec<f64>,
    work: &mut StepWork,
    bands: &TransitionBands,
    use_avx2: bool,
    pointers: Option<&mut [u16]>,
) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2 {
        // SAFETY: `use_avx2` is only true when the CPU reports AVX2 (`avx2_available`).
        unsafe { step_avx2(value, work, bands, pointers) };
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = use_avx2;
    step_portable(value, work, bands, pointers);
}

/// [`step_portable`] compiled with AVX2 enabled. No FMA (LLVM does not fuse without
/// fast-math) and a fixed order of operations: bit-identical to the portable build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn step_avx2(
    value: &mut Vec<f64>,
    work: &mut StepWork,
    bands: &TransitionBands,
    pointers: Option<&mut [u16]>,
) {
    step_portable(value, work, bands, pointers);
}

/// One Viterbi step: `value := log_obs + max_k (value[k] + log_trans[k, ·])`, storing the
/// back-pointers (numpy's first argmax) of the new frame.
///
/// For target bin `j` (voiced and unvoiced together), the predecessors are the voiced and the
/// unvoiced bins of the band around `j` (log-transition tables `log_same` / `log_cross`, see
/// [`scan_block`]), and every other state at the constant `log(tiny)`. Of those, only the
/// first argmax `g` of `value + log(tiny)` over all states can win: when `g` lies outside the
/// band it is the best of them, and when it lies inside, its own band score is at least its
/// floor score (rounding is monotone) with a lower index than any other state's equal floor
/// score. A block's band is skipped when an upper bound of its scores (its largest value plus
/// its largest log-transition) is below the best candidate found; the bound holds in floating
/// point, so skipping is exact.
#[inline(always)]
fn step_portable(
    value: &mut Vec<f64>,
    work: &mut StepWork,
    bands: &TransitionBands,
    mut pointers: Option<&mut [u16]>,
) {
    let n = bands.n_bins;
    let stride = 2 * bands.half_width + 1;
    let StepWork {
        next,
        log_obs,
        band_top,
        to_block_end,
        from_block_start,
    } = work;
    let mut floor = Best::NONE;
    for (k, &v) in value.iter().enumerate() {
        let s = v + bands.log_floor;
        if s > floor.score {
            floor = Best { score: s, state: k };
        }
    }
    // The bin of `g` (`n`: none), to test whether it lies in a band.
    let floor_bin = if floor.state == usize::MAX {
        n
    } else {
        floor.state % n
    };
    for block in 0..2 {
        let states = block * n..block * n + n;
        window_max(
            &value[states.clone()],
            &bands.band_lo,
            &bands.band_len,
            stride,
            [to_block_end, from_block_start],
            &mut band_top[states],
        );
    }
    for j in 0..n {
        let lo = bands.band_lo[j];
        let len = bands.band_len[j];
        let tables = BandTables {
            same: bands.same(j),
            cross: bands.cross(j),
            max_same: bands.max_same[j],
            max_cross: bands.max_cross[j],
        };
        let (mut voiced, mut unvoiced) = (Best::NONE, Best::NONE);
        // The best state outside the band first: its score often shows that a block's band
        // cannot win.
        if floor_bin < n && !(lo..lo + len).contains(&floor_bin) {
            voiced = floor;
            unvoiced = floor;
        }
        let from_voiced = &value[lo..lo + len];
        let from_unvoiced = &value[n + lo..n + lo + len];
        let (top_v, top_u) = (band_top[j], band_top[n + j]);
        // The more promising block first, so that the other one is often skipped.
        if top_v >= top_u {
            scan_block(from_voiced, lo, top_v, &tables, &mut voiced, &mut unvoiced);
            scan_block(
                from_unvoiced,
                n + lo,
                top_u,
                &tables,
                &mut unvoiced,
                &mut voiced,
            );
        } else {
            scan_block(
                from_unvoiced,
                n + lo,
                top_u,
                &tables,
                &mut unvoiced,
                &mut voiced,
            );
            scan_block(from_voiced, lo, top_v, &tables, &mut voiced, &mut unvoiced);
        }
        next[j] = log_obs[j] + voiced.score;
        next[n + j] = log_obs[n + j] + unvoiced.score;
        if let Some(row) = pointers.as_deref_mut() {
            row[j] = voiced.state as u16;
            row[n + j] = unvoiced.state as u16;
        }
    }
    std::mem::swap(value, next);
}

/// The log-transitions into one target bin from the band of one block: `same` towards the
/// target of the block's voicing, `cross` towards the other, and their largest entries.
struct BandTables<'a> {
    same: &'a [f64],
    cross: &'a [f64],
    max_same: f64,
    max_cross: f64,
}

/// Offers the band of one block (`values`, states `first..`, largest value at most `top`) to
/// `own`, the target of the same voicing (through `same`), and `other`, the target of the
/// other voicing (through `cross`), each unless an upper bound of the band's scores (`top`
/// plus the largest log-transition) is below its best candidate so far. Rounding is monotone,
/// so the bound holds in floating point and skipping is exact.
#[inline(always)]
fn scan_block(
    values: &[f64],
    first: usize,
    top: f64,
    tables: &BandTables<'_>,
    own: &mut Best,
    other: &mut Best,
) {
    for (best, trans, max) in [
        (own, tables.same, tables.max_same),
        (other, tables.cross, tables.max_cross),
    ] {
        best.offer_band(values, trans, first, top + max);
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

    /// Offers the best of `values[r] + trans[r]` (state `first + r`), unless `bound` (an upper
    /// bound of those sums) shows that it cannot win.
    #[inline(always)]
    fn offer_band(&mut self, values: &[f64], trans: &[f64], first: usize, bound: f64) {
        if bound < self.score {
            return;
        }
        let top = band_max(values, trans);
        if top < self.score {
            return;
        }
        self.offer(top, first + first_equal(values, trans, top));
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

/// An upper bound of `max(values[lo[j]..lo[j] + len[j]])` for windows of at most `width`
/// entries (van Herk / Gil-Werman, branch-free): with blocks of `width` entries, the maximum from
/// the window start to the end of its block and from the start of the block of the window end
/// to that end. Exact when the window spans two blocks or starts a block; otherwise it may
/// include a few entries after the window, which keeps it an upper bound.
#[inline(always)]
fn window_max(
    values: &[f64],
    lo: &[usize],
    len: &[usize],
    width: usize,
    [to_end, from_start]: [&mut [f64]; 2],
    out: &mut [f64],
) {
    for ((v, e), s) in values
        .chunks(width)
        .zip(to_end.chunks_mut(width))
        .zip(from_start.chunks_mut(width))
    {
        let mut m = f64::NEG_INFINITY;
        for (&x, y) in v.iter().zip(s.iter_mut()) {
            m = if x > m { x } else { m };
            *y = m;
        }
        let mut m = f64::NEG_INFINITY;
        for (&x, y) in v.iter().zip(e.iter_mut()).rev() {
            m = if x > m { x } else { m };
            *y = m;
        }
    }
    for ((o, &lo), &len) in out.iter_mut().zip(lo).zip(len) {
        let (a, b) = (to_end[lo], from_start[lo + len - 1]);
        *o = if a > b { a } else { b };
    }
}
