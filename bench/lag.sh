#!/usr/bin/env bash
# Replication lag of a kernel-nfsd statelite area (`[[statelite_kernel]]`, issue 13 point 4): a
# primary and a backup agent in one process (crates/agent/examples/kwatch_lag.rs), mutual TLS on
# loopback; a writer appends one small line per write to <node>/var/log/app.log, RATE writes per
# second spread over NODES node directories for SECS seconds; an observer watching the backup's
# copy (inotify) records, per write, when its line appeared there minus when it was written (one
# clock). Prints p50, p99 and max. Release build. Env: SECS=60 RATE=100 NODES=100 DEBOUNCE_MS=100
# DIR=/var/tmp (where the trees live; removed afterwards).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/.."
DIR=${DIR:-/var/tmp}
HANFS_BENCH_SECS=${SECS:-60} HANFS_BENCH_RATE=${RATE:-100} HANFS_BENCH_NODES=${NODES:-100} \
HANFS_BENCH_DEBOUNCE_MS=${DEBOUNCE_MS:-100} HANFS_BENCH_DIR=$DIR \
  ${CARGO:-cargo} run --release --locked -q -p agent --example kwatch_lag
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))," \
  "$(df -T "$DIR" | awk 'NR==2 {print $2}') at $DIR, kernel $(uname -r)"
