#!/usr/bin/env bash
# Connection scale on loopback, shardgate against nginx and HAProxy (one
# core each: all of a target's processes share core 0; HAProxy only when
# listed in TARGETS):
#   1. RSS per idle keep-alive connection at 10,000, 50,000 and 100,000
#      connections, each after one request (held by scripts/conn-scale/hold.py);
#   2. accept rate: new connections per second while those are opened;
#   3. req/s and p99 with 10,000 active connections (wrk).
#
# Usage:  scripts/conn-scale.sh            (Markdown report on stdout)
# Knobs:  COUNTS="10000 19000 50000 100000"  TARGETS="shardgate nginx" (or
#         "shardgate nginx haproxy"; HAProxy's maxconn is half RLIMIT_NOFILE,
#         so an ACTIVE above 90% of that runs HAProxy as several processes
#         on one SO_REUSEPORT port, all on core 0: 2 for 10,000 under a
#         20,000 limit; HAPROXY_PROCS=N sets the count)
#         ACTIVE=10000  DURATION=10  ROUNDS=2  SKIP_BUILD=0
#         SETTLE=5 (seconds between the last answer and the RSS reading)
#         SHARDGATE_BIN=target/release/shardgate
#         BASE_BIN=<another build>, for the target shardgate-base
#         SG_TABLES=processes (shardgate's counts above the limit run as P
#         processes, as nginx's), or per-shard (one process of P shards with
#         `descriptor_tables: PerShard`: each shard's descriptor table has
#         the limit to itself; the table then shows connections per shard)
#         UP_MULTI_ACCEPT=on (the upstream nginx accepts every pending
#         connection per turn; off, nginx's default and this script's before
#         bench/RESULTS.md §45, one per turn)
# Upstream connections: shardgate and HAProxy hold at most 256 to the
# upstream and queue the requests beyond (`max_connections_per_target: 256`,
# `server ... maxconn 256`); nginx keeps 256 idle and opens more as needed.
# Unbounded, 10,000 clients need up to 10,000 upstream sockets besides
# their own, past a 20,000 open-file limit.
# Multi-process rows: a process needs a descriptor per connection, and
# RLIMIT_NOFILE is per process (raised here to the hard limit, which needs
# CAP_SYS_RESOURCE to go up; 20,000 on the reference host). A count that does
# not fit under it (n + 500 > limit) is run with P = ceil(n / (limit * 3/4))
# processes per target, so each holds about 3/4 of the limit on average: the
# listeners are SO_REUSEPORT sockets and the kernel spreads new connections
# over them by a hash of the addresses and ports (even within a few per cent
# at these counts). shardgate: P processes started with the same config
# (`shards: Count(1)`, one SO_REUSEPORT listener each); nginx:
# `worker_processes P` and `listen ... reuseport`, worker_connections and
# worker_rlimit_nofile at the limit. HAProxy's multi-process idle rows are
# reported as not run: nbproc is gone from modern HAProxy (2.5+), and one
# process holds at most HAPROXY_MAXCONN connections, fewer than these
# counts give each process (the active phase runs it as several processes,
# see HAPROXY_PROCS). Counts that fit keep P = 1 and
# today's configs. RSS is summed over all of a target's processes and their
# children, and the table shows how many connections each process held at
# the end (min-max over the P processes, from `ss -p`).
# The holder likewise runs as H = ceil(n / (limit - 1000)) hold.py processes,
# each on its own source addresses (`--source-base`; 14,000 connections per
# address at most, see PER_SOURCE), all reading one pipe (fd 7), so closing
# it releases every connection at once; together they
# keep at most limit * 3/4 requests in flight (see hold), which the shared
# upstream can take. Per connection is the RSS growth over the connections
# open when RSS is read (held, unless some failed).
# Every run is bounded in time.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
COUNTS=${COUNTS:-"10000 19000 50000 100000"}
TARGETS=${TARGETS:-"shardgate nginx"}
ACTIVE=${ACTIVE:-10000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
SKIP_BUILD=${SKIP_BUILD:-0}
UP_MULTI_ACCEPT=${UP_MULTI_ACCEPT:-on}
SG_TABLES=${SG_TABLES:-processes}
SHARDGATE_BIN=${SHARDGATE_BIN:-$REPO_DIR/target/release/shardgate}
UP_PORT=18580
PORT=18581
WORK_DIR=$(mktemp -d /tmp/conn-scale.XXXXXX)
PIDS=()   # every gateway, proxy and upstream process started (for cleanup)
TPIDS=()  # the current target's processes (P of them; nginx: the master)

log() { printf '[conn-scale] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# alive PID: the process exists and is not a zombie.
alive() { awk '/^State:/ { exit ($2 == "Z") }' "/proc/$1/status" 2>/dev/null; }
# holder_pids: the holder processes (their `timeout` wrappers) of the last hold.
holder_pids() {
    local f
    for f in "$WORK_DIR"/hold.*.pid; do
        [[ -s $f ]] && cat "$f"
    done
    return 0
}
# reap SECONDS PID...: waits up to SECONDS for the processes to end, then
# kills what is left with SIGKILL.
reap() {
    local secs=$1 p left
    shift
    for _ in $(seq $((secs * 10))); do
        left=0
        for p in "$@"; do alive "$p" && left=1; done
        (( left )) || return 0
        sleep 0.1
    done
    for p in "$@"; do
        if alive "$p"; then
            log "pid $p still running after ${secs}s: SIGKILL"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
}
cleanup() {
    local hp
    exec 7>&-
    hp=$(holder_pids)
    for p in $hp "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    # shellcheck disable=SC2086
    reap 10 $hp "${PIDS[@]}"
    wait 2>/dev/null || true
    rm -rf "$WORK_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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
# HAProxy counts two descriptors per connection against the limit. The
# active phase runs as many HAProxy processes as ACTIVE needs at 90% of that
# maxconn each (the kernel's SO_REUSEPORT hash spreads connections within a
# few per cent), unless HAPROXY_PROCS says otherwise.
HAPROXY_MAXCONN=$(( (FD_LIMIT - 200) / 2 ))
HAPROXY_PROCS=${HAPROXY_PROCS:-$(( (ACTIVE * 10 + HAPROXY_MAXCONN * 9 - 1) / (HAPROXY_MAXCONN * 9) ))}
want=$FD_LIMIT
PER_PROC=$(( FD_LIMIT * 3 / 4 ))  # connections per target process, on average
HOLD_PER=$(( FD_LIMIT - 1000 ))   # connections per hold.py process, at most
# Connections per source address. An address has about 28,000 ephemeral
# ports toward one destination, but connect() searches the ports of one
# parity first: past about 14,000 on one address each connect scans that
# half in vain: 19,000 took 7.3 s on one address against 0.63 s on two,
# and 13,000 0.45 s on one (RESULTS §36), which the accept rate would show
# as the gateway's.
PER_SOURCE=14000
MAX_PROCS=64
# procs_for N: how many processes per target N connections need.
procs_for() {
    if (( $1 + 500 <= FD_LIMIT )); then echo 1; else echo $(( ($1 + PER_PROC - 1) / PER_PROC )); fi
}
if [[ $SKIP_BUILD != 1 ]]; then
    (cd "$REPO_DIR" && cargo build --release -q)
fi

nginx_conf() { # DIR PORT BODY [WORKERS] [MULTI_ACCEPT]
    local workers=${4:-1} multi_accept=${5:-off} nofile=$((want * 2))
    # Several workers each hold their share under the per-process limit.
    (( workers > 1 )) && nofile=$FD_LIMIT
    cat <<CONF
worker_processes $workers;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile $nofile;
events { worker_connections $nofile; multi_accept $multi_accept; }
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
        1 "$UP_MULTI_ACCEPT" >"$dir/nginx.conf"
    taskset -c 1 nginx -p "$dir" -c "$dir/nginx.conf" 2>"$dir/stderr" &
    PIDS+=($!)
}

# start_target NAME [P]: starts P processes of the target (nginx: P workers)
# and sets TPIDS (the processes whose trees' RSS is measured).
start_target() {
    local dir=$WORK_DIR/$1 procs=${2:-1} i
    rm -rf "$dir"
    mkdir -p "$dir"
    TPIDS=()
    case $1 in
        shardgate|shardgate-base)
            local bin=$SHARDGATE_BIN
            [[ $1 == shardgate-base ]] && bin=${BASE_BIN:?shardgate-base needs BASE_BIN}
            # per-shard: one process, a shard (and a descriptor table) per
            # would-be process, all pinned to core 0 by the affinity below.
            local shards=1 gateways=$procs tables=Shared
            if one_process "$1" "$procs"; then shards=$procs gateways=1 tables=PerShard; fi
            cat >"$dir/gateway.ron" <<RON
Gateway(
    shards: Count($shards),
    descriptor_tables: $tables,
    listeners: [ Listener(name: "scale", bind: "127.0.0.1:$PORT") ],
    limits_http: HttpLimits(idle_timeout_ms: 600000),
    upstreams: { "up": Upstream(targets: ["127.0.0.1:$UP_PORT"], max_idle_per_target: 256,
        max_connections_per_target: 256, max_queued_per_target: 20000, queue_timeout_ms: 10000) },
    routes: [ Route(name: "all", match: Match(path_prefix: "/"), upstream: "up") ],
)
RON
            # Same config, same port: each process's listener joins one
            # SO_REUSEPORT group.
            for ((i = 0; i < gateways; i++)); do
                taskset -c 0 "$bin" --config "$dir/gateway.ron" >"$dir/stdout.$i" 2>"$dir/stderr.$i" &
                TPIDS+=("$!")
            done
            ;;
        nginx)
            local listen="listen 127.0.0.1:$PORT backlog=65535;"
            (( procs > 1 )) && listen="listen 127.0.0.1:$PORT reuseport backlog=65535;"
            nginx_conf "$dir" "$PORT" "    upstream up { server 127.0.0.1:$UP_PORT; keepalive 256; }
    server { $listen
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" \
                "$procs" >"$dir/nginx.conf"
            taskset -c 0 nginx -p "$dir" -c "$dir/nginx.conf" 2>"$dir/stderr.0" &
            TPIDS+=("$!")
            ;;
        haproxy)
            # HAProxy needs two descriptors per proxied connection, so its
            # maxconn is half the open-file limit here. P processes (the
            # active phase only, see HAPROXY_PROCS) share the port through
            # SO_REUSEPORT, which HAProxy sets on its listeners, and the
            # 256 upstream connections between them.
            cat >"$dir/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn $HAPROXY_MAXCONN
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
    server s1 127.0.0.1:$UP_PORT maxconn $(( 256 / procs ))
CFG
            for ((i = 0; i < procs; i++)); do
                taskset -c 0 haproxy -db -f "$dir/haproxy.cfg" >"$dir/stdout.$i" 2>"$dir/stderr.$i" &
                TPIDS+=("$!")
            done
            ;;
        *) die "unknown target $1" ;;
    esac
    PIDS+=("${TPIDS[@]}")
    # Up when it answers and all P listening sockets are bound (nginx: the
    # master binds one per worker with reuseport).
    local p up
    for _ in $(seq 100); do
        up=1
        for p in "${TPIDS[@]}"; do alive "$p" || up=0; done
        (( up )) || break
        if (( $(ss -Hltn "( sport = :$PORT )" | wc -l) == procs )) &&
            curl -fs -o /dev/null "http://127.0.0.1:$PORT/api/v1/items"; then
            return 0
        fi
        sleep 0.1
    done
    cat "$dir"/stderr.* >&2
    die "$1 did not start ($procs processes)"
}

