//! The vector kernels the per-frame features are built on: dot products (one row, or a matrix's
//! rows against one vector), sums and sums of squares, each with one fixed summation order,
//! and the windowed first argmax of pYIN's Viterbi step.
//!
//! [`Portable`] is plain Rust over fixed lane arrays ([`portable::dot`] and the rest). LLVM
//! vectorises those poorly (128-bit halves and lane shuffles), so [`Avx2`] writes the same lanes
//! as explicit 256-bit registers. No FMA and the same order everywhere: the two give
//! bit-identical results, which a test checks. The extractor picks one per CPU
//! ([`Avx2::detect`]) and monomorphises the whole frame loop over it.

pub mod portable;

pub use portable::WINDOW;

/// The kernels, as a zero-sized token passed by value: code generic over `K: Kernels` is
/// compiled once per implementation.
pub trait Kernels: Copy {
    /// `sum_i a[i] * b[i]` over the shorter length (as [`portable::dot`]).
    fn dot(self, a: &[f64], b: &[f64]) -> f64;
    /// `sum_i a[i] * b[i]` in f32 (as [`portable::dot_f32`]).
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32;
    /// `sum_i values[i]` (as [`portable::sum`]).
    fn sum(self, values: &[f64]) -> f64;
    /// `sum_i x[i]^2` in f64 (as [`portable::sum_squares`]).
    fn sum_squares(self, x: &[f32]) -> f64;
    /// `sum_k s[k] (f[k] - centre)^2` (as [`portable::square_deviation`]).
    fn square_deviation(self, s: &[f64], f: &[f64], centre: f64) -> f64;
    /// The first `r` in `from..=to` with the largest `values[r] + trans[r]`, and that sum (as
    /// [`portable::window_argmax`]). Needs `from <= to < from + WINDOW`, `WINDOW <= values.len()
    /// <= trans.len()` and no NaN.
    fn window_argmax(self, values: &[f64], trans: &[f64], from: usize, to: usize) -> (f64, usize);
    /// `out[r] = dot(rows[r * x.len()..][..x.len()], x)` for each `r < out.len()`.
    fn dot_rows(self, rows: &[f64], x: &[f64], out: &mut [f64]) {
        if x.is_empty() {
            out.fill(0.0);
            return;
        }
        for (row, o) in rows.chunks_exact(x.len()).zip(out.iter_mut()) {
            *o = self.dot(row, x);
        }
    }
    /// `out[r] = dot_f32(rows[r * x.len()..][..x.len()], x)` for each `r < out.len()`.
    fn dot_rows_f32(self, rows: &[f32], x: &[f32], out: &mut [f32]) {
        if x.is_empty() {
            out.fill(0.0);
            return;
        }
        for (row, o) in rows.chunks_exact(x.len()).zip(out.iter_mut()) {
            *o = self.dot_f32(row, x);
        }
    }
}

/// The portable kernels (any CPU).
#[derive(Debug, Clone, Copy, Default)]
pub struct Portable;

impl Kernels for Portable {
    #[inline(always)]
    fn dot(self, a: &[f64], b: &[f64]) -> f64 {
        portable::dot(a, b)
    }
    #[inline(always)]
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        portable::dot_f32(a, b)
    }
    #[inline(always)]
    fn sum(self, values: &[f64]) -> f64 {
        portable::sum(values)
    }
    #[inline(always)]
    fn sum_squares(self, x: &[f32]) -> f64 {
        portable::sum_squares(x)
    }
    #[inline(always)]
    fn square_deviation(self, s: &[f64], f: &[f64], centre: f64) -> f64 {
        portable::square_deviation(s, f, centre)
    }
    #[inline(always)]
    fn window_argmax(self, values: &[f64], trans: &[f64], from: usize, to: usize) -> (f64, usize) {
        portable::window_argmax(values, trans, from, to)
    }
}

/// The AVX2 kernels. Only [`Avx2::detect`] makes one, on a CPU that has AVX2, so holding one is
/// the proof that calling them is sound.
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

impl Avx2 {
    /// The AVX2 kernels, when this CPU has AVX2.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(Self(()));
        }
        None
    }
}

