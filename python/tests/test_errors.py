"""Bad input raises a Python exception that names the problem: the library's own messages
(`specflow check`'s lines) for `[dsp]` problems."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

import specflow
from conftest import CONFIG

Y = np.zeros(16000, np.float32)


@pytest.mark.parametrize("y, match", [
    (np.zeros((2, 3, 4), np.float32), r"1-D \(samples\) or 2-D \(channels, samples\); got 3 dimensions, shape \(2, 3, 4\)"),
    (np.zeros((), np.float32), "got 0 dimensions"),
    (np.zeros((0, 100), np.float32), "no channel"),
    (np.zeros((16000, 2), np.float32), r"pass y\.T"),
    (np.array([0.0, np.nan, 0.5], np.float32), r"non-finite sample \(NaN\) at index 1"),
    (np.array([[0.0, 1.0], [np.inf, 0.0]]), r"non-finite sample \(inf\) at \[1, 0\]"),
    (np.array([0.0, -np.inf]), r"non-finite sample \(-inf\) at index 1"),
])
def test_bad_samples_are_value_errors(y, match):
    with pytest.raises(ValueError, match=match):
        specflow.extract(y, 16000)
    with pytest.raises(ValueError, match=match.replace("y\\.T", "chunk\\.T")):
        specflow.StreamExtractor(16000).push(y)


@pytest.mark.parametrize("y", [np.zeros(10, np.int16), np.zeros(10, bool), ["a", "b"]])
def test_non_float_samples_are_type_errors(y):
    with pytest.raises(TypeError, match="floating-point samples"):
        specflow.extract(y, 16000)


def test_other_float_types_and_lists_are_converted():
    y = np.linspace(-0.5, 0.5, 2000)
    expected = specflow.extract(y.astype(np.float32), 16000)
    for other in [y.astype(np.float16).astype(np.float32), y.astype(">f4"), list(y)]:
        got = specflow.extract(other, 16000)
        assert got.keys() == expected.keys()
    np.testing.assert_array_equal(specflow.extract(y.astype(">f4"), 16000)["rms"], expected["rms"])


@pytest.mark.parametrize("dsp, match", [
    (dict(features=["rms", "loudness"]), r"dsp\.features = loudness: unknown feature; expected \"all\" or one of rms, zcr"),
    (dict(features="rms,pitch"), r"dsp\.features = pitch: unknown feature"),
    (dict(features=[]), r"dsp\.features = \[\]: must name at least one feature"),
    (dict(hop_length=0), r"dsp\.hop_length = 0: must be between 1 and frame_length"),
    (dict(frame_length=8), r"dsp\.frame_length = 8: must be between 16 and 65536"),
    (dict(n_mfcc=50), r"dsp\.n_mfcc = 50: must not exceed n_mels \(40\)"),
    (dict(rolloff_percent=1.5), r"dsp\.rolloff_percent = 1\.5: must be between 0 and 1"),
    (dict(fmax=9000.0), r"dsp\.fmax = 9000: must not exceed the Nyquist frequency \(8000 Hz at 16000 Hz\)"),
    (dict(pitch_method="yin", pitch_fmin=20.0), r"dsp\.pitch_fmin = 20: its period"),
    (dict(pitch_methd="yin"), r"dsp\.pitch_methd = 'yin': unknown field `pitch_methd`, expected one of `frame_length`"),
    (dict(pitch_method="crepe"), r"dsp\.pitch_method = 'crepe': unknown variant `crepe`, expected `pyin` or `yin`"),
    (dict(window="kaiser"), r"unknown variant `kaiser`"),
    (dict(hop_length="160"), r"dsp\.hop_length = '160': invalid type: string \"160\", expected usize"),
    (dict(hop_length=-1), r"dsp\.hop_length = -1: invalid value: integer `-1`, expected usize"),
    (dict(fmin=float("nan")), r"dsp\.fmin = nan: must be a finite number"),
    (dict(bands=[[300.0, 100.0]]), r"dsp\.bands\[0\] = \[300, 100\]: band low edge must be below its high edge"),
])
def test_invalid_dsp_settings_are_value_errors(dsp, match):
    with pytest.raises(ValueError, match=match):
        specflow.extract(Y, 16000, **dsp)
    with pytest.raises(ValueError, match=match):
        specflow.StreamExtractor(16000, **dsp)


def test_every_problem_is_listed_as_specflow_check_lists_it(tmp_path, specflow_bin):
    config = tmp_path / "bad.toml"
    config.write_text(CONFIG.read_text().replace("hop_length = 160", "hop_length = 0")
                      .replace("n_mfcc = 13", "n_mfcc = 99"))
    with pytest.raises(ValueError) as raised:
        specflow.extract(Y, 16000, config=config)
    message = str(raised.value)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECFLOW__")}
    check = subprocess.run([str(specflow_bin), "check", "--config", str(config)],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 1
    lines = [line.removeprefix("error: ") for line in check.stderr.splitlines()
             if line.startswith("error: dsp.")]
    assert len(lines) == 2, check.stderr
    assert message.startswith("2 invalid setting(s):")
    for line in lines:
        assert f"\n  {line}" in message


def test_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="specflow config file not found") as raised:
        specflow.extract(Y, 16000, config=tmp_path / "missing.toml")
    assert raised.value.filename == str(tmp_path / "missing.toml")
    with pytest.raises(FileNotFoundError):
        specflow.StreamExtractor(16000, config=str(tmp_path / "missing.toml"))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[dsp]\nhop_lenght = 100\n")
    with pytest.raises(ValueError, match="unknown field `hop_lenght`"):
        specflow.extract(Y, 16000, config=unknown)
    broken = tmp_path / "broken.toml"
    broken.write_text("[dsp\n")
    with pytest.raises(ValueError, match="broken.toml"):
        specflow.extract(Y, 16000, config=broken)
    # The file's [dsp], then the keyword arguments.
    ok = tmp_path / "ok.toml"
    ok.write_text('[dsp]\nhop_length = 100\nfeatures = ["rms", "mel"]\nn_mels = 20\n')
    got = specflow.extract(Y, 16000, config=ok, n_mels=30)
    assert list(got) == ["index", "start_sample", "rms", "mel"]
    assert got["mel"].shape == (155, 30) and got["start_sample"][1] == 100
    assert specflow.dsp_config(config=ok)["n_mels"] == 20
    # The shipped configuration is the defaults.
    assert specflow.dsp_config(config=CONFIG) == specflow.dsp_config()


@pytest.mark.parametrize("sr", [0, -1, 1.5, "16000", None])
def test_bad_sample_rates_are_value_errors(sr):
    with pytest.raises(ValueError, match="sample_rate = 0|sr must be the sample rate"):
        specflow.extract(Y, sr)


@pytest.mark.parametrize("record, error, match", [
    ("{", ValueError, "not a specflow feature record: EOF"),
    ("[]", ValueError, "the JSON is an array"),
    ("{}", ValueError, "no `frames` or `columns` field"),
    ({"schema": 2, "frames": []}, ValueError, "schema 2; this specflow reads schema 1"),
    ({"frames": [{"index": 0, "start_sample": 0, "pitch": 1.0}]}, ValueError, "unknown feature `pitch`"),
    ({"frames": [{"index": 0, "rms": 1.0}]}, ValueError, r"frames\[0\]\.start_sample is missing"),
    ({"frame_count": 1, "hop_length": 160, "first_frame": 0, "columns": {"rms": b"\x27\x00\x00"}},
     ValueError, "not a packed float32 vector"),
    ({"frame_count": 2, "hop_length": 160, "first_frame": 0,
      "columns": {"rms": b"\x27\x00" + bytes(4)}}, ValueError, "columns.rms has 1 values for 2 frames"),
    (42, TypeError, "record must be a JSON str or bytes, or a dict; got int"),
])
def test_bad_records(record, error, match):
    with pytest.raises(error, match=match):
        specflow.decode_record(record)
