#!/usr/bin/env bash
# Fails when a third-party crate stops being the released one: a `[patch]` section in any
# Cargo.toml, a crate vendored into the tree (a Cargo.toml that is not one of ours), or a
# package in Cargo.lock without a registry source. Defects upstream get a workaround through
# the public API and a proposal in docs/upstream/, never a fork (DEVELOPERS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
fail() { echo "check-dependencies: $*" >&2; status=1; }

# Our own packages: the workspace members and the Python package's crate.
ours='^(\./Cargo\.toml|\./benches/e2e/Cargo\.toml|./tests/support/Cargo\.toml|\./tests/fuzz/Cargo\.toml|\./python/Cargo\.toml)$'
while IFS= read -r manifest; do
  if ! [[ "$manifest" =~ $ours ]]; then
    fail "$manifest: a crate inside the tree that is not one of ours (vendored?)"
  fi
  if grep -nE '^\s*\[patch(\.|\])' "$manifest" >/dev/null; then
    fail "$manifest: has a [patch] section: $(grep -nE '^\s*\[patch(\.|\])' "$manifest" | head -1)"
  fi
done < <(find . -name Cargo.toml -not -path './target/*' -not -path './.git/*' \
  -not -path '*/node_modules/*' -not -path './.venv*' | sort)

if [ -f .cargo/config.toml ] && grep -nE '^\s*\[(patch|source)' .cargo/config.toml >/dev/null; then
  fail ".cargo/config.toml replaces a source or patches a crate"
fi

# Every locked package other than ours comes from the registry.
local_packages=$(awk '
  /^\[\[package\]\]/ { if (name != "" && source == "") print name; name=""; source="" }
  /^name = / { gsub(/"/, "", $3); name=$3 }
  /^source = / { source=$3 }
  END { if (name != "" && source == "") print name }' Cargo.lock)
for name in $local_packages; do
  case "$name" in
    specflow|specflow-bench|specflow-test-support|specflow-python) ;;
    *) fail "Cargo.lock: $name has no registry source (a path or patched copy)" ;;
  esac
done
if grep -E '^source = ' Cargo.lock | grep -vq 'registry+https://github.com/rust-lang/crates.io-index'; then
  fail "Cargo.lock: a package comes from somewhere other than crates.io: $(grep -E '^source = ' Cargo.lock | grep -v crates.io-index | head -1)"
fi

if [ "$status" -ne 0 ]; then exit "$status"; fi
echo "check-dependencies: ok, every third-party crate is a crates.io release, no [patch]"
