//! Audio arrays to the mono `f32` samples the worker computes on.
//!
//! float32 samples are taken as the worker takes `f32le` PCM (`specflow::audio::decode_pcm`):
//! one channel as is; several averaged in `f64` (each sample summed in channel order, the sum
//! times `1 / channels`), then rounded once to `f32`. float64 samples are first rounded to
//! float32, as they would be sent. Non-finite samples are refused, as the worker refuses them.

use numpy::ndarray::{ArrayViewD, Ix1, Ix2};
use numpy::{
    PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The worker's default `input.max_channels`; more "channels" than this is a transposed array.
const MAX_CHANNELS: usize = 64;

/// A float array, borrowed read-only.
enum Floats<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

/// The mono samples of `y`: 1-D `(n,)` or 2-D `(channels, n)`, float32 or float64 (another
/// float type is converted; anything array-like is passed through `numpy.asarray`).
pub fn mono(y: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<f32>> {
    match floats(y, name)? {
        Floats::F32(a) => mix(a.as_array(), |v| v, name),
        Floats::F64(a) => mix(a.as_array(), |v| v as f32, name),
    }
}

fn floats<'py>(y: &Bound<'py, PyAny>, name: &str) -> PyResult<Floats<'py>> {
    let py = y.py();
    let numpy = py.import("numpy")?;
    let array = if y.is_instance_of::<PyUntypedArray>() {
        y.clone()
    } else {
        numpy.call_method1("asarray", (y,))?
    };
    if let Ok(a) = array.cast::<PyArrayDyn<f32>>() {
        return Ok(Floats::F32(a.readonly()));
    }
    if let Ok(a) = array.cast::<PyArrayDyn<f64>>() {
        return Ok(Floats::F64(a.readonly()));
    }
    let untyped = array.cast::<PyUntypedArray>()?;
    let dtype = untyped.dtype();
    if dtype.kind() == b'f' {
        // float16, float128 or a non-native byte order: converted, then read as above.
        let target = if dtype.itemsize() <= 4 {
            "float32"
        } else {
            "float64"
        };
        let kwargs = PyDict::new(py);
        kwargs.set_item("dtype", target)?;
        let converted = numpy.call_method("asarray", (&array,), Some(&kwargs))?;
        if let Ok(a) = converted.cast::<PyArrayDyn<f32>>() {
            return Ok(Floats::F32(a.readonly()));
        }
        if let Ok(a) = converted.cast::<PyArrayDyn<f64>>() {
            return Ok(Floats::F64(a.readonly()));
        }
    }
    Err(PyTypeError::new_err(format!(
        "{name} must hold floating-point samples (float32 or float64), got dtype {}; \
         scale integer PCM to [-1, 1) first, e.g. {name}.astype(numpy.float32) / 32768",
        dtype.str()?
    )))
}

/// Downmixes a 1-D or `(channels, n)` view to mono `f32`, refusing non-finite samples.
fn mix<T: Copy>(
    view: ArrayViewD<'_, T>,
    to_f32: impl Fn(T) -> f32,
    name: &str,
) -> PyResult<Vec<f32>> {
    let not_finite = |at: String, v: f32| {
        PyValueError::new_err(format!(
            "{name} holds a non-finite sample ({v}) at {at}; every sample must be finite"
        ))
    };
    match view.ndim() {
        1 => {
            let view = view
                .into_dimensionality::<Ix1>()
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            let mut out = Vec::with_capacity(view.len());
            for (i, &v) in view.iter().enumerate() {
                let v = to_f32(v);
                if !v.is_finite() {
                    return Err(not_finite(format!("index {i}"), v));
                }
                out.push(v);
            }
            Ok(out)
        }
        2 => {
            let view = view
                .into_dimensionality::<Ix2>()
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            let (channels, n) = view.dim();
            if channels == 0 {
                return Err(PyValueError::new_err(format!(
                    "{name} has shape (0, {n}): no channel; expected (channels, samples)"
                )));
            }
            if channels > MAX_CHANNELS {
                return Err(PyValueError::new_err(format!(
                    "{name} has shape ({channels}, {n}): expected (channels, samples) with at most \
                     {MAX_CHANNELS} channels; for (samples, channels) pass {name}.T"
                )));
            }
            // As decode_pcm: per sample, the channels summed in order in f64.
            let mut sums = vec![0.0f64; n];
            for (c, row) in view.outer_iter().enumerate() {
                for (i, (&v, sum)) in row.iter().zip(sums.iter_mut()).enumerate() {
                    let v = to_f32(v);
                    if !v.is_finite() {
                        return Err(not_finite(format!("[{c}, {i}]"), v));
                    }
                    *sum += f64::from(v);
                }
            }
            let scale = 1.0 / channels as f64;
            Ok(sums
                .into_iter()
                .map(|sum| {
                    if channels == 1 {
                        sum as f32
                    } else {
                        (sum * scale) as f32
                    }
                })
                .collect())
        }
        ndim => {
            let dims: Vec<String> = view.shape().iter().map(ToString::to_string).collect();
            Err(PyValueError::new_err(format!(
                "{name} must be 1-D (samples) or 2-D (channels, samples); got {ndim} dimensions, \
                 shape ({})",
                dims.join(", ")
            )))
        }
    }
}
