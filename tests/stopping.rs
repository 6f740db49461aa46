//! Stopping is bounded whatever the services are doing: a `specflow run` process under load
//! gets SIGTERM while Kafka is down, while MongoDB is down, or right after Kafka restarted, and
//! exits within `shutdown.drain_timeout_secs` plus the documented margin, with 0 (everything
//! handed over) or 75 (work left unstored, replayed by the next owner). Once the services are
//! back, a second worker in the same group finishes the input, and MongoDB holds every frame of
//! every stream exactly once (the output topic every record). A second signal exits at once.
//!
//! These tests stop and start the shared services, so they run one at a time: each holds
//! `services_to_myself()` for its whole run.
#![allow(clippy::await_holding_lock)]

use specflow_test_support::testing as common;

use common::*;
use specflow::shutdown::{DEADLINE_MARGIN, EXIT_ABORTED, EXIT_UNFINISHED};
use std::time::{Duration, Instant};

const STREAMS: u64 = 8;
const SECONDS: f64 = 6.0;
const PARTITIONS: i32 = 3;

/// What the services are doing when the stop comes.
#[derive(Debug, Clone, Copy)]
enum Outage {
    KafkaDown,
    MongoDown,
    KafkaJustRestarted,
}

/// A worker process under real-time load, with what an uninterrupted run would store.
struct Loaded {
    names: Names,
    settings: specflow::config::Settings,
    expected: std::collections::BTreeMap<String, serde_json::Value>,
    producer: tokio::task::JoinHandle<()>,
    worker: specflow_test_support::WorkerProcess,
    log: std::path::PathBuf,
}

impl Loaded {
    /// Starts the load and a worker process with `drain_secs`, and waits until it stores.
    async fn start(name: &str, drain_secs: u64) -> Self {
        Self::start_with(name, drain_secs, |_| {}).await
    }

