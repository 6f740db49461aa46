#!/usr/bin/env bash
# Builds the release wheel (`maturin build --release`), installs it with librosa 0.11.0 (the
# version of the reference data) in the benchmark's own virtual environment
# (SPECFLOW_BENCH_VENV, default ~/.cache/specflow/python-bench-venv), and runs
# bench_extract.py with the arguments given (e.g. --seconds 60, --skip-librosa-pyin).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${SPECFLOW_BENCH_VENV:-$HOME/.cache/specflow/python-bench-venv}"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/specflow/pip}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
"$venv/bin/python" -m pip install -q "maturin>=1.9.4,<2" "librosa==0.11.0"
rm -f target/wheels/specflow-*.whl
(cd python && maturin build --release --locked)
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps target/wheels/specflow-*.whl
"$venv/bin/python" python/benches/bench_extract.py "$@"
