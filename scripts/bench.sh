#!/usr/bin/env bash
# Load comparison on loopback: the same tiny nginx upstream reached directly,
# through nginx, through HAProxy and through shardgate (io_uring and epoll).
#
# Usage:  scripts/bench.sh                  (Markdown report on stdout, progress on stderr;
#                                            each round's progress line ends with the
#                                            VM's steal time during it and the
#                                            connections the upstream accepted in it)
#         SCENARIO=jwt scripts/bench.sh     (every request carries an HS256 bearer token)
#         SCENARIO=aggregate scripts/bench.sh  (a three-part composite vs one proxied call)
#         SCENARIO=cache scripts/bench.sh  (cache hits: shardgate vs nginx proxy_cache)
#         scripts/bench.sh reload           (same as SCENARIO=reload: a large config, SIGHUP under load)
#
# Scenarios:
#   proxy   GET /api/v1/items, plain reverse proxying
#   jwt     the same GET with `Authorization: Bearer <HS256 JWT>` on every
#           request to every target. Targets: direct (token ignored),
#           shardgate-noauth / haproxy-noauth (public route, token forwarded
#           unchecked), shardgate (route with auth: Required(["jwt"])),
#           haproxy (alg, signature, iss and exp checked with jwt_* converters).
#           Before measuring, shardgate and haproxy must answer 401 to a missing,
#           badly signed, wrong-issuer, expired and alg=none token and 200 to
#           the valid one; a target failing that is skipped.
#   ratelimit  the same GET through a per-client-address limit high enough
#           never to refuse: shardgate (Local token bucket) vs nginx limit_req
#           (nginx-limited) vs an HAProxy stick table (haproxy), each next to
#           itself without the limit (nginx, shardgate-unlimited, haproxy-unlimited).
#   aggregate  GET /api/v1/items answered by a composite route of three parts
#           (three GETs to the upstream nginx, run concurrently, results placed
#           under keys) vs the same GET proxied once. Targets: direct (one call
#           to the upstream: the three direct calls cost 3x its upstream CPU),
#           shardgate (one proxied call), shardgate-agg (the composite).
#           Key ratio: shardgate-agg/shardgate proxy CPU-µs per request, the
#           gateway's own work per composite against a single proxied request
#           (backend CPU is measured separately); target < 3.
#           AGG_VARIANTS picks the composites measured (default "fanout"):
#             fanout  shardgate-agg, the three-part composite above;
#             each    shardgate-each: an order of AGG_ITEMS items, then a
#                     for_each part, one call per item (AGG_ITEMS + 1 calls);
#             batch   shardgate-batch: the same order, then one batch call
#                     joined back by key (2 calls). Key ratio target <= 3.
#   observe  plain proxying with metrics on (shardgate-metrics), with metrics
#           and a JSON access log to a file (shardgate-log), against shardgate
#           with neither and nginx without / with its (buffered) access log.
#           Key ratios: shardgate-metrics/shardgate <= 1.03 (metrics cost at
#           most 3% CPU per request), shardgate-log/nginx-log.
#   resilience  two targets, the second answering 500 to half of its
#           requests: shardgate plain vs with outlier ejection, retries and a
#           breaker; nginx plain vs proxy_next_upstream + max_fails. The
#           errors column is what the client saw.
#   reload  GET of the middle route of a config of ROUTES template routes and a
#           catch-all (scripts/gen-routes.py). Targets: shardgate-routes (that
#           config, left alone) and shardgate-reload (the same config, and
#           SIGHUP every RELOAD_EVERY seconds while wrk runs: each reload reads,
#           validates and compiles the whole file and swaps it into the shards).
#           Key ratios, per round then the median: req/s and p99 of
#           shardgate-reload ÷ shardgate-routes; targets >= 0.95 and <= 1.20.
#           shardgate-base-routes / shardgate-base-reload: the same with BASE_BIN.
#           The gateway's log lines "reloaded ... in N ms" are summarised.
#   cache   the same small JSON GET answered from a response cache: shardgate
#           with `cache: Some(Cache(ttl_s: {200: 3600}))` on its route
#           (shardgate-cache) vs nginx with proxy_cache (nginx-cache, cache on
#           disk in the run's temp dir, its page cache in memory), next to
#           shardgate and nginx proxying without a cache. Every measured
#           request is a hit (both targets are checked for a HIT header
#           first). Key ratios: shardgate-cache/nginx-cache CPU per request
#           (target <= 1) and req/s.
#   tls     the proxy scenario over TLS 1.3, every proxy terminating TLS with
#           the same ECDSA P-256 certificate (made here with openssl) and
#           proxying plain HTTP to the upstream. Targets: nginx-tls,
#           haproxy-tls, shardgate-tls. TLS_MODE picks what is measured:
#             keepalive  (default) wrk over keep-alive https connections:
#                        req/s, CPU per request, p99;
#             handshake  wrk with `Connection: close`: a new connection and a
#                        full handshake per request (wrk does not resume
#                        sessions), so req/s is handshakes/s;
#             resume     `openssl s_time -reuse` (one connection at a time,
#                        each resuming the first session) instead of wrk:
#                        connections/s and proxy CPU per connection; no
#                        latency figures.
#           Key ratios: shardgate-tls/nginx-tls CPU per request (target <= 1);
#           with handshake or resume also rps:shardgate-tls/nginx-tls (>= 0.9).
#
# Knobs (environment):
#   SCENARIO=proxy      what is measured; see the scenario_* functions
#   ROUNDS=5            rounds; each round runs every target once, interleaved,
#                       each round starting one target later than the last
#   DURATION=5          seconds per wrk run
#   WARMUP=1            seconds of unrecorded load per target before round 1 (0 = none)
#   CONNS=32            wrk connections (wrk always uses -t1)
#   SG_MAX_IDLE=256     shardgate's max_idle_per_target (idle upstream connections
#                       a shard keeps per target)
#   SG_POOL_IDLE_MS=    shardgate's upstream idle_timeout_ms (empty = the default, 30 s)
#   UP_MULTI_ACCEPT=on  the upstream nginx's multi_accept: on, every pending
#                       connection accepted per event-loop turn; off (nginx's
#                       default, and this script's before bench/RESULTS.md §45),
#                       one per turn, which under load delays the first request
#                       of connections a proxy opens (p99 spikes at 1,000
#                       connections, §45)
#   WORKERS=1           nginx worker_processes / HAProxy nbthread / shardgate Count(N)
#   TARGETS=            default per scenario:
#                         proxy: "direct nginx haproxy haproxy-tcp shardgate shardgate-epoll";
#                                also available: monoio-relay / monoio-http, the floors of
#                                a proxy on the gateway's runtime (bench/floor_proxy.rs);
#                                uring-http / -early / -fixed / -pollfirst / -multishot /
#                                -all, the HTTP floor on a raw io_uring ring with one ring
#                                feature at a time (bench/floor_uring.rs)
#                         jwt:   "direct shardgate-noauth shardgate haproxy-noauth haproxy"
#                         ratelimit: "direct nginx nginx-limited haproxy-unlimited haproxy
#                                     shardgate-unlimited shardgate"; also available:
#                                     shardgate-redis1 / shardgate-redis100 (the limit in a
#                                     redis-server started by the script, lease 1 / 100)
#                         aggregate: "direct shardgate" + shardgate-agg / -each / -batch
#                                    as AGG_VARIANTS says
#   AGG_VARIANTS=fanout aggregate: any of "fanout each batch"
#   AGG_ITEMS=10        aggregate: items of the each/batch order (1..100)
#                         reload: "shardgate-routes shardgate-reload"
#   BASELINE=           target the "÷" columns are taken to (proxy: nginx, jwt: haproxy)
#   KEY_RATIOS=         "A/B A/B<=LIMIT A/B<LIMIT ..." pairs reported in their own table as
#                       per-round A÷B of proxy CPU-µs/req (median), with a verdict
#                       if a limit is given. jwt default:
#                       "shardgate/shardgate-noauth<=1.15 shardgate/haproxy<1 haproxy/haproxy-noauth"
#                       A "rps:" or "p99:" prefix puts the verdict on req/s or p99
#                       instead, and ">=" / ">" limits are allowed (reload default:
#                       "rps:shardgate-reload/shardgate-routes>=0.95
#                        p99:shardgate-reload/shardgate-routes<=1.2")
#   ROUTES=10000        reload: template routes in the config (plus a catch-all)
#   RELOAD_EVERY=2      reload: seconds between SIGHUPs during a shardgate-reload run
#   JWT_SECRET=bench-secret-0123456789abcdef   HS256 secret (jwt; >= 16 of [A-Za-z0-9._~-])
#   SG_TOKEN_CACHE=     shardgate token_cache_entries (jwt; empty = the gateway's
#                       default; 0 = verify the signature on every request)
#   PROXY_CPUS=0        taskset CPU list for the proxy under test
#   LOAD_CPUS=1         taskset CPU list for wrk and the upstream nginx
#   SKIP_BUILD=0        1 = don't run `cargo build --release`
#   SHARDGATE_BIN=target/release/shardgate
#   BASE_BIN=, ABORT_BIN=   binaries for the shardgate-base / shardgate-abort targets
#   FLOOR_BIN=          bench/floor_proxy's binary for the monoio-* and uring-*
#                       targets (default: built with `cargo bench --no-run`)
#   RESULTS_DIR=        if set, raw runs (runs.tsv) and the report (report.md) are copied there
#
# The machine's speed drifts between seconds, so targets are interleaved in
# rounds and every ratio is taken within one round. The steadiest figure is
# "proxy/upstream CPU": proxy CPU per request divided by the upstream's CPU
# per request in the same run.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
HELPER_DIR="$SCRIPT_DIR/bench"

