//! `GET /v1/streams/{stream_id}/features`: the stored frames of a stream, in time order.
//!
//! Reads MongoDB through the worker's `stream_time` index (`{stream_id, start_ms, end_ms}`):
//! the records that overlap `[from_ms, to_ms)`, sorted by `first_frame`. A frame is returned
//! when its `timestamp_ms` (its first sample's capture time) lies in `[from_ms, to_ms)`. Both
//! `mongo.layout` values are read (each document by its own layout), and the answer has the
//! same shape for both: `{stream_id, frames: [{index, start_sample, timestamp_ms, …}],
//! next_cursor}`. Pages hold at most `limit` frames (default and ceiling
//! `gateway.max_page_frames`); `next_cursor` (a frame index) continues, `null` at the end.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use futures::TryStreamExt;
use mongodb::bson::binary::Vector;
use mongodb::bson::{Bson, Document, doc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Shared;
use super::error::{ApiError, parse_parameter};
use crate::audio::decode_stream_id;
use crate::dsp::FeatureName;
use crate::sinks::mongo::{MongoSink, MongoSinkConfig};

/// The MongoDB collection the worker stores into, read-only here.
#[derive(Clone)]
pub struct FeatureStore {
    sink: MongoSink,
}

impl FeatureStore {
    /// Connects lazily (the driver reconnects on its own).
    pub async fn connect(config: &MongoSinkConfig) -> Result<Self, crate::sinks::SinkError> {
        Ok(Self {
            sink: config.build().await?,
        })
    }

    /// Whether the server answers.
    pub async fn ping(&self) -> bool {
        self.sink.ping().await.is_ok()
    }

    /// Closes the client.
    pub async fn shutdown(self) {
        self.sink.shutdown().await;
    }

    /// Whether any record of `stream_id` is stored.
    pub async fn knows(&self, stream_id: &str) -> Result<bool, mongodb::error::Error> {
        let found = self
            .sink
            .collection()
            .find_one(doc! { "stream_id": stream_id })
            .projection(doc! { "_id": 1 })
            .await?;
        Ok(found.is_some())
    }

    /// Up to `limit` stored frames of `stream_id` in `range`, in frame order, with only
    /// `fields` (all when `None`); and the index to continue from, when there are more.
    pub async fn read_frames(
        &self,
        stream_id: &str,
        range: FrameRange,
        limit: usize,
        fields: Option<&[&str]>,
        retry_after_secs: u64,
    ) -> Result<(Vec<Value>, Option<i64>), ApiError> {
        let FrameRange {
            from_ms,
            to_ms,
            cursor,
        } = range;
        let unavailable = |e: mongodb::error::Error| {
            ApiError::retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "mongodb_unavailable",
                format!("cannot read MongoDB: {e}"),
                retry_after_secs,
            )
        };
        let mut documents = self
            .sink
            .collection()
            .find(doc! {
                "stream_id": stream_id,
                "start_ms": { "$lt": to_ms },
                "end_ms": { "$gt": from_ms },
                "last_frame": { "$gte": cursor },
            })
            .sort(doc! { "first_frame": 1 })
            .await
            .map_err(unavailable)?;
        let mut frames = Vec::new();
        while let Some(document) = documents.try_next().await.map_err(unavailable)? {
            let stored = frames_of(&document).map_err(|why| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "bad_document",
                    format!("document {:?}: {why}", document.get("_id")),
                )
            })?;
            for mut frame in stored {
                let index = frame
                    .get("index")
                    .and_then(Value::as_i64)
                    .unwrap_or(i64::MIN);
                let time = frame
                    .get("timestamp_ms")
                    .and_then(Value::as_i64)
                    .unwrap_or(i64::MIN);
                if index < cursor || time < from_ms || time >= to_ms {
                    continue;
                }
                if frames.len() == limit {
                    return Ok((frames, Some(index)));
                }
                if let Some(fields) = fields {
                    frame.retain(|key, _| fields.contains(&key.as_str()));
                }
                frames.push(Value::Object(frame));
            }
        }
        Ok((frames, None))
    }
}

