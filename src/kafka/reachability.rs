//! Whether the brokers answer, as a producer's librdkafka sees it: from its statistics (each
//! `statistics.interval.ms`) and its "all brokers down" error, both served by the producer's
//! own polling thread. An idle producer whose brokers are not up (librdkafka reconnects it only
//! when it has something to send) reports nothing either way: the state is then unknown.

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

    /// Back to unknown: nothing is known about the brokers until the next report.
    pub fn forget(&self) {
        self.known.store(false, Ordering::Release);
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

/// Whether `error` says no broker can be reached (librdkafka's "all brokers down", whether a
/// client's error callback or one of its calls reports it).
pub fn is_all_brokers_down(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
}

/// A client context that keeps a [`BrokerState`] up to date and logs client errors.
#[derive(Debug, Clone, Default)]
pub struct ReachabilityContext {
    state: Arc<BrokerState>,
}

impl ReachabilityContext {
    /// A context that updates `state` (a replacement client keeps its predecessor's).
    pub fn sharing(state: Arc<BrokerState>) -> Self {
        Self { state }
    }

    /// The state this context updates.
    pub fn state(&self) -> Arc<BrokerState> {
        self.state.clone()
    }
}

impl ClientContext for ReachabilityContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_all_brokers_down(&error) {
            self.state.set(false);
        }
        warn!(error = %error, reason, "Kafka client error.");
    }

    fn stats(&self, statistics: Statistics) {
        // librdkafka connects an idle producer to a broker only when it has something to send,
        // so after a broker restart an idle producer's brokers stay down however healthy the
        // cluster is. With nothing queued or in flight (`msg_cnt` 0) and no broker up, the
        // producer knows nothing either way: the state goes back to unknown (a worker's
        // readiness then follows its consumer; the gateway stays not ready until it knows).
        let up = any_broker_up(&statistics);
        if up || statistics.msg_cnt > 0 {
            self.state.set(up);
        } else {
            self.state.forget();
        }
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

    /// Statistics with one learned broker in `state` and `queued` messages.
    fn report(state: &str, queued: u64) -> Statistics {
        let broker = rdkafka::statistics::Broker {
            nodeid: 1,
            state: state.to_string(),
            ..Default::default()
        };
        Statistics {
            msg_cnt: queued,
            brokers: [("127.0.0.1:9092/1".to_string(), broker)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_idle_producer_with_no_broker_up_knows_nothing() {
        let context = ReachabilityContext::default();
        let state = context.state();
        context.stats(report("DOWN", 3));
        assert!(
            state.known_down(),
            "messages waiting and no broker up: down"
        );
        // Idle after a broker restart: librdkafka does not reconnect it, which says nothing.
        context.stats(report("DOWN", 0));
        assert!(!state.known_down() && !state.known_up());
        context.stats(report("UP", 0));
        assert!(state.known_up());
        context.stats(report("UP", 5));
        assert!(state.known_up());
    }
}
