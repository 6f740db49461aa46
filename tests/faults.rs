//! Fault tests against the real local Kafka and FerretDB: crashes, rebalances, a MongoDB
//! outage and a broker restart must leave MongoDB with exactly the records of one
//! uninterrupted run (same `_id`s, same values) and every record on the output topic.
//!
//! These tests stop and start the shared services, so they run one at a time: each holds
//! `services_to_myself()` for its whole run.
#![allow(clippy::await_holding_lock)]

use specflow_test_support::testing as common;

use common::*;
use std::time::{Duration, Instant};

const STREAMS: u64 = 20;
const SECONDS: f64 = 4.0;
const PARTITIONS: i32 = 4;
/// How long MongoDB stays down in the outage test.
const OUTAGE: Duration = Duration::from_secs(20);

fn workload() -> Vec<(String, Vec<Chunk>)> {
    synthetic_streams("mic", STREAMS, 1, SECONDS)
}

fn fault_settings(names: &Names) -> specflow::config::Settings {
    let mut s = settings(names);
    // Small batches and frequent commits put many commit points inside the run.
    s.source.batch_max_messages = 40;
    s.source.commit_interval_ms = 100;
    s.mongo.retry_max_ms = 1_000;
    // A crashed member's partitions come back after the broker's minimum session timeout.
    s.source.session_timeout_ms = 6_000;
    s.source.heartbeat_interval_ms = 1_000;
    // A member left out of its group by a broker restart subscribes again within the test's
    // wait for the broker to come back.
    s.source.rejoin_timeout_ms = 15_000;
    s
}

/// One fault scenario: its names, settings, the uninterrupted result, and the producer that
/// feeds the workload in real time while the test injects its fault.
struct Scenario {
    names: Names,
    settings: specflow::config::Settings,
    expected: std::collections::BTreeMap<String, serde_json::Value>,
    producer: tokio::task::JoinHandle<()>,
}

impl Scenario {
    async fn start(name: &str, pace: Duration) -> Self {
        let names = Names::new(name);
        create_topics(&names, PARTITIONS).await;
        let settings = fault_settings(&names);
        let streams = workload();
        let expected = expected_records(&streams, &settings.dsp);
        let producer = spawn_paced_producer(names.input.clone(), streams, pace);
        Self {
            names,
            settings,
            expected,
            producer,
        }
    }

