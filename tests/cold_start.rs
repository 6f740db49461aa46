//! Created means usable: a worker started against a broker that is itself starting from
//! nothing (fresh storage, KRaft's first run) creates its topics, waits until the broker's
//! metadata lists them, and processes a stream; several times in a row, with no failure.
//!
//! The broker is a private instance of `scripts/services.sh` (its own state directory and
//! ports), started with `cold-start`, which returns as soon as the process is launched: the
//! worker meets the broker while it boots, as the README's demo does on a fresh machine.

use specflow_test_support::testing as common;

use common::*;
use std::time::Duration;

const ROUNDS: usize = 3;
/// The private broker's port (its controller's is the next one).
const KAFKA_PORT: u16 = 19392;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_meeting_a_broker_that_starts_from_nothing_creates_its_topics_and_works() {
    let private = PrivateServices::new(KAFKA_PORT);
    let brokers = private.brokers();
    let logs = tempfile::tempdir().expect("log dir").keep();
    eprintln!("worker logs in {}", logs.display());
    for round in 1..=ROUNDS {
        private.run(&["cold-start", "kafka"]);
        let names = Names::new(&format!("cold-{round}"));
        let mut settings = settings(&names);
        settings.kafka.brokers = brokers.clone();
        settings.source.create_topics = true;
        settings.source.topic_partitions = 3;
        settings.mongo.enabled = false;
        let config = logs.join(format!("round-{round}.toml"));
        write_config(&config, &settings);
        let log = logs.join(format!("round-{round}.log"));
        let worker = WorkerProcess::start(
            specflow_test_support::specflow_binary!(),
            &config,
            &log,
            &[],
        );
        wait_for_log(&log, "Consuming.", Duration::from_secs(120)).await;

        // One stream through the worker: every record it should make reaches the output topic.
        let pcm = synthetic_pcm(round as u64, 2.0);
        let chunks = fixed_chunks("cold-stream", &pcm, 1_600);
        let streams = vec![("cold-stream".to_string(), chunks.clone())];
        let expected = expected_records(&streams, &settings.dsp);
        let producer = producer_for(&brokers);
        try_send_all(&producer, &names.input, &chunks)
            .await
            .unwrap_or_else(|e| panic!("round {round}: cannot send the stream: {e}"));
        let records = consume_from(
            &brokers,
            &names.output,
            expected.len(),
            Duration::from_secs(60),
        )
        .await;
        let ids = record_ids(&records);
        let missing: Vec<_> = expected.keys().filter(|id| !ids.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: records missing from the output topic: {missing:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        worker.terminate(Duration::from_secs(30));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !text.contains("does not exist") && !text.contains("Exiting with an error"),
            "round {round}: the worker reported an error:\n{text}"
        );
    }
}
