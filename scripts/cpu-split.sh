#!/usr/bin/env bash
# Where a proxied request's CPU goes, kernel against user space, for
# shardgate builds and for HAProxy in `mode tcp` (a TCP relay that does no
# HTTP work: the floor for a user-space proxy on this test).
#
# For each target, in turn and ROUNDS times (interleaved, each round starting one
# target later than the last): an upstream nginx
# (1 worker, CPU 1) answers a small JSON body; the proxy runs on CPU 0 with
# one shard / thread; `wrk -t1 -c$CONNS` (CPU 1, CONNS=32 unless set) loads it for DURATION seconds
# while `perf record -e cpu-clock -F 10000` samples the proxy. Prints, per
# target and round, CPU-µs per request in the kernel and in user space, the
# user-space part split by where it runs (the gateway's code, monoio, libc,
# mimalloc, the clock, httparse; `program` is the relay's own code), then the io_uring operations and system
# calls per request (`perf stat` on io_uring and raw_syscalls tracepoints,
# separate runs of the same length).
#
# Usage: scripts/cpu-split.sh TARGET...
#   TARGET  haproxy-tcp, haproxy-http (HAProxy in HTTP mode, keep-alive and
#           connection reuse, as scripts/bench.sh runs it), floor:MODE (bench/floor_proxy's MODE, e.g.
#           floor:duplex or floor:uring+early+pollfirst, with FLOOR_BIN naming
#           its binary), or a path to a
#           shardgate binary
#   ROUNDS=2 DURATION=4 CONNS=32 (environment)
#   KEEP_PERF=DIR (environment) keeps each round's samples as
#           DIR/perf-NAME-ROUND.data and its request count as
#           DIR/n-NAME-ROUND.txt, for per-symbol reports:
#           perf report -i DIR/perf-NAME-ROUND.data --sort sym --stdio
#           (samples × 100 µs ÷ requests = µs per request)
#   PERF_CALLS=1 (environment) records call chains too (DWARF unwinding,
#           about 140 MB of samples per second at 1,000 connections), so
#           that with KEEP_PERF a symbol's callers can be read:
#           perf report -i DIR/perf-NAME-ROUND.data --no-children -S SYMBOL -g caller --stdio
# Needs perf, nginx, haproxy and wrk; traffic stays on 127.0.0.1.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/bench/lib.sh"
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-4}
CONNS=${CONNS:-32}
UP_PORT=18590
PX_PORT=18591
WORK=$(mktemp -d /tmp/cpu-split.XXXXXX)
for d in cb px fc uw sc; do mkdir -p "$WORK/$d"; done
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

cat >"$WORK/up.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/up.pid;
error_log $WORK/up.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_timeout 300s; keepalive_requests 1000000;
  client_body_temp_path $WORK/cb; proxy_temp_path $WORK/px; fastcgi_temp_path $WORK/fc;
  uwsgi_temp_path $WORK/uw; scgi_temp_path $WORK/sc;
  server { listen 127.0.0.1:$UP_PORT; location / { default_type application/json;
    return 200 '{"items":[1,2,3]}'; } } }
EOF
haproxy_tcp_config "$PX_PORT" "$UP_PORT" 1 >"$WORK/haproxy.cfg"
sed -e 's/mode tcp/mode http\n    option http-keep-alive\n    http-reuse always\n    timeout http-keep-alive 60s/' \
    "$WORK/haproxy.cfg" >"$WORK/haproxy-http.cfg"
cat >"$WORK/gateway.ron" <<EOF
Gateway(
    shards: Count(1),
    listeners: [ Listener(name: "bench", bind: "127.0.0.1:$PX_PORT") ],
    upstreams: { "up": Upstream(targets: ["127.0.0.1:$UP_PORT"], max_idle_per_target: 256) },
    routes: [ Route(name: "all", match: Match(path_prefix: "/"), upstream: "up") ],
)
EOF

taskset -c 1 nginx -p "$WORK" -c "$WORK/up.conf" 2>/dev/null &
pids+=($!)
sleep 0.5