    /// Waits for the producer, then checks MongoDB and the output topic.
    async fn finish(self) {
        self.producer.await.unwrap();
        assert_stored_as_uninterrupted(&self.names, &self.expected).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let _serial = services_to_myself();
    let scenario = Scenario::start("crash", Duration::from_millis(60)).await;
    let dir = tempfile::tempdir().unwrap();
    eprintln!("worker logs in {}", dir.path().display());
    let dir = dir.keep();
    let config = dir.join("specflow.toml");
    write_config(&config, &scenario.settings);
    let log = dir.join("worker.log");
    let start = || {
        WorkerProcess::start(
            specflow_test_support::specflow_binary!(),
            &config,
            &log,
            &[],
        )
    };
    // Each kill anywhere from mid-restore to mid-batch.
    let kills = RandomKills {
        started: "Consuming.",
        kills: 5,
        moment_ms: 500..3_500,
        seed: 0x5eed,
    };
    let worker = kill_at_random_moments(start(), start, &log, &kills).await;
    scenario.finish().await;
    worker.terminate(Duration::from_secs(60));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.matches("Consuming.").count() >= 6,
        "every restart consumed again:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalance_one_to_three_to_two_instances() {
    let _serial = services_to_myself();
    let scenario = Scenario::start("rebalance", Duration::from_millis(80)).await;
    let [first, second, third] = three_instances(
        &scenario.settings,
        |m| m.records_produced_total.get() > 0,
        "the first instance produced records",
    )
    .await;
    let first_metrics = first.metrics.clone();
    let remaining = [&second, &third];
    let rebalances = || {
        remaining
            .iter()
            .map(|w| w.metrics.rebalances_total.get())
            .sum::<u64>()
    };
    let before = rebalances();
    first.stop().await;
    // The first instance's partitions move to the other two: they are assigned again and
    // together hold every partition.
    assert!(
        eventually(Duration::from_secs(60), async || rebalances() > before
            && remaining
                .iter()
                .map(|w| w.metrics.assigned_partitions.get())
                .sum::<i64>()
                == i64::from(PARTITIONS))
        .await,
        "after the first instance left, the other two took its partitions: {} rebalances \
         (from {before}), {:?} partitions assigned",
        rebalances(),
        remaining.map(|w| w.metrics.assigned_partitions.get())
    );
    scenario.finish().await;
    // A clean workload: a replay after a rebalance must never look like a chunk going
    // backwards (a partition taken back keeps no stale stream state).
    let dead = [&first_metrics, &second.metrics, &third.metrics]
        .iter()
        .map(|m| dead_letters_sent(m))
        .sum::<u64>();
    second.stop().await;
    third.stop().await;
    assert_eq!(dead, 0, "dead letters from a clean workload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_outage_pauses_without_advancing_offsets() {
    let _serial = services_to_myself();
    // 40 rounds 200 ms apart: the load goes on for several seconds into the outage, so that
    // writes are attempted (and fail) while MongoDB is down.
    let scenario = Scenario::start("outage", Duration::from_millis(200)).await;
    let names = &scenario.names;
    let worker = spawn_worker(scenario.settings.clone());
    assert!(
        eventually(Duration::from_secs(30), async || worker
            .metrics
            .mongo_documents_written_total
            .get()
            > 0)
        .await,
        "documents stored before the outage"
    );
    let mongo = StoppedService::stop("mongo");
    assert!(
        !scenario.producer.is_finished(),
        "the load must still be running when MongoDB goes down"
    );
    let down_since = Instant::now();
    // Not ready once a write or the worker's MongoDB ping has failed (after the driver's
    // server-selection timeout), even when no record is waiting.
    assert!(
        eventually(Duration::from_secs(15), async || worker
            .health
            .readiness()
            .status
            == "fail")
        .await,
        "not ready while MongoDB is down"
    );
    let during = committed_offsets(&names.group, &names.input, PARTITIONS);
    // The outage lasts OUTAGE in all: a fault's length, not a wait for the worker.
    tokio::time::sleep_until((down_since + OUTAGE).into()).await;
    let later = committed_offsets(&names.group, &names.input, PARTITIONS);
    assert_eq!(during, later, "offsets advanced while MongoDB was down");
    assert!(
        worker.metrics.mongo_write_errors_total.get() > 0,
        "writes failed during the outage"
    );
    mongo.start();
    scenario.finish().await;
    assert_eq!(
        worker.health.readiness().status,
        "ok",
        "ready again after the outage"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_mid_run() {
    let _serial = services_to_myself();
    let scenario = Scenario::start("broker", Duration::from_millis(80)).await;
    let worker = spawn_worker(scenario.settings.clone());
    assert!(
        eventually(Duration::from_secs(30), async || worker
            .metrics
            .records_produced_total
            .get()
            > 0)
        .await,
        "records produced before the restart"
    );
    // Watch readiness through the restart: the worker must notice the broker is gone.
    let health = worker.health.clone();
    let saw_broker_gone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let saw = saw_broker_gone.clone();
        tokio::spawn(async move {
            loop {
                if health.readiness().reasons.contains(&"kafka unreachable") {
                    saw.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                // Sampling interval of the watcher, not a wait for a state.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::task::spawn_blocking(|| services(&["restart", "kafka"]))
        .await
        .unwrap();
    let ready = |worker: &RunningWorker| {
        !worker
            .health
            .readiness()
            .reasons
            .contains(&"kafka unreachable")
    };
    let worker = if eventually(Duration::from_secs(60), async || ready(&worker)).await {
        worker
    } else {
        // librdkafka can leave a consumer out of its group after a broker restart, for good
        // (docs/upstream/README.md). The worker reconnects it, subscribes again, and when that
        // fails too it exits for its supervisor to start it again: do what the supervisor does.
        let outcome = worker
            .exited_within(Duration::from_secs(120))
            .await
            .expect("the worker saw the broker come back, or exits for its supervisor");
        let error = outcome.expect_err("a worker that exits by itself reports why");
        assert!(
            format!("{error:#}").contains("out of its consumer group"),
            "{error:#}"
        );
        eprintln!("the worker exited for its supervisor: {error:#}");
        let fresh = spawn_worker(scenario.settings.clone());
        assert!(
            eventually(Duration::from_secs(60), async || ready(&fresh)).await,
            "a fresh worker saw the broker"
        );
        fresh
    };
    watcher.abort();
    assert!(
        saw_broker_gone.load(std::sync::atomic::Ordering::Relaxed),
        "the worker saw the broker go away"
    );
    scenario.finish().await;
    worker.stop().await;
}

/// A new owner takes over while MongoDB is down: it restores its partitions from the
/// checkpoint topic within seconds of the assignment (no database is asked), and once MongoDB
/// is back the result is the uninterrupted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_owner_restores_while_mongodb_is_down() {
    let _serial = services_to_myself();
    let scenario = Scenario::start("takeover", Duration::from_millis(150)).await;
    let first = spawn_worker(scenario.settings.clone());
    assert!(
        eventually(Duration::from_secs(30), async || first
            .metrics
            .checkpoints_written_total
            .get()
            > 0)
        .await,
        "the first owner wrote checkpoints"
    );
    let mongo = StoppedService::stop("mongo");
    assert!(
        !scenario.producer.is_finished(),
        "the load must still be running when MongoDB goes down"
    );
    // The first owner leaves (its last batches wait for MongoDB and are not committed): it
    // stops cleanly, or reports that it left work unstored for the next owner to replay.
    let left = first
        .stop_within(Duration::from_secs(60))
        .await
        .expect("the first owner stops within 60 s");
    if let Err(error) = left {
        assert!(
            error
                .downcast_ref::<specflow::shutdown::Unfinished>()
                .is_some(),
            "the first owner failed otherwise than leaving work unstored: {error:#}"
        );
    }
    let second = spawn_worker(scenario.settings.clone());
    let assigned_by = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), async || second
            .metrics
            .restore_seconds
            .get_sample_count()
            >= PARTITIONS as u64)
        .await,
        "every partition restored while MongoDB is down"
    );
    let restored_after = assigned_by.elapsed();
    let total = second.metrics.restore_seconds.get_sample_sum();
    eprintln!(
        "restored {PARTITIONS} partitions {restored_after:?} after start ({total:.3} s reading checkpoints in all)"
    );
    assert!(
        total < 5.0 * PARTITIONS as f64,
        "reading the checkpoints of {PARTITIONS} partitions took {total:.1} s in all"
    );
    mongo.start();
    scenario.finish().await;
    second.stop().await;
}
