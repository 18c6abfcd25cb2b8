#!/usr/bin/env bash
# Runs every check and test of Tessera: formatting, clippy, unit, property,
# in-process and real-process tests. Installs what the tests need when it is
# missing (a fresh Debian machine, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0
need_pkg() { # need_pkg <command> <debian package>
    if ! command -v "$1" >/dev/null 2>&1; then
        if [ "$apt_updated" = 0 ]; then
            apt-get update -qq
            apt_updated=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"
    fi
}
need_pkg cc build-essential
need_pkg pkg-config pkg-config
# etcd-client's build compiles etcd's protobuf files.
need_pkg protoc protobuf-compiler
# The real etcd the cluster-store tests start (Debian installs /usr/bin/etcd).
need_pkg etcd etcd-server
# The fault tests put a shard in a network namespace (ip netns, as root).
need_pkg ip iproute2
# The FoundationDB bindings (feature fdb) run bindgen, which needs libclang.
# No package here ships libfdb_c, so that feature is only checked, not linked.
if ! dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'install ok installed'; then
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev
fi
# The 3D viewer's screenshot test (tests/viewer.rs) runs it under Xvfb with
# Mesa's software GL; the viewer loads libGL, libX11 and libXi at run time.
need_pkg Xvfb xvfb
for lib in libgl1 libgl1-mesa-dri libx11-6 libxi6; do
    if ! dpkg-query -W -f='${Status}' "$lib" 2>/dev/null | grep -q 'install ok installed'; then
        if [ "$apt_updated" = 0 ]; then
            apt-get update -qq
            apt_updated=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$lib"
    fi
done
# The real-process tests signal servers with kill(1) (not the shell builtin).
if [ ! -x /bin/kill ] && [ ! -x /usr/bin/kill ]; then
    apt_updated=1
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq procps
fi

# The k8s checks run their Python tools from a virtual environment.
need_pkg python3 python3
# TinTin++, the real MUD client tests/mud_client.rs drives (Debian installs
# it as /usr/games/tt++, which may not be on PATH).
if [ ! -x /usr/games/tt++ ]; then
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tintin++
fi
# Chromium, the real browser tests/browser.rs plays the web client in
# (headless, software GL; its driver, playwright-core, comes with the npm
# packages scripts/build-web.sh installs below).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=1
# CI builds once from a clean checkout: incremental caches would only cost
# disk (several GB for this workspace) and time.
export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== FoundationDB backend (feature fdb): type-check and clippy only, no libfdb_c here"
cargo check -p tessera-persistence --features fdb --all-targets --locked
cargo clippy -p tessera-persistence --features fdb --all-targets --locked -- -D warnings
echo "== web client: npm packages, type check, bundle (scripts/build-web.sh)"
scripts/build-web.sh
(cd client/web && npx tsc --noEmit -p .)
# The page's interface in headless Chromium against a stand-in server inside
# the page (errors, chat, F3, reconnecting; about 20 s). tests/browser.rs
# plays it against a real tessera up.
(cd client/web && node test/ui-smoke.mjs)
echo "== build (one build shared by all tests)"
cargo build --workspace --all-targets --locked
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
echo "== doc tests"
cargo test --workspace --doc --locked
# After the tests: the rolling-restart test recorded its drain times in
# target/tmp/rolling-restart-drain.json, which the shard grace period is
# checked against.
echo "== k8s manifests and Dockerfile (offline: kustomize, schemas, rules)"
scripts/k8s-check.sh
# Every cargo-fuzz target for a short fixed time (20 s each; TESSERA_FUZZ_SECS
# or an argument changes it) from the committed seed corpus. Installs
# cargo-fuzz when missing; fails on a crash, hang or out-of-memory.
echo "== fuzzing (scripts/fuzz-ci.sh)"
scripts/fuzz-ci.sh
