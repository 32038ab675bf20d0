#!/usr/bin/env bash
# Large answers through shardgate builds: an upstream nginx (1 worker, CPU 1)
# serves a 1 MiB file; each build in turn (one shard, CPU 0) proxies it to
# `wrk -t1 -c8 -d4s` (CPU 1), ROUNDS times interleaved. Prints the proxy's
# CPU-ms per request (utime + stime from /proc, 100 Hz ticks) per round.
#
# Usage: scripts/bench-large-body.sh ROUNDS BIN...
# Needs nginx, wrk, curl and bc; traffic stays on 127.0.0.1.
set -u
W=$(mktemp -d /tmp/large-body.XXXXXX)
chmod 755 "$W"  # nginx workers read the file as another user
mkdir -p $W/{cb,px,fc,uw,sc,www}
head -c 1048576 /dev/urandom > $W/www/big.bin
UP=18731; PX=18732
cat >$W/up.conf <<C
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_timeout 300s; keepalive_requests 1000000; sendfile on;
  client_body_temp_path $W/cb; proxy_temp_path $W/px; fastcgi_temp_path $W/fc; uwsgi_temp_path $W/uw; scgi_temp_path $W/sc;
  server { listen 127.0.0.1:$UP; root $W/www; } }
C
cat >$W/g.ron <<C
Gateway(shards: Count(1), listeners: [ Listener(name: "bench", bind: "127.0.0.1:$PX") ],
 upstreams: { "up": Upstream(targets: ["127.0.0.1:$UP"], max_idle_per_target: 256) },
 routes: [ Route(name: "all", match: Match(path_prefix: "/"), upstream: "up") ])
C
taskset -c 1 nginx -p $W -c $W/up.conf 2>/dev/null & NP=$!
sleep 0.5
R=$1; shift
for r in $(seq $R); do for b in "$@"; do
  taskset -c 0 $b --config $W/g.ron > $W/t.log 2>&1 & TP=$!
  size=0
  for i in $(seq 50); do
    size=$(curl -fs -o /dev/null -w '%{size_download}' http://127.0.0.1:$PX/big.bin) && break
    sleep 0.1
  done
  if [[ $size != 1048576 ]]; then
    echo "$b: the 1 MiB answer did not come through (got ${size:-nothing} bytes)" >&2
    kill $TP $NP; exit 1
  fi
  t0=$(awk '{print $14+$15}' /proc/$TP/stat)
  n=$(taskset -c 1 timeout 30 wrk -t1 -c8 -d4s http://127.0.0.1:$PX/big.bin | awk '/requests in/{print $1}')
  t1=$(awk '{print $14+$15}' /proc/$TP/stat)
  kill $TP; wait $TP 2>/dev/null
  echo "round $r $(basename $b) requests=$n cpu_ms_per_req=$(echo "scale=3; ($t1-$t0)*10/$n" | bc)"
done; done
kill $NP; wait 2>/dev/null
rm -rf "$W"