KNOBS=(SCENARIO ROUNDS DURATION WARMUP CONNS WORKERS TARGETS BASELINE KEY_RATIOS
       PROXY_CPUS LOAD_CPUS SKIP_BUILD SHARDGATE_BIN FLOOR_BIN BASE_BIN ABORT_BIN RESULTS_DIR JWT_SECRET SG_TOKEN_CACHE
       ROUTES RELOAD_EVERY TLS_MODE AGG_VARIANTS AGG_ITEMS)

# The command line as given (only the knobs that were set), for the report.
CMDLINE=""
for knob in "${KNOBS[@]}"; do
    if [[ -n "${!knob+x}" ]]; then
        CMDLINE+="$knob=$(printf '%q' "${!knob}") "
    fi
done
CMDLINE+="scripts/bench.sh"
for arg in "$@"; do CMDLINE+=" $(printf '%q' "$arg")"; done

# `scripts/bench.sh NAME` is SCENARIO=NAME.
if [[ -n "${1:-}" && "$1" != -* ]]; then
    SCENARIO="$1"
fi
SCENARIO="${SCENARIO:-proxy}"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
CONNS="${CONNS:-32}"
WORKERS="${WORKERS:-1}"
TARGETS="${TARGETS:-}"            # defaults set by the scenario
BASELINE="${BASELINE:-}"
KEY_RATIOS="${KEY_RATIOS-unset}"  # set but empty = no key-ratio table
PROXY_CPUS="${PROXY_CPUS:-0}"
LOAD_CPUS="${LOAD_CPUS:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
SHARDGATE_BIN="${SHARDGATE_BIN:-$REPO_DIR/target/release/shardgate}"
FLOOR_BIN="${FLOOR_BIN:-}"
RESULTS_DIR="${RESULTS_DIR:-}"
JWT_SECRET="${JWT_SECRET:-bench-secret-0123456789abcdef}"
SG_TOKEN_CACHE="${SG_TOKEN_CACHE:-}"
ROUTES="${ROUTES:-10000}"
RELOAD_EVERY="${RELOAD_EVERY:-2}"
TLS_MODE="${TLS_MODE:-keepalive}"

STARTUP_TIMEOUT=5        # seconds a target gets to answer its first request
WRK_GRACE=30             # extra seconds before a hung wrk is killed

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

for n in ROUNDS DURATION WARMUP CONNS WORKERS ROUTES RELOAD_EVERY; do
    [[ "${!n}" =~ ^[0-9]+$ ]] || { echo "bench: $n must be a number, got '${!n}'" >&2; exit 2; }
done
[[ -z "$SG_TOKEN_CACHE" || "$SG_TOKEN_CACHE" =~ ^[0-9]+$ ]] \
    || { echo "bench: SG_TOKEN_CACHE must be a number, got '$SG_TOKEN_CACHE'" >&2; exit 2; }
(( ROUNDS >= 1 && DURATION >= 1 && CONNS >= 1 && WORKERS >= 1 && RELOAD_EVERY >= 1 )) \
    || { echo "bench: ROUNDS, DURATION, CONNS, WORKERS and RELOAD_EVERY must be >= 1" >&2; exit 2; }

log() { printf '[bench] %s\n' "$*" >&2; }
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/bench/lib.sh"

# ---------------------------------------------------------------------------
# Process bookkeeping and cleanup
# ---------------------------------------------------------------------------
STARTED_PIDS=()
WORK_DIR=""

cleanup() {
    local pid i
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for ((i = 0; i < 30; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$WORK_DIR" && -d "$WORK_DIR" ]]; then
        rm -rf "$WORK_DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/shardgate-bench.XXXXXX")"
RUNS_TSV="$WORK_DIR/runs.tsv"

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------
ensure_tools() {
    local missing=() bin pkg
    for bin in wrk nginx haproxy curl python3 taskset ps; do
        if ! command -v "$bin" >/dev/null 2>&1; then
            case "$bin" in
                taskset) pkg=util-linux ;;
                ps) pkg=procps ;;
                python3) pkg=python3 ;;
                nginx) pkg=nginx-light ;;
                *) pkg="$bin" ;;
            esac
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        local sudo=()
        [[ "$(id -u)" == 0 ]] || sudo=(sudo)
        "${sudo[@]}" apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${missing[@]}" >&2
    fi
    # The distribution's services are not used; only the binaries.
    for bin in wrk nginx haproxy; do
        command -v "$bin" >/dev/null || die "$bin is required but could not be installed"
    done
}

# N free TCP ports on 127.0.0.1, one per line.