start_target() {
    if [[ $1 == haproxy-tcp ]]; then
        taskset -c 0 haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/target.log" 2>&1 &
    elif [[ $1 == haproxy-http ]]; then
        taskset -c 0 haproxy -db -f "$WORK/haproxy-http.cfg" >"$WORK/target.log" 2>&1 &
    elif [[ $1 == floor:* ]]; then
        taskset -c 0 "${FLOOR_BIN:?floor targets need FLOOR_BIN}" "${1#floor:}" \
            "127.0.0.1:$PX_PORT" "127.0.0.1:$UP_PORT" >"$WORK/target.log" 2>&1 &
    else
        taskset -c 0 "$1" --config "$WORK/gateway.ron" >"$WORK/target.log" 2>&1 &
    fi
    TPID=$!
    for _ in $(seq 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$PX_PORT/x" && return 0
        sleep 0.1
    done
    echo "target $1 did not start" >&2
    return 1
}

stop_target() {
    kill "$TPID" 2>/dev/null || true
    wait "$TPID" 2>/dev/null || true
}

load() {
    taskset -c 1 timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" \
        "http://127.0.0.1:$PX_PORT/api/v1/items" 2>&1 | awk '/requests in/ {print $1}'
}

name_of() {
    case $1 in
    haproxy-tcp | haproxy-http) echo "$1" ;;
    floor:uring*) echo "${1#floor:}" ;;
    floor:*) echo "monoio-${1#floor:}" ;;
    *) basename "$1" ;;
    esac
}

split() {
    local target=$1 round=$2 data="$WORK/perf.data"
    start_target "$target"
    perf record -q ${PERF_CALLS:+--call-graph dwarf,16384} -F 10000 -e cpu-clock -p "$TPID" -o "$data" -- sleep "$DURATION" 2>/dev/null &
    local perf=$!
    local n
    n=$(load)
    wait "$perf" || true
    stop_target
    if [[ -n ${KEEP_PERF:-} ]]; then
        mkdir -p "$KEEP_PERF"
        cp "$data" "$KEEP_PERF/perf-$(name_of "$target")-$round.data"
        echo "$n" >"$KEEP_PERF/n-$(name_of "$target")-$round.txt"
    fi
    perf report -i "$data" --sort dso,sym -F sample,dso,sym --stdio 2>/dev/null |
        grep -v '^#' | awk 'NF >= 4' |
        python3 -c '
import sys
n = int(sys.argv[1]); name = sys.argv[2]; rnd = sys.argv[3]
cat = {}
kernel = user = 0.0
for line in sys.stdin:
    p = line.split()
    try:
        s = int(p[0])
    except ValueError:
        continue
    us = s * 100.0 / n  # 10 kHz: one sample is 100 µs
    dso, kind, sym = p[1], p[2], " ".join(p[3:])
    if kind == "[k]":
        kernel += us
        continue
    user += us
    if "monoio" in sym:
        c = "monoio"
    elif dso.startswith("libc"):
        c = "libc"
    elif "mi_" in sym or "mimalloc" in sym:
        c = "mimalloc"
    elif "vdso" in dso or "clock_gettime" in sym or "Timespec" in sym:
        c = "clock"
    elif "httparse" in sym:
        c = "httparse"
    elif "shardgate" in sym:
        c = "gateway"
    elif not dso.startswith(("lib", "[")):
        c = "program"  # the code of the relay (or the floor) itself
    else:
        c = "other"
    cat[c] = cat.get(c, 0.0) + us
parts = " ".join(f"{k}={v:.2f}" for k, v in sorted(cat.items(), key=lambda x: -x[1]))
print(f"round {rnd} {name:<20} requests={n} cpu_us/req={kernel + user:.2f} kernel={kernel:.2f} user={user:.2f}  [{parts}]")
' "$n" "$(name_of "$target")" "$round"
}

ops() {
    local target=$1 round=$2 stat="$WORK/stat.txt"
    start_target "$target"
    perf stat -x, -e 'io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm,raw_syscalls:sys_enter' \
        -p "$TPID" -o "$stat" -- sleep "$DURATION" 2>/dev/null &
    local perf=$!
    local n
    n=$(load)
    wait "$perf" || true
    stop_target
    awk -F, -v n="$n" -v name="$(name_of "$target")" -v r="$round" '
        $3 ~ /submit_req/ {sq = $1} $3 ~ /poll_arm/ {pa = $1} $3 ~ /sys_enter/ {sc = $1}
        END {printf "round %s %-20s requests=%d io_uring_ops/req=%.2f poll_arms/req=%.2f syscalls/req=%.2f\n",
             r, name, n, sq / n, pa / n, sc / n}' "$stat"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, kernel $(uname -r); ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS"
echo "# scripts/cpu-split.sh $*"
# Each round starts one target later than the round before (no target
# always runs first).
targets=("$@")
for phase in split ops; do
    for r in $(seq "$ROUNDS"); do
        for ((i = 0; i < ${#targets[@]}; i++)); do
            "$phase" "${targets[$(( (i + r - 1) % ${#targets[@]} ))]}" "$r"
        done
    done
done
