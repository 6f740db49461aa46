//! Whether the brokers answer, as a producer's librdkafka sees it: from its statistics (each
//! `statistics.interval.ms`) and its "all brokers down" error, both served by the producer's
//! own polling thread, so the state follows the cluster even while nothing is produced.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Statistics};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::warn;

/// How often a watched producer reports broker states, in milliseconds.
pub const STATISTICS_INTERVAL_MS: u64 = 1_000;

/// Broker reachability: unknown until the first report.
#[derive(Debug, Default)]
pub struct BrokerState {
    known: AtomicBool,
    up: AtomicBool,
}

impl BrokerState {
    /// Known to be unreachable.
    pub fn known_down(&self) -> bool {
        self.known.load(Ordering::Acquire) && !self.up.load(Ordering::Relaxed)
    }

    /// Known to be reachable.
    pub fn known_up(&self) -> bool {
        self.known.load(Ordering::Acquire) && self.up.load(Ordering::Relaxed)
    }

    /// Records a report.
    pub fn set(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        // Release: whoever sees `known` also sees the `up` stored before it.
        self.known.store(true, Ordering::Release);
    }
}

/// Whether a statistics report shows a broker connection that is up. Bootstrap entries have
/// node id -1 and do not count.
pub fn any_broker_up(statistics: &Statistics) -> bool {
    statistics
        .brokers
        .values()
        .any(|b| b.nodeid >= 0 && b.state == "UP")
}

/// A client context that keeps a [`BrokerState`] up to date and logs client errors.
#[derive(Debug, Clone, Default)]
pub struct ReachabilityContext {
    state: Arc<BrokerState>,
}

impl ReachabilityContext {
    /// The state this context updates.
    pub fn state(&self) -> Arc<BrokerState> {
        self.state.clone()
    }
}

impl ClientContext for ReachabilityContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            self.state.set(false);
        }
        warn!(error = %error, reason, "Kafka client error.");
    }

    fn stats(&self, statistics: Statistics) {
        self.state.set(any_broker_up(&statistics));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_reported() {
        let state = BrokerState::default();
        assert!(!state.known_down() && !state.known_up());
        state.set(false);
        assert!(state.known_down() && !state.known_up());
        state.set(true);
        assert!(!state.known_down() && state.known_up());
    }
}
