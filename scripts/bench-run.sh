# Sourced by scripts/bench-gateway.sh and scripts/profile-worker.sh: the set-up both runs share.
#
# `bench_run_setup PREFIX KIND` installs what is missing (scripts/setup.sh), starts the local
# services, builds the release binary, and sets `bin` (the binary), `run` (PREFIX and the Unix
# time: the run's topic and group names) and `out` (target/bench/KIND-<run>/, created). It
# exports the worker's overrides for the run's own topics, group and database; each caller
# adds its own (pitch method, sinks, addresses).
bench_run_setup() {
    local prefix="$1" kind="$2"
    bash scripts/setup.sh
    bash scripts/services.sh up >/dev/null
    cargo build --release --locked --bin specflow
    bin="${CARGO_TARGET_DIR:-target}/release/specflow"
    run="$prefix$(date +%s)"
    out="target/bench/$kind-$run"
    mkdir -p "$out"
    export SPECFLOW__SOURCE__TOPIC="$run.in" SPECFLOW__SOURCE__GROUP_ID="$run" \
        SPECFLOW__SOURCE__CREATE_TOPICS=true SPECFLOW__OUTPUT__TOPIC="$run.out" \
        SPECFLOW__DEAD_LETTER__TOPIC="$run.dlq" SPECFLOW__MONGO__DATABASE="$run"
}

# CPU time (user + system) of process PID so far, in clock ticks (`getconf CLK_TCK` a second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
