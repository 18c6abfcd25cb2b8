#!/usr/bin/env python3
"""Helper of scripts/soak.sh (docs/performance.md, "Soak").

    soak.py ports N              N loopback ports, each free for TCP and UDP
    soak.py sample DIR PHASE     one sample (baseline, after) into DIR/samples.csv
    soak.py run DIR --minutes M [--interval S] [--until-pid PID]
                                 a sample every S seconds (60) from DIR/t0 on,
                                 for M minutes or until PID exits
    soak.py report DIR [--warmup-min W]
                                 DIR/report.md from DIR/samples.csv, the bots'
                                 report and the processes' logs

DIR holds what soak.sh wrote: procs.tsv (name, pid, metrics URL), etcd.env
(etcdctl's endpoint and root certificate, the key prefix), settings.env, t0
(unix time the swarm started), logs/, persistence-data/, etcd-data/.

Per process and sample: RSS (VmRSS), open file descriptors (/proc/PID/fd),
threads, CPU seconds. Cluster-wide: etcd keys under the prefix (and per
directory), etcd leases, etcd revision and database size, the persistence
service's data size, etcd's data dir size, router connections, world
entities and players (from the metrics endpoints), the load average.
"""

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
KNOWN_DIRS = [
    "cells", "shards", "routers", "load", "draining", "migrations",
    "reshapes", "operators", "nonces", "coordinator",
]


# ---------------------------------------------------------------- ports

def free_ports(n):
    """n distinct ports, each bound on 127.0.0.1 for TCP and UDP at once,
    then released (the kernel picks them, so no test holds them now)."""
    held, ports = [], []
    while len(ports) < n:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            t.close()
            u.close()
            continue
        held += [t, u]
        ports.append(port)
    for s in held:
        s.close()
    return ports


# ---------------------------------------------------------------- sampling

def read_env(path):
    env = {}
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v.strip().strip("'\"")
    return env


def procs(d):
    """[(name, pid, metrics_url)] from DIR/procs.tsv, in start order."""
    out = []
    for line in open(os.path.join(d, "procs.tsv")):
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 2 and parts[1].isdigit():
            out.append((parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""))
    return out


def proc_stats(pid):
    """(rss_kb, fds, threads, cpu_s) of a live process, or None."""
    try:
        rss = threads = None
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("State:") and line.split()[1] == "Z":
                return None
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stat = open(f"/proc/{pid}/stat").read()
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        return rss, fds, threads, cpu
    except (OSError, ValueError, IndexError):
        return None


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def etcdctl(env, *args):
    cmd = [
        "etcdctl", "--endpoints", env["ETCD_URL"], "--cacert", env["ETCD_CA"],
        "--cert", env["ETCD_ROOT_CERT"], "--key", env["ETCD_ROOT_KEY"],
        "--command-timeout", "10s", *args,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
                       | {"ETCDCTL_API": "3"})
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip() or f"etcdctl {args} failed")
    return r.stdout


def etcd_stats(env):
    prefix = env.get("PREFIX", "/tessera/")
    out = {}
    try:
        keys = [k for k in etcdctl(env, "get", "--prefix", prefix, "--keys-only").splitlines() if k]
        out["etcd_keys"] = len(keys)
        by_dir = {}
        for k in keys:
            d = k[len(prefix):].split("/", 1)[0] if k.startswith(prefix) else "?"
            d = d if d in KNOWN_DIRS else "other"
            by_dir[d] = by_dir.get(d, 0) + 1
        out["etcd_keys_by_dir"] = ";".join(f"{k}:{v}" for k, v in sorted(by_dir.items()))
    except Exception as e:  # noqa: BLE001 (a sample must not stop the soak)
        print(f"soak: etcd keys: {e}", file=sys.stderr)
    try:
        first = etcdctl(env, "lease", "list").splitlines()[0]
        m = re.search(r"found (\d+) leases", first)
        if m:
            out["etcd_leases"] = int(m.group(1))
    except Exception as e:  # noqa: BLE001
        print(f"soak: etcd leases: {e}", file=sys.stderr)
    try:
        st = json.loads(etcdctl(env, "endpoint", "status", "-w", "json"))[0]["Status"]
        out["etcd_revision"] = st["header"]["revision"]
        out["etcd_db_bytes"] = st.get("dbSize")
        if "dbSizeInUse" in st:
            out["etcd_db_in_use_bytes"] = st["dbSizeInUse"]
    except Exception as e:  # noqa: BLE001
        print(f"soak: etcd status: {e}", file=sys.stderr)
    return out


