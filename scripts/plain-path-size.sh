#!/usr/bin/env bash
# Code size of the plain-proxy path's poll functions in a release build.
#
# Rust inlines an async function's body into its caller's poll function, so
# a stage awaited inline on the request path (rather than through
# `crate::out_of_line`) brings its whole code into every request's path.
# This prints the sizes of the functions a plain proxied request runs
# through (`nm -S`) and fails when their sum is above BOUND bytes
# (RESULTS §35-36: about 44 KB after the stages went out of line, about
# 174 KB before). The connection's own future (`serve_busy`), polled
# through its box, shows in `nm` only as one of many
# `<Pin<P> as Future>::poll` and is not counted (11,518 bytes at a0c7b52).
#
# Usage: scripts/plain-path-size.sh [BIN]   (default target/release/shardgate)
#   BOUND=65536 (environment)
set -euo pipefail
BIN=${1:-target/release/shardgate}
BOUND=${BOUND:-65536}
[[ -x $BIN ]] || { echo "plain-path-size: no binary at $BIN (cargo build --release)" >&2; exit 2; }
total=0
while read -r _ size _ name; do
    bytes=$((16#$size))
    printf '%8d  %s\n' "$bytes" "$name"
    total=$((total + bytes))
done < <(nm -S -C "$BIN" | grep -E ' [tT] shardgate::(server::(serve_busy|serve_request)|pipeline::handle|proxy::(exchange|forward_to|forward_try))::\{\{closure\}\}$')
printf '%8d  total (bound %d)\n' "$total" "$BOUND"
(( total > 0 )) || { echo "plain-path-size: none of the functions found (renamed?)" >&2; exit 2; }
(( total <= BOUND )) || { echo "plain-path-size: the plain path's code is above $BOUND bytes: a stage awaited inline?" >&2; exit 1; }
