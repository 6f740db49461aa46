#!/usr/bin/env bash
# Fails when a tracked file refers to the reference material that lives beside the repository
# on the developers' machines (the shared folder one level up). A user's clone has no such
# folder: everything the tests, the demo and the benchmarks read lives in tests/data/.
set -euo pipefail
cd "$(dirname "$0")/.."
# Spelled in two pieces so this script does not match itself.
parent='\.\.'
folder='shared'
pattern="${parent}/(\.\./)*${folder}([/\"' ]|\$)|${folder}/reference"
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "check-standalone: not a git checkout; scanning every file" >&2
  hits=$(grep -rnIE --exclude-dir=target --exclude-dir=.git "$pattern" . || true)
else
  hits=$(git grep --untracked -nIE "$pattern" -- . || true)
fi
if [ -n "$hits" ]; then
  echo "check-standalone: these lines refer to files outside the repository:" >&2
  echo "$hits" >&2
  exit 1
fi
echo "check-standalone: ok, nothing refers outside the repository"
