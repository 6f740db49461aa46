#!/usr/bin/env bash
# Installs what building specflow needs beyond the machine's toolchains (idempotent).
# librdkafka is built from source by the rdkafka crate; it needs OpenSSL, zlib and curl headers.
# The Python package (python/, PyO3) links libpython in a plain cargo build (python3-dev) and
# its tests run in a virtual environment (python3-venv). The browser view's tests
# (tests/gateway_page.rs) drive Debian's headless Chromium through chromedriver (chromium,
# chromium-driver; no browser download).
set -euo pipefail
missing=()
for pkg in libssl-dev zlib1g-dev libcurl4-openssl-dev pkg-config cmake python3-dev python3-venv \
  chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component" >/dev/null 2>&1 || true
done
