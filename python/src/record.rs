//! `decode_record`: one feature record, from the output topic (JSON) or MongoDB (either
//! `mongo.layout`), back to the frames' columns.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString};
use specflow::dsp::FeatureName;
use specflow::record::SCHEMA_VERSION;

use crate::frames::{Column, Frames};
use crate::value::{Value, value_of_py};

/// The header fields the decoder reads; a document's other fields are not looked at.
const FIELDS: [&str; 6] = [
    "schema",
    "hop_length",
    "first_frame",
    "frame_count",
    "frames",
    "columns",
];

/// BSON vector header of packed float32 (dtype byte, padding byte).
const FLOAT32_VECTOR: [u8; 2] = [0x27, 0x00];

/// Decode one specflow feature record to the same dict of arrays as :func:`extract`.
///
/// Parameters
/// ----------
/// record : str, bytes or dict
///     An output-topic record (JSON text or bytes, or its ``json.loads``), or a MongoDB document
///     as pymongo returns it, in either ``mongo.layout``: ``frames`` (per-frame objects) or
///     ``columns`` (packed little-endian float32 vectors, BSON binary subtype 9, which pymongo
///     gives as ``bson.Binary``; ``f0`` NaN where unvoiced).
/// timestamps : bool, optional
///     Also return ``timestamp_ms`` (int64), each frame's capture time in Unix milliseconds.
///
/// Returns
/// -------
/// dict[str, numpy.ndarray]
///     ``index``, ``start_sample`` and the record's features, as :func:`extract` returns them.
///     Records of one stream concatenated in ``first_frame`` order (see :func:`concat`) equal
///     ``extract`` of the stream's audio with the worker's ``[dsp]`` settings.
///
/// Raises
/// ------
/// ValueError
///     Not a specflow feature record (invalid JSON, a missing field, an unknown feature, ...).
/// TypeError
///     ``record`` is not a str, bytes or mapping.
#[pyfunction]
#[pyo3(signature = (record, *, timestamps=false))]
pub fn decode_record<'py>(
    py: Python<'py>,
    record: &Bound<'py, PyAny>,
    timestamps: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let document = document(record)?;
    let frames = py.detach(|| decode(&document, timestamps));
    frames
        .map_err(|e| PyValueError::new_err(format!("not a specflow feature record: {e}")))?
        .into_dict(py)
}

/// The record's header fields as a [`Value::Map`].
fn document(record: &Bound<'_, PyAny>) -> PyResult<Value> {
    let json = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map(Value::from)
            .map_err(|e| PyValueError::new_err(format!("not a specflow feature record: {e}")))
    };
    let whole = if let Ok(text) = record.cast::<PyString>() {
        json(text.extract::<String>()?.as_bytes())?
    } else if let Ok(bytes) = record.cast::<PyBytes>() {
        json(bytes.as_bytes())?
    } else if let Ok(bytes) = record.cast::<PyByteArray>() {
        json(&bytes.to_vec())?
    } else if record.is_instance_of::<PyDict>() || record.hasattr("items")? {
        let mut entries = Vec::new();
        for field in FIELDS {
            if let Some(value) = mapping_get(record, field)? {
                entries.push((field.to_owned(), value_of_py(&value, field)?));
            }
        }
        return Ok(Value::Map(entries));
    } else {
        return Err(PyTypeError::new_err(format!(
            "record must be a JSON str or bytes, or a dict; got {}",
            record.get_type().name()?
        )));
    };
    match whole {
        Value::Map(entries) => Ok(Value::Map(
            entries
                .into_iter()
                .filter(|(k, _)| FIELDS.contains(&k.as_str()))
                .collect(),
        )),
        other => Err(PyValueError::new_err(format!(
            "not a specflow feature record: the JSON is {}, not an object",
            other.kind()
        ))),
    }
}

/// `mapping.get(key)`, `None` when absent.
fn mapping_get<'py>(mapping: &Bound<'py, PyAny>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    if mapping.call_method1("__contains__", (key,))?.is_truthy()? {
        Ok(Some(mapping.get_item(key)?))
    } else {
        Ok(None)
    }
}

/// Decodes a record document (its header fields).
fn decode(doc: &Value, timestamps: bool) -> Result<Frames, String> {
    if let Some(schema) = doc.get("schema")
        && schema.as_i64() != Some(i64::from(SCHEMA_VERSION))
    {
        let found = schema
            .as_i64()
            .map_or_else(|| schema.kind().to_owned(), |v| v.to_string());
        return Err(format!(
            "schema {found}; this specflow reads schema {SCHEMA_VERSION}"
        ));
    }
    let frame_count = match doc.get("frame_count") {
        Some(v) => Some(
            v.as_i64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or("frame_count is not a count")?,
        ),
        None => None,
    };
    match (doc.get("frames"), doc.get("columns")) {
        (Some(Value::List(frames)), _) => {
            if frame_count.is_some_and(|n| n != frames.len()) {
                return Err(format!(
                    "frame_count is {frame_count:?} but `frames` holds {}",
                    frames.len()
                ));
            }
            decode_frames(frames, timestamps)
        }
        (_, Some(columns @ Value::Map(_))) => {
            let n = frame_count.ok_or("no frame_count")?;
            decode_columns(doc, columns, n, timestamps)
        }
        (Some(other), _) | (None, Some(other)) => {
            Err(format!("`frames` or `columns` is {}", other.kind()))
        }
        (None, None) => Err("no `frames` or `columns` field".to_owned()),
    }
}

