#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs build deps, starts the local Kafka and
# FerretDB (scripts/services.sh), then runs formatting, lints, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "test: the repository stands on its own"
bash scripts/check-standalone.sh
bash scripts/check-dependencies.sh
bash scripts/setup.sh
bash scripts/services.sh up
echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test: cargo test"
# libtest reads RUST_TEST_THREADS; criterion benches (run once each in test mode) do not take
# --test-threads, so the flag cannot go on the command line.
RUST_TEST_THREADS="${SPECFLOW_TEST_THREADS:-2}" cargo test --workspace --all-targets --locked
echo "test: deployment files (systemd-analyze verify, manifests)"
bash scripts/verify-deploy.sh "$PWD/target/debug/specflow"
echo "test: all passed"