stop_target() {
    local p
    for p in "${TPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    reap 30 "${TPIDS[@]}"
    for p in "${TPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
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
# targets_rss: RSS in kB summed over all the target's processes' trees.
targets_rss() {
    local total=0 p
    for p in "${TPIDS[@]}"; do total=$(( total + $(tree_rss "$p") )); done
    echo "$total"
}

# holders_for N: how many hold.py processes N connections need.
holders_for() { echo $(( ($1 + HOLD_PER - 1) / HOLD_PER )); }

# hold N: opens N connections with one request each, split over H hold.py
# processes on distinct source addresses; leaves their common stdin on fd 7
# and prints one READY line: held, failed and non2xx summed, connect_s and
# request_s the longest.
hold() {
    local n=$1 h j each sources base=1 f left window=0
    h=$(holders_for "$n")
    # One holder sends all its requests at once, as before. Several keep at
    # most PER_PROC in flight together: the upstream is one process with the
    # same descriptor limit, and nginx opens an upstream connection per
    # request in flight (from 127.0.0.1 to one address, so ~28,000 ports);
    # 100,000 at once failed 21% to 31% of nginx's requests with
    # EADDRNOTAVAIL, EMFILE at the upstream and upstream timeouts.
    (( h > 1 )) && window=$(( (PER_PROC + h - 1) / h ))
    rm -f "$WORK_DIR"/hold.*.out "$WORK_DIR"/hold.*.pid
    # The holders are background jobs of the substitution's shell, whose
    # stdin (the pipe) a background job would not get without `<&3`.
    exec 7> >(
        exec 3<&0
        for ((j = 0; j < h; j++)); do
            each=$(( n / h + (j < n % h ? 1 : 0) ))
            sources=$(( (each + PER_SOURCE - 1) / PER_SOURCE ))
            timeout 900 python3 "$SCRIPT_DIR/conn-scale/hold.py" "$PORT" "$each" --request \
                --sources "$sources" --source-base "$base" --window "$window" \
                <&3 >"$WORK_DIR/hold.$j.out" 2>&1 3<&- &
            echo "$!" >"$WORK_DIR/hold.$j.pid"
            base=$(( base + sources ))
        done
        exec 3<&-
        wait
    )
    # hold.py gives up connecting after 300 s and on answers after 120 s more.
    local deadline=$(( SECONDS + 480 ))
    while (( SECONDS < deadline )); do
        left=0
        for ((j = 0; j < h; j++)); do
            f=$WORK_DIR/hold.$j.out
            grep -q '^READY' "$f" 2>/dev/null && continue
            left=1
            # A holder that ended without READY: stop waiting.
            if [[ -s $WORK_DIR/hold.$j.pid ]] && ! alive "$(<"$WORK_DIR/hold.$j.pid")"; then
                cat "$f" >&2
                die "holder $j of $h exited without READY"
            fi
        done
        (( left )) || break
        sleep 0.1
    done
    for ((j = 0; j < h; j++)); do
        grep -q '^READY' "$WORK_DIR/hold.$j.out" 2>/dev/null ||
            { cat "$WORK_DIR/hold.$j.out" >&2 || true; die "holder $j of $h did not finish"; }
    done
    cat "$WORK_DIR"/hold.*.out | awk -v h="$h" '/^READY/ {
            held += $2
            for (i = 3; i <= NF; i++) {
                split($i, kv, "=")
                if (kv[1] == "failed" || kv[1] == "non2xx") sum[kv[1]] += kv[2]
                else if (kv[2] + 0 > max[kv[1]]) max[kv[1]] = kv[2] + 0
            }
        }
        END { printf "READY %d connect_s=%.3f request_s=%.3f failed=%d non2xx=%d holders=%d\n",
              held, max["connect_s"], max["request_s"], sum["failed"], sum["non2xx"], h }'
}
# release: closes the holders' stdin; they close their connections and end.
release() {
    local hp
    exec 7>&-
    hp=$(holder_pids)
    # shellcheck disable=SC2086
    [[ -z $hp ]] || reap 30 $hp
    sleep 2
}

