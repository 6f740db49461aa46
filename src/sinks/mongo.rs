//! MongoDB sink: one document per feature record, written idempotently.
//!
//! Each document's `_id` is `"<stream_id>:<first_frame>"`, derived from the record alone, so a
//! replayed record maps onto the document it already wrote. Writes are unordered
//! `insert_many`; duplicate-key errors (code 11000) count as success.

use mongodb::bson::{Document, RawDocumentBuf, doc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::SinkError;
use crate::record::DocumentLayout;
use crate::secret::{Secret, read_secret, redact_uri};
use crate::telemetry::health::Health;
use crate::validation::Problem;

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// The largest `mongo.insert_max_bytes`: 48 MiB, the largest message MongoDB takes.
pub const INSERT_MAX_BYTES_LIMIT: usize = 48 << 20;

/// `[mongo]`: where feature records are stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoSinkConfig {
    /// Store feature records in MongoDB. Off: the output topic is the only sink (feed MongoDB
    /// from it with Kafka Connect, for example).
    pub enabled: bool,
    /// Connection string; credentials and TLS options go here (`mongodb://user:pw@host/?tls=true`).
    pub uri: String,
    /// File whose contents (trimmed) are the connection string; wins over `uri`.
    pub uri_file: Option<String>,
    /// Database name.
    pub database: String,
    /// Collection name.
    pub collection: String,
    /// Create the query indexes at startup.
    pub create_indexes: bool,
    /// First retry delay after a failed write, in milliseconds (doubles, with jitter).
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// Server selection / connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Records already on the output topic that may wait for MongoDB at once. The worker goes
    /// on consuming while MongoDB catches up, and waits when this many wait (at least
    /// `source.batch_max_messages` are let through).
    pub max_pending_records: usize,
    /// Inserts in flight at once. Partitions are dealt over them, so a partition's (and a
    /// stream's) documents are still stored in order.
    pub concurrent_writes: usize,
    /// Largest `insert_many` call, in document bytes: a writer's documents go out in calls of
    /// at most this many bytes, one after the other (a single larger document goes alone).
    /// The driver copies each call's documents three times into fresh buffers; smaller calls
    /// keep those buffers small and reused.
    pub insert_max_bytes: usize,
    /// Document layout: `frames` (per-frame objects, as on the output topic) or `columns`
    /// (one packed float32 vector per feature; smaller and faster to insert).
    pub layout: DocumentLayout,
}

impl Default for MongoSinkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            uri: "mongodb://127.0.0.1:27017".into(),
            uri_file: None,
            database: "specflow".into(),
            collection: "features".into(),
            create_indexes: true,
            retry_initial_ms: 200,
            retry_max_ms: 5_000,
            connect_timeout_ms: 5_000,
            max_pending_records: 5_000,
            concurrent_writes: 2,
            insert_max_bytes: 1 << 20,
            layout: DocumentLayout::Frames,
        }
    }
}

