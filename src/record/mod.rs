//! The feature record: one per input message that completes at least one frame.
//!
//! Serialised as JSON for the output topic and as BSON for MongoDB by one walk over the record
//! (`encode`'s `write_fields`, generic over its `Out` writers), so both carry the same fields
//! and values. The serde view here defines the record and is the tests' reference: they check
//! that the encoders write its bytes exactly. Everything in it is derived from the message and
//! the stream's samples, which makes a replayed record identical to the original.

use mongodb::bson::binary::Vector;
use mongodb::bson::{self, RawArrayBuf, RawBson, RawDocumentBuf};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};

mod encode;

use self::encode::{BsonOut, JsonOut, Out};
use crate::audio::ChunkMeta;
use crate::audio::headers::capture_time_ms;
use crate::dsp::{DspConfig, FeatureName, FrameBatch};

/// How a record's frames are laid out in its MongoDB document (`mongo.layout`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentLayout {
    /// `frames`: an array of per-frame objects, exactly as on the output topic (`f0` null when
    /// unvoiced, vectors as arrays of numbers). Readable and queryable as is.
    #[default]
    Frames,
    /// `columns`: one field per feature holding every frame's values as a packed
    /// little-endian float32 vector (BSON binary subtype 9, MongoDB's vector type), vectors
    /// row-major `frame_count × width`; `f0` is NaN when unvoiced, `voiced` and `timestamp_ms`
    /// are arrays. About a quarter of the size, and several times faster to insert.
    Columns,
}

/// Errors turning a record into a MongoDB document.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The written bytes are not a BSON document (a bug in the encoder, never bad input).
    #[error("malformed BSON: {0}")]
    Bson(#[from] bson::raw::Error),
    /// The `columns` layout names frames by position, which needs consecutive frames on the
    /// hop grid.
    #[error("frame {i} (index {index}, start sample {start}) is not on the record's frame grid")]
    OffGrid {
        /// Position in the record.
        i: usize,
        /// Its frame index.
        index: u64,
        /// Its first sample.
        start: u64,
    },
}

/// One record encoded for both sinks.
pub struct EncodedRecord {
    /// The stream id: the output record's key.
    pub key: String,
    /// JSON for the output topic.
    pub json: Vec<u8>,
    /// BSON for MongoDB.
    pub document: RawDocumentBuf,
    /// The end of the last frame, Unix milliseconds (for the end-to-end latency).
    pub end_ms: i64,
}

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

impl<'a> FeatureRecord<'a> {
    /// The record of the frames `batch` that the chunk `meta` (the message at `source`)
    /// completed. Timestamps count from the chunk's start sample (or, without one, from the
    /// first frame's) at its capture time.
    pub fn of_chunk(
        meta: &'a ChunkMeta,
        dsp: &DspConfig,
        batch: &'a FrameBatch,
        source: &'a SourcePosition,
    ) -> Self {
        Self {
            stream_id: &meta.stream_id,
            sample_rate: meta.sample_rate,
            frame_length: dsp.frame_length,
            hop_length: dsp.hop_length,
            batch,
            chunk_start_sample: meta.start_sample.unwrap_or_else(|| batch.start_sample(0)),
            chunk_timestamp_ms: meta.timestamp_ms.unwrap_or(0),
            source,
        }
    }

