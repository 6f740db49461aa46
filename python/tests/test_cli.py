"""`specflow.extract` is bit-identical to `specflow extract` (the CLI, the worker's DSP path) on
every shipped signal, with pYIN and with YIN."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

import specflow
from conftest import DATA, SIGNALS, assert_frames_equal, mono, read_wav


# The CLI's options, and the settings of each signal's reference case (the defaults do not fit
# every rate: 512 samples are too short for a 65 Hz period at 44.1 kHz).
OPTIONS = ["frame_length", "hop_length", "n_mels", "n_mfcc", "fmin", "fmax", "pitch_fmin",
           "pitch_fmax"]


def settings_of(wav) -> dict:
    """The CLI options of the reference case made from `wav`."""
    for case in sorted((DATA / "features").glob("*.json")):
        params = json.loads(case.read_text())
        if params["signal"] == wav.name:
            return {key: params["params"][key] for key in OPTIONS
                    if params["params"].get(key) is not None}
    raise AssertionError(f"no reference case for {wav.name}")


def cli_frames(binary, wav, method: str, settings: dict) -> dict:
    """`specflow extract --features all --pitch-method METHOD [--KEY VALUE...] WAV` as the dict
    `extract` returns."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECFLOW__")}
    options = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
    out = subprocess.run(
        [str(binary), "extract", "--features", "all", "--pitch-method", method, *options, str(wav)],
        check=True, capture_output=True, text=True, env=env,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert rows, f"{wav}: no frame"
    columns = {}
    for key, first in rows[0].items():
        values = [row[key] for row in rows]
        if key in ("index", "start_sample"):
            columns[key] = np.array(values, dtype=np.int64)
        elif key == "voiced":
            columns[key] = np.array(values, dtype=bool)
        elif key == "f0":
            columns[key] = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        elif isinstance(first, list):
            columns[key] = np.array(values, dtype=np.float32).reshape(len(rows), len(first))
        else:
            columns[key] = np.array(values, dtype=np.float32)
    return columns


@pytest.mark.parametrize("method", ["pyin", "yin"])
@pytest.mark.parametrize("wav", SIGNALS, ids=lambda p: p.stem)
def test_extract_is_bit_identical_to_the_cli(specflow_bin, wav, method):
    y, sr = read_wav(wav)
    settings = settings_of(wav)
    ours = specflow.extract(mono(y), sr, features="all", pitch_method=method, **settings)
    expected = cli_frames(specflow_bin, wav, method, settings)
    assert len(ours["index"]) > 10
    assert_frames_equal(ours, expected, f"{wav.name} {method}")
    if y.shape[0] > 1:
        # The worker's downmix of the channels, done beforehand in f64, gives the same frames.
        mixed = (y.astype(np.float64).sum(axis=0) * (1.0 / y.shape[0])).astype(np.float32)
        again = specflow.extract(mixed, sr, pitch_method=method, **settings)
        assert_frames_equal(again, ours, "downmix")


def test_float64_input_is_rounded_to_float32_first():
    y, sr = read_wav(SIGNALS[0])
    y = mono(y)
    assert_frames_equal(specflow.extract(y.astype(np.float64), sr), specflow.extract(y, sr))
