#!/usr/bin/env bash
# Soak test: the gateway under steady load for MINUTES while its config is
# reloaded and its backends are restarted; fails on any request failure not
# explained by a backend restart, on RSS growth and on an fd leak.
#
# Usage:  scripts/soak.sh MINUTES
#         SOAK_PROFILE=debug scripts/soak.sh 1      (CI: the debug build test.sh made)
#
# What runs (all on 127.0.0.1):
#   - three backends (users, orders, products), one process each
#     (scripts/soak/src/bin/backend.rs), so that one can be killed alone;
#   - the gateway on scripts/soak/soak.ron: JWT (HS256), `Local` rate limits
#     that never refuse, a three-part composite route (one part per backend),
#     a JWT-protected proxied route and a plain proxied route;
#   - the load client (scripts/soak/src/bin/load.rs): keep-alive connections
#     cycling through composite, JWT and plain requests. It first measures
#     capacity (closed loop, SOAK_CAPACITY_SECS), then runs open loop at
#     SOAK_LOAD_PCT% of it for MINUTES, counting every status and every
#     connection error per second.
# During the run: a SIGHUP reload every SOAK_RELOAD_S (each loads a changed
# config), a backend restart every SOAK_RESTART_S (kill -9, SOAK_RESTART_PAUSE_S
# pause, start; the backends in turn), and the gateway's RSS, open fds and
# threads sampled every SOAK_SAMPLE_S into samples.csv.
#
# Pass criteria (exit 1 with the reason otherwise):
#   1. Every request gets 200, except 502/503s and connection errors whose
#      time span meets the restart window of a backend that the request's
#      route calls; those are counted and shown, per restart in restarts.csv.
#      The window runs from the kill to the moment the script sees the backend
#      listening again (plus SOAK_GRACE_MS, 0 by default): a request sent
#      after that must succeed, so a stale pooled connection that fails it
#      is a failure.
#   2. RSS at the end <= RSS at the reference point + SOAK_RSS_PCT%. The
#      reference is the sample after the first minute, or for runs shorter
#      than 3 minutes the sample at a third of the run.
#   3. Open fds at the end <= the highest count sampled up to the reference
#      point + SOAK_FD_SLACK (the count follows the pooled upstream connections,
#      which follow the load's concurrency; a leak grows past it).
#   4. The gateway is alive at the end, logged no panic and no failed reload,
#      applied every reload sent, and every restarted backend came back.
#
# Knobs (environment):
#   SOAK_PROFILE=release   gateway build: release (`cargo build --release`) or debug (`cargo build`)
#   SKIP_BUILD=0           1 = don't build the gateway (the small load-tool crate is always built)
#   SHARDGATE_BIN=         gateway binary (default: $CARGO_TARGET_DIR or target, /$SOAK_PROFILE/shardgate)
#   SOAK_PORT_BASE=18480   gateway port; backends on +1 (users), +2 (orders), +3 (products)
#   SOAK_CONNS=32          load connections
#   SOAK_CAPACITY_SECS=10  length of the closed-loop capacity measurement
#   SOAK_LOAD_PCT=80       open-loop rate as a percentage of the measured capacity
#   SOAK_RELOAD_S=2  SOAK_RESTART_S=10  SOAK_RESTART_PAUSE_S=1  SOAK_SAMPLE_S=5
#   SOAK_GRACE_MS=0        restart window extension after a restarted backend listens again
#   SOAK_RSS_PCT=10  SOAK_FD_SLACK=16
#   SOAK_DIR=              where logs and CSVs go (default: <target dir>/soak)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_DIR"

die() { echo "soak: $*" >&2; exit 1; }

MINUTES="${1:-}"
[[ "$MINUTES" =~ ^[0-9]+$ ]] && (( MINUTES >= 1 )) || die "usage: scripts/soak.sh MINUTES (a whole number >= 1)"