#[cfg(target_arch = "x86_64")]
impl Kernels for Avx2 {
    #[inline(always)]
    fn dot(self, a: &[f64], b: &[f64]) -> f64 {
        // SAFETY: an `Avx2` exists only on a CPU with AVX2 (`Avx2::detect`).
        unsafe { x86::dot(a, b) }
    }
    #[inline(always)]
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: as above.
        unsafe { x86::dot_f32(a, b) }
    }
    #[inline(always)]
    fn sum(self, values: &[f64]) -> f64 {
        // SAFETY: as above.
        unsafe { x86::sum(values) }
    }
    #[inline(always)]
    fn sum_squares(self, x: &[f32]) -> f64 {
        // SAFETY: as above.
        unsafe { x86::sum_squares(x) }
    }
    #[inline(always)]
    fn square_deviation(self, s: &[f64], f: &[f64], centre: f64) -> f64 {
        // SAFETY: as above.
        unsafe { x86::square_deviation(s, f, centre) }
    }
    #[inline(always)]
    fn window_argmax(self, values: &[f64], trans: &[f64], from: usize, to: usize) -> (f64, usize) {
        // SAFETY: as above.
        unsafe { x86::window_argmax(values, trans, from, to) }
    }
    #[inline(always)]
    fn dot_rows(self, rows: &[f64], x: &[f64], out: &mut [f64]) {
        // SAFETY: as above.
        unsafe { x86::dot_rows(rows, x, out) }
    }
    #[inline(always)]
    fn dot_rows_f32(self, rows: &[f32], x: &[f32], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { x86::dot_rows_f32(rows, x, out) }
    }
}

