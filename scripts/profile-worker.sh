#!/usr/bin/env bash
# Where the worker's CPU goes, by stage: preloads N streams × S s of the shipped speech (16 kHz,
# 100 ms chunks) into a fresh topic, runs one release worker on it under `perf record`
# (cpu-clock sampling, no call graphs: self time per symbol) until MongoDB holds every record,
# then sums the samples by stage (consume, decode, DSP, JSON, BSON, produce, MongoDB client,
# allocator, kernel, runtime) with scripts/perf_stages.py.
#
# Usage: scripts/profile-worker.sh [--streams N] [--seconds S] [--pitch yin|pyin] [--layout frames|columns] [--call-graph]
# --call-graph also records DWARF call stacks (at 199 Hz) and writes the callers of the hottest
# symbols to callers.txt: who copies memory, who reads the clock.
# Needs perf (Debian: linux-perf); output in target/bench/profile-<run>/.
set -euo pipefail
cd "$(dirname "$0")/.."

streams=40
seconds=30
pitch=yin
layout=frames
call_graph=()
while (($#)); do
    case "$1" in
        --streams) streams="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --pitch) pitch="$2"; shift 2 ;;
        --layout) layout="$2"; shift 2 ;;
        --call-graph) call_graph=(--call-graph dwarf,32768 -F 199); shift ;;
        *) echo "profile-worker: unknown argument $1" >&2; exit 2 ;;
    esac
done
command -v perf >/dev/null || { echo "profile-worker: perf is missing (apt-get install linux-perf)" >&2; exit 2; }

source scripts/bench-run.sh
bench_run_setup prof profile
export SPECFLOW__DSP__PITCH_METHOD="$pitch" SPECFLOW__MONGO__LAYOUT="$layout" \
    SPECFLOW__HTTP__ADDRESS=127.0.0.1:19898
bash scripts/services.sh topics --create --topic "$run.in" --partitions 6 >/dev/null
"$bin" produce --config configs/specflow.toml --wav tests/data/signals/speech_16k.wav \
    --streams "$streams" --duration "$seconds" --chunk-ms 100 >"$out/produce.log" 2>&1
messages=$((streams * seconds * 10))
echo "profile-worker: $messages messages preloaded; profiling the worker ($pitch, $layout)"

# The worker runs as perf's child; perf ends when the worker does.
perf record -F 499 "${call_graph[@]}" -e cpu-clock -o "$out/perf.data" -- \
    "$bin" run --config configs/specflow.toml >"$out/worker.log" 2>"$out/perf.log" &
perf_pid=$!
worker=""
for _ in $(seq 1 50); do
    worker=$(pgrep -P "$perf_pid" || true)
    [[ -n "$worker" ]] && break
    sleep 0.1
done
[[ -n "$worker" ]] || { echo "profile-worker: the worker did not start under perf" >&2; cat "$out/perf.log" >&2; exit 1; }
trap 'kill $worker 2>/dev/null || true; wait 2>/dev/null || true' EXIT
metric() { curl -fsS http://127.0.0.1:19898/metrics 2>/dev/null | awk -v m="$1" '$1 == m {print $2}'; }
done_yet() {
    local consumed stored produced
    consumed=$(metric specflow_messages_consumed_total); consumed=${consumed%%.*}
    stored=$(metric specflow_mongo_documents_written_total); stored=${stored%%.*}
    produced=$(metric specflow_records_produced_total); produced=${produced%%.*}
    [[ "${consumed:-0}" -ge "$messages" && "${produced:-0}" -gt 0 && "${stored:-0}" -ge "${produced:-0}" ]]
}
until done_yet; do sleep 1; done
sleep 2
ticks=$(cpu_ticks "$worker")
kill -TERM "$worker"; wait "$perf_pid" 2>/dev/null || true
cpu=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }')
echo "profile-worker: worker CPU ${cpu} s for $messages messages ($(awk -v c="$cpu" -v m="$messages" 'BEGIN { printf "%.0f", c / m * 1e6 }') µs per message)"
perf report -i "$out/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null >"$out/report.txt"
python3 scripts/perf_stages.py "$out/report.txt" | tee "$out/stages.txt"
if ((${#call_graph[@]})); then
    perf report -i "$out/perf.data" --no-children --sort symbol --call-graph=caller,0.5,callee \
        --stdio 2>/dev/null >"$out/callers.txt"
    echo "profile-worker: call stacks in $out/callers.txt"
fi