/// Which stored frames to read: `timestamp_ms` in `[from_ms, to_ms)`, index at least `cursor`.
#[derive(Debug, Clone, Copy)]
pub struct FrameRange {
    /// Earliest capture time, Unix ms (inclusive).
    pub from_ms: i64,
    /// Latest capture time, Unix ms (exclusive).
    pub to_ms: i64,
    /// Smallest frame index.
    pub cursor: i64,
}

/// Query parameters (all optional).
#[derive(Debug, Default, Deserialize)]
pub struct FeaturesQuery {
    from_ms: Option<String>,
    to_ms: Option<String>,
    features: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// One page of frames.
#[derive(Debug, Serialize, Deserialize)]
pub struct FeaturesPage {
    /// The stream.
    pub stream_id: String,
    /// Frames in time order.
    pub frames: Vec<Value>,
    /// Pass as `cursor` for the next page; `null` when there is none.
    pub next_cursor: Option<String>,
}

/// A query value as a signed integer, or `400 bad_parameter` naming it.
pub(super) fn parse_i64(name: &str, text: &str) -> Result<i64, ApiError> {
    parse_parameter(name, text, "not an integer")
}

/// Which frame fields a `features=` list keeps (`None`: all). `f0` brings `voiced` and
/// `voiced_prob` along.
pub(super) fn selected_fields(list: Option<&str>) -> Result<Option<Vec<&'static str>>, ApiError> {
    let Some(list) = list.filter(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    let mut fields = vec!["index", "start_sample", "timestamp_ms"];
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let feature = FeatureName::ALL
            .into_iter()
            .find(|f| f.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = FeatureName::ALL.iter().map(|f| f.as_str()).collect();
                ApiError::bad_request(
                    "unknown_feature",
                    format!(
                        "features: unknown feature {name:?}; known: {}",
                        known.join(", ")
                    ),
                )
            })?;
        fields.push(feature.as_str());
        if feature == FeatureName::F0 {
            fields.extend(["voiced", "voiced_prob"]);
        }
    }
    Ok(Some(fields))
}

/// The frames of one stored document, in order, whatever its layout.
pub fn frames_of(document: &Document) -> Result<Vec<Map<String, Value>>, String> {
    if let Ok(frames) = document.get_array("frames") {
        return frames
            .iter()
            .map(|frame| match frame {
                Bson::Document(d) => match Bson::Document(d.clone()).into_relaxed_extjson() {
                    Value::Object(map) => Ok(map),
                    _ => Err("a frame is not an object".to_owned()),
                },
                _ => Err("a frame is not an object".to_owned()),
            })
            .collect();
    }
    let columns = document
        .get_document("columns")
        .map_err(|_| "the document has neither frames nor columns".to_owned())?;
    let count = document
        .get_i64("frame_count")
        .map_err(|e| format!("frame_count: {e}"))? as usize;
    let first = document
        .get_i64("first_frame")
        .map_err(|e| format!("first_frame: {e}"))?;
    let hop = document
        .get_i64("hop_length")
        .map_err(|e| format!("hop_length: {e}"))?;
    let indexes: Vec<i64> = match columns.get_array("index") {
        Ok(list) => list.iter().filter_map(Bson::as_i64).collect(),
        Err(_) => (0..count as i64).map(|i| first + i).collect(),
    };
    let timestamps: Vec<i64> = columns
        .get_array("timestamp_ms")
        .map_err(|e| format!("columns.timestamp_ms: {e}"))?
        .iter()
        .filter_map(Bson::as_i64)
        .collect();
    if indexes.len() != count || timestamps.len() != count {
        return Err("columns hold a different number of frames than frame_count".to_owned());
    }
    let mut frames: Vec<Map<String, Value>> = (0..count)
        .map(|i| {
            let mut frame = Map::new();
            frame.insert("index".into(), indexes[i].into());
            frame.insert("start_sample".into(), (indexes[i] * hop).into());
            frame
        })
        .collect();
    for (name, value) in columns {
        match (name.as_str(), value) {
            ("index" | "timestamp_ms", _) => {}
            ("voiced", Bson::Array(list)) => {
                for (frame, v) in frames.iter_mut().zip(list) {
                    frame.insert("voiced".into(), Value::Bool(v.as_bool().unwrap_or(false)));
                }
            }
            (_, Bson::Binary(binary)) => {
                let Ok(Vector::Float32(values)) = Vector::try_from(binary) else {
                    return Err(format!("columns.{name} is not a float32 vector"));
                };
                if count == 0 || values.len() % count != 0 {
                    return Err(format!(
                        "columns.{name} does not divide into {count} frames"
                    ));
                }
                let width = values.len() / count;
                let vector = FeatureName::ALL
                    .into_iter()
                    .any(|f| f.as_str() == name && !f.is_scalar());
                for (frame, row) in frames.iter_mut().zip(values.chunks_exact(width)) {
                    let value = if vector {
                        Value::Array(row.iter().map(|&v| number(v)).collect())
                    } else {
                        number(row[0])
                    };
                    frame.insert(name.clone(), value);
                }
            }
            _ => {}
        }
    }
    for (frame, t) in frames.iter_mut().zip(timestamps) {
        frame.insert("timestamp_ms".into(), t.into());
    }
    Ok(frames)
}

