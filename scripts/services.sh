#!/usr/bin/env bash
# Local services for specflow: Apache Kafka (KRaft, single node) and a MongoDB
# wire-protocol server (FerretDB with its SQLite backend), on 127.0.0.1 only.
#
# Usage: scripts/services.sh COMMAND
#   up                 install if needed, start both, wait until both answer
#   down               stop both and remove their data
#   status             show whether each runs and answers (exit 0 only if both do)
#   start SERVICE      start one service on its existing data (SERVICE: kafka|mongo)
#   stop SERVICE       stop one service, keeping its data
#   restart SERVICE    stop + start
#   cold-start SERVICE stop one service, delete its data and start it on fresh storage without
#                      waiting until it answers (a broker from nothing, for the cold-start test;
#                      use it with SPECFLOW_STATE_DIR and the ports of a private instance)
#   topics ARGS...     run Kafka's TopicCommand against the local broker,
#                      e.g. `topics --create --topic t --partitions 4`, `topics --list`
#   kafka-tool CLASS ARGS...  run any class from the Kafka jars (e.g.
#                      org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server 127.0.0.1:9092 ...)
#
# Environment:
#   SPECFLOW_STATE_DIR        pidfiles, logs, data (default /tmp/specflow-services)
#   SPECFLOW_CACHE            downloads and builds (default ~/.cache/specflow)
#   SPECFLOW_SERVICES_TIMEOUT seconds `up`/`start` wait for readiness (default 120)
#   SPECFLOW_KAFKA_PORT, SPECFLOW_KAFKA_CONTROLLER_PORT, SPECFLOW_MONGO_PORT
#                             (defaults 9092, 9093, 27017)
#   SPECFLOW_KAFKA_HEAP_OPTS  broker heap flags (default "-Xms1g -Xmx1g": a fixed heap whose
#                             young generation grows to ~640 MB, so young collections, ~10 ms
#                             pauses each, come 7x less often than with 256m-768m; they were
#                             the p99 latency's largest cause, benches/README.md round 5)
#
# Kafka's jars come from Maven Central (mvn), FerretDB is built with Go from
# the Go module proxy; both are cached under SPECFLOW_CACHE, so only the first
# run is slow. Keep deploy/docker-compose.yml in step with the settings here.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
HELPERS="$SCRIPT_DIR/services"

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

STATE="$(abspath "${SPECFLOW_STATE_DIR:-/tmp/specflow-services}")"
CACHE="$(abspath "${SPECFLOW_CACHE:-${HOME:-/root}/.cache/specflow}")"
TIMEOUT="${SPECFLOW_SERVICES_TIMEOUT:-120}"

HOST=127.0.0.1
KAFKA_VERSION=3.9.2
FERRETDB_VERSION=v1.24.2
MVN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
KAFKA_PORT="${SPECFLOW_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${SPECFLOW_KAFKA_CONTROLLER_PORT:-9093}"
MONGO_PORT="${SPECFLOW_MONGO_PORT:-27017}"
KAFKA_HEAP_OPTS="${SPECFLOW_KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}"
KAFKA_CHECK_TOPIC=specflow-services-check
KAFKA_STOP_TIMEOUT=30
MONGO_STOP_TIMEOUT=15

KAFKA_DIR="$CACHE/kafka/$KAFKA_VERSION"
KAFKA_JARS="$KAFKA_DIR/jars"
FERRETDB_BIN="$CACHE/bin/ferretdb-$FERRETDB_VERSION"

log() { printf 'services: %s\n' "$*"; }
warn() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

# Prints the last lines of each existing file given, to stderr.
show_tail() {
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        printf 'services: ---- last lines of %s ----\n' "$f" >&2
        tail -n "${SPECFLOW_LOG_TAIL:-40}" "$f" >&2
        printf 'services: ---- end of %s ----\n' "$f" >&2
    done
}

short_hash() { cat "$@" | sha256sum | cut -c1-12; }

