#!/usr/bin/env bash
# gRPC unary through the gateway against one proxied HTTP/1.1 request: the
# gateway's CPU per call, each side measured from /proc (utime+stime of the
# gateway process only), rounds interleaved (A B A B) on this noisy machine.
#
#   grpc   h2load, C connections x M streams, POST /test.Echo/Unary with a
#          gRPC frame (content-type application/grpc, te: trailers): h2c in,
#          relayed end to end to an h2c upstream (examples/h2_echo.rs, which
#          echoes the message and ends with a trailer)
#   http1  wrk, C2 connections, GET / through the gateway to an HTTP/1.1
#          upstream (nginx, one worker, `return 200`)
#
# Gateway on CPU 0 (one shard), clients and upstreams on CPU 1.
# Usage: scripts/grpc-bench.sh   (SKIP_BUILD=1 reuses target/release)
#        ROUNDS=3 DURATION=5 C=8 M=16 C2=64 scripts/grpc-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} C=${C:-8} M=${M:-16} C2=${C2:-64}
GW_PORT=18471 ECHO_PORT=18472 NGINX_PORT=18473
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null; rm -rf "$WORK"' EXIT
log() { printf '[grpc-bench] %s\n' "$*" >&2; }

if [ -z "${SKIP_BUILD:-}" ]; then
    log "building release binaries (gateway and examples/h2_echo)"
    cargo build --release --bin shardgate --example h2_echo >&2
fi
BIN=target/release/shardgate
ECHO_BIN=target/release/examples/h2_echo
for t in h2load wrk nginx; do command -v "$t" >/dev/null || { log "missing $t"; exit 1; }; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

taskset -c 1 "$ECHO_BIN" "127.0.0.1:$ECHO_PORT" >/dev/null &
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    server { listen 127.0.0.1:$NGINX_PORT; location / { return 200 "hello\n"; } }
}
NGINX
taskset -c 1 nginx -c "$WORK/nginx.conf" -p "$WORK"
cat > "$WORK/gw.ron" <<RON
Gateway(
    shards: Cores([0]),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$GW_PORT", http2: true)],
    upstreams: {
        "grpc": Upstream(targets: ["127.0.0.1:$ECHO_PORT"], protocol: Http2),
        "web": Upstream(targets: ["127.0.0.1:$NGINX_PORT"]),
    },
    routes: [
        Route(name: "grpc", match: Match(path_prefix: "/test.Echo/"), upstream: "grpc"),
        Route(name: "web", match: Match(path_prefix: "/"), upstream: "web"),
    ],
)
RON
"$BIN" --config "$WORK/gw.ron" 2> "$WORK/gw.log" &
GW=$!
for _ in $(seq 100); do grep -q "ready" "$WORK/gw.log" && break; sleep 0.1; done
# One gRPC message: flag 0, length 10, ten bytes.
printf '\x00\x00\x00\x00\x0a0123456789' > "$WORK/msg.bin"

grpc_round() {
    local before after out n
    before=$(cpu_ticks "$GW")
    out=$(taskset -c 1 h2load -D "$DURATION" -c "$C" -m "$M" -d "$WORK/msg.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$GW_PORT/test.Echo/Unary" 2>&1)
    after=$(cpu_ticks "$GW")
    n=$(echo "$out" | awk '/^status codes:/ {gsub(",", "", $3); print $3}')
    echo "$out" | grep -E "^finished in|^status codes" | sed 's/^/  grpc: /' >&2
    awk -v t=$((after - before)) -v n="$n" -v hz="$(getconf CLK_TCK)" -v d="$DURATION" \
        'BEGIN { if (n > 0) printf "%.2f %.0f\n", t / hz * 1e6 / n, n / d; else print "nan 0" }'
}

http1_round() {
    local before after out n
    before=$(cpu_ticks "$GW")
    out=$(taskset -c 1 wrk -t1 -c "$C2" -d "${DURATION}s" "http://127.0.0.1:$GW_PORT/" 2>&1)
    after=$(cpu_ticks "$GW")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    awk -v t=$((after - before)) -v n="$n" -v hz="$(getconf CLK_TCK)" -v d="$DURATION" \
        'BEGIN { if (n > 0) printf "%.2f %.0f\n", t / hz * 1e6 / n, n / d; else print "nan 0" }'
}

# Warm both paths (connections, pools).
grpc_round >/dev/null; http1_round >/dev/null
echo "| round | gRPC unary CPU µs/call | gRPC calls/s | HTTP/1.1 CPU µs/request | HTTP/1.1 req/s | gRPC ÷ HTTP/1.1 |"
echo "|---:|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
    read -r g gr < <(grpc_round)
    read -r h hr < <(http1_round)
    awk -v r="$r" -v g="$g" -v gr="$gr" -v h="$h" -v hr="$hr" \
        'BEGIN { printf "| %d | %.2f | %d | %.2f | %d | %.2f |\n", r, g, gr, h, hr, g / h }'
done
