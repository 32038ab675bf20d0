#!/usr/bin/env bash
# HTTP/2 toward clients, on loopback: h2load (h2c with prior knowledge)
# against shardgate (a listener with `http2: true`) and against nginx
# (`listen ... http2`), both proxying over HTTP/1.1 to the same tiny nginx
# upstream, as scripts/bench.sh does for HTTP/1.1. For each shape of load
# (connections x streams per connection) and target: req/s, proxy CPU per
# request and p99 latency.
#
# Usage:  scripts/h2-bench.sh                (Markdown report on stdout, progress on stderr)
#         SKIP_BUILD=1 scripts/h2-bench.sh   (use target/release/shardgate as it is)
#         SHARDGATE_BIN=target/debug/shardgate SKIP_BUILD=1 DURATION=1 ROUNDS=1 scripts/h2-bench.sh
#
# Knobs (environment):
#   ROUNDS=3         rounds; each runs every shape x target once, interleaved
#   DURATION=5       seconds of each measured h2load run (-D)
#   WARMUP=1         seconds of unrecorded load per target and shape first (0 = none)
#   SHAPES="1x100 64x10"   connections x concurrent streams per connection
#   TARGETS="nginx shardgate"   also: shardgate-epoll
#   WORKERS=1        nginx worker_processes / shardgate Count(N)
#   PROXY_CPUS=0     taskset CPU list for the proxy under test
#   LOAD_CPUS=1      taskset CPU list for h2load and the upstream nginx
#   SKIP_BUILD=0     1 = don't run `cargo build --release`
#   SHARDGATE_BIN=target/release/shardgate
#   RESULTS_DIR=     if set, raw runs (runs.tsv) and the report (report.md) are copied there
#
# CPU: utime+stime from /proc/PID/stat before and after each run (nginx:
# master + workers), divided by the requests that succeeded. p50/p99: from
# h2load's per-request log (--log-file). Every ratio is taken within a
# round; the report gives medians over the rounds.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SHAPES=${SHAPES:-"1x100 64x10"}
TARGETS=${TARGETS:-"nginx shardgate"}
WORKERS=${WORKERS:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
SHARDGATE_BIN=${SHARDGATE_BIN:-$REPO_DIR/target/release/shardgate}
RESULTS_DIR=${RESULTS_DIR:-}
REQ_PATH=/api/v1/items
UPSTREAM_BODY='{"items":[{"id":1,"name":"widget","price":9.5},{"id":2,"name":"gadget","price":12}]}'
CMDLINE="ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP SHAPES=\"$SHAPES\" TARGETS=\"$TARGETS\" WORKERS=$WORKERS SKIP_BUILD=$SKIP_BUILD scripts/h2-bench.sh"

log() { printf '[h2-bench] %s\n' "$*" >&2; }
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/bench/lib.sh"

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
    [[ -n "$WORK_DIR" && -d "$WORK_DIR" ]] && rm -rf "$WORK_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/shardgate-h2-bench.XXXXXX")"
RUNS_TSV="$WORK_DIR/runs.tsv"

ensure_tools() {
    local missing=() bin pkg
    for bin in h2load nginx curl python3 taskset ps; do
        if ! command -v "$bin" >/dev/null 2>&1; then
            case "$bin" in
                h2load) pkg=nghttp2-client ;;
                nginx) pkg=nginx-light ;;
                taskset) pkg=util-linux ;;
                ps) pkg=procps ;;
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
    for bin in h2load nginx; do
        command -v "$bin" >/dev/null || die "$bin is required but could not be installed"
    done
}


