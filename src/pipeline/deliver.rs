//! Deliver: a batch's feature records (when `output.enabled`) and dead letters go to Kafka,
//! and the batch goes on only once every one is acknowledged; failed sends are re-sent, with
//! the partitions paused, under the `output.retry_*` backoff.

use futures::future::join_all;
use std::time::Instant;
use tracing::{debug, warn};

use super::backpressure::Backoff;
use super::compute::{Outcome, PartitionResult};
use super::{Sinks, now_ms};
use crate::record::EncodedRecord;
use crate::sinks::SinkError;
use crate::sinks::dead_letter::DeadLetter;
use crate::telemetry::metrics::Metrics;

/// Sends the records (when `send_records`) and dead letters of `processed` and waits for every
/// acknowledgement. With MongoDB off the end-to-end latency is observed here, at the output
/// topic's acknowledgement.
pub(super) async fn send_to_kafka(
    processed: &[PartitionResult],
    sinks: &Sinks,
    send_records: bool,
    metrics: &Metrics,
    mut backoff: Backoff<'_>,
) -> Result<(), SinkError> {
    let mut records: Vec<&EncodedRecord> = Vec::new();
    let mut letters: Vec<(&DeadLetter, &'static str)> = Vec::new();
    for result in processed {
        for outcome in &result.outcomes {
            match outcome {
                Outcome::Record(record) if send_records => records.push(record),
                Outcome::Dead(letter, reason) => letters.push((letter, reason)),
                Outcome::Record(_) | Outcome::Nothing => {}
            }
        }
    }

    let started = Instant::now();
    // Kafka: records and dead letters, all acknowledged (failed ones are re-sent).
    let mut pending_records: Vec<&EncodedRecord> = records.clone();
    let mut pending_letters = letters.clone();
    loop {
        let record_sends = pending_records
            .iter()
            .map(|r| sinks.output.send_record(r.key.as_bytes(), &r.json));
        let letter_sends = pending_letters
            .iter()
            .map(|(l, _)| sinks.dead_letters.send(l));
        let (record_results, letter_results) =
            futures::join!(join_all(record_sends), join_all(letter_sends));
        let mut first_error = None;
        let mut still_records = Vec::new();
        let now = now_ms();
        for (record, result) in pending_records.iter().zip(record_results) {
            match result {
                Ok(()) => {
                    metrics.records_produced_total.inc();
                    if sinks.mongo.is_none() {
                        metrics
                            .end_to_end_latency_seconds
                            .observe((now - record.end_ms).max(0) as f64 / 1000.0);
                    }
                }
                Err(e) => {
                    still_records.push(*record);
                    first_error.get_or_insert(e);
                }
            }
        }
        let mut still_letters = Vec::new();
        for ((letter, reason), result) in pending_letters.iter().zip(letter_results) {
            match result {
                Ok(()) => {
                    metrics.dead_letter(reason);
                    warn!(topic = %letter.topic, partition = letter.partition, offset = letter.offset, error = %letter.error, "Message dead-lettered.");
                }
                Err(e) => {
                    still_letters.push((*letter, *reason));
                    first_error.get_or_insert(e);
                }
            }
        }
        pending_records = still_records;
        pending_letters = still_letters;
        match first_error {
            None => break,
            Some(e) => backoff.failed(e).await?,
        }
    }
    backoff.succeeded();

    debug!(
        records = records.len(),
        kafka_ms = started.elapsed().as_millis() as u64,
        "Batch sent."
    );
    Ok(())
}
