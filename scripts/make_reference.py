#!/usr/bin/env python3
"""Writes extra librosa reference cases to tests/data/ for tests/dsp_parity.rs.

The shared reference (shared/reference) uses one parameter family (Hann, Slaney mel, power-of-two
frames). These cases use other windows, the HTK mel scale, odd and non-power-of-two frame
lengths and other pitch/rolloff settings, on signals synthesised here, so parity cannot come from
tuning to the shared files. The JSON layout is the shared one, with the extra parameters as
numbers (roll_percent, pitch_fmin, pitch_fmax, pitch_threshold) and `mel` = "htk" | "slaney".

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

OUT = Path(__file__).resolve().parent.parent / "tests" / "data"


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


def write_case(case: dict) -> None:
    sr = case["sample_rate"]
    p = case["params"]
    pcm = np.clip(np.round(case["make"](sr) * 32767), -32768, 32767).astype(np.int16)
    signal = case["name"] + ".wav"
    scipy.io.wavfile.write(OUT / "signals" / signal, sr, pcm)
    y = pcm.astype(np.float32) / 32768.0

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

    def rounded(v):
        return np.vectorize(lambda x: float(f"{x:.7g}"), otypes=[object])(np.asarray(v, dtype=np.float64)).tolist()

    doc = {
        "signal": signal,
        "sample_rate": sr,
        "frames": frames,
        "samples": int(y.size),
        "params": dict(p, center=False, mel_norm="slaney",
                       mfcc="dct-II ortho over power_to_db(mel, ref=1, amin=1e-10, top_db=None)",
                       chroma="chroma_stft tuning=0 norm=inf", librosa=librosa.__version__,
                       generator="scripts/make_reference.py"),
        "features": {k: rounded(v) for k, v in features.items()},
    }
    with open(OUT / "features" / (case["name"] + ".json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"{case['name']}: {frames} frames, {y.size} samples")


def main() -> None:
    os.makedirs(OUT / "signals", exist_ok=True)
    os.makedirs(OUT / "features", exist_ok=True)
    for case in CASES:
        write_case(case)


if __name__ == "__main__":
    main()
