//! Floats in the output JSON: `zmij` (the formatter of serde_json and of specflow's record
//! encoders) writes every finite value in its shortest
//! round-trip form, in serde_json's layout. The oracle is the standard library's shortest
//! scientific form (`{:e}`), laid out by the rules below; the two may pick different last digits
//! only where two shortest candidates are equally near (zmij rounds such ties to even).

use std::ops::RangeInclusive;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// serde_json's text for a value whose shortest digits and leading-digit exponent are those of
/// `scientific` (std's `{:e}`): fixed notation when the exponent is in `fixed`, else `d.ddde±x`.
fn laid_out(scientific: &str, fixed: RangeInclusive<i32>) -> String {
    let (sign, unsigned) = match scientific.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", scientific),
    };
    let (mantissa, exponent) = unsigned
        .split_once('e')
        .expect("std's {:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    let body = if fixed.contains(&exponent) {
        if n - 1 <= exponent {
            format!("{digits}{}.0", "0".repeat((exponent + 1 - n) as usize))
        } else if exponent >= 0 {
            let (whole, fraction) = digits.split_at(exponent as usize + 1);
            format!("{whole}.{fraction}")
        } else {
            format!("0.{}{digits}", "0".repeat((-exponent - 1) as usize))
        }
    } else {
        let exponent = if exponent >= 0 {
            format!("+{exponent}")
        } else {
            exponent.to_string()
        };
        match digits.split_at(1) {
            (first, "") => format!("{first}e{exponent}"),
            (first, rest) => format!("{first}.{rest}e{exponent}"),
        }
    };
    format!("{sign}{body}")
}

/// `got` is `want` but for its last digit, and still reads back as the value.
fn differs_in_a_tie(got: &str, want: &str, round_trips: bool) -> bool {
    let last_digit = |s: &str| {
        let digits_end = s.find('e').unwrap_or(s.len());
        s[..digits_end].rfind(|c: char| c.is_ascii_digit() && c != '0')
    };
    round_trips
        && got.len() == want.len()
        && last_digit(got) == last_digit(want)
        && last_digit(got).is_some_and(|at| {
            got.bytes()
                .zip(want.bytes())
                .enumerate()
                .all(|(i, (a, b))| a == b || i == at)
        })
}

/// Reproducible random bit patterns.
fn bit_patterns(count: usize) -> impl Iterator<Item = u64> {
    let mut rng = StdRng::seed_from_u64(0x9E37_79B9_7F4A_7C15);
    (0..count).map(move |_| rng.next_u64())
}

#[test]
fn every_f32_is_written_shortest_in_serde_json_layout() {
    // Random bit patterns, then every power of ten and its neighbours (the edges of fixed
    // notation), then small integers and simple fractions (trailing zeros, leading zeros).
    let mut values: Vec<f32> = bit_patterns(400_000)
        .map(|bits| f32::from_bits(bits as u32))
        .collect();
    for exponent in -45..=38 {
        let power = 10f32.powi(exponent);
        for bits in power.to_bits().saturating_sub(3)..=power.to_bits().saturating_add(3) {
            values.push(f32::from_bits(bits));
        }
    }
    values.extend((0..20_000).map(|i| i as f32));
    values.extend((1..20_000).map(|i| 1.0 / i as f32));
    values.extend([
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
        f32::EPSILON,
    ]);
    let mut checked = 0;
    for v in values.into_iter().filter(|v| v.is_finite()) {
        let got = serde_json::to_string(&v).expect("a finite float");
        assert_eq!(got, zmij::Buffer::new().format_finite(v), "{v:?}");
        let want = laid_out(&format!("{v:e}"), -6..=12);
        let round_trips = got.parse::<f32>().ok() == Some(v);
        assert!(
            got == want || differs_in_a_tie(&got, &want, round_trips),
            "{v:?} ({:#010x}): zmij wrote {got}, expected {want}",
            v.to_bits()
        );
        checked += 1;
    }
    assert!(checked > 400_000);
}

#[test]
fn every_f64_is_written_shortest_in_serde_json_layout() {
    let mut values: Vec<f64> = bit_patterns(200_000).map(f64::from_bits).collect();
    for exponent in -320..=308 {
        let power = 10f64.powi(exponent);
        for bits in power.to_bits().saturating_sub(2)..=power.to_bits().saturating_add(2) {
            values.push(f64::from_bits(bits));
        }
    }
    values.extend((0..20_000).map(f64::from));
    values.extend((1..20_000).map(|i| 1.0 / f64::from(i)));
    values.extend((1..2_000).map(|i| f64::from(i) * 1e15 + 0.5));
    for v in values.into_iter().filter(|v| v.is_finite()) {
        let got = serde_json::to_string(&v).expect("a finite float");
        let want = laid_out(&format!("{v:e}"), -5..=15);
        let round_trips = got.parse::<f64>().ok() == Some(v);
        assert!(
            got == want || differs_in_a_tie(&got, &want, round_trips),
            "{v:?}: zmij wrote {got}, expected {want}"
        );
    }
}