    /// [`Loaded::start`] with `adjust` applied to the worker's settings.
    async fn start_with(
        name: &str,
        drain_secs: u64,
        adjust: impl FnOnce(&mut specflow::config::Settings),
    ) -> Self {
        let names = Names::new(name);
        create_topics(&names, PARTITIONS).await;
        let mut settings = settings(&names);
        settings.shutdown.drain_timeout_secs = drain_secs;
        settings.source.batch_max_messages = 40;
        settings.mongo.retry_max_ms = 1_000;
        settings.output.retry_max_ms = 1_000;
        settings.source.session_timeout_ms = 6_000;
        settings.source.heartbeat_interval_ms = 1_000;
        adjust(&mut settings);
        let streams = synthetic_streams("mic", STREAMS, 1, SECONDS);
        let expected = expected_records(&streams, &settings.dsp);
        let producer =
            spawn_paced_producer(names.input.clone(), streams, Duration::from_millis(100));
        let dir = tempfile::tempdir().unwrap().keep();
        eprintln!("{name}: worker log in {}", dir.display());
        let config = dir.join("specflow.toml");
        write_config(&config, &settings);
        let log = dir.join("worker.log");
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_specflow"));
        let worker = specflow_test_support::WorkerProcess::start(
            binary,
            &config,
            &log,
            [("RUST_LOG", "info")],
        )
        .expect("start specflow");
        let collection = collection(&names).await;
        assert!(
            eventually(Duration::from_secs(60), async || stored_frames(&collection)
                .await
                > 0)
            .await,
            "the worker stored nothing in 60 s"
        );
        Self {
            names,
            settings,
            expected,
            producer,
            worker,
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; asserts the process exits within the drain deadline plus the margin, with 0
    /// or the documented "unfinished" code. Returns the exit code.
    fn stop_within_bound(&mut self) -> i32 {
        let drain = Duration::from_secs(self.settings.shutdown.drain_timeout_secs);
        let bound = drain + DEADLINE_MARGIN;
        let signalled = Instant::now();
        self.worker.sigterm().expect("SIGTERM");
        // Wait a little past the bound, so that an overrun is measured rather than cut off
        // (a blocking wait: the runtime's other tasks go on meanwhile).
        let status = tokio::task::block_in_place(|| {
            self.worker.wait_within(bound + Duration::from_secs(10))
        })
        .expect("wait for the worker");
        let took = signalled.elapsed();
        let status = status.unwrap_or_else(|| {
            panic!(
                "the worker did not exit within {:?}:\n{}",
                bound + Duration::from_secs(10),
                self.log_text()
            )
        });
        // One second of slack for process start-up and reaping.
        assert!(
            took <= bound + Duration::from_secs(1),
            "the worker took {took:?} to exit, above drain {drain:?} + margin {DEADLINE_MARGIN:?}:\n{}",
            self.log_text()
        );
        let code = status.code().unwrap_or_else(|| {
            panic!(
                "the worker died by a signal ({status}):\n{}",
                self.log_text()
            )
        });
        assert!(
            code == 0 || code == i32::from(EXIT_UNFINISHED),
            "exit code {code} after SIGTERM (0 or {EXIT_UNFINISHED} expected):\n{}",
            self.log_text()
        );
        assert!(
            !self.log_text().contains("panicked"),
            "the worker panicked:\n{}",
            self.log_text()
        );
        eprintln!("exited with {code} after {took:?}");
        code
    }

    /// With the services back: the producer ends, a second worker finishes the input, and
    /// MongoDB holds exactly the uninterrupted run's frames, the output topic every record.
    async fn finish_with_second_worker(self) {
        self.producer.await.expect("producer");
        let second = spawn_worker(self.settings.clone());
        assert_stored_as_uninterrupted(&self.names, &self.expected).await;
        second.stop().await;
    }
}

/// Stops the worker during `outage`, then brings the services back and checks the result.
async fn stop_during(outage: Outage, name: &str, drain_secs: u64) {
    let mut loaded = Loaded::start(name, drain_secs).await;
    let code = match outage {
        Outage::KafkaDown | Outage::MongoDown => {
            let service = if matches!(outage, Outage::KafkaDown) {
                "kafka"
            } else {
                "mongo"
            };
            let stopped = tokio::task::spawn_blocking(move || StoppedService::stop(service))
                .await
                .unwrap();
            // The worker has met the outage: its consumer lost the broker, or a MongoDB
            // write failed.
            let symptom = if service == "kafka" {
                "BrokerTransportFailure"
            } else {
                "Sink write failed"
            };
            wait_for_log(&loaded.log, symptom, Duration::from_secs(60)).await;
            let code = loaded.stop_within_bound();
            tokio::task::spawn_blocking(move || stopped.start())
                .await
                .unwrap();
            code
        }
        Outage::KafkaJustRestarted => {
            tokio::task::spawn_blocking(|| services(&["restart", "kafka"]))
                .await
                .unwrap();
            loaded.stop_within_bound()
        }
    };
    eprintln!("{outage:?}: exit code {code}");
    loaded.finish_with_second_worker().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_kafka_is_down_exits_within_a_short_drain() {
    let _serial = services_to_myself();
    stop_during(Outage::KafkaDown, "stop-kafka-5", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_kafka_is_down_exits_within_the_default_drain() {
    let _serial = services_to_myself();
    let default = specflow::config::ShutdownConfig::default().drain_timeout_secs;
    stop_during(Outage::KafkaDown, "stop-kafka-default", default).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_mongodb_is_down_exits_within_the_drain() {
    let _serial = services_to_myself();
    stop_during(Outage::MongoDown, "stop-mongo-5", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_right_after_a_broker_restart_exits_within_the_drain() {
    let _serial = services_to_myself();
    stop_during(Outage::KafkaJustRestarted, "stop-restarted-5", 5).await;
}

/// A second signal during a drain that would wait (Kafka down, a long deadline) exits at once
/// with its own code.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_signal_exits_at_once() {
    let _serial = services_to_myself();
    let mut loaded = Loaded::start("stop-twice", 60).await;
    let kafka = tokio::task::spawn_blocking(|| StoppedService::stop("kafka"))
        .await
        .unwrap();
    loaded.worker.sigterm().expect("first SIGTERM");
    wait_for_log(
        &loaded.log,
        "Stop requested; draining",
        Duration::from_secs(10),
    )
    .await;
    let second = Instant::now();
    loaded.worker.sigterm().expect("second SIGTERM");
    let status = tokio::task::block_in_place(|| loaded.worker.wait_within(Duration::from_secs(5)))
        .expect("wait for the worker");
    let took = second.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "the worker did not exit within 5 s of a second signal:\n{}",
            loaded.log_text()
        )
    });
    // The drain would wait for the broker (its final commit, the consumer's close) until its
    // 60 s deadline; the second signal ends it.
    assert_eq!(
        status.code(),
        Some(i32::from(EXIT_ABORTED)),
        "exit status {status} after two signals:\n{}",
        loaded.log_text()
    );
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?} after the second signal"
    );
    assert!(
        loaded.log_text().contains("Second stop signal"),
        "the log says why:\n{}",
        loaded.log_text()
    );
    tokio::task::spawn_blocking(move || kafka.start())
        .await
        .unwrap();
    loaded.finish_with_second_worker().await;
}

/// A consumer that fails fatally can consume no more (librdkafka cannot recover it): here a
/// static member fenced by a newer member with its `group.instance.id`, which librdkafka can
/// also do to a member by itself after a session timeout (a broker restart). The worker must
/// not sit idle with a dead consumer: it drains what it has, exits with 1 and says why, so
/// that its supervisor starts it again; the newer member finishes the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_static_member_exits_for_its_supervisor_to_restart_it() {
    let _serial = services_to_myself();
    let mut loaded = Loaded::start_with("stop-fenced", 5, |settings| {
        settings.source.instance_id = "pod-0".into();
    })
    .await;
    let fenced_at = Instant::now();
    let newer = spawn_worker(loaded.settings.clone());
    // The fenced member learns it at its next heartbeat (1 s), then drains (5 s).
    let bound = Duration::from_secs(1 + 5) + DEADLINE_MARGIN + Duration::from_secs(10);
    let status = tokio::task::block_in_place(|| loaded.worker.wait_within(bound))
        .expect("wait for the worker")
        .unwrap_or_else(|| {
            panic!(
                "the fenced worker still runs {bound:?} after a newer member took its instance id:\n{}",
                loaded.log_text()
            )
        });
    eprintln!(
        "the fenced worker exited with {status} after {:?}",
        fenced_at.elapsed()
    );
    assert_eq!(
        status.code(),
        Some(1),
        "exit status of the fenced worker:\n{}",
        loaded.log_text()
    );
    let log = loaded.log_text();
    assert!(
        log.contains("failed fatally") && log.contains("FencedInstanceId"),
        "the log says why:\n{log}"
    );
    assert!(!log.contains("panicked"), "the worker panicked:\n{log}");
    // The newer member owns the group now: it finishes the input.
    loaded.producer.await.expect("producer");
    assert_stored_as_uninterrupted(&loaded.names, &loaded.expected).await;
    newer.stop().await;
}
