#!/usr/bin/env bash
# Load comparison on loopback: the same tiny nginx upstream reached directly,
# through nginx, through HAProxy and through shardgate (io_uring and epoll).
#
# Usage:  scripts/bench.sh            (Markdown report on stdout, progress on stderr)
#
# Knobs (environment):
#   SCENARIO=proxy      what is measured; see the scenario_* functions
#   ROUNDS=5            rounds; each round runs every target once, interleaved
#   DURATION=5          seconds per wrk run
#   WARMUP=1            seconds of unrecorded load per target before round 1 (0 = none)
#   CONNS=32            wrk connections (wrk always uses -t1)
#   WORKERS=1           nginx worker_processes / HAProxy nbthread / shardgate Count(N)
#   TARGETS="direct nginx haproxy shardgate shardgate-epoll"
#   PROXY_CPUS=0        taskset CPU list for the proxy under test
#   LOAD_CPUS=1         taskset CPU list for wrk and the upstream nginx
#   SKIP_BUILD=0        1 = don't run `cargo build --release`
#   SHARDGATE_BIN=target/release/shardgate
#   RESULTS_DIR=        if set, raw runs (runs.tsv) and the report (report.md) are copied there
#
# The machine's speed drifts between seconds, so targets are interleaved in
# rounds and every ratio is taken within one round. The steadiest figure is
# "proxy/upstream CPU": proxy CPU per request divided by the upstream's CPU
# per request in the same run.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
HELPER_DIR="$SCRIPT_DIR/bench"

KNOBS=(SCENARIO ROUNDS DURATION WARMUP CONNS WORKERS TARGETS PROXY_CPUS LOAD_CPUS
       SKIP_BUILD SHARDGATE_BIN RESULTS_DIR)

# The command line as given (only the knobs that were set), for the report.
CMDLINE=""
for knob in "${KNOBS[@]}"; do
    if [[ -n "${!knob+x}" ]]; then
        CMDLINE+="$knob=$(printf '%q' "${!knob}") "
    fi
done
CMDLINE+="scripts/bench.sh"
for arg in "$@"; do CMDLINE+=" $(printf '%q' "$arg")"; done

SCENARIO="${SCENARIO:-proxy}"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
CONNS="${CONNS:-32}"
WORKERS="${WORKERS:-1}"
TARGETS="${TARGETS:-direct nginx haproxy shardgate shardgate-epoll}"
PROXY_CPUS="${PROXY_CPUS:-0}"
LOAD_CPUS="${LOAD_CPUS:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
SHARDGATE_BIN="${SHARDGATE_BIN:-$REPO_DIR/target/release/shardgate}"
RESULTS_DIR="${RESULTS_DIR:-}"

BASELINE=nginx           # ratios are taken to this target
STARTUP_TIMEOUT=5        # seconds a target gets to answer its first request
WRK_GRACE=30             # extra seconds before a hung wrk is killed

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

for n in ROUNDS DURATION WARMUP CONNS WORKERS; do
    [[ "${!n}" =~ ^[0-9]+$ ]] || { echo "bench: $n must be a number, got '${!n}'" >&2; exit 2; }
done
(( ROUNDS >= 1 && DURATION >= 1 && CONNS >= 1 && WORKERS >= 1 )) \
    || { echo "bench: ROUNDS, DURATION, CONNS and WORKERS must be >= 1" >&2; exit 2; }

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Process bookkeeping and cleanup
# ---------------------------------------------------------------------------
STARTED_PIDS=()
WORK_DIR=""