# Wait until URL answers 200, at most $2 seconds, while pid $3 is alive.
wait_http() {
    local url=$1 timeout=$2 pid=$3 deadline code
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${CURL_ARGS[@]}" "$url" || true)"
        [[ "$code" == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

# Start a command in the background, pinned with taskset; prints nothing,
# sets LAST_PID. Output goes to $1.

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# CPU accounting: utime+stime in clock ticks from /proc/PID/stat, summed over
# each given pid and its direct children (nginx master + workers). A process's
# stat line already includes all of its threads.
# ---------------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"

stat_ticks() {
    local line rest
    read -r line <"/proc/$1/stat" 2>/dev/null || { echo 0; return; }
    rest="${line##*) }"            # fields from 3 (state) on; comm may hold spaces
    # shellcheck disable=SC2086
    set -- $rest
    echo $(( ${12} + ${13} ))      # fields 14 (utime) and 15 (stime)
}

# steal_ticks: ticks the hypervisor ran something else on this VM's CPUs
# (all of them: the `cpu` line of /proc/stat, its eighth value). A round
# whose p99 jumps while its p50 does not, with steal well above the other
# rounds', was paused from outside rather than slow.
steal_ticks() {
    local -a cpu
    read -r -a cpu </proc/stat
    echo "${cpu[8]:-0}"
}

# upstream_accepts: connections the upstream nginx has accepted so far (its
# stub_status on STATUS_PORT, read over /dev/tcp; this read's own connection
# is counted in it). Targets run one at a time, so a round's difference,
# less one, is the connections its target opened to the upstream: a proxy
# that opens connections under load makes their first requests wait for
# the upstream's accept.
upstream_accepts() {
    local line n=0 fields
    exec 5<>"/dev/tcp/127.0.0.1/$STATUS_PORT" || { echo 0; return; }
    printf 'GET /status HTTP/1.0\r\n\r\n' >&5
    while IFS= read -r line <&5; do
        read -r -a fields <<<"${line%$'\r'}"
        if ((${#fields[@]} == 3)) && [[ "${fields[0]}" =~ ^[0-9]+$ ]]; then
            n=${fields[0]}
            break
        fi
    done
    exec 5<&-
    echo "$n"
}


# ---------------------------------------------------------------------------
# Scenarios. Each sets what is requested and what every target must do for it:
#   REQ_PATH        path requested by wrk
#   WRK_ARGS        extra wrk arguments (e.g. -H 'Authorization: Bearer ...')
#   CURL_ARGS       the same for the readiness probe
#   SG_EXTRA        extra top-level fields for the shardgate config (RON)
#   SG_ROUTE_EXTRA  extra fields inside the shardgate route
#   SG_ROUTE_AUTH   the route's auth field (left out by shardgate-noauth)
#   NGINX_LOCATION_EXTRA / HAPROXY_BACKEND_EXTRA  the same for nginx / HAProxy
#   HAPROXY_AUTH_RULES  frontend rules that authenticate (left out by haproxy-noauth)
#   DEFAULT_TARGETS, DEFAULT_BASELINE, DEFAULT_KEY_RATIOS  used unless the
#                   TARGETS / BASELINE / KEY_RATIOS knobs are set
#   SCENARIO_NOTES  lines for the report (Markdown list items)
# A scenario may also define check_target_NAME TARGET URL, run once after a
# target answers its first request; non-zero skips the target.
# A new scenario (ratelimit, aggregate, ...) is one more scenario_NAME.
# ---------------------------------------------------------------------------
REQ_PATH=/
WRK_ARGS=()
CURL_ARGS=()
SG_EXTRA=""
SG_ROUTE_EXTRA=""
SG_ROUTE_AUTH=""
SG_TARGETS_EXTRA=""
SG_UPSTREAM_EXTRA=""
SG_MAX_IDLE=${SG_MAX_IDLE:-256}
SG_POOL_IDLE_MS=${SG_POOL_IDLE_MS:-}
UP_MULTI_ACCEPT=${UP_MULTI_ACCEPT:-on}
NGINX_UPSTREAM_EXTRA=""
FLAKY_PORT=""
NGINX_LOCATION_EXTRA=""
NGINX_LIMIT_HTTP=""
NGINX_LIMIT_LOCATION=""
HAPROXY_BACKEND_EXTRA=""
HAPROXY_AUTH_RULES=""
DEFAULT_TARGETS="direct nginx haproxy haproxy-tcp shardgate shardgate-epoll"
DEFAULT_BASELINE=nginx
DEFAULT_KEY_RATIOS=""
SCENARIO_NOTES=()

scenario_proxy() {
    REQ_PATH=/api/v1/items
}

# The TLS scenario: one ECDSA P-256 certificate for every proxy.
TLS_CERT="" TLS_KEY="" TLS_PEM=""
scenario_tls() {
    REQ_PATH=/api/v1/items
    command -v openssl >/dev/null || die "openssl is required for SCENARIO=tls"
    TLS_CERT="$WORK_DIR/tls-cert.pem" TLS_KEY="$WORK_DIR/tls-key.pem" TLS_PEM="$WORK_DIR/tls.pem"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$TLS_KEY" -out "$TLS_CERT" 2>/dev/null || die "openssl could not make the certificate"
    cat "$TLS_CERT" "$TLS_KEY" >"$TLS_PEM"
    CURL_ARGS=(--cacert "$TLS_CERT")
    DEFAULT_TARGETS="nginx-tls haproxy-tls shardgate-tls"
    DEFAULT_BASELINE=nginx-tls
    DEFAULT_KEY_RATIOS="shardgate-tls/nginx-tls<=1 shardgate-tls/haproxy-tls"
    case "$TLS_MODE" in
        keepalive) ;;
        handshake)
            WRK_ARGS=(-H "Connection: close")
            DEFAULT_KEY_RATIOS="shardgate-tls/nginx-tls<=1 rps:shardgate-tls/nginx-tls>=0.9"
            ;;
        resume)
            # s_time instead of wrk; the same summary line is appended.
            run_wrk() {
                local url=$1 secs=$2 out=$3 hostport n real
                hostport="${url#https://}"; hostport="${hostport%%/*}"
                taskset -c "$LOAD_CPUS" timeout -k 5 $((secs + WRK_GRACE)) \
                    openssl s_time -connect "$hostport" -reuse -tls1_3 -time "$secs" \
                    -CAfile "$TLS_CERT" -www "$REQ_PATH" >"$out.raw" 2>&1 || true
                read -r n real < <(awk '/connections in .* real seconds/ {print $1, $4; exit}' "$out.raw")
                [[ -n "${n:-}" && "${real:-0}" != 0 ]] || { cat "$out.raw" >"$out"; return 1; }
                { cat "$out.raw"
                  printf 'BENCH requests=%d duration_us=%d p50_us=0 p90_us=0 p99_us=0 max_us=0 err_connect=0 err_read=0 err_write=0 err_status=0 err_timeout=0\n' \
                      "$n" "$((real * 1000000))"; } >"$out"
            }
            DEFAULT_KEY_RATIOS="shardgate-tls/nginx-tls<=1 rps:shardgate-tls/nginx-tls>=0.9"
            ;;
        *) die "unknown TLS_MODE '$TLS_MODE' (keepalive, handshake, resume)" ;;
    esac
    SCENARIO_NOTES=(
        "- TLS 1.3 only, ECDSA P-256 self-signed certificate, session tickets on in every proxy; TLS_MODE=$TLS_MODE"
        "- the upstream hop is plain HTTP/1.1 keep-alive, as in the proxy scenario"
    )
}

# await_tls_target NAME PORT DIR: the TLS target just started must answer
# 200 over https (curl trusting the bench certificate).
await_tls_target() {
    local name=$1 port=$2 dir=$3
    TARGET_PIDS=$LAST_PID
    TARGET_URL="https://127.0.0.1:$port$REQ_PATH"
    wait_http "$TARGET_URL" "$STARTUP_TIMEOUT" "$LAST_PID" || {
        log "skipping $name: no 200 on $TARGET_URL within ${STARTUP_TIMEOUT}s; its output:"
        tail -n 20 "$dir/stdout.log" "$dir/error.log" 2>/dev/null | sed 's/^/    /' >&2
        stop_pid "$LAST_PID"
        return 1
    }
}

JWT_ISSUER=bench

scenario_jwt() {
    [[ "$JWT_SECRET" =~ ^[A-Za-z0-9._~-]{16,}$ ]] \
        || die "JWT_SECRET must be at least 16 characters of [A-Za-z0-9._~-]"
    REQ_PATH=/api/v1/items
    # Valid for an hour: enough for the default 5 rounds x 5 targets x 5 s.
    TOKEN="$(mint_jwt "$JWT_SECRET" "$JWT_ISSUER" 3600)"
    WRK_ARGS=(-H "Authorization: Bearer $TOKEN")
    CURL_ARGS=(-H "Authorization: Bearer $TOKEN")
    SG_EXTRA="    authenticators: { \"jwt\": Jwt(algorithms: [HS256], key: Secret(\"$JWT_SECRET\"), issuer: \"$JWT_ISSUER\", forward_claims: { \"sub\": \"X-User-Id\" }) },"
    [[ -n "$SG_TOKEN_CACHE" ]] && SG_EXTRA+=$'\n'"    token_cache_entries: $SG_TOKEN_CACHE,"
    SG_ROUTE_AUTH=', auth: Required(["jwt"])'
    # HAProxy 2.6: jwt_verify checks only the signature (with the algorithm it
    # is given, whatever the token's header says), so alg, iss and exp are
    # checked separately; sub is forwarded like shardgate's forward_claims.
    HAPROXY_AUTH_RULES="$(cat <<EOF
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request set-var(txn.jwt_iss) var(txn.bearer),jwt_payload_query('\$.iss')
    http-request set-var(txn.jwt_exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date
    http-request deny deny_status 401 unless { var(txn.jwt_alg) -m str HS256 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify("HS256","$JWT_SECRET") -m int 1 }
    http-request deny deny_status 401 unless { var(txn.jwt_iss) -m str $JWT_ISSUER }
    http-request deny deny_status 401 unless { var(txn.jwt_exp),sub(txn.now) -m int gt 0 }
    http-request set-header X-User-Id %[var(txn.bearer),jwt_payload_query('\$.sub')]
EOF
)"
    DEFAULT_TARGETS="direct shardgate-noauth shardgate haproxy-noauth haproxy"
    DEFAULT_BASELINE=haproxy
    DEFAULT_KEY_RATIOS="shardgate/shardgate-noauth<=1.15 shardgate/haproxy<1 haproxy/haproxy-noauth"
    local cache="the gateway's default (one token: verified once, then served from the per-shard cache)"
    [[ -n "$SG_TOKEN_CACHE" ]] && cache="$SG_TOKEN_CACHE entries"
    [[ "$SG_TOKEN_CACHE" == 0 ]] && cache="0 (signature verified on every request)"
    SCENARIO_NOTES=(
        "- auth: every request to every target carries \`Authorization: Bearer <HS256 JWT>\` (${#TOKEN}-byte token, claims sub/iss/exp); \`*-noauth\` targets forward it unchecked on a public route"
        "- \`shardgate\`: \`auth: Required([\"jwt\"])\`, Jwt(HS256, issuer, exp, sub → X-User-Id); token_cache_entries: $cache"
        "- \`haproxy\`: $(haproxy -v 2>&1 | head -n1 | awk '{print "HAProxy " $3}'), http_auth_bearer + jwt_header_query (alg = HS256) + jwt_verify (signature, every request) + jwt_payload_query (iss, exp > date) + set-header X-User-Id from sub"
    )
}

# A limit high enough never to refuse, keyed by client address, on the same
# load: shardgate's Local token bucket vs nginx limit_req vs an HAProxy
# stick table; each next to itself without the limit.
scenario_ratelimit() {
    REQ_PATH=/api/v1/items
    SG_EXTRA="    rate_limits: { \"per-ip\": RateLimit(key: ClientIp, algorithm: TokenBucket(capacity: 100000000, refill_per_s: 100000000)) },"
    SG_ROUTE_AUTH=', rate_limits: ["per-ip"]'
    NGINX_LIMIT_HTTP="    limit_req_zone \$binary_remote_addr zone=perip:10m rate=100000000r/s;"
    NGINX_LIMIT_LOCATION="            limit_req zone=perip burst=100000000 nodelay;"
    HAPROXY_AUTH_RULES="$(cat <<EOF
    stick-table type ip size 100k expire 60s store http_req_rate(1s)
    http-request track-sc0 src
    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 100000000 }
EOF
)"
    DEFAULT_TARGETS="direct nginx nginx-limited haproxy-unlimited haproxy shardgate-unlimited shardgate"
    DEFAULT_BASELINE=nginx-limited
    DEFAULT_KEY_RATIOS="shardgate/shardgate-unlimited<=1.05 nginx-limited/nginx haproxy/haproxy-unlimited shardgate/nginx-limited<1 shardgate/haproxy<1"
    SCENARIO_NOTES=(
        "- limit: per client address, high enough never to refuse; each limited target is measured next to itself without the limit"
        "- \`shardgate\`: \`rate_limits: [\"per-ip\"]\`, RateLimit(key: ClientIp, TokenBucket(capacity 1e8, refill 1e8/s)), Local policy, RateLimit-* headers on"
        "- \`nginx-limited\`: limit_req_zone \$binary_remote_addr rate=1e8r/s + limit_req burst=1e8 nodelay"
        "- \`haproxy\`: stick-table type ip store http_req_rate(1s), track-sc0 src, deny 429 above 1e8"
    )
}