impl MongoSinkConfig {
    /// Every problem with these settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.uri_file.is_none()
            && !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://"))
        {
            problems.push(Problem::new(
                "mongo.uri",
                redact_uri(&self.uri),
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        if let Some(path) = &self.uri_file
            && std::fs::metadata(path).is_err()
        {
            problems.push(Problem::new(
                "mongo.uri_file",
                path,
                "file does not exist or is not readable",
            ));
        }
        if self.database.is_empty() || self.database.contains(['/', '\\', '.', ' ', '"', '$']) {
            problems.push(Problem::new(
                "mongo.database",
                &self.database,
                "must be non-empty without / \\ . space \" $",
            ));
        }
        if self.collection.is_empty()
            || self.collection.starts_with("system.")
            || self.collection.contains('$')
        {
            problems.push(Problem::new(
                "mongo.collection",
                &self.collection,
                "must be non-empty, without $, not system.*",
            ));
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            problems.push(Problem::new(
                "mongo.retry_max_ms",
                self.retry_max_ms,
                "retry_initial_ms must be at least 1 and retry_max_ms at least retry_initial_ms",
            ));
        }
        if !(1..=64).contains(&self.concurrent_writes) {
            problems.push(Problem::new(
                "mongo.concurrent_writes",
                self.concurrent_writes,
                "must be between 1 and 64",
            ));
        }
        if !(1024..=INSERT_MAX_BYTES_LIMIT).contains(&self.insert_max_bytes) {
            problems.push(Problem::new(
                "mongo.insert_max_bytes",
                self.insert_max_bytes,
                "must be between 1024 and 50331648 (48 MiB, MongoDB's largest message)",
            ));
        }
        if self.max_pending_records == 0 {
            problems.push(Problem::new(
                "mongo.max_pending_records",
                self.max_pending_records,
                "must be at least 1",
            ));
        }
        problems
    }

    /// The backoff of MongoDB write retries: (first, longest) wait in milliseconds.
    pub fn retry_ms(&self) -> (u64, u64) {
        (self.retry_initial_ms, self.retry_max_ms)
    }

    /// Connects (lazily; the driver reconnects on its own) and prepares the collection.
    pub async fn build(&self) -> Result<MongoSink, SinkError> {
        let uri = read_secret(
            "mongo.uri_file",
            &Secret::new(self.uri.clone()),
            &self.uri_file,
        )?;
        let mut options = ClientOptions::parse(&uri).await?;
        options.app_name.get_or_insert_with(|| "specflow".into());
        options.server_selection_timeout = Some(Duration::from_millis(self.connect_timeout_ms));
        options.connect_timeout = Some(Duration::from_millis(self.connect_timeout_ms));
        let client = Client::with_options(options)?;
        let collection = client
            .database(&self.database)
            .collection::<Document>(&self.collection);
        Ok(MongoSink {
            client,
            collection,
            database: self.database.clone(),
            create_indexes: self.create_indexes,
            insert_max_bytes: self.insert_max_bytes,
        })
    }
}

/// How often [`MongoSink::probe_readiness`] pings the server.
pub const READINESS_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// A connected MongoDB collection of feature records.
#[derive(Clone)]
pub struct MongoSink {
    client: Client,
    collection: Collection<Document>,
    database: String,
    create_indexes: bool,
    insert_max_bytes: usize,
}

impl MongoSink {
    /// The collection records go to.
    pub fn collection(&self) -> &Collection<Document> {
        &self.collection
    }

    /// Creates the index that serves "frames of stream S between two times" (a no-op when it
    /// exists). Restart recovery reads the checkpoint topic, never MongoDB.
    pub async fn ensure_indexes(&self) -> Result<(), SinkError> {
        if !self.create_indexes {
            return Ok(());
        }
        let by_time = IndexModel::builder()
            .keys(doc! { "stream_id": 1, "start_ms": 1, "end_ms": 1 })
            .options(
                IndexOptions::builder()
                    .name("stream_time".to_string())
                    .build(),
            )
            .build();
        // Only create what is missing: re-creating existing indexes is a no-op on MongoDB but
        // crashes the connection on FerretDB 1.24.
        let existing = match self.collection.list_index_names().await {
            Ok(names) => names,
            Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 26) => {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        let missing: Vec<IndexModel> = [by_time]
            .into_iter()
            .filter(|m| {
                m.options
                    .as_ref()
                    .and_then(|o| o.name.as_ref())
                    .is_none_or(|n| !existing.contains(n))
            })
            .collect();
        if !missing.is_empty() {
            self.collection.create_indexes(missing).await?;
        }
        Ok(())
    }

    /// Answers when the server is reachable.
    pub async fn ping(&self) -> Result<(), SinkError> {
        self.client
            .database(&self.database)
            .run_command(doc! { "ping": 1 })
            .await?;
        Ok(())
    }

    /// Inserts `docs` unordered, in calls of at most `mongo.insert_max_bytes`; documents that
    /// already exist (same `_id`) count as written. On an error the calls before it stayed
    /// stored, and storing them again is harmless.
    pub async fn insert_idempotent(&self, docs: &[RawDocumentBuf]) -> Result<(), SinkError> {
        let raw = self.collection.clone_with_type::<RawDocumentBuf>();
        for call in insert_calls(docs, self.insert_max_bytes) {
            insert_call(&raw, call).await?;
        }
        Ok(())
    }

    /// Creates the query indexes, retrying every second until the server answers (or
    /// `shutdown`); MongoDB may be down when the worker starts.
    pub async fn create_indexes_when_up(&self, health: &Health, shutdown: &CancellationToken) {
        loop {
            match self.ensure_indexes().await {
                Ok(()) => {
                    health.set_mongo_ok(true);
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "MongoDB not reachable yet; its indexes are created once it is.");
                    health.set_mongo_ok(false);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// The readiness probe: pings the server every [`READINESS_PROBE_INTERVAL`] until
    /// `shutdown`, so that readiness follows MongoDB even while no batch is being written
    /// (failed writes also report it at once).
    pub async fn probe_readiness(&self, health: &Health, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(READINESS_PROBE_INTERVAL) => {}
            }
            health.set_mongo_ok(self.ping().await.is_ok());
        }
    }

    /// Closes the client: ends its sessions and waits for its background tasks (without this,
    /// dropping the last handle can panic in the driver at exit).
    pub async fn shutdown(self) {
        self.client.shutdown().await;
    }
}

/// `docs` cut into consecutive runs of at most `max_bytes` document bytes (a larger document
/// alone).
fn insert_calls(docs: &[RawDocumentBuf], max_bytes: usize) -> Vec<&[RawDocumentBuf]> {
    let mut calls = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, doc) in docs.iter().enumerate() {
        let len = doc.as_bytes().len();
        if i > start && bytes + len > max_bytes {
            calls.push(&docs[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < docs.len() {
        calls.push(&docs[start..]);
    }
    calls
}

/// One unordered `insert_many`; duplicate-key errors alone count as success.
async fn insert_call(
    collection: &Collection<RawDocumentBuf>,
    docs: &[RawDocumentBuf],
) -> Result<(), SinkError> {
    // The stock driver serialises each raw document once more on its way to the socket; a
    // borrowing raw insert is proposed upstream (docs/upstream/README.md).
    match collection.insert_many(docs).ordered(false).await {
        Ok(_) => Ok(()),
        Err(e) => {
            if let mongodb::error::ErrorKind::InsertMany(failure) = e.kind.as_ref() {
                let only_duplicates = failure.write_concern_error.is_none()
                    && failure
                        .write_errors
                        .as_ref()
                        .is_some_and(|errors| errors.iter().all(|w| w.code == DUPLICATE_KEY));
                if only_duplicates {
                    return Ok(());
                }
            }
            Err(SinkError::Mongo(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::rawdoc;

    fn doc_of(len: usize) -> RawDocumentBuf {
        let mut doc = rawdoc! { "p": "" };
        let base = doc.as_bytes().len();
        doc = rawdoc! { "p": "x".repeat(len - base) };
        assert_eq!(doc.as_bytes().len(), len);
        doc
    }

    #[test]
    fn insert_max_bytes_is_checked_against_both_bounds() {
        let problems_at = |insert_max_bytes| {
            MongoSinkConfig {
                insert_max_bytes,
                ..MongoSinkConfig::default()
            }
            .validate()
            .iter()
            .filter(|p| p.key == "mongo.insert_max_bytes")
            .count()
        };
        assert_eq!(problems_at(1023), 1);
        assert_eq!(problems_at(1024), 0);
        assert_eq!(problems_at(INSERT_MAX_BYTES_LIMIT), 0);
        assert_eq!(problems_at(INSERT_MAX_BYTES_LIMIT + 1), 1);
    }

    #[test]
    fn insert_calls_cover_every_document_in_order_within_the_byte_budget() {
        let docs: Vec<RawDocumentBuf> = [100, 300, 250, 600, 50, 50, 1000, 20]
            .into_iter()
            .map(doc_of)
            .collect();
        let calls = insert_calls(&docs, 600);
        let sizes: Vec<Vec<usize>> = calls
            .iter()
            .map(|call| call.iter().map(|d| d.as_bytes().len()).collect())
            .collect();
        assert_eq!(
            sizes,
            vec![
                vec![100, 300],
                vec![250],
                vec![600],
                vec![50, 50],
                vec![1000],
                vec![20]
            ]
        );
        assert!(insert_calls(&[], 600).is_empty());
        assert_eq!(insert_calls(&docs, usize::MAX).len(), 1);
    }
}