PROFILE="${SOAK_PROFILE:-release}"
SKIP_BUILD="${SKIP_BUILD:-0}"
PORT_BASE="${SOAK_PORT_BASE:-18480}"
CONNS="${SOAK_CONNS:-32}"
CAPACITY_SECS="${SOAK_CAPACITY_SECS:-10}"
LOAD_PCT="${SOAK_LOAD_PCT:-80}"
RELOAD_MS=$(( ${SOAK_RELOAD_S:-2} * 1000 ))
RESTART_MS=$(( ${SOAK_RESTART_S:-10} * 1000 ))
PAUSE_S="${SOAK_RESTART_PAUSE_S:-1}"
SAMPLE_MS=$(( ${SOAK_SAMPLE_S:-5} * 1000 ))
GRACE_MS="${SOAK_GRACE_MS:-0}"
RSS_PCT="${SOAK_RSS_PCT:-10}"
FD_SLACK="${SOAK_FD_SLACK:-16}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$REPO_DIR/$TARGET_DIR"
DIR="${SOAK_DIR:-$TARGET_DIR/soak}"
RUN_S=$(( MINUTES * 60 ))

case "$PROFILE" in
    release) build_flags=(--release) ;;
    debug) build_flags=() ;;
    *) die "SOAK_PROFILE must be release or debug, not '$PROFILE'" ;;
esac
BIN="${SHARDGATE_BIN:-$TARGET_DIR/$PROFILE/shardgate}"

NAMES=(users orders products)
GW_PORT=$PORT_BASE

if [[ -n "${EPOCHREALTIME:-}" ]]; then   # bash 5: no fork
    now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $(( t / 1000 )); }
else
    now_ms() { date +%s%3N; }
fi
sleep_until() {
    local d=$(( $1 - $(now_ms) ))
    if (( d > 0 )); then sleep "$(printf '%d.%03d' $(( d / 1000 )) $(( d % 1000 )))"; fi
}

# ---------------------------------------------------------------- build
if [[ "$SKIP_BUILD" != 1 ]]; then
    echo "== cargo build ${build_flags[*]} (gateway)" >&2
    cargo build "${build_flags[@]}" --bin shardgate >&2
fi
[[ -x "$BIN" ]] || die "no gateway binary at $BIN (build it, or set SHARDGATE_BIN)"
echo "== building the load tools (scripts/soak)" >&2
cargo build --release --locked --quiet --manifest-path scripts/soak/Cargo.toml \
    --target-dir "$TARGET_DIR/soak-tools" >&2
LOAD="$TARGET_DIR/soak-tools/release/soak-load"
BACKEND="$TARGET_DIR/soak-tools/release/soak-backend"

