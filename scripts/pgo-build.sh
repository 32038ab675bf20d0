#!/usr/bin/env bash
# A profile-guided build of the gateway: an instrumented build first, a
# training load through it, then the release build optimised with the
# profile it wrote (LLVM PGO through rustc's -Cprofile-generate and
# -Cprofile-use). Prints the optimised binary's path on stdout.
#
# The training load is plain proxying at 32 and at 1,000 connections, a
# route that checks an HS256 JWT and one behind a local token bucket, each
# through wrk against a one-worker nginx upstream on 127.0.0.1, so that the
# request path's common stages are the profile's hot code. Other stages are
# built as they are without PGO, as code the profile calls cold.
#
# Usage: scripts/pgo-build.sh
#   TRAIN_SECS=6 (environment) seconds of load per training run
#   PGO_DIR=target/pgo (environment) where the profile, both builds'
#           targets and the optimised binary go
# Needs: the llvm-tools rustup component (added when missing), nginx, wrk
# and python3; about three release builds' time (the instrumented build
# rebuilds every dependency with its own flags).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/bench/lib.sh"
log() { echo "[pgo] $*" >&2; }

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGO_DIR="$(realpath -m "${PGO_DIR:-$REPO_DIR/target/pgo}")"
TRAIN_SECS=${TRAIN_SECS:-6}
HOST="$(rustc -vV | sed -n 's/^host: //p')"
SYSROOT="$(rustc --print sysroot)"
PROFDATA="$SYSROOT/lib/rustlib/$HOST/bin/llvm-profdata"
STARTED_PIDS=()
WORK=$(mktemp -d /tmp/pgo-train.XXXXXX)
cleanup() {
    local p
    for p in "${STARTED_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in nginx wrk python3; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install $tool)"
done
if [[ ! -x "$PROFDATA" ]]; then
    log "adding the llvm-tools rustup component (llvm-profdata)"
    rustup component add llvm-tools >&2 || die "rustup component add llvm-tools failed"
fi
[[ -x "$PROFDATA" ]] || die "llvm-profdata not found at $PROFDATA"

# --target keeps RUSTFLAGS off build scripts and procedural macros.
build() {
    local dir=$1 flags=$2
    (cd "$REPO_DIR" && RUSTFLAGS="$flags" cargo build --release --bin shardgate \
        --target "$HOST" --target-dir "$dir" >&2)
    echo "$dir/$HOST/release/shardgate"
}

rm -rf "$PGO_DIR/raw"
mkdir -p "$PGO_DIR/raw"
log "instrumented build ($PGO_DIR/gen)"
GEN_BIN=$(build "$PGO_DIR/gen" "-Cprofile-generate=$PGO_DIR/raw")

mapfile -t PORTS < <(free_ports 2)
UP=${PORTS[0]} PX=${PORTS[1]}
mkdir -p "$WORK/up"
nginx_upstream_config "$WORK/up" "$UP" '{"items":[{"id":1,"name":"widget"},{"id":2,"name":"gadget"}]}' >"$WORK/up/nginx.conf"
start_bg "$WORK/up/stdout.log" 0-64 nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"

SECRET=pgo-training-secret-0123456789
TOKEN="$(mint_jwt "$SECRET" pgo 3600)"
cat >"$WORK/gateway.ron" <<EOF
Gateway(
    shards: Count(1),
    listeners: [ Listener(name: "train", bind: "127.0.0.1:$PX") ],
    authenticators: { "jwt": Jwt(algorithms: [HS256], key: Secret("$SECRET"), issuer: "pgo", forward_claims: { "sub": "X-User-Id" }) },
    rate_limits: { "per-ip": RateLimit(key: ClientIp, algorithm: TokenBucket(capacity: 100000000, refill_per_s: 10000000)) },
    upstreams: { "up": Upstream(targets: ["127.0.0.1:$UP"], max_idle_per_target: 1024) },
    routes: [
        Route(name: "auth", match: Match(path_prefix: "/auth/"), upstream: "up", auth: Required(["jwt"])),
        Route(name: "limited", match: Match(path_prefix: "/limited/"), upstream: "up", rate_limits: ["per-ip"]),
        Route(name: "all", match: Match(path_prefix: "/"), upstream: "up"),
    ],
)
EOF
log "training: $GEN_BIN"
LLVM_PROFILE_FILE="$PGO_DIR/raw/shardgate-%p-%m.profraw" \
    start_bg "$WORK/gateway.log" 0-64 "$GEN_BIN" --config "$WORK/gateway.ron"
GW=$LAST_PID
ready=0
for _ in $(seq 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$PX/api/v1/items" 2>/dev/null; then ready=1; break; fi
    kill -0 "$GW" 2>/dev/null || break
    sleep 0.1
done
((ready)) || { cat "$WORK/gateway.log" >&2; die "the instrumented gateway did not answer"; }
# train WRK_ARGS...: one training run; every answer must be a 2xx, or the
# profile would be one of error answers.
train() {
    local out
    out=$(timeout -k 5 $((TRAIN_SECS + 20)) wrk -t1 -d"${TRAIN_SECS}s" --timeout 5s "$@") \
        || die "wrk $* failed: $out"
    grep -q "Non-2xx" <<<"$out" && die "wrk $*: answers other than 2xx: $out"
    log "wrk ${*: -1} ($1): $(grep -o '[0-9]* requests in [0-9.]*s' <<<"$out")"
}
train -c32 "http://127.0.0.1:$PX/api/v1/items"
train -c1000 "http://127.0.0.1:$PX/api/v1/items"
train -c32 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PX/auth/items"
train -c32 "http://127.0.0.1:$PX/limited/items"
# The profile is written when the process exits: stop it the graceful way.
kill -TERM "$GW"
for _ in $(seq 100); do kill -0 "$GW" 2>/dev/null || break; sleep 0.1; done
kill -0 "$GW" 2>/dev/null && die "the instrumented gateway did not stop on SIGTERM"
compgen -G "$PGO_DIR/raw/*.profraw" >/dev/null || die "no profile written to $PGO_DIR/raw"

"$PROFDATA" merge -o "$PGO_DIR/merged.profdata" "$PGO_DIR/raw"
# Named by its content: cargo does not look into the file -Cprofile-use
# names, only at the flags, so a new profile must change the flags.
PROFILE="$PGO_DIR/shardgate-$(sha256sum "$PGO_DIR/merged.profdata" | cut -c1-16).profdata"
rm -f "$PGO_DIR"/shardgate-*.profdata
mv "$PGO_DIR/merged.profdata" "$PROFILE"
log "profile: $PROFILE"
log "optimised build ($PGO_DIR/use)"
USE_BIN=$(build "$PGO_DIR/use" "-Cprofile-use=$PROFILE")
cp "$USE_BIN" "$PGO_DIR/shardgate"
log "done: $PGO_DIR/shardgate"
echo "$PGO_DIR/shardgate"
