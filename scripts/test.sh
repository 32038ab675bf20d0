#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every check.
# Used by CI (.ci/run) and by developers alike.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
py_has() { python3 -c "import $1" 2>/dev/null || /usr/bin/python3 -c "import $1" 2>/dev/null; }

# What the tests need, each with the tests that fail without it. Missing
# ones are installed with one `apt-get update` and one `apt-get install`
# (one by one only if that fails, to say which could not be had).
missing=()
need() { missing+=("$1|$2"); }
# redis-server: the cluster-wide rate-limit tests start a real one on a free port.
have redis-server || need "redis-server" "the Redis rate-limit tests"
# chromium + chromedriver: tests/status_page.rs drives the admin status page in a headless browser.
if ! have chromedriver || ! { have chromium || have chromium-browser; }; then
    need "chromium chromium-driver" "the status-page test"
fi
# python3-websockets: tests/websocket.rs runs a real WebSocket server and client.
py_has websockets || need "python3-websockets" "the WebSocket tests"
# python3-brotli + python3-zstandard: tests/compression.rs decodes the gateway's
# brotli and zstd responses (and compresses request bodies) with real Python clients.
py_has "brotli, zstandard" || need "python3-brotli python3-zstandard" "the Python compression test"
# nghttp2-client (nghttp, h2load): tests/h2_core.rs drives the HTTP/2 server with
# independent clients; scripts/bench has h2load figures.
{ have nghttp && have h2load; } || need "nghttp2-client" "the nghttp/h2load HTTP/2 tests"
# python3-grpcio + python3-protobuf + python3-h2: the gRPC tests run a real gRPC
# server and client (grpcio, messages by the bundled descriptor set), and the
# HTTP/2 attack and conformance tests build frames with the h2 package.
py_has "grpc, google.protobuf, h2" || need "python3-grpcio python3-protobuf python3-h2" "the gRPC and HTTP/2 wire tests"

if [ ${#missing[@]} -gt 0 ]; then
    if ! have apt-get; then
        for m in "${missing[@]}"; do
            echo "test.sh: apt-get not found; install ${m%%|*} by hand, or ${m#*|} will fail" >&2
        done
    else
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        packages=()
        for m in "${missing[@]}"; do
            read -r -a words <<<"${m%%|*}"
            packages+=("${words[@]}")
        done
        echo "== apt-get install ${packages[*]}"
        $sudo apt-get update -qq || true
        if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}"; then
            for m in "${missing[@]}"; do
                read -r -a words <<<"${m%%|*}"
                DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${words[@]}" ||
                    echo "test.sh: could not install ${m%%|*}; ${m#*|} will fail" >&2
            done
        fi
    fi
fi
export SHARDGATE_BROWSER_REQUIRED=1

# A first build (a clean clone, as in CI) gains nothing from incremental
# compilation and pays for writing its caches: a clean `cargo test
# --all-targets --no-run` took 192 s without it against 255 s with it on
# the 2-core reference machine. Every cargo command below then builds the
# same way; a later run, with the target directory there, is incremental
# again (after rebuilding the workspace's own crates once).
if [ -z "${CARGO_INCREMENTAL+set}" ] && [ ! -d "${CARGO_TARGET_DIR:-target}/debug" ]; then
    echo "== first build here: CARGO_INCREMENTAL=0"
    export CARGO_INCREMENTAL=0
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test (unit, integration, benches in test mode)"
cargo test --all-targets
echo "== integration tests again on the epoll driver (the io_uring fallback path)"
SHARDGATE_DRIVER=epoll cargo test --tests
echo "== wire fuzzer: 60 s of mutated requests against the real gateway"
FUZZ_WIRE_PROFILE=debug scripts/fuzz-wire.sh 60
echo "== soak: 1 minute of load with reloads every 2 s and backend restarts every 10 s"
SOAK_PROFILE=debug SKIP_BUILD=1 scripts/soak.sh 1
