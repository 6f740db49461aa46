//! The `[dsp]` settings of a call: a config file's section (or the defaults), then keyword
//! overrides, validated by the library exactly as `specflow check` validates them.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::exceptions::{PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde_json::Value;
use specflow::config::{ConfigError, Settings};
use specflow::dsp::{DspConfig, DspError, FeatureExtractor};
use specflow::validation::Problem;

use crate::value::json_of_py;

/// The `[dsp]` settings of `config` (or the defaults) with `overrides` applied, validated
/// (every sample-rate independent problem).
pub fn resolve(
    config: Option<&Path>,
    overrides: Option<&Bound<'_, PyDict>>,
) -> PyResult<DspConfig> {
    let base = match config {
        Some(path) => load(path)?,
        None => DspConfig::default(),
    };
    let dsp = apply(base, overrides)?;
    let problems = dsp.validate();
    if problems.is_empty() {
        Ok(dsp)
    } else {
        Err(invalid(problems))
    }
}

/// Extractors built lately, newest first: building one (pYIN tables, filter banks, FFT plans)
/// can cost more than computing a short file.
static RECENT: Mutex<Vec<(DspConfig, u32, Arc<FeatureExtractor>)>> = Mutex::new(Vec::new());

/// How many extractors [`RECENT`] keeps.
const RECENT_CAPACITY: usize = 8;

/// The extractor for `dsp` at `sample_rate` (shared with the calls that used the same
/// settings lately); the rate-dependent problems as `ValueError`.
pub fn extractor(dsp: &DspConfig, sample_rate: u32) -> PyResult<Arc<FeatureExtractor>> {
    let recent = || RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    {
        let mut list = recent();
        if let Some(at) = list
            .iter()
            .position(|(d, rate, _)| *rate == sample_rate && d == dsp)
        {
            let entry = list.remove(at);
            let extractor = entry.2.clone();
            list.insert(0, entry);
            return Ok(extractor);
        }
    }
    let extractor = FeatureExtractor::new(dsp, sample_rate)
        .map(Arc::new)
        .map_err(|e| match e {
            DspError::InvalidConfig(problems) => invalid(problems),
            other => PyValueError::new_err(other.to_string()),
        })?;
    let mut list = recent();
    list.insert(0, (dsp.clone(), sample_rate, extractor.clone()));
    list.truncate(RECENT_CAPACITY);
    Ok(extractor)
}

/// `sr` as a sample rate: an integer (or an integral float) that fits in 32 bits.
pub fn sample_rate(sr: &Bound<'_, PyAny>) -> PyResult<u32> {
    if let Ok(rate) = sr.extract::<u32>() {
        return Ok(rate);
    }
    if let Ok(rate) = sr.extract::<f64>()
        && rate.fract() == 0.0
        && (0.0..=f64::from(u32::MAX)).contains(&rate)
    {
        return Ok(rate as u32);
    }
    Err(PyValueError::new_err(format!(
        "sr must be the sample rate in Hz, a positive integer; got {}",
        sr.repr()?
    )))
}

/// The library's own listing of configuration problems (`specflow check` prints the same
/// lines).
fn invalid(problems: Vec<Problem>) -> PyErr {
    PyValueError::new_err(ConfigError::Invalid(problems).to_string())
}

/// The `[dsp]` section of a specflow TOML file, read by the worker's own loader (every section
/// parsed, unknown keys rejected). `SPECFLOW__…` environment overrides are not applied.
fn load(path: &Path) -> PyResult<DspConfig> {
    if let Err(e) = std::fs::metadata(path) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Err(PyFileNotFoundError::new_err((
                e.raw_os_error().unwrap_or(2),
                "specflow config file not found",
                path.display().to_string(),
            )));
        }
        return Err(e.into());
    }
    Settings::load_with_env(Some(path), std::iter::empty())
        .map(|settings| settings.dsp)
        .map_err(|e| PyValueError::new_err(format!("{}: {e}", path.display())))
}

/// Replaces single `[dsp]` keys, each checked by the same deserialiser as the config file's.
fn apply(dsp: DspConfig, overrides: Option<&Bound<'_, PyDict>>) -> PyResult<DspConfig> {
    let Some(overrides) = overrides.filter(|o| !o.is_empty()) else {
        return Ok(dsp);
    };
    let Value::Object(mut map) = serde_json::to_value(&dsp)
        .map_err(|e| PyValueError::new_err(format!("cannot represent [dsp]: {e}")))?
    else {
        return Err(PyValueError::new_err("[dsp] is not a table"));
    };
    for (key, value) in overrides.iter() {
        let key: String = key.extract()?;
        let bad = |message: String| -> PyResult<PyErr> {
            Ok(PyValueError::new_err(format!(
                "dsp.{key} = {}: {message}",
                value.repr()?
            )))
        };
        let json = match value.cast::<PyString>() {
            // `features="rms,mfcc"`, as `specflow extract --features`.
            Ok(words) if key == "features" => Value::Array(
                words
                    .extract::<String>()?
                    .split(',')
                    .map(|w| Value::String(w.trim().to_owned()))
                    .collect(),
            ),
            _ => match json_of_py(&value) {
                Ok(json) => json,
                Err(message) => return Err(bad(message)?),
            },
        };
        map.insert(key.clone(), json);
        if let Err(e) = serde_json::from_value::<DspConfig>(Value::Object(map.clone())) {
            return Err(bad(e.to_string())?);
        }
    }
    serde_json::from_value(Value::Object(map)).map_err(|e| PyValueError::new_err(e.to_string()))
}
