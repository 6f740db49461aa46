//! `specflow._specflow`, the extension module of the `specflow` Python package: the worker's
//! own DSP ([`specflow::dsp`]) on numpy arrays, and its records decoded back to arrays.
//!
//! - `extract`: `extract`, `StreamExtractor` and `dsp_config`.
//! - `record`: `decode_record`.
//! - `settings`: `[dsp]` from a config file and keyword overrides, validated by the library.
//! - `samples`: arrays to the worker's mono `f32` samples.
//! - `frames`: frames as columns and as the returned dict of numpy arrays.
//! - `value`: Python objects and JSON as plain values.

use pyo3::prelude::*;

mod extract;
mod frames;
mod record;
mod samples;
mod settings;
mod value;

/// specflow's audio features, computed by the specflow worker's own DSP (Rust).
#[pymodule(name = "_specflow")]
mod specflow_module {
    use pyo3::prelude::*;
    use pyo3::types::PyTuple;
    use specflow::dsp::FEATURES;

    #[pymodule_export]
    use crate::extract::{StreamExtractor, dsp_config, extract};
    #[pymodule_export]
    use crate::record::decode_record;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let names: Vec<&str> = FEATURES.iter().map(|spec| spec.name).collect();
        m.add("FEATURES", PyTuple::new(m.py(), names)?)?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}
