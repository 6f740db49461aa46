//! The batch types the pipeline's stages hand each other: what compute produces
//! ([`PartitionResult`], [`Outcome`]), what delivery sends to Kafka ([`Outbox`]) and what the
//! store writers store ([`StoreJob`]). The stages depend on this file, not on each other.

use bytes::Bytes;
use mongodb::bson::RawDocumentBuf;

use crate::record::EncodedRecord;
use crate::sinks::dead_letter::DeadLetter;

/// Checkpoint records of one partition: per stream id, a value or a tombstone.
pub(super) type CheckpointRecords = Vec<(String, Option<Vec<u8>>)>;

/// A batch (its share for one writer) whose records and dead letters Kafka acknowledged, on its
/// way to MongoDB and the checkpoint topic. Its offsets are stored once both acknowledged it.
#[derive(Default)]
pub(super) struct StoreJob {
    pub(super) documents: Vec<RawDocumentBuf>,
    pub(super) end_ms: Vec<i64>,
    /// Checkpoint records per partition, in the order they were taken.
    pub(super) checkpoints: Vec<(i32, CheckpointRecords)>,
    /// Next offset to consume, per partition.
    pub(super) offsets: std::collections::BTreeMap<i32, i64>,
    /// Room taken in the pending-records budget, given back when the job is dropped.
    pub(super) room: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl StoreJob {
    /// Appends a later job: one insert for both, checkpoints in order, and the later offsets win.
    pub(super) fn absorb(&mut self, later: StoreJob) {
        self.documents.extend(later.documents);
        self.end_ms.extend(later.end_ms);
        self.checkpoints.extend(later.checkpoints);
        self.offsets.extend(later.offsets);
        self.room.extend(later.room);
    }

    /// Nothing to store, nothing to commit.
    pub(super) fn is_empty(&self) -> bool {
        self.documents.is_empty() && self.checkpoints.is_empty() && self.offsets.is_empty()
    }
}

/// What became of one input message.
pub(super) enum Outcome {
    /// Frames were computed: send this record.
    Record(Box<EncodedRecord>),
    /// Nothing to send (no frame completed, or a replay of a message handled before the
    /// stream's checkpoint).
    Nothing,
    /// Malformed: send to the dead-letter topic.
    Dead(Box<DeadLetter>, &'static str),
}

/// What one partition's DSP pass produced: its messages' outcomes and the checkpoints of the
/// streams they touched.
pub(super) struct PartitionResult {
    /// The input partition.
    pub(super) partition: i32,
    /// One outcome per message, in offset order.
    pub(super) outcomes: Vec<Outcome>,
    /// The checkpoint records of the streams the messages touched.
    pub(super) checkpoints: CheckpointRecords,
}

/// A feature record on its way to the output topic.
pub(super) struct OutputRecord {
    /// The stream id: the record's key.
    pub(super) key: String,
    /// The record's JSON (shared by the sends of its retries).
    pub(super) json: Bytes,
    /// The end of its last frame, Unix milliseconds (for the end-to-end latency).
    pub(super) end_ms: i64,
}

/// What one batch sends to Kafka, in offset order per partition.
#[derive(Default)]
pub(super) struct Outbox {
    /// Feature records (empty when `output.enabled` is off).
    pub(super) records: Vec<OutputRecord>,
    /// Rejected messages, with the reason label of `specflow_dead_letters_total`.
    pub(super) letters: Vec<(DeadLetter, &'static str)>,
}
