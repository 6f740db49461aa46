#!/usr/bin/env python3
"""Single-core librosa baseline for benches/dsp.rs: the same features, signal and parameters.

Computes rms, zcr, spectral centroid/bandwidth/rolloff/flatness, mel, mfcc, chroma and yin
(center=False, like specflow) on 10 s of a linear chirp plus white noise, and prints input
samples per second. Thread pools are pinned to one thread before numpy is imported.

    python3 -m venv ~/.cache/specflow/venv-librosa      # any venv with librosa 0.11 will do
    ~/.cache/specflow/venv-librosa/bin/pip install librosa
    ~/.cache/specflow/venv-librosa/bin/python scripts/librosa_bench.py
"""

import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import librosa  # noqa: E402
import numpy as np  # noqa: E402

SECONDS = 10


def chirp_plus_noise(rate: int) -> np.ndarray:
    """Linear chirp 100 Hz -> 0.45 * rate at amplitude 0.5, plus uniform noise of amplitude 0.05."""
    t = np.arange(SECONDS * rate) / rate
    f0, f1 = 100.0, 0.45 * rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * SECONDS))
    noise = np.random.default_rng(1).uniform(-1.0, 1.0, t.size)
    return (0.5 * np.sin(phase) + 0.05 * noise).astype(np.float32)


def features(y: np.ndarray, sr: int, n_fft: int, hop: int) -> int:
    """Every librosa feature specflow matches, from one shared STFT (the fastest librosa use)."""
    kw = dict(center=False)
    S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, window="hann", **kw))
    P = S ** 2
    librosa.feature.rms(y=y, frame_length=n_fft, hop_length=hop, **kw)
    librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop, **kw)
    librosa.feature.spectral_centroid(S=S, sr=sr)
    librosa.feature.spectral_bandwidth(S=S, sr=sr)
    librosa.feature.spectral_rolloff(S=S, sr=sr, roll_percent=0.85)
    librosa.feature.spectral_flatness(S=S, power=2.0, amin=1e-10)
    mel = librosa.feature.melspectrogram(S=P, sr=sr, n_fft=n_fft, n_mels=40, fmin=0.0, htk=False, norm="slaney")
    librosa.feature.mfcc(S=librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None), n_mfcc=13)
    librosa.feature.chroma_stft(S=P, sr=sr, n_fft=n_fft, tuning=0.0, norm=np.inf)
    f0 = librosa.yin(y, fmin=65.0, fmax=2093.0, sr=sr, frame_length=n_fft, hop_length=hop,
                     trough_threshold=0.1, **kw)
    return f0.size


def pyin_only() -> None:
    """librosa.pyin on the same signal, per frame (benches/dsp.rs `pyin_only`)."""
    print(f"librosa {librosa.__version__}, numpy {np.__version__}, one thread, pyin")
    for sr, n_fft, hop in ((16000, 512, 160), (48000, 2048, 480)):
        y = chirp_plus_noise(sr)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            f0, _, _ = librosa.pyin(y, fmin=65.0, fmax=2093.0, sr=sr, frame_length=n_fft,
                                    hop_length=hop, center=False)
            times.append(time.perf_counter() - start)
        median = float(np.median(times))
        print(f"{sr // 1000}k {n_fft}/{hop}: {f0.size} frames, median {median:.2f} s, "
              f"{median / f0.size * 1e3:.2f} ms per frame, {y.size / median / 1e6:.3f} M samples/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (median reported)")
    parser.add_argument("--pyin", action="store_true",
                        help="time librosa.pyin alone (fmin 65, fmax 2093, center=False; 3 runs)")
    args = parser.parse_args()
    if args.pyin:
        pyin_only()
        return
    print(f"librosa {librosa.__version__}, numpy {np.__version__}, one thread")
    for sr, n_fft, hop in ((16000, 512, 160), (48000, 2048, 480)):
        y = chirp_plus_noise(sr)
        features(y, sr, n_fft, hop)  # warm-up: numba compilation, filter caches
        times, cpu_times = [], []
        for _ in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            frames = features(y, sr, n_fft, hop)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        median = float(np.median(times))
        cpu = float(np.median(cpu_times))
        print(f"{sr // 1000}k {n_fft}/{hop}: {frames} frames, median {median * 1e3:.1f} ms "
              f"(min {min(times) * 1e3:.1f}, CPU {cpu * 1e3:.1f}), {y.size / median / 1e6:.2f} M samples/s "
              f"(best {y.size / min(times) / 1e6:.2f})")


if __name__ == "__main__":
    main()
