#!/usr/bin/env bash
# Runs every fuzz target for a while (default 60 s each). Needs cargo-fuzz
# (`cargo install cargo-fuzz`); on a stable toolchain it runs without
# sanitizers via RUSTC_BOOTSTRAP. Not part of CI: fuzzing is open-ended.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
export RUSTC_BOOTSTRAP=1
for target in client_control_frames client_datagram cluster_message telnet_input; do
    echo "== $target (${secs}s)"
    cargo fuzz run --sanitizer none "$target" -- -max_total_time="$secs" -max_len=4096
done
