#!/usr/bin/env bash
# The long chaos run of docs/performance.md ("Chaos"): a bot swarm and telnet
# walkers against a process cluster on etcd (two coordinators, three shards,
# two routers, the persistence service, each member in a network namespace of
# its own) while every role in turn (the leading coordinator, each shard and
# router, the persistence service) is killed with kill -9, frozen with
# SIGSTOP and cut off from the network, with the default leases. It checks
# the entity count, one owner per cell (etcd's revision history), the
# acknowledged positions and accounts, and that every player plays again
# within a bound; then writes a report (markdown, and JSON beside it) with
# the time to recover from each fault and what was lost (tests/chaos.rs,
# `chaos_every_role_in_turn`). A short version runs in CI
# (`chaos_short_one_fault_of_each_kind`).
#
# Usage: scripts/chaos.sh [--rounds N] [--report FILE] [--dev]
# Defaults: 2 rounds (24 faults, about 15 minutes), report
# target/chaos-report.md, the release profile (--dev: the test profile,
# which CI's tests use, quicker to build). Needs root (network namespaces),
# iproute2 and etcd (scripts/test.sh installs them). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=2 report=$PWD/target/chaos-report.md profile=(--release)
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --report) report=$2; shift 2 ;;
        --dev) profile=(); shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$report" in /*) ;; *) report=$PWD/$report ;; esac

if [ "$(id -u)" != 0 ]; then
    echo "chaos.sh needs root: it puts every member in a network namespace" >&2
    exit 1
fi
for cmd in ip etcd; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "chaos.sh needs $cmd (scripts/test.sh installs it)" >&2
        exit 1
    fi
done

echo "chaos: $rounds round(s) on $(nproc) cores; report $report"
TESSERA_CHAOS_ROUNDS=$rounds TESSERA_CHAOS_REPORT=$report \
    cargo test "${profile[@]}" --locked --test chaos -- chaos_every_role_in_turn \
    --ignored --nocapture --test-threads 1
echo "chaos: report in $report (and ${report%.md}.json)"