# Response-cache hits: shardgate's store vs nginx proxy_cache on the same
# small JSON answer; the upstream is called once per target (then hits only).
NGINX_CACHE_HTTP=""
NGINX_CACHE_LOCATION=""
scenario_cache() {
    REQ_PATH=/api/v1/items
    NGINX_CACHE_HTTP="    proxy_cache_path $WORK_DIR/nginx-cache/store levels=1:2 keys_zone=bench:10m max_size=64m inactive=1h use_temp_path=off;"
    NGINX_CACHE_LOCATION="$(cat <<'EOF'
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
EOF
)"
    DEFAULT_TARGETS="direct nginx nginx-cache shardgate shardgate-cache"
    DEFAULT_BASELINE=nginx-cache
    DEFAULT_KEY_RATIOS="shardgate-cache/nginx-cache<=1 rps:shardgate-cache/nginx-cache>=1 shardgate-cache/shardgate nginx-cache/nginx"
    SCENARIO_NOTES=(
        "- \`shardgate-cache\`: the route has \`cache: Some(Cache(ttl_s: {200: 3600}))\` (64 MiB default budget, S3-FIFO store per shard); every measured request is a HIT written from memory"
        "- \`nginx-cache\`: \`proxy_cache_path ... keys_zone=bench:10m max_size=64m\` (entries on disk in the run's temp dir, read through the page cache), \`proxy_cache_valid 200 1h\`, \`proxy_cache_lock on\`, \`add_header X-Cache-Status \$upstream_cache_status\`"
        "- before measuring, each cached target must answer \`X-Cache-Status: HIT\` on a second request"
    )
}

# The cached targets must serve hits before they are measured.
check_target_cache() {
    local t=$1 url=$2 status
    case "$t" in
        nginx-cache | shardgate-cache) ;;
        *) return 0 ;;
    esac
    curl -s -o /dev/null --max-time 2 "$url" || return 1
    status="$(curl -s -D - -o /dev/null --max-time 2 "$url" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache-status" { print $2 }')"
    [[ "$status" == HIT ]] || { log "$t: second request not a HIT (X-Cache-Status: '$status')"; return 1; }
}

scenario_aggregate() {
    REQ_PATH=/api/v1/items
    AGG_VARIANTS="${AGG_VARIANTS:-fanout}"
    AGG_ITEMS="${AGG_ITEMS:-10}"
    [[ "$AGG_ITEMS" =~ ^[0-9]+$ && "$AGG_ITEMS" -ge 1 && "$AGG_ITEMS" -le 100 ]] \
        || die "AGG_ITEMS must be 1..100"
    DEFAULT_TARGETS="direct shardgate"
    DEFAULT_BASELINE=shardgate
    DEFAULT_KEY_RATIOS=""
    SCENARIO_NOTES=()
    local v
    for v in $AGG_VARIANTS; do
        case "$v" in
            fanout)
                DEFAULT_TARGETS+=" shardgate-agg"
                DEFAULT_KEY_RATIOS+=" shardgate-agg/shardgate<3"
                SCENARIO_NOTES+=("- \`shardgate-agg\`: \`aggregate: Aggregate(parts: [profile GET /users/{id}?n=1, orders GET /orders?user=…, products GET /products])\` on \`path: \"/api/v1/{id}\"\`, all three to the upstream nginx concurrently, results under keys (a ~330-byte JSON answer)")
                ;;
            each)
                DEFAULT_TARGETS+=" shardgate-each"
                DEFAULT_KEY_RATIOS+=" shardgate-each/shardgate"
                SCENARIO_NOTES+=("- \`shardgate-each\`: an order of $AGG_ITEMS items (\`GET /enrich/order\`), then \`for_each: \"order.items\"\` with \`path: \"/enrich/products/{item.product_id}\"\`, \`max_concurrency: 8\`: $((AGG_ITEMS + 1)) upstream calls, each product placed into its item")
                ;;
            batch)
                DEFAULT_TARGETS+=" shardgate-batch"
                DEFAULT_KEY_RATIOS+=" shardgate-batch/shardgate<=3"
                SCENARIO_NOTES+=("- \`shardgate-batch\`: the same order, then \`batch: Some(Batch(path: \"/enrich/batch?ids={order.items.*.product_id|join(...)}\", key: \"id\", target: \"products\"))\`: 2 upstream calls, the $AGG_ITEMS products joined back to the items by id")
                ;;
            *) die "unknown AGG_VARIANTS entry '$v' (fanout, each, batch)" ;;
        esac
    done
    DEFAULT_KEY_RATIOS="${DEFAULT_KEY_RATIOS# }"
    SCENARIO_NOTES+=(
        "- \`shardgate\`: the same GET proxied once; the upstream CPU column of a composite is the cost of its backend calls; \`direct\` is one call made directly"
    )
    agg_enrich_bodies
}

# The each/batch variants' upstream answers: an order of AGG_ITEMS items,
# one product, and the batch answer listing every product of the order.
agg_enrich_bodies() {
    local i items="" products=""
    for ((i = 0; i < AGG_ITEMS; i++)); do
        items+="${items:+,}{\"line\":$((i + 1)),\"product_id\":\"p-$i\",\"qty\":1}"
        products+="${products:+,}{\"id\":\"p-$i\",\"name\":\"widget $i\",\"price\":$((10 + i))}"
    done
    AGG_ORDER_BODY="{\"id\":\"o-1\",\"customer\":\"c-1\",\"items\":[$items]}"
    AGG_BATCH_BODY="{\"products\":[$products]}"
    AGG_PRODUCT_BODY='{"id":"p-0","name":"widget","price":10}'
}

# What observability costs: metrics, then metrics plus an access log to a
# file, against the same gateway with neither, and nginx with and without its
# access log (the like-for-like comparison).
scenario_observe() {
    REQ_PATH=/api/v1/items
    DEFAULT_TARGETS="nginx nginx-log shardgate shardgate-metrics shardgate-log"
    DEFAULT_BASELINE=nginx
    DEFAULT_KEY_RATIOS="shardgate-metrics/shardgate<=1.03 shardgate-log/shardgate nginx-log/nginx shardgate-log/nginx-log<1"
    SCENARIO_NOTES=(
        "- \`shardgate\`: no admin listener (nothing recorded); \`shardgate-metrics\`: \`admin: Some(Admin(bind: ...))\` (per-shard counters and hdrhistograms per route and target, recorded on every request); \`shardgate-log\`: the same plus \`access_log: Some(AccessLog(path: \"<run dir>/access.log\"))\` (a JSON line per request, written by the writer thread)"
        "- \`nginx-log\`: \`access_log <run dir>/access.log combined buffer=64k flush=1s\` (nginx's buffered log, its cheapest file logging); \`nginx\`: \`access_log off\`"
    )
}

start_target_nginx-log() {
    local dir="$WORK_DIR/nginx-log"
    start_nginx "$1" nginx-log "" "$NGINX_LOCATION_EXTRA            access_log $dir/access.log combined buffer=64k flush=1s;"
}

