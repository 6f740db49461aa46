"""`decode_record` on the records a real worker wrote: its MongoDB documents (both
`mongo.layout`s) and its output-topic messages, concatenated per stream, equal `extract` of the
audio that was sent.

Needs the local Kafka (127.0.0.1:9092) and MongoDB/FerretDB (127.0.0.1:27017), as
`bash scripts/services.sh up` starts them (SPECFLOW_TEST_BROKERS / SPECFLOW_TEST_MONGO_URI
override the addresses). Skipped when they are unreachable, except in CI (CI=true), where that
fails. Other tests stop and restart the services at times: a run that loses them is retried.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import uuid

import numpy as np
import pytest

import specflow
from conftest import CONFIG, DATA, REPO, assert_frames_equal, eventually, mono, read_wav

BROKERS = os.environ.get("SPECFLOW_TEST_BROKERS", "127.0.0.1:9092")
MONGO_URI = os.environ.get("SPECFLOW_TEST_MONGO_URI", "mongodb://127.0.0.1:27017")
IN_CI = os.environ.get("CI") == "true"
# A mono 16 kHz and a stereo 44.1 kHz signal, as two streams of one run.
STREAMS = {"speech": "speech_16k.wav", "stereo": "twotone_stereo_44k.wav"}
# The worker's [dsp]: the shipped file with frames long enough for pitch at 44.1 kHz.
DSP_CHANGES = {"frame_length = 512": "frame_length = 2048", "hop_length = 160": "hop_length = 512"}


class Unavailable(Exception):
    """The services (or the worker) went away during a run; the run is retried."""


def reachable(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def service_addresses() -> list[str]:
    mongo = urllib.parse.urlsplit(MONGO_URI)
    return [BROKERS.split(",")[0], f"{mongo.hostname}:{mongo.port or 27017}"]


def wait_for_services(seconds: float) -> bool:
    return eventually(lambda: all(reachable(a) for a in service_addresses()), seconds, every=1)


@pytest.fixture(scope="module")
def services():
    if not wait_for_services(90 if IN_CI else 5):
        message = (f"the local Kafka ({BROKERS}) and MongoDB ({MONGO_URI}) are not reachable; "
                   "start them with `bash scripts/services.sh up`")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def worker_config(tmp_path_factory):
    text = CONFIG.read_text()
    for old, new in DSP_CHANGES.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path_factory.mktemp("worker") / "specflow.toml"
    path.write_text(text)
    return path


def run_worker(binary, config, layout: str, run_id: str) -> dict[str, tuple[list, list]]:
    """Runs `specflow run` with `mongo.layout = layout`, produces every signal of STREAMS as its
    own stream (`specflow produce --wav FILE --streams 1`, the last chunk marked end of stream),
    and returns per stream its MongoDB documents and output-topic messages."""
    import pymongo
    from confluent_kafka import Consumer

    database = run_id.replace("-", "_")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECFLOW__")}
    env.update({
        "SPECFLOW__KAFKA__BROKERS": BROKERS,
        "SPECFLOW__MONGO__URI": MONGO_URI,
        "SPECFLOW__SOURCE__TOPIC": f"{run_id}.audio",
        "SPECFLOW__OUTPUT__TOPIC": f"{run_id}.features",
        "SPECFLOW__DEAD_LETTER__TOPIC": f"{run_id}.dead-letter",
        "SPECFLOW__SOURCE__GROUP_ID": run_id,
        "SPECFLOW__SOURCE__CREATE_TOPICS": "true",
        "SPECFLOW__SOURCE__TOPIC_PARTITIONS": "2",
        "SPECFLOW__MONGO__DATABASE": database,
        "SPECFLOW__MONGO__LAYOUT": layout,
        "SPECFLOW__HTTP__ADDRESS": "127.0.0.1:0",
    })
    log = tempfile.NamedTemporaryFile("w+", prefix="specflow-worker-", suffix=".log", delete=False)
    worker = subprocess.Popen([str(binary), "run", "--config", str(config)], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        started = eventually(lambda: "Consuming." in open(log.name).read()
                             or worker.poll() is not None, 90)
        if not started or worker.poll() is not None:
            raise Unavailable(f"the worker did not start:\n{open(log.name).read()[-3000:]}")
        expected = {}
        for name, wav in STREAMS.items():
            produce = subprocess.run(
                [str(binary), "produce", "--config", str(config), "--wav", str(DATA / "signals" / wav),
                 "--streams", "1", "--stream-prefix", f"{run_id}-{name}-"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            if produce.returncode != 0:
                raise Unavailable(f"produce failed: {produce.stderr[-2000:]}")
            y, sr = read_wav(DATA / "signals" / wav)
            expected[f"{run_id}-{name}-0"] = len(specflow.extract(mono(y), sr, config=config)["index"])

        def complete(records: dict) -> bool:
            """Every stream's frames are there: {stream: {first_frame: (record, frame_count)}}."""
            return all(sum(c for _, c in records.get(s, {}).values()) == n
                       for s, n in expected.items())

        # MongoDB: every stream's frames stored.
        client = pymongo.MongoClient(MONGO_URI, serverSelectionTimeoutMS=5000)
        try:
            collection = client[database]["features"]
            stored: dict = {}

            def all_stored() -> bool:
                """Reads the streams' documents into `stored`; stops early if the worker died."""
                try:
                    docs = list(collection.find({"stream_id": {"$in": list(expected)}}))
                except pymongo.errors.PyMongoError as e:
                    raise Unavailable(f"MongoDB: {e}") from e
                stored.clear()
                for doc in docs:
                    stored.setdefault(doc["stream_id"], {})[doc["first_frame"]] = (
                        doc, doc["frame_count"])
                return complete(stored) or worker.poll() is not None

            if not eventually(all_stored, 120) or not complete(stored):
                raise Unavailable(f"MongoDB holds {[(s, len(r)) for s, r in stored.items()]} "
                                  f"records; worker log:\n{open(log.name).read()[-3000:]}")
            client.drop_database(database)
        finally:
            client.close()

        # The output topic: every stream's records.
        consumer = Consumer({"bootstrap.servers": BROKERS, "group.id": f"{run_id}-reader",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        try:
            consumer.subscribe([f"{run_id}.features"])
            sent: dict = {}
            deadline = time.monotonic() + 120
            while not complete(sent):
                if time.monotonic() > deadline:
                    raise Unavailable(f"the output topic holds {[(s, len(r)) for s, r in sent.items()]}")
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                value = message.value()
                header = json.loads(value)
                sent.setdefault(message.key().decode(), {})[header["first_frame"]] = (
                    value, header["frame_count"])
        finally:
            consumer.close()
        return {s: ([d for d, _ in stored[s].values()], [m for m, _ in sent[s].values()])
                for s in expected}
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        os.unlink(log.name)
        drop_topics(run_id)


def drop_topics(run_id: str) -> None:
    """Deletes a run's topics (best effort: the services may be gone)."""
    from confluent_kafka.admin import AdminClient

    topics = [f"{run_id}.{t}" for t in ("audio", "features", "dead-letter", "checkpoints")]
    try:
        futures = AdminClient({"bootstrap.servers": BROKERS}).delete_topics(
            topics, operation_timeout=10, request_timeout=15)
        for future in futures.values():
            try:
                future.result(timeout=20)
            except Exception:  # noqa: BLE001 - a topic that never was, or a broker gone
                pass
    except Exception:  # noqa: BLE001
        pass


def by_first_frame(parts: list[dict]) -> dict:
    return specflow.concat(sorted(parts, key=lambda p: p["index"][0]))


@pytest.mark.services
@pytest.mark.parametrize("layout", ["frames", "columns"])
def test_stored_and_sent_records_decode_to_extract(services, specflow_bin, worker_config, layout):
    failures = []
    for attempt in range(3):
        run_id = f"pytest-{layout}-{uuid.uuid4().hex[:8]}"
        try:
            records = run_worker(specflow_bin, worker_config, layout, run_id)
            break
        except Unavailable as e:
            failures.append(f"attempt {attempt + 1}: {e}")
            if not wait_for_services(120) and not IN_CI:
                pytest.skip("the local services went away: " + "\n".join(failures))
    else:
        pytest.fail("no complete run:\n" + "\n".join(failures))

    for stream, (documents, messages) in records.items():
        name = stream.removeprefix(f"{run_id}-").rsplit("-", 1)[0]
        y, sr = read_wav(DATA / "signals" / STREAMS[name])
        expected = specflow.extract(mono(y), sr, config=worker_config)
        assert "voiced_prob" in expected and len(documents) > 1 and len(messages) > 1
        if layout == "columns":
            assert any(isinstance(v, bytes) for v in documents[0]["columns"].values())
            assert "frames" not in documents[0]
        else:
            assert "frames" in documents[0]
        stored = [specflow.decode_record(d) for d in documents]
        assert_frames_equal(by_first_frame(stored), expected, f"{stream} MongoDB ({layout})")
        # Output-topic records as bytes, str and parsed JSON.
        forms = [messages[0].decode(), json.loads(messages[1]), *messages[2:]]
        sent = [specflow.decode_record(m) for m in forms]
        assert_frames_equal(by_first_frame(sent), expected, f"{stream} output topic")
        # The same capture times both ways.
        stamps = {int(p["index"][0]): p["timestamp_ms"]
                  for p in (specflow.decode_record(m, timestamps=True) for m in messages)}
        for document in documents:
            part = specflow.decode_record(document, timestamps=True)
            np.testing.assert_array_equal(part["timestamp_ms"], stamps[int(part["index"][0])])


def test_columns_with_an_index_array_and_out_of_order_keys():
    """A `columns` document whose frames are not consecutive names each frame in `index`."""
    y, sr = read_wav(DATA / "signals" / "speech_16k.wav")
    whole = specflow.extract(mono(y), sr, features="mfcc,f0,rms")
    pick = np.array([3, 4, 9])
    packed = lambda a: b"\x27\x00" + np.ascontiguousarray(a, "<f4").tobytes()
    document = {
        "schema": 1, "hop_length": 160, "first_frame": 3, "frame_count": 3,
        "columns": {
            "index": [3, 4, 9],
            "timestamp_ms": [10, 20, 30],
            "rms": packed(whole["rms"][pick]),
            "f0": packed(whole["f0"][pick]),
            "voiced": whole["voiced"][pick].tolist(),
            "voiced_prob": packed(whole["voiced_prob"][pick]),
            "mfcc": packed(whole["mfcc"][pick]),
        },
    }
    expected = {key: value[pick] for key, value in whole.items()}
    assert_frames_equal(specflow.decode_record(document), expected, "index array")
    with_time = specflow.decode_record(document, timestamps=True)
    assert with_time["timestamp_ms"].tolist() == [10, 20, 30]
