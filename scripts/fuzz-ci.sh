#!/usr/bin/env bash
# Fuzzing in CI: runs every cargo-fuzz target of fuzz/Cargo.toml for a short
# fixed time, starting from the committed seed corpus fuzz/corpus/<target>/.
#
#   scripts/fuzz-ci.sh [seconds per target]    (default 20; or TESSERA_FUZZ_SECS)
#
# Installs cargo-fuzz when it is missing. Builds on the stable toolchain
# without sanitizers (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly
# flags; the targets are safe Rust, so a panic, an out-of-memory or a hang
# is what they find), with fuzz/Cargo.lock as committed (--locked).
# The fuzzer works on a temporary copy of each corpus, so a run leaves the
# checkout as it was; a crash, a timeout or an out-of-memory fails the run
# and prints the input's path and the command that reproduces it. For
# open-ended fuzzing that grows the corpus, use scripts/fuzz.sh.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-${TESSERA_FUZZ_SECS:-20}}
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz-ci: seconds per target must be a positive integer, not '$secs'" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_INCREMENTAL=0
# The same flags for the build and every run, so `cargo fuzz run` finds the
# targets built and does not build them again.
build_flags=(--sanitizer none)

# The committed lock file must match the manifests (a dependency of proto
# or router changed without fuzz/Cargo.lock following it fails here).
if ! cargo fetch --locked --quiet; then
    echo "fuzz-ci: fuzz/Cargo.lock is missing or out of date; update it with" >&2
    echo "  cargo update --workspace --manifest-path fuzz/Cargo.toml" >&2
    echo "and commit it." >&2
    exit 1
fi

mapfile -t targets < <(cargo fuzz list)
if [ "${#targets[@]}" = 0 ]; then
    echo "fuzz-ci: no fuzz targets in fuzz/Cargo.toml" >&2
    exit 1
fi

echo "== building ${#targets[@]} fuzz targets"
started=$SECONDS
cargo fuzz build "${build_flags[@]}"
echo "built in $((SECONDS - started)) s"

work=$(mktemp -d "${TMPDIR:-/tmp}/tessera-fuzz-ci.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=()
for target in "${targets[@]}"; do
    seeds="corpus/$target"
    if [ ! -d "$seeds" ] || [ -z "$(ls -A "$seeds")" ]; then
        echo "fuzz-ci: $target has no seed corpus in fuzz/$seeds" >&2
        failed+=("$target (no seed corpus)")
        continue
    fi
    corpus="$work/corpus/$target"
    mkdir -p "$corpus"
    cp -R "$seeds/." "$corpus/"
    # Crash inputs go where cargo-fuzz keeps them (git-ignored); a fresh
    # directory per run, so that only this run's findings count.
    artifacts="artifacts/$target/ci-$(date +%Y%m%d-%H%M%S)-$$"
    mkdir -p "$artifacts"
    log="$work/$target.log"
    echo "== $target (${secs} s, $(find "$seeds" -type f | wc -l) seeds)"
    status=0
    target_started=$SECONDS
    # -timeout: one input running this long is a hang. The outer timeout
    # only guards against the fuzzer itself not stopping.
    timeout --kill-after=30 $((secs + 300)) \
        cargo fuzz run "${build_flags[@]}" "$target" "$corpus" -- \
        -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$PWD/$artifacts/" -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    crashes=$(find "$artifacts" -type f | sort)
    if [ "$status" = 0 ] && [ -z "$crashes" ]; then
        grep -E '^#[0-9]+.*DONE' "$log" | tail -n 1 || true
        echo "$target: no crash in $((SECONDS - target_started)) s"
        rmdir "$artifacts" "artifacts/$target" artifacts 2>/dev/null || true
        continue
    fi
    echo "---- $target failed (exit $status); the fuzzer's last lines:"
    tail -n 60 "$log"
    echo "----"
    if [ -n "$crashes" ]; then
        while IFS= read -r crash; do
            echo "crash input: fuzz/$crash"
            echo "reproduce:   (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $target $crash)"
        done <<<"$crashes"
    else
        rmdir "$artifacts" "artifacts/$target" artifacts 2>/dev/null || true
    fi
    failed+=("$target")
done

echo "fuzzed ${#targets[@]} targets for ${secs} s each; $((SECONDS - started)) s with the build"
if [ "${#failed[@]}" != 0 ]; then
    echo "fuzz-ci: FAILED: ${failed[*]}" >&2
    exit 1
fi