# start_shardgate_observed PORT NAME EXTRA: shardgate with an admin listener
# on a free port, and EXTRA top-level fields.
start_shardgate_observed() {
    local port=$1 name=$2 extra=$3 saved=$SG_EXTRA rc=0 admin
    admin="$(free_ports 1)"
    SG_EXTRA="$saved
    admin: Some(Admin(bind: \"127.0.0.1:$admin\")),$extra"
    start_shardgate "$port" "$name" io_uring "$SG_ROUTE_AUTH" || rc=1
    SG_EXTRA=$saved
    return $rc
}

start_target_shardgate-metrics() { start_shardgate_observed "$1" shardgate-metrics ""; }
start_target_shardgate-log() {
    start_shardgate_observed "$1" shardgate-log "
    access_log: Some(AccessLog(path: \"$WORK_DIR/shardgate-log/access.log\")),"
}

# Two targets, one answering 500 to half of its requests: what the
# resilience settings save the client, and what they cost.
scenario_resilience() {
    REQ_PATH=/api/v1/items
    FLAKY_PORT="$(free_ports 1)"
    SG_TARGETS_EXTRA=", \"127.0.0.1:$FLAKY_PORT\""
    NGINX_UPSTREAM_EXTRA="        server 127.0.0.1:$FLAKY_PORT max_fails=5 fail_timeout=30s;"
    DEFAULT_TARGETS="nginx nginx-retry shardgate shardgate-resilient"
    DEFAULT_BASELINE=nginx
    DEFAULT_KEY_RATIOS="shardgate-resilient/shardgate shardgate-resilient/nginx-retry"
    SCENARIO_NOTES=(
        "- upstream: two targets on the upstream nginx; the second answers 500 to half of its requests (\`split_clients \$request_id\`), so about 25% of proxied requests fail without resilience"
        "- \`shardgate\`: round robin over both, nothing else; \`shardgate-resilient\`: \`outlier_detection: OutlierDetection(consecutive_5xx: 5, base_ejection_s: 30)\`, \`retry: Retry(max_attempts: 2, retry_on_statuses: [500, 502, 503, 504])\`, \`circuit_breaker: CircuitBreaker(min_requests: 20, failure_ratio: 0.5, window_s: 10, open_s: 5)\` (upstream-wide failures stay near 25%, below the ratio, so it stays closed)"
        "- \`nginx\`: nginx's default \`proxy_next_upstream error timeout\` (a 500 is passed on); \`nginx-retry\`: \`proxy_next_upstream error timeout http_500\` and \`max_fails=5 fail_timeout=30s\` (nginx's passive health check) on the second server"
        "- errors: responses that were not 2xx, as the client saw them"
    )
}

start_target_nginx-retry() {
    start_nginx "$1" nginx-retry "" "$NGINX_LOCATION_EXTRA            proxy_next_upstream error timeout http_500;"
}

start_target_shardgate-resilient() {
    local saved=$SG_UPSTREAM_EXTRA rc=0
    SG_UPSTREAM_EXTRA=", outlier_detection: Some(OutlierDetection(consecutive_5xx: 5, base_ejection_s: 30)), retry: Some(Retry(max_attempts: 2, retry_on_statuses: [500, 502, 503, 504])), circuit_breaker: Some(CircuitBreaker(min_requests: 20, failure_ratio: 0.5, window_s: 10, open_s: 5))"
    start_shardgate "$1" shardgate-resilient io_uring "$SG_ROUTE_AUTH" || rc=1
    SG_UPSTREAM_EXTRA=$saved
    return $rc
}

# A large config under load, left alone or reloaded every RELOAD_EVERY seconds.
scenario_reload() {
    REQ_PATH="/api/v1/svc-$((ROUTES / 2))/items/12345"
    # A build whose config load is quadratic (BASE_BIN) needs seconds to start.
    STARTUP_TIMEOUT=120
    DEFAULT_TARGETS="shardgate-routes shardgate-reload"
    DEFAULT_BASELINE=shardgate-routes
    DEFAULT_KEY_RATIOS="rps:shardgate-reload/shardgate-routes>=0.95 p99:shardgate-reload/shardgate-routes<=1.2"
    if [[ " $TARGETS " == *" shardgate-base-reload "* ]]; then
        DEFAULT_KEY_RATIOS+=" rps:shardgate-base-reload/shardgate-base-routes p99:shardgate-base-reload/shardgate-base-routes"
    fi
    SCENARIO_NOTES=(
        "- config: \`scripts/gen-routes.py $ROUTES\` — $ROUTES template routes (\`path: \"/api/v1/svc-i/items/{id}\"\`, methods, rewrite; 4 upstreams, all the upstream nginx) and a catch-all; wrk requests the middle route"
        "- \`*-reload\`: \`kill -HUP\` every ${RELOAD_EVERY}s while wrk runs (each reload reads, validates and compiles the whole file and swaps it into the shards); \`*-routes\`: the same config, never reloaded"
    )
}

# During a shardgate-reload run: SIGHUP every RELOAD_EVERY seconds.
reload_loop() {
    local pid=$1
    while sleep "$RELOAD_EVERY"; do
        kill -HUP "$pid" 2>/dev/null || return 0
    done
}
during_shardgate-reload()      { reload_loop "$@"; }
during_shardgate-base-reload() { reload_loop "$@"; }

# What the gateways logged about their reloads ("reloaded FILE: ... in N ms").
report_reload() {
    local t log
    for t in "${TARGET_LIST[@]}"; do
        log="$WORK_DIR/$t/stdout.log"
        [[ -f "$log" ]] || continue
        awk -v t="$t" '/shardgate: reloaded/ {
                n++
                if (match($0, /in [0-9.]+ ms/)) {
                    v = substr($0, RSTART + 3, RLENGTH - 6) + 0; s += v; k++
                    if (v > max) max = v
                }
            }
            /reload of .* failed/ { f++ }
            END {
                if (n + f == 0) exit
                printf "- `%s`: %d reload(s) done, %d failed", t, n, f
                if (k) printf "; load + validate + compile: mean %.1f ms, max %.1f ms (the gateway'"'"'s own log)", s / k, max
                printf "\n"
            }' "$log"
    done
}

# The composite route of the aggregate scenario (three parts on one upstream).
SG_AGG_ROUTE='match: Match(path: "/api/v1/{id}"), aggregate: Aggregate(parts: [
        Part(name: "profile", upstream: "up", path: "/users/{id}", query: { "n": "1" }),
        Part(name: "orders", upstream: "up", path: "/orders", query: { "user": "{id}" }),
        Part(name: "products", upstream: "up", path: "/products", target: "data"),
    ])'

# The aggregate scenario's enrichment composites: an order, then a product per
# item (one call each, or one batch call joined back by id).
SG_EACH_ROUTE='match: Match(path: "/api/v1/{id}"), aggregate: Aggregate(parts: [
        Part(name: "order", upstream: "up", path: "/enrich/order"),
        Part(name: "products", upstream: "up", path: "/enrich/products/{item.product_id}",
             for_each: "order.items", into: "product", max_concurrency: 8),
    ])'
SG_BATCH_ROUTE='match: Match(path: "/api/v1/{id}"), aggregate: Aggregate(parts: [
        Part(name: "order", upstream: "up", path: "/enrich/order"),
        Part(name: "products", upstream: "up", path: "/enrich/products/{item.product_id}",
             for_each: "order.items", into: "product",
             batch: Some(Batch(path: "/enrich/batch?ids={order.items.*.product_id|join(\",\")}",
                               key: "id", target: "products"))),
    ])'

# expect_status TARGET WHAT CODE URL [CURL ARGS...]
expect_status() {
    local target=$1 what=$2 want=$3 url=$4 got
    shift 4
    got="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true)"
    if [[ "$got" != "$want" ]]; then
        log "check $target: $what → $got, expected $want"
        return 1
    fi
}

check_target_jwt() {
    local target=$1 url=$2 ok=0 what tok
    case "$target" in
        shardgate | haproxy) ;;
        *) return 0 ;;
    esac
    expect_status "$target" "no token" 401 "$url" || ok=1
    for what in "bad signature" "wrong issuer" "expired" "alg none"; do
        case "$what" in
            "bad signature") tok="$(mint_jwt "not-the-$JWT_SECRET" "$JWT_ISSUER" 3600)" ;;
            "wrong issuer") tok="$(mint_jwt "$JWT_SECRET" "not-$JWT_ISSUER" 3600)" ;;
            expired) tok="$(mint_jwt "$JWT_SECRET" "$JWT_ISSUER" -3600)" ;;
            "alg none") tok="$(mint_jwt "$JWT_SECRET" "$JWT_ISSUER" 3600 none)" ;;
        esac
        expect_status "$target" "$what" 401 "$url" -H "Authorization: Bearer $tok" || ok=1
    done
    expect_status "$target" "valid token" 200 "$url" "${CURL_ARGS[@]}" || ok=1
    ((ok == 0)) && log "check $target: 401 for no token, bad signature, wrong issuer, expired, alg none; 200 for the valid token"
    return "$ok"
}

# ---------------------------------------------------------------------------
# Upstream: one nginx worker returning a fixed JSON body (~100 bytes).
# ---------------------------------------------------------------------------
UPSTREAM_BODY='{"ok":true,"service":"bench-upstream","data":{"id":12345,"name":"widget","tags":["a","b","c"]}}'

start_upstream() {
    local dir="$WORK_DIR/upstream"
    mkdir -p "$dir"
    {
        nginx_common "$dir" 1 "$UP_MULTI_ACCEPT"
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / {
            default_type application/json;
            return 200 '$UPSTREAM_BODY';
        }
$(agg_enrich_locations)
    }
    server {
        listen 127.0.0.1:$STATUS_PORT;
        location = /status { stub_status; }
    }
EOF
        # The resilience scenario's second target: the same answer, or a 500
        # for half of the requests (chosen by request id).
        if [[ -n "$FLAKY_PORT" ]]; then
            cat <<EOF
    split_clients "\${request_id}" \$flaky_fail { 50% 1; * 0; }
    server {
        listen 127.0.0.1:$FLAKY_PORT backlog=4096;
        location / {
            default_type application/json;
            if (\$flaky_fail) { return 500 '{"error":"flaky"}'; }
            return 200 '$UPSTREAM_BODY';
        }
    }
EOF
        fi
        echo "}"
    } >"$dir/nginx.conf"
    start_bg "$dir/stdout.log" "$LOAD_CPUS" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    UP_PID=$LAST_PID
    wait_http "http://127.0.0.1:$UP_PORT$REQ_PATH" 5 "$UP_PID" \
        || { cat "$dir/error.log" "$dir/stdout.log" >&2 2>/dev/null; die "upstream nginx did not start"; }
}

