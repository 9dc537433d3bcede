#!/bin/bash
# Small-file create+write+fsync+rename rate of the kernel NFS client against kernel nfsd (`sync`
# export), hanfs' read-write statelite area replicated synchronously to a backup, and the same
# area without a backup, in one UML rig run (integration/rig/guest/statelite-bench.sh); prints
# the median of the rounds per server and client count, and each ratio to kernel nfsd.
#   HANFS=target/release/hanfs bench/statelite.sh     (`make bench-statelite`)
# env: ROUNDS (3), CLIENTS (100), HANFS_RIG_DIR
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
HANFS_RIG_BENCH=statelite HANFS_RIG_BENCH_ROUNDS=${ROUNDS:-3} HANFS_RIG_BENCH_CLIENTS=${CLIENTS:-100} \
    HANFS_RIG_MEM=${HANFS_RIG_MEM:-1024} HANFS_RIG_TIMEOUT=${HANFS_RIG_TIMEOUT:-1800} \
    "$HERE/../integration/run.sh" > "$out" 2>&1
rc=$?
grep -E '^(PASS|FAIL|SKIP)|rig-figure: statelite-bench' "$out"
python3 - "$out" <<'PY'
import re, statistics, sys
runs = {}
for l in open(sys.argv[1]):
    m = re.search(r"statelite-bench (\w) round=\d+ clients=(\d+) files=\d+ rate=([\d.]+)/s p50=([\d.]+)ms p99=([\d.]+)ms", l)
    if m:
        runs.setdefault((m[1], int(m[2])), []).append((float(m[3]), float(m[4]), float(m[5])))
name = {"k": "kernel nfsd (NFSv4.0, sync export)", "h": "hanfs rw area, replicated", "u": "hanfs rw area, no backup"}
print("| server | clients | files/s (median) | p50 ms | p99 ms | vs kernel nfsd |")
print("|---|---|---|---|---|---|")
for c in sorted({c for _, c in runs}):
    k = runs.get(("k", c))
    for s in "khu":
        r = runs.get((s, c))
        if not r:
            continue
        rate = statistics.median(x[0] for x in r)
        ratio = "%.2fx" % (rate / statistics.median(x[0] for x in k)) if k else "-"
        print("| %s | %d | %.1f | %.1f | %.1f | %s |" % (name[s], c, rate, statistics.median(x[1] for x in r),
                                                    statistics.median(x[2] for x in r), ratio))
PY
exit $rc