/// The AVX2 bodies. Each keeps the portable lanes: f64 lanes `0..4` and `4..8` in two
/// registers, f32 lanes `0..8` and `8..16` in two, the tails through the portable scalar code,
/// and the portable reduction order.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, __m256d, __m256i, _CMP_EQ_OQ, _mm_add_ps, _mm_cvtsd_f64, _mm_cvtss_f32,
        _mm_hadd_pd, _mm_hadd_ps, _mm_loadu_ps, _mm_movehdup_ps, _mm_unpackhi_pd, _mm256_add_pd,
        _mm256_add_ps, _mm256_and_si256, _mm256_blendv_pd, _mm256_castpd256_pd128,
        _mm256_castps256_ps128, _mm256_castsi256_pd, _mm256_cmp_pd, _mm256_cmpgt_epi64,
        _mm256_cvtps_pd, _mm256_cvtsd_f64, _mm256_extractf128_pd, _mm256_extractf128_ps,
        _mm256_loadu_pd, _mm256_loadu_ps, _mm256_max_pd, _mm256_movemask_pd, _mm256_mul_pd,
        _mm256_mul_ps, _mm256_permute_pd, _mm256_permute2f128_pd, _mm256_set1_epi64x,
        _mm256_set1_pd, _mm256_setr_epi64x, _mm256_setzero_pd, _mm256_setzero_ps, _mm256_sub_pd,
    };

    use super::WINDOW;
    use super::portable::{
        dot_tail, dot_tail_f32, square_deviation_tail, sum_squares_tail, sum_tail,
    };

    /// `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))` of the lanes `low = l0..l4`,
    /// `high = l4..l8`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn reduce_pd(low: __m256d, high: __m256d) -> f64 {
        let pairs = _mm256_add_pd(low, high);
        let halves = _mm_hadd_pd(
            _mm256_castpd256_pd128(pairs),
            _mm256_extractf128_pd::<1>(pairs),
        );
        _mm_cvtsd_f64(halves) + _mm_cvtsd_f64(_mm_unpackhi_pd(halves, halves))
    }

    /// `((h0 + h4) + (h1 + h5)) + ((h2 + h6) + (h3 + h7))` with `h[l] = lanes[l] + lanes[l + 8]`
    /// of the lanes `low = 0..8`, `high = 8..16`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn reduce_ps(low: __m256, high: __m256) -> f32 {
        let half = _mm256_add_ps(low, high);
        let quads = _mm_add_ps(
            _mm256_castps256_ps128(half),
            _mm256_extractf128_ps::<1>(half),
        );
        // [q0 + q1, q2 + q3, ..]
        let pairs = _mm_hadd_ps(quads, quads);
        _mm_cvtss_f32(pairs) + _mm_cvtss_f32(_mm_movehdup_ps(pairs))
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
        let len = a.len().min(b.len());
        let (a, b) = (&a[..len], &b[..len]);
        let body = len - len % 8;
        let (mut low, mut high) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        while i < body {
            // SAFETY: i + 8 <= body <= len for both slices.
            let (x0, x1, y0, y1) = unsafe {
                (
                    _mm256_loadu_pd(a.as_ptr().add(i)),
                    _mm256_loadu_pd(a.as_ptr().add(i + 4)),
                    _mm256_loadu_pd(b.as_ptr().add(i)),
                    _mm256_loadu_pd(b.as_ptr().add(i + 4)),
                )
            };
            low = _mm256_add_pd(low, _mm256_mul_pd(x0, y0));
            high = _mm256_add_pd(high, _mm256_mul_pd(x1, y1));
            i += 8;
        }
        reduce_pd(low, high) + dot_tail(&a[body..], &b[body..])
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let len = a.len().min(b.len());
        let (a, b) = (&a[..len], &b[..len]);
        let body = len - len % 16;
        let (mut low, mut high) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < body {
            // SAFETY: i + 16 <= body <= len for both slices.
            let (x0, x1, y0, y1) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                )
            };
            low = _mm256_add_ps(low, _mm256_mul_ps(x0, y0));
            high = _mm256_add_ps(high, _mm256_mul_ps(x1, y1));
            i += 16;
        }
        reduce_ps(low, high) + dot_tail_f32(&a[body..], &b[body..])
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn sum(values: &[f64]) -> f64 {
        let body = values.len() - values.len() % 8;
        let (mut low, mut high) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        while i < body {
            // SAFETY: i + 8 <= body <= len.
            let (x0, x1) = unsafe {
                (
                    _mm256_loadu_pd(values.as_ptr().add(i)),
                    _mm256_loadu_pd(values.as_ptr().add(i + 4)),
                )
            };
            low = _mm256_add_pd(low, x0);
            high = _mm256_add_pd(high, x1);
            i += 8;
        }
        reduce_pd(low, high) + sum_tail(&values[body..])
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn sum_squares(x: &[f32]) -> f64 {
        let body = x.len() - x.len() % 8;
        let (mut low, mut high) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        while i < body {
            // SAFETY: i + 8 <= body <= len.
            let (x0, x1) = unsafe {
                (
                    _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(i))),
                    _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(i + 4))),
                )
            };
            low = _mm256_add_pd(low, _mm256_mul_pd(x0, x0));
            high = _mm256_add_pd(high, _mm256_mul_pd(x1, x1));
            i += 8;
        }
        reduce_pd(low, high) + sum_squares_tail(&x[body..])
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn square_deviation(s: &[f64], f: &[f64], centre: f64) -> f64 {
        let len = s.len().min(f.len());
        let (s, f) = (&s[..len], &f[..len]);
        let body = len - len % 8;
        let c = _mm256_set1_pd(centre);
        let (mut low, mut high) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        while i < body {
            // SAFETY: i + 8 <= body <= len for both slices.
            let (s0, s1, f0, f1) = unsafe {
                (
                    _mm256_loadu_pd(s.as_ptr().add(i)),
                    _mm256_loadu_pd(s.as_ptr().add(i + 4)),
                    _mm256_loadu_pd(f.as_ptr().add(i)),
                    _mm256_loadu_pd(f.as_ptr().add(i + 4)),
                )
            };
            let (d0, d1) = (_mm256_sub_pd(f0, c), _mm256_sub_pd(f1, c));
            low = _mm256_add_pd(low, _mm256_mul_pd(_mm256_mul_pd(s0, d0), d0));
            high = _mm256_add_pd(high, _mm256_mul_pd(_mm256_mul_pd(s1, d1), d1));
            i += 8;
        }
        reduce_pd(low, high) + square_deviation_tail(&s[body..], &f[body..], centre)
    }

    /// Four rows at a time share each load of `x`: eight independent sums in flight instead of
    /// two. Per row, the same lanes and order as [`dot`].
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_rows(rows: &[f64], x: &[f64], out: &mut [f64]) {
        let n = x.len();
        if n == 0 {
            out.fill(0.0);
            return;
        }
        let count = out.len().min(rows.len() / n);
        let body = n - n % 8;
        let mut r = 0;
        while r + 4 <= count {
            let row = |k: usize| &rows[(r + k) * n..(r + k + 1) * n];
            let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
            let mut acc = [_mm256_setzero_pd(); 8];
            let mut i = 0;
            while i < body {
                // SAFETY: i + 8 <= body <= n, the length of x and of each row.
                unsafe {
                    let x0 = _mm256_loadu_pd(x.as_ptr().add(i));
                    let x1 = _mm256_loadu_pd(x.as_ptr().add(i + 4));
                    for (k, w) in [r0, r1, r2, r3].into_iter().enumerate() {
                        let w0 = _mm256_loadu_pd(w.as_ptr().add(i));
                        let w1 = _mm256_loadu_pd(w.as_ptr().add(i + 4));
                        acc[2 * k] = _mm256_add_pd(acc[2 * k], _mm256_mul_pd(w0, x0));
                        acc[2 * k + 1] = _mm256_add_pd(acc[2 * k + 1], _mm256_mul_pd(w1, x1));
                    }
                }
                i += 8;
            }
            for (k, w) in [r0, r1, r2, r3].into_iter().enumerate() {
                out[r + k] =
                    reduce_pd(acc[2 * k], acc[2 * k + 1]) + dot_tail(&w[body..], &x[body..]);
            }
            r += 4;
        }
        while r < count {
            out[r] = dot(&rows[r * n..(r + 1) * n], x);
            r += 1;
        }
    }

    /// [`dot_rows`] in f32, with the lanes and order of [`dot_f32`].
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_rows_f32(rows: &[f32], x: &[f32], out: &mut [f32]) {
        let n = x.len();
        if n == 0 {
            out.fill(0.0);
            return;
        }
        let count = out.len().min(rows.len() / n);
        let body = n - n % 16;
        let mut r = 0;
        while r + 4 <= count {
            let row = |k: usize| &rows[(r + k) * n..(r + k + 1) * n];
            let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut i = 0;
            while i < body {
                // SAFETY: i + 16 <= body <= n, the length of x and of each row.
                unsafe {
                    let x0 = _mm256_loadu_ps(x.as_ptr().add(i));
                    let x1 = _mm256_loadu_ps(x.as_ptr().add(i + 8));
                    for (k, w) in [r0, r1, r2, r3].into_iter().enumerate() {
                        let w0 = _mm256_loadu_ps(w.as_ptr().add(i));
                        let w1 = _mm256_loadu_ps(w.as_ptr().add(i + 8));
                        acc[2 * k] = _mm256_add_ps(acc[2 * k], _mm256_mul_ps(w0, x0));
                        acc[2 * k + 1] = _mm256_add_ps(acc[2 * k + 1], _mm256_mul_ps(w1, x1));
                    }
                }
                i += 16;
            }
            for (k, w) in [r0, r1, r2, r3].into_iter().enumerate() {
                out[r + k] =
                    reduce_ps(acc[2 * k], acc[2 * k + 1]) + dot_tail_f32(&w[body..], &x[body..]);
            }
            r += 4;
        }
        while r < count {
            out[r] = dot_f32(&rows[r * n..(r + 1) * n], x);
            r += 1;
        }
    }

    /// [`super::portable::window_argmax`] in two registers: the [`WINDOW`] sums from
    /// `min(from, len - WINDOW)`, those outside `from..=to` masked to `-inf`, their maximum,
    /// then the first lane equal to it (no branch).
    #[target_feature(enable = "avx2")]
    pub(super) fn window_argmax(
        values: &[f64],
        trans: &[f64],
        from: usize,
        to: usize,
    ) -> (f64, usize) {
        // Memory safety needs only this (then `base + WINDOW <= values.len()`); a range
        // outside the window finds no lane, and indexing past the slice below panics.
        assert!(WINDOW <= values.len() && values.len() <= trans.len());
        let base = from.min(values.len() - WINDOW);
        let (first, last) = ((from - base) as i64, (to - base) as i64);
        let keep = |lanes: __m256i| {
            _mm256_castsi256_pd(_mm256_and_si256(
                _mm256_cmpgt_epi64(lanes, _mm256_set1_epi64x(first - 1)),
                _mm256_cmpgt_epi64(_mm256_set1_epi64x(last + 1), lanes),
            ))
        };
        let minus_inf = _mm256_set1_pd(f64::NEG_INFINITY);
        // SAFETY: base + WINDOW <= values.len() <= trans.len() (asserted above).
        let (low, high) = unsafe {
            let (v, t) = (values.as_ptr().add(base), trans.as_ptr().add(base));
            (
                _mm256_add_pd(_mm256_loadu_pd(v), _mm256_loadu_pd(t)),
                _mm256_add_pd(_mm256_loadu_pd(v.add(4)), _mm256_loadu_pd(t.add(4))),
            )
        };
        let low = _mm256_blendv_pd(minus_inf, low, keep(_mm256_setr_epi64x(0, 1, 2, 3)));
        let high = _mm256_blendv_pd(minus_inf, high, keep(_mm256_setr_epi64x(4, 5, 6, 7)));
        let top = _mm256_max_pd(low, high);
        let top = _mm256_max_pd(top, _mm256_permute2f128_pd::<1>(top, top));
        let top = _mm256_max_pd(top, _mm256_permute_pd::<0b0101>(top));
        let hits = _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_EQ_OQ>(low, top)) as u32
            | (_mm256_movemask_pd(_mm256_cmp_pd::<_CMP_EQ_OQ>(high, top)) as u32) << 4;
        let r = base + hits.trailing_zeros() as usize;
        assert!(r < values.len(), "window_argmax: empty range {from}..={to}");
        (_mm256_cvtsd_f64(top), r)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// Values of mixed sign and magnitude, different per `seed`.
    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..len)
            .map(|_| rng.random_range(-0.3..0.7) * 10f64.powi(rng.random_range(-3..=3)))
            .collect()
    }

    #[test]
    fn avx2_kernels_are_bit_identical_to_the_portable_ones() {
        let Some(avx2) = Avx2::detect() else {
            eprintln!("no AVX2 on this CPU: the AVX2 kernels are not compared");
            return;
        };
        for len in [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 40, 201, 257, 1025] {
            let a = values(len, 1 + len as u64);
            let b = values(len, 1000 + len as u64);
            let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
            assert_eq!(
                Portable.dot(&a, &b).to_bits(),
                avx2.dot(&a, &b).to_bits(),
                "dot {len}"
            );
            assert_eq!(
                Portable.dot_f32(&a32, &b32).to_bits(),
                avx2.dot_f32(&a32, &b32).to_bits(),
                "dot_f32 {len}"
            );
            assert_eq!(
                Portable.sum(&a).to_bits(),
                avx2.sum(&a).to_bits(),
                "sum {len}"
            );
            assert_eq!(
                Portable.sum_squares(&a32).to_bits(),
                avx2.sum_squares(&a32).to_bits(),
                "sum_squares {len}"
            );
            if len >= WINDOW {
                // Every range of at most WINDOW entries, with ties (values rounded coarsely).
                let coarse: Vec<f64> = a.iter().map(|v| (v * 4.0).round() / 4.0).collect();
                let zeros = vec![0.0; len];
                for (values, trans) in [(&a, &b), (&coarse, &zeros)] {
                    for from in 0..len {
                        for to in from..(from + WINDOW).min(len) {
                            let scan = (from..=to).fold(from, |best, r| {
                                if values[r] + trans[r] > values[best] + trans[best] {
                                    r
                                } else {
                                    best
                                }
                            });
                            let expected = (values[scan] + trans[scan], scan);
                            let found = [
                                Portable.window_argmax(values, trans, from, to),
                                avx2.window_argmax(values, trans, from, to),
                            ];
                            for (top, r) in found {
                                assert_eq!((top.to_bits(), r), (expected.0.to_bits(), expected.1));
                            }
                        }
                    }
                }
            }
            // Rows: 13 (three groups of four and one alone), against one dot per row.
            let rows = 13;
            let matrix = values(rows * len, 7 + len as u64);
            let matrix32: Vec<f32> = matrix.iter().map(|&v| v as f32).collect();
            let (mut portable, mut vector) = (vec![0.0; rows], vec![1.0; rows]);
            Portable.dot_rows(&matrix, &b, &mut portable);
            avx2.dot_rows(&matrix, &b, &mut vector);
            let (mut portable32, mut vector32) = (vec![0.0f32; rows], vec![1.0f32; rows]);
            Portable.dot_rows_f32(&matrix32, &b32, &mut portable32);
            avx2.dot_rows_f32(&matrix32, &b32, &mut vector32);
            for r in 0..rows {
                let row = &matrix[r * len..(r + 1) * len];
                assert_eq!(portable[r].to_bits(), portable::dot(row, &b).to_bits());
                assert_eq!(
                    portable[r].to_bits(),
                    vector[r].to_bits(),
                    "dot_rows {len} row {r}"
                );
                assert_eq!(
                    portable32[r].to_bits(),
                    vector32[r].to_bits(),
                    "dot_rows_f32 {len} row {r}"
                );
            }
        }
    }
}