KAFKA_CHECK_DIR="$KAFKA_DIR/check-$(printf '%s\n' "$KAFKA_VERSION" | short_hash - "$HELPERS/KafkaCheck.java")"
MONGO_CHECK_BIN="$CACHE/bin/specflow-mongo-check-$(printf '%s\n' "$FERRETDB_VERSION" | short_hash - "$HELPERS/mongo-check/main.go")"

# ---------------------------------------------------------------- processes

alive() { # PID: true if the process exists and is not a zombie
    [ -r "/proc/$1/status" ] || return 1
    [ "$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)" != Z ]
}

svc_pid() { # SERVICE: prints the pid of our running process for SERVICE
    local f="$STATE/$1/pid" pid cmd
    [ -s "$f" ] || return 1
    pid="$(<"$f")"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    case "$1" in
        kafka) [[ $cmd == *kafka.Kafka*"$STATE/kafka/server.properties"* ]] || return 1 ;;
        mongo) [[ $cmd == *ferretdb*"--state-dir=$STATE/mongo"* ]] || return 1 ;;
        *) return 1 ;;
    esac
    printf '%s\n' "$pid"
}

port_open() { timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

port_owner() {
    local o=""
    if command -v ss >/dev/null 2>&1; then
        o="$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n1 || true)"
    fi
    printf '%s\n' "${o:-unknown process}"
}

svc_ports() {
    case "$1" in
        kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" ;;
        mongo) echo "$MONGO_PORT" ;;
    esac
}

svc_main_port() { case "$1" in kafka) echo "$KAFKA_PORT" ;; mongo) echo "$MONGO_PORT" ;; esac; }

svc_logs() {
    case "$1" in
        kafka) echo "$STATE/kafka/kafka.log $STATE/kafka/console.log" ;;
        mongo) echo "$STATE/mongo/ferretdb.log" ;;
    esac
}

check_ports_free() { # SERVICE: fails if a port of SERVICE is served by something that is not ours
    local p
    for p in $(svc_ports "$1"); do
        if port_open "$p"; then
            die "$1: port $HOST:$p is already served by something else ($(port_owner "$p")), not by this script's $1 (state dir $STATE). Stop that process first."
        fi
    done
}

# Starts "$@" detached (own session, no stdin, output appended to LOGFILE) and
# records its pid in PIDFILE.
launch() { # PIDFILE LOGFILE CMD...
    local pidfile="$1" logfile="$2" i
    shift 2
    rm -f "$pidfile"
    printf '==== %s: starting %s\n' "$(date '+%F %T')" "$1" >>"$logfile"
    # shellcheck disable=SC2016 # $$ and $@ are for the inner bash
    nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
        >>"$logfile" 2>&1 </dev/null 8>&- 9>&- &
    for i in $(seq 100); do
        [ -s "$pidfile" ] && return 0
        sleep 0.05
    done
    die "could not launch $1"
}

stop_svc() { # SERVICE
    local svc="$1" pid limit i
    if ! pid="$(svc_pid "$svc")"; then
        rm -f "$STATE/$svc/pid"
        log "$svc: not running"
        return 0
    fi
    limit=$KAFKA_STOP_TIMEOUT
    [ "$svc" = mongo ] && limit=$MONGO_STOP_TIMEOUT
    log "$svc: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < limit * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        warn "$svc: still running ${limit}s after SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        alive "$pid" && die "$svc: pid $pid survived SIGKILL"
    fi
    rm -f "$STATE/$svc/pid"
    for ((i = 0; i < 50; i++)); do
        port_open "$(svc_main_port "$svc")" || break
        sleep 0.1
    done
    log "$svc: stopped"
}

# ---------------------------------------------------------------- install

need_cmd() { # CMD APT-PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing $2 with apt-get ($1 not found)"
        mkdir -p "$CACHE"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; } \
            >"$CACHE/apt-$2.log" 2>&1; then
            show_tail "$CACHE/apt-$2.log"
            die "apt-get install $2 failed"
        fi
    fi
    command -v "$1" >/dev/null 2>&1 || die "$1 not found (install $2)"
}

find_go() {
    if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
        PATH="/usr/local/go/bin:$PATH"
    fi
    command -v go >/dev/null 2>&1 || die "go not found (Go >= 1.24 is needed to build FerretDB)"
}

