//! [`TransitionBands`], the banded log-transition tables of pYIN's hidden Markov model
//! (librosa's triangular local transition within and across voicing), built once per
//! configuration: one row per distinct band, with the bounds the Viterbi step (`decoder`)
//! relies on (the bands' maxima and their concavity).

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
    /// The target bins whose band has all `2h + 1` bins, `j - h..=j + h`.
    pub(super) full_bands: std::ops::Range<usize>,
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
    /// `log(0 + tiny)`, every transition outside the band, once per state (`2 * n_bins`): the
    /// floor scores of all states are `value + floor_row`, found by the same kernels as a band.
    pub(super) floor_row: Vec<f64>,
    /// A lower bound of how much `T[j + 1][i] - T[j][i]` grows from each predecessor bin `i`
    /// to `i + 1` (both in the bands of both targets `j, j + 1`), in either table; `0` when it
    /// does not always grow. It makes the first argmax of every band monotone in the target
    /// (see `decoder::step_portable`).
    pub(super) concavity: f64,
    /// The largest magnitude of a log-transition within a band.
    pub(super) band_magnitude: f64,
}

impl TransitionBands {
    /// The bands for `n_bins` pitch bins, a triangle of `transition_width <= n_bins` bins and
    /// `switch_prob` between voiced and unvoiced.
    pub(super) fn new(n_bins: usize, transition_width: usize, switch_prob: f64) -> Self {
        let half_width = transition_width / 2;
        let stride = 2 * half_width + 1;
        let (band_lo, band_len) = bands(n_bins, half_width);
        let [log_same, log_cross] = per_target_tables(n_bins, transition_width, switch_prob);
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
        let concavity = concavity(&log_same, &band_lo, &band_len, stride)
            .min(concavity(&log_cross, &band_lo, &band_len, stride));
        let band_magnitude = (0..n_bins)
            .flat_map(|j| {
                let band = j * stride..j * stride + band_len[j];
                log_same[band.clone()].iter().chain(&log_cross[band])
            })
            .fold(0.0, |m: f64, &x| m.max(x.abs()));
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
        let full_bands = half_width..n_bins.saturating_sub(half_width).max(half_width);
        Self {
            n_bins,
            half_width,
            band_lo,
            band_len,
            full_bands,
            row,
            log_same: same_rows,
            log_cross: cross_rows,
            max_same,
            max_cross,
            floor_row: vec![TINY.ln(); 2 * n_bins],
            concavity,
            band_magnitude,
        }
    }
}

/// A lower bound of the growth from `i` to `i + 1` of `table[j + 1][i] - table[j][i]`, over
/// every pair of neighbouring targets and neighbouring predecessors in both their bands: the
/// smallest growth computed, less `1e-9` (far more than the rounding of these sums of four
/// log-transitions, each of magnitude below 1,000); `0` when that is not positive.
fn concavity(table: &[f64], band_lo: &[usize], band_len: &[usize], stride: usize) -> f64 {
    let at = |j: usize, i: usize| table[j * stride + i - band_lo[j]];
    let mut growth = f64::INFINITY;
    for j in 1..band_lo.len() {
        let shared = band_lo[j]..(band_lo[j - 1] + band_len[j - 1]).min(band_lo[j] + band_len[j]);
        for i in shared.start..shared.end.saturating_sub(1) {
            let g = (at(j, i + 1) - at(j - 1, i + 1)) - (at(j, i) - at(j - 1, i));
            growth = growth.min(g);
        }
    }
    let bound = growth - 1e-9;
    if bound > 0.0 && bound.is_finite() {
        bound
    } else {
        0.0
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
