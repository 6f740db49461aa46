//! The wall clock as the wire and the records carry it: Unix milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn unix_ms() -> i64 {
    since_epoch().as_millis() as i64
}

/// [`unix_ms`] with sub-millisecond precision, for latency measurements.
pub fn unix_ms_f64() -> f64 {
    since_epoch().as_secs_f64() * 1000.0
}

/// Time since the Unix epoch (zero if the system clock is before it).
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_ms_is_after_2020() {
        assert!(super::unix_ms() > 1_577_836_800_000);
    }

    #[test]
    fn both_clocks_read_the_same_millisecond() {
        let (before, precise, after) = (super::unix_ms(), super::unix_ms_f64(), super::unix_ms());
        assert!(before as f64 <= precise && precise < (after + 1) as f64);
    }
}
