//! `specflow inspect`: prints the first feature records of the output topic, one summary line
//! per stream (frames, voiced frames, mean f0) and how many records MongoDB holds: a quick look
//! at a running deployment.

use anyhow::Context as _;
use mongodb::bson::doc;
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use specflow::config::Settings;

/// What `inspect` saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InspectReport {
    /// Records printed.
    pub printed: usize,
    /// Records read from the output topic.
    pub records: usize,
    /// Per stream id, what its records hold.
    pub streams: BTreeMap<String, StreamSummary>,
    /// Documents in the MongoDB collection (`None` when `mongo.enabled` is off).
    pub stored: Option<u64>,
}

/// Frames, voiced frames and mean f0 of one stream's records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSummary {
    /// Frames in its records.
    pub frames: u64,
    /// Frames with a pitch.
    pub voiced: u64,
    /// Sum of f0 over the voiced frames, Hz.
    pub f0_sum: f64,
}

impl StreamSummary {
    /// Mean f0 of the voiced frames, Hz.
    pub fn mean_f0(&self) -> Option<f64> {
        (self.voiced > 0).then(|| self.f0_sum / self.voiced as f64)
    }
}

/// The parts of an output record `inspect` reads.
#[derive(Deserialize)]
struct RecordFrames {
    stream_id: String,
    frames: Vec<FramePitch>,
}

#[derive(Deserialize)]
struct FramePitch {
    #[serde(default)]
    f0: Option<f64>,
}

/// Consumer context that takes "end of partition" for what it is here: the signal to stop, not
/// an error worth logging.
struct ReadToEnd;

impl ClientContext for ReadToEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !end_of_partition {
            tracing::error!(%error, reason, "Kafka client error.");
        }
    }
}

impl ConsumerContext for ReadToEnd {}

/// Reads the output topic from its start until it has caught up with every partition (or
/// `wait` has passed), printing the first `records` records and summarising every stream, then
/// counts the MongoDB documents.
pub async fn inspect(
    settings: &Settings,
    records: usize,
    wait: Duration,
) -> anyhow::Result<InspectReport> {
    let mut config = settings.kafka.client_config(&settings.kafka.consumer)?;
    let group = format!("specflow-inspect-{}", std::process::id());
    config
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: StreamConsumer<ReadToEnd> = config
        .create_with_context(ReadToEnd)
        .context("cannot create consumer")?;
    consumer
        .subscribe(&[&settings.output.topic])
        .context("cannot subscribe")?;
    let partitions = consumer
        .fetch_metadata(Some(&settings.output.topic), Duration::from_secs(10))
        .context("cannot read the output topic's metadata")?
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    let mut report = InspectReport::default();
    let mut at_end = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + wait;
    // Until every partition reports its end once something was read (an empty topic waits for
    // its first record until the deadline).
    while report.records == 0 || at_end.len() < partitions {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => {
                at_end.remove(&message.partition());
                let payload = message.payload().unwrap_or_default();
                report.records += 1;
                if report.printed < records {
                    let text = String::from_utf8_lossy(payload);
                    let shown: String = text.chars().take(600).collect();
                    println!("{}{}", shown, if text.len() > 600 { " …" } else { "" });
                    report.printed += 1;
                }
                if let Ok(record) = serde_json::from_slice::<RecordFrames>(payload) {
                    let stream = report.streams.entry(record.stream_id).or_default();
                    stream.frames += record.frames.len() as u64;
                    for f0 in record.frames.iter().filter_map(|f| f.f0) {
                        stream.voiced += 1;
                        stream.f0_sum += f0;
                    }
                }
            }
            Ok(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Ok(Err(e)) => return Err(e).context("consume failed"),
            Err(_) => break,
        }
    }
    println!(
        "output topic {}: {} records from {} streams",
        settings.output.topic,
        report.records,
        report.streams.len()
    );
    for (id, stream) in &report.streams {
        let mean = stream
            .mean_f0()
            .map_or_else(|| "-".to_string(), |f| format!("{f:.1} Hz"));
        println!(
            "stream {id}: {} frames, {} voiced, mean f0 {mean}",
            stream.frames, stream.voiced
        );
    }
    let mongo = settings
        .mongo
        .build()
        .await
        .context("cannot configure MongoDB client")?;
    let stored = mongo
        .collection()
        .count_documents(doc! {})
        .await
        .context("cannot count MongoDB documents")?;
    println!(
        "mongodb {}.{}: {} feature records stored",
        settings.mongo.database, settings.mongo.collection, stored
    );
    report.stored = Some(stored);
    Ok(report)
}
