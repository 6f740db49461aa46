#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs build deps, checks the repository, then runs
# the tests that need no services first (a broken build or a wrong number fails in minutes),
# while the local Kafka and FerretDB start (scripts/services.sh up) in the background, then the
# tests against them. Prints the time of each phase.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# libtest reads RUST_TEST_THREADS; criterion benches (run once each in test mode) do not take
# --test-threads, so the flag cannot go on the command line.
export RUST_TEST_THREADS="${SPECFLOW_TEST_THREADS:-2}"
# One full run builds every test binary once: incremental caches would only add gigabytes of
# disk (a fresh CI clone never reuses them). Set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Integration tests that talk to no service; every other tests/*.rs needs Kafka and MongoDB.
OFFLINE_TESTS=(cli dsp_parity dsp_streaming pyin_parity pyin_golden float_text producer_wakeups
  deploy_systemd deploy_k8s deploy_container)

started=$SECONDS
disk_report() { echo "test: disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free; target/ $(du -sh target 2>/dev/null | cut -f1)"; }
disk_report
# A hung test must fail the run with a message, not run into CI's own limit.
bounded() { # SECONDS COMMAND...
  local limit="$1" rc=0
  shift
  timeout --kill-after=30 "$limit" "$@" || rc=$?
  if [[ $rc == 124 || $rc == 137 ]]; then
    echo "test: stopped after $limit s; the test that hangs is the one libtest reported as" \
      "'has been running for over 60 seconds' with no result line after it" >&2
  fi
  return "$rc"
}
phase() { # NAME COMMAND...
  local name="$1" t0=$SECONDS
  shift
  echo "test: $name"
  "$@"
  echo "test: $name: done in $((SECONDS - t0)) s"
  disk_report
}

phase "the repository stands on its own" bash scripts/check-standalone.sh
phase "released dependencies only" bash scripts/check-dependencies.sh
phase "no import circle, no file over 700 lines" python3 scripts/module-circles.py
phase "build dependencies" bash scripts/setup.sh

services_log=$(mktemp -t specflow-services.XXXX.log)
echo "test: starting the local services in the background (log $services_log)"
bash scripts/services.sh up >"$services_log" 2>&1 &
services_pid=$!
trap 'kill "$services_pid" 2>/dev/null || true' EXIT

phase "cargo fmt --check" cargo fmt --all -- --check
phase "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
offline_args=()
for t in "${OFFLINE_TESTS[@]}"; do offline_args+=(--test "$t"); done
phase "tests without services (unit tests, DSP parity, CLI, deployment files)" \
  cargo test --workspace --locked --lib --bins --benches "${offline_args[@]}"

wait_services() {
  if ! wait "$services_pid"; then
    cat "$services_log"
    echo "test: the local services did not start" >&2
    return 1
  fi
  cat "$services_log"
}
phase "local services (Kafka, FerretDB)" wait_services
trap - EXIT

# Every other tests/*.rs, the gateway's among them (gateway_live: the live feed;
# gateway_page: the browser view in headless Chromium, installed by scripts/setup.sh).
online_args=()
for f in tests/*.rs; do
  t=$(basename "$f" .rs)
  [[ " ${OFFLINE_TESTS[*]} " == *" $t "* ]] || online_args+=(--test "$t")
done
phase "tests against Kafka and MongoDB" bounded 2400 cargo test --locked "${online_args[@]}"
phase "the Python package (pytest, its own virtual environment)" bash python/run-tests.sh
phase "deployment files (systemd-analyze verify, manifests)" \
  bash scripts/verify-deploy.sh "$PWD/target/debug/specflow"
echo "test: all passed in $((SECONDS - started)) s"