# The aggregate scenario's enrichment endpoints on the upstream nginx.
agg_enrich_locations() {
    [[ -n "${AGG_ORDER_BODY:-}" ]] || return 0
    cat <<EOF
        location = /enrich/order { default_type application/json; return 200 '$AGG_ORDER_BODY'; }
        location = /enrich/batch { default_type application/json; return 200 '$AGG_BATCH_BODY'; }
        location /enrich/products/ { default_type application/json; return 200 '$AGG_PRODUCT_BODY'; }
EOF
}

# ---------------------------------------------------------------------------
# Targets: start_target_NAME PORT starts it (or returns non-zero to skip it)
# and sets TARGET_PIDS (pids whose CPU is the proxy's; empty for direct) and
# TARGET_URL.
# ---------------------------------------------------------------------------
declare -A URL_OF=() PIDS_OF=() SKIPPED=()

start_target_direct() {
    TARGET_PIDS=""
    TARGET_URL="http://127.0.0.1:$UP_PORT$REQ_PATH"
}

# start_nginx PORT NAME HTTP_EXTRA LOCATION_EXTRA
start_nginx() {
    local port=$1 name=$2 http_extra=$3 location_extra=$4 dir="$WORK_DIR/$2"
    mkdir -p "$dir"
    {
        nginx_common "$dir" "$WORKERS"
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
$http_extra
    upstream up {
        server 127.0.0.1:$UP_PORT;
$NGINX_UPSTREAM_EXTRA
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
$location_extra
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_bg "$dir/stdout.log" "$PROXY_CPUS" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    TARGET_PIDS=$LAST_PID
    TARGET_URL="http://127.0.0.1:$port$REQ_PATH"
    wait_http "$TARGET_URL" "$STARTUP_TIMEOUT" "$LAST_PID" || {
        cat "$dir/error.log" "$dir/stdout.log" >&2 2>/dev/null
        stop_pid "$LAST_PID"
        return 1
    }
}

start_target_nginx()         { start_nginx "$1" nginx "" "$NGINX_LOCATION_EXTRA"; }
# nginx's workers (user nobody when the master runs as root) write the cache
# store: the run's directory must be traversable and the store writable.
start_target_nginx-cache() {
    mkdir -p "$WORK_DIR/nginx-cache/store"
    chmod 711 "$WORK_DIR" "$WORK_DIR/nginx-cache"
    chmod 777 "$WORK_DIR/nginx-cache/store"
    start_nginx "$1" nginx-cache "$NGINX_CACHE_HTTP" "$NGINX_LOCATION_EXTRA$NGINX_CACHE_LOCATION"
}
start_target_nginx-limited() { start_nginx "$1" nginx-limited "$NGINX_LIMIT_HTTP" "$NGINX_LOCATION_EXTRA$NGINX_LIMIT_LOCATION"; }

start_target_nginx-tls() {
    local port=$1 dir="$WORK_DIR/nginx-tls"
    mkdir -p "$dir"
    {
        nginx_common "$dir" "$WORKERS"
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    upstream up {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$port ssl backlog=4096;
        ssl_certificate $TLS_CERT;
        ssl_certificate_key $TLS_KEY;
        ssl_protocols TLSv1.3;
        ssl_session_tickets on;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_bg "$dir/stdout.log" "$PROXY_CPUS" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    await_tls_target nginx-tls "$port" "$dir"
}

start_target_haproxy-tls() {
    local port=$1 dir="$WORK_DIR/haproxy-tls"
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$port ssl crt $TLS_PEM ssl-min-ver TLSv1.3 alpn http/1.1
    default_backend be

backend be
    server s1 127.0.0.1:$UP_PORT
EOF
    start_bg "$dir/stdout.log" "$PROXY_CPUS" haproxy -db -f "$dir/haproxy.cfg"
    await_tls_target haproxy-tls "$port" "$dir"
}

start_target_shardgate-tls() {
    local port=$1 dir="$WORK_DIR/shardgate-tls"
    mkdir -p "$dir"
    [[ -x "$SHARDGATE_BIN" ]] || { log "skipping shardgate-tls: $SHARDGATE_BIN not found"; return 1; }
    cat >"$dir/gateway.ron" <<EOF
Gateway(
    shards: Count($WORKERS),
    listeners: [ Listener(name: "bench", bind: "127.0.0.1:$port",
                          tls: Some(Tls(cert: "$TLS_CERT", key: "$TLS_KEY"))) ],
    upstreams: { "up": Upstream(targets: ["127.0.0.1:$UP_PORT"], max_idle_per_target: 256) },
    routes: [ Route(name: "all", match: Match(path_prefix: "/"), upstream: "up") ],
)
EOF
    start_bg "$dir/stdout.log" "$PROXY_CPUS" env SHARDGATE_DRIVER=io_uring \
        "$SHARDGATE_BIN" --config "$dir/gateway.ron"
    await_tls_target shardgate-tls "$port" "$dir"
}

# await_target NAME PORT DIR: the target just started ($LAST_PID) must answer
# 200 within STARTUP_TIMEOUT, or it is stopped and skipped with its output shown.
await_target() {
    local name=$1 port=$2 dir=$3
    TARGET_PIDS=$LAST_PID
    TARGET_URL="http://127.0.0.1:$port$REQ_PATH"
    wait_http "$TARGET_URL" "$STARTUP_TIMEOUT" "$LAST_PID" || {
        log "skipping $name: it did not answer 200 on $TARGET_URL within ${STARTUP_TIMEOUT}s; its output:"
        tail -n 20 "$dir/stdout.log" | sed 's/^/    /' >&2
        stop_pid "$LAST_PID"
        return 1
    }
}

# start_haproxy PORT NAME AUTH_RULES
start_haproxy() {
    local port=$1 name=$2 auth_rules=$3 dir="$WORK_DIR/$2"
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$port
$auth_rules
    default_backend be

backend be
$HAPROXY_BACKEND_EXTRA
    server s1 127.0.0.1:$UP_PORT
EOF
    start_bg "$dir/stdout.log" "$PROXY_CPUS" haproxy -db -f "$dir/haproxy.cfg"
    await_target "$name" "$port" "$dir"
}

start_target_haproxy()        { start_haproxy "$1" haproxy "$HAPROXY_AUTH_RULES"; }
# The TCP relay: HAProxy in `mode tcp` does no HTTP work at all (one client
# connection, one upstream connection, bytes copied both ways), the
# practical floor for a user-space proxy on this test.
start_target_haproxy-tcp() {
    local port=$1 dir="$WORK_DIR/haproxy-tcp"
    mkdir -p "$dir"
    haproxy_tcp_config "$port" "$UP_PORT" "$WORKERS" >"$dir/haproxy.cfg"
    start_bg "$dir/stdout.log" "$PROXY_CPUS" haproxy -db -f "$dir/haproxy.cfg"
    await_target haproxy-tcp "$port" "$dir"
}
# The floors on monoio (bench/floor_proxy.rs): the same TCP relay on the
# gateway's runtime, and an HTTP proxy that does only what framing needs.
# Built with `cargo bench --no-run` unless FLOOR_BIN names the binary.
start_floor() {
    local port=$1 name=$2 mode=$3 dir="$WORK_DIR/$2"
    mkdir -p "$dir"
    if [[ -z "$FLOOR_BIN" || ! -x "$FLOOR_BIN" ]]; then
        log "skipping $name: floor_proxy not built"
        return 1
    fi
    start_bg "$dir/stdout.log" "$PROXY_CPUS" "$FLOOR_BIN" "$mode" "127.0.0.1:$port" "127.0.0.1:$UP_PORT"
    await_target "$name" "$port" "$dir"
}
start_target_monoio-relay() { start_floor "$1" monoio-relay relay; }
start_target_monoio-http()  { start_floor "$1" monoio-http http; }
start_target_monoio-duplex() { start_floor "$1" monoio-duplex duplex; }
start_target_monoio-duplex-up() { start_floor "$1" monoio-duplex-up duplex-up; }
start_target_monoio-duplex-client() { start_floor "$1" monoio-duplex-client duplex-client; }
start_target_monoio-duplex-cancel() { start_floor "$1" monoio-duplex-cancel duplex-cancel; }
# The HTTP floor on a raw io_uring ring (bench/floor_uring.rs), with the ring
# features monoio does not expose: registered files, POLL_FIRST reads, a
# multishot receive into a provided-buffer ring, reads posted early.
start_target_uring-http() { start_floor "$1" uring-http uring; }
start_target_uring-early() { start_floor "$1" uring-early uring+early; }
start_target_uring-fixed() { start_floor "$1" uring-fixed uring+early+fixed; }
start_target_uring-pollfirst() { start_floor "$1" uring-pollfirst uring+early+pollfirst; }
start_target_uring-multishot() { start_floor "$1" uring-multishot uring+multishot; }
start_target_uring-all() { start_floor "$1" uring-all uring+all; }

build_floor() {
    [[ ( " $TARGETS " == *" monoio-"* || " $TARGETS " == *" uring-"* ) && -z "$FLOOR_BIN" ]] || return 0
    log "cargo bench --bench floor_proxy --no-run"
    FLOOR_BIN="$(cd "$REPO_DIR" && cargo bench --bench floor_proxy --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "floor_proxy" and m.get("executable"):
        print(m["executable"])')" || FLOOR_BIN=""
}

start_target_haproxy-noauth() { start_haproxy "$1" haproxy-noauth ""; }
start_target_haproxy-unlimited() { start_haproxy "$1" haproxy-unlimited ""; }

# start_shardgate PORT NAME DRIVER ROUTE_AUTH [ROUTE_BODY [BINARY]]
start_shardgate() {
    local port=$1 name=$2 driver=$3 route_auth=$4 dir="$WORK_DIR/$2"
    local route_body=${5:-'match: Match(path_prefix: "/"), upstream: "up"'}
    local bin=${6:-$SHARDGATE_BIN}
    mkdir -p "$dir"
    if [[ ! -x "$bin" ]]; then
        log "skipping $name: $bin not found"
        return 1
    fi
    cat >"$dir/gateway.ron" <<EOF
Gateway(
    shards: Count($WORKERS),
    listeners: [ Listener(name: "bench", bind: "127.0.0.1:$port") ],
    upstreams: { "up": Upstream(targets: ["127.0.0.1:$UP_PORT"$SG_TARGETS_EXTRA], max_idle_per_target: $SG_MAX_IDLE${SG_POOL_IDLE_MS:+, idle_timeout_ms: $SG_POOL_IDLE_MS}$SG_UPSTREAM_EXTRA) },
    routes: [ Route(name: "all", $route_body$SG_ROUTE_EXTRA$route_auth) ],
$SG_EXTRA
)
EOF
    start_bg "$dir/stdout.log" "$PROXY_CPUS" env SHARDGATE_DRIVER="$driver" \
        "$bin" --config "$dir/gateway.ron"
    await_target "$name" "$port" "$dir"
}

start_target_shardgate()        { start_shardgate "$1" shardgate io_uring "$SG_ROUTE_AUTH"; }
start_target_shardgate-epoll()  { start_shardgate "$1" shardgate-epoll epoll "$SG_ROUTE_AUTH"; }
start_target_shardgate-cache()  { start_shardgate "$1" shardgate-cache io_uring "$SG_ROUTE_AUTH, cache: Some(Cache(ttl_s: { 200: 3600 }))"; }
# Other builds of shardgate side by side with this one (opt-in through
# TARGETS): BASE_BIN, a build of an earlier commit; ABORT_BIN, this code
# built with panic = "abort" (CARGO_PROFILE_RELEASE_PANIC=abort), to price
# the unwinding that crash isolation needs.
start_target_shardgate-base()  { start_shardgate "$1" shardgate-base io_uring "$SG_ROUTE_AUTH" "" "${BASE_BIN:-}"; }
start_target_shardgate-abort() { start_shardgate "$1" shardgate-abort io_uring "$SG_ROUTE_AUTH" "" "${ABORT_BIN:-}"; }
# The ratelimit scenario's Redis-policy targets (opt-in through TARGETS): the
# same limit kept in a redis-server started here on the load CPUs; its CPU is
# counted with the gateway's. redis1 asks Redis on every request (lease 1),
# redis100 takes 100 units per call.
start_redis_once() {
    [[ -n "${REDIS_PID:-}" ]] && return 0
    command -v redis-server >/dev/null || { log "redis-server not found"; return 1; }
    REDIS_PORT="$(free_ports 1)"
    start_bg "$WORK_DIR/redis.log" "$LOAD_CPUS" redis-server --port "$REDIS_PORT" \
        --bind 127.0.0.1 --save "" --appendonly no
    REDIS_PID=$LAST_PID
    local i
    for ((i = 0; i < 50; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    log "redis-server did not start"
    return 1
}

# start_shardgate_redis PORT NAME LEASE
start_shardgate_redis() {
    local port=$1 name=$2 lease=$3 saved=$SG_EXTRA rc=0
    start_redis_once || return 1
    SG_EXTRA="    rate_limits: { \"per-ip\": RateLimit(key: ClientIp, algorithm: TokenBucket(capacity: 100000000, refill_per_s: 100000000), policy: Redis(url: \"redis://127.0.0.1:$REDIS_PORT\", lease: $lease)) },"
    start_shardgate "$port" "$name" io_uring "$SG_ROUTE_AUTH" || rc=1
    SG_EXTRA=$saved
    TARGET_PIDS="$TARGET_PIDS $REDIS_PID"
    return $rc
}

start_target_shardgate-redis1()   { start_shardgate_redis "$1" shardgate-redis1 1; }
start_target_shardgate-redis100() { start_shardgate_redis "$1" shardgate-redis100 100; }

start_target_shardgate-noauth() { start_shardgate "$1" shardgate-noauth io_uring ""; }
# In the ratelimit scenario the route's limit rides in SG_ROUTE_AUTH, so
# "unlimited" is the same gateway without it (likewise for HAProxy's rules).
start_target_shardgate-unlimited() { start_shardgate "$1" shardgate-unlimited io_uring ""; }
start_target_shardgate-agg()    { start_shardgate "$1" shardgate-agg io_uring "" "$SG_AGG_ROUTE"; }
start_target_shardgate-each()   { start_shardgate "$1" shardgate-each io_uring "" "$SG_EACH_ROUTE"; }
start_target_shardgate-batch()  { start_shardgate "$1" shardgate-batch io_uring "" "$SG_BATCH_ROUTE"; }

# start_shardgate_routes PORT NAME [BINARY]: the reload scenario's generated config.
start_shardgate_routes() {
    local port=$1 name=$2 bin=${3:-$SHARDGATE_BIN} dir="$WORK_DIR/$2"
    mkdir -p "$dir"
    if [[ ! -x "$bin" ]]; then
        log "skipping $name: $bin not found"
        return 1
    fi
    python3 "$SCRIPT_DIR/gen-routes.py" "$ROUTES" --bind "127.0.0.1:$port" \
        --target "127.0.0.1:$UP_PORT" --shards "$WORKERS" >"$dir/gateway.ron"
    start_bg "$dir/stdout.log" "$PROXY_CPUS" env SHARDGATE_DRIVER=io_uring \
        "$bin" --config "$dir/gateway.ron"
    await_target "$name" "$port" "$dir"
}

start_target_shardgate-routes()      { start_shardgate_routes "$1" shardgate-routes; }
start_target_shardgate-reload()      { start_shardgate_routes "$1" shardgate-reload; }
start_target_shardgate-base-routes() { start_shardgate_routes "$1" shardgate-base-routes "${BASE_BIN:-}"; }
start_target_shardgate-base-reload() { start_shardgate_routes "$1" shardgate-base-reload "${BASE_BIN:-}"; }

build_shardgate() {
    [[ " $TARGETS " == *" shardgate"* ]] || return 0
    if [[ "$SKIP_BUILD" == 1 ]]; then
        log "SKIP_BUILD=1: using $SHARDGATE_BIN as it is"
        check_plain_path "$SHARDGATE_BIN"
        return 0
    fi
    log "cargo build --release (this takes a while)"
    if ! (cd "$REPO_DIR" && cargo build --release --bin shardgate >&2); then
        log "cargo build --release failed: shardgate targets will be skipped"
        SHARDGATE_BIN="$WORK_DIR/no-shardgate-build"
    fi
    check_plain_path "$SHARDGATE_BIN"
}

# The plain path's code size (scripts/plain-path-size.sh), logged, with a
# warning when it is above the script's bound (a stage awaited inline
# rather than through `out_of_line`).
check_plain_path() {
    local out
    [[ -x "$1" ]] || return 0
    if out=$("$REPO_DIR/scripts/plain-path-size.sh" "$1" 2>&1); then
        log "plain path's code: $(tail -n1 <<<"$out" | tr -s ' ' | sed 's/^ //')"
    else
        log "WARNING: $(tail -n1 <<<"$out")"
    fi
}

# ---------------------------------------------------------------------------
# One measured run: wrk against TARGET, proxy + upstream CPU sampled around it.
# Appends a row to runs.tsv. Returns non-zero if wrk failed.
# ---------------------------------------------------------------------------
LUA="$HELPER_DIR/report.lua"

run_wrk() {
    local url=$1 secs=$2 out=$3
    taskset -c "$LOAD_CPUS" timeout -k 5 $((secs + WRK_GRACE)) \
        wrk -t1 -c"$CONNS" -d"${secs}s" --timeout 5s --latency -s "$LUA" \
        "${WRK_ARGS[@]}" "$url" >"$out" 2>&1
}

measure() {
    local round=$1 target=$2 url=${URL_OF[$2]} pids=${PIDS_OF[$2]}
    local out="$WORK_DIR/wrk-$target-$round.txt" p0 p1 u0 u1 s0 s1 a0 a1 line
    local -A f=()
    local during="" wrk_ok=1
    # shellcheck disable=SC2086
    { p0=$(cpu_ticks $pids); u0=$(cpu_ticks "$UP_PID"); s0=$(steal_ticks); a0=$(upstream_accepts); }
    # A target may do something while wrk runs (during_NAME PIDS), e.g. reload.
    if declare -F "during_$target" >/dev/null; then
        # shellcheck disable=SC2086
        "during_$target" $pids &
        during=$!
    fi
    run_wrk "$url" "$DURATION" "$out" || wrk_ok=0
    if [[ -n "$during" ]]; then
        kill "$during" 2>/dev/null || true
        wait "$during" 2>/dev/null || true
    fi
    if ((wrk_ok == 0)); then
        log "round $round $target: wrk failed:"; sed 's/^/    /' "$out" >&2
        return 1
    fi
    # shellcheck disable=SC2086
    { p1=$(cpu_ticks $pids); u1=$(cpu_ticks "$UP_PID"); s1=$(steal_ticks); a1=$(upstream_accepts); }
    line="$(grep '^BENCH ' "$out" || true)"
    [[ -n "$line" ]] || { log "round $round $target: no summary from wrk:"; sed 's/^/    /' "$out" >&2; return 1; }
    local kv
    for kv in ${line#BENCH }; do f[${kv%%=*}]=${kv#*=}; done
    local errors=$((f[err_connect] + f[err_read] + f[err_write] + f[err_status] + f[err_timeout]))
    local proxy_ticks="-"
    [[ -n "$pids" ]] && proxy_ticks=$((p1 - p0))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "${f[requests]}" \
        "${f[duration_us]}" "${f[p50_us]}" "${f[p90_us]}" "${f[p99_us]}" "$errors" \
        "$proxy_ticks" "$((u1 - u0))" >>"$RUNS_TSV"
    awk -v r="$round" -v t="$target" -v n="${f[requests]}" -v d="${f[duration_us]}" \
        -v p50="${f[p50_us]}" -v p99="${f[p99_us]}" -v e="$errors" -v pt="$proxy_ticks" \
        -v ut="$((u1 - u0))" -v st="$((s1 - s0))" -v ac="$((a1 - a0 - 1))" -v hz="$CLK_TCK" 'BEGIN {
            n1 = (n > 0 ? n : 1)
            pc = (pt == "-") ? "-" : sprintf("%.2f", pt * 1e6 / hz / n1)
            printf "[bench] round %d %-16s %9.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d  CPU µs/req: proxy %s upstream %.2f  steal %d ms  upstream accepts %d\n",
                r, t, n / (d > 0 ? d / 1e6 : 1), p50 / 1000, p99 / 1000, e, pc, ut * 1e6 / hz / n1, st * 1000 / hz, ac
        }' >&2
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
declare -F "scenario_$SCENARIO" >/dev/null || die "unknown SCENARIO '$SCENARIO'"
ensure_tools
"scenario_$SCENARIO"
TARGETS="${TARGETS:-$DEFAULT_TARGETS}"
BASELINE="${BASELINE:-$DEFAULT_BASELINE}"
[[ "$KEY_RATIOS" == unset ]] && KEY_RATIOS="$DEFAULT_KEY_RATIOS"
read -r -a KEY_RATIO_LIST <<<"$KEY_RATIOS"

[[ -f "$LUA" ]] || die "missing $LUA"
build_shardgate
build_floor

read -r -a TARGET_LIST <<<"$TARGETS"
mapfile -t PORTS < <(free_ports $((${#TARGET_LIST[@]} + 2)))
UP_PORT=${PORTS[0]}
STATUS_PORT=${PORTS[${#TARGET_LIST[@]} + 1]}

log "scenario=$SCENARIO rounds=$ROUNDS duration=${DURATION}s conns=$CONNS workers=$WORKERS proxy cpus=$PROXY_CPUS load cpus=$LOAD_CPUS"
start_upstream
log "upstream nginx on 127.0.0.1:$UP_PORT (pid $UP_PID)"

ACTIVE=()
i=1
for t in "${TARGET_LIST[@]}"; do
    port=${PORTS[$i]}
    i=$((i + 1))
    declare -F "start_target_$t" >/dev/null || die "unknown target '$t'"
    TARGET_PIDS="" TARGET_URL=""
    if "start_target_$t" "$port"; then
        if declare -F "check_target_$SCENARIO" >/dev/null \
            && ! "check_target_$SCENARIO" "$t" "$TARGET_URL"; then
            log "target $t: failed the $SCENARIO checks; skipped"
            SKIPPED[$t]="failed the $SCENARIO checks"
            # shellcheck disable=SC2086
            [[ -z "$TARGET_PIDS" ]] || stop_pid $TARGET_PIDS
            continue
        fi
        URL_OF[$t]=$TARGET_URL
        PIDS_OF[$t]=$TARGET_PIDS
        ACTIVE+=("$t")
        log "target $t: $TARGET_URL${TARGET_PIDS:+ (pid $TARGET_PIDS)}"
    else
        log "target $t: skipped"
        SKIPPED[$t]="did not start"
    fi
done
((${#ACTIVE[@]})) || die "no target started"

if ((WARMUP > 0)); then
    for t in "${ACTIVE[@]}"; do
        run_wrk "${URL_OF[$t]}" "$WARMUP" "$WORK_DIR/warmup-$t.txt" || log "warmup of $t failed"
    done
fi

printf 'round\ttarget\trequests\tduration_us\tp50_us\tp90_us\tp99_us\terrors\tproxy_ticks\tupstream_ticks\n' >"$RUNS_TSV"
declare -A FAILS=()
# Each round starts one target later than the round before, so that no
# target always runs first in a round (the first one after a pause was seen
# to be favoured on a shared machine).
for ((round = 1; round <= ROUNDS; round++)); do
    for ((i = 0; i < ${#ACTIVE[@]}; i++)); do
        t=${ACTIVE[$(( (i + round - 1) % ${#ACTIVE[@]} ))]}
        if [[ -n "${PIDS_OF[$t]}" ]] && ! kill -0 "${PIDS_OF[$t]%% *}" 2>/dev/null; then
            [[ -n "${FAILS[$t]:-}" ]] || log "round $round $t: process has exited; no more runs"
            FAILS[$t]=dead
            continue
        fi
        measure "$round" "$t" || FAILS[$t]=failed
    done
done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
cpu_model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
REPORT="$WORK_DIR/report.md"
{
    echo "### Scenario \`$SCENARIO\` — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo '```'
    echo "$CMDLINE"
    echo '```'
    echo
    echo "- machine: nproc=$(nproc), kernel $(uname -r), CPU: ${cpu_model:-unknown}"
    echo "- load: wrk -t1 -c$CONNS, ${DURATION}s per run, $ROUNDS interleaved rounds, GET $REQ_PATH, ${#UPSTREAM_BODY}-byte JSON body"
    echo "- pinning: proxy on CPU $PROXY_CPUS, wrk + upstream nginx (1 worker) on CPU $LOAD_CPUS; proxies run $WORKERS worker(s)/thread(s)/shard(s)"
    echo "- versions: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v 2>&1 | head -n1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -n1 | awk '{print "wrk " $2}')$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null | sed 's/^/, shardgate @ /')"
    echo "- CPU: utime+stime from /proc/PID/stat (CLK_TCK=$CLK_TCK) before/after each run ÷ requests; nginx = master + workers"
    if ((${#SCENARIO_NOTES[@]})); then printf '%s\n' "${SCENARIO_NOTES[@]}"; fi
    if declare -F "report_$SCENARIO" >/dev/null; then "report_$SCENARIO"; fi
    for t in "${TARGET_LIST[@]}"; do
        if [[ -z "${URL_OF[$t]:-}" ]]; then
            echo "- \`$t\`: skipped (${SKIPPED[$t]:-did not start})"
        elif [[ -n "${FAILS[$t]:-}" ]]; then
            echo "- \`$t\`: some runs missing (${FAILS[$t]})"
        fi
    done
    echo
    python3 "$HELPER_DIR/report.py" "$RUNS_TSV" "$CLK_TCK" "$BASELINE" "${KEY_RATIO_LIST[@]}"
} >"$REPORT"

if [[ -n "$RESULTS_DIR" ]]; then
    mkdir -p "$RESULTS_DIR"
    cp "$RUNS_TSV" "$RESULTS_DIR/runs.tsv"
    cp "$REPORT" "$RESULTS_DIR/report.md"
    log "raw runs and report copied to $RESULTS_DIR"
fi
cat "$REPORT"
