//! Operations against the real local services: the HTTP endpoint while the worker runs
//! (`/metrics` counters agree with what was produced; `/healthz`, `/readyz`), and secrets never
//! reaching logs, errors, `/metrics` or `check --print`.

use specflow_test_support::testing as common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// GETs `path` until it answers 200 or `timeout` passes; the last answer.
async fn get_until_ok(address: &str, path: &str, timeout: Duration) -> (u16, String) {
    let mut answer = (0, String::new());
    eventually(timeout, async || {
        answer = http_get(address, path).await;
        answer.0 == 200
    })
    .await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_follow_the_work() {
    let names = Names::new("ops");
    create_topics(&names, 2).await;
    let mut settings = settings(&names);
    settings.http.enabled = true;
    settings.http.address = "127.0.0.1:0".into();
    settings.log.format = specflow::telemetry::LogFormat::Json;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("specflow.toml");
    write_config(&config, &settings);
    let log = dir.path().join("worker.log");
    let child = WorkerProcess::start(
        specflow_test_support::specflow_binary!(),
        &config,
        &log,
        &[],
    );
    let text = wait_for_log(&log, "HTTP endpoint listening", Duration::from_secs(60)).await;
    let line = text
        .lines()
        .find(|l| l.contains("HTTP endpoint listening"))
        .unwrap();
    let logged: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    let address = logged["address"]
        .as_str()
        .expect("address field")
        .to_string();

    let (status, body) = get_until_ok(&address, "/healthz", Duration::from_secs(20)).await;
    assert_eq!(status, 200, "healthz: {body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "ok"
    );

    // Ready while idle: partitions assigned and both services reachable, before any message
    // (broker reachability comes from the assignment, then librdkafka's statistics every 5 s).
    let (status, body) = get_until_ok(&address, "/readyz", Duration::from_secs(30)).await;
    assert_eq!(status, 200, "readyz before the first message: {body}");

    let streams = synthetic_streams("ops", 3, 1, 2.0);
    let expected = expected_records(&streams, &settings.dsp);
    let frames: i64 = expected
        .values()
        .map(|f| f.as_array().unwrap().len() as i64)
        .sum();
    let mut all: Vec<Chunk> = streams.iter().flat_map(|(_, c)| c.clone()).collect();
    let produced = all.len();
    let bytes: usize = all.iter().map(|c| c.payload.len()).sum();
    all.push(Chunk {
        key: Some(b"ops-bad".to_vec()),
        payload: vec![1, 2, 3],
        headers: vec![],
    });
    send_all(&producer(), &names.input, &all).await;
    let collection = collection(&names).await;
    wait_for_frames(&collection, frames, Duration::from_secs(120)).await;

    let mut body = String::new();
    let caught_up = eventually(Duration::from_secs(30), async || {
        let (status, text) = http_get(&address, "/metrics").await;
        assert_eq!(status, 200);
        body = text;
        metric(&body, "specflow_dead_letters_total") >= 1.0
            && metric(&body, "specflow_records_produced_total") >= expected.len() as f64
    })
    .await;
    assert!(caught_up, "metrics did not catch up:\n{body}");
    assert_eq!(
        metric(&body, "specflow_messages_consumed_total"),
        (produced + 1) as f64
    );
    assert_eq!(
        metric(&body, "specflow_bytes_consumed_total"),
        (bytes + 3) as f64
    );
    assert_eq!(
        metric(&body, "specflow_frames_computed_total"),
        frames as f64
    );
    assert_eq!(
        metric(&body, "specflow_records_produced_total"),
        expected.len() as f64
    );
    assert_eq!(
        metric(&body, "specflow_mongo_documents_written_total"),
        expected.len() as f64
    );
    assert_eq!(metric(&body, "specflow_dead_letters_total"), 1.0);
    assert!(
        body.contains("specflow_dead_letters_total{reason=\"ragged_payload\"} 1"),
        "{body}"
    );
    assert_eq!(metric(&body, "specflow_assigned_partitions"), 2.0);
    assert!(metric(&body, "specflow_end_to_end_latency_seconds_count") >= expected.len() as f64);
    assert!(metric(&body, "specflow_processing_seconds_count") >= 1.0);
    assert!(metric(&body, "specflow_mongo_write_seconds_count") >= 1.0);
    assert!(body.contains("specflow_rebalances_total"));
    let (status, body) = http_get(&address, "/readyz").await;
    assert_eq!(status, 200, "readyz: {body}");

    // Consumer lag comes from librdkafka statistics (every 5 s): it settles at zero.
    let mut body = String::new();
    let settled = eventually(Duration::from_secs(20), async || {
        body = http_get(&address, "/metrics").await.1;
        body.contains("specflow_consumer_lag{partition=\"0\"} 0")
            && body.contains("specflow_consumer_lag{partition=\"1\"} 0")
    })
    .await;
    assert!(settled, "consumer lag not reported as 0:\n{body}");
    child.terminate(Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_errors_metrics_or_check_print() {
    const KAFKA_SECRET: &str = "kafka-Secret-Value-913";
    const KEY_SECRET: &str = "key-Secret-Value-771";
    const MONGO_SECRET: &str = "mongo-Secret-Value-402";
    let names = Names::new("secrets");
    create_topics(&names, 1).await;
    let mut settings = settings(&names);
    settings.http.enabled = true;
    settings.http.address = "127.0.0.1:0".into();
    settings.log.level = "debug".into();
    settings.log.format = specflow::telemetry::LogFormat::Json;
    settings.mongo.connect_timeout_ms = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("specflow.toml");
    write_config(&config, &settings);
    let secret_file = dir.path().join("key-password");
    std::fs::write(&secret_file, KEY_SECRET).unwrap();
    let mongo_uri = format!("mongodb://specflow:{MONGO_SECRET}@127.0.0.1:1/?authSource=admin");
    let env = [
        ("SPECFLOW__KAFKA__SASL_PASSWORD", KAFKA_SECRET),
        (
            "SPECFLOW__KAFKA__SSL_KEY_PASSWORD_FILE",
            secret_file.to_str().unwrap(),
        ),
        ("SPECFLOW__MONGO__URI", mongo_uri.as_str()),
    ];

    let check = Command::new(env!("CARGO_BIN_EXE_specflow"))
        .args(["check", "--print", "--config"])
        .arg(&config)
        .envs(env)
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(printed.contains("<redacted>"), "{printed}");

    // MongoDB on port 1 is unreachable: the worker logs connection errors that carry the URI's host.
    let log = dir.path().join("worker.log");
    let child = WorkerProcess::start(
        specflow_test_support::specflow_binary!(),
        &config,
        &log,
        &env,
    );
    let text = wait_for_log(&log, "MongoDB not reachable yet", Duration::from_secs(60)).await;
    let line = text
        .lines()
        .find(|l| l.contains("HTTP endpoint listening"))
        .expect("http line");
    let logged: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    let address = logged["address"]
        .as_str()
        .expect("address field")
        .to_string();
    let (_, metrics) = http_get(&address, "/metrics").await;
    let (_, ready) = http_get(&address, "/readyz").await;
    // The worker may still be retrying MongoDB at startup: SIGKILL after a short drain.
    child.terminate_or_kill(Duration::from_secs(10));
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [KAFKA_SECRET, KEY_SECRET, MONGO_SECRET] {
        assert!(
            !printed.contains(secret),
            "{secret} in check --print:\n{printed}"
        );
        assert!(
            !text.contains(secret),
            "{secret} in the worker log:\n{text}"
        );
        assert!(!metrics.contains(secret), "{secret} in /metrics");
        assert!(!ready.contains(secret), "{secret} in /readyz");
    }
}

/// Names of this process's threads (`/proc/self/task/*/comm`).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_producer_reports_each_delivery_and_its_thread_ends_with_the_last_handle() {
    let names = Names::new("producer");
    create_topics(&names, 1).await;
    let settings = settings(&names);
    let sink = settings
        .output
        .build(&settings.kafka, None)
        .expect("output producer");
    let thread = sink.producer().thread_name().to_string();
    let running = || thread_names().contains(&thread);
    // The thread names itself once it starts.
    let started = eventually(Duration::from_secs(5), async || running()).await;
    assert!(started, "{thread} not among {:?}", thread_names());

    // Each acknowledgement names where the message went: partition 0, consecutive offsets.
    let mut offsets = Vec::new();
    for i in 0..3 {
        let payload = format!("record {i}");
        let record = rdkafka::producer::FutureRecord::to(sink.topic())
            .key("stream")
            .payload(payload.as_bytes());
        let delivery = sink.producer().enqueue(record).expect("queued");
        let stored = delivery.acknowledged().await.expect("acknowledged");
        assert_eq!(stored.partition, 0);
        offsets.push(stored.offset);
    }
    assert_eq!(offsets, [offsets[0], offsets[0] + 1, offsets[0] + 2]);
    sink.send_record(b"stream", bytes::Bytes::from_static(b"awaited"))
        .await
        .expect("send");
    let received = consume(sink.topic(), 4, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 4);

    // A clone shares the thread; dropping every handle ends it within its one-second poll.
    let clone = sink.clone();
    drop(sink);
    assert!(
        holds_for(Duration::from_millis(1_500), async || running()).await,
        "{thread} ended while a clone was alive"
    );
    drop(clone);
    let ended = eventually(Duration::from_secs(10), async || !running()).await;
    assert!(
        ended,
        "{thread} outlived its producer: {:?}",
        thread_names()
    );
}
