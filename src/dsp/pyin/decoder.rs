//! The pYIN hidden Markov model's transitions and its Viterbi step: [`TransitionBands`], the
//! banded log-transition tables (librosa's triangular local transition within and across
//! voicing), and [`Viterbi`], the best-path log-probabilities and the work buffers of one step,
//! which writes the back-pointers of the new frame. The fixed-lag bookkeeping around it (the
//! ring of back-pointer rows, decisions, snapshots) is in `streaming`.

use super::numeric::{TINY, numpy_sum, triangle};

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
    /// `log(T + tiny)` for transitions within the same voicing, by target bin `j` (stride
    /// `2h + 1`), predecessor bins `band_lo[j]..`.
    pub(super) log_same: Vec<f64>,
    /// The same across voicing.
    pub(super) log_cross: Vec<f64>,
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
        // transition_local(n_bins, width, window="triangle", wrap=False), row by row as librosa
        // builds it, then kron(transition_loop(2, 1 - switch_prob), ·) and log(· + tiny).
        let half_width = transition_width / 2;
        let stride = 2 * half_width + 1;
        let window = triangle(transition_width);
        let lpad = (n_bins - transition_width) / 2;
        let p_same = 1.0 - switch_prob;
        let p_cross = (1.0 - p_same) / 1.0; // transition_loop's (1 - p) / (n_states - 1)
        let band_lo: Vec<usize> = (0..n_bins).map(|j| j.saturating_sub(half_width)).collect();
        let band_len: Vec<usize> = (0..n_bins)
            .map(|j| (j + half_width).min(n_bins - 1) + 1 - band_lo[j])
            .collect();
        let log_floor = TINY.ln();
        let mut log_same = vec![log_floor; n_bins * stride];
        let mut log_cross = vec![log_floor; n_bins * stride];
        let mut row = vec![0.0; n_bins];
        for i in 0..n_bins {
            let shift = (n_bins / 2 + i + 1) % n_bins;
            let keep_lo = i.saturating_sub(half_width);
            let keep_hi = (i + half_width + 1).min(n_bins);
            for (j, r) in row.iter_mut().enumerate() {
                // np.roll(pad_center(window, n_bins), shift)[j], knocked out off the band.
                let p = (j + n_bins - shift) % n_bins;
                *r = if (keep_lo..keep_hi).contains(&j)
                    && (lpad..lpad + transition_width).contains(&p)
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
        Self {
            n_bins,
            half_width,
            band_lo,
            band_len,
            log_same,
            log_cross,
            max_same,
            max_cross,
            log_floor,
        }
    }
}

/// Best-path log-probabilities of every state after the last frame, and the work buffers of a
/// Viterbi step (all allocated once, in [`Viterbi::new`]).
#[derive(Clone, Debug)]
pub(super) struct Viterbi {
    /// Best-path log-probability per state after the last frame.
    pub(super) value: Vec<f64>,
    /// The next frame's `value`, swapped in at the end of a step.
    next: Vec<f64>,
    /// `log(p + tiny)` of the new frame's observation probabilities, filled before a step.
    pub(super) log_obs: Vec<f64>,
    /// `value + log(tiny)`: the score of any predecessor outside the band.
    floor_score: Vec<f64>,
    /// First argmax of `floor_score` over `[block start, block start + i)`, per block
    /// (`n_pitch_bins + 1` entries per block; `u32::MAX` when empty).
    prefix_best: Vec<u32>,
    /// First argmax of `floor_score` over `[block start + i, block end)`, per block.
    suffix_best: Vec<u32>,
    /// Largest value in the band of each target (voiced block, then unvoiced).
    band_top: Vec<f64>,
    /// Work buffers of [`window_max`].
    to_block_end: Vec<f64>,
    from_block_start: Vec<f64>,
}

impl Viterbi {
    /// Buffers for `n_bins` pitch bins (`2 * n_bins` states), values all 0.
    pub(super) fn new(n_bins: usize) -> Self {
        let n_states = 2 * n_bins;
        Self {
            value: vec![0.0; n_states],
            next: vec![0.0; n_states],
            log_obs: vec![0.0; n_states],
            floor_score: vec![0.0; n_states],
            prefix_best: vec![u32::MAX; 2 * (n_bins + 1)],
            suffix_best: vec![u32::MAX; 2 * (n_bins + 1)],
            band_top: vec![0.0; n_states],
            to_block_end: vec![0.0; n_bins],
            from_block_start: vec![0.0; n_bins],
        }
    }

    /// Heap bytes held.
    pub(super) fn heap_bytes(&self) -> usize {
        (self.value.capacity()
            + self.next.capacity()
            + self.log_obs.capacity()
            + self.floor_score.capacity()
            + self.band_top.capacity()
            + self.to_block_end.capacity()
            + self.from_block_start.capacity())
            * 8
            + (self.prefix_best.capacity() + self.suffix_best.capacity()) * 4
    }

