#!/usr/bin/env bash
# Compare shardgate build/runtime variants against nginx as a reverse proxy,
# interleaved in rounds, on loopback. Each variant is an environment
# assignment for the shardgate process (e.g. SHARDGATE_URING_SETUP=plain,
# SHARDGATE_DRIVER=epoll); the word `nginx` runs nginx as the proxy.
#
#   scripts/bench-variants.sh [ROUNDS] [SECONDS] VARIANT...
#   scripts/bench-variants.sh 3 4 nginx SHARDGATE_URING_SETUP=plain SHARDGATE_URING_SETUP=defer
#
# The proxy runs on CPU 0, wrk and the upstream nginx on CPU 1. Printed per
# run: req/s, p99, proxy CPU-µs per request, upstream CPU-µs per request and
# their ratio (the steadiest figure on a machine whose speed drifts).
# Needs wrk, nginx and bc (apt-get install wrk nginx bc); uses a release build.
set -euo pipefail
ROUNDS=${1:-3}; DUR=${2:-4}; shift 2 || true
[ $# -gt 0 ] || set -- nginx "SHARDGATE_URING_SETUP=defer"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$REPO/target/release/shardgate"
[ -x "$BIN" ] || (cd "$REPO" && cargo build --release)
T=$(mktemp -d /tmp/shardgate-variants.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); PX=$(free_port); SG=$(free_port)
cleanup() { nginx -c "$T/up.conf" -s stop 2>/dev/null || true; [ -f "$T/px.pid" ] && nginx -c "$T/px.conf" -s stop 2>/dev/null; pkill -f "$T/g.ron" 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
cat > "$T/up.conf" <<NG
worker_processes 1; pid $T/up.pid; error_log $T/up-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { default_type application/json;
    return 200 '{"ok":true,"service":"bench-upstream","items":[1,2,3],"message":"fixed body for proxy benchmarks"}'; } } }
NG
cat > "$T/px.conf" <<NG
worker_processes 1; pid $T/px.pid; error_log $T/px-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; upstream u { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$PX; location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NG
cat > "$T/g.ron" <<RON
Gateway(shards: Count(1), listeners: [Listener(name: "bench", bind: "127.0.0.1:$SG")],
  upstreams: {"up": Upstream(targets: ["127.0.0.1:$UP"], max_idle_per_target: 256)},
  routes: [Route(name: "all", match: Match(path_prefix: "/"), upstream: "up")])
RON
taskset -c 1 nginx -c "$T/up.conf"
sleep 0.3
TCK=$(getconf CLK_TCK)
cpu() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
up_pids() { echo "$(cat "$T/up.pid") $(pgrep -P "$(cat "$T/up.pid")")"; }
echo "# $(date -u +%FT%TZ) $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# scripts/bench-variants.sh $ROUNDS $DUR $*  (shardgate @ $(git -C "$REPO" rev-parse --short HEAD))"
for r in $(seq "$ROUNDS"); do
  for v in "$@"; do
    if [ "$v" = nginx ]; then
      taskset -c 0 nginx -c "$T/px.conf"; sleep 0.3
      pids="$(cat "$T/px.pid") $(pgrep -P "$(cat "$T/px.pid")")"; port=$PX
    else
      env "$v" taskset -c 0 "$BIN" --config "$T/g.ron" 2>/dev/null & sleep 0.5
      pids=$(pgrep -f "$T/g.ron"); port=$SG
    fi
    taskset -c 1 wrk -t1 -c32 -d1s "http://127.0.0.1:$port/" >/dev/null
    # shellcheck disable=SC2046
    c0=$(cpu $pids); u0=$(cpu $(up_pids))
    out=$(taskset -c 1 timeout $((DUR + 30)) wrk -t1 -c32 -d"${DUR}s" --latency "http://127.0.0.1:$port/")
    # shellcheck disable=SC2046
    c1=$(cpu $pids); u1=$(cpu $(up_pids))
    n=$(echo "$out" | awk '/requests in/{print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    p99=$(echo "$out" | awk '$1=="99%"{print $2}')
    us=$(echo "($c1-$c0)*1000000/$TCK/$n" | bc -l); uu=$(echo "($u1-$u0)*1000000/$TCK/$n" | bc -l)
    printf "round %s  %-32s rps=%9s p99=%9s proxy_us/req=%6.2f upstream_us/req=%5.2f ratio=%5.2f\n" \
      "$r" "$v" "$rps" "$p99" "$us" "$uu" "$(echo "$us/$uu" | bc -l)"
    if [ "$v" = nginx ]; then nginx -c "$T/px.conf" -s stop 2>/dev/null; rm -f "$T/px.pid"; else kill $pids; fi
    sleep 0.3
  done
done
