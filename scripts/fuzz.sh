#!/usr/bin/env bash
# Fuzzes every target of fuzz/Cargo.toml for a while (default 60 s each):
# open-ended fuzzing on a developer's machine. CI runs scripts/fuzz-ci.sh
# instead (a short fixed time per target, inside the test command).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); on a stable
# toolchain it runs without sanitizers via RUSTC_BOOTSTRAP. Each target
# starts from the committed seed corpus fuzz/corpus/<target>/ and grows a
# working corpus in fuzz/target/corpus/<target>/ (git-ignored, kept between
# runs); crash inputs land in fuzz/artifacts/<target>/. To keep a finding
# as a seed, minimise it (`cargo fuzz cmin` / `tmin`) and copy it into
# fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
export RUSTC_BOOTSTRAP=1
mapfile -t targets < <(cargo fuzz list)
for target in "${targets[@]}"; do
    echo "== $target (${secs}s)"
    mkdir -p "target/corpus/$target"
    cargo fuzz run --sanitizer none "$target" "target/corpus/$target" "corpus/$target" -- \
        -max_total_time="$secs" -max_len=4096
done
