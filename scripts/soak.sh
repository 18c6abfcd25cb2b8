#!/usr/bin/env bash
# Soak (docs/performance.md, "Soak"): a process cluster on this machine
# against a real etcd, under a mixed bot swarm with churn, for --minutes
# (30). Every --interval seconds (60) it samples, per process, RSS
# (/proc/PID/status VmRSS), open file descriptors (/proc/PID/fd), threads
# and CPU time, and for the cluster the etcd keys under the prefix (and per
# directory), etcd's leases, revision and database size, and the size of
# the persistence service's data dir. Writes samples.csv and report.md
# (growth per hour of every series: the least-squares slope over the
# samples after --warmup minutes, 5) to --out (target/soak), with the
# bots' own report and every process's log.
#
# The cluster follows docs/operations.md, "Run as a cluster": an etcd CA
# and a client certificate per role (openssl), etcd over TLS with client
# certificates and auto-compaction as in k8s/base/etcd.yaml, `tessera
# etcd-auth`, the cluster CA and a member certificate per role (`tessera
# ca init`, `tessera ca issue`), a first operator, then `tessera
# persistence`, `auth`, `chat`, `asset`, one coordinator, two shards and
# one router, every role with its defaults (leases, checkpoint interval,
# rebalancing). The swarm is `tessera bots --scenario mix`: wander,
# border, chat, flock, churn and login-storm dealt out in turn. Everything
# listens on 127.0.0.1, on ports the kernel picks. Every process is
# stopped on exit (also on Ctrl-C).
#
# Usage: scripts/soak.sh [--minutes 30] [--interval 60] [--warmup 5]
#                        [--quic 100] [--telnet 50] [--seed 7]
#                        [--out target/soak] [--no-build | --bin PATH]
#                        [--etcd-compaction 1h|none|DURATION] [--scenario mix]
#                        [--backup-at "MIN ..."]
# (--etcd-compaction: etcd's periodic auto-compaction retention, 1h as in
# k8s/base/etcd.yaml; none runs etcd without it. --scenario: another
# `tessera bots` scenario than mix. --backup-at: run `tessera ctl backup`
# against the persistence service at these minutes of the swarm, as an
# operator would; its output goes to logs/backup.log.)
# (--bin: run that tessera binary instead of building the release one.)
# Not part of CI. Needs etcd and etcdctl (Debian: etcd-server,
# etcd-client; installed with apt-get when missing and run as root),
# openssl, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

minutes=30 interval=60 warmup=5 quic=100 telnet=50 seed=7 out=target/soak build=1 bin="" compaction=1h scenario=mix backup_at=""
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=$2; shift 2 ;;
        --interval) interval=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --quic) quic=$2; shift 2 ;;
        --telnet) telnet=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --etcd-compaction) compaction=$2; shift 2 ;;
        --scenario) scenario=$2; shift 2 ;;
        --backup-at) backup_at=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --bin) bin=$2; build=0; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
after_s=30          # the "after" sample: this long after the swarm left
ready_timeout=120   # seconds each process gets to come up

say() { echo "soak: $*" >&2; }

# ------------------------------------------------------------ tools
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing etcd-server and etcd-client"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
    else
        say "needs etcd and etcdctl (Debian: apt-get install etcd-server etcd-client)"; exit 2
    fi
fi
for tool in openssl curl python3; do
    command -v $tool >/dev/null || { say "needs $tool"; exit 2; }
done

if [ "$build" = 1 ]; then
    say "building tessera (release)"
    CARGO_INCREMENTAL=0 cargo build --release --bin tessera
fi
bin=${bin:-$root/target/release/tessera}
[ -x "$bin" ] || { say "no $bin (drop --no-build)"; exit 2; }

# ------------------------------------------------------------ the run's directory
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    if [ -f "$out/.soak" ]; then
        rm -rf "$out"
    else
        say "$out exists and is not a soak directory; give another --out"; exit 2
    fi
fi
mkdir -p "$out/logs" "$out/etcd-pki" "$out/members"
out=$(cd "$out" && pwd)
touch "$out/.soak"
: >"$out/procs.tsv"
: >"$out/exits.env"

