#!/usr/bin/env bash
# Black-box wire fuzzer: mutated HTTP/1.1 traffic on raw sockets against the
# real shardgate binary (tests/fuzz_wire.rs). Fails when the gateway exits,
# panics, stops answering a health request within 2 s, or leaves a connection
# hanging past its timeouts.
#
#   scripts/fuzz-wire.sh SECONDS            # release binary (default)
#   FUZZ_WIRE_PROFILE=debug scripts/fuzz-wire.sh 30
#   FUZZ_WIRE_SEED=0x1234 scripts/fuzz-wire.sh 60   # repeat a run's inputs
#   FUZZ_WIRE_WORKERS=128                   # concurrent connections (default 64)
#   FUZZ_WIRE_REPLAY=0xSEED[,0xSEED] scripts/fuzz-wire.sh   # replay connections
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-${FUZZ_WIRE_SECONDS:-60}}"
case "$seconds" in
    ''|*[!0-9]*) echo "usage: $0 SECONDS" >&2; exit 2 ;;
esac
profile="${FUZZ_WIRE_PROFILE:-release}"
target_dir="${CARGO_TARGET_DIR:-target}"

case "$profile" in
    release)
        echo "== cargo build --release --bin shardgate"
        cargo build --release --bin shardgate
        bin="$target_dir/release/shardgate"
        ;;
    debug)
        # Built by the `cargo test` below, which builds the gateway's binary
        # for the integration tests. A `cargo build` would build it again,
        # with some dependencies rebuilt: without the dev-dependencies, their
        # features are not unified with those the tests enable.
        bin="$target_dir/debug/shardgate"
        ;;
    *) echo "FUZZ_WIRE_PROFILE must be release or debug" >&2; exit 2 ;;
esac

# The fuzz client itself is built in the dev profile (fast to build); it
# drives whichever gateway binary SHARDGATE_BIN names.
echo "== cargo test --test fuzz_wire --no-run"
runner=$(cargo test --test fuzz_wire --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*fuzz_wire[^"]*\)".*/\1/p' | tail -n 1)
if [ -z "$runner" ] || [ ! -x "$runner" ]; then
    # Show the build errors.
    cargo test --test fuzz_wire --no-run
    echo "fuzz-wire.sh: could not find the fuzz_wire test binary" >&2
    exit 1
fi

echo "== wire fuzz: $seconds s against $bin"
SHARDGATE_BIN="$(realpath "$bin")" FUZZ_WIRE_SECONDS="$seconds" exec "$runner"