kafka_installed() {
    [ -f "$KAFKA_JARS/.complete" ] && [ -f "$KAFKA_CHECK_DIR/KafkaCheck.class" ] &&
        [ -f "$KAFKA_DIR/check-log4j.properties" ]
}
mongo_installed() { [ -x "$FERRETDB_BIN" ] && [ -x "$MONGO_CHECK_BIN" ]; }

install_kafka() {
    need_cmd java openjdk-17-jdk-headless
    need_cmd javac openjdk-17-jdk-headless
    mkdir -p "$KAFKA_DIR"
    if [ ! -f "$KAFKA_JARS/.complete" ]; then
        local t0=$SECONDS attempt ok=0
        need_cmd mvn maven
        log "kafka: fetching Kafka $KAFKA_VERSION jars from Maven Central (first run only)"
        cat >"$KAFKA_DIR/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by scripts/services.sh: the jars of a Kafka $KAFKA_VERSION broker + tools -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.specflow</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
        for attempt in 1 2 3; do
            rm -rf "$KAFKA_JARS.tmp"
            if (cd "$KAFKA_DIR" && mvn -B -q -Dstyle.color=never \
                "-Dmaven.repo.local=$CACHE/m2" \
                "$MVN_DEPENDENCY_PLUGIN:copy-dependencies" \
                "-DoutputDirectory=$KAFKA_JARS.tmp" -DincludeScope=runtime) \
                >"$KAFKA_DIR/mvn.log" 2>&1; then
                ok=1
                break
            fi
            warn "kafka: mvn attempt $attempt failed"
            sleep 2
        done
        if [ $ok != 1 ]; then
            show_tail "$KAFKA_DIR/mvn.log"
            die "kafka: could not fetch the Kafka jars with mvn (log: $KAFKA_DIR/mvn.log)"
        fi
        [ -f "$KAFKA_JARS.tmp/kafka_2.13-$KAFKA_VERSION.jar" ] \
            || die "kafka: mvn ran but kafka_2.13-$KAFKA_VERSION.jar is missing"
        touch "$KAFKA_JARS.tmp/.complete"
        rm -rf "$KAFKA_JARS"
        mv "$KAFKA_JARS.tmp" "$KAFKA_JARS"
        log "kafka: jars ready in $KAFKA_JARS ($((SECONDS - t0)) s)"
    fi
    # log4j (reload4j) configs for the command-line tools and for the check
    printf '%s\n' 'log4j.rootLogger=WARN, stderr' \
        'log4j.appender.stderr=org.apache.log4j.ConsoleAppender' \
        'log4j.appender.stderr.Target=System.err' \
        'log4j.appender.stderr.layout=org.apache.log4j.PatternLayout' \
        'log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n' \
        >"$KAFKA_DIR/tools-log4j.properties"
    sed 's/^log4j.rootLogger=WARN/log4j.rootLogger=ERROR/' "$KAFKA_DIR/tools-log4j.properties" \
        >"$KAFKA_DIR/check-log4j.properties"
    if [ ! -f "$KAFKA_CHECK_DIR/KafkaCheck.class" ]; then
        rm -rf "$KAFKA_DIR"/check-*/ # builds of older check sources
        mkdir -p "$KAFKA_CHECK_DIR.tmp"
        if ! javac -nowarn -d "$KAFKA_CHECK_DIR.tmp" -cp "$KAFKA_JARS/*" "$HELPERS/KafkaCheck.java" \
            >"$KAFKA_DIR/javac.log" 2>&1; then
            show_tail "$KAFKA_DIR/javac.log"
            die "kafka: could not compile $HELPERS/KafkaCheck.java"
        fi
        mv "$KAFKA_CHECK_DIR.tmp" "$KAFKA_CHECK_DIR"
    fi
}

