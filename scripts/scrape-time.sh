#!/usr/bin/env bash
# How long a Prometheus scrape takes with many routes that all saw traffic:
# a config of ROUTES template routes (scripts/gen-routes.py) on SHARDS
# shards with an admin listener, every route requested REQS times (so every
# route has counters and a latency histogram on every shard it reached), then
# SCRAPES scrapes of /metrics timed by curl, one after another.
#
# Usage:  scripts/scrape-time.sh            (ROUTES=1000 SHARDS=4 REQS=8 SCRAPES=30)
#         SHARDGATE_BIN=target/release/shardgate (default; built if missing)
# Prints the scrape times (median, p90, max, in ms), the body size and the
# number of series.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUTES=${ROUTES:-1000}
SHARDS=${SHARDS:-4}
REQS=${REQS:-8}
SCRAPES=${SCRAPES:-30}
BIN=${SHARDGATE_BIN:-target/release/shardgate}
[[ -x "$BIN" ]] || cargo build --release --bin shardgate >&2
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
read -r GP AP BP < <(python3 -c '
import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
python3 scripts/callgrind-proxy/backend.py "$BP" &
python3 scripts/gen-routes.py "$ROUTES" --bind "127.0.0.1:$GP" --target "127.0.0.1:$BP" --shards "$SHARDS" \
    | sed "s|^    routes: \\[|    admin: Some(Admin(bind: \"127.0.0.1:$AP\")),\n    routes: [|" >"$WORK/gateway.ron"
"$BIN" --config "$WORK/gateway.ron" 2>"$WORK/gateway.log" &
for _ in $(seq 100); do grep -q "shardgate: ready" "$WORK/gateway.log" && break; sleep 0.1; done
echo "warming $ROUTES routes x $REQS requests on $SHARDS shards..." >&2
python3 - "$GP" "$ROUTES" "$REQS" <<'PY'
import socket, sys
port, routes, reqs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
# Several connections, so that the kernel spreads them over the shards.
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
n = 0
for r in range(routes):
    for k in range(reqs):
        c = conns[(r * reqs + k) % len(conns)]
        c.sendall(b"GET /api/v1/svc-%d/items/%d HTTP/1.1\r\nhost: x\r\n\r\n" % (r, k))
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += c.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
        while len(rest) < length:
            rest += c.recv(65536)
        n += 1
print(f"{n} requests sent", file=sys.stderr)
PY
# The first scrape gets every shard's complete metrics; later ones only
# what changed since the previous scrape (see "Metrics" in the README).
first=$(curl -s -o "$WORK/metrics.txt" -w '%{time_total}' "http://127.0.0.1:$AP/metrics")
# Later scrapes run while every route keeps getting requests (REQS=1 rounds
# over all routes, again and again), so that each finds most routes changed.
python3 - "$GP" "$ROUTES" <<'PY' &
import socket, sys, time
port, routes = int(sys.argv[1]), int(sys.argv[2])
c = socket.create_connection(("127.0.0.1", port))
end = time.time() + 120
r = 0
while time.time() < end:
    c.sendall(b"GET /api/v1/svc-%d/items/1 HTTP/1.1\r\nhost: x\r\n\r\n" % (r % routes))
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            sys.exit(0)
        buf += d
    r += 1
PY
LOAD=$!
for _ in $(seq "$SCRAPES"); do
    sleep 0.5
    curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$AP/metrics"
done | sort -n >"$WORK/times.txt"
kill "$LOAD" 2>/dev/null || true
python3 - "$WORK/times.txt" "$WORK/metrics.txt" "$ROUTES" "$SHARDS" "$first" <<'PY'
import sys
t = [float(x) * 1000 for x in open(sys.argv[1])]
body = open(sys.argv[2]).read()
series = sum(1 for l in body.splitlines() if l and not l.startswith("#"))
q = lambda p: t[min(len(t) - 1, int(p * len(t)))]
print(f"scrape of /metrics, {sys.argv[3]} routes on {sys.argv[4]} shards ({len(body)/1e6:.1f} MB, {series} series): "
      f"first (complete) {float(sys.argv[5]) * 1000:.1f} ms; under traffic over every route: median {q(0.5):.1f} ms, "
      f"p90 {q(0.9):.1f} ms, max {t[-1]:.1f} ms over {len(t)} scrapes 0.5 s apart")
PY
