//! `output.exactly_once` against a real broker: whatever happens to the workers (SIGKILL
//! mid-batch with a second worker in the group, a fenced zombie, a broker restart mid-
//! transaction), a `read_committed` reader of the output topic sees every record of an
//! uninterrupted run exactly once, with the same values, and the dead-letter topic holds every
//! rejected message exactly once.
//!
//! The broker-restart test runs its own private broker (`PrivateServices`), so it never takes
//! the shared broker away from other tests.

use specflow_test_support::testing as common;

use common::*;
use rdkafka::Message;
use serde_json::Value;
use specflow::sinks::dead_letter::{SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PARTITIONS: i32 = 4;
const STREAMS: u64 = 12;
const SECONDS: f64 = 4.0;
/// Rejected messages mixed into the input (odd payload lengths), one per key.
const POISON: usize = 12;
/// The private broker's port for the restart test (its controller's is the next one).
const PRIVATE_KAFKA_PORT: u16 = 19492;

/// Every partition a worker's `log` says it was assigned (its "Partitions assigned." lines,
/// whose list is the last bracket of the line, after any colour codes).
fn assigned_partitions(log: &Path) -> BTreeSet<i32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|line| line.contains("Partitions assigned."))
        .filter_map(|line| {
            let list = &line[line.rfind('[')? + 1..];
            Some(list[..list.find(']')?].to_owned())
        })
        .flat_map(|list| {
            list.split(", ")
                .filter_map(|p| p.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// The workload: synthetic streams, plus poison messages (each dead-lettered once).
fn workload() -> Vec<(String, Vec<Chunk>)> {
    let mut streams = synthetic_streams("eos", STREAMS, 7, SECONDS);
    for i in 0..POISON {
        let key = format!("poison-{i}");
        streams.push((
            key.clone(),
            vec![Chunk {
                key: Some(key.into_bytes()),
                payload: vec![0; 3],
                headers: vec![],
            }],
        ));
    }
    streams
}

fn exactly_once_settings(names: &Names, brokers: &str) -> specflow::config::Settings {
    let mut s = settings(names);
    s.kafka.brokers = brokers.to_string();
    s.output.exactly_once = true;
    // Small batches put many transactions inside the run.
    s.source.batch_max_messages = 20;
    // A crashed member's partitions move after the broker's minimum session timeout.
    s.source.session_timeout_ms = 6_000;
    s.source.heartbeat_interval_ms = 1_000;
    s.output.transaction_timeout_ms = 10_000;
    s.output.delivery_timeout_ms = 10_000;
    s.mongo.retry_max_ms = 1_000;
    // "Transaction committed." is a debug line the tests wait for.
    s.log.level = "info,specflow::pipeline::exactly_once=debug".into();
    s
}

/// Writes `settings` as a config file in `dir` named `name.toml`.
fn config_in(dir: &Path, name: &str, settings: &specflow::config::Settings) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    write_config(&path, settings);
    path
}

fn start_worker(config: &Path, log: &Path) -> WorkerProcess {
    WorkerProcess::start(specflow_test_support::specflow_binary!(), config, log, &[])
}

/// Reads the output and dead-letter topics as a `read_committed` consumer and asserts each
/// expected record is there exactly once with the uninterrupted run's frames, nothing else is,
/// and every poison message is dead-lettered exactly once.
async fn assert_exactly_once(brokers: &str, names: &Names, expected: &BTreeMap<String, Value>) {
    let records = consume_from(
        brokers,
        &names.output,
        expected.len(),
        Duration::from_secs(120),
    )
    .await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for record in &records {
        let value: Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
        let id = value["id"].as_str().unwrap().to_string();
        *seen.entry(id.clone()).or_default() += 1;
        let Some(want) = expected.get(&id) else {
            panic!("record {id} is not one of an uninterrupted run");
        };
        let frames = without_timestamps(value["frames"].clone());
        assert_eq!(
            as_f32(frames),
            as_f32(want.clone()),
            "frames of record {id}"
        );
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "records seen more than once: {twice:?}");
    let missing: Vec<_> = expected
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "records missing: {missing:?} ({} of {} seen)",
        seen.len(),
        expected.len()
    );
    let letters = consume_from(brokers, &names.dead_letter, POISON, Duration::from_secs(60)).await;
    let mut sources: BTreeMap<(String, String), usize> = BTreeMap::new();
    for letter in &letters {
        *sources
            .entry((
                header_of(letter, SOURCE_PARTITION_HEADER),
                header_of(letter, SOURCE_OFFSET_HEADER),
            ))
            .or_default() += 1;
    }
    assert_eq!(
        letters.len(),
        POISON,
        "dead letters: {} for {POISON} poison messages ({sources:?})",
        letters.len()
    );
    assert!(
        sources.values().all(|n| *n == 1),
        "a message dead-lettered twice: {sources:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_batch_with_a_second_worker_shows_every_record_once() {
    let names = Names::new("eos-kill");
    create_topics(&names, PARTITIONS).await;
    let streams = workload();
    let mut settings = exactly_once_settings(&names, &brokers());
    let expected = expected_records(&streams[..STREAMS as usize], &settings.dsp);
    let dir = tempfile::tempdir().unwrap().keep();
    eprintln!("worker logs in {}", dir.display());
    // Stable transactional ids (from the instance ids): a restarted worker aborts what its
    // killed predecessor left open at once.
    settings.source.instance_id = "a".into();
    let config_a = config_in(&dir, "a", &settings);
    settings.source.instance_id = "b".into();
    let config_b = config_in(&dir, "b", &settings);
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    let worker_b = start_worker(&config_b, &log_b);
    let worker_a = start_worker(&config_a, &log_a);
    let producer = spawn_paced_producer(names.input.clone(), streams, Duration::from_millis(60));
    let kills = RandomKills {
        started: "Transactions initialised",
        kills: 4,
        moment_ms: 700..2_200,
        seed: 0x0e05,
    };
    let worker_a =
        kill_at_random_moments(worker_a, || start_worker(&config_a, &log_a), &log_a, &kills).await;
    producer.await.unwrap();
    assert_exactly_once(&brokers(), &names, &expected).await;
    // MongoDB, written before each transaction, holds the same records once.
    assert_mongo_equals(&collection(&names).await, &expected).await;
    worker_a.terminate(Duration::from_secs(60));
    worker_b.terminate(Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_zombie_writes_nothing_visible() {
    let names = Names::new("eos-zombie");
    create_topics(&names, PARTITIONS).await;
    let streams = workload();
    let mut settings = exactly_once_settings(&names, &brokers());
    settings.mongo.enabled = false;
    // Both workers forced onto one transactional id.
    settings.output.transactional_id = format!("{}-shared", names.group);
    let expected = expected_records(&streams[..STREAMS as usize], &settings.dsp);
    let dir = tempfile::tempdir().unwrap().keep();
    eprintln!("worker logs in {}", dir.display());
    let config = config_in(&dir, "worker", &settings);
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    // Slow enough (40 rounds, 20 s) that input is still coming when the zombie wakes up.
    let producer = spawn_paced_producer(names.input.clone(), streams, Duration::from_millis(500));
    let zombie = start_worker(&config, &log_a);
    wait_for_log(&log_a, "Transaction committed", Duration::from_secs(60)).await;
    // Frozen mid-run, likely with a transaction open: it becomes a zombie.
    zombie.pause();
    let successor = start_worker(&config, &log_b);
    wait_for_log(&log_b, "Transactions initialised", Duration::from_secs(60)).await;
    // The zombie's session expires; the successor takes every partition and goes on.
    let every_partition: BTreeSet<i32> = (0..PARTITIONS).collect();
    assert!(
        eventually(Duration::from_secs(60), async || assigned_partitions(
            &log_b
        ) == every_partition)
        .await,
        "the successor was not assigned every partition within 60 s"
    );
    zombie.resume();
    wait_for_log(&log_a, "Producer fenced", Duration::from_secs(60)).await;
    producer.await.unwrap();
    assert_exactly_once(&brokers(), &names, &expected).await;
    zombie.terminate_or_kill(Duration::from_secs(30));
    successor.terminate_or_kill(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_transaction_shows_every_record_once() {
    let private = PrivateServices::new(PRIVATE_KAFKA_PORT);
    private.run(&["cold-start", "kafka"]);
    let brokers = private.brokers();
    let names = Names::new("eos-restart");
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("admin client");
    assert!(
        eventually(Duration::from_secs(120), async || {
            specflow_test_support::create_topics(&admin, &names.new_topics(PARTITIONS))
                .await
                .is_ok()
        })
        .await,
        "the private broker did not come up"
    );
    let streams = workload();
    let mut settings = exactly_once_settings(&names, &brokers);
    settings.mongo.enabled = false;
    settings.source.instance_id = "restart".into();
    let expected = expected_records(&streams[..STREAMS as usize], &settings.dsp);
    let dir = tempfile::tempdir().unwrap().keep();
    eprintln!(
        "worker log and broker state in {} and {}",
        dir.display(),
        private.state().display()
    );
    let config = config_in(&dir, "worker", &settings);
    let log = dir.join("worker.log");
    // Supervised: when the restart outlasts the session, librdkafka can fence the static
    // member by itself (a fatal consumer error); the worker then exits to be started again.
    let worker = {
        let (config, log) = (config.clone(), log.clone());
        Supervised::start(move || start_worker(&config, &log).into_process())
    };
    let producer = spawn_paced_producer_to(
        brokers.clone(),
        names.input.clone(),
        streams,
        Duration::from_millis(80),
    );
    wait_for_log(&log, "Transaction committed", Duration::from_secs(90)).await;
    // Pacing, not a wait for a state: the input flows at 80 ms a round, so a second later the
    // restart lands while transactions are open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    private.run(&["restart", "kafka"]);
    producer.await.unwrap();
    assert_exactly_once(&brokers, &names, &expected).await;
    let restarts = worker.stop();
    eprintln!("the worker was started again {restarts} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_joining_and_leaving_show_every_record_once() {
    let names = Names::new("eos-rebalance");
    create_topics(&names, PARTITIONS).await;
    let streams = workload();
    let mut settings = exactly_once_settings(&names, &brokers());
    settings.mongo.enabled = false;
    let expected = expected_records(&streams[..STREAMS as usize], &settings.dsp);
    // Paced over ~8 s so that the rebalances fall inside the run.
    let producer = spawn_paced_producer(names.input.clone(), streams, Duration::from_millis(200));
    let [first, second, third] = three_instances(
        &settings,
        |m| m.transactions_committed_total.get() > 1,
        "the first instance committed transactions",
    )
    .await;
    first.stop().await;
    producer.await.unwrap();
    assert_exactly_once(&brokers(), &names, &expected).await;
    let rewound = second.metrics.partitions_rewound_total.get()
        + third.metrics.partitions_rewound_total.get();
    eprintln!("partitions rewound after aborted transactions: {rewound}");
    second.stop().await;
    third.stop().await;
}
