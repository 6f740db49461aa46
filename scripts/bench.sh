#!/usr/bin/env bash
# End-to-end benchmark of specflow against the local Kafka and MongoDB (FerretDB).
#
# Usage: scripts/bench.sh [FLAGS...]
#
# Builds the release binaries, makes sure the local services run (scripts/services.sh up),
# then runs target/release/specflow-bench (the workspace member benches/e2e), which in one run
# measures:
#   1. throughput of `specflow run` over N streams × M s of 16 kHz s16 mono preloaded in a
#      fresh topic (× real time, messages/s, MB/s, frames/s, worker CPU seconds, peak RSS,
#      checkpoint records, bytes and write time per message and per batch);
#   2. ceilings on the same data: Kafka consume-only (rdkafka and Kafka's ConsumerPerformance),
#      the DSP alone (1 thread and all threads), MongoDB insert_many of the same records;
#      the worker's rate as a fraction of each and the bound that holds;
#   3. latency at a steady real-time load (`specflow produce --realtime`): p50/p95/p99/max from
#      produce time to the output topic and to MongoDB;
#   4. scaling over runtime.worker_threads, and by adding instances to one consumer group;
#   5. memory per 1000 live streams.
# It prints a table and writes every figure as JSON (target/bench/<run id>/bench.json, or --out).
#
# Common flags (all optional; `--help` lists every one with its default):
#   --streams N            throughput streams (default 100)
#   --seconds M            seconds of audio per throughput stream (default 30)
#   --latency-streams N    real-time streams of the latency phase (default 200)
#   --latency-seconds S    measured seconds of the latency phase (default 20, after a 5 s warm-up)
#   --skip-latency         skip the latency phase (also --skip-scaling, --skip-instances,
#                          --skip-memory, --skip-java-ceiling)
#   --instances 1x2,2x1    instance layouts (N processes × T threads in one group)
#   --threads 1,2          worker_threads values for scaling (default 1, 2, 4, … up to nproc)
#   --memory-streams LIST  one-chunk stream counts of the memory phase (default 10000)
#   --out FILE.json        where to write the JSON figures
#   --keep                 keep the topics and databases the run created
#
# Environment: SPECFLOW_BENCH_SKIP_BUILD=1 skips `cargo build --release`; the binaries are
# taken from $CARGO_TARGET_DIR/release (default target/release).
# Logs of every worker and producer go to target/bench/<run id>/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
BIN="${CARGO_TARGET_DIR:-target}/release"

for arg in "$@"; do
    case "$arg" in
        -h | --help)
            if [ -x "$BIN/specflow-bench" ]; then
                exec "$BIN/specflow-bench" --help
            fi
            sed -n '2,32p' "$0"
            exit 0
            ;;
    esac
done

if [ "${SPECFLOW_BENCH_SKIP_BUILD:-0}" != 1 ]; then
    echo "bench: cargo build --release -p specflow -p specflow-bench" >&2
    cargo build --release -p specflow -p specflow-bench
fi

if ! bash scripts/services.sh status >/dev/null 2>&1; then
    echo "bench: starting the local services (scripts/services.sh up)" >&2
    bash scripts/services.sh up
fi

echo "bench: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec "$BIN/specflow-bench" \
    --config configs/specflow.toml \
    --specflow "$BIN/specflow" \
    --services-script scripts/services.sh \
    "$@"
