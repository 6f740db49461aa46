//! Statistics of the report: rounding for the JSON, percentiles, means, latency summaries.

use serde::Serialize;

/// Rounds to `decimals` decimals for the JSON.
pub fn round_to(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (v * scale).round() / scale
}

/// Rounds to two decimals for the JSON.
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Rounds to three decimals for the JSON.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Arithmetic mean (NaN when empty).
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// p50/p95/p99/max/mean/min of latencies in milliseconds. With records never seen
/// (`censored`), a percentile that falls among them is `None` and `max_ms` too.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    /// Records counted (seen and censored).
    pub n: usize,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Slowest seen record (`None` when some were never seen).
    pub max_ms: Option<f64>,
    /// Mean of the seen records.
    pub mean_ms: f64,
    /// Fastest record.
    pub min_ms: f64,
    /// Records never seen, counted as slower than every seen one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub censored: Option<usize>,
    /// The least latency any censored record would have had.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub censored_min_ms: Option<f64>,
}

impl LatencySummary {
    /// Summary of `values` (sorted in place), all seen.
    pub fn of(values: &mut [f64]) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            n: values.len(),
            p50_ms: Some(round2(percentile(values, 50.0))),
            p95_ms: Some(round2(percentile(values, 95.0))),
            p99_ms: Some(round2(percentile(values, 99.0))),
            max_ms: Some(round2(values.last().copied().unwrap_or(f64::NAN))),
            mean_ms: round2(mean(values)),
            min_ms: round2(values.first().copied().unwrap_or(f64::NAN)),
            censored: None,
            censored_min_ms: None,
        }
    }

    /// Summary where `censored` records were never seen: they count as slower than every seen
    /// one; `censored_min_ms` is the least any of them would have taken.
    pub fn censored(values: &mut [f64], censored: &[f64]) -> Self {
        let mut summary = Self::of(values);
        if censored.is_empty() {
            return summary;
        }
        let total = values.len() + censored.len();
        let at = |p: f64| {
            let rank = ((p / 100.0) * total as f64).ceil() as usize;
            let rank = rank.clamp(1, total);
            (rank <= values.len()).then(|| round2(values[rank - 1]))
        };
        summary.p50_ms = at(50.0);
        summary.p95_ms = at(95.0);
        summary.p99_ms = at(99.0);
        summary.max_ms = None;
        summary.n = total;
        summary.censored = Some(censored.len());
        summary.censored_min_ms = Some(round2(
            censored.iter().copied().fold(f64::INFINITY, f64::min),
        ));
        summary
    }

    /// A percentile cell of the table: the value, `>least` when it falls among records never
    /// seen, `-` when there is none.
    pub(super) fn cell(&self, value: Option<f64>) -> String {
        match (value, self.censored_min_ms) {
            (Some(v), _) => f(v, 1),
            (None, Some(least)) => format!(">{}", f(least, 0)),
            (None, None) => "-".into(),
        }
    }
}

/// Formats a number for the table (`-` when not finite).
pub fn f(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn censored_percentiles_fall_among_the_unseen() {
        let mut seen = vec![30.0, 10.0, 20.0];
        let s = LatencySummary::censored(&mut seen, &[500.0, 400.0]);
        assert_eq!(s.n, 5);
        assert_eq!(s.p50_ms, Some(30.0));
        assert_eq!(s.p99_ms, None);
        assert_eq!(s.max_ms, None);
        assert_eq!(s.censored_min_ms, Some(400.0));
        assert_eq!(s.cell(s.p99_ms), ">400");
    }

    #[test]
    fn not_finite_numbers_are_null_in_json_and_dash_in_the_table() {
        let s = LatencySummary::of(&mut []);
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["p50_ms"].is_null() && json["mean_ms"].is_null());
        assert_eq!(f(f64::NAN, 1), "-");
    }
}
