//! Liveness and readiness, shared between the pipeline and the HTTP endpoint.

use serde::Serialize;

use crate::kafka::reachability::BrokerState;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the pipeline reports about itself.
#[derive(Default)]
pub struct Health {
    systemd: super::systemd::Notifier,
    heartbeat_ms: AtomicU64,
    assigned: AtomicBool,
    kafka_ok: AtomicBool,
    mongo_ok: AtomicBool,
    paused: AtomicBool,
    draining: AtomicBool,
    producer_brokers: Mutex<Option<Arc<BrokerState>>>,
}

/// The JSON body of `/healthz` and `/readyz`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct HealthReport {
    /// `ok` or `fail`.
    pub status: &'static str,
    /// Why not ok, when not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<&'static str>,
}

impl HealthReport {
    /// `ok` without reasons, else `fail` with them.
    pub fn from_reasons(reasons: Vec<&'static str>) -> Self {
        Self {
            status: if reasons.is_empty() { "ok" } else { "fail" },
            reasons,
        }
    }
}

/// [`crate::clock::unix_ms`] as the unsigned value the heartbeat holds.
fn now_ms() -> u64 {
    crate::clock::unix_ms().max(0) as u64
}

impl Health {
    /// The processing loop is alive (call at least once per loop turn).
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
        self.systemd.alive();
    }
    /// The worker is consuming (tells systemd READY=1).
    pub fn set_consuming(&self) {
        self.systemd.ready("consuming");
    }
    /// Whether partitions are assigned.
    pub fn set_assigned(&self, value: bool) {
        self.assigned.store(value, Ordering::Relaxed);
    }
    /// Whether the broker answers.
    pub fn set_kafka_ok(&self, value: bool) {
        self.kafka_ok.store(value, Ordering::Relaxed);
    }
    /// Also follows the output producer's view of the brokers: it is served by the producer's
    /// own thread, so it changes even while the loop waits on a send and polls no consumer
    /// events.
    pub fn watch_producer(&self, brokers: Arc<BrokerState>) {
        *self
            .producer_brokers
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(brokers);
    }
    /// Whether MongoDB answers.
    pub fn set_mongo_ok(&self, value: bool) {
        self.mongo_ok.store(value, Ordering::Relaxed);
    }
    /// Whether consumption is paused for an outage.
    pub fn set_paused(&self, value: bool) {
        self.paused.store(value, Ordering::Relaxed);
    }
    /// Whether the worker is draining for shutdown.
    pub fn set_draining(&self, value: bool) {
        self.draining.store(value, Ordering::Relaxed);
        if value {
            self.systemd.stopping();
        }
    }

    /// Liveness: the loop beat within `stall`.
    pub fn liveness(&self, stall: Duration) -> HealthReport {
        let last = self.heartbeat_ms.load(Ordering::Relaxed);
        let alive = last != 0 && now_ms().saturating_sub(last) <= stall.as_millis() as u64;
        HealthReport::from_reasons(if alive {
            vec![]
        } else {
            vec!["processing loop has not run recently"]
        })
    }

    /// Readiness: assigned, both services reachable (Kafka as the consumer and the output
    /// producer see it), not paused, not draining.
    pub fn readiness(&self) -> HealthReport {
        let mut reasons = Vec::new();
        if !self.assigned.load(Ordering::Relaxed) {
            reasons.push("no partitions assigned");
        }
        let producer_down = self
            .producer_brokers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|brokers| brokers.known_down());
        if !self.kafka_ok.load(Ordering::Relaxed) || producer_down {
            reasons.push("kafka unreachable");
        }
        if !self.mongo_ok.load(Ordering::Relaxed) {
            reasons.push("mongodb unreachable");
        }
        if self.paused.load(Ordering::Relaxed) {
            reasons.push("paused for an outage");
        }
        if self.draining.load(Ordering::Relaxed) {
            reasons.push("draining");
        }
        HealthReport::from_reasons(reasons)
    }
}
