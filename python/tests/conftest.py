"""Shared helpers of the specflow Python tests: the repository's reference data, WAV reading as
the worker reads it, and the `specflow` binary."""

from __future__ import annotations

import os
import pathlib
import subprocess
import time
import wave
from typing import Callable

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = pathlib.Path(os.environ.get("SPECFLOW_REFERENCE_DIR", REPO / "tests" / "data"))
SIGNALS = sorted((DATA / "signals").glob("*.wav"))
CONFIG = REPO / "configs" / "specflow.toml"


def read_wav(path: pathlib.Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV as ``(channels, n)`` float32 (int16 / 32768, exact) and its rate."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2, f"{path}: expected 16-bit PCM"
        channels, rate = w.getnchannels(), w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return (pcm.reshape(-1, channels).T.astype(np.float32) / np.float32(32768)), rate


def eventually(condition: Callable[[], bool], seconds: float, every: float = 0.5) -> bool:
    """Whether `condition` holds within `seconds`, asked every `every` seconds."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def mono(y: np.ndarray) -> np.ndarray:
    """One channel as 1-D, several as they are (specflow averages them as the worker does)."""
    return y[0] if y.shape[0] == 1 else y


def assert_frames_equal(got: dict, expected: dict, what: str = "") -> None:
    """The same keys in the same order, shapes, dtypes and values, bit for bit."""
    assert list(got) == list(expected), f"{what}: keys {list(got)} != {list(expected)}"
    for key in expected:
        a, b = np.asarray(got[key]), np.asarray(expected[key])
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{what}: {key} {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        )
        # float32 compared as bits: -0.0 differs from 0.0, NaN equals NaN.
        bits = (lambda x: x.view(np.uint32)) if a.dtype == np.float32 else (lambda x: x)
        differ = bits(a) != bits(b)
        if differ.any():
            at = tuple(np.argwhere(differ)[0])
            raise AssertionError(
                f"{what}: {key} differs at {len(np.argwhere(differ))} places, first {at}: "
                f"{a[at]!r} != {b[at]!r}"
            )


def specflow_binary() -> pathlib.Path:
    """``target/debug/specflow`` (``SPECFLOW_BIN`` overrides), built by run-tests.sh."""
    path = pathlib.Path(os.environ.get("SPECFLOW_BIN", REPO / "target" / "debug" / "specflow"))
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: build it with `cargo build --bin specflow`")
        subprocess.run(["cargo", "build", "--locked", "--bin", "specflow"], cwd=REPO, check=True)
    return path


@pytest.fixture(scope="session")
def specflow_bin() -> pathlib.Path:
    return specflow_binary()