cleanup() {
    local pid i
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for ((i = 0; i < 30; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$WORK_DIR" && -d "$WORK_DIR" ]]; then
        rm -rf "$WORK_DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/shardgate-bench.XXXXXX")"
RUNS_TSV="$WORK_DIR/runs.tsv"

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------
ensure_tools() {
    local missing=() bin pkg
    for bin in wrk nginx haproxy curl python3 taskset ps; do
        if ! command -v "$bin" >/dev/null 2>&1; then
            case "$bin" in
                taskset) pkg=util-linux ;;
                ps) pkg=procps ;;
                python3) pkg=python3 ;;
                nginx) pkg=nginx-light ;;
                *) pkg="$bin" ;;
            esac
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        local sudo=()
        [[ "$(id -u)" == 0 ]] || sudo=(sudo)
        "${sudo[@]}" apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${missing[@]}" >&2
    fi
    # The distribution's services are not used; only the binaries.
    for bin in wrk nginx haproxy; do
        command -v "$bin" >/dev/null || die "$bin is required but could not be installed"
    done
}

# N free TCP ports on 127.0.0.1, one per line.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
EOF
}

# Wait until URL answers 200, at most $2 seconds, while pid $3 is alive.
wait_http() {
    local url=$1 timeout=$2 pid=$3 deadline code
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${CURL_ARGS[@]}" "$url" || true)"
        [[ "$code" == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

# Start a command in the background, pinned with taskset; prints nothing,
# sets LAST_PID. Output goes to $1.
start_bg() {
    local logfile=$1 cpus=$2
    shift 2
    taskset -c "$cpus" "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    STARTED_PIDS+=("$LAST_PID")
}

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# CPU accounting: utime+stime in clock ticks from /proc/PID/stat, summed over
# each given pid and its direct children (nginx master + workers). A process's
# stat line already includes all of its threads.
# ---------------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"

stat_ticks() {
    local line rest
    read -r line <"/proc/$1/stat" 2>/dev/null || { echo 0; return; }
    rest="${line##*) }"            # fields from 3 (state) on; comm may hold spaces
    # shellcheck disable=SC2086
    set -- $rest
    echo $(( ${12} + ${13} ))      # fields 14 (utime) and 15 (stime)
}

cpu_ticks() {
    local total=0 pid child
    for pid in "$@"; do
        total=$((total + $(stat_ticks "$pid")))
        for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
            total=$((total + $(stat_ticks "$child")))
        done
    done
    echo "$total"
}

# ---------------------------------------------------------------------------
# Scenarios. Each sets what is requested and what every target must do for it:
#   REQ_PATH        path requested by wrk
#   WRK_ARGS        extra wrk arguments (e.g. -H 'Authorization: Bearer ...')
#   CURL_ARGS       the same for the readiness probe
#   SG_EXTRA        extra top-level fields for the shardgate config (RON)
#   SG_ROUTE_EXTRA  extra fields inside the shardgate route
#   NGINX_LOCATION_EXTRA / HAPROXY_BACKEND_EXTRA  the same for nginx / HAProxy
# A new scenario (jwt, ratelimit, aggregate, ...) is one more scenario_NAME.
# ---------------------------------------------------------------------------
REQ_PATH=/
WRK_ARGS=()
CURL_ARGS=()
SG_EXTRA=""
SG_ROUTE_EXTRA=""
NGINX_LOCATION_EXTRA=""
HAPROXY_BACKEND_EXTRA=""

scenario_proxy() {
    REQ_PATH=/api/v1/items
}

# ---------------------------------------------------------------------------
# Upstream: one nginx worker returning a fixed JSON body (~100 bytes).
# ---------------------------------------------------------------------------
UPSTREAM_BODY='{"ok":true,"service":"bench-upstream","data":{"id":12345,"name":"widget","tags":["a","b","c"]}}'

# Common nginx preamble: everything under the run's temp dir.
nginx_common() {
    local dir=$1 workers=$2
    cat <<EOF
worker_processes $workers;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; }
EOF
}

nginx_http_common() {
    local dir=$1
    cat <<EOF
    access_log off;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
EOF
}

start_upstream() {
    local dir="$WORK_DIR/upstream"
    mkdir -p "$dir"
    {
        nginx_common "$dir" 1
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / {
            default_type application/json;
            return 200 '$UPSTREAM_BODY';
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_bg "$dir/stdout.log" "$LOAD_CPUS" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    UP_PID=$LAST_PID
    wait_http "http://127.0.0.1:$UP_PORT$REQ_PATH" 5 "$UP_PID" \
        || { cat "$dir/error.log" "$dir/stdout.log" >&2 2>/dev/null; die "upstream nginx did not start"; }
}

# ---------------------------------------------------------------------------
# Targets: start_target_NAME PORT starts it (or returns non-zero to skip it)
# and sets TARGET_PIDS (pids whose CPU is the proxy's; empty for direct) and
# TARGET_URL.
# ---------------------------------------------------------------------------
declare -A URL_OF=() PIDS_OF=()

start_target_direct() {
    TARGET_PIDS=""
    TARGET_URL="http://127.0.0.1:$UP_PORT$REQ_PATH"
}

start_target_nginx() {
    local port=$1 dir="$WORK_DIR/nginx"
    mkdir -p "$dir"
    {
        nginx_common "$dir" "$WORKERS"
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    upstream up {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
$NGINX_LOCATION_EXTRA
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_bg "$dir/stdout.log" "$PROXY_CPUS" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    TARGET_PIDS=$LAST_PID
    TARGET_URL="http://127.0.0.1:$port$REQ_PATH"
    wait_http "$TARGET_URL" "$STARTUP_TIMEOUT" "$LAST_PID" || {
        cat "$dir/error.log" "$dir/stdout.log" >&2 2>/dev/null
        stop_pid "$LAST_PID"
        return 1
    }
}

start_target_haproxy() {
    local port=$1 dir="$WORK_DIR/haproxy"
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
$HAPROXY_BACKEND_EXTRA
    server s1 127.0.0.1:$UP_PORT
EOF
    start_bg "$dir/stdout.log" "$PROXY_CPUS" haproxy -db -f "$dir/haproxy.cfg"
    TARGET_PIDS=$LAST_PID
    TARGET_URL="http://127.0.0.1:$port$REQ_PATH"
    wait_http "$TARGET_URL" "$STARTUP_TIMEOUT" "$LAST_PID" || {
        cat "$dir/stdout.log" >&2 2>/dev/null
        stop_pid "$LAST_PID"
        return 1
    }
}

# start_shardgate PORT NAME DRIVER
start_shardgate() {
    local port=$1 name=$2 driver=$3 dir="$WORK_DIR/$2"
    mkdir -p "$dir"
    if [[ ! -x "$SHARDGATE_BIN" ]]; then
        log "skipping $name: $SHARDGATE_BIN not found"
        return 1
    fi
    cat >"$dir/gateway.ron" <<EOF
Gateway(
    shards: Count($WORKERS),
    listeners: [ Listener(name: "bench", bind: "127.0.0.1:$port") ],
    upstreams: { "up": Upstream(targets: ["127.0.0.1:$UP_PORT"], max_idle_per_target: 256) },
    routes: [ Route(name: "all", match: Match(path_prefix: "/"), upstream: "up"$SG_ROUTE_EXTRA) ],
$SG_EXTRA
)
EOF
    start_bg "$dir/stdout.log" "$PROXY_CPUS" env SHARDGATE_DRIVER="$driver" \
        "$SHARDGATE_BIN" --config "$dir/gateway.ron"
    TARGET_PIDS=$LAST_PID
    TARGET_URL="http://127.0.0.1:$port$REQ_PATH"
    wait_http "$TARGET_URL" "$STARTUP_TIMEOUT" "$LAST_PID" || {
        log "skipping $name: it did not answer 200 on $TARGET_URL within ${STARTUP_TIMEOUT}s; its output:"
        tail -n 20 "$dir/stdout.log" | sed 's/^/    /' >&2
        stop_pid "$LAST_PID"
        return 1
    }
}

start_target_shardgate()       { start_shardgate "$1" shardgate io_uring; }
start_target_shardgate-epoll() { start_shardgate "$1" shardgate-epoll epoll; }

build_shardgate() {
    [[ " $TARGETS " == *" shardgate"* ]] || return 0
    if [[ "$SKIP_BUILD" == 1 ]]; then
        log "SKIP_BUILD=1: using $SHARDGATE_BIN as it is"
        return 0
    fi
    log "cargo build --release (this takes a while)"
    if ! (cd "$REPO_DIR" && cargo build --release --bin shardgate >&2); then
        log "cargo build --release failed: shardgate targets will be skipped"
        SHARDGATE_BIN="$WORK_DIR/no-shardgate-build"
    fi
}

# ---------------------------------------------------------------------------
# One measured run: wrk against TARGET, proxy + upstream CPU sampled around it.
# Appends a row to runs.tsv. Returns non-zero if wrk failed.
# ---------------------------------------------------------------------------
LUA="$HELPER_DIR/report.lua"

run_wrk() {
    local url=$1 secs=$2 out=$3
    taskset -c "$LOAD_CPUS" timeout -k 5 $((secs + WRK_GRACE)) \
        wrk -t1 -c"$CONNS" -d"${secs}s" --timeout 5s --latency -s "$LUA" \
        "${WRK_ARGS[@]}" "$url" >"$out" 2>&1
}

measure() {
    local round=$1 target=$2 url=${URL_OF[$2]} pids=${PIDS_OF[$2]}
    local out="$WORK_DIR/wrk-$target-$round.txt" p0 p1 u0 u1 line
    local -A f=()
    # shellcheck disable=SC2086
    { p0=$(cpu_ticks $pids); u0=$(cpu_ticks "$UP_PID"); }
    if ! run_wrk "$url" "$DURATION" "$out"; then
        log "round $round $target: wrk failed:"; sed 's/^/    /' "$out" >&2
        return 1
    fi
    # shellcheck disable=SC2086
    { p1=$(cpu_ticks $pids); u1=$(cpu_ticks "$UP_PID"); }
    line="$(grep '^BENCH ' "$out" || true)"
    [[ -n "$line" ]] || { log "round $round $target: no summary from wrk:"; sed 's/^/    /' "$out" >&2; return 1; }
    local kv
    for kv in ${line#BENCH }; do f[${kv%%=*}]=${kv#*=}; done
    local errors=$((f[err_connect] + f[err_read] + f[err_write] + f[err_status] + f[err_timeout]))
    local proxy_ticks="-"
    [[ -n "$pids" ]] && proxy_ticks=$((p1 - p0))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "${f[requests]}" \
        "${f[duration_us]}" "${f[p50_us]}" "${f[p90_us]}" "${f[p99_us]}" "$errors" \
        "$proxy_ticks" "$((u1 - u0))" >>"$RUNS_TSV"
    awk -v r="$round" -v t="$target" -v n="${f[requests]}" -v d="${f[duration_us]}" \
        -v p50="${f[p50_us]}" -v p99="${f[p99_us]}" -v e="$errors" -v pt="$proxy_ticks" \
        -v ut="$((u1 - u0))" -v hz="$CLK_TCK" 'BEGIN {
            n1 = (n > 0 ? n : 1)
            pc = (pt == "-") ? "-" : sprintf("%.2f", pt * 1e6 / hz / n1)
            printf "[bench] round %d %-16s %9.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d  CPU µs/req: proxy %s upstream %.2f\n",
                r, t, n / (d > 0 ? d / 1e6 : 1), p50 / 1000, p99 / 1000, e, pc, ut * 1e6 / hz / n1
        }' >&2
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
declare -F "scenario_$SCENARIO" >/dev/null || die "unknown SCENARIO '$SCENARIO'"
"scenario_$SCENARIO"

ensure_tools
[[ -f "$LUA" ]] || die "missing $LUA"
build_shardgate

read -r -a TARGET_LIST <<<"$TARGETS"
mapfile -t PORTS < <(free_ports $((${#TARGET_LIST[@]} + 1)))
UP_PORT=${PORTS[0]}

log "scenario=$SCENARIO rounds=$ROUNDS duration=${DURATION}s conns=$CONNS workers=$WORKERS proxy cpus=$PROXY_CPUS load cpus=$LOAD_CPUS"
start_upstream
log "upstream nginx on 127.0.0.1:$UP_PORT (pid $UP_PID)"

ACTIVE=()
i=1
for t in "${TARGET_LIST[@]}"; do
    port=${PORTS[$i]}
    i=$((i + 1))
    declare -F "start_target_$t" >/dev/null || die "unknown target '$t'"
    TARGET_PIDS="" TARGET_URL=""
    if "start_target_$t" "$port"; then
        URL_OF[$t]=$TARGET_URL
        PIDS_OF[$t]=$TARGET_PIDS
        ACTIVE+=("$t")
        log "target $t: $TARGET_URL${TARGET_PIDS:+ (pid $TARGET_PIDS)}"
    else
        log "target $t: skipped"
    fi
done
((${#ACTIVE[@]})) || die "no target started"

if ((WARMUP > 0)); then
    for t in "${ACTIVE[@]}"; do
        run_wrk "${URL_OF[$t]}" "$WARMUP" "$WORK_DIR/warmup-$t.txt" || log "warmup of $t failed"
    done
fi

printf 'round\ttarget\trequests\tduration_us\tp50_us\tp90_us\tp99_us\terrors\tproxy_ticks\tupstream_ticks\n' >"$RUNS_TSV"
declare -A FAILS=()
for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${ACTIVE[@]}"; do
        if [[ -n "${PIDS_OF[$t]}" ]] && ! kill -0 "${PIDS_OF[$t]}" 2>/dev/null; then
            [[ -n "${FAILS[$t]:-}" ]] || log "round $round $t: process has exited; no more runs"
            FAILS[$t]=dead
            continue
        fi
        measure "$round" "$t" || FAILS[$t]=failed
    done
done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
cpu_model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
REPORT="$WORK_DIR/report.md"
{
    echo "### Scenario \`$SCENARIO\` — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo '```'
    echo "$CMDLINE"
    echo '```'
    echo
    echo "- machine: nproc=$(nproc), kernel $(uname -r), CPU: ${cpu_model:-unknown}"
    echo "- load: wrk -t1 -c$CONNS, ${DURATION}s per run, $ROUNDS interleaved rounds, GET $REQ_PATH, ${#UPSTREAM_BODY}-byte JSON body"
    echo "- pinning: proxy on CPU $PROXY_CPUS, wrk + upstream nginx (1 worker) on CPU $LOAD_CPUS; proxies run $WORKERS worker(s)/thread(s)/shard(s)"
    echo "- versions: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v 2>&1 | head -n1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -n1 | awk '{print "wrk " $2}')$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null | sed 's/^/, shardgate @ /')"
    echo "- CPU: utime+stime from /proc/PID/stat (CLK_TCK=$CLK_TCK) before/after each run ÷ requests; nginx = master + workers"
    for t in "${TARGET_LIST[@]}"; do
        if [[ -z "${URL_OF[$t]:-}" ]]; then
            echo "- \`$t\`: skipped (did not start)"
        elif [[ -n "${FAILS[$t]:-}" ]]; then
            echo "- \`$t\`: some runs missing (${FAILS[$t]})"
        fi
    done
    echo
    python3 "$HELPER_DIR/report.py" "$RUNS_TSV" "$CLK_TCK" "$BASELINE"
} >"$REPORT"

if [[ -n "$RESULTS_DIR" ]]; then
    mkdir -p "$RESULTS_DIR"
    cp "$RUNS_TSV" "$RESULTS_DIR/runs.tsv"
    cp "$REPORT" "$RESULTS_DIR/report.md"
    log "raw runs and report copied to $RESULTS_DIR"
fi
cat "$REPORT"