install_mongo() {
    mongo_installed && return 0
    find_go
    local t0=$SECONDS dir src="$CACHE/ferretdb/src-$FERRETDB_VERSION" blog="$CACHE/ferretdb/build.log" attempt
    mkdir -p "$CACHE/ferretdb" "$CACHE/bin"
    export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOTOOLCHAIN=local \
        GO111MODULE=on GOWORK=off CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false -trimpath"
    if [ -x "$FERRETDB_BIN" ]; then
        log "mongo: building the readiness check (FerretDB $FERRETDB_VERSION is cached)"
    else
        log "mongo: building FerretDB $FERRETDB_VERSION with Go (first run only, takes a few minutes)"
    fi
    : >"$blog"
    dir=""
    for attempt in 1 2 3; do
        if dir="$(cd "$CACHE/ferretdb" && go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" 2>>"$blog" \
            | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')" && [ -n "$dir" ] && [ -d "$dir" ]; then
            break
        fi
        dir=""
        warn "mongo: go mod download attempt $attempt failed"
        sleep 2
    done
    if [ -z "$dir" ]; then
        show_tail "$blog"
        die "mongo: could not download github.com/FerretDB/FerretDB@$FERRETDB_VERSION from the Go module proxy"
    fi
    # The module as published lacks the generated build/version/version.txt,
    # without which the binary panics at start: build from a writable copy.
    rm -rf "$src"
    cp -R "$dir" "$src"
    chmod -R u+w "$src"
    printf '%s\n' "$FERRETDB_VERSION" >"$src/build/version/version.txt"
    mkdir -p "$src/cmd/specflow-mongo-check"
    cp "$HELPERS/mongo-check/main.go" "$src/cmd/specflow-mongo-check/main.go"
    rm -f "$CACHE"/bin/specflow-mongo-check-* # builds of older check sources
    for attempt in 1 2; do
        if (cd "$src" &&
            { [ -x "$FERRETDB_BIN" ] || go build -o "$FERRETDB_BIN.tmp" ./cmd/ferretdb; } &&
            go build -o "$MONGO_CHECK_BIN.tmp" ./cmd/specflow-mongo-check) >>"$blog" 2>&1; then
            break
        fi
        if [ $attempt = 2 ]; then
            show_tail "$blog"
            die "mongo: go build failed (log: $blog)"
        fi
        warn "mongo: go build attempt $attempt failed, retrying"
        sleep 2
    done
    if [ -e "$FERRETDB_BIN.tmp" ]; then
        "$FERRETDB_BIN.tmp" --version >>"$blog" 2>&1 || { show_tail "$blog"; die "mongo: the built ferretdb does not run"; }
        mv "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
    fi
    mv "$MONGO_CHECK_BIN.tmp" "$MONGO_CHECK_BIN"
    rm -rf "$src"
    log "mongo: FerretDB $FERRETDB_VERSION and its check ready in $CACHE/bin ($((SECONDS - t0)) s)"
}

install_svcs() { # SERVICE...: installs the given services, in parallel
    local svc pids=() ok=1 p
    mkdir -p "$CACHE"
    exec 8>"$CACHE/.lock"
    flock -w 1800 8 || die "timed out waiting for the cache lock $CACHE/.lock"
    for svc in "$@"; do
        if ! "${svc}_installed"; then
            "install_$svc" &
            pids+=("$!")
        fi
    done
    for p in "${pids[@]}"; do
        wait "$p" || ok=0
    done
    exec 8>&-
    [ $ok = 1 ] || die "installation failed (see above)"
}

# ---------------------------------------------------------------- services

write_kafka_config() {
    local d="$STATE/kafka"
    mkdir -p "$d/data"
    cat >"$d/server.properties" <<EOF
# generated by scripts/services.sh (keep in step with deploy/docker-compose.yml)
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
auto.create.topics.enable=false
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
# fewer internal partitions than the default 50: a fresh start or restart is ~4 s faster on 2 cores
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
num.network.threads=3
num.io.threads=4
log.retention.hours=168
EOF
    cat >"$d/log4j.properties" <<EOF
# generated by scripts/services.sh: the broker logs to $d/kafka.log only
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$d/kafka.log
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.network.RequestChannel\$=WARN
log4j.logger.org.apache.kafka.controller=INFO
log4j.logger.state.change.logger=INFO
log4j.logger.kafka.authorizer.logger=WARN
EOF
}

