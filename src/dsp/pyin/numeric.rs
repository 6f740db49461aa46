//! Numeric helpers of pYIN that reproduce numpy and scipy bit for bit: the `tiny` added before
//! every logarithm, numpy's pairwise sum and first argmax, the integer-shape beta CDF,
//! scipy's triangular window, and the FNV-1a hash of the configuration fingerprint.

/// `numpy.finfo(float64).tiny`: librosa adds it before every logarithm.
pub(super) const TINY: f64 = f64::MIN_POSITIVE;

/// numpy's pairwise summation of a contiguous `float64` slice (`np.sum`), bit for bit.
pub(super) fn numpy_sum(a: &[f64]) -> f64 {
    fn pairwise(a: &[f64]) -> f64 {
        let n = a.len();
        if n < 8 {
            a.iter().fold(-0.0, |s, &x| s + x)
        } else if n <= 128 {
            let mut r = [0.0; 8];
            r.copy_from_slice(&a[..8]);
            let whole = n - n % 8;
            for chunk in a[8..whole].chunks_exact(8) {
                for (acc, &x) in r.iter_mut().zip(chunk) {
                    *acc += x;
                }
            }
            let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for &x in &a[whole..] {
                s += x;
            }
            s
        } else {
            let mut n2 = n / 2;
            n2 -= n2 % 8;
            pairwise(&a[..n2]) + pairwise(&a[n2..])
        }
    }
    0.0 + pairwise(a)
}

/// Regularised incomplete beta `I_x(a, b)` for positive integers: the binomial tail
/// `sum_{j=a}^{n} C(n, j) x^j (1-x)^(n-j)` with `n = a + b - 1`, summed for whichever of
/// `I_x(a, b)` and `1 - I_x(a, b) = I_{1-x}(b, a)` is the smaller, so that the upper tail rounds
/// to 1 (as scipy's) instead of oscillating around it.
pub(super) fn beta_cdf_int(x: f64, a: u32, b: u32) -> f64 {
    /// `sum_{j=a}^{n} C(n, j) y^j (1-y)^(n-j)`.
    fn tail(y: f64, a: u32, n: u32) -> f64 {
        let mut coefficient = 1.0; // C(n, j), built up from j = 0
        let mut sum = 0.0;
        for j in 0..=n {
            if j > 0 {
                coefficient = coefficient * f64::from(n - j + 1) / f64::from(j);
            }
            if j >= a {
                sum += coefficient * y.powi(j as i32) * (1.0 - y).powi((n - j) as i32);
            }
        }
        sum
    }
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let n = a + b - 1;
    if x * f64::from(a + b) <= f64::from(a) {
        tail(x, a, n).min(1.0)
    } else {
        (1.0 - tail(1.0 - x, b, n)).max(0.0)
    }
}

/// `scipy.signal.windows.triang(m, sym=True)`.
pub(super) fn triangle(m: usize) -> Vec<f64> {
    let half = m.div_ceil(2);
    let mut w: Vec<f64> = (1..=half)
        .map(|n| {
            if m.is_multiple_of(2) {
                (2.0 * n as f64 - 1.0) / m as f64
            } else {
                2.0 * n as f64 / (m as f64 + 1.0)
            }
        })
        .collect();
    let mirrored: Vec<f64> = if m.is_multiple_of(2) {
        w.iter().rev().copied().collect()
    } else {
        w.iter().rev().skip(1).copied().collect()
    };
    w.extend(mirrored);
    w
}

/// 64-bit FNV-1a, for the configuration fingerprint in serialised decoder state.
pub(super) fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The larger of `a` and `b`, as a select: `b` unless `a > b`. It is `f64::max` where neither
/// is NaN, without `max`'s NaN test; a NaN `a` is passed over.
#[inline(always)]
pub(super) fn larger(a: f64, b: f64) -> f64 {
    if a > b { a } else { b }
}

/// Index of the first maximum (numpy's `argmax`; a NaN is passed over unless it comes first).
///
/// Two passes: the maximum in four independent lanes (vectorisable: a maximum does not
/// depend on the order it is taken in), then the first value equal to it.
pub(super) fn first_argmax(values: &[f64]) -> usize {
    let mut lanes = [values[0]; 4];
    let mut chunks = values.chunks_exact(4);
    for chunk in &mut chunks {
        for lane in 0..4 {
            lanes[lane] = larger(chunk[lane], lanes[lane]);
        }
    }
    let mut top = larger(larger(lanes[0], lanes[1]), larger(lanes[2], lanes[3]));
    for &v in chunks.remainder() {
        top = larger(v, top);
    }
    // A NaN first stays the maximum (nothing is larger) and equals nothing: index 0.
    values.iter().position(|&v| v == top).unwrap_or(0)
}
