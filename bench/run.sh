#!/usr/bin/env bash
# hanfs vs rsync: one real image update (bench/make-images.sh: Debian minbase v1 -> v2) sent to 1, 2 and 4
# receivers on loopback, in the same run:
#   - hanfs: `hanfs sync` to N `hanfs agent` processes (plain TCP on loopback, like the rsync daemon;
#     set TLS=1 for mutual TLS);
#   - rsync: `rsync -aHAX --numeric-ids --delete --no-whole-file` to N rsync daemons, run in parallel.
# Both start with every receiver at v1 (sent the same way, timed as "initial") and the source at v2.
# Bytes on the wire: hanfs' frame bytes (its JSON `bytes_sent`); rsync's "Total bytes sent" plus
# "received" (its receivers send block checksums back over the same link).
# After the update every replica of both tools is walked and compared with the source
# (bench/scale-verify.py); a difference fails the run. The rsync daemons run with `use chroot = yes`:
# without it rsyncd rewrites absolute symlinks (issue #11 point 7).
# Usage: bench/run.sh [CACHE_DIR]   (needs root, a release build: cargo build --release -p hanfs)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${1:-${HANFS_BENCH_CACHE:-/var/cache/hanfs-bench}}
HANFS=${HANFS:-$(cd "$(dirname "$0")/.." && pwd)/target/release/hanfs}
SNS=${SNS:-"1 2 4"}
TLS=${TLS:-0}
RSYNC_OPTS=(-aHAX --numeric-ids --delete --no-whole-file --stats)
[ -x "$HANFS" ] || { echo "no hanfs binary at $HANFS (cargo build --release -p hanfs, or set HANFS)" >&2; exit 1; }
[ -e "$CACHE/v2/.done" ] || { echo "no images in $CACHE: run bench/make-images.sh first" >&2; exit 1; }
WORK=$(mktemp -d /var/tmp/hanfs-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
IMG=netboot/debian12/x86_64/compute/rootimg

now() { date +%s.%N; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
copy_into() { rsync -aHAX --numeric-ids --delete "$1"/ "$2"/; }  # local, untimed: sets the source version

printf '%-6s %-4s %-10s %10s %14s\n' tool sns phase seconds wire_bytes
result() { printf '%-6s %-4s %-10s %10.2f %14d\n' "$@"; echo "$*" >> "${RESULTS:-/dev/null}"; }

for n in $SNS; do
  # ---- hanfs ----
  d="$WORK/hanfs$n"; mkdir -p "$d/src/$IMG"
  if [ "$TLS" = 1 ]; then
    "$HANFS" ca init "$d/ca" >/dev/null; "$HANFS" ca issue "$d/ca" --name mn >/dev/null
    printf '[cluster]\nsource_root = "%s/src"\nstate_dir = "%s/mn"\n[tls]\nca = "%s/ca/ca.pem"\ncert = "%s/ca/mn.pem"\nkey = "%s/ca/mn.key"\n' "$d" "$d" "$d" "$d" "$d" > "$d/cluster.toml"
  else
    printf '[cluster]\nsource_root = "%s/src"\nstate_dir = "%s/mn"\nplaintext_loopback = true\n' "$d" "$d" > "$d/cluster.toml"
  fi
  for i in $(seq 1 "$n"); do
    p=$(port); mkdir -p "$d/sn$i"
    { printf 'listen = "127.0.0.1:%s"\nroot = "%s/sn%s/root"\nstate_dir = "%s/sn%s/state"\nexports_file = "%s/sn%s/exports"\nreload = []\n' "$p" "$d" "$i" "$d" "$i" "$d" "$i"
      if [ "$TLS" = 1 ]; then "$HANFS" ca issue "$d/ca" --name "sn$i" >/dev/null
        printf '[tls]\nca = "%s/ca/ca.pem"\ncert = "%s/ca/sn%s.pem"\nkey = "%s/ca/sn%s.key"\n' "$d" "$d" "$i" "$d" "$i"
      else echo 'plaintext_loopback = true'; fi; } > "$d/sn$i/agent.toml"
    "$HANFS" --config "$d/sn$i/agent.toml" agent 2>"$d/sn$i/log" & PIDS+=($!)
    printf '[[sn]]\nname = "sn%s"\naddress = "127.0.0.1"\nagent = "127.0.0.1:%s"\nroot = "%s/sn%s/root"\n' "$i" "$p" "$d" "$i" >> "$d/cluster.toml"
  done
  printf '[[image]]\nname = "debian12"\npath = "%s"\nclients = "*"\n' "$IMG" >> "$d/cluster.toml"
  sleep 0.5
  for phase in initial update; do
    if [ $phase = initial ]; then copy_into "$CACHE/v1" "$d/src/$IMG"; else copy_into "$CACHE/v2" "$d/src/$IMG"; fi
    sync; t0=$(now)
    "$HANFS" --json --config "$d/cluster.toml" sync > "$d/$phase.json" || { echo "hanfs sync failed" >&2; cat "$d/$phase.json" >&2; exit 1; }
    t1=$(now)
    result hanfs "$n" $phase "$(python3 -c "print($t1 - $t0)")" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_sent"])' "$d/$phase.json")"
  done
  "$HANFS" --config "$d/cluster.toml" verify >/dev/null || { echo "hanfs verify failed" >&2; exit 1; }
  reps=(); for i in $(seq 1 "$n"); do reps+=("$d/sn$i/root/$IMG"); done
  "$HERE/scale-verify.py" --ignore .hanfs "$d/src/$IMG" "${reps[@]}" >&2

  # ---- rsync ----
  r="$WORK/rsync$n"; mkdir -p "$r/src"
  ports=()
  for i in $(seq 1 "$n"); do
    p=$(port); mkdir -p "$r/sn$i"; ports+=("$p")
    printf 'pid file = %s/sn%s.pid\nuse chroot = yes\n[img]\npath = %s/sn%s\nread only = false\nuid = root\ngid = root\n' "$r" "$i" "$r" "$i" > "$r/sn$i.conf"
    rsync --daemon --no-detach --address=127.0.0.1 --port="$p" --config="$r/sn$i.conf" & PIDS+=($!)
  done
  sleep 0.5
  for phase in initial update; do
    if [ $phase = initial ]; then copy_into "$CACHE/v1" "$r/src"; else copy_into "$CACHE/v2" "$r/src"; fi
    sync; t0=$(now)
    cl=()
    for i in $(seq 1 "$n"); do
      rsync "${RSYNC_OPTS[@]}" "$r/src/" "rsync://127.0.0.1:${ports[$((i-1))]}/img/" > "$r/$phase.$i.stats" & cl+=($!)
    done
    wait_fail=0
    for c in "${cl[@]}"; do wait "$c" || wait_fail=1; done
    t1=$(now)
    [ $wait_fail = 0 ] || { echo "rsync failed" >&2; exit 1; }
    bytes=$(cat "$r"/$phase.*.stats | awk -F': ' '/^Total bytes (sent|received)/ {gsub(",","",$2); s+=$2} END {print s}')
    result rsync "$n" $phase "$(python3 -c "print($t1 - $t0)")" "$bytes"
  done
  reps=(); for i in $(seq 1 "$n"); do reps+=("$r/sn$i"); done
  "$HERE/scale-verify.py" "$r/src" "${reps[@]}" >&2
done