# ------------------------------------------------------------ cleanup
pids=()      # started processes, in start order
names=()
helpers=()   # background helpers (the backup timer), not sampled
stop_procs() {
    # Only this shell's running jobs: a pid of ours that has exited may be someone else's now.
    local h running
    running=" $(jobs -pr | tr '\n' ' ') "
    for h in "${helpers[@]}"; do
        [[ $running == *" $h "* ]] && kill -TERM "$h" 2>/dev/null
    done
    helpers=()
    [ ${#pids[@]} -eq 0 ] && return 0
    say "stopping every process"
    # Newest first: the bots, the router, the shards (they drain, at most
    # 10 s here), the coordinator, the services, etcd last.
    local i
    for (( i=${#pids[@]}-1; i>=0; i-- )); do
        local pid=${pids[$i]} name=${names[$i]}
        if [[ $running != *" $pid "* ]]; then
            local code=0
            wait "$pid" 2>/dev/null || code=$?
            [ "$name" = bots ] || echo "${name//-/_}=$code (exited before the cleanup)" >>"$out/exits.env"
            continue
        fi
        kill -TERM "$pid" 2>/dev/null || true
        local waited=0
        while kill -0 "$pid" 2>/dev/null && [ $waited -lt 150 ]; do
            sleep 0.2; waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name ($pid) did not stop within 30 s: kill -9"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        local code=0
        wait "$pid" 2>/dev/null || code=$?
        echo "${name//-/_}=$code" >>"$out/exits.env"
    done
    pids=(); names=()
}
on_exit() {
    local status=$?
    trap - EXIT INT TERM
    stop_procs
    exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME METRICS_URL CMD...: runs CMD in the background, logging to logs/NAME.log
start() {
    local name=$1 metrics=$2; shift 2
    echo "$*" >"$out/logs/$name.cmd"
    "$@" >"$out/logs/$name.log" 2>&1 </dev/null &
    local pid=$!
    pids+=("$pid"); names+=("$name")
    printf '%s\t%s\t%s\n' "$name" "$pid" "$metrics" >>"$out/procs.tsv"
    say "started $name (pid $pid)"
}

# wait_http NAME URL: until URL answers 200 (or NAME's process died)
wait_http() {
    local name=$1 url=$2 i pid
    pid=$(awk -F'\t' -v n="$name" '$1 == n { print $2 }' "$out/procs.tsv")
    for (( i=0; i<ready_timeout*5; i++ )); do
        curl -sf -o /dev/null --max-time 2 "$url" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            say "$name exited while starting; its log:"; tail -20 "$out/logs/$name.log" >&2; exit 1
        fi
        sleep 0.2
    done
    say "$name not ready at $url within ${ready_timeout} s; its log:"
    tail -20 "$out/logs/$name.log" >&2
    exit 1
}

# ------------------------------------------------------------ ports
mapfile -t ports < <(python3 scripts/soak.py ports 20)
p=0
port() { echo "${ports[$p]}"; }
next() { p=$((p + 1)); }
etcd_client=$(port); next; etcd_peer=$(port); next; etcd_metrics=$(port); next
pers_listen=$(port); next; pers_metrics=$(port); next
auth_listen=$(port); next; auth_metrics=$(port); next
chat_listen=$(port); next; chat_metrics=$(port); next
asset_listen=$(port); next; asset_metrics=$(port); next
coord_metrics=$(port); next
shard1_bus=$(port); next; shard1_metrics=$(port); next
shard2_bus=$(port); next; shard2_metrics=$(port); next
router_bus=$(port); next; router_metrics=$(port); next
router_telnet=$(port); next; router_quic=$(port); next
L=127.0.0.1

# ------------------------------------------------------------ etcd's PKI (docs/deploy.md, "etcd certificates")
say "etcd certificates"
(
    cd "$out/etcd-pki"
    EC="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    openssl req -x509 $EC -days 30 -subj "/CN=tessera soak etcd CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -new $EC -subj "/CN=etcd" -keyout server-key.pem -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
        -out server.pem -extfile server.ext 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    client() { # client FILE CN
        openssl req -new $EC -subj "/CN=$2" -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
        openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
            -out "$1.pem" -extfile client.ext 2>/dev/null
    }
    client root root
    client ctl tessera-ctl
    for role in coordinator shard router persistence auth asset; do client "$role" "tessera-$role"; done
)
etcd_url=https://$L:$etcd_client
PKI=$out/etcd-pki
etcd_as() { # etcd_as USER: the --etcd flags of that etcd user
    echo "--etcd $etcd_url --etcd-ca $PKI/ca.pem --etcd-cert $PKI/$1.pem --etcd-key $PKI/$1-key.pem"
}
prefix=/tessera/
cat >"$out/etcd.env" <<EOF
ETCD_URL=$etcd_url
ETCD_CA=$PKI/ca.pem
ETCD_ROOT_CERT=$PKI/root.pem
ETCD_ROOT_KEY=$PKI/root-key.pem
PREFIX=$prefix
EOF

# ------------------------------------------------------------ etcd
compaction_flags=""
if [ "$compaction" != none ]; then
    compaction_flags="--auto-compaction-mode periodic --auto-compaction-retention $compaction"
fi
# etcd reads ETCD_* variables too and refuses a flag given both ways.
for v in $(env | awk -F= '/^ETCD_/ { print $1 }'); do unset "$v"; done
start etcd "" etcd --name soak --data-dir "$out/etcd-data" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://$L:$etcd_peer" --initial-advertise-peer-urls "http://$L:$etcd_peer" \
    --initial-cluster "soak=http://$L:$etcd_peer" --initial-cluster-token tessera-soak \
    --cert-file "$PKI/server.pem" --key-file "$PKI/server-key.pem" \
    --client-cert-auth --trusted-ca-file "$PKI/ca.pem" \
    --listen-metrics-urls "http://$L:$etcd_metrics" \
    $compaction_flags --quota-backend-bytes 2147483648 --logger zap
wait_http etcd "http://$L:$etcd_metrics/health"

# ------------------------------------------------------------ etcd users, the cluster CA, members, an operator
say "tessera etcd-auth"
# shellcheck disable=SC2046
"$bin" etcd-auth $(etcd_as root) --prefix "$prefix" >"$out/logs/etcd-auth.log" 2>&1
"$bin" ca init "$out/ca" >/dev/null
for role in coordinator shard router persistence auth chat asset; do
    "$bin" ca issue --role $role --name $role --cluster-ca "$out/ca" --out "$out/members/$role" >/dev/null
done
# shellcheck disable=SC2046
"$bin" ca operator soak --cluster-ca "$out/ca" $(etcd_as ctl) --prefix "$prefix" \
    --out "$out/operator-soak.json" >/dev/null

# ------------------------------------------------------------ the cluster
W="--world $root/worlds/default"
M=$out/members
# shellcheck disable=SC2046
start persistence "http://$L:$pers_metrics/metrics" "$bin" persistence --cluster-ca "$M/persistence" \
    --listen "$L:$pers_listen" --data-dir "$out/persistence-data" --metrics "$L:$pers_metrics" \
    $(etcd_as persistence) --prefix "$prefix"
wait_http persistence "http://$L:$pers_metrics/readyz"
# shellcheck disable=SC2046
start auth "http://$L:$auth_metrics/metrics" "$bin" auth --cluster-ca "$M/auth" --listen "$L:$auth_listen" \
    --persistence "$L:$pers_listen" --data-dir "$out/auth-data" --metrics "$L:$auth_metrics" \
    $(etcd_as auth) --prefix "$prefix"
start chat "http://$L:$chat_metrics/metrics" "$bin" chat --cluster-ca "$M/chat" --listen "$L:$chat_listen" \
    --persistence "$L:$pers_listen" --data-dir "$out/chat-data" --metrics "$L:$chat_metrics"
# shellcheck disable=SC2046
start asset "http://$L:$asset_metrics/metrics" "$bin" asset --cluster-ca "$M/asset" --listen "$L:$asset_listen" \
    --persistence "$L:$pers_listen" --data-dir "$out/asset-data" --metrics "$L:$asset_metrics" \
    $(etcd_as asset) --prefix "$prefix"
wait_http auth "http://$L:$auth_metrics/readyz"
wait_http chat "http://$L:$chat_metrics/readyz"
wait_http asset "http://$L:$asset_metrics/readyz"
# shellcheck disable=SC2046
start coordinator "http://$L:$coord_metrics/metrics" "$bin" coordinator $(etcd_as coordinator) \
    --prefix "$prefix" $W --metrics "$L:$coord_metrics" --cluster-ca "$M/coordinator" --id coordinator-a
wait_http coordinator "http://$L:$coord_metrics/healthz"
for i in 1 2; do
    bus_var=shard${i}_bus metrics_var=shard${i}_metrics
    # shellcheck disable=SC2046
    start shard-$i "http://$L:${!metrics_var}/metrics" "$bin" shard $(etcd_as shard) --prefix "$prefix" $W \
        --metrics "$L:${!metrics_var}" --cluster-ca "$M/shard" --cluster-listen "$L:${!bus_var}" \
        --id shard-$i --persistence "$L:$pers_listen" --assets "http://$L:$asset_listen" \
        --drain-timeout-secs 10
done
wait_http shard-1 "http://$L:$shard1_metrics/readyz"
wait_http shard-2 "http://$L:$shard2_metrics/readyz"
# shellcheck disable=SC2046
start router "http://$L:$router_metrics/metrics" "$bin" router $(etcd_as router) --prefix "$prefix" $W \
    --metrics "$L:$router_metrics" --cluster-ca "$M/router" --cluster-listen "$L:$router_bus" \
    --id router-1 --telnet "$L:$router_telnet" --quic "$L:$router_quic" --data-dir "$out/router-data" \
    --persistence "$L:$pers_listen" --auth "$L:$auth_listen" --chat "$L:$chat_listen"
wait_http router "http://$L:$router_metrics/readyz"
for (( i=0; i<ready_timeout*5; i++ )); do
    [ -f "$out/router-data/quic-cert.der" ] && grep -q 'telnet listening on\|quic listening on' "$out/logs/router.log" && break
    sleep 0.2
done
# shellcheck disable=SC2046
"$bin" ctl $(etcd_as ctl) --prefix "$prefix" status >"$out/status-before.txt" 2>&1 || true
say "cluster up: $(tr '\n' ' ' <"$out/status-before.txt")"

cat >"$out/settings.env" <<EOF
MINUTES=$minutes
INTERVAL_S=$interval
WARMUP_MIN=$warmup
SWARM=$quic QUIC + $telnet telnet bots, scenario $scenario, seed $seed
BACKUPS_AT_MIN=${backup_at:-none}
CLUSTER=etcd 3.4 (TLS, client certs, auth on, auto-compaction $compaction), persistence (redb), auth, chat, asset, 1 coordinator, 2 shards, 1 router; default leases and checkpoint interval
CORES=$(nproc)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' with uncommitted changes')
AFTER_S=$after_s
EOF

# ------------------------------------------------------------ baseline, swarm, samples
sleep 10
python3 scripts/soak.py sample "$out" baseline
duration=$(( minutes * 60 + interval / 2 + 15 ))
date +%s.%N >"$out/t0"
# shellcheck disable=SC2046
start bots "" "$bin" bots --quic "$quic" --telnet "$telnet" --scenario "$scenario" --seed "$seed" \
    --duration "$duration" --ramp 10 --quic-addr "$L:$router_quic" --cert "$out/router-data/quic-cert.der" \
    --telnet-addr "$L:$router_telnet" --report "$out/bots-report" --no-progress \
    $(etcd_as ctl) --prefix "$prefix"
bots_pid=${pids[-1]}
if [ -n "$backup_at" ]; then
    # An operator's backups of the running cluster: a ctl member certificate and the operator.
    "$bin" ca issue --role ctl --name ctl --cluster-ca "$out/ca" --out "$M/ctl" >/dev/null
    (
        for m in $backup_at; do
            sleep "$(python3 -c "import time; print(max(0, $(cat "$out/t0") + $m * 60 - time.time()))")"
            echo "backup at minute $m: $(date -u +%FT%TZ)"
            "$bin" ctl backup "$out/backup-$m.backup" --persistence "$L:$pers_listen" \
                --cluster-ca "$M/ctl" --credential "$out/operator-soak.json" 2>&1 || true
        done
    ) >"$out/logs/backup.log" 2>&1 &
    helpers+=($!)
fi
# In the background and waited for, so that a SIGTERM to this script is acted on at once.
python3 scripts/soak.py run "$out" --minutes "$minutes" --interval "$interval" --until-pid "$bots_pid" &
sampler=$!
helpers+=("$sampler")
wait "$sampler"
bots_code=0
wait "$bots_pid" || bots_code=$?
echo "bots=$bots_code" >>"$out/exits.env"
cp "$out/logs/bots.log" "$out/bots.txt"
say "the swarm exited ($bots_code); the 'after' sample in ${after_s} s"
sleep "$after_s" & wait $!
python3 scripts/soak.py sample "$out" after
# shellcheck disable=SC2046
"$bin" ctl $(etcd_as ctl) --prefix "$prefix" status >"$out/status-after.txt" 2>&1 || true

# ------------------------------------------------------------ report
stop_procs   # first, so the report has every exit code
python3 scripts/soak.py report "$out" --warmup-min "$warmup"
say "samples: $out/samples.csv; report: $out/report.md"
