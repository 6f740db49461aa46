"""specflow's audio features in Python, computed by the specflow worker's own DSP (Rust).

- :func:`extract`: every frame of a signal, as ``dict[str, numpy.ndarray]``.
- :class:`StreamExtractor`: the same, fed chunk by chunk as the worker is fed.
- :func:`decode_record`: a record the worker wrote (output topic or MongoDB) back to arrays.
- :func:`concat`: joins such results (chunks, records) into one.
- :func:`dsp_config`: the resolved ``[dsp]`` settings.
- ``FEATURES``: every feature name, in output order.

The numbers are the worker's, bit for bit: ``extract(y, sr)`` equals ``specflow extract`` on
the same samples and what a worker stores for them.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from ._specflow import FEATURES, StreamExtractor, __version__, decode_record, dsp_config, extract

__all__ = [
    "FEATURES",
    "StreamExtractor",
    "__version__",
    "concat",
    "decode_record",
    "dsp_config",
    "extract",
]


def concat(parts: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join results of :func:`extract`, :meth:`StreamExtractor.push` or :func:`decode_record`.

    Parameters
    ----------
    parts : iterable of dict[str, numpy.ndarray]
        Results with the same keys, in frame order (for records of one stream: sorted by
        ``first_frame``).

    Returns
    -------
    dict[str, numpy.ndarray]
        Each key's arrays concatenated along the frame axis; ``{}`` when there is no part.

    Raises
    ------
    ValueError
        The parts do not have the same keys.
    """
    parts = list(parts)
    if not parts:
        return {}
    keys = list(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if set(part) != set(keys):
            raise ValueError(
                f"part {i} has keys {sorted(part)}, part 0 has {sorted(keys)}"
            )
    return {key: np.concatenate([part[key] for part in parts]) for key in keys}
