#!/usr/bin/env bash
# Connection scale on loopback, shardgate against nginx and HAProxy (one
# core each; HAProxy only when listed in TARGETS):
#   1. RSS per idle keep-alive connection at 10,000, 50,000 and 100,000
#      connections, each after one request (held by scripts/conn-scale/hold.py);
#   2. accept rate: new connections per second while those are opened;
#   3. req/s and p99 with 10,000 active connections (wrk).
#
# Usage:  scripts/conn-scale.sh            (Markdown report on stdout)
# Knobs:  COUNTS="10000 19000 50000 100000"  TARGETS="shardgate nginx" (or
#         "shardgate nginx haproxy"; HAProxy's maxconn is half RLIMIT_NOFILE,
#         so keep ACTIVE below that: ACTIVE=9000 with a 20,000 limit)
#         ACTIVE=10000  DURATION=10  ROUNDS=2  SKIP_BUILD=0
#         SETTLE=5 (seconds between the last answer and the RSS reading)
#         SHARDGATE_BIN=target/release/shardgate
#         BASE_BIN=<another build>, for the target shardgate-base
# Upstream connections: shardgate and HAProxy hold at most 256 to the
# upstream and queue the requests beyond (`max_connections_per_target: 256`,
# `server ... maxconn 256`); nginx keeps 256 idle and opens more as needed.
# Unbounded, 10,000 clients need up to 10,000 upstream sockets besides
# their own, past a 20,000 open-file limit.
# Counts above the process's RLIMIT_NOFILE (raised to the hard limit) are
# reported as not run. Every run is bounded in time.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
COUNTS=${COUNTS:-"10000 19000 50000 100000"}
TARGETS=${TARGETS:-"shardgate nginx"}
ACTIVE=${ACTIVE:-10000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
SKIP_BUILD=${SKIP_BUILD:-0}
SHARDGATE_BIN=${SHARDGATE_BIN:-$REPO_DIR/target/release/shardgate}
UP_PORT=18580
PORT=18581
WORK_DIR=$(mktemp -d /tmp/conn-scale.XXXXXX)
PIDS=()

log() { printf '[conn-scale] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK_DIR"
}
trap cleanup EXIT

for tool in nginx wrk python3; do
    if ! command -v "$tool" >/dev/null; then
        log "installing $tool"
        apt-get install -y -q "$tool" >/dev/null 2>&1 || die "$tool missing and apt-get failed"
    fi
done
# Each process needs a descriptor per connection: raise the limit as far as
# allowed (the hard limit needs CAP_SYS_RESOURCE to go up), and skip the
# counts that do not fit under it, saying so in the report.
want=$(( ${COUNTS##* } + 1000 ))
(( want > ACTIVE + 1000 )) || want=$(( ACTIVE + 1000 ))
ulimit -Hn "$want" 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -Sn)
want=$FD_LIMIT
if [[ $SKIP_BUILD != 1 ]]; then
    (cd "$REPO_DIR" && cargo build --release -q)
fi

nginx_conf() { # DIR PORT BODY
    cat <<CONF
worker_processes 1;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile $((want * 2));
events { worker_connections $((want * 2)); }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_body_temp_path $1/cb; proxy_temp_path $1/px; fastcgi_temp_path $1/fc;
    uwsgi_temp_path $1/uw; scgi_temp_path $1/sc;
$3
}
CONF
}

start_upstream() {
    local dir=$WORK_DIR/upstream
    mkdir -p "$dir"
    nginx_conf "$dir" "$UP_PORT" "    server { listen 127.0.0.1:$UP_PORT backlog=65535;
        location / { default_type application/json; return 200 '{\"items\":[1,2,3]}'; } }" \
        >"$dir/nginx.conf"
    taskset -c 1 nginx -p "$dir" -c "$dir/nginx.conf" 2>"$dir/stderr" &
    PIDS+=($!)
}

# start_target NAME: sets TPID (the process whose tree's RSS is measured)
start_target() {
    local dir=$WORK_DIR/$1
    mkdir -p "$dir"
    case $1 in
        shardgate|shardgate-base)
            local bin=$SHARDGATE_BIN
            [[ $1 == shardgate-base ]] && bin=${BASE_BIN:?shardgate-base needs BASE_BIN}
            cat >"$dir/gateway.ron" <<RON
Gateway(
    shards: Count(1),
    listeners: [ Listener(name: "scale", bind: "127.0.0.1:$PORT") ],
    limits_http: HttpLimits(idle_timeout_ms: 600000),
    upstreams: { "up": Upstream(targets: ["127.0.0.1:$UP_PORT"], max_idle_per_target: 256,
        max_connections_per_target: 256, max_queued_per_target: 20000, queue_timeout_ms: 10000) },
    routes: [ Route(name: "all", match: Match(path_prefix: "/"), upstream: "up") ],
)
RON
            taskset -c 0 "$bin" --config "$dir/gateway.ron" >"$dir/stdout" 2>"$dir/stderr" &
            ;;
        nginx)
            nginx_conf "$dir" "$PORT" "    upstream up { server 127.0.0.1:$UP_PORT; keepalive 256; }
    server { listen 127.0.0.1:$PORT backlog=65535;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" \
                >"$dir/nginx.conf"
            taskset -c 0 nginx -p "$dir" -c "$dir/nginx.conf" 2>"$dir/stderr" &
            ;;
        haproxy)
            # HAProxy needs two descriptors per proxied connection, so its
            # maxconn is half the open-file limit here.
            cat >"$dir/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn $(( (FD_LIMIT - 200) / 2 ))
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 600s
    timeout server 60s
    timeout http-keep-alive 600s