    /// One Viterbi step (see [`Viterbi::step_portable`]), compiled for AVX2 when `use_avx2`.
    /// `pointers`, when given, receives the back-pointer of every state of the new frame.
    pub(super) fn step(
        &mut self,
        bands: &TransitionBands,
        use_avx2: bool,
        pointers: Option<&mut [u16]>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if use_avx2 {
            // SAFETY: `use_avx2` is only true when the CPU reports AVX2 (`avx2_available`).
            unsafe { self.step_avx2(bands, pointers) };
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = use_avx2;
        self.step_portable(bands, pointers);
    }

    /// [`Viterbi::step_portable`] compiled with AVX2 enabled. No FMA (LLVM does not fuse
    /// without fast-math) and a fixed order of operations: bit-identical to the portable build.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn step_avx2(&mut self, bands: &TransitionBands, pointers: Option<&mut [u16]>) {
        self.step_portable(bands, pointers);
    }

    /// One Viterbi step: `value := log_obs + max_k (value[k] + log_trans[k, ·])`, storing the
    /// back-pointers of the new frame.
    ///
    /// For target bin `j` (voiced or unvoiced), the predecessors are the voiced and the unvoiced
    /// bins of the band around `j` (log-transition tables `log_same` / `log_cross`), and every
    /// other state at the constant `log(tiny)`: the best of those comes from prefix and suffix
    /// argmaxes within each voicing block. A band is skipped when an upper bound of its scores
    /// (its largest value plus its largest log-transition) is below the best candidate found;
    /// rounding is monotone, so the bound holds in floating point and skipping is exact.
    #[inline(always)]
    fn step_portable(&mut self, bands: &TransitionBands, mut pointers: Option<&mut [u16]>) {
        let n = bands.n_bins;
        let n1 = n + 1;
        for (s, &v) in self.floor_score.iter_mut().zip(&self.value) {
            *s = v + bands.log_floor;
        }
        for block in 0..2 {
            let states = block * n..block * n + n;
            // Prefix and suffix first-argmax of the floor scores within the block.
            let scores = &self.floor_score[states.clone()];
            let prefix = &mut self.prefix_best[block * n1..block * n1 + n1];
            prefix[0] = u32::MAX;
            let mut best = (f64::NEG_INFINITY, u32::MAX);
            for (i, &s) in scores.iter().enumerate() {
                if s > best.0 {
                    best = (s, (block * n + i) as u32);
                }
                prefix[i + 1] = best.1;
            }
            let suffix = &mut self.suffix_best[block * n1..block * n1 + n1];
            suffix[n] = u32::MAX;
            let mut best = (f64::NEG_INFINITY, u32::MAX);
            for (i, &s) in scores.iter().enumerate().rev() {
                if s >= best.0 {
                    best = (s, (block * n + i) as u32);
                }
                suffix[i] = best.1;
            }
            // Largest value in each target's band.
            window_max(
                &self.value[states.clone()],
                &bands.band_lo,
                &bands.band_len,
                2 * bands.half_width + 1,
                [&mut self.to_block_end, &mut self.from_block_start],
                &mut self.band_top[states],
            );
        }

        let stride = 2 * bands.half_width + 1;
        let scores = &self.floor_score;
        let floor_top = scores
            .iter()
            .fold(f64::NEG_INFINITY, |m, &s| if s > m { s } else { m });
        let floor = |k: u32, best: &mut Best| {
            if k != u32::MAX {
                best.offer(scores[k as usize], k as usize);
            }
        };
        for j in 0..n {
            let lo = bands.band_lo[j];
            let len = bands.band_len[j];
            let same = &bands.log_same[j * stride..j * stride + len];
            let cross = &bands.log_cross[j * stride..j * stride + len];
            let voiced = &self.value[lo..lo + len];
            let unvoiced = &self.value[n + lo..n + lo + len];
            let (top_v, top_u) = (self.band_top[j], self.band_top[n + j]);
            let (max_same, max_cross) = (bands.max_same[j], bands.max_cross[j]);
            for (target, from_voiced, from_unvoiced, bound_v, bound_u) in [
                (j, same, cross, top_v + max_same, top_u + max_cross),
                (n + j, cross, same, top_v + max_cross, top_u + max_same),
            ] {
                let mut best = Best {
                    score: f64::NEG_INFINITY,
                    state: usize::MAX,
                };
                // The more promising band first, so that the other one is often skipped.
                if bound_v >= bound_u {
                    best.offer_band(voiced, from_voiced, lo, bound_v);
                    best.offer_band(unvoiced, from_unvoiced, n + lo, bound_u);
                } else {
                    best.offer_band(unvoiced, from_unvoiced, n + lo, bound_u);
                    best.offer_band(voiced, from_voiced, lo, bound_v);
                }
                // States outside the band can only win when no band state beats all of them.
                if best.score <= floor_top {
                    floor(self.prefix_best[lo], &mut best);
                    floor(self.suffix_best[lo + len], &mut best);
                    floor(self.prefix_best[n1 + lo], &mut best);
                    floor(self.suffix_best[n1 + lo + len], &mut best);
                }
                self.next[target] = self.log_obs[target] + best.score;
                if let Some(row) = pointers.as_deref_mut() {
                    row[target] = best.state as u16;
                }
            }
        }
        std::mem::swap(&mut self.value, &mut self.next);
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
    let mut top = lanes[0].max(lanes[1]).max(lanes[2].max(lanes[3]));
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
