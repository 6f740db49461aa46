"""specflow's audio features in Python, computed by the specflow worker's own DSP (Rust)."""

import os
from typing import Any, Iterable, Mapping, Optional, Tuple, Union, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "FEATURES",
    "StreamExtractor",
    "__version__",
    "concat",
    "decode_record",
    "dsp_config",
    "extract",
]

__version__: str

FEATURES: Tuple[str, ...]
"""Every feature name, in output order."""

_Samples = npt.ArrayLike
_Path = Union[str, "os.PathLike[str]"]
_Frames = dict[str, np.ndarray]

def extract(
    y: _Samples,
    sr: int,
    *,
    config: Optional[_Path] = None,
    **dsp: Any,
) -> _Frames:
    """Compute every frame of an audio signal with the specflow worker's own DSP.

    ``y`` is float32/float64, 1-D ``(n,)`` or 2-D ``(channels, n)`` (averaged as the worker
    does); ``config`` a specflow TOML file whose ``[dsp]`` section is used; ``**dsp`` single
    ``[dsp]`` keys (``frame_length=``, ``hop_length=``, ``features=``, ``pitch_method=``,
    ``n_mels=``, ...). Returns ``index``, ``start_sample`` and one array per feature, one row
    per frame (``f0`` NaN where unvoiced, ``voiced`` bool, with pYIN ``voiced_prob``).

    Raises ``ValueError`` (shape, non-finite sample, unknown feature, invalid ``[dsp]`` key or
    value), ``FileNotFoundError`` (missing config), ``TypeError`` (not floating-point samples).
    """

def dsp_config(*, config: Optional[_Path] = None, **dsp: Any) -> dict[str, Any]:
    """The resolved ``[dsp]`` settings (``config`` and ``**dsp`` as :func:`extract`)."""

def decode_record(
    record: Union[str, bytes, bytearray, Mapping[str, Any]],
    *,
    timestamps: bool = False,
) -> _Frames:
    """Decode one feature record (output-topic JSON, or a MongoDB document in either
    ``mongo.layout``) to the same dict of arrays as :func:`extract`; with ``timestamps``, also
    ``timestamp_ms``.

    Raises ``ValueError`` when it is not a specflow feature record, ``TypeError`` when it is
    not a str, bytes or mapping.
    """

def concat(parts: Iterable[Mapping[str, np.ndarray]]) -> _Frames:
    """Join results with the same keys along the frame axis (``{}`` for no part)."""

@final
class StreamExtractor:
    """Features of a stream fed chunk by chunk, exactly as the specflow worker computes them.

    Pushing any chunking of ``y`` and then calling :meth:`finish` gives, concatenated,
    exactly ``extract(y, sr)``.
    """

    def __new__(cls, sr: int, *, config: Optional[_Path] = None, **dsp: Any) -> "StreamExtractor": ...
    def push(self, chunk: _Samples, start_sample: Optional[int] = None) -> _Frames:
        """Feed the next chunk; return the frames it completed (possibly none)."""
    def finish(self) -> _Frames:
        """End the stream; return its last frames. A later chunk starts a new stream."""
    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz."""
    @property
    def frame_length(self) -> int:
        """Samples per frame."""
    @property
    def hop_length(self) -> int:
        """Samples between frame starts."""
    @property
    def features(self) -> Tuple[str, ...]:
        """The computed features' names, in output order."""
    @property
    def next_sample(self) -> int:
        """Index of the next sample the stream expects (0 before the first chunk)."""
    @property
    def pending_frames(self) -> int:
        """Frames waiting for their pitch decision (pYIN), returned later."""