    /// Encodes the record for both sinks: JSON for the output topic, BSON in `layout` for
    /// MongoDB.
    pub fn encode(&self, layout: DocumentLayout) -> Result<EncodedRecord, DocumentError> {
        Ok(EncodedRecord {
            key: self.stream_id.to_owned(),
            json: self.to_json(),
            document: self.to_document(layout)?,
            end_ms: self.end_ms(),
        })
    }
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
        capture_time_ms(
            self.chunk_timestamp_ms,
            self.chunk_start_sample,
            sample,
            self.sample_rate,
        )
    }

    /// JSON bytes for the output topic (the serde view's bytes, written by `encode::JsonOut`).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = JsonOut::new(Vec::with_capacity(self.json_len_estimate()));
        out.begin_document();
        self.write_fields(&mut out, None);
        out.end();
        out.buf
    }

    /// A generous guess of the JSON's length (a float is at most 15 characters with its comma,
    /// a key about 25), so the buffer is allocated once instead of doubling through a dozen
    /// copies.
    fn json_len_estimate(&self) -> usize {
        let features = self.batch.selected().len();
        let per_frame = 15 * self.batch.values_per_frame() + 25 * (features + 3);
        512 + 80 * features + self.stream_id.len() * 2 + self.batch.len() * per_frame * 5 / 4
    }

    /// BSON document for MongoDB in `layout`, with `_id` first, written straight to bytes
    /// (what the driver sends as is) by `encode::BsonOut`: the bytes of the serde view.
    pub fn to_document(&self, layout: DocumentLayout) -> Result<RawDocumentBuf, DocumentError> {
        // BSON is about as long as the JSON (11–12 bytes per float against up to 15 characters),
        // so the JSON's estimate holds it too.
        let mut out = BsonOut::new(Vec::with_capacity(self.json_len_estimate()));
        out.begin_document();
        self.write_fields(&mut out, Some(layout));
        if layout == DocumentLayout::Columns {
            out.document("columns", self.columns()?.as_bytes());
        }
        out.end();
        Ok(RawDocumentBuf::from_bytes(out.buf)?)
    }

    /// The end of the last frame, Unix milliseconds (`end_ms`).
    pub fn end_ms(&self) -> i64 {
        let last = self.batch.len() - 1;
        self.timestamp_of(self.batch.start_sample(last) + self.frame_length as u64)
    }

    /// The `columns` field: frame `i` is frame index `first_frame + i`, starting at sample
    /// `(first_frame + i) × hop_length`; when the frames are not consecutive (a gap inside the
    /// record, which pYIN's waiting frames can cause) an `index` array names each frame.
    fn columns(&self) -> Result<RawDocumentBuf, DocumentError> {
        let batch = self.batch;
        let first = self.first_frame();
        let mut consecutive = true;
        for i in 0..batch.len() {
            let index = batch.index(i);
            let start = batch.start_sample(i);
            if start != index * self.hop_length as u64 {
                return Err(DocumentError::OffGrid { i, index, start });
            }
            consecutive &= index == first + i as u64;
        }
        let packed = |values: Vec<f32>| RawBson::from(Vector::Float32(values));
        let mut columns = RawDocumentBuf::new();
        if !consecutive {
            let mut indexes = RawArrayBuf::new();
            for i in 0..batch.len() {
                indexes.push(i64::try_from(batch.index(i)).unwrap_or(i64::MAX));
            }
            columns.append("index", indexes);
        }
        let mut timestamps = RawArrayBuf::new();
        for i in 0..batch.len() {
            timestamps.push(self.timestamp_of(batch.start_sample(i)));
        }
        columns.append("timestamp_ms", timestamps);
        for &name in batch.selected() {
            if let Some((values, _)) = batch.vector_column(name) {
                columns.append(name.as_str(), packed(values.to_vec()));
            } else if name == FeatureName::F0 {
                let f0 = (0..batch.len())
                    .map(|i| batch.scalar(name, i).unwrap_or(f32::NAN))
                    .collect();
                columns.append("f0", packed(f0));
                let mut voiced = RawArrayBuf::new();
                for &v in batch.voiced_column() {
                    voiced.push(v);
                }
                columns.append("voiced", voiced);
                if !batch.voiced_prob_column().is_empty() {
                    columns.append("voiced_prob", packed(batch.voiced_prob_column().to_vec()));
                }
            } else if let Some(values) = batch.scalar_column(name) {
                columns.append(name.as_str(), packed(values.to_vec()));
            }
        }
        Ok(columns)
    }
}

/// How FeatureRecord goes to MongoDB in the serde view: `_id` instead of `id`, and `frames` only
/// in that layout. The reference [`FeatureRecord::to_document`]'s bytes are tested against.
#[cfg(test)]
struct ForMongo<'r, 'a> {
    record: &'r FeatureRecord<'a>,
    layout: DocumentLayout,
}

#[cfg(test)]
impl Serialize for ForMongo<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.record.serialize_fields(serializer, Some(self.layout))
    }
}

struct Frames<'r, 'a>(&'r FeatureRecord<'a>);

impl Serialize for Frames<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.batch.len()))?;
        let batch = self.0.batch;
        for i in 0..batch.len() {
            let timestamp_ms = self.0.timestamp_of(batch.start_sample(i));
            seq.serialize_element(&batch.frame(i).at_time(timestamp_ms))?;
        }
        seq.end()
    }
}

impl Serialize for FeatureRecord<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.serialize_fields(serializer, None)
    }
}

