#!/usr/bin/env python3
"""Prints the shards' tick histograms from a Prometheus text scrape on
stdin, one line per shard: "shard sum_seconds count within_33ms". Used by
scripts/crowd.sh and scripts/capacity.sh."""
import re
import sys

sums, counts, within = {}, {}, {}
for line in sys.stdin:
    m = re.match(r"tessera_shard_tick_seconds_(sum|count|bucket)\{(.*)\} (\S+)", line)
    if not m:
        continue
    kind, labels, value = m.groups()
    shard = re.search(r"shard=\"([^\"]+)\"", labels).group(1)
    if kind == "sum":
        sums[shard] = float(value)
    elif kind == "count":
        counts[shard] = float(value)
    elif 'le="0.033"' in labels:
        within[shard] = float(value)
for s in sorted(counts):
    print(s, sums.get(s, 0.0), counts[s], within.get(s, 0.0))