def scrape(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001
        return None


def metric_sum(text, name):
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            try:
                total += float(line.rsplit(" ", 1)[1])
                seen = True
            except ValueError:
                pass
    return total if seen else None


SERIES_PER_PROC = ["rss_kb", "fds", "threads", "cpu_s"]
CLUSTER_SERIES = [
    "etcd_keys", "etcd_leases", "etcd_revision", "etcd_db_bytes", "etcd_db_in_use_bytes",
    "etcd_data_bytes", "persistence_bytes", "router_connections", "entities", "players",
]


def columns(d):
    cols = ["unix", "t_min", "phase", "loadavg"]
    for name, _, _ in procs(d):
        cols += [f"{name}_{s}" for s in SERIES_PER_PROC]
    return cols + CLUSTER_SERIES + ["etcd_keys_by_dir"]


def sample(d, phase):
    row = {"unix": f"{time.time():.1f}", "phase": phase}
    t0 = os.path.join(d, "t0")
    if os.path.exists(t0):
        row["t_min"] = f"{(time.time() - float(open(t0).read())) / 60:.2f}"
    row["loadavg"] = open("/proc/loadavg").read().split()[0]
    for name, pid, metrics in procs(d):
        s = proc_stats(pid)
        if s:
            for k, v in zip(SERIES_PER_PROC, s):
                row[f"{name}_{k}"] = v
        if metrics:
            text = scrape(metrics)
            if text and name.startswith("router"):
                row["router_connections"] = metric_sum(text, "tessera_router_connections")
            if text and name.startswith("shard"):
                for col, metric in (("entities", "tessera_shard_entities"),
                                    ("players", "tessera_shard_players")):
                    v = metric_sum(text, metric)
                    if v is not None:
                        row[col] = (row.get(col) or 0) + v
    env = read_env(os.path.join(d, "etcd.env"))
    if env:
        row.update(etcd_stats(env))
    row["persistence_bytes"] = dir_bytes(os.path.join(d, "persistence-data"))
    row["etcd_data_bytes"] = dir_bytes(os.path.join(d, "etcd-data"))
    path = os.path.join(d, "samples.csv")
    cols = columns(d)
    old = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            r = csv.DictReader(f)
            if r.fieldnames != cols:  # a process joined (the bots): widen the file
                old = list(r)
    if old or not os.path.exists(path):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for o in old:
                w.writerow({c: o.get(c, "") or "" for c in cols})
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writerow({c: ("" if row.get(c) is None else row.get(c, "")) for c in cols})
    short = [f"t={row.get('t_min', '-')}min", f"keys={row.get('etcd_keys')}",
             f"leases={row.get('etcd_leases')}", f"conns={row.get('router_connections')}",
             f"persistence={row['persistence_bytes'] // 1024}KiB"]
    short += [f"{n}={row.get(f'{n}_rss_kb', 0) // 1024}MiB/{row.get(f'{n}_fds')}fd"
              for n, _, _ in procs(d)]
    print(f"soak: sample {phase}: " + " ".join(short), flush=True)


def alive(pid):
    s = proc_stats(pid)
    return s is not None


def run(d, minutes, interval, until_pid):
    t0 = float(open(os.path.join(d, "t0")).read())
    k = 0
    while k * interval <= minutes * 60 + 0.5:
        due = t0 + k * interval
        while time.time() < due:
            if until_pid and not alive(until_pid):
                print("soak: the swarm exited; sampling stops", flush=True)
                return
            time.sleep(min(1.0, max(0.0, due - time.time())))
        if until_pid and not alive(until_pid):
            print("soak: the swarm exited; sampling stops", flush=True)
            return
        sample(d, "run")
        k += 1


# ---------------------------------------------------------------- report

def fit(points):
    """Least-squares slope (per minute), intercept and R² of [(t_min, v)]."""
    n = len(points)
    if n < 3:
        return None
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    sxy = sum((t - mx) * (v - my) for t, v in points)
    syy = sum((v - my) ** 2 for _, v in points)
    slope = sxy / sxx
    r2 = (sxy * sxy) / (sxx * syy) if syy > 0 else 1.0
    return slope, my - slope * mx, r2


def human(v, unit):
    if v is None:
        return "-"
    if unit == "bytes":
        a = abs(v)
        if a >= 1 << 20:
            return f"{v / (1 << 20):.2f} MiB"
        if a >= 1 << 10:
            return f"{v / (1 << 10):.1f} KiB"
        return f"{v:.0f} B"
    if unit == "kb":
        return f"{v / 1024:.1f} MiB" if abs(v) >= 1024 else f"{v:.0f} KiB"
    if float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.2f}"


