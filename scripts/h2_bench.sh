#!/usr/bin/env bash
# HTTP/2 layer figures (bench/RESULTS.md, "HTTP/2 on monoio"): h2load against
# the bare h2c echo server (examples/h2_echo.rs, one monoio thread) and
# against nginx (one worker, h2c, `return 200`), same client, same shape.
# Servers on CPU 0, h2load on CPU 1. Prints req/s and server CPU per request
# (utime+stime from /proc). H2_ECHO_IO=unsafe: the unsafe socket adapter.
# Usage: scripts/h2_bench.sh [requests] [connections] [streams]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000} C=${2:-1} M=${3:-100}
BIN=${H2_ECHO_BIN:-${CARGO_TARGET_DIR:-target}/release/examples/h2_echo}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null; rm -rf "$WORK"' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # name pid url
    local name=$1 pid=$2 url=$3 before after out rps
    taskset -c 1 h2load -n 2000 -c "$C" -m "$M" "$url" >/dev/null # warm-up
    before=$(cpu_ticks "$pid")
    out=$(taskset -c 1 h2load -n "$N" -c "$C" -m "$M" "$url")
    after=$(cpu_ticks "$pid")
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    echo "$out" | grep -E "^requests:|^status codes:" | sed "s/^/$name: /"
    awk -v n="$N" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v r="$rps" -v name="$name" \
        'BEGIN { printf "%s: %s req/s, server CPU %.2f us/request\n", name, r, t / hz * 1e6 / n }'
}

taskset -c 0 "$BIN" 127.0.0.1:18082 >/dev/null &
ECHO=$!
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $WORK;
    server {
        listen 127.0.0.1:18083 http2;
        location / { return 200 "hello, h2c!\n"; }
    }
}
NGINX
taskset -c 0 nginx -c "$WORK/nginx.conf" -p "$WORK"
sleep 0.5
NGINX_WORKER=$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -1)
for round in 1 2 3; do
    run "h2_echo  (round $round)" "$ECHO" http://127.0.0.1:18082/
    run "nginx    (round $round)" "$NGINX_WORKER" http://127.0.0.1:18083/
done
