#!/usr/bin/env python3
"""specflow.extract against librosa, both called from Python as a user calls them, on the same
five minutes of audio and the same features.

- Audio: tests/data/signals/speech_16k.wav (espeak-ng speech, 16 kHz) repeated to 300 s, as
  float32 (or --wav FILE, mono or its channels averaged).
- YIN case: rms, zcr, spectral centroid / bandwidth / rolloff / flatness, mel (40, Slaney), mfcc
  (13), chroma and f0 (YIN, 65-2093 Hz), 512 / 160, Hann, center=False.
  specflow: one `specflow.extract(y, sr, features=[...], pitch_method="yin")` call.
  librosa: one shared `stft` for the spectral features (librosa's fastest use), plus
  `feature.rms`, `feature.zero_crossing_rate` and `yin` on the signal (scripts/librosa_bench.py).
- pYIN case: f0 alone. specflow: `specflow.extract(y, sr, features=["f0"],
  pitch_method="pyin")`; librosa: `librosa.pyin(y, fmin=65, fmax=2093, sr=sr, frame_length=512,
  hop_length=160, center=False)`.
Wall time (median of --repeats runs; librosa.pyin once, it takes minutes) and CPU time; the
warm-up (numba compilation) is excluded. Thread pools are left as they are (as a user has them).

Run it in its own virtual environment (librosa is not a dependency of the package), with the
release wheel: `bash python/benches/run-bench.sh` does all of this.

    python3 -m venv ~/.cache/specflow/python-bench-venv
    (cd python && maturin build --release)
    ~/.cache/specflow/python-bench-venv/bin/pip install librosa==0.11.0 target/wheels/specflow-*.whl
    ~/.cache/specflow/python-bench-venv/bin/python python/benches/bench_extract.py
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import statistics
import time
import wave

import librosa
import numpy as np

import specflow

REPO = pathlib.Path(__file__).resolve().parents[2]
SPEECH = REPO / "tests" / "data" / "signals" / "speech_16k.wav"
N_FFT, HOP, FMIN, FMAX = 512, 160, 65.0, 2093.0
YIN_FEATURES = ["rms", "zcr", "spectral_centroid", "spectral_bandwidth", "spectral_rolloff",
                "spectral_flatness", "mel", "mfcc", "chroma", "f0"]


def read(path: pathlib.Path, seconds: float) -> tuple[np.ndarray, int]:
    """A 16-bit WAV, channels averaged, repeated to `seconds`, as float32."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2, "expected 16-bit PCM"
        channels, rate = w.getnchannels(), w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, channels)
    y = (pcm.astype(np.float64).mean(axis=1) / 32768).astype(np.float32)
    n = int(seconds * rate)
    return np.tile(y, -(-n // y.size))[:n], rate


def librosa_features(y: np.ndarray, sr: int) -> int:
    """The YIN case's features with librosa (one shared STFT)."""
    S = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP, window="hann", center=False))
    P = S ** 2
    librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP, center=False)
    librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP, center=False)
    librosa.feature.spectral_centroid(S=S, sr=sr)
    librosa.feature.spectral_bandwidth(S=S, sr=sr)
    librosa.feature.spectral_rolloff(S=S, sr=sr, roll_percent=0.85)
    librosa.feature.spectral_flatness(S=S, power=2.0, amin=1e-10)
    mel = librosa.feature.melspectrogram(S=P, sr=sr, n_fft=N_FFT, n_mels=40, fmin=0.0, htk=False,
                                         norm="slaney")
    librosa.feature.mfcc(S=librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None), n_mfcc=13)
    librosa.feature.chroma_stft(S=P, sr=sr, n_fft=N_FFT, tuning=0.0, norm=np.inf)
    f0 = librosa.yin(y, fmin=FMIN, fmax=FMAX, sr=sr, frame_length=N_FFT, hop_length=HOP,
                     trough_threshold=0.1, center=False)
    return f0.size


def librosa_pyin(y: np.ndarray, sr: int) -> np.ndarray:
    f0, _, _ = librosa.pyin(y, fmin=FMIN, fmax=FMAX, sr=sr, frame_length=N_FFT, hop_length=HOP,
                            center=False)
    return f0


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds of `repeats` calls, and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="audio length (default 300)")
    parser.add_argument("--wav", type=pathlib.Path, default=SPEECH, help="16-bit WAV to repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (librosa.pyin: one)")
    parser.add_argument("--skip-librosa-pyin", action="store_true",
                        help="leave out librosa.pyin (minutes on five minutes of audio)")
    args = parser.parse_args()

    y, sr = read(args.wav, args.seconds)
    print(f"specflow {specflow.__version__}, librosa {librosa.__version__}, numpy {np.__version__}, "
          f"Python {platform.python_version()}; {y.size / sr:.0f} s of {args.wav.name} at {sr} Hz")

    # Warm-up: librosa's numba compilation, specflow's extractor (tables, filter banks).
    short = y[: 2 * sr]
    librosa_features(short, sr)
    librosa_pyin(short, sr)
    specflow.extract(short, sr, features=YIN_FEATURES, pitch_method="yin")
    specflow.extract(short, sr, features=["f0"], pitch_method="pyin")

    rows = []
    sf_wall, sf_cpu, ours = timed(
        lambda: specflow.extract(y, sr, features=YIN_FEATURES, pitch_method="yin"), args.repeats)
    lr_wall, lr_cpu, frames = timed(lambda: librosa_features(y, sr), args.repeats)
    assert len(ours["index"]) == frames, (len(ours["index"]), frames)
    rows.append(("features, YIN", frames, sf_wall, sf_cpu, lr_wall, lr_cpu))

    all_wall, all_cpu, _ = timed(lambda: specflow.extract(y, sr, pitch_method="yin"), args.repeats)
    print(f"(specflow every feature, YIN: {all_wall:.3f} s wall, {all_cpu:.3f} s CPU)")

    sp_wall, sp_cpu, ours = timed(
        lambda: specflow.extract(y, sr, features=["f0"], pitch_method="pyin"), args.repeats)
    if not args.skip_librosa_pyin:
        print("librosa.pyin on the whole signal (one run; minutes)...", flush=True)
        lp_wall, lp_cpu, f0 = timed(lambda: librosa_pyin(y, sr), 1)
        assert f0.size == len(ours["f0"])
        agree = np.mean(np.isnan(f0) == np.isnan(ours["f0"]))
        print(f"(voicing agrees with librosa.pyin on {100 * agree:.1f}% of {f0.size} frames)")
        rows.append(("f0, pYIN", f0.size, sp_wall, sp_cpu, lp_wall, lp_cpu))
    else:
        rows.append(("f0, pYIN", len(ours["f0"]), sp_wall, sp_cpu, float("nan"), float("nan")))

    print()
    print("| case | frames | specflow.extract wall (CPU) | librosa wall (CPU) | less time |")
    print("| --- | --- | --- | --- | --- |")
    for name, n, sw, sc, lw, lc in rows:
        print(f"| {name} | {n} | {sw:.3f} s ({sc:.3f} s) | {lw:.2f} s ({lc:.2f} s) | "
              f"**{lw / sw:.0f}×** |")


if __name__ == "__main__":
    main()
