//! `extract` and `StreamExtractor`: the worker's `FeatureExtractor` and stream state, fed as
//! the worker feeds them, computing with the GIL released.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use specflow::dsp::{FeatureExtractor, FrameBatch, StreamState, Workspace};

use crate::frames::{Frames, Layout};
use crate::samples::mono;
use crate::settings::{extractor, resolve, sample_rate};

/// Compute every frame of an audio signal with the specflow worker's own DSP.
///
/// Parameters
/// ----------
/// y : numpy.ndarray
///     Samples, float32 or float64: 1-D ``(n,)``, or 2-D ``(channels, n)`` averaged to mono as
///     the worker averages PCM channels. Every sample must be finite.
/// sr : int
///     Sample rate in Hz.
/// config : str or os.PathLike, optional
///     A specflow TOML file; its ``[dsp]`` section is used (validated as ``specflow check``
///     does; ``SPECFLOW__*`` environment overrides are not applied). Default: the defaults.
/// **dsp
///     Single ``[dsp]`` keys overriding the file's: ``frame_length=``, ``hop_length=``,
///     ``features=`` (a list of names or a comma-separated string, ``"all"``),
///     ``pitch_method="pyin"|"yin"``, ``n_mels=``, ``fmin=``, ``fmax=``, ...
///
/// Returns
/// -------
/// dict[str, numpy.ndarray]
///     One row per frame (frame ``k`` covers samples ``[k*hop_length, k*hop_length +
///     frame_length)``): ``index`` and ``start_sample`` (int64), then each feature (float32;
///     ``mel`` is ``frames x n_mels``); ``f0`` is NaN where unvoiced and is followed by
///     ``voiced`` (bool) and, with pYIN, ``voiced_prob``.
///
/// Raises
/// ------
/// ValueError
///     A wrong shape, a non-finite sample, an unknown feature, an invalid ``[dsp]`` key or value.
/// FileNotFoundError
///     ``config`` does not exist.
/// TypeError
///     ``y`` does not hold floating-point samples.
#[pyfunction]
#[pyo3(signature = (y, sr, *, config=None, **dsp))]
pub fn extract<'py>(
    py: Python<'py>,
    y: &Bound<'py, PyAny>,
    sr: &Bound<'py, PyAny>,
    config: Option<PathBuf>,
    dsp: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let settings = resolve(config.as_deref(), dsp)?;
    let rate = sample_rate(sr)?;
    let samples = mono(y, "y")?;
    let frames = py.detach(|| -> PyResult<Frames> {
        let extractor = extractor(&settings, rate)?;
        let layout = Layout::new(&extractor, &settings);
        let mut workspace = extractor.workspace();
        let mut state = extractor.new_stream(0);
        let mut out = FrameBatch::new();
        extractor.process(&mut workspace, &mut state, &samples, &mut out);
        extractor.finish_stream(&mut state, &mut out);
        Ok(Frames::of_batch(&out, &layout))
    })?;
    frames.into_dict(py)
}

/// The resolved ``[dsp]`` settings, as a dict, without computing anything.
///
/// Takes ``config`` and ``**dsp`` as :func:`extract` does, and raises the same errors (only the
/// problems that do not depend on a sample rate).
#[pyfunction]
#[pyo3(signature = (*, config=None, **dsp))]
pub fn dsp_config<'py>(
    py: Python<'py>,
    config: Option<PathBuf>,
    dsp: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let settings = resolve(config.as_deref(), dsp)?;
    let text =
        serde_json::to_string(&settings).map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// Features of a stream fed chunk by chunk, exactly as the specflow worker computes them.
///
/// Pushing any chunking of ``y`` (and then calling :meth:`finish`) gives, concatenated,
/// exactly ``extract(y, sr)`` with the same settings.
///
/// Parameters
/// ----------
/// sr : int
///     Sample rate in Hz.
/// config : str or os.PathLike, optional
///     A specflow TOML file whose ``[dsp]`` section is used (see :func:`extract`).
/// **dsp
///     Single ``[dsp]`` keys overriding the file's (see :func:`extract`).
///
/// Raises
/// ------
/// ValueError, FileNotFoundError
///     As :func:`extract`.
///
/// Notes
/// -----
/// One object holds one stream's state: use one per stream, and not from two threads at once.
#[pyclass(module = "specflow._specflow")]
pub struct StreamExtractor {
    extractor: Arc<FeatureExtractor>,
    layout: Layout,
    workspace: Workspace,
    /// `None` before the first chunk and after `finish`.
    state: Option<StreamState>,
    out: FrameBatch,
}