/// Keys of a frame that are not features.
const FRAME_FIELDS: [&str; 5] = [
    "index",
    "start_sample",
    "timestamp_ms",
    "voiced",
    "voiced_prob",
];

/// A feature's name in a record.
fn feature(key: &str, at: &str) -> Result<FeatureName, String> {
    key.parse()
        .map_err(|_| format!("{at}: unknown feature `{key}`"))
}

/// The `frames` layout: per-frame objects, as on the output topic.
fn decode_frames(frames: &[Value], timestamps: bool) -> Result<Frames, String> {
    let n = frames.len();
    let Some(Value::Map(first)) = frames.first() else {
        return match frames.first() {
            None => Ok(empty(timestamps)),
            Some(other) => Err(format!("frames[0] is {}", other.kind())),
        };
    };
    // The features of the record, from its first frame; every frame has the same fields.
    let mut features = Vec::new();
    for (key, value) in first {
        if FRAME_FIELDS.contains(&key.as_str()) {
            continue;
        }
        let name = feature(key, "frames[0]")?;
        let width = match (name.width().is_vector(), value) {
            (true, Value::List(values)) => Some(values.len()),
            (true, other) => return Err(format!("frames[0].{key} is {}", other.kind())),
            (false, _) => None,
        };
        features.push((name, width));
    }
    features.sort_by_key(|&(name, _)| name);
    let voiced_prob = first.iter().any(|(k, _)| k == "voiced_prob");
    let has_f0 = features.iter().any(|&(name, _)| name == FeatureName::F0);

    let mut index = Vec::with_capacity(n);
    let mut start = Vec::with_capacity(n);
    let mut stamps = Vec::new();
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); features.len()];
    let mut voiced = Vec::new();
    let mut probs = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let Value::Map(fields) = frame else {
            return Err(format!("frames[{i}] is {}", frame.kind()));
        };
        if fields.len() != first.len() {
            return Err(format!(
                "frames[{i}] has {} fields, frames[0] {}",
                fields.len(),
                first.len()
            ));
        }
        let at = |key: &str| format!("frames[{i}].{key}");
        let get = |key: &str| {
            frame
                .get(key)
                .ok_or_else(|| format!("{} is missing", at(key)))
        };
        let int = |key: &str| {
            get(key)?
                .as_i64()
                .ok_or_else(|| format!("{} is not an integer", at(key)))
        };
        index.push(int("index")?);
        start.push(int("start_sample")?);
        if timestamps {
            stamps.push(int("timestamp_ms")?);
        }
        for (&(name, width), column) in features.iter().zip(values.iter_mut()) {
            let key = name.as_str();
            match (get(key)?, width) {
                (Value::Null, None) if name == FeatureName::F0 => column.push(f32::NAN),
                (Value::List(items), Some(width)) if items.len() == width => {
                    for item in items {
                        column.push(
                            item.as_f64()
                                .ok_or_else(|| format!("{} holds {}", at(key), item.kind()))?
                                as f32,
                        );
                    }
                }
                (Value::List(items), Some(width)) => {
                    return Err(format!(
                        "{} has {} values, frames[0] {width}",
                        at(key),
                        items.len()
                    ));
                }
                (value, None) => column.push(
                    value
                        .as_f64()
                        .ok_or_else(|| format!("{} is {}", at(key), value.kind()))?
                        as f32,
                ),
                (value, Some(_)) => return Err(format!("{} is {}", at(key), value.kind())),
            }
        }
        if has_f0 {
            match get("voiced")? {
                Value::Bool(v) => voiced.push(*v),
                other => return Err(format!("{} is {}", at("voiced"), other.kind())),
            }
        }
        if voiced_prob {
            let p = get("voiced_prob")?;
            probs.push(
                p.as_f64()
                    .ok_or_else(|| format!("{} is {}", at("voiced_prob"), p.kind()))?
                    as f32,
            );
        }
    }

    let mut columns = vec![
        ("index", Column::I64(index)),
        ("start_sample", Column::I64(start)),
    ];
    for ((name, width), column) in features.into_iter().zip(values) {
        match width {
            Some(width) => columns.push((name.as_str(), Column::Rows(column, width))),
            None => columns.push((name.as_str(), Column::F32(column))),
        }
        if name == FeatureName::F0 {
            columns.push(("voiced", Column::Bool(std::mem::take(&mut voiced))));
            if voiced_prob {
                columns.push(("voiced_prob", Column::F32(std::mem::take(&mut probs))));
            }
        }
    }
    if timestamps {
        columns.push(("timestamp_ms", Column::I64(stamps)));
    }
    Ok(Frames { len: n, columns })
}

