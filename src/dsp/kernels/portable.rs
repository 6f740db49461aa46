//! The portable kernels: plain Rust over fixed lane arrays (eight f64 lanes, sixteen f32
//! lanes), each with one fixed summation order, and their scalar tails. LLVM vectorises them
//! as it can; the AVX2 kernels keep the same lanes, tails and order, so both give bit-identical
//! results. A leaf: it uses no other module of `dsp`.

/// `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`: the one order in which every eight-lane
/// kernel here (and its AVX2 twin, and the lane loops of the per-frame features) adds up its
/// lanes.
#[inline(always)]
pub fn reduce_lanes<T: Copy + std::ops::Add<Output = T>>(lanes: [T; 8]) -> T {
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
}

/// Entries taken at once by [`window_argmax`].
pub const WINDOW: usize = 8;

/// The first `r` in `from..=to` with the largest `values[r] + trans[r]`, and that sum: the
/// [`WINDOW`] sums from `min(from, len - WINDOW)`, those outside the range at `-inf`, their
/// maximum in a fixed tree of selects (`a` if `a > b`, else `b`, as `vmaxpd`), then the first
/// equal to it. Needs `from <= to < from + WINDOW`, `WINDOW <= values.len() <= trans.len()`
/// and no NaN.
#[inline(always)]
pub fn window_argmax(values: &[f64], trans: &[f64], from: usize, to: usize) -> (f64, usize) {
    let larger = |a: f64, b: f64| if a > b { a } else { b };
    let base = from.min(values.len() - WINDOW);
    let mut sums = [f64::NEG_INFINITY; WINDOW];
    for (k, sum) in sums.iter_mut().enumerate() {
        if (from..=to).contains(&(base + k)) {
            *sum = values[base + k] + trans[base + k];
        }
    }
    let pairs: [f64; 4] = std::array::from_fn(|k| larger(sums[k], sums[k + 4]));
    let top = larger(larger(pairs[0], pairs[2]), larger(pairs[1], pairs[3]));
    let first = sums.iter().position(|&s| s == top).unwrap_or(0);
    (top, base + first)
}

/// Dot product with eight independent partial sums (vectorisable; a fixed summation order).
#[inline(always)]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut lanes = [0.0f64; 8];
    let mut a_chunks = a.chunks_exact(8);
    let mut b_chunks = b.chunks_exact(8);
    for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
        for lane in 0..8 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    reduce_lanes(lanes) + dot_tail(a_chunks.remainder(), b_chunks.remainder())
}

/// The scalar part of [`dot`] after its lanes (shared with the AVX2 kernel).
#[inline(always)]
pub(super) fn dot_tail(a: &[f64], b: &[f64]) -> f64 {
    let mut tail = 0.0;
    for (x, y) in a.iter().zip(b) {
        tail += x * y;
    }
    tail
}

/// f32 dot product with sixteen independent partial sums (vectorisable; a fixed summation order).
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut lanes = [0.0f32; 16];
    let mut a_chunks = a.chunks_exact(16);
    let mut b_chunks = b.chunks_exact(16);
    for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
        for lane in 0..16 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    let mut half = [0.0f32; 8];
    for lane in 0..8 {
        half[lane] = lanes[lane] + lanes[lane + 8];
    }
    reduce_lanes(half) + dot_tail_f32(a_chunks.remainder(), b_chunks.remainder())
}

/// The scalar part of [`dot_f32`] after its lanes (shared with the AVX2 kernel).
#[inline(always)]
pub(super) fn dot_tail_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut tail = 0.0;
    for (x, y) in a.iter().zip(b) {
        tail += x * y;
    }
    tail
}

/// Sum with eight independent partial sums (vectorisable; a fixed summation order).
#[inline(always)]
pub fn sum(values: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = values.chunks_exact(8);
    for x in &mut chunks {
        for lane in 0..8 {
            lanes[lane] += x[lane];
        }
    }
    reduce_lanes(lanes) + sum_tail(chunks.remainder())
}

/// The scalar part of [`sum`] after its lanes (shared with the AVX2 kernel).
#[inline(always)]
pub(super) fn sum_tail(values: &[f64]) -> f64 {
    values.iter().sum()
}

/// `sum_i x[i]^2` in f64, with eight independent partial sums (vectorisable; a fixed order).
#[inline(always)]
pub fn sum_squares(x: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for x in &mut chunks {
        for lane in 0..8 {
            let v = f64::from(x[lane]);
            lanes[lane] += v * v;
        }
    }
    reduce_lanes(lanes) + sum_squares_tail(chunks.remainder())
}

/// The scalar part of [`sum_squares`] after its lanes (shared with the AVX2 kernel).
#[inline(always)]
pub(super) fn sum_squares_tail(x: &[f32]) -> f64 {
    x.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
}

/// `sum_k s[k] (f[k] - centre)^2` with eight independent partial sums (a fixed order).
#[inline(always)]
pub fn square_deviation(magnitude: &[f64], freqs: &[f64], centre: f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut s_chunks = magnitude.chunks_exact(8);
    let mut f_chunks = freqs.chunks_exact(8);
    for (s, f) in (&mut s_chunks).zip(&mut f_chunks) {
        for lane in 0..8 {
            let deviation = f[lane] - centre;
            lanes[lane] += s[lane] * deviation * deviation;
        }
    }
    reduce_lanes(lanes) + square_deviation_tail(s_chunks.remainder(), f_chunks.remainder(), centre)
}

/// The scalar part of [`square_deviation`] after its lanes (shared with the AVX2 kernel).
#[inline(always)]
pub(super) fn square_deviation_tail(magnitude: &[f64], freqs: &[f64], centre: f64) -> f64 {
    let mut tail = 0.0;
    for (s, f) in magnitude.iter().zip(freqs) {
        let deviation = f - centre;
        tail += s * deviation * deviation;
    }
    tail
}