/// A float32 as JSON: NaN (an unvoiced `f0`) is `null`.
fn number(value: f32) -> Value {
    serde_json::Number::from_f64(f64::from(value)).map_or(Value::Null, Value::Number)
}

/// `GET /v1/streams/{stream_id}/features?from_ms=&to_ms=&features=&limit=&cursor=`.
pub(super) async fn get_features(
    State(gateway): State<Shared>,
    Path(stream_id): Path<String>,
    Query(query): Query<FeaturesQuery>,
) -> Result<Json<FeaturesPage>, ApiError> {
    decode_stream_id(Some(stream_id.as_bytes()))?;
    let Some(store) = &gateway.features else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "mongo_disabled",
            "mongo.enabled is off: features are only on the output topic",
        ));
    };
    let from_ms = query
        .from_ms
        .as_deref()
        .map_or(Ok(i64::MIN), |t| parse_i64("from_ms", t))?;
    let to_ms = query
        .to_ms
        .as_deref()
        .map_or(Ok(i64::MAX), |t| parse_i64("to_ms", t))?;
    if to_ms <= from_ms {
        return Err(ApiError::bad_request(
            "bad_parameter",
            format!("to_ms ({to_ms}) must be greater than from_ms ({from_ms})"),
        ));
    }
    let max = gateway.settings.gateway.max_page_frames;
    let limit = match query.limit.as_deref() {
        None => max,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n.min(max),
            _ => {
                return Err(ApiError::bad_parameter(
                    "limit",
                    text,
                    "must be an integer of at least 1",
                ));
            }
        },
    };
    let cursor = query
        .cursor
        .as_deref()
        .map_or(Ok(i64::MIN), |t| parse_i64("cursor", t))?;
    let fields = selected_fields(query.features.as_deref())?;
    let range = FrameRange {
        from_ms,
        to_ms,
        cursor,
    };
    let (frames, next_cursor) = store
        .read_frames(
            &stream_id,
            range,
            limit,
            fields.as_deref(),
            gateway.settings.gateway.retry_after_secs,
        )
        .await?;
    Ok(Json(FeaturesPage {
        stream_id,
        frames,
        next_cursor: next_cursor.map(|index| index.to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_lists_are_checked_and_f0_brings_voicing() {
        assert_eq!(selected_fields(None).unwrap(), None);
        let fields = selected_fields(Some("rms, f0")).unwrap().unwrap();
        assert_eq!(
            fields,
            [
                "index",
                "start_sample",
                "timestamp_ms",
                "rms",
                "f0",
                "voiced",
                "voiced_prob"
            ]
        );
        let err = selected_fields(Some("rms,loudness")).unwrap_err();
        assert_eq!(err.reason, "unknown_feature");
        assert!(err.message.contains("\"loudness\""), "{}", err.message);
    }
}