/// A record without frames.
fn empty(timestamps: bool) -> Frames {
    let mut columns = vec![
        ("index", Column::I64(Vec::new())),
        ("start_sample", Column::I64(Vec::new())),
    ];
    if timestamps {
        columns.push(("timestamp_ms", Column::I64(Vec::new())));
    }
    Frames { len: 0, columns }
}

/// Packed little-endian float32 values of a BSON vector (binary subtype 9).
fn float32_vector(value: &Value, at: &str) -> Result<Vec<f32>, String> {
    let Value::Bytes(bytes) = value else {
        return Err(format!(
            "{at} is {}, not a packed float32 vector",
            value.kind()
        ));
    };
    match bytes.split_first_chunk::<2>() {
        Some((&header, packed)) if header == FLOAT32_VECTOR && packed.len() % 4 == 0 => Ok(packed
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        _ => Err(format!(
            "{at} is not a packed float32 vector (BSON binary subtype 9, header 27 00)"
        )),
    }
}

/// An array of `n` integers.
fn ints(value: &Value, n: usize, at: &str) -> Result<Vec<i64>, String> {
    match value {
        Value::List(items) if items.len() == n => items
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| format!("{at} holds {}", v.kind())))
            .collect(),
        other => Err(format!(
            "{at} is not an array of {n} integers ({})",
            other.kind()
        )),
    }
}

/// The `columns` layout: one packed float32 vector per feature.
fn decode_columns(
    doc: &Value,
    columns: &Value,
    n: usize,
    timestamps: bool,
) -> Result<Frames, String> {
    let Value::Map(fields) = columns else {
        return Err(format!("columns is {}", columns.kind()));
    };
    let header_int = |key: &str| {
        doc.get(key)
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("no integer `{key}`"))
    };
    let hop = header_int("hop_length")?;
    let index = match columns.get("index") {
        Some(v) => ints(v, n, "columns.index")?,
        None => {
            let first = header_int("first_frame")?;
            (0..n as i64).map(|i| first + i).collect()
        }
    };
    let start = index.iter().map(|&k| k.saturating_mul(hop)).collect();

    let mut features = Vec::new();
    let mut voiced = None;
    let mut probs = None;
    for (key, value) in fields {
        let at = format!("columns.{key}");
        match key.as_str() {
            "index" | "timestamp_ms" => {}
            "voiced" => match value {
                Value::List(items) if items.len() == n => {
                    voiced = Some(
                        items
                            .iter()
                            .map(|v| match v {
                                Value::Bool(b) => Ok(*b),
                                other => Err(format!("{at} holds {}", other.kind())),
                            })
                            .collect::<Result<Vec<bool>, String>>()?,
                    );
                }
                other => {
                    return Err(format!(
                        "{at} is not an array of {n} booleans ({})",
                        other.kind()
                    ));
                }
            },
            "voiced_prob" => probs = Some(float32_vector(value, &at)?),
            _ => {
                let name = feature(key, "columns")?;
                let values = float32_vector(value, &at)?;
                let width = if name.width().is_vector() {
                    if n == 0 || values.len() % n != 0 {
                        if n == 0 && values.is_empty() {
                            Some(0)
                        } else {
                            return Err(format!("{at} has {} values for {n} frames", values.len()));
                        }
                    } else {
                        Some(values.len() / n)
                    }
                } else if values.len() != n {
                    return Err(format!("{at} has {} values for {n} frames", values.len()));
                } else {
                    None
                };
                features.push((name, width, values));
            }
        }
    }
    features.sort_by_key(|&(name, _, _)| name);

    let mut out = vec![
        ("index", Column::I64(index)),
        ("start_sample", Column::I64(start)),
    ];
    for (name, width, values) in features {
        match width {
            Some(width) => out.push((name.as_str(), Column::Rows(values, width))),
            None => out.push((name.as_str(), Column::F32(values))),
        }
        if name == FeatureName::F0 {
            let voiced = voiced.take().ok_or("columns has f0 but no voiced")?;
            out.push(("voiced", Column::Bool(voiced)));
            if let Some(probs) = probs.take() {
                if probs.len() != n {
                    return Err(format!(
                        "columns.voiced_prob has {} values for {n} frames",
                        probs.len()
                    ));
                }
                out.push(("voiced_prob", Column::F32(probs)));
            }
        }
    }
    if timestamps {
        let stamps = columns
            .get("timestamp_ms")
            .ok_or("no columns.timestamp_ms")?;
        out.push((
            "timestamp_ms",
            Column::I64(ints(stamps, n, "columns.timestamp_ms")?),
        ));
    }
    Ok(Frames {
        len: n,
        columns: out,
    })
}
