//! `specflow inspect`: prints the latest feature records from the output topic and how many
//! records MongoDB holds (a quick look at a running deployment).

use anyhow::Context as _;
use mongodb::bson::doc;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::time::Duration;

use crate::config::Settings;

/// Prints up to `records` records from the start of the output topic (waiting at most
/// `wait`), then the MongoDB document count. Returns (records printed, documents stored).
pub async fn inspect(
    settings: &Settings,
    records: usize,
    wait: Duration,
) -> anyhow::Result<(usize, u64)> {
    let mut config = settings
        .kafka
        .client_config(&settings.kafka.consumer)
        .map_err(|p| anyhow::anyhow!("{p}"))?;
    let group = format!("specflow-inspect-{}", std::process::id());
    config
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    let consumer: StreamConsumer = config.create().context("cannot create consumer")?;
    consumer
        .subscribe(&[&settings.output.topic])
        .context("cannot subscribe")?;
    let mut printed = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while printed < records {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => {
                let text = String::from_utf8_lossy(message.payload().unwrap_or_default());
                let shown: String = text.chars().take(600).collect();
                println!("{}{}", shown, if text.len() > 600 { " …" } else { "" });
                printed += 1;
            }
            Ok(Err(e)) => return Err(e).context("consume failed"),
            Err(_) => break,
        }
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
    Ok((printed, stored))
}