impl StreamExtractor {
    /// Feeds one chunk as the worker applies a message: a new stream starts at `start` (0 when
    /// absent); a later start is a gap (the frames waiting for their pitch are decided first);
    /// an earlier one overlaps, and the samples the stream already has are skipped.
    fn feed(&mut self, samples: &[f32], start: Option<u64>) -> Result<(), String> {
        self.out.clear();
        let extractor = &self.extractor;
        let state = self
            .state
            .get_or_insert_with(|| extractor.new_stream(start.unwrap_or(0)));
        let expected = state.next_sample();
        let start = start.unwrap_or(expected);
        let mut feed = samples;
        if start > expected {
            extractor.restart_stream(state, start, &mut self.out);
        } else if start < expected {
            let overlap = (expected - start) as usize;
            if overlap >= samples.len() && !samples.is_empty() {
                return Err(format!(
                    "chunk [{start}, {}) ends before sample {expected}, which the stream already has",
                    start + samples.len() as u64
                ));
            }
            feed = &samples[overlap.min(samples.len())..];
        }
        extractor.process(&mut self.workspace, state, feed, &mut self.out);
        Ok(())
    }

    /// Ends the stream: the frames still waiting for their pitch decision (pYIN).
    fn end(&mut self) {
        self.out.clear();
        if let Some(mut state) = self.state.take() {
            self.extractor.finish_stream(&mut state, &mut self.out);
        }
    }
}

#[pymethods]
impl StreamExtractor {
    #[new]
    #[pyo3(signature = (sr, *, config=None, **dsp))]
    fn new(
        sr: &Bound<'_, PyAny>,
        config: Option<PathBuf>,
        dsp: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let settings = resolve(config.as_deref(), dsp)?;
        let extractor = extractor(&settings, sample_rate(sr)?)?;
        Ok(Self {
            layout: Layout::new(&extractor, &settings),
            workspace: extractor.workspace(),
            extractor,
            state: None,
            out: FrameBatch::new(),
        })
    }

    /// Feed the next chunk; return the frames it completed (the same dict as :func:`extract`,
    /// possibly with no row).
    ///
    /// Parameters
    /// ----------
    /// chunk : numpy.ndarray
    ///     Samples, as ``y`` of :func:`extract` (1-D, or ``(channels, n)``).
    /// start_sample : int, optional
    ///     Index of the chunk's first sample in the stream, as the worker's ``audio.start_sample``
    ///     header: a gap restarts the frame grid there, an overlap is skipped. Default: right
    ///     after the previous chunk (0 for the first).
    ///
    /// Raises
    /// ------
    /// ValueError
    ///     A wrong shape, a non-finite sample, or a chunk that lies wholly before what the stream
    ///     already has.
    #[pyo3(signature = (chunk, start_sample=None))]
    fn push<'py>(
        mut slf: PyRefMut<'py, Self>,
        chunk: &Bound<'py, PyAny>,
        start_sample: Option<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let samples = mono(chunk, "chunk")?;
        let this = &mut *slf;
        let frames = py.detach(|| {
            this.feed(&samples, start_sample)
                .map(|()| Frames::of_batch(&this.out, &this.layout))
        });
        frames.map_err(PyValueError::new_err)?.into_dict(py)
    }

    /// End the stream; return its last frames (with pYIN, those still waiting for their pitch
    /// decision). A chunk pushed afterwards starts a new stream.
    fn finish<'py>(mut slf: PyRefMut<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let this = &mut *slf;
        let frames = py.detach(|| {
            this.end();
            Frames::of_batch(&this.out, &this.layout)
        });
        frames.into_dict(py)
    }

    /// Sample rate in Hz.
    #[getter]
    fn sample_rate(&self) -> u32 {
        self.extractor.sample_rate()
    }

    /// Samples per frame.
    #[getter]
    fn frame_length(&self) -> usize {
        self.extractor.frame_length()
    }

    /// Samples between frame starts.
    #[getter]
    fn hop_length(&self) -> usize {
        self.extractor.hop_length()
    }

    /// The computed features' names, in output order.
    #[getter]
    fn features<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.layout.feature_names())
    }

    /// Index of the next sample the stream expects (0 before the first chunk).
    #[getter]
    fn next_sample(&self) -> u64 {
        self.state.as_ref().map_or(0, StreamState::next_sample)
    }

    /// Frames computed but waiting for their pitch decision (pYIN), returned later.
    #[getter]
    fn pending_frames(&self) -> usize {
        self.state.as_ref().map_or(0, StreamState::pending_frames)
    }

    fn __repr__(&self) -> String {
        let names: Vec<String> = self
            .layout
            .feature_names()
            .iter()
            .map(|name| format!("'{name}'"))
            .collect();
        format!(
            "StreamExtractor(sr={}, frame_length={}, hop_length={}, features=[{}])",
            self.extractor.sample_rate(),
            self.extractor.frame_length(),
            self.extractor.hop_length(),
            names.join(", ")
        )
    }
}
