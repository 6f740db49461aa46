"""Parity with the shipped librosa 0.11 references (tests/data/features, tests/data/pyin), at
the tolerances of the Rust parity tests (tests/dsp_parity.rs, tests/pyin_parity.rs), on every
frame each reference defines."""

from __future__ import annotations

import json

import numpy as np
import pytest

import specflow
from conftest import DATA, mono, read_wav

FEATURE_CASES = sorted((DATA / "features").glob("*.json"))
PYIN_CASES = sorted((DATA / "pyin").glob("*.json"))


def test_reference_cases_exist():
    assert FEATURE_CASES and PYIN_CASES, f"no reference cases under {DATA}"


def dsp_of(params: dict) -> dict:
    """tests/dsp_parity.rs `config_from_params`: the case's parameters, every feature, YIN."""
    dsp = dict(
        frame_length=params["frame_length"],
        hop_length=params["hop_length"],
        window={"boxcar": "rectangular"}.get(params.get("window", "hann"), params.get("window", "hann")),
        features=["all"],
        fmax=params.get("fmax"),
        mel_scale="htk" if params.get("mel") == "htk" else "slaney",
        pitch_method="yin",
    )
    for key, ours in [("n_mels", "n_mels"), ("n_mfcc", "n_mfcc"), ("fmin", "fmin"),
                      ("roll_percent", "rolloff_percent"), ("pitch_fmin", "pitch_fmin"),
                      ("pitch_fmax", "pitch_fmax"), ("pitch_threshold", "pitch_threshold")]:
        if key in params:
            dsp[ours] = params[key]
    return dsp


@pytest.mark.parametrize("case", FEATURE_CASES, ids=lambda p: p.stem)
def test_features_match_librosa(case):
    ref = json.loads(case.read_text())
    y, sr = read_wav(DATA / "signals" / ref["signal"])
    assert sr == ref["sample_rate"]
    got = specflow.extract(mono(y), sr, **dsp_of(ref["params"]))
    n = ref["frames"]
    assert len(got["index"]) == n, f"{len(got['index'])} frames, expected {n}"
    features = ref["features"]
    failures = []

    for key in ["rms", "zcr", "spectral_centroid", "spectral_bandwidth", "spectral_rolloff",
                "spectral_flatness"]:
        expected = np.asarray(features[key], dtype=np.float64)
        ours = got[key].astype(np.float64)
        allowed = np.maximum(1e-4 * np.abs(expected), 1e-6)
        bad = np.flatnonzero(np.abs(ours - expected) > allowed)
        failures += [f"{key} frame {i}: got {ours[i]}, expected {expected[i]}" for i in bad]

    for key in ["mel", "mfcc", "chroma"]:
        expected = np.asarray(features[key], dtype=np.float64)
        ours = got[key].astype(np.float64)
        assert ours.shape == expected.shape, f"{key}: {ours.shape} != {expected.shape}"
        if key == "mel":
            frame_max = np.abs(expected).max(axis=1, keepdims=True)
            allowed = np.maximum(1e-3 * frame_max, 1e-12)
        else:
            allowed = 0.01 if key == "mfcc" else 1e-3
        bad = np.argwhere(np.abs(ours - expected) > allowed)
        failures += [f"{key}[{j}] frame {i}: got {ours[i, j]}, expected {expected[i, j]}"
                     for i, j in bad]

    # Voicing agrees with librosa's trough rule on >= 99 % of all frames; f0 within 1 % of
    # librosa.yin on >= 97 % of the frames the reference calls voiced.
    voiced_ref = np.asarray(features["yin_voiced"], dtype=bool)
    f0_ref = np.asarray(features["f0_yin"], dtype=np.float64)
    agreement = np.mean(got["voiced"] == voiced_ref)
    if agreement < 0.99:
        failures.append(f"YIN voicing agrees on only {100 * agreement:.1f}% of {n} frames")
    if voiced_ref.any():
        ours = got["f0"].astype(np.float64)[voiced_ref]
        close = np.mean(np.abs(ours - f0_ref[voiced_ref]) / f0_ref[voiced_ref] <= 0.01)
        if close < 0.97:
            failures.append(f"f0 within 1% of librosa on only {100 * close:.1f}% of voiced frames")
    assert not failures, f"{len(failures)} parity failures (first 20):\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("case", PYIN_CASES, ids=lambda p: p.stem)
def test_pyin_matches_librosa(case):
    ref = json.loads(case.read_text())
    params = ref["params"]
    assert params["center"] is False
    y, sr = read_wav(DATA / "signals" / ref["signal"])
    got = specflow.extract(mono(y), sr, frame_length=params["frame_length"],
                           hop_length=params["hop_length"], features=["f0"],
                           pitch_fmin=params["fmin"], pitch_fmax=params["fmax"],
                           pitch_method="pyin")
    n = ref["frames"]
    assert len(got["f0"]) == n
    voiced_ref = np.asarray(ref["voiced"], dtype=bool)
    f0_ref = np.array([np.nan if v is None else v for v in ref["f0"]], dtype=np.float64)
    prob_ref = np.asarray(ref["voiced_prob"], dtype=np.float64)
    # Voicing equal on >= 99 % of all frames, f0 within 1 % on >= 99 % of the frames both call
    # voiced, voiced_prob within 1e-3 on >= 99 % of all frames.
    assert np.mean(got["voiced"] == voiced_ref) >= 0.99
    both = got["voiced"] & ~np.isnan(f0_ref)
    if both.any():
        ratio = got["f0"][both].astype(np.float64) / f0_ref[both]
        assert np.mean(np.abs(ratio - 1.0) <= 0.01) >= 0.99
    assert np.mean(np.abs(got["voiced_prob"].astype(np.float64) - prob_ref) <= 1e-3) >= 0.99
    # f0 is NaN exactly where unvoiced.
    assert np.array_equal(np.isnan(got["f0"]), ~got["voiced"])
