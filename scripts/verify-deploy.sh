#!/usr/bin/env bash
# Checks the deployment files that can be checked offline:
#   - deploy/systemd/specflow.service, specflow@.service and specflow-gateway.service with
#     `systemd-analyze verify` (and `systemd-analyze security --offline` as an exposure-score
#     gate);
#   - deploy/k8s with `kubectl kustomize` (or `kustomize build`) when one of them is present.
# The manifests' contents (ports, probes, config, KEDA trigger, gateway HPA) are checked by
# tests/deploy_k8s.rs, tests/deploy_systemd.rs and tests/deploy_container.rs.
#
# Usage: scripts/verify-deploy.sh [SPECFLOW_BINARY]
#   SPECFLOW_BINARY defaults to target/debug/specflow. `systemd-analyze verify` fails when
#   ExecStart's executable does not exist, so the units are copied to a temporary directory
#   with /usr/bin/specflow rewritten to this path. Any executable will do for the check
#   (e.g. a copy of /bin/true) when specflow has not been built yet.
#
# Exits non-zero when a unit has an error, an unknown key or a value systemd cannot parse
# (systemd-analyze itself only warns about the last two). Warnings that do not concern the
# unit files (missing /etc files, other units on this host) are shown but tolerated.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

binary="${1:-target/debug/specflow}"
case "$binary" in
    /*) ;;
    *) binary="$repo/$binary" ;;
esac
if [[ ! -f "$binary" || ! -x "$binary" ]]; then
    echo "verify-deploy: $binary is not an executable file (build specflow first, or pass a stand-in such as a copy of /bin/true)" >&2
    exit 2
fi
if [[ "$binary" =~ [[:space:]] ]]; then
    echo "verify-deploy: the binary path must not contain whitespace: $binary" >&2
    exit 2
fi

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify-deploy: installing systemd (for systemd-analyze)"
    if [[ $(id -u) -ne 0 ]]; then
        echo "verify-deploy: systemd-analyze is missing and this is not root: apt-get install systemd" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Rewrite /usr/bin/specflow to the binary under test (escape what sed treats specially).
escaped="$(printf '%s' "$binary" | sed -e 's/[\\&|]/\\&/g')"
for unit in specflow.service specflow@.service specflow-gateway.service; do
    src="deploy/systemd/$unit"
    [[ -f "$src" ]] || { echo "verify-deploy: $src is missing" >&2; exit 1; }
    sed -e "s|/usr/bin/specflow|$escaped|g" "$src" >"$work/$unit"
done

recursive=()
if systemd-analyze --help 2>/dev/null | grep -q -- '--recursive-errors'; then
    # Judge only our units, not the host's network-online.target or multi-user.target.
    recursive=(--recursive-errors=no)
fi

failed=0

# verify UNIT_PATH LABEL: runs systemd-analyze verify and fails on errors and on warnings
# that point into our unit files (unknown keys, unparsable values, bad specifiers...).
verify() {
    local path="$1" label="$2" out rc=0
    out="$(systemd-analyze verify "${recursive[@]}" --man=no "$path" 2>&1)" || rc=$?
    # Lines about our units: "$work/specflow.service:57: Unknown key ..." (a parse warning)
    # or "specflow.service: Command ... is not executable". Those naming a file under /etc
    # (the config or env file of this host, absent here) are tolerated.
    local fatal
    fatal="$(printf '%s\n' "$out" \
        | grep -E -e "^$work/specflow[^:]*\.service:[0-9]+:" -e '^specflow[^ :]*\.service:' \
        | grep -v -E '/etc/' || true)"
    if [[ $rc -ne 0 || -n "$fatal" ]]; then
        echo "verify-deploy: FAIL $label (systemd-analyze verify exit $rc)" >&2
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        failed=1
        return
    fi
    if [[ -n "$out" ]]; then
        echo "verify-deploy: ok $label (tolerated warnings:)"
        printf '%s\n' "$out" | sed 's/^/    /'
    else
        echo "verify-deploy: ok $label"
    fi
}

# security UNIT_PATH LABEL: the exposure score must stay at or below 3.0 ("OK").
security() {
    local path="$1" label="$2" out rc=0
    if ! systemd-analyze --help 2>/dev/null | grep -q -- '--offline'; then
        echo "verify-deploy: skip security check of $label (systemd-analyze has no --offline)"
        return
    fi
    out="$(systemd-analyze security --offline=yes --threshold=30 "$path" 2>&1)" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "verify-deploy: FAIL $label: exposure above 3.0 (systemd-analyze security exit $rc)" >&2
        printf '%s\n' "$out" | grep -E '^(✗|→)' | sed 's/^/    /' >&2
        failed=1
    else
        echo "verify-deploy: ok $label $(printf '%s\n' "$out" | grep -E '^→' | sed 's/^→ *//')"
    fi
}

verify "$work/specflow.service" "specflow.service"
security "$work/specflow.service" "specflow.service"
# A template cannot be started as such; verify an instance of it. Loading
# $work/specflow@a.service by path makes systemd add $work to the unit search path and
# instantiate specflow@.service from there with %i = a.
verify "$work/specflow@a.service" "specflow@.service (as specflow@a.service)"
security "$work/specflow@a.service" "specflow@.service (as specflow@a.service)"
verify "$work/specflow-gateway.service" "specflow-gateway.service"
security "$work/specflow-gateway.service" "specflow-gateway.service"

# The kustomize base must build.
kustomize_cmd=()
if command -v kubectl >/dev/null 2>&1; then
    kustomize_cmd=(kubectl kustomize deploy/k8s)
elif command -v kustomize >/dev/null 2>&1; then
    kustomize_cmd=(kustomize build deploy/k8s)
fi
if [[ ${#kustomize_cmd[@]} -gt 0 ]]; then
    if out="$("${kustomize_cmd[@]}" 2>&1)"; then
        echo "verify-deploy: ok deploy/k8s ($(printf '%s\n' "$out" | grep -c '^kind:') resources from ${kustomize_cmd[*]})"
    else
        echo "verify-deploy: FAIL deploy/k8s (${kustomize_cmd[*]})" >&2
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        failed=1
    fi
else
    echo "verify-deploy: skip deploy/k8s (neither kubectl nor kustomize is installed)"
fi

if [[ $failed -ne 0 ]]; then
    echo "verify-deploy: failed" >&2
    exit 1
fi
echo "verify-deploy: all checks passed"
