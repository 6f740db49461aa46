#!/usr/bin/env bash
# The gateway's figures: real-time 16 kHz streams per gateway core and the two delays of
# `specflow loadtest` (send → 202 or durable ack, send → record on the output topic), over
# HTTP and WebSocket, against the local Kafka (and a worker in Kafka-only mode, so that the
# record delay is the gateway's and the worker's, not FerretDB's).
#
# Usage: scripts/bench-gateway.sh [--streams N] [--seconds S] [--ws-streams N]
#   Builds the release binary, starts the local services if needed, runs one worker and one
#   gateway on fresh topics, then `specflow loadtest` over HTTP (N streams) and over WebSocket
#   (--ws-streams), and prints each run's report plus the gateway's CPU per run. JSON reports
#   go to target/bench/gateway-<run>/.
set -euo pipefail
cd "$(dirname "$0")/.."

streams=50
seconds=20
ws_streams=200
while (($#)); do
    case "$1" in
        --streams) streams="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --ws-streams) ws_streams="$2"; shift 2 ;;
        *) echo "bench-gateway: unknown argument $1" >&2; exit 2 ;;
    esac
done

source scripts/bench-run.sh
bench_run_setup gw gateway
export SPECFLOW__MONGO__ENABLED=false SPECFLOW__DSP__PITCH_METHOD=yin \
    SPECFLOW__HTTP__ADDRESS=127.0.0.1:0 SPECFLOW__GATEWAY__ADDRESS=127.0.0.1:18080
"$bin" run --config configs/specflow.toml >"$out/worker.log" 2>&1 &
worker=$!
"$bin" gateway --config configs/specflow.toml >"$out/gateway.log" 2>&1 &
gateway=$!
trap 'kill $worker $gateway 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -fsS http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break
    sleep 0.2
done
sleep 5 # the worker joins its group

hz=$(getconf CLK_TCK)

measure() {
    local label="$1"; shift
    local before after
    before=$(cpu_ticks "$gateway")
    local started=$SECONDS
    "$bin" loadtest --config configs/specflow.toml --via http://127.0.0.1:18080 \
        --seconds "$seconds" --json "$out/$label.json" "$@"
    after=$(cpu_ticks "$gateway")
    local wall=$((SECONDS - started))
    awk -v t=$((after - before)) -v hz="$hz" -v s="$seconds" -v w="$wall" -v l="$label" \
        'BEGIN { c = t / hz; printf "%s: gateway CPU %.2f s over %d s of load (%.3f cores)\n", l, c, w, c / s }'
}

measure http --streams "$streams"
measure ws --streams "$ws_streams" --ws