def unit_of(col):
    if col.endswith("_rss_kb"):
        return "kb"
    if col.endswith("_bytes"):
        return "bytes"
    return ""


def label(col):
    for suffix, what in (("_rss_kb", "RSS"), ("_fds", "open fds"), ("_threads", "threads")):
        if col.endswith(suffix):
            return f"{col[: -len(suffix)]} {what}"
    return col


def log_summary(path):
    """(warn lines, error lines, [(count, message)] most common)."""
    warn = err = 0
    msgs = {}
    if not os.path.exists(path):
        return 0, 0, []
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    for line in open(path, errors="replace"):
        line = ansi.sub("", line)
        m = re.search(r"\b(WARN|ERROR)\b\s+(.*)", line)
        if not m:
            continue
        if m.group(1) == "WARN":
            warn += 1
        else:
            err += 1
        msg = m.group(1) + " " + m.group(2)
        msg = re.sub(r"\d+(\.\d+)?", "N", msg)[:160]
        msgs[msg] = msgs.get(msg, 0) + 1
    top = sorted(((c, m) for m, c in msgs.items()), reverse=True)[:4]
    return warn, err, top


def report(d, warmup):
    rows = list(csv.DictReader(open(os.path.join(d, "samples.csv"))))
    settings = read_env(os.path.join(d, "settings.env"))
    t0 = float(open(os.path.join(d, "t0")).read())
    for r in rows:
        r["t"] = (float(r["unix"]) - t0) / 60
    run_rows = [r for r in rows if r["phase"] == "run"]
    fit_rows = [r for r in run_rows if r["t"] >= warmup - 0.05]
    names = [n for n, _, _ in procs(d)]
    out = []
    w = out.append
    w(f"# Soak report ({time.strftime('%Y-%m-%d %H:%M', time.localtime(t0))})\n")
    w("Settings: " + ", ".join(f"{k.lower()}={v}" for k, v in settings.items()) + ".\n")
    span = (run_rows[-1]["t"] if run_rows else 0)
    w(f"{len(run_rows)} samples over {span:.1f} min of swarm; growth is the least-squares "
      f"slope over the {len(fit_rows)} samples from minute {warmup} on, per hour. "
      f"R² says how straight the line is (near 1: steady growth; near 0: noise). "
      f"`baseline` is the idle cluster before the swarm, `after` the cluster "
      f"{settings.get('AFTER_S', '?')} s after the swarm left.\n")
    loads = [float(r["loadavg"]) for r in run_rows if r.get("loadavg")]
    if loads:
        w(f"Load average (1 min) during the run: min {min(loads):.2f}, mean "
          f"{sum(loads) / len(loads):.2f}, max {max(loads):.2f} on {os.cpu_count()} cores.\n")

    def series_table(cols, title):
        w(f"\n## {title}\n")
        w("| series | baseline | at warm-up end | last | min | max | after | growth per hour | % of mean per hour | R² |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        base = next((r for r in rows if r["phase"] == "baseline"), None)
        after = next((r for r in reversed(rows) if r["phase"] == "after"), None)
        for col in cols:
            pts = [(r["t"], float(r[col])) for r in fit_rows if r.get(col, "") != ""]
            allv = [float(r[col]) for r in run_rows if r.get(col, "") != ""]
            if not allv:
                continue
            u = unit_of(col)
            f = fit(pts)
            mean = sum(v for _, v in pts) / len(pts) if pts else 0
            g = f[0] * 60 if f else None
            pct = f"{100 * g / mean:+.1f} %" if f and mean else "-"
            gs = "-" if g is None else ("+" if g >= 0 else "-") + human(abs(g), u)
            cell = lambda r: human(float(r[col]), u) if r and r.get(col, "") != "" else "-"  # noqa: E731
            w(f"| {label(col)} | {cell(base)} | {human(pts[0][1], u) if pts else '-'} | "
              f"{human(allv[-1], u)} | {human(min(allv), u)} | {human(max(allv), u)} | "
              f"{cell(after)} | {gs} | {pct} | {f[2]:.2f} |" if f else
              f"| {label(col)} | {cell(base)} | - | {human(allv[-1], u)} | {human(min(allv), u)} | "
              f"{human(max(allv), u)} | {cell(after)} | - | - | - |")
        # A process missing from samples died.
        return

    proc_cols = []
    for n in names:
        proc_cols += [f"{n}_rss_kb", f"{n}_fds", f"{n}_threads"]
    series_table(proc_cols, "Processes")
    series_table(CLUSTER_SERIES, "Cluster")

    w("\n## etcd keys by directory\n")
    w("| sample | keys |")
    w("|---|---|")
    picks = [r for r in rows if r["phase"] != "run"] + run_rows[:: max(1, len(run_rows) // 6)]
    if run_rows and run_rows[-1] not in picks:
        picks.append(run_rows[-1])
    for r in sorted(picks, key=lambda r: float(r["unix"])):
        w(f"| {r['phase']} {r['t']:.0f} min | {r.get('etcd_keys_by_dir', '')} |")

    w("\n## CPU\n")
    w("| process | CPU during the swarm (share of one core) |")
    w("|---|---|")
    for n in names:
        pts = [(r["t"], float(r[f"{n}_cpu_s"])) for r in run_rows if r.get(f"{n}_cpu_s", "")]
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            share = (pts[-1][1] - pts[0][1]) / ((pts[-1][0] - pts[0][0]) * 60)
            w(f"| {n} | {100 * share:.0f} % |")

    w("\n## Processes: liveness and logs\n")
    w("| process | alive in every run sample | WARN lines | ERROR lines | exit at cleanup |")
    w("|---|---|---|---|---|")
    exits = read_env(os.path.join(d, "exits.env"))
    details = []
    for n in names:
        missing = [f"{r['t']:.0f}" for r in run_rows if r.get(f"{n}_rss_kb", "") == ""]
        warn, err, top = log_summary(os.path.join(d, "logs", f"{n}.log"))
        alive_s = "yes" if not missing else f"NO (missing at minute {', '.join(missing[:5])})"
        w(f"| {n} | {alive_s} | {warn} | {err} | {exits.get(n.replace('-', '_'), '-')} |")
        if top:
            details.append((n, top))
    for n, top in details:
        w(f"\nMost frequent WARN/ERROR lines of {n} (numbers as N):\n")
        for c, m in top:
            w(f"- {c} x `{m.replace('`', chr(39))}`")

    backup_log = os.path.join(d, "logs", "backup.log")
    if os.path.exists(backup_log):
        w("\n## Backups during the run\n")
        w("```")
        w(open(backup_log).read().rstrip())
        w("```")

    w("\n## The swarm's own report\n")
    bots = os.path.join(d, "bots.txt")
    text = open(bots).read() if os.path.exists(bots) else "(no bots output)"
    if "Swarm:" in text:  # the final table, without the progress lines
        text = text[text.index("Swarm:"):]
    w("```")
    w(text.rstrip())
    w("```")
    rep = os.path.join(d, "bots-report", "report.json")
    if os.path.exists(rep):
        r = json.load(open(rep))
        w(f"\nbots: peak {r.get('peak_connected')} logged in; errors {r.get('errors') or 'none'}; "
          f"exit code {exits.get('bots', '?')}.")
    open(os.path.join(d, "report.md"), "w").write("\n".join(out) + "\n")
    print(f"soak: report in {os.path.join(d, 'report.md')}")


def main(argv):
    if len(argv) >= 2 and argv[0] == "ports":
        print("\n".join(str(p) for p in free_ports(int(argv[1]))))
    elif len(argv) >= 3 and argv[0] == "sample":
        sample(argv[1], argv[2])
    elif len(argv) >= 2 and argv[0] == "run":
        opts = dict(zip(argv[2::2], argv[3::2]))
        run(argv[1], float(opts.get("--minutes", 30)), float(opts.get("--interval", 60)),
            int(opts.get("--until-pid", 0)))
    elif len(argv) >= 2 and argv[0] == "report":
        opts = dict(zip(argv[2::2], argv[3::2]))
        report(argv[1], float(opts.get("--warmup-min", 5)))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
