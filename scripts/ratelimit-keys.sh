#!/usr/bin/env bash
# Memory of the rate limiter under many distinct keys: one shard with a
# Header-keyed limit, wrk sending a new `x-key` value on every request until
# KEYS requests have gone through, for each key cap in CAPS. Reports the
# gateway's RSS before and after, its peak (VmHWM), the load's p99, and a
# probe request's latency right after; the RSS growth between two caps
# divided by their difference is the measured cost per key.
#
# Usage: scripts/ratelimit-keys.sh            (Markdown on stdout)
# Knobs: KEYS=1000000  CAPS="100000 200000"  PROXY_CPUS=0  LOAD_CPUS=1
#        SKIP_BUILD=0  MAX_SECONDS=120 (bound on each load run)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEYS="${KEYS:-1000000}"
CAPS="${CAPS:-100000 200000}"
PROXY_CPUS="${PROXY_CPUS:-0}"
LOAD_CPUS="${LOAD_CPUS:-1}"
MAX_SECONDS="${MAX_SECONDS:-120}"
BIN="$REPO_DIR/target/release/shardgate"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[keys] $*" >&2; }
for tool in wrk nginx curl; do
    command -v "$tool" >/dev/null || { log "$tool is needed (apt-get install $tool)"; exit 1; }
done
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    (cd "$REPO_DIR" && cargo build --release --bin shardgate >&2)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kib() { awk -v f="$2:" '$1==f {print $2}' "/proc/$1/status"; }

UP_PORT="$(free_port)"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx;
    proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx;
    uwsgi_temp_path $WORK/nginx;
    scgi_temp_path $WORK/nginx;
    server { listen 127.0.0.1:$UP_PORT; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
}
EOF
taskset -c "$LOAD_CPUS" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
PIDS+=($!)

cat >"$WORK/keys.lua" <<'EOF'
local n = 0
request = function()
    n = n + 1
    return wrk.format("GET", "/k", { ["x-key"] = "client-" .. n })
end
EOF

echo "| key cap per shard | requests (distinct keys) | RSS before (MiB) | RSS after (MiB) | VmHWM (MiB) | load p99 ms | probe after (ms) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
declare -A RSS_AFTER=()
for cap in $CAPS; do
    port="$(free_port)"
    cat >"$WORK/gw.ron" <<EOF
Gateway(
    shards: Count(1),
    listeners: [ Listener(name: "keys", bind: "127.0.0.1:$port") ],
    upstreams: { "up": Upstream(targets: ["127.0.0.1:$UP_PORT"]) },
    rate_limiting: RateLimiting(max_keys_per_shard: $cap, idle_key_s: 3600),
    rate_limits: { "per-key": RateLimit(key: Header("x-key"), algorithm: TokenBucket(capacity: 100, refill_per_s: 10)) },
    routes: [ Route(name: "all", match: Match(path_prefix: "/"), upstream: "up", rate_limits: ["per-key"]) ],
)
EOF
    taskset -c "$PROXY_CPUS" "$BIN" --config "$WORK/gw.ron" 2>"$WORK/gw.log" &
    gw=$!
    PIDS+=("$gw")
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/k" && break; sleep 0.1; done
    before=$(kib "$gw" VmRSS)
    # wrk runs for a fixed time: estimate it from a short run's rate.
    rate=$(taskset -c "$LOAD_CPUS" wrk -t1 -c32 -d2s -s "$WORK/keys.lua" "http://127.0.0.1:$port/k" \
        | awk '/Requests\/sec/ {print int($2)}')
    secs=$(( KEYS / (rate > 0 ? rate : 1) + 1 ))
    (( secs > MAX_SECONDS )) && secs=$MAX_SECONDS
    log "cap $cap: ~$rate req/s, running ${secs}s for $KEYS keys"
    out=$(taskset -c "$LOAD_CPUS" wrk -t1 -c32 -d"${secs}s" --latency -s "$WORK/keys.lua" "http://127.0.0.1:$port/k")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    probe=$(curl -s -o /dev/null -w '%{time_total}' -H 'x-key: probe' "http://127.0.0.1:$port/k")
    after=$(kib "$gw" VmRSS)
    hwm=$(kib "$gw" VmHWM)
    RSS_AFTER[$cap]=$after
    printf '| %s | %s | %.1f | %.1f | %.1f | %s | %.2f |\n' "$cap" "$total" \
        "$(bc -l <<<"$before/1024")" "$(bc -l <<<"$after/1024")" "$(bc -l <<<"$hwm/1024")" \
        "$p99" "$(bc -l <<<"$probe*1000")"
    kill "$gw"; wait "$gw" 2>/dev/null || true
done
set -- $CAPS
if (( $# >= 2 )); then
    a=$1 b=$2
    per=$(bc -l <<<"(${RSS_AFTER[$b]} - ${RSS_AFTER[$a]}) * 1024 / ($b - $a)")
    printf '\nRSS growth from a cap of %s to %s keys: %.0f bytes per key.\n' "$a" "$b" "$per"
fi
