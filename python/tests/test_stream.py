"""`StreamExtractor` under any chunking equals `extract`; its stream semantics are the worker's
(start_sample gaps and overlaps); the computation releases the GIL."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specflow
from conftest import DATA, assert_frames_equal, mono, read_wav

SPEECH, SPEECH_SR = read_wav(DATA / "signals" / "speech_16k.wav")
SPEECH = mono(SPEECH)[:24000]
STEREO, STEREO_SR = read_wav(DATA / "signals" / "twotone_stereo_44k.wav")
STEREO = STEREO[:, :30000]
STEREO_DSP = dict(frame_length=2048, hop_length=512, pitch_fmin=65.0)

CONFIGS = {
    "pyin": dict(pitch_method="pyin"),
    "yin": dict(pitch_method="yin"),
    "pyin-lag3": dict(pitch_method="pyin", pitch_lag_frames=3, hop_length=97, frame_length=401),
    "mel-only": dict(features=["mel", "spectral_flux"], n_mels=64),
}
EXPECTED = {name: specflow.extract(SPEECH, SPEECH_SR, **dsp) for name, dsp in CONFIGS.items()}
STEREO_EXPECTED = specflow.extract(STEREO, STEREO_SR, **STEREO_DSP)


def cuts(n: int):
    """Sorted chunk boundaries inside [0, n]: empty chunks, single samples, the whole signal."""
    return st.lists(st.integers(min_value=0, max_value=n), max_size=40).map(sorted)


def pushed(stream: specflow.StreamExtractor, y: np.ndarray, bounds: list[int]) -> dict:
    edges = [0, *bounds, y.shape[-1]]
    parts = [stream.push(y[..., a:b]) for a, b in zip(edges, edges[1:])]
    parts.append(stream.finish())
    return specflow.concat(parts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(name=st.sampled_from(sorted(CONFIGS)), bounds=cuts(len(SPEECH)))
def test_any_chunking_gives_extract(name, bounds):
    stream = specflow.StreamExtractor(SPEECH_SR, **CONFIGS[name])
    assert_frames_equal(pushed(stream, SPEECH, bounds), EXPECTED[name], f"{name} {bounds}")


@settings(max_examples=15, deadline=None, database=None)
@given(bounds=cuts(STEREO.shape[1]))
def test_any_chunking_of_channels_gives_extract(bounds):
    stream = specflow.StreamExtractor(STEREO_SR, **STEREO_DSP)
    assert_frames_equal(pushed(stream, STEREO, bounds), STEREO_EXPECTED, f"stereo {bounds}")


def test_pyin_frames_wait_for_their_pitch_decision():
    stream = specflow.StreamExtractor(SPEECH_SR, pitch_lag_frames=20)
    first = stream.push(SPEECH[:16000])
    # 97 frames complete in a second at 512 / 160; the last 20 wait for their pitch.
    assert len(first["index"]) == 97 - 20 and stream.pending_frames == 20
    assert stream.next_sample == 16000
    rest = stream.finish()
    assert len(rest["index"]) == 20 and stream.pending_frames == 0
    assert list(rest["index"]) == list(range(77, 97))
    assert rest["mel"].shape == (20, 40)


def test_empty_results_have_every_key_and_shape():
    stream = specflow.StreamExtractor(SPEECH_SR, n_mels=32)
    empty = stream.push(SPEECH[:100])
    assert list(empty) == list(EXPECTED["pyin"])
    assert all(len(v) == 0 for v in empty.values())
    assert empty["mel"].shape == (0, 32) and empty["voiced"].dtype == bool
    assert stream.finish()["mfcc"].shape == (0, 13)
    assert specflow.extract(np.zeros(0, np.float32), SPEECH_SR)["chroma"].shape == (0, 12)


def test_start_sample_gaps_and_overlaps_follow_the_worker():
    y = SPEECH[:16000]
    whole = specflow.extract(y, SPEECH_SR, pitch_method="yin")
    # A resent chunk that overlaps: the samples the stream has are skipped.
    stream = specflow.StreamExtractor(SPEECH_SR, pitch_method="yin")
    parts = [stream.push(y[:8000]), stream.push(y[6000:], start_sample=6000), stream.finish()]
    assert_frames_equal(specflow.concat(parts), whole, "overlap")
    # A chunk wholly before what the stream has is refused.
    stream = specflow.StreamExtractor(SPEECH_SR, pitch_method="yin")
    stream.push(y[:8000])
    with pytest.raises(ValueError, match="already has"):
        stream.push(y[:4000], start_sample=0)
    # A gap: the frame grid goes on at the new start (the first frame at ceil(start / hop)).
    stream = specflow.StreamExtractor(SPEECH_SR, pitch_method="yin")
    before = stream.push(y[:4000])
    after = stream.push(y[8000:], start_sample=8000)
    assert before["index"][-1] < 8000 // 160 and after["index"][0] == 50
    assert after["start_sample"][0] == 8000
    tail = specflow.extract(y[8000:], SPEECH_SR, pitch_method="yin")
    np.testing.assert_array_equal(after["rms"], tail["rms"])
    # A first chunk that starts later: frames are numbered on the stream's grid.
    stream = specflow.StreamExtractor(SPEECH_SR, pitch_method="yin")
    late = stream.push(y[:4000], start_sample=1600)
    assert late["index"][0] == 10 and late["start_sample"][0] == 1600
    # After finish a new stream starts.
    assert stream.finish()["index"].size == 0
    assert stream.push(y[:600])["index"].tolist() == [0]


def test_properties():
    stream = specflow.StreamExtractor(22050, frame_length=1024, hop_length=256,
                                      features="rms,f0", pitch_method="yin")
    assert (stream.sample_rate, stream.frame_length, stream.hop_length) == (22050, 1024, 256)
    assert stream.features == ("rms", "f0")
    assert "StreamExtractor(sr=22050" in repr(stream)


def test_compute_releases_the_gil():
    """While one thread computes, another runs Python: its longest pause stays far below the
    computation's time (holding the GIL would pause it for all of it)."""
    # A signal long enough for about half a second of computation on this build.
    start = time.perf_counter()
    specflow.extract(SPEECH, SPEECH_SR)
    once = time.perf_counter() - start
    y = np.tile(SPEECH, max(2, int(np.ceil(0.5 / max(once, 1e-4)))))
    done = threading.Event()
    took = []

    def work():
        start = time.perf_counter()
        specflow.extract(y, SPEECH_SR)
        took.append(time.perf_counter() - start)
        done.set()

    thread = threading.Thread(target=work)
    last, longest = time.perf_counter(), 0.0
    thread.start()
    while not done.is_set():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    thread.join()
    assert took[0] > 0.2, f"too short to tell: {took[0]:.3f} s"
    assert longest < 0.5 * took[0], f"paused {longest:.3f} s of a {took[0]:.3f} s computation"


def test_threads_share_nothing_but_the_settings():
    results = [None] * 4

    def work(i):
        results[i] = specflow.extract(SPEECH, SPEECH_SR, pitch_method="yin" if i % 2 else "pyin")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, result in enumerate(results):
        assert_frames_equal(result, EXPECTED["yin" if i % 2 else "pyin"], f"thread {i}")
