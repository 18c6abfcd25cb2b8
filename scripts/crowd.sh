#!/usr/bin/env bash
# The crowd measurement of docs/performance.md ("Crowds"): `tessera up
# --shards 4 --spawn-radius 100` on this machine, a swarm of QUIC and
# telnet bots converging into cell 0,0 (`--scenario crowd`), once with
# splitting off (`--no-split`) and once with it on. Server and bots share
# the machine. Reported over the second half of the crowd (after the ramp),
# from the server's own metrics:
#   - each shard's share of all tick work (the tick time it spent);
#   - each shard's ticks within the 33 ms budget;
#   - the swarm's input-to-ack p99 and errors (its report.json);
#   - with --disperse, how long the split regions took to merge back.
#
# Usage: scripts/crowd.sh [--quic N] [--telnet N] [--duration S]
#                         [--disperse S] [--only split|nosplit] [--out DIR]
#                         [--split-above F]
# Defaults: 300 QUIC + 100 telnet, 75 s, no dispersal, both runs, out
# target/crowd. Builds the release binary first. Not part of CI (minutes
# of full load).
set -euo pipefail
cd "$(dirname "$0")/.."

quic=300 telnet=100 duration=75 disperse="" only="" out=target/crowd split_above=
while [ $# -gt 0 ]; do
    case "$1" in
        --quic) quic=$2; shift 2 ;;
        --telnet) telnet=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --disperse) disperse=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --split-above) split_above=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

cargo build --release -p tessera --locked
bin=$PWD/target/release/tessera
mkdir -p "$out"

# The shard tick histograms: "shard sum count within_33ms" lines.
scrape() {
    curl -sf "http://127.0.0.1:$1/metrics" | python3 scripts/shard-ticks.py
}

run() { # run <name> [extra tessera up flags]
    local name=$1; shift
    local dir=$out/$name
    rm -rf "$dir"; mkdir -p "$dir"
    "$bin" up --data-dir "$dir/data" --shards 4 --spawn-radius 100 \
        --telnet 127.0.0.1:24000 --quic 127.0.0.1:24433 --metrics 127.0.0.1:29100 \
        --assets-listen 127.0.0.1:27400 "$@" >"$dir/server.log" 2>&1 &
    local server=$!
    for _ in $(seq 100); do
        [ -f "$dir/data/quic-cert.der" ] && curl -sf http://127.0.0.1:29100/metrics >/dev/null && break
        sleep 0.1
    done
    local extra=()
    [ -n "$disperse" ] && extra=(--disperse-after "$disperse")
    date +%s.%N >"$dir/bots-started.txt"
    "$bin" bots --quic "$quic" --telnet "$telnet" --quic-addr 127.0.0.1:24433 \
        --cert "$dir/data/quic-cert.der" --telnet-addr 127.0.0.1:24000 \
        --scenario crowd --duration "$duration" --report "$dir/report" --no-progress \
        "${extra[@]}" >"$dir/bots.log" 2>&1 &
    local bots=$!
    # The second half of the crowd: from half the run (or of the time
    # before dispersal) to its end.
    local until=$duration
    [ -n "$disperse" ] && until=$disperse
    sleep $(( until / 2 ))
    scrape 29100 >"$dir/ticks-start.txt"
    sleep $(( until - until / 2 ))
    scrape 29100 >"$dir/ticks-end.txt"
    wait "$bots" || true
    if [ -n "$disperse" ]; then
        # Wait until every split is merged back (at most 90 s after the run).
        for _ in $(seq 90); do
            curl -sf http://127.0.0.1:29100/metrics | python3 -c '
import re, sys
n = {"split": 0, "merge": 0}
for line in sys.stdin:
    m = re.match(r"tessera_coordinator_reshapes_total\{op=\"(\w+)\"\} (\S+)", line)
    if m:
        n[m.group(1)] = float(m.group(2))
sys.exit(0 if n["split"] > 0 and n["merge"] >= n["split"] else 1)
' && break
            sleep 1
        done
    fi
    curl -sf http://127.0.0.1:29100/metrics >"$dir/metrics-end.txt" || true
    kill -INT "$server"; wait "$server" || true
    python3 - "$dir" "$disperse" <<'EOF'
import json, re, sys, datetime
d, disperse = sys.argv[1], sys.argv[2]
def read(f):
    out = {}
    for line in open(f"{d}/{f}"):
        s, total, count, within = line.split()
        out[s] = (float(total), float(count), float(within))
    return out
a, b = read("ticks-start.txt"), read("ticks-end.txt")
work = {s: b[s][0] - a.get(s, (0, 0, 0))[0] for s in b}
ticks = {s: b[s][1] - a.get(s, (0, 0, 0))[1] for s in b}
within = {s: b[s][2] - a.get(s, (0, 0, 0))[2] for s in b}
total = sum(work.values()) or 1.0
report = json.load(open(f"{d}/report/report.json"))
def find(obj, key):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            else:
                yield from find(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from find(v, key)
lines = [f"run {d}"]
for s in sorted(work):
    lines.append(f"  {s}: {100 * work[s] / total:5.1f}% of tick work, "
                 f"{100 * within[s] / max(ticks[s], 1):5.1f}% of {int(ticks[s])} ticks within 33 ms, "
                 f"mean tick {1000 * work[s] / max(ticks[s], 1):.1f} ms")
log = open(f"{d}/server.log").read()
log = re.sub(r"\x1b\[[0-9;]*m", "", log)
splits = log.count("op=split by=")
merges = log.count("op=merge by=")
lines.append(f"  splits {splits}, merges {merges}")
if disperse and merges:
    first_split = re.search(r"^(\S+) .*op=split by=", log, re.M)
    last_merge = re.findall(r"^(\S+) .*op=merge by=", log, re.M)
    started = float(open(f"{d}/bots-started.txt").read())
    t = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    lines.append(f"  last merge {t(last_merge[-1]) - started - float(disperse):.0f} s after the crowd began to disperse")
summary = open(f"{d}/bots.log").read()
for l in summary.splitlines():
    if l.startswith(("input to ack", "command to answer", "connect + login", "errors", "Swarm", "after the ramp")):
        lines.append("  " + l)
text = "\n".join(lines)
print(text)
open(f"{d}/summary.txt", "w").write(text + "\n")
EOF
}

[ "$only" != split ] && run nosplit --no-split
split_flags=()
[ -n "$split_above" ] && split_flags=(--split-above "$split_above")
[ "$only" != nosplit ] && run split "${split_flags[@]}"
exit 0
