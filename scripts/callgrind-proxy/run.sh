#!/usr/bin/env bash
# Instruction counts of the plain-proxy path, deterministic where wall-clock
# load tests on a shared machine are not: runs a shardgate binary under
# callgrind (epoll driver, which valgrind follows; io_uring it does not) with
# one shard in front of a small keep-alive backend, sends N sequential GETs
# over CONNS connections, and prints the total instructions.
#
# Usage (writes its files into the current directory):
#   VGX="--toggle-collect=shardgate::proxy::forward::*" CONNS=1 \
#       scripts/callgrind-proxy/run.sh BIN N EXTRA TAG
#   BIN    the shardgate binary
#   N      requests (run twice, e.g. 1000 and 3000; the difference ÷ 2000
#          is the per-request figure with start-up cancelled out)
#   EXTRA  text appended to the upstream's fields, e.g.
#          ", max_connections_per_target: 4" (or "")
#   TAG    names the output files: cg-TAG-N.out (callgrind), client-TAG-N.txt
#   TOP    (environment) top-level fields added to the config, e.g.
#          'admin: Some(Admin(bind: "127.0.0.1:18463")),' (default none)
#   H2=1   (environment) the listener has `http2: true` and the client is
#          h2load (h2c, CONNS connections, one stream at a time each)
#   BUSY=1 (environment) the client keeps a request in flight on each of
#          CONNS connections at once (busy.py) instead of using them in
#          turn; it first sends 2 * CONNS requests, after which callgrind
#          dumps (cg-TAG-N.out.1), then the N counted ones (cg-TAG-N.out.2
#          holds those alone: divide by N, no second run needed)
#   CACHE=1 (environment) callgrind also simulates the data caches: a
#          48 KiB 12-way L1 and, as the last level, a 2 MiB 16-way L2 (this
#          machine's per-core caches); D1mr/DLmr are then misses per function.
#          CACHE_LL=SIZE,WAYS,LINE sets the last level instead: under
#          valgrind a request takes about a millisecond, so 1,000 busy
#          connections would each wait longer than the 250 ms after which a
#          connection gives its buffers back, which a real load does not
#          see; 64 connections with CACHE_LL=131072,16,64 keep the real
#          ratio of cache to connections (2 KiB each) without that
# Then scripts/callgrind-proxy/linesum.py cg-TAG-N.out src/proxy/pool.rs 1-100000
# sums the instructions spent on those source lines.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=$1; N=$2; EXTRA=$3; TAG=$4
GP=18461; BP=18462
cat > "gw-$TAG.ron" <<R
Gateway(
    shards: Count(1),
    driver: Epoll,
    listeners: [Listener(name: "main", bind: "127.0.0.1:$GP"${H2:+, http2: true})],
    upstreams: { "app": Upstream(targets: ["127.0.0.1:$BP"]$EXTRA) },
    routes: [ Route(name: "all", match: Match(path_prefix: "/"), upstream: "app") ],
    ${TOP:-}
)
R
python3 "$HERE/backend.py" "$BP" & BPID=$!
sleep 0.3
# shellcheck disable=SC2086
CACHE_SIM=()
[ -n "${CACHE:-}" ] && CACHE_SIM=(--cache-sim=yes --D1=49152,12,64 --LL=${CACHE_LL:-2097152,16,64})
valgrind --tool=callgrind "${CACHE_SIM[@]}" ${VGX:-} --callgrind-out-file="cg-$TAG-$N.out" "$BIN" --config "gw-$TAG.ron" \
    2> "vg-$TAG-$N.log" & GPID=$!
for _ in $(seq 100); do grep -q "ready" "vg-$TAG-$N.log" && break; sleep 0.2; done
if [ -n "${H2:-}" ]; then
    timeout 600 h2load -n "$N" -c "${CONNS:-4}" -m 1 "http://127.0.0.1:$GP/x" |
        awk '/^status codes:/ {print $3}' > "client-$TAG-$N.txt"
elif [ -n "${BUSY:-}" ]; then
    SYNC="$PWD/sync-$TAG-$N"; rm -f "$SYNC.warm" "$SYNC.go"
    timeout 900 python3 "$HERE/busy.py" "$GP" "$N" "${CONNS:-4}" "$SYNC" > "client-$TAG-$N.txt" & CPID=$!
    while [ ! -e "$SYNC.warm" ]; do kill -0 "$CPID" 2>/dev/null || break; sleep 0.1; done
    callgrind_control -d "$GPID" > /dev/null
    touch "$SYNC.go"
    wait "$CPID"
    callgrind_control -d "$GPID" > /dev/null
    rm -f "$SYNC.warm" "$SYNC.go"
else
    timeout 600 python3 "$HERE/client.py" "$GP" "$N" "${CONNS:-4}" > "client-$TAG-$N.txt"
fi
kill -TERM "$GPID"; wait "$GPID" || true
kill "$BPID"; wait "$BPID" 2>/dev/null || true
echo "$TAG N=$N ok=$(cat "client-$TAG-$N.txt") Ir=$(grep -m1 '^summary:' "cg-$TAG-$N.out" | awk '{print $2}')"
if [ -n "${BUSY:-}" ]; then
    # Per counted request, from the second dump.
    paste <(grep -m1 '^events:' "cg-$TAG-$N.out.2" | cut -d' ' -f2- | tr ' ' '\n') \
          <(grep -m1 '^summary:' "cg-$TAG-$N.out.2" | cut -d' ' -f2- | tr ' ' '\n') |
        awk -v n="$N" -v tag="$TAG" '{printf "%s%s=%.1f", (NR > 1 ? " " : tag " per request: "), $1, $2 / n} END {print ""}'
fi