impl FeatureRecord<'_> {
    fn serialize_fields<S: Serializer>(
        &self,
        serializer: S,
        mongo: Option<DocumentLayout>,
    ) -> Result<S::Ok, S::Error> {
        let start_ms = self.timestamp_of(self.batch.start_sample(0));
        let end_ms = self.end_ms();
        // `frames` goes everywhere but into the `columns` layout (which appends `columns`).
        let with_frames = mongo != Some(DocumentLayout::Columns);
        let mut map = serializer.serialize_map(Some(13 + usize::from(with_frames)))?;
        if mongo.is_some() {
            map.serialize_entry("_id", &self.id())?;
            map.serialize_entry("schema", &SCHEMA_VERSION)?;
        } else {
            map.serialize_entry("schema", &SCHEMA_VERSION)?;
            map.serialize_entry("id", &self.id())?;
        }
        map.serialize_entry("stream_id", self.stream_id)?;
        map.serialize_entry("sample_rate", &self.sample_rate)?;
        map.serialize_entry("frame_length", &(self.frame_length as i64))?;
        map.serialize_entry("hop_length", &(self.hop_length as i64))?;
        map.serialize_entry("first_frame", &(self.first_frame() as i64))?;
        map.serialize_entry("last_frame", &(self.last_frame() as i64))?;
        map.serialize_entry("frame_count", &(self.batch.len() as i64))?;
        map.serialize_entry("start_ms", &start_ms)?;
        map.serialize_entry("end_ms", &end_ms)?;
        if with_frames {
            map.serialize_entry("frames", &Frames(self))?;
        }
        map.serialize_entry("summary", &self.batch.summaries())?;
        map.serialize_entry("source", self.source)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsp::{DspConfig, FeatureExtractor};
    use mongodb::bson::Bson;

    /// Half a second of a 220 Hz tone then half a second of silence: voiced and unvoiced
    /// frames, every feature selected.
    fn batch() -> (FrameBatch, DspConfig) {
        let dsp = DspConfig::default();
        (batch_of(&dsp, 16_000), dsp)
    }

    /// The frames of a tone-then-silence second under `dsp`, in messages of `chunk` samples:
    /// the batch of the message that completes the most frames.
    fn batch_of(dsp: &DspConfig, chunk: usize) -> FrameBatch {
        let extractor = FeatureExtractor::new(dsp, 16_000).unwrap();
        let mut workspace = extractor.workspace();
        let mut state = extractor.new_stream(0);
        let samples: Vec<f32> = (0..16_000)
            .map(|i| {
                if i < 8_000 {
                    0.5 * (2.0 * std::f32::consts::PI * 220.0 * i as f32 / 16_000.0).sin()
                } else {
                    0.0
                }
            })
            .collect();
        let mut best = FrameBatch::new();
        for part in samples.chunks(chunk) {
            let mut batch = FrameBatch::new();
            extractor.process(&mut workspace, &mut state, part, &mut batch);
            if batch.len() > best.len() {
                best = batch;
            }
        }
        best
    }

    #[test]
    fn written_bytes_are_the_serde_views_bytes() {
        let configs = [
            DspConfig::default(),
            DspConfig {
                pitch_method: crate::dsp::PitchMethod::Pyin,
                ..DspConfig::default()
            },
            DspConfig {
                features: vec!["mfcc".into(), "rms".into(), "chroma".into()],
                ..DspConfig::default()
            },
            DspConfig {
                features: vec!["f0".into()],
                ..DspConfig::default()
            },
            // Vectors of more than 100 values (three-digit BSON array keys).
            DspConfig {
                features: vec!["mel".into(), "rms".into()],
                n_mels: 128,
                ..DspConfig::default()
            },
        ];
        let sources = [
            SourcePosition {
                topic: "audio.in".into(),
                partition: 3,
                offset: 1 << 40,
                timestamp_ms: Some(1_700_000_000_123),
            },
            SourcePosition {
                topic: "t\"\u{1}é".into(),
                partition: -1,
                offset: 0,
                timestamp_ms: None,
            },
        ];
        let mut checked = 0;
        for dsp in &configs {
            // 100 ms messages (10 frames each), and a whole second in one message (> 100 frames).
            for chunk in [1_600, 16_000] {
                let batch = batch_of(dsp, chunk);
                assert!(!batch.is_empty());
                for (source, stream_id) in sources.iter().zip(["mic-1", "a \"quoted\"\n\u{7f}ß id"])
                {
                    let record = FeatureRecord {
                        stream_id,
                        sample_rate: 16_000,
                        frame_length: dsp.frame_length,
                        hop_length: dsp.hop_length,
                        batch: &batch,
                        chunk_start_sample: batch.start_sample(0) + 37,
                        chunk_timestamp_ms: -5,
                        source,
                    };
                    let json = record.to_json();
                    assert_eq!(
                        String::from_utf8(json).unwrap(),
                        serde_json::to_string(&record).unwrap()
                    );
                    for layout in [DocumentLayout::Frames, DocumentLayout::Columns] {
                        let mut expected = bson::to_raw_document_buf(&ForMongo {
                            record: &record,
                            layout,
                        })
                        .unwrap();
                        if layout == DocumentLayout::Columns {
                            expected.append("columns", record.columns().unwrap());
                        }
                        let written = record.to_document(layout).unwrap();
                        assert_eq!(written.as_bytes(), expected.as_bytes(), "{layout:?}");
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, configs.len() * 2 * sources.len());
    }

    fn floats(value: &Bson) -> Vec<f32> {
        let Bson::Binary(binary) = value else {
            panic!("not binary: {value:?}")
        };
        match Vector::try_from(binary).expect("a BSON vector") {
            Vector::Float32(values) => values,
            other => panic!("not float32: {other:?}"),
        }
    }

    #[test]
    fn columns_hold_the_same_values_as_frames() {
        let (batch, dsp) = batch();
        assert!(batch.len() > 40);
        let source = SourcePosition {
            topic: "in".into(),
            partition: 0,
            offset: 7,
            timestamp_ms: Some(1_000),
        };
        let record = FeatureRecord {
            stream_id: "s",
            sample_rate: 16_000,
            frame_length: dsp.frame_length,
            hop_length: dsp.hop_length,
            batch: &batch,
            chunk_start_sample: 0,
            chunk_timestamp_ms: 1_000,
            source: &source,
        };
        let frames_raw = record.to_document(DocumentLayout::Frames).unwrap();
        let columns_raw = record.to_document(DocumentLayout::Columns).unwrap();
        let frames_doc = frames_raw.to_document().unwrap();
        let columns_doc = columns_raw.to_document().unwrap();
        assert_eq!(frames_doc.keys().next().map(String::as_str), Some("_id"));
        assert_eq!(frames_doc.get_str("_id").unwrap(), record.id());
        assert!(!frames_doc.contains_key("id"));
        assert_eq!(frames_doc.get_i64("end_ms").unwrap(), record.end_ms());
        assert!(!columns_doc.contains_key("frames"));
        for key in [
            "_id",
            "stream_id",
            "first_frame",
            "frame_count",
            "start_ms",
            "summary",
        ] {
            assert_eq!(frames_doc.get(key), columns_doc.get(key), "{key}");
        }
        let frames = frames_doc.get_array("frames").unwrap();
        let columns = columns_doc.get_document("columns").unwrap();
        let n = frames.len();
        let mut voiced = (0, 0);
        for (i, frame) in frames.iter().enumerate() {
            let frame = frame.as_document().unwrap();
            let index = frame.get_i64("index").unwrap() as usize;
            assert_eq!(index, record.first_frame() as usize + i);
            assert_eq!(
                frame.get_i64("start_sample").unwrap() as usize,
                index * dsp.hop_length
            );
            assert_eq!(
                frame.get("timestamp_ms"),
                columns.get_array("timestamp_ms").unwrap().get(i)
            );
            for (name, value) in frame {
                let column = match name.as_str() {
                    "index" | "start_sample" | "timestamp_ms" => continue,
                    "voiced" => {
                        let v = columns.get_array("voiced").unwrap()[i].as_bool().unwrap();
                        assert_eq!(value.as_bool(), Some(v));
                        if v {
                            voiced.0 += 1
                        } else {
                            voiced.1 += 1
                        }
                        continue;
                    }
                    name => floats(columns.get(name).unwrap_or_else(|| panic!("{name}"))),
                };
                match value {
                    Bson::Array(values) => {
                        let width = values.len();
                        assert_eq!(column.len(), n * width, "{name}");
                        for (k, v) in values.iter().enumerate() {
                            assert_eq!(v.as_f64().unwrap() as f32, column[i * width + k], "{name}");
                        }
                    }
                    Bson::Null => assert!(column[i].is_nan(), "{name} unvoiced is NaN"),
                    v => assert_eq!(v.as_f64().unwrap() as f32, column[i], "{name}"),
                }
            }
        }
        assert!(
            voiced.0 > 0 && voiced.1 > 0,
            "voiced and unvoiced frames: {voiced:?}"
        );
        let (columns_size, frames_size) =
            (columns_raw.as_bytes().len(), frames_raw.as_bytes().len());
        assert!(
            columns_size * 3 < frames_size,
            "columns {columns_size} B, frames {frames_size} B"
        );
    }
}