frontend fe
    bind 127.0.0.1:$PORT
    default_backend be
backend be
    server s1 127.0.0.1:$UP_PORT maxconn 256
CFG
            taskset -c 0 haproxy -db -f "$dir/haproxy.cfg" >"$dir/stdout" 2>"$dir/stderr" &
            ;;
        *) die "unknown target $1" ;;
    esac
    TPID=$!
    PIDS+=("$TPID")
    for _ in $(seq 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$PORT/api/v1/items" && return 0
        sleep 0.1
    done
    cat "$dir/stderr" >&2
    die "$1 did not start"
}

stop_target() {
    kill "$TPID" 2>/dev/null || true
    wait "$TPID" 2>/dev/null || true
    sleep 0.5
}

# The kernel's count of connections dropped because a listen queue was full
# (TcpExt ListenOverflows, host-wide; only one listener is busy at a time).
listen_overflows() {
    awk '/^TcpExt:/ { if (!n) { for (i = 1; i <= NF; i++) col[$i] = i; n = 1 } else print $col["ListenOverflows"] }' /proc/net/netstat
}

# RSS in kB of a process and its children (nginx: master and worker).
tree_rss() {
    local total=0 p
    for p in $1 $(pgrep -P "$1" || true); do
        total=$(( total + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) ))
    done
    echo "$total"
}

# hold N: opens N connections with one request each; leaves the holder's
# stdin on fd 7 and prints its READY line.
hold() {
    local sources=$(( ($1 + 24999) / 25000 ))
    exec 7> >(exec timeout 900 python3 "$SCRIPT_DIR/conn-scale/hold.py" "$PORT" "$1" --request \
        --sources "$sources" >"$WORK_DIR/hold.out" 2>&1)
    for _ in $(seq 3000); do
        grep -q READY "$WORK_DIR/hold.out" 2>/dev/null && break
        sleep 0.1
    done
    grep READY "$WORK_DIR/hold.out" || { cat "$WORK_DIR/hold.out" >&2; die "holder did not finish"; }
}
release() { exec 7>&-; sleep 2; }

start_upstream
sleep 0.5
echo "## Idle connections and accept rate ($(date -u +%F), $(nproc) cores, one core per proxy)"
echo
echo "| target | connections | held | RSS before (kB) | RSS after (kB) | open when read | per connection (B) | accept rate (conn/s) | listen overflows |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in $COUNTS; do
    if (( n + 500 > FD_LIMIT )); then
        echo "| (all) | $n | – | – | – | – | not run: RLIMIT_NOFILE is $FD_LIMIT here |"
        continue
    fi
    for t in $TARGETS; do
        log "$t: $n idle connections"
        start_target "$t"
        hold 200 >/dev/null; release
        before=$(tree_rss "$TPID")
        ov0=$(listen_overflows)
        # Not `line=$(hold ...)`: a command substitution's subshell would
        # close the holder's stdin on return, and the connections with it.
        hold "$n" >"$WORK_DIR/ready.line"
        line=$(<"$WORK_DIR/ready.line")
        ov=$(( $(listen_overflows) - ov0 ))
        sleep "${SETTLE:-5}"
        after=$(tree_rss "$TPID")
        open=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
        held=$(awk '{print $2}' <<<"$line")
        cs=$(sed -E 's/.*connect_s=([0-9.]+).*/\1/' <<<"$line")
        per=$(( (after - before) * 1024 / (held > 0 ? held : 1) ))
        rate=$(awk -v n="$held" -v s="$cs" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
        echo "| $t | $n | $held | $before | $after | $open | $per | $rate | $ov |"
        release
        stop_target
    done
done
echo
echo "## $ACTIVE active connections: wrk -t2 -c$ACTIVE -d${DURATION}s, interleaved rounds"
echo
echo "| round | target | req/s | p50 | p99 | errors (non-2xx, timeouts) | listen overflows |"
echo "|---:|---|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
        start_target "$t"
        ov0=$(listen_overflows)
        out=$(taskset -c 1 timeout $((DURATION + 60)) wrk -t2 -c"$ACTIVE" -d"${DURATION}s" --latency \
            "http://127.0.0.1:$PORT/api/v1/items" 2>&1 || true)
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
        p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
        non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
        tmo=$(sed -nE 's/.*timeout ([0-9]+).*/\1/p' <<<"$out")
        echo "| $r | $t | ${rps:-?} | ${p50:-?} | ${p99:-?} | ${non2xx:-0}, ${tmo:-0} | $(( $(listen_overflows) - ov0 )) |"
        stop_target
    done
done
