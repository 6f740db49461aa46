//! Python objects and JSON text as plain values: keyword settings as JSON (for the `[dsp]`
//! deserialiser), and records (JSON or a pymongo document) as [`Value`] for the decoder.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};

/// A record's value: what JSON and BSON (as pymongo returns it) have in common, plus bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// JSON null, Python `None`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// Binary data (`bytes`, `bson.Binary`).
    Bytes(Vec<u8>),
    /// An array.
    List(Vec<Value>),
    /// An object, in its own key order.
    Map(Vec<(String, Value)>),
}

impl Value {
    /// The value of `key` in a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value as an integer (an integral float too).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(v) => Some(v),
            Value::Float(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Some(v as i64),
            _ => None,
        }
    }

    /// The value as a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(v) => Some(v as f64),
            Value::Float(v) => Some(v),
            _ => None,
        }
    }

    /// A short name of the value's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "binary data",
            Value::List(_) => "an array",
            Value::Map(_) => "an object",
        }
    }
}

impl From<serde_json::Value> for Value {
    fn from(json: serde_json::Value) -> Self {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => n
                .as_i64()
                .map_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN)), Value::Int),
            serde_json::Value::String(s) => Value::Str(s),
            serde_json::Value::Array(items) => {
                Value::List(items.into_iter().map(Value::from).collect())
            }
            serde_json::Value::Object(map) => {
                Value::Map(map.into_iter().map(|(k, v)| (k, Value::from(v))).collect())
            }
        }
    }
}

/// Converts a Python object (as pymongo or `json.loads` returns documents) to a [`Value`];
/// `where_` names it in errors.
pub fn value_of_py(obj: &Bound<'_, PyAny>, where_: &str) -> PyResult<Value> {
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        return obj
            .extract::<i64>()
            .map(Value::Int)
            .map_err(|_| PyValueError::new_err(format!("{where_}: integer out of range: {obj}")));
    }
    if obj.is_instance_of::<PyFloat>() {
        return Ok(Value::Float(obj.extract::<f64>()?));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::Str(s.extract::<String>()?));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Value::Bytes(b.to_vec()));
    }
    if let Ok(list) = obj.cast::<PyList>() {
        return list
            .iter()
            .enumerate()
            .map(|(i, item)| value_of_py(&item, &format!("{where_}[{i}]")))
            .collect::<PyResult<_>>()
            .map(Value::List);
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return tuple
            .iter()
            .enumerate()
            .map(|(i, item)| value_of_py(&item, &format!("{where_}[{i}]")))
            .collect::<PyResult<_>>()
            .map(Value::List);
    }
    if obj.is_instance_of::<PyDict>() || obj.hasattr("items")? {
        let mut entries = Vec::new();
        for item in obj.call_method0("items")?.try_iter()? {
            let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
            let key: String = key.extract().map_err(|_| {
                PyTypeError::new_err(format!("{where_}: a key is not a string: {key}"))
            })?;
            let inner = value_of_py(&value, &format!("{where_}.{key}"))?;
            entries.push((key, inner));
        }
        return Ok(Value::Map(entries));
    }
    // numpy scalars and other numbers.
    if let Ok(v) = obj.extract::<f64>() {
        return Ok(Value::Float(v));
    }
    Err(PyTypeError::new_err(format!(
        "{where_}: unsupported value of type {}",
        obj.get_type().name()?
    )))
}

/// A keyword setting as JSON for the `[dsp]` deserialiser: `None`, a bool, an integer, a
/// finite float, a string, or a list / tuple / numpy array of those. The error says why not.
pub fn json_of_py(obj: &Bound<'_, PyAny>) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if obj.is_none() {
        return Ok(J::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(J::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyFloat>() {
        return finite(obj.extract::<f64>().map_err(|e| e.to_string())?);
    }
    if let Ok(v) = obj.extract::<i64>() {
        return Ok(J::from(v));
    }
    if let Ok(v) = obj.extract::<u64>() {
        return Ok(J::from(v));
    }
    if obj.is_instance_of::<PyInt>() {
        return Err("integer out of range".to_owned());
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return s
            .extract::<String>()
            .map(J::from)
            .map_err(|e| e.to_string());
    }
    if let Ok(v) = obj.extract::<f64>() {
        return finite(v);
    }
    let items = if obj.hasattr("tolist").unwrap_or(false) {
        // numpy arrays: as nested lists.
        obj.call_method0("tolist").map_err(|e| e.to_string())?
    } else {
        obj.clone()
    };
    if items.is_instance_of::<PyList>() || items.is_instance_of::<PyTuple>() {
        let mut values = Vec::new();
        for item in items.try_iter().map_err(|e| e.to_string())? {
            values.push(json_of_py(&item.map_err(|e| e.to_string())?)?);
        }
        return Ok(J::Array(values));
    }
    Err(format!(
        "unsupported value of type {}",
        obj.get_type()
            .name()
            .map_or_else(|_| "?".to_owned(), |n| n.to_string())
    ))
}

/// A finite float as JSON (JSON has no NaN or infinity).
fn finite(v: f64) -> Result<serde_json::Value, String> {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .ok_or_else(|| "must be a finite number".to_owned())
}
