#!/usr/bin/env bash
# Capacity per core (docs/performance.md, "Capacity per core"): how many
# players one server core holds. `tessera up` (defaults, --spawn-radius 100)
# is pinned to core 0 with taskset, the bot swarm to core 1, so the bots
# never take the server's core. The swarm is mixed (2/3 QUIC, 1/3 telnet)
# and grows step by step, each step a fresh server and data dir: ramp up at
# --ramp logins a second, let it settle, hold --hold seconds. A step passes
# when, after the ramp,
#   - input-to-ack p99 (QUIC) is at most --max-p99 ms (100),
#   - every shard keeps at least 95 % of its ticks within 33 ms,
#   - no bot saw an error or a disconnect;
# the figure is the largest step that passed. Growing stops at the first
# step that fails. Each step also reports how busy both cores were, so a
# saturated bot core (which would measure the bots) shows.
#
# Usage: scripts/capacity.sh [--steps "400 600 800 1000 1200"] [--ramp 20]
#                            [--hold 30] [--scenario wander|crowd]
#                            [--max-p99 MS] [--out DIR]
# `--scenario crowd` sends everyone into cell 0,0 (the crowd of issue 14,
# split across the shards) instead of wandering. Builds the release binary
# first. Not part of CI (minutes of full load). Needs 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

steps="400 600 800 1000 1200" ramp=20 hold=30 scenario=wander max_p99=100 out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) steps=$2; shift 2 ;;
        --ramp) ramp=$2; shift 2 ;;
        --hold) hold=$2; shift 2 ;;
        --scenario) scenario=$2; shift 2 ;;
        --max-p99) max_p99=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
out=${out:-target/capacity/$scenario}
if [ "$(nproc)" -lt 2 ]; then
    echo "capacity.sh pins the server and the bots to one core each: it needs 2 cores" >&2
    exit 2
fi

cargo build --release -p tessera --locked
bin=$PWD/target/release/tessera
mkdir -p "$out"
settle=5
hz=$(getconf CLK_TCK)

# CPU seconds a process has used (user + system).
cpu() { awk -v hz="$hz" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }

# The shard tick histograms: "shard sum count within_33ms" lines.
ticks() {
    curl -sf "http://127.0.0.1:29200/metrics" | python3 scripts/shard-ticks.py
}

step() { # step <players>; prints one summary line, exits 0 if the step passed
    local n=$1 dir=$out/$1
    local quic=$(( n * 2 / 3 )) telnet=$(( n - n * 2 / 3 ))
    local ramp_s=$(( (n + ramp - 1) / ramp ))
    # The bots outlive the measured window by a few seconds, so their CPU
    # time can be read at its end.
    local duration=$(( ramp_s + settle + hold + 5 ))
    rm -rf "$dir"; mkdir -p "$dir"
    taskset -c 0 "$bin" up --world worlds/default --data-dir "$dir/data" --spawn-radius 100 \
        --telnet 127.0.0.1:25000 --quic 127.0.0.1:25433 --metrics 127.0.0.1:29200 \
        --assets-listen 127.0.0.1:27500 >"$dir/server.log" 2>&1 &
    local server=$!
    for _ in $(seq 300); do
        [ -f "$dir/data/quic-cert.der" ] && curl -sf http://127.0.0.1:29200/metrics >/dev/null && break
        sleep 0.1
    done
    taskset -c 1 "$bin" bots --quic "$quic" --telnet "$telnet" --quic-addr 127.0.0.1:25433 \
        --cert "$dir/data/quic-cert.der" --telnet-addr 127.0.0.1:25000 \
        --scenario "$scenario" --ramp "$ramp" --settle "$settle" --duration "$duration" \
        --report "$dir/report" --no-progress >"$dir/bots.log" 2>&1 &
    local bots=$!
    sleep $(( ramp_s + settle ))
    local s0 b0 t0
    s0=$(cpu "$server"); b0=$(cpu "$bots"); t0=$(date +%s.%N)
    ticks >"$dir/ticks-start.txt"
    sleep "$hold"
    ticks >"$dir/ticks-end.txt"
    local s1 b1 t1
    s1=$(cpu "$server"); b1=$(cpu "$bots" 2>/dev/null || echo "$b0"); t1=$(date +%s.%N)
    wait "$bots" || true
    kill -INT "$server"; wait "$server" || true
    python3 - "$dir" "$n" "$max_p99" "$s0" "$s1" "$b0" "$b1" "$t0" "$t1" <<'EOF'
import json, sys
d, n, max_p99 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s0, s1, b0, b1, t0, t1 = map(float, sys.argv[4:10])
def read(f):  # shard -> (count, within 33 ms)
    return {l.split()[0]: tuple(map(float, l.split()[2:4])) for l in open(f"{d}/{f}")}
a, b = read("ticks-start.txt"), read("ticks-end.txt")
within = min(
    ((b[s][1] - a.get(s, (0, 0))[1]) / max(b[s][0] - a.get(s, (0, 0))[0], 1) for s in b),
    default=0.0,
)
r = json.load(open(f"{d}/report/report.json"))
after = r.get("after_ramp") or {}
lat = after.get("latency", {})
p99 = lat.get("input_ack", {}).get("p99_ms", float("inf"))
cmd = lat.get("command", {}).get("p99_ms", float("nan"))
errors = after.get("errors", 0)
wall = max(t1 - t0, 1e-9)
ok = p99 <= max_p99 and within >= 0.95 and errors == 0 and r["peak_connected"] >= n
line = (f"{n:5d} players: input-to-ack p99 {p99:7.1f} ms, telnet command p99 {cmd:7.1f} ms, "
        f"errors {errors}, worst shard {100 * within:5.1f} % of ticks within 33 ms, "
        f"server core {100 * (s1 - s0) / wall:3.0f} % busy, bot core {100 * (b1 - b0) / wall:3.0f} % "
        f"-> {'pass' if ok else 'FAIL'}")
print(line)
open(f"{d}/summary.txt", "w").write(line + "\n")
sys.exit(0 if ok else 1)
EOF
}

echo "capacity: scenario $scenario, ramp $ramp/s, hold $hold s, server on core 0, bots on core 1" \
    | tee "$out/summary.txt"
best=0
for n in $steps; do
    if step "$n" | tee -a "$out/summary.txt"; then
        best=$n
    else
        break
    fi
done
echo "players per server core ($scenario): $best" | tee -a "$out/summary.txt"