# Waits until URL answers 200 (curl with CURL_OPTS), at most $2 s, while pid $3 lives.
wait_http() {
    local url=$1 timeout=$2 pid=$3 deadline code
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 $CURL_OPTS "$url" || true)"
        [[ "$code" == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}


CLK_TCK="$(getconf CLK_TCK)"
stat_ticks() {
    local line rest
    read -r line <"/proc/$1/stat" 2>/dev/null || { echo 0; return; }
    rest="${line##*) }"
    # shellcheck disable=SC2086
    set -- $rest
    echo $((${12} + ${13}))
}

nginx_common() {
    cat <<EOF
worker_processes $2;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; }
http {
    access_log off;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

start_upstream() {
    local dir="$WORK_DIR/upstream"
    mkdir -p "$dir"
    {
        nginx_common "$dir" 1
        cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / { default_type application/json; return 200 '$UPSTREAM_BODY'; }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_bg "$dir/stdout.log" "$LOAD_CPUS" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    UP_PID=$LAST_PID
    CURL_OPTS="" wait_http "http://127.0.0.1:$UP_PORT$REQ_PATH" 5 "$UP_PID" \
        || { cat "$dir/error.log" >&2 2>/dev/null; die "upstream nginx did not start"; }
}

# Targets: start_target_NAME PORT sets TARGET_PID and TARGET_URL (h2c).
start_target_nginx() {
    local port=$1 dir="$WORK_DIR/nginx"
    mkdir -p "$dir"
    {
        nginx_common "$dir" "$WORKERS"
        cat <<EOF
    http2_max_concurrent_streams 128;
    http2_max_requests 100000000;
    upstream up {
        server 127.0.0.1:$UP_PORT;
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$port http2 backlog=4096;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_bg "$dir/stdout.log" "$PROXY_CPUS" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    TARGET_PID=$LAST_PID
    TARGET_URL="http://127.0.0.1:$port$REQ_PATH"
}

start_shardgate() {
    local port=$1 name=$2 driver=$3 dir="$WORK_DIR/$2"
    mkdir -p "$dir"
    [[ -x "$SHARDGATE_BIN" ]] || { log "skipping $name: $SHARDGATE_BIN not found"; return 1; }
    cat >"$dir/gateway.ron" <<EOF
Gateway(
    shards: Count($WORKERS),
    listeners: [ Listener(name: "bench", bind: "127.0.0.1:$port", http2: true) ],
    upstreams: { "up": Upstream(targets: ["127.0.0.1:$UP_PORT"], max_idle_per_target: 256) },
    routes: [ Route(name: "all", match: Match(path_prefix: "/"), upstream: "up") ],
)
EOF
    start_bg "$dir/stdout.log" "$PROXY_CPUS" env SHARDGATE_DRIVER="$driver" \
        "$SHARDGATE_BIN" --config "$dir/gateway.ron"
    TARGET_PID=$LAST_PID
    TARGET_URL="http://127.0.0.1:$port$REQ_PATH"
}
start_target_shardgate() { start_shardgate "$1" shardgate io_uring; }
start_target_shardgate-epoll() { start_shardgate "$1" shardgate-epoll epoll; }

build_shardgate() {
    [[ " $TARGETS " == *" shardgate"* ]] || return 0
    if [[ "$SKIP_BUILD" == 1 ]]; then
        log "SKIP_BUILD=1: using $SHARDGATE_BIN as it is"
        return 0
    fi
    log "cargo build --release (this takes a while)"
    (cd "$REPO_DIR" && cargo build --release --bin shardgate >&2) \
        || log "cargo build --release failed: shardgate targets will be skipped"
}

# h2load with a shape (CxM) for SECS seconds; per-request log to $4.
run_h2load() {
    local url=$1 shape=$2 secs=$3 logfile=$4 out=$5
    local c=${shape%x*} m=${shape#*x}
    taskset -c "$LOAD_CPUS" timeout -k 5 $((secs + 20)) \
        h2load -t1 -c"$c" -m"$m" -D"$secs" --log-file="$logfile" "$url" >"$out" 2>&1
}

# One measured run; appends a row to runs.tsv.
measure() {
    local round=$1 shape=$2 target=$3 url=${URL_OF[$3]} pid=${PID_OF[$3]}
    local out="$WORK_DIR/h2load-$target-$shape-$round.txt" reqlog="$WORK_DIR/req.log"
    local p0 p1 u0 u1 ok errors rps lat
    p0=$(cpu_ticks "$pid")
    u0=$(cpu_ticks "$UP_PID")
    if ! run_h2load "$url" "$shape" "$DURATION" "$reqlog" "$out"; then
        log "round $round $shape $target: h2load failed:"
        sed 's/^/    /' "$out" >&2
        return 1
    fi
    p1=$(cpu_ticks "$pid")
    u1=$(cpu_ticks "$UP_PID")
    # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
    read -r ok errors < <(awk '/^requests:/ {gsub(",", ""); print $8, $10 + $12 + $14}' "$out")
    rps=$(awk '/^finished in/ {gsub(",", ""); print $4}' "$out")
    [[ -n "$ok" && "$ok" -gt 0 ]] || { log "round $round $shape $target: no request succeeded:"; sed 's/^/    /' "$out" >&2; return 1; }
    # p50 and p99 of the request durations (µs, third column).
    lat=$(cut -f3 "$reqlog" | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "0 0"; exit }
        i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
        i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
        print v[i50], v[i99] }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$shape" "$target" "$ok" "$rps" \
        "${lat% *}" "${lat#* }" "$errors" "$((p1 - p0))" "$((u1 - u0))" >>"$RUNS_TSV"
    awk -v r="$round" -v s="$shape" -v t="$target" -v n="$ok" -v rps="$rps" -v lat="$lat" \
        -v e="$errors" -v pt="$((p1 - p0))" -v ut="$((u1 - u0))" -v hz="$CLK_TCK" 'BEGIN {
            split(lat, l, " ")
            printf "[h2-bench] round %d %-6s %-15s %9.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d  CPU µs/req: proxy %.2f upstream %.2f\n",
                r, s, t, rps, l[1] / 1000, l[2] / 1000, e, pt * 1e6 / hz / n, ut * 1e6 / hz / n
        }' >&2
}

report() {
    python3 - "$RUNS_TSV" "$CLK_TCK" <<'EOF'
import csv, statistics, sys
path, hz = sys.argv[1], int(sys.argv[2])
rows = list(csv.DictReader(open(path), delimiter="\t"))
shapes = list(dict.fromkeys(r["shape"] for r in rows))
targets = list(dict.fromkeys(r["target"] for r in rows))
def cpu(r):
    return int(r["proxy_ticks"]) * 1e6 / hz / max(int(r["requests"]), 1)
for shape in shapes:
    c, m = shape.split("x")
    print(f"#### {c} connection(s) x {m} streams\n")
    print("| target | req/s | proxy CPU µs/req | p50 ms | p99 ms | errors | runs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        rs = [r for r in rows if r["shape"] == shape and r["target"] == t]
        if not rs:
            continue
        med = lambda f: statistics.median(f(r) for r in rs)
        print(f"| {t} | {med(lambda r: float(r['rps'])):.0f} | {med(cpu):.2f} | "
              f"{med(lambda r: int(r['p50_us'])) / 1000:.3f} | {med(lambda r: int(r['p99_us'])) / 1000:.3f} | "
              f"{sum(int(r['errors']) for r in rs)} | {len(rs)} |")
    # Per-round ratios against nginx, then their median.
    for t in targets:
        if t == "nginx":
            continue
        ratios = {"CPU/req": [], "req/s": [], "p99": []}
        for rnd in sorted(set(r["round"] for r in rows)):
            a = [r for r in rows if r["shape"] == shape and r["target"] == t and r["round"] == rnd]
            b = [r for r in rows if r["shape"] == shape and r["target"] == "nginx" and r["round"] == rnd]
            if a and b and cpu(b[0]) > 0:
                ratios["CPU/req"].append(cpu(a[0]) / cpu(b[0]))
                ratios["req/s"].append(float(a[0]["rps"]) / max(float(b[0]["rps"]), 1e-9))
                ratios["p99"].append(int(a[0]["p99_us"]) / max(int(b[0]["p99_us"]), 1))
        if ratios["CPU/req"]:
            parts = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in ratios.items())
            verdict = "at or below nginx" if statistics.median(ratios["CPU/req"]) <= 1 else "above nginx"
            print(f"\n{t} ÷ nginx (median of per-round ratios): {parts} — CPU per request {verdict}")
    print()
EOF
}

# ---------------------------------------------------------------------------
ensure_tools
build_shardgate
read -r -a TARGET_LIST <<<"$TARGETS"
read -r -a SHAPE_LIST <<<"$SHAPES"
mapfile -t PORTS < <(free_ports $((${#TARGET_LIST[@]} + 1)))
UP_PORT=${PORTS[0]}
log "rounds=$ROUNDS duration=${DURATION}s shapes=$SHAPES proxy cpus=$PROXY_CPUS load cpus=$LOAD_CPUS"
start_upstream
log "upstream nginx on 127.0.0.1:$UP_PORT (pid $UP_PID)"

declare -A URL_OF=() PID_OF=()
ACTIVE=()
i=1
for t in "${TARGET_LIST[@]}"; do
    port=${PORTS[$i]}
    i=$((i + 1))
    declare -F "start_target_$t" >/dev/null || die "unknown target '$t'"
    if "start_target_$t" "$port" \
        && CURL_OPTS="--http2-prior-knowledge" wait_http "$TARGET_URL" 10 "$TARGET_PID"; then
        URL_OF[$t]=$TARGET_URL
        PID_OF[$t]=$TARGET_PID
        ACTIVE+=("$t")
        log "target $t: $TARGET_URL (pid $TARGET_PID)"
    else
        log "target $t: skipped (did not answer h2c 200)"
        tail -n 5 "$WORK_DIR/$t/stdout.log" "$WORK_DIR/$t/error.log" 2>/dev/null | sed 's/^/    /' >&2 || true
    fi
done
((${#ACTIVE[@]})) || die "no target started"

if ((WARMUP > 0)); then
    for shape in "${SHAPE_LIST[@]}"; do
        for t in "${ACTIVE[@]}"; do
            run_h2load "${URL_OF[$t]}" "$shape" "$WARMUP" /dev/null "$WORK_DIR/warmup.txt" \
                || log "warm-up of $t ($shape) failed"
        done
    done
fi

printf 'round\tshape\ttarget\trequests\trps\tp50_us\tp99_us\terrors\tproxy_ticks\tupstream_ticks\n' >"$RUNS_TSV"
for ((round = 1; round <= ROUNDS; round++)); do
    for shape in "${SHAPE_LIST[@]}"; do
        for t in "${ACTIVE[@]}"; do
            kill -0 "${PID_OF[$t]}" 2>/dev/null || { log "round $round $t: process has exited"; continue; }
            measure "$round" "$shape" "$t" || true
        done
    done
done

cpu_model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
REPORT="$WORK_DIR/report.md"
{
    echo "### HTTP/2 downstream (h2c) — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo '```'
    echo "$CMDLINE"
    echo '```'
    echo
    echo "- machine: nproc=$(nproc), kernel $(uname -r), CPU: ${cpu_model:-unknown}"
    echo "- load: h2load -t1, ${DURATION}s per run, $ROUNDS interleaved rounds, GET $REQ_PATH, ${#UPSTREAM_BODY}-byte JSON body from an nginx upstream over HTTP/1.1"
    echo "- pinning: proxy on CPU $PROXY_CPUS, h2load + upstream nginx (1 worker) on CPU $LOAD_CPUS; proxies run $WORKERS worker(s)/shard(s)"
    echo "- versions: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(h2load --version 2>&1 | head -n1)$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null | sed 's/^/, shardgate @ /'), shardgate binary $SHARDGATE_BIN"
    echo "- CPU: utime+stime from /proc/PID/stat (CLK_TCK=$CLK_TCK) before/after each run ÷ succeeded requests; nginx = master + workers"
    echo
    report
} >"$REPORT"
if [[ -n "$RESULTS_DIR" ]]; then
    mkdir -p "$RESULTS_DIR"
    cp "$RUNS_TSV" "$REPORT" "$RESULTS_DIR/"
fi
cat "$REPORT"
