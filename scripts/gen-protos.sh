#!/bin/sh
# Regenerates the descriptor sets under protos/ from their .proto sources.
# Needs protoc (Debian: apt-get install protobuf-compiler, which brings the
# google/protobuf/*.proto well-known types under /usr/include). The
# google/api annotations are bundled in protos/google/api/.
set -eu
cd "$(dirname "$0")/.."
INCLUDE=${PROTOC_INCLUDE:-/usr/include}
protoc \
  --proto_path=protos \
  --proto_path="$INCLUDE" \
  --include_imports \
  --descriptor_set_out=protos/inventory.pb \
  protos/inventory.proto
echo "wrote protos/inventory.pb ($(wc -c < protos/inventory.pb) bytes)"