start_kafka() {
    local d="$STATE/kafka" cid
    write_kafka_config
    if [ ! -f "$d/data/meta.properties" ]; then
        # A random base64url id, never starting with '-': StorageTool would take it for an option.
        cid="-"
        while [[ "$cid" == -* ]]; do
            cid="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        done
        if ! java -Xmx256m "-Dlog4j.configuration=file:$KAFKA_DIR/tools-log4j.properties" \
            -cp "$KAFKA_JARS/*" kafka.tools.StorageTool format -t "$cid" -c "$d/server.properties" \
            >"$d/format.log" 2>&1; then
            show_tail "$d/format.log"
            die "kafka: formatting the storage in $d/data failed"
        fi
        log "kafka: formatted new storage in $d/data (cluster id $cid)"
    fi
    # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of flags
    launch "$d/pid" "$d/console.log" java $KAFKA_HEAP_OPTS \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        "-Dlog4j.configuration=file:$d/log4j.properties" "-Dkafka.logs.dir=$d" \
        -cp "$KAFKA_JARS/*" kafka.Kafka "$d/server.properties"
    log "kafka: started Kafka $KAFKA_VERSION (pid $(<"$d/pid")), log $d/kafka.log"
}

start_mongo() {
    local d="$STATE/mongo"
    mkdir -p "$d/data"
    launch "$d/pid" "$d/ferretdb.log" "$FERRETDB_BIN" \
        --handler=sqlite "--sqlite-url=file:$d/data/" \
        "--listen-addr=$HOST:$MONGO_PORT" "--state-dir=$d" \
        --telemetry=disable --debug-addr=- --log-level=info --log-format=text
    log "mongo: started FerretDB $FERRETDB_VERSION (pid $(<"$d/pid")), log $d/ferretdb.log"
}

# Runs the readiness check of SERVICE in the foreground (exec: replaces the shell).
exec_check() { # SERVICE SECONDS [roundtrip]
    case "$1" in
        kafka)
            exec java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
                "-Dlog4j.configuration=file:$KAFKA_DIR/check-log4j.properties" \
                -cp "$KAFKA_CHECK_DIR:$KAFKA_JARS/*" KafkaCheck "$HOST:$KAFKA_PORT" "$KAFKA_CHECK_TOPIC" "$2"
            ;;
        mongo)
            if [ "${3:-}" = roundtrip ]; then
                exec "$MONGO_CHECK_BIN" -uri "mongodb://$HOST:$MONGO_PORT" -timeout "${2}s" -roundtrip
            else
                exec "$MONGO_CHECK_BIN" -uri "mongodb://$HOST:$MONGO_PORT" -timeout "${2}s"
            fi
            ;;
    esac
}

# Waits until SERVICE answers (or DEADLINE, in $SECONDS, passes or the process dies).
wait_ready() { # SERVICE DEADLINE
    local svc="$1" deadline="$2" clog="$STATE/$1/check.log" cpid left
    left=$((deadline - SECONDS))
    [ "$left" -ge 5 ] || left=5
    printf '==== %s: readiness check (up to %s s)\n' "$(date '+%F %T')" "$left" >>"$clog"
    (exec_check "$svc" "$left" roundtrip) >>"$clog" 2>&1 8>&- 9>&- &
    cpid=$!
    while alive "$cpid"; do
        if ! svc_pid "$svc" >/dev/null; then
            kill "$cpid" 2>/dev/null || true
            wait "$cpid" 2>/dev/null || true
            # shellcheck disable=SC2046
            show_tail $(svc_logs "$svc")
            die "$svc: the process exited while starting (logs above)"
        fi
        sleep 0.3
    done
    if ! wait "$cpid"; then
        # shellcheck disable=SC2046
        show_tail $(svc_logs "$svc") "$clog"
        die "$svc: not answering after waiting $left s (logs above)"
    fi
    log "$svc: $(tail -n1 "$clog")"
}

