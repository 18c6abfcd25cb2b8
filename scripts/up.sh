#!/usr/bin/env bash
# Builds and runs the whole world in one process (`tessera up`), installing
# the few system packages the build needs when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# cc and pkg-config for -sys crates; protoc for etcd-client's build.
if ! command -v cc >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1 \
    || ! command -v protoc >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential pkg-config protobuf-compiler
fi
# The browser client (node and npm); the world runs without it, and its
# page then says how to build it.
scripts/build-web.sh || echo "warning: the web client was not built; browsers cannot play (scripts/build-web.sh)" >&2
exec cargo run --release -- "$@"
