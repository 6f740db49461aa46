#!/usr/bin/env python3
"""Regenerates every reference file under tests/data/ from its WAV, with librosa.

For each case below it writes
- `signals/<case>.wav` (only for the cases synthesised here; the others are the recordings and
  test signals shipped in `signals/`, which this script reads),
- `features/<case>.json`: what librosa computes for the spectral features, `f0_yin`
  (`librosa.yin`) and `yin_voiced`, the YIN voicing rule per frame (a trough of the cumulative
  mean normalised difference below `trough_threshold` within `[sr/fmax, sr/fmin]`; where there is
  none, librosa.yin still reports the global minimum, so `f0_yin` alone cannot say it),
- `pyin/<case>.json`: what `librosa.pyin` computes (`f0` null where unvoiced, `voiced`,
  `voiced_prob`) with `center=False`, the case's pitch range and librosa's other defaults.

Every file records the librosa and numpy versions that made it. The definitions are in
tests/data/README.md. The synthesised cases use other windows, the HTK mel scale, odd and
non-power-of-two frame lengths and other pitch/rolloff settings, so parity cannot come from
tuning to one parameter family.

    python3 -m venv ~/.cache/specflow/venv-librosa      # any venv with librosa 0.11 will do
    ~/.cache/specflow/venv-librosa/bin/pip install librosa
    ~/.cache/specflow/venv-librosa/bin/python scripts/make_reference.py
"""

import json
import os
from pathlib import Path

import librosa
import numpy as np
import scipy.io.wavfile
from librosa.core.pitch import _cumulative_mean_normalized_difference

OUT = Path(__file__).resolve().parent.parent / "tests" / "data"

# The parameter family of the shipped test signals (Hann, Slaney mel, power-of-two frames).
YIN_DEFAULTS = dict(pitch_fmin=65.0, pitch_fmax=2093.0, pitch_threshold=0.1, roll_percent=0.85)


def shipped(n_fft: int, hop: int, n_mels: int, n_mfcc: int, fmin: float, fmax: float) -> dict:
    return dict(frame_length=n_fft, hop_length=hop, window="hann", n_mels=n_mels, n_mfcc=n_mfcc,
                fmin=fmin, fmax=fmax, mel="slaney", **YIN_DEFAULTS)