# Starts SERVICE unless it runs already. Returns without waiting.
ensure_started() { # SERVICE
    local svc="$1" pid
    if pid="$(svc_pid "$svc")"; then
        log "$svc: already running (pid $pid)"
        return 0
    fi
    check_ports_free "$svc"
    "start_$svc"
}

lock_state() {
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 1800 9 || die "timed out waiting for another services.sh (lock $STATE/.lock)"
}

print_addresses() {
    printf 'kafka: %s:%s\n' "$HOST" "$KAFKA_PORT"
    printf 'mongodb: mongodb://%s:%s\n' "$HOST" "$MONGO_PORT"
}

# ---------------------------------------------------------------- commands

cmd_up() {
    local t0=$SECONDS svc deadline
    lock_state
    # fail before a long install if a port is taken by something else
    for svc in kafka mongo; do
        svc_pid "$svc" >/dev/null || check_ports_free "$svc"
    done
    install_svcs kafka mongo
    for svc in kafka mongo; do
        ensure_started "$svc"
    done
    deadline=$((SECONDS + TIMEOUT))
    log "waiting (up to ${TIMEOUT}s) until both answer"
    wait_ready mongo "$deadline"
    wait_ready kafka "$deadline"
    log "up in $((SECONDS - t0)) s"
    print_addresses
}

cmd_down() {
    lock_state
    stop_svc kafka
    stop_svc mongo
    rm -rf "$STATE/kafka" "$STATE/mongo"
    log "removed data in $STATE"
}

cmd_start() { # SERVICE
    local svc="$1"
    lock_state
    svc_pid "$svc" >/dev/null || check_ports_free "$svc"
    install_svcs "$svc"
    ensure_started "$svc"
    wait_ready "$svc" $((SECONDS + TIMEOUT))
}

cmd_cold_start() { # SERVICE
    local svc="$1"
    lock_state
    stop_svc "$svc"
    rm -rf "${STATE:?}/$svc"
    check_ports_free "$svc"
    install_svcs "$svc"
    ensure_started "$svc"
    log "$svc: started on fresh data; not waiting until it answers"
}

cmd_stop() { # SERVICE
    lock_state
    stop_svc "$1"
}

cmd_status() {
    local svc pid port rc=0 clog
    for svc in kafka mongo; do
        port="$(svc_main_port "$svc")"
        if pid="$(svc_pid "$svc")"; then
            clog="$(mktemp)"
            if { [ "$svc" = mongo ] || [ -f "$KAFKA_CHECK_DIR/KafkaCheck.class" ]; } && [ -d "$STATE/$svc" ] &&
                (exec_check "$svc" "$([ "$svc" = kafka ] && echo 20 || echo 5)") >"$clog" 2>&1 9>&-; then
                log "$svc: running (pid $pid) and answering on $HOST:$port"
            else
                log "$svc: running (pid $pid) but NOT answering on $HOST:$port"
                show_tail "$clog"
                rc=1
            fi
            rm -f "$clog"
        elif port_open "$port"; then
            log "$svc: not running (port $HOST:$port is served by something else: $(port_owner "$port"))"
            rc=1
        else
            log "$svc: not running"
            rc=1
        fi
    done
    return $rc
}

kafka_tool() { # CLASS ARGS...
    [ -f "$KAFKA_JARS/.complete" ] || install_svcs kafka
    exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        "-Dlog4j.configuration=file:$KAFKA_DIR/tools-log4j.properties" \
        -cp "$KAFKA_JARS/*" "$@"
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_service() {
    case "${1:-}" in
        kafka | mongo) ;;
        *) warn "SERVICE must be kafka or mongo"; usage ;;
    esac
}

main() {
    local cmd="${1:-}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        start) need_service "${1:-}"; cmd_start "$1" ;;
        stop) need_service "${1:-}"; cmd_stop "$1" ;;
        restart) need_service "${1:-}"; cmd_stop "$1"; cmd_start "$1" ;;
        cold-start) need_service "${1:-}"; cmd_cold_start "$1" ;;
        topics) kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$KAFKA_PORT" "$@" ;;
        kafka-tool) [ $# -gt 0 ] || usage; kafka_tool "$@" ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
