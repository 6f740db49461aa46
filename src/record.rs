//! The feature record: one per input message that completes at least one frame.
//!
//! Serialised as JSON for the output topic and as BSON for MongoDB from the same view, so the
//! two can never disagree. Everything in it is derived from the message and the stream's
//! samples, which makes a replayed record identical to the original.

use mongodb::bson::{self, Document};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::dsp::FrameBatch;

/// Version of the record layout; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a record's input message came from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SourcePosition {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// The chunk's capture time (`audio.timestamp_ms`, else the Kafka timestamp), Unix ms.
    pub timestamp_ms: Option<i64>,
}

/// A borrowed view of one record: the frames one message completed, plus their context.
pub struct FeatureRecord<'a> {
    /// Stream id.
    pub stream_id: &'a str,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Frame length in samples.
    pub frame_length: usize,
    /// Hop length in samples.
    pub hop_length: usize,
    /// The frames the message completed (non-empty).
    pub batch: &'a FrameBatch,
    /// Sample index in the stream that `chunk_timestamp_ms` refers to.
    pub chunk_start_sample: u64,
    /// Capture time of `chunk_start_sample`, Unix milliseconds.
    pub chunk_timestamp_ms: i64,
    /// The input message.
    pub source: &'a SourcePosition,
}

impl FeatureRecord<'_> {
    /// Index of the first frame; with the stream id it names the record.
    pub fn first_frame(&self) -> u64 {
        self.batch.index(0)
    }

    /// Index of the last frame.
    pub fn last_frame(&self) -> u64 {
        self.batch.index(self.batch.len() - 1)
    }

    /// The deterministic record id, `"<stream_id>:<first_frame>"` (MongoDB's `_id`).
    pub fn id(&self) -> String {
        format!("{}:{}", self.stream_id, self.first_frame())
    }

    /// Capture time of a stream sample, from this chunk's timestamp.
    pub fn timestamp_of(&self, sample: u64) -> i64 {
        let delta = sample as i128 - self.chunk_start_sample as i128;
        self.chunk_timestamp_ms + (delta * 1000 / i128::from(self.sample_rate.max(1))) as i64
    }

    /// JSON bytes for the output topic.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    /// BSON document for MongoDB, with `_id` set.
    pub fn to_document(&self) -> bson::ser::Result<Document> {
        let mut doc = bson::to_document(self)?;
        doc.remove("id");
        let mut with_id = Document::new();
        with_id.insert("_id", self.id());
        with_id.extend(doc);
        Ok(with_id)
    }
}

struct Frames<'r, 'a>(&'r FeatureRecord<'a>);

struct TimedFrame<'r, 'a> {
    record: &'r FeatureRecord<'a>,
    i: usize,
}

impl Serialize for TimedFrame<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct WithTime<F> {
            #[serde(flatten)]
            frame: F,
            timestamp_ms: i64,
        }
        let batch = self.record.batch;
        WithTime {
            frame: batch.frame(self.i),
            timestamp_ms: self.record.timestamp_of(batch.start_sample(self.i)),
        }
        .serialize(serializer)
    }
}

impl Serialize for Frames<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.batch.len()))?;
        for i in 0..self.0.batch.len() {
            seq.serialize_element(&TimedFrame { record: self.0, i })?;
        }
        seq.end()
    }
}

impl Serialize for FeatureRecord<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let first = 0;
        let last = self.batch.len() - 1;
        let start_ms = self.timestamp_of(self.batch.start_sample(first));
        let end_ms = self.timestamp_of(self.batch.start_sample(last) + self.frame_length as u64);
        let mut map = serializer.serialize_map(Some(14))?;
        map.serialize_entry("schema", &SCHEMA_VERSION)?;
        map.serialize_entry("id", &self.id())?;
        map.serialize_entry("stream_id", self.stream_id)?;
        map.serialize_entry("sample_rate", &self.sample_rate)?;
        map.serialize_entry("frame_length", &(self.frame_length as i64))?;
        map.serialize_entry("hop_length", &(self.hop_length as i64))?;
        map.serialize_entry("first_frame", &(self.first_frame() as i64))?;
        map.serialize_entry("last_frame", &(self.last_frame() as i64))?;
        map.serialize_entry("frame_count", &(self.batch.len() as i64))?;
        map.serialize_entry("start_ms", &start_ms)?;
        map.serialize_entry("end_ms", &end_ms)?;
        map.serialize_entry("frames", &Frames(self))?;
        map.serialize_entry("summary", &self.batch.summaries())?;
        map.serialize_entry("source", self.source)?;
        map.end()
    }
}
