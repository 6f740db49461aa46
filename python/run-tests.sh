#!/usr/bin/env bash
# The Python package's tests (python/tests/, pytest) in their own virtual environment:
# creates it if missing (SPECFLOW_PYTHON_VENV, default ~/.cache/specflow/python-venv), installs
# the build and test tools (pip downloads cached in ~/.cache/specflow/pip), builds the CLI that
# the tests compare with (target/debug/specflow), builds and installs the package from
# python/ (`pip install ./python`), then runs pytest. Arguments go to pytest.
#
# SPECFLOW_PYTHON_PROFILE: the cargo profile of the extension, `dev` (default: shares
# target/debug with the Rust tests, builds in a minute) or `release` (what `pip install ./python`
# builds by default: fat LTO, several minutes on 2 cores).
# The test against a real worker needs Kafka and MongoDB (scripts/services.sh up); without
# them it is skipped, except with CI=true, where it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SPECFLOW_PYTHON_VENV:-$HOME/.cache/specflow/python-venv}"
profile="${SPECFLOW_PYTHON_PROFILE:-dev}"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/specflow/pip}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

started=$SECONDS
if [ ! -x "$venv/bin/python" ]; then
  echo "python tests: creating the virtual environment $venv"
  python3 -m venv "$venv"
fi
# The venv's tools first: maturin's build backend runs `maturin` from PATH.
export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
"$venv/bin/python" -m pip install -q "maturin>=1.9.4,<2" "numpy>=1.21" "pytest>=8" "hypothesis>=6" \
  "pymongo>=4.10" "confluent-kafka>=2.4"

echo "python tests: building the CLI (target/debug/specflow)"
cargo build --locked --bin specflow

echo "python tests: building and installing the package (profile $profile)"
MATURIN_PEP517_ARGS="--profile $profile" "$venv/bin/python" -m pip install -q --no-build-isolation \
  --no-deps --force-reinstall ./python
echo "python tests: built and installed in $((SECONDS - started)) s"

# From the repository root, so that `import specflow` is the installed package, not python/specflow.
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/pytest" -p no:cacheprovider -q -rs python/tests "$@"
