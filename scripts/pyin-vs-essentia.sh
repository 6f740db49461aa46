#!/usr/bin/env bash
# Side-by-side CPU of pYIN on one 16 kHz WAV: `specflow extract --features f0 --pitch-method
# pyin` against Essentia's PitchYinProbabilistic (C++, through Python), each as a whole process
# pinned to one core, plus Essentia's import alone (python -c 'import essentia.standard'), so
# that its net cost can be stated. Prints user+sys CPU seconds of every run.
#
# Usage: scripts/pyin-vs-essentia.sh [--wav FILE] [--runs N] [--core C] [--specflow BIN]...
#   --wav       16 kHz mono WAV (default: 300 s of the shipped speech repeated, made under /tmp)
#   --specflow  a specflow binary to time (repeatable; default target/release/specflow)
# Essentia comes from ESSENTIA_VENV (default ~/.cache/specflow/essentia-venv), made with
#   python3 -m venv ~/.cache/specflow/essentia-venv && ~/.cache/specflow/essentia-venv/bin/pip install essentia
# It is not a dependency of specflow.
set -euo pipefail
cd "$(dirname "$0")/.."

wav=""
runs=3
core=1
bins=()
while (($#)); do
    case "$1" in
        --wav) wav="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --core) core="$2"; shift 2 ;;
        --specflow) bins+=("$2"); shift 2 ;;
        *) echo "pyin-vs-essentia: unknown argument $1" >&2; exit 2 ;;
    esac
done
((${#bins[@]})) || bins=(target/release/specflow)
venv="${ESSENTIA_VENV:-$HOME/.cache/specflow/essentia-venv}"
[[ -x "$venv/bin/python" ]] || { echo "pyin-vs-essentia: no Essentia venv at $venv (see the header)" >&2; exit 2; }

if [[ -z "$wav" ]]; then
    wav="${TMPDIR:-/tmp}/specflow-speech-300s-16k.wav"
    [[ -f "$wav" ]] || python3 - "$wav" <<'PY'
import sys, wave
src = wave.open("tests/data/signals/speech_16k.wav", "rb")
data = src.readframes(src.getnframes())
n = 16000 * 300 * 2
out = wave.open(sys.argv[1], "wb")
out.setnchannels(1); out.setsampwidth(2); out.setframerate(16000)
out.writeframes((data * (n // len(data) + 1))[:n])
out.close()
PY
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# user+sys CPU seconds of one command, pinned to $core.
cpu() {
    /usr/bin/time -f "%U %S" -o "$out/time" taskset -c "$core" "$@" >/dev/null
    awk '{printf "%.2f", $1 + $2}' "$out/time"
}

echo "file: $wav; $runs runs each, pinned to core $core; CPU = user + sys seconds"
for ((r = 1; r <= runs; r++)); do
    for bin in "${bins[@]}"; do
        echo "run $r  specflow ($bin): $(cpu "$bin" extract --features f0 --pitch-method pyin "$wav")"
    done
    echo "run $r  essentia PitchYinProbabilistic: $(cpu "$venv/bin/python" scripts/pyin_vs_essentia.py "$wav" "$out/essentia.txt")"
    echo "run $r  essentia import alone: $(cpu "$venv/bin/python" -c 'import essentia.standard')"
done
