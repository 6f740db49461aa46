#!/usr/bin/env bash
# The main job on a fresh machine: installs build deps, starts local Kafka + FerretDB, builds
# specflow, runs the worker, streams the speech sample shipped in tests/data/signals through it
# as 4 concurrent streams, and prints a few feature records from Kafka, one line per stream
# (frames, voiced frames, mean f0) and the count stored in MongoDB.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh up
echo "demo: building"
cargo build --locked --bin specflow
bin=target/debug/specflow
wav=tests/data/signals/speech_16k.wav
run_id="demo-$(date +%s)"
export SPECFLOW__SOURCE__TOPIC="$run_id.audio"
export SPECFLOW__OUTPUT__TOPIC="$run_id.features"
export SPECFLOW__DEAD_LETTER__TOPIC="$run_id.dead-letter"
export SPECFLOW__SOURCE__GROUP_ID="$run_id"
export SPECFLOW__SOURCE__CREATE_TOPICS=true
export SPECFLOW__MONGO__DATABASE="${run_id//-/_}"
export SPECFLOW__HTTP__ADDRESS="127.0.0.1:0"
"$bin" check --config configs/specflow.toml
log=$(mktemp -t specflow-demo.XXXX.log)
"$bin" run --config configs/specflow.toml >"$log" 2>&1 &
worker=$!
trap 'kill -TERM $worker 2>/dev/null; wait $worker 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do grep -q "Consuming." "$log" && break; sleep 1; done
grep -q "Consuming." "$log" || { echo "demo: worker did not start:"; tail -20 "$log"; exit 1; }
echo "demo: streaming $wav (espeak-ng speech) as 4 streams"
"$bin" produce --config configs/specflow.toml --wav "$wav" --streams 4 --chunk-ms 100
# Wait until the worker has stored everything: the MongoDB count stops changing.
previous=-1
for _ in $(seq 1 30); do
  count=$("$bin" inspect --config configs/specflow.toml --records 0 --wait 5 2>/dev/null \
    | sed -n 's/^mongodb .*: \([0-9]*\) feature records stored$/\1/p')
  [ -n "$count" ] && [ "$count" -gt 0 ] && [ "$count" = "$previous" ] && break
  previous=${count:--1}
  sleep 1
done
echo "demo: feature records from Kafka topic $SPECFLOW__OUTPUT__TOPIC:"
"$bin" inspect --config configs/specflow.toml --records 3 --wait 15
kill -TERM $worker; wait $worker || true
trap - EXIT
echo "demo: worker log: $log"