# per_process_spread: "min–max" connections held by each of the target's
# processes (nginx: its workers) at the end, from the owners `ss -p` shows in
# $WORK_DIR/ss.est; a process holding none counts as 0.
per_process_spread() {
    awk -v procs="$1" '
        match($0, /pid=[0-9]+/) { n[substr($0, RSTART + 4, RLENGTH - 4)]++; next }
        { unowned++ }
        END {
            k = 0; min = -1; max = 0
            for (p in n) { k++; if (min < 0 || n[p] < min) min = n[p]; if (n[p] > max) max = n[p] }
            if (k < procs || min < 0) min = 0
            printf "%d–%d", min, max
            if (k > procs) printf " (%d owners)", k
            if (unowned) printf " (+%d not accepted)", unowned
        }' "$WORK_DIR/ss.est"
}

# one_process TARGET PROCS: whether the target's PROCS would-be processes
# run as one gateway process of PROCS shards (SG_TABLES=per-shard).
one_process() { [[ $1 == shardgate* && $SG_TABLES == per-shard ]] && (( $2 > 1 )); }

# per_shard_spread PID: "min–max" sockets in the descriptor tables of the
# gateway's shard threads (its connections, listener and upstream
# connections: with `descriptor_tables: PerShard` each shard has a table).
per_shard_spread() {
    local t min=-1 max=0 n
    for t in /proc/"$1"/task/*; do
        [[ $(<"$t/comm") == shardgate-shard* ]] || continue
        n=$(find "$t/fd" -lname 'socket:*' 2>/dev/null | wc -l)
        (( min < 0 || n < min )) && min=$n
        (( n > max )) && max=$n
    done
    printf '%d–%d per shard' "$(( min < 0 ? 0 : min ))" "$max"
}

start_upstream
sleep 0.5
echo "## Idle connections and accept rate ($(date -u +%F), $(nproc) cores, one core per proxy)"
echo
echo "Open-file limit (RLIMIT_NOFILE) per process: $FD_LIMIT. Counts above it less 500 run with"
echo "P = ceil(n / $PER_PROC) processes per target on one SO_REUSEPORT port, all on core 0,"
echo "and $HOLD_PER connections at most per holder process; RSS is summed over the P processes."
echo "Several holders keep at most $PER_PROC requests in flight together (one holder sends all at once)."
echo "Per connection: RSS growth over the connections open when read."
echo
echo "| target | processes | connections | held | failed | RSS before (kB) | RSS after (kB) | open when read | per process (min–max) | per connection (B) | accept rate (conn/s) | listen overflows |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in $COUNTS; do
    procs=$(procs_for "$n")
    holders=$(holders_for "$n")
    if (( procs > MAX_PROCS || holders > 200 )); then
        echo "| (all) | $procs | $n | – | – | – | – | – | – | not run: RLIMIT_NOFILE is $FD_LIMIT here, $procs processes per target and $holders holders needed |"
        continue
    fi
    for t in $TARGETS; do
        if [[ $t == haproxy ]] && (( procs > 1 )); then
            echo "| $t | $procs | $n | – | – | – | – | – | – | not run: one HAProxy process holds at most $HAPROXY_MAXCONN here (nbproc is gone; several processes only in the active phase) |"
            continue
        fi
        log "$t: $n idle connections, $procs processes, $holders holders"
        start_target "$t" "$procs"
        hold $(( 200 * procs )) >/dev/null; release
        before=$(targets_rss)
        ov0=$(listen_overflows)
        # Not `line=$(hold ...)`: a command substitution's subshell would
        # close the holder's stdin on return, and the connections with it.
        hold "$n" >"$WORK_DIR/ready.line"
        line=$(<"$WORK_DIR/ready.line")
        log "$line"
        ov=$(( $(listen_overflows) - ov0 ))
        sleep "${SETTLE:-5}"
        after=$(targets_rss)
        ss -Htnp state established "( sport = :$PORT )" >"$WORK_DIR/ss.est"
        open=$(wc -l <"$WORK_DIR/ss.est")
        if one_process "$t" "$procs"; then
            spread=$(per_shard_spread "${TPIDS[0]}")
        else
            spread=$(per_process_spread "$procs")
        fi
        held=$(awk '{print $2}' <<<"$line")
        cs=$(sed -E 's/.*connect_s=([0-9.]+).*/\1/' <<<"$line")
        failed=$(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$line")
        non2xx=$(sed -E 's/.*non2xx=([0-9]+).*/\1/' <<<"$line")
        (( non2xx == 0 )) || failed="$failed (+$non2xx non-2xx)"
        # Over the connections open when RSS was read: held, unless some
        # failed and were closed.
        per=$(( (after - before) * 1024 / (open > 0 ? open : 1) ))
        rate=$(awk -v n="$held" -v s="$cs" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
        shown=$procs
        one_process "$t" "$procs" && shown="1 ($procs shards)"
        echo "| $t | $shown | $n | $held | $failed | $before | $after | $open | $spread | $per | $rate | $ov |"
        release
        stop_target
    done
done
echo
echo "## $ACTIVE active connections: wrk -t2 -c$ACTIVE -d${DURATION}s, interleaved rounds"
echo
if (( HAPROXY_PROCS > 1 )) && [[ " $TARGETS " == *" haproxy "* ]]; then
    echo "HAProxy runs as $HAPROXY_PROCS processes on core 0 here, on one SO_REUSEPORT port with"
    echo "maxconn $HAPROXY_MAXCONN and $(( 256 / HAPROXY_PROCS )) upstream connections each: one process"
    echo "may hold only $HAPROXY_MAXCONN connections under this open-file limit ($FD_LIMIT)."
    echo
fi
echo "| round | target | req/s | p50 | p99 | errors (non-2xx, timeouts) | listen overflows |"
echo "|---:|---|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
        p=1
        [[ $t == haproxy ]] && p=$HAPROXY_PROCS
        start_target "$t" "$p"
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
