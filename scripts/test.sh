#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every check.
# Used by CI (.ci/run) and by developers alike.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
    if ! have apt-get; then
        echo "test.sh: apt-get not found; install $* by hand" >&2
        return 1
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# redis-server: the cluster-wide rate-limit tests start a real one on a free port.
if ! have redis-server; then
    apt_install redis-server || echo "test.sh: could not install redis-server; tests that need it will fail" >&2
fi
# chromium + chromedriver: tests/status_page.rs drives the admin status page in a headless browser.
if ! have chromedriver || ! { have chromium || have chromium-browser; }; then
    apt_install chromium chromium-driver || echo "test.sh: could not install chromium; the status-page test will fail" >&2
fi
export SHARDGATE_BROWSER_REQUIRED=1
# python3-websockets: tests/websocket.rs runs a real WebSocket server and client.
if ! python3 -c 'import websockets' 2>/dev/null && ! /usr/bin/python3 -c 'import websockets' 2>/dev/null; then
    apt_install python3-websockets || echo "test.sh: could not install python3-websockets; the WebSocket tests will fail" >&2
fi
# python3-brotli + python3-zstandard: tests/compression.rs decodes the gateway's
# brotli and zstd responses (and compresses request bodies) with real Python clients.
if ! python3 -c 'import brotli, zstandard' 2>/dev/null && ! /usr/bin/python3 -c 'import brotli, zstandard' 2>/dev/null; then
    apt_install python3-brotli python3-zstandard || echo "test.sh: could not install python3-brotli/python3-zstandard; the Python compression test will fail" >&2
fi

# nghttp2-client (nghttp, h2load): tests/h2_core.rs drives the HTTP/2 server with
# independent clients; scripts/bench has h2load figures.
if ! have nghttp || ! have h2load; then
    apt_install nghttp2-client || echo "test.sh: could not install nghttp2-client; the nghttp/h2load HTTP/2 tests will fail" >&2
fi
# python3-grpcio + python3-protobuf + python3-h2: the gRPC tests run a real gRPC
# server and client (grpcio, messages by the bundled descriptor set), and the
# HTTP/2 attack and conformance tests build frames with the h2 package.
if ! python3 -c 'import grpc, google.protobuf, h2' 2>/dev/null && ! /usr/bin/python3 -c 'import grpc, google.protobuf, h2' 2>/dev/null; then
    apt_install python3-grpcio python3-protobuf python3-h2 || echo "test.sh: could not install python3-grpcio/python3-protobuf/python3-h2; the gRPC and HTTP/2 wire tests will fail" >&2
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
