#!/usr/bin/env bash
# Rare tail spikes, the gateway's or the machine's? Loads shardgate and the
# TCP relay (HAProxy `mode tcp`) at the same time, each with its own wrk and
# CONNS fresh connections per window, both in front of one nginx upstream,
# and prints per DURATION-second window each one's p50, p99 and max latency
# and the VM's steal time. A spike that is the machine's (a pause, the
# loopback, the upstream) can hit either; one that is the gateway's hits the
# gateway alone, window after window. The last column counts the upstream
# connections the gateway opened in the window (its pool keeps MAX_IDLE idle). Ends with how many windows had a p99
# above SPIKE_MS for each, and for both at once.
#
# Usage: scripts/tail-pair.sh
#   SHARDGATE_BIN=target/release/shardgate ROUNDS=30 DURATION=5 CONNS=500
#   SPIKE_MS=300 MAX_IDLE=256 (environment; MAX_IDLE is the gateway
#   upstream's max_idle_per_target)
# The proxies run on CPU 0, nginx (1 worker) and both wrk on CPU 1.
# Needs nginx, haproxy and wrk; traffic stays on 127.0.0.1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SHARDGATE_BIN:-$ROOT/target/release/shardgate}"
ROUNDS="${ROUNDS:-30}" DURATION="${DURATION:-5}" CONNS="${CONNS:-500}" SPIKE_MS="${SPIKE_MS:-300}"
MAX_IDLE="${MAX_IDLE:-256}"
for tool in nginx haproxy wrk "$BIN"; do
    command -v "$tool" >/dev/null || { echo "tail-pair: $tool not found" >&2; exit 1; }
done
DIR="$(mktemp -d "${TMPDIR:-/tmp}/tail-pair.XXXXXX")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
{ read -r UP; read -r GW; read -r RELAY; read -r ADMIN; } < <(free_ports 4)

nginx_upstream_config "$DIR" "$UP" '{"items":[{"id":1},{"id":2}],"total":2}' >"$DIR/nginx.conf"
cat >"$DIR/gateway.ron" <<EOF
Gateway(
    shards: Count(1),
    listeners: [ Listener(name: "pair", bind: "127.0.0.1:$GW") ],
    admin: Some(Admin(bind: "127.0.0.1:$ADMIN")),
    upstreams: { "up": Upstream(targets: ["127.0.0.1:$UP"], max_idle_per_target: $MAX_IDLE) },
    routes: [ Route(name: "all", match: Match(path_prefix: "/"), upstream: "up") ],
)
EOF
haproxy_tcp_config "$RELAY" "$UP" 1 >"$DIR/haproxy.cfg"
taskset -c 1 nginx -p "$DIR" -e "$DIR/error.log" -c "$DIR/nginx.conf" & PIDS+=($!)
SHARDGATE_DRIVER=io_uring taskset -c 0 "$BIN" --config "$DIR/gateway.ron" >"$DIR/gateway.log" 2>&1 & PIDS+=($!)
taskset -c 0 haproxy -db -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 & PIDS+=($!)
for port in "$UP" "$GW" "$RELAY"; do
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/api/v1/items" && break
        sleep 0.1
    done
    curl -sf -o /dev/null "http://127.0.0.1:$port/api/v1/items" \
        || { echo "tail-pair: nothing answers on port $port" >&2; cat "$DIR"/*.log >&2; exit 1; }
done

# stat FILE: p50, p99 and max latency of a wrk --latency report, in ms.
stat() {
    awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /^ +Latency +[0-9]/ { max = ms($4) }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        END { printf "%.1f %.1f %.1f\n", p50, p99, max }' "$1"
}
# Upstream connections the gateway has opened (not reused) so far.
opened() {
    curl -s "http://127.0.0.1:$ADMIN/metrics" |
        awk '/^shardgate_upstream_connections_total.*kind="new"/ { n += $2 } END { print n + 0 }'
}
steal() { local -a cpu; read -r -a cpu </proc/stat; echo "${cpu[8]:-0}"; }
hz=$(getconf CLK_TCK)
echo "# $(date -u +%FT%TZ) $(nproc) cores, kernel $(uname -r); ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS (each) MAX_IDLE=$MAX_IDLE, $BIN"
printf '%5s  %-26s  %-26s  %8s  %s\n' round "shardgate p50/p99/max ms" "relay p50/p99/max ms" "steal ms" "upstream conns opened"
spikes_gw=0 spikes_relay=0 spikes_both=0
for r in $(seq "$ROUNDS"); do
    s0=$(steal) o0=$(opened)
    taskset -c 1 timeout $((DURATION + 20)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency \
        "http://127.0.0.1:$GW/api/v1/items" >"$DIR/gw.txt" 2>&1 & w1=$!
    taskset -c 1 timeout $((DURATION + 20)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency \
        "http://127.0.0.1:$RELAY/api/v1/items" >"$DIR/relay.txt" 2>&1 & w2=$!
    wait "$w1" "$w2" || true
    s1=$(steal) o1=$(opened)
    read -r g50 g99 gmax < <(stat "$DIR/gw.txt")
    read -r r50 r99 rmax < <(stat "$DIR/relay.txt")
    printf '%5d  %-26s  %-26s  %8d  %d\n' "$r" "$g50 / $g99 / $gmax" "$r50 / $r99 / $rmax" \
        $(((s1 - s0) * 1000 / hz)) $((o1 - o0))
    g=$(awk -v v="$g99" -v s="$SPIKE_MS" 'BEGIN { print (v > s) }')
    h=$(awk -v v="$r99" -v s="$SPIKE_MS" 'BEGIN { print (v > s) }')
    spikes_gw=$((spikes_gw + g)) spikes_relay=$((spikes_relay + h)) spikes_both=$((spikes_both + g * h))
done
echo "windows with p99 above $SPIKE_MS ms: shardgate $spikes_gw, relay $spikes_relay, both at once $spikes_both (of $ROUNDS)"