def harmonic_vibrato(sr: int) -> np.ndarray:
    """3 s: a vibrato tone (180 Hz +- 20 Hz at 5 Hz, 8 decaying harmonics), 0.3 s of digital
    silence, the tone again at half level, then a white-noise burst."""
    rng = np.random.default_rng(42)
    t = np.arange(int(1.2 * sr)) / sr
    f0 = 180.0 + 20.0 * np.sin(2 * np.pi * 5.0 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tone = sum(np.sin(h * phase) / h ** 1.5 for h in range(1, 9))
    tone *= 0.4 / np.max(np.abs(tone))
    silence = np.zeros(int(0.3 * sr))
    noise = 0.2 * rng.uniform(-1, 1, int(0.3 * sr))
    return np.concatenate([tone, silence, 0.5 * tone, noise])


def two_notes(sr: int) -> np.ndarray:
    """2 s: C4 then G4 (each with 3 harmonics), a C4+E4 dyad, plus low-level noise."""
    rng = np.random.default_rng(7)
    seg = int(0.66 * sr)
    t = np.arange(seg) / sr

    def note(f: float) -> np.ndarray:
        return sum(np.sin(2 * np.pi * h * f * t) / h for h in (1, 2, 3))

    y = np.concatenate([note(261.63), note(392.0), 0.6 * (note(261.63) + note(329.63))])
    y = 0.35 * y / np.max(np.abs(y))
    return y + 0.01 * rng.standard_normal(y.size)


CASES = [
    {"name": "chirp_16k", "sample_rate": 16000, "params": shipped(512, 128, 40, 13, 0.0, 8000.0)},
    {"name": "noise_16k", "sample_rate": 16000, "params": shipped(1024, 512, 40, 13, 0.0, 8000.0)},
    {"name": "sine440_16k", "sample_rate": 16000, "params": shipped(1024, 256, 40, 13, 0.0, 8000.0)},
    {"name": "speech_16k", "sample_rate": 16000, "params": shipped(512, 160, 40, 13, 20.0, 7600.0)},
    {"name": "square220_22k", "sample_rate": 22050,
     "params": shipped(2048, 512, 128, 20, 0.0, 11025.0)},
    {"name": "twotone_stereo_44k", "sample_rate": 44100,
     "params": shipped(2048, 512, 128, 20, 0.0, 22050.0)},
    {
        "name": "vibrato_hamming_htk_400_16k",
        "make": harmonic_vibrato,
        "sample_rate": 16000,
        "params": dict(frame_length=400, hop_length=160, window="hamming", n_mels=26, n_mfcc=13,
                       fmin=20.0, fmax=7000.0, mel="htk", roll_percent=0.9,
                       pitch_fmin=100.0, pitch_fmax=1000.0, pitch_threshold=0.15),
    },
    {
        "name": "notes_blackman_odd401_8k",
        "make": two_notes,
        "sample_rate": 8000,
        "params": dict(frame_length=401, hop_length=97, window="blackman", n_mels=32, n_mfcc=20,
                       fmin=50.0, fmax=3800.0, mel="slaney", roll_percent=0.75,
                       pitch_fmin=70.0, pitch_fmax=1500.0, pitch_threshold=0.1),
    },
]


def versions() -> dict:
    return dict(librosa=librosa.__version__, numpy=np.__version__,
                generator="scripts/make_reference.py")


def rounded(v):
    """7 significant digits; None stays None (pyin's unvoiced f0)."""
    return [None if x is None or np.isnan(x) else float(f"{x:.7g}")
            for x in np.asarray(v, dtype=np.float64).ravel().tolist()] if np.ndim(v) == 1 else \
        [rounded(row) for row in v]


def load_signal(case: dict) -> np.ndarray:
    """Mono float32 samples (int16 / 32768, channels averaged) of the case's WAV, writing the
    WAV first when the case is synthesised here."""
    sr = case["sample_rate"]
    path = OUT / "signals" / (case["name"] + ".wav")
    if "make" in case:
        pcm = np.clip(np.round(case["make"](sr) * 32767), -32768, 32767).astype(np.int16)
        scipy.io.wavfile.write(path, sr, pcm)
    rate, pcm = scipy.io.wavfile.read(path)
    assert rate == sr, f"{path}: {rate} Hz, expected {sr}"
    assert pcm.dtype == np.int16, f"{path}: expected 16-bit PCM"
    y = pcm.astype(np.float64) / 32768.0
    if y.ndim == 2:
        y = y.mean(axis=1)
    return y.astype(np.float32)


def yin_voiced(y: np.ndarray, sr: int, n_fft: int, hop: int, fmin: float, fmax: float,
               threshold: float) -> np.ndarray:
    """librosa.yin's own rule, per frame: is there a trough below the threshold?"""
    frames = librosa.util.frame(y, frame_length=n_fft, hop_length=hop)
    min_period = int(np.floor(sr / fmax))
    max_period = min(int(np.ceil(sr / fmin)), n_fft - 1)
    cmnd = _cumulative_mean_normalized_difference(frames, min_period, max_period)
    is_trough = librosa.util.localmin(cmnd, axis=-2)
    is_trough[..., 0, :] = cmnd[..., 0, :] < cmnd[..., 1, :]
    return np.any(np.logical_and(is_trough, cmnd < threshold), axis=-2)


def write_features(case: dict, y: np.ndarray) -> int:
    sr = case["sample_rate"]
    p = case["params"]
    n_fft, hop = p["frame_length"], p["hop_length"]
    htk = p["mel"] == "htk"
    S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, window=p["window"], center=False))
    P = S ** 2
    mel = librosa.feature.melspectrogram(S=P, sr=sr, n_fft=n_fft, n_mels=p["n_mels"], fmin=p["fmin"],
                                         fmax=p["fmax"], htk=htk, norm="slaney")
    features = {
        "rms": librosa.feature.rms(y=y, frame_length=n_fft, hop_length=hop, center=False)[0],
        "zcr": librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop, center=False)[0],
        "spectral_centroid": librosa.feature.spectral_centroid(S=S, sr=sr, n_fft=n_fft)[0],
        "spectral_bandwidth": librosa.feature.spectral_bandwidth(S=S, sr=sr, n_fft=n_fft)[0],
        "spectral_rolloff": librosa.feature.spectral_rolloff(S=S, sr=sr, n_fft=n_fft,
                                                             roll_percent=p["roll_percent"])[0],
        "spectral_flatness": librosa.feature.spectral_flatness(S=S, power=2.0, amin=1e-10)[0],
        "mel": mel.T,
        "mfcc": librosa.feature.mfcc(S=librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None),
                                     n_mfcc=p["n_mfcc"]).T,
        "chroma": librosa.feature.chroma_stft(S=P, sr=sr, n_fft=n_fft, tuning=0.0, norm=np.inf).T,
        "f0_yin": librosa.yin(y, fmin=p["pitch_fmin"], fmax=p["pitch_fmax"], sr=sr, frame_length=n_fft,
                              hop_length=hop, trough_threshold=p["pitch_threshold"], center=False),
    }
    frames = features["rms"].size
    assert all(len(v) == frames for v in features.values())
    voiced = yin_voiced(y, sr, n_fft, hop, p["pitch_fmin"], p["pitch_fmax"], p["pitch_threshold"])
    assert voiced.size == frames
    doc = {
        "signal": case["name"] + ".wav",
        "sample_rate": sr,
        "frames": frames,
        "samples": int(y.size),
        "params": dict(p, center=False, mel_norm="slaney",
                       mfcc="dct-II ortho over power_to_db(mel, ref=1, amin=1e-10, top_db=None)",
                       chroma="chroma_stft tuning=0 norm=inf",
                       f0="librosa.yin trough_threshold=pitch_threshold; yin_voiced: a trough "
                          "below it within [sr/pitch_fmax, sr/pitch_fmin]",
                       **versions()),
        "features": dict({k: rounded(v) for k, v in features.items()},
                         yin_voiced=[bool(v) for v in voiced]),
    }
    with open(OUT / "features" / (case["name"] + ".json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    return frames


def write_pyin(case: dict, y: np.ndarray) -> int:
    sr = case["sample_rate"]
    p = case["params"]
    n_fft, hop = p["frame_length"], p["hop_length"]
    f0, voiced, voiced_prob = librosa.pyin(y, fmin=p["pitch_fmin"], fmax=p["pitch_fmax"], sr=sr,
                                           frame_length=n_fft, hop_length=hop, center=False)
    doc = {
        "signal": case["name"] + ".wav",
        "sample_rate": sr,
        "frames": int(f0.size),
        "params": dict(frame_length=n_fft, hop_length=hop, center=False, fmin=p["pitch_fmin"],
                       fmax=p["pitch_fmax"],
                       pyin="librosa.pyin defaults: n_thresholds 100, beta (2, 18), boltzmann 2, "
                            "resolution 0.1, max_transition_rate 35.92, switch_prob 0.01, "
                            "no_trough_prob 0.01",
                       **versions()),
        "f0": rounded(f0),
        "voiced": [bool(v) for v in voiced],
        "voiced_prob": rounded(voiced_prob),
    }
    with open(OUT / "pyin" / (case["name"] + ".json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    return int(voiced.sum())


def main() -> None:
    for sub in ("signals", "features", "pyin"):
        os.makedirs(OUT / sub, exist_ok=True)
    for case in CASES:
        y = load_signal(case)
        frames = write_features(case, y)
        voiced = write_pyin(case, y)
        print(f"{case['name']}: {frames} frames ({voiced} pyin-voiced), {y.size} samples")


if __name__ == "__main__":
    main()