mkdir -p "$DIR/capacity"
rm -f "$DIR"/capacity/* "$DIR"/*.csv "$DIR"/*.log "$DIR"/*.ron "$DIR"/*.pid "$DIR"/*.count \
      "$DIR"/summary.env "$DIR"/load.out "$DIR"/restart-failed "$DIR"/gateway-died

# ---------------------------------------------------------------- config
# Two copies that differ in one value, swapped on every reload.
SECRET="$(sed -n 's/.*key: Secret("\([^"]*\)").*/\1/p' scripts/soak/soak.ron)"
ISSUER="$(sed -n 's/.*issuer: "\([^"]*\)".*/\1/p' scripts/soak/soak.ron)"
[[ -n "$SECRET" && -n "$ISSUER" ]] || die "cannot read the JWT secret and issuer from scripts/soak/soak.ron"
sed -e "s/127\.0\.0\.1:18480/127.0.0.1:$GW_PORT/" \
    -e "s/127\.0\.0\.1:18481/127.0.0.1:$(( PORT_BASE + 1 ))/" \
    -e "s/127\.0\.0\.1:18482/127.0.0.1:$(( PORT_BASE + 2 ))/" \
    -e "s/127\.0\.0\.1:18483/127.0.0.1:$(( PORT_BASE + 3 ))/" \
    scripts/soak/soak.ron > "$DIR/soak-a.ron"
sed -e '/"users":/s/timeout_ms: 5000/timeout_ms: 5001/' "$DIR/soak-a.ron" > "$DIR/soak-b.ron"
cmp -s "$DIR/soak-a.ron" "$DIR/soak-b.ron" && die "the reload variant of the config does not differ (scripts/soak/soak.ron changed?)"
for f in scripts/soak/soak.ron "$DIR/soak-a.ron" "$DIR/soak-b.ron"; do
    "$BIN" check "$f" >/dev/null || die "config $f does not pass 'shardgate check'"
done
cp "$DIR/soak-a.ron" "$DIR/soak.ron"

# ---------------------------------------------------------------- processes
GW_PID=""
LOAD_PID=""
LOOP_PIDS=()
cleanup() {
    local p
    for p in "${LOOP_PIDS[@]}" $LOAD_PID; do kill "$p" 2>/dev/null || true; done
    if [[ -n "$GW_PID" ]] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$GW_PID" 2>/dev/null || true
    fi
    for name in "${NAMES[@]}"; do
        [[ -f "$DIR/$name.pid" ]] && kill -KILL "$(cat "$DIR/$name.pid")" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_backend NAME: starts it and waits until it listens (it writes its pid then).
start_backend() {
    local name=$1 i port
    for i in "${!NAMES[@]}"; do [[ "${NAMES[$i]}" == "$name" ]] && port=$(( PORT_BASE + 1 + i )); done
    rm -f "$DIR/$name.pid"
    "$BACKEND" --port "$port" --name "$name" --pidfile "$DIR/$name.pid" --parent $$ \
        --max-secs $(( RUN_S + CAPACITY_SECS + 600 )) >>"$DIR/backend-$name.log" 2>&1 &
    disown "$!"   # killed on purpose: no job notice; `cleanup` kills it by its pid file
    for i in $(seq 100); do
        [[ -s "$DIR/$name.pid" ]] && return 0
        sleep 0.05
    done
    echo "soak: backend $name did not start on port $port (see $DIR/backend-$name.log)" >&2
    return 1
}

for name in "${NAMES[@]}"; do start_backend "$name" || exit 1; done
"$BIN" --config "$DIR/soak.ron" >"$DIR/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 200); do
    grep -q '^shardgate: ready' "$DIR/gateway.log" && break
    kill -0 "$GW_PID" 2>/dev/null || break
    sleep 0.05
done
grep -q '^shardgate: ready' "$DIR/gateway.log" || { cat "$DIR/gateway.log" >&2; die "the gateway did not start"; }

load_args=(--addr "127.0.0.1:$GW_PORT" --conns "$CONNS" --secret "$SECRET" --issuer "$ISSUER" --parent $$)

# ---------------------------------------------------------------- capacity
echo "== measuring capacity: closed loop, $CONNS connections, ${CAPACITY_SECS} s" >&2
"$LOAD" "${load_args[@]}" --secs "$CAPACITY_SECS" --out "$DIR/capacity" >"$DIR/capacity/load.out" 2>&1 \
    || { cat "$DIR/capacity/load.out" >&2; die "the capacity run failed: requests failed with nothing restarted"; }
sed 's/^/   /' "$DIR/capacity/load.out" | grep -v capacity_rps= >&2
CAPACITY="$(sed -n 's/^capacity_rps=//p' "$DIR/capacity/load.out")"
RATE="$(awk -v c="$CAPACITY" -v p="$LOAD_PCT" 'BEGIN { printf "%.0f", c * p / 100 }')"
(( RATE >= 1 )) || die "measured capacity too low: '$CAPACITY' req/s"

# ---------------------------------------------------------------- the run
sampler() {
    local t0=$1 end=$2 k=0 t last=0 rss fds threads
    echo "elapsed_s,rss_kb,fds,threads" >"$DIR/samples.csv"
    while (( ! last )); do
        t=$(( t0 + k * SAMPLE_MS ))
        if (( t >= end )); then t=$end; last=1; fi
        sleep_until "$t"
        kill -0 "$GW_PID" 2>/dev/null || { echo "gateway gone" >"$DIR/gateway-died"; return; }
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$GW_PID/status")
        threads=$(awk '/^Threads:/ { print $2 }' "/proc/$GW_PID/status")
        fds=$(ls "/proc/$GW_PID/fd" | wc -l)
        # The time taken, not the time planned: a starved loop shows as such.
        t=$(now_ms)
        echo "$(( (t - t0) / 1000 )),$rss,$fds,$threads" >>"$DIR/samples.csv"
        k=$(( k + 1 ))
    done
}

reloader() {
    local end=$1 n=0 next
    next=$(( $(now_ms) + RELOAD_MS ))
    while (( next < end )); do
        sleep_until "$next"
        if (( n % 2 == 0 )); then cp "$DIR/soak-b.ron" "$DIR/soak.ron.tmp"; else cp "$DIR/soak-a.ron" "$DIR/soak.ron.tmp"; fi
        mv "$DIR/soak.ron.tmp" "$DIR/soak.ron"
        echo "$(now_ms) reload" >>"$DIR/reloads.log"
        kill -HUP "$GW_PID" 2>/dev/null || return 0
        n=$(( n + 1 ))
        echo "$n" >"$DIR/reloads.count"
        # One reload at a time: a SIGHUP sent while another is still pending
        # merges with it (signals do not queue), so the next is sent once this
        # one is applied (or failed), or after 10 s; and a loop held up by a
        # starved machine skips the slots it missed instead of sending them
        # back to back.
        wait_reloads "$n" 10000
        next=$(( next + RELOAD_MS ))
        while (( next < $(now_ms) )); do next=$(( next + RELOAD_MS )); done
    done
}

# wait_reloads N MS: until the gateway has logged N reloads (applied, failed
# or refused), at most MS milliseconds.
wait_reloads() {
    local until=$(( $(now_ms) + $2 ))
    while (( $(grep -c '^shardgate: reloaded\|reload of .* failed\|reload of .* refused' "$DIR/gateway.log" || true) < $1 )); do
        (( $(now_ms) < until )) || return 0
        sleep 0.05
    done
}

restarter() {
    local t0=$1 end=$2 n=0 next name pid
    # Half a sample period before the sampler's ticks, so that no RSS/fd
    # sample is taken while a backend is down (its pooled connections gone).
    next=$(( t0 + RESTART_MS - SAMPLE_MS / 2 ))
    # No restart so late that its window would reach past the end.
    while (( next + PAUSE_S * 1000 + GRACE_MS + 1000 < end )); do
        sleep_until "$next"
        name=${NAMES[$(( n % ${#NAMES[@]} ))]}
        pid=$(cat "$DIR/$name.pid")
        echo "$(now_ms) kill $name" >>"$DIR/events.log"
        kill -KILL "$pid" 2>/dev/null || true
        sleep "$PAUSE_S"
        if ! start_backend "$name"; then
            echo "$name" >"$DIR/restart-failed"
            return 0
        fi
        echo "$(now_ms) up $name" >>"$DIR/events.log"
        n=$(( n + 1 ))
        echo "$n" >"$DIR/restarts.count"
        next=$(( next + RESTART_MS ))
    done
}

echo "== soak: ${MINUTES} min open loop at $RATE req/s (${LOAD_PCT}% of $CAPACITY), reload every $(( RELOAD_MS / 1000 )) s, backend restart every $(( RESTART_MS / 1000 )) s; logs in $DIR" >&2
: >"$DIR/events.log"
T0=$(( $(now_ms) + 100 ))   # the load client starts sending 100 ms after it starts
END=$(( T0 + RUN_S * 1000 ))
"$LOAD" "${load_args[@]}" --secs "$RUN_S" --rate "$RATE" --out "$DIR" \
    --events "$DIR/events.log" --grace-ms "$GRACE_MS" >"$DIR/load.out" 2>&1 &
LOAD_PID=$!
sampler "$T0" "$END" & LOOP_PIDS+=($!)
reloader "$END" & LOOP_PIDS+=($!)
restarter "$T0" "$END" & LOOP_PIDS+=($!)

load_rc=0
wait "$LOAD_PID" || load_rc=$?
LOAD_PID=""
for p in "${LOOP_PIDS[@]}"; do wait "$p" || true; done
LOOP_PIDS=()

# ---------------------------------------------------------------- verdict
problems=()
gw_alive=1
kill -0 "$GW_PID" 2>/dev/null || gw_alive=0

cat "$DIR/load.out"
[[ -f "$DIR/summary.env" ]] || die "the load client wrote no summary (exit $load_rc); see $DIR/load.out"
# What the load client's summary.env sets (scripts/soak/src/bin/load.rs).
requests=0 seconds=0 rps=0 window_failures=0 other_failures=0 outcomes="" window_outcomes="" p99_ms=0 max_lag_ms=0
# shellcheck disable=SC1091
source "$DIR/summary.env"
if (( load_rc != 0 || other_failures != 0 )); then
    problems+=("$other_failures request(s) failed outside backend restart windows (see $DIR/failures.csv)")
fi

# RSS and fds: reference sample vs the last one.
if (( MINUTES >= 3 )); then ref_s=60; ref_what="after the first minute"; else
    ref_s=$(( RUN_S / 3 )); ref_what="at a third of the run (${ref_s} s; the run is shorter than 3 minutes)"; fi
# fds: the baseline is the highest count up to the reference point, since the
# count moves with the number of pooled upstream connections (a load spike
# opens more; idle ones close after the pool's idle timeout). A leak shows as
# growth beyond it.
read -r ref_t ref_rss base_fds end_t end_rss end_fds max_fds < <(awk -F, -v r="$ref_s" '
    NR > 1 { if ($1 <= r && $3 > bf) bf = $3
             if (!got && $1 >= r) { rt = $1; rr = $2; got = 1 }
             et = $1; er = $2; ef = $3; if ($3 > mf) mf = $3 }
    END { if (got) print rt, rr, bf, et, er, ef, mf; else print "- - - - - - -" }' "$DIR/samples.csv")
if [[ "$ref_rss" == - ]]; then
    problems+=("no RSS/fd sample at the reference point (gateway gone?)")
else
    if (( end_rss * 100 > ref_rss * (100 + RSS_PCT) )); then
        problems+=("RSS grew from $ref_rss kB ($ref_what) to $end_rss kB at the end: more than ${RSS_PCT}%")
    fi
    if (( end_fds > base_fds + FD_SLACK )); then
        problems+=("open fds grew from at most $base_fds (up to the reference point) to $end_fds at the end: more than $FD_SLACK")
    fi
fi

reloads=$(cat "$DIR/reloads.count" 2>/dev/null || echo 0)
restarts=$(cat "$DIR/restarts.count" 2>/dev/null || echo 0)
wait_reloads "$reloads" 10000   # the last SIGHUP may still be being applied
applied=$(grep -c '^shardgate: reloaded' "$DIR/gateway.log" || true)
failed_reloads=$(grep -c 'reload of .* failed\|reload of .* refused' "$DIR/gateway.log" || true)
panics=$(grep -ci 'panic' "$DIR/gateway.log" || true)
(( gw_alive )) || problems+=("the gateway died during the run (see $DIR/gateway.log)")
[[ -f "$DIR/restart-failed" ]] && problems+=("backend $(cat "$DIR/restart-failed") did not come back after a restart")
(( failed_reloads == 0 )) || problems+=("$failed_reloads reload(s) failed or were refused (see $DIR/gateway.log)")
(( applied == reloads )) || problems+=("$reloads reload(s) sent, $applied applied")
(( panics == 0 )) || problems+=("the gateway logged $panics panic line(s) (see $DIR/gateway.log)")
(( reloads > 0 && restarts > 0 )) || problems+=("no reload or no restart happened ($reloads reloads, $restarts restarts)")
notes=()
if (( ${max_lag_ms%.*} > 1000 )); then
    notes+=("the load client fell behind its schedule by up to ${max_lag_ms} ms: the machine did not keep up with $RATE req/s (other load on it?), so latency figures are not the gateway's")
fi
longest_gap=$(awk 'NR > 1 && $1 - p > g { g = $1 - p } { p = $1 } END { print g + 0 }' "$DIR/reloads.log" 2>/dev/null || echo 0)
if (( longest_gap > 3 * RELOAD_MS )); then
    notes+=("the reload loop was held up for up to $longest_gap ms between two reloads (the machine was starved of CPU); the slots it missed were skipped")
fi

cat <<EOF

== soak summary ($MINUTES min, $PROFILE gateway, $(nproc) CPUs)
capacity (closed loop, $CONNS conns, ${CAPACITY_SECS} s): $CAPACITY req/s; soak rate: $RATE req/s (${LOAD_PCT}%)
requests:          $requests in ${seconds} s = $rps req/s; outcomes: $outcomes
restart-window failures (tolerated): $window_failures ($window_outcomes)
other failures:    $other_failures
latency p99 (from schedule): ${p99_ms} ms; the load client fell behind its schedule by up to ${max_lag_ms} ms
RSS:               $ref_rss kB $ref_what (t=${ref_t} s) -> $end_rss kB at the end (t=${end_t} s)
open fds:          at most $base_fds up to the reference point -> $end_fds at the end (max $max_fds)
reloads:           $reloads sent, $applied applied; backend restarts: $restarts
files:             $DIR/ samples.csv (RSS, fds, threads), per-second.csv (outcomes),
                   restarts.csv (failures per restart), failures.csv (other failures), gateway.log
EOF

if (( ${#notes[@]} > 0 )); then
    echo
    printf 'note: %s\n' "${notes[@]}"
fi
if (( ${#problems[@]} > 0 )); then
    echo
    echo "SOAK FAILED:"
    printf '  - %s\n' "${problems[@]}"
    exit 1
fi
echo
echo "SOAK PASSED"
