//! The output producer waits for its acknowledgements without spinning. librdkafka's idempotent
//! producer sends nothing more for a partition while 5 or more of its messages are in flight;
//! its broker thread then polls the socket with a zero timeout until the response comes
//! (docs/upstream/README.md, confluentinc/librdkafka#4989). The stock librdkafka still does, so
//! the test is ignored: run it with `--ignored` after an upgrade to see whether it is fixed.
//! librdkafka's mock cluster (its own test broker, in this process) holds every response back for a fixed round trip, so a burst waits for many
//! round trips in a row: long enough to tell a waiting thread from a spinning one by CPU time.
//! The test is alone in its binary, so the process's CPU time is this producer's.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureRecord;
use specflow::config::Settings;
use std::time::{Duration, Instant};

/// CPU seconds this process has used (user + system).
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "upstream defect: librdkafka's idempotent producer busy-polls while a partition is capped at 5 in flight (confluentinc/librdkafka#4989, docs/upstream/README.md)"]
async fn the_output_producer_does_not_spin_while_a_partition_waits_for_its_acknowledgement() {
    const TOPIC: &str = "records";
    const ROUND_TRIP: Duration = Duration::from_millis(200);
    const RECORDS: usize = 40;
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    cluster
        .broker_round_trip_time(1, ROUND_TRIP)
        .expect("round trip");

    let mut settings = Settings::default();
    settings.kafka.brokers = cluster.bootstrap_servers();
    settings.output.topic = TOPIC.to_string();
    // Five records per request: one request in flight already holds the partition's five.
    settings
        .kafka
        .producer
        .insert("batch.num.messages".into(), "5".into());
    let sink = settings
        .output
        .build(&settings.kafka, None)
        .expect("output producer");
    // Connect and fetch the producer id first, so the burst below only waits for the cap.
    sink.send_record(b"stream", bytes::Bytes::from_static(b"warm-up"))
        .await
        .expect("warm-up");

    let wall = Instant::now();
    let cpu = process_cpu_seconds();
    let deliveries: Vec<_> = (0..RECORDS)
        .map(|i| {
            let payload = format!("record {i}");
            let record = FutureRecord::to(TOPIC)
                .key("stream")
                .payload(payload.as_bytes());
            sink.producer().enqueue(record).expect("queued")
        })
        .collect();
    let mut offsets = Vec::new();
    for delivery in deliveries {
        offsets.push(delivery.acknowledged().await.expect("acknowledged").offset);
    }
    let cpu = process_cpu_seconds() - cpu;
    let wall = wall.elapsed().as_secs_f64();
    eprintln!("{RECORDS} records in {wall:.2} s, process CPU {cpu:.3} s");

    // In order, each once.
    let expected: Vec<i64> = (0..RECORDS as i64).map(|i| offsets[0] + i).collect();
    assert_eq!(offsets, expected);
    // The burst took one round trip per request, one request at a time.
    let requests = RECORDS.div_ceil(5) as f64;
    assert!(
        wall >= 0.8 * requests * ROUND_TRIP.as_secs_f64(),
        "the burst took {wall:.2} s: the round trips did not hold it back, so this test \
         measured nothing"
    );
    // A thread polling with a zero timeout takes a whole core for all of that time; a waiting
    // one takes a few milliseconds.
    assert!(
        cpu < 0.25 * wall,
        "the process used {cpu:.2} s of CPU in {wall:.2} s while it waited for acknowledgements: \
         the producer's broker thread is busy-polling"
    );
}
