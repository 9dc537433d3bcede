#!/usr/bin/env bash
# Issue #11's scale rig: one image update from the MN to N SNs through shaped links, hanfs star
# (`fanout = 0`), hanfs relay (`fanout = 8`) and parallel rsync (one rsync per SN at once, as xCAT's
# prsync) in the same run. The MN, every SN and a bridge each live in their own network namespace;
# every node hangs on the bridge by a veth pair, both ends shaped by tbf (MN_RATE for the MN's link,
# SN_RATE for each SN's), the node's end also delayed by netem (LATENCY_MS, one way, when the kernel
# has sch_netem). The image is generated (bench/gen-image.py: the Debian image's entry and file-size
# mix), v2 is v1 with PERCENT% of the files rewritten, PERCENT% added and a tenth of that removed
# (bench/update-image.py; 20 by default, as the real Debian update rewrote and added ~22%). Per N, mode and round the replicas start empty and are brought to v1
# (untimed: hanfs by a sync, rsync's by cp -a), the source becomes v2 and the update is timed:
#   - wall: from the start of `hanfs sync` (which returns once every replica's agent has verified its
#     digest) or of the N rsyncs to the end of the last one;
#   - MN bytes: tx_bytes of the MN's veth (every frame the MN sent: payload, TLS, TCP/IP headers);
#   - MN CPU: user+sys of the `hanfs sync` process, or of all the rsync senders (wait4, /usr/bin/time);
#   - all SNs' CPU: the agents', or the rsync daemons' and their per-client children's (/proc/PID/stat).
#     All of it shares this machine's cores, which is what the walls at large N mostly measure.
# Then every replica is walked and compared with v2 (bench/scale-verify.py); any difference fails.
# Prints a Markdown table of the medians of ROUNDS rounds.
# Usage: bench/scale.sh   (root; `make bench-scale`)
# env: HANFS (target/release/hanfs) SNS ("1 4 16 64") ROUNDS (3) MODES ("star relay rsync")
#      MN_RATE (1gbit) SN_RATE (1gbit) LATENCY_MS (0.2) ENTRIES (6000) MB (80) PERCENT (20)
#      RELAY_FANOUT (8) IMAGES (/var/tmp/hanfs-bench-scale) OUT (file for the table, optional)
#      RSYNC_OPTS ("-aHAX --numeric-ids --delete -z": prsync's -az plus what an image needs)
#      JSON_DIR (keeps each timed hanfs sync's --json report there as MODE-N-ROUND.json, optional)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
HANFS=${HANFS:-$HERE/../target/release/hanfs}
SNS=${SNS:-"1 4 16 64"}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-"star relay rsync"}
MN_RATE=${MN_RATE:-1gbit}
SN_RATE=${SN_RATE:-1gbit}
LATENCY_MS=${LATENCY_MS:-0.2}
ENTRIES=${ENTRIES:-6000}
MB=${MB:-80}
PERCENT=${PERCENT:-20}
RELAY_FANOUT=${RELAY_FANOUT:-8}
IMAGES=${IMAGES:-/var/tmp/hanfs-bench-scale/$ENTRIES-$MB-$PERCENT}
read -r -a RSYNC_OPTS <<< "${RSYNC_OPTS:--aHAX --numeric-ids --delete -z}"
[ "$(id -u)" = 0 ] || { echo "scale.sh: needs root (network namespaces, tc, rsync's chroot)" >&2; exit 1; }
[ -x "$HANFS" ] || { echo "no hanfs binary at $HANFS (cargo build --release -p hanfs, or set HANFS)" >&2; exit 1; }
HANFS=$(cd "$(dirname "$HANFS")" && pwd)/$(basename "$HANFS")
for t in ip tc rsync /usr/bin/time python3; do command -v "$t" >/dev/null || { echo "scale.sh: needs $t" >&2; exit 1; }; done
MAXN=0; for n in $SNS; do [ "$n" -gt "$MAXN" ] && MAXN=$n; done
[ "$MAXN" -le 250 ] || { echo "scale.sh: at most 250 SNs (one /24 of addresses)" >&2; exit 2; }

# ---- the images, generated once ----
if [ ! -e "$IMAGES/.done" ]; then
  rm -rf "$IMAGES"; mkdir -p "$IMAGES"
  "$HERE/gen-image.py" "$IMAGES/v1" "$ENTRIES" "$MB"
  cp -a "$IMAGES/v1" "$IMAGES/v2"
  "$HERE/update-image.py" "$IMAGES/v2" "$PERCENT"
  touch "$IMAGES/.done"
fi

TAG=hsc$$                                  # namespace names: unique to this run
WORK=$(mktemp -d /var/tmp/hanfs-scale.XXXXXX)
# MAXN replicas of v2 at once, plus room for staging: refuse early rather than fill the disk.
need=$(( $(du -sm "$IMAGES/v2" | cut -f1) * MAXN * 3 / 2 ))
have=$(( $(df -Pk "$WORK" | awk 'NR == 2 {print $4}') / 1024 ))
[ "$have" -ge "$need" ] || { rmdir "$WORK"; echo "scale.sh: $MAXN replicas need ~$need MB in $(dirname "$WORK"), $have MB free" >&2; exit 1; }
PIDS=()
NSES=()
cleanup() {
  local p ns
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # Whatever else still runs in this run's namespaces (a sync cut short, rsync's per-client children).
  for ns in "${NSES[@]}"; do for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done; done
  wait 2>/dev/null || true
  for ns in "${NSES[@]}"; do
    for _ in 1 2 3 4 5; do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.2; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK" || { sleep 1; rm -rf "$WORK"; } || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
IMG=netboot/gen/x86_64/compute/rootimg
SRC=$WORK/src
MN=$TAG-mn
BR=$TAG-br
mnaddr=10.201.0.1
snaddr() { echo "10.201.1.$1"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# local, untimed: sets a version. --checksum: update-image.py may rewrite a file with its size
# kept within the second its v1 was made, which rsync's size+mtime check would skip.
copy_into() { rsync -aHAX --numeric-ids --delete --checksum "$1"/ "$2"/; }
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

# ---- the network ----
NETEM=1
netns_add() { ip netns add "$1"; NSES+=("$1"); ip -n "$1" link set lo up; }
netns_add "$BR"
ip -n "$BR" link add br0 type bridge
ip -n "$BR" link set br0 up
if ! in_ns "$BR" tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then
  NETEM=0
  [ "${CI:-}" != true ] || { echo "scale.sh: this kernel has no sch_netem (latency cannot be applied)" >&2; exit 1; }
  echo "scale.sh: no latency: this kernel has no sch_netem; links are shaped by tbf only" >&2
else
  in_ns "$BR" tc qdisc del dev lo root
fi
# shape NS DEV RATE DELAY_MS: tbf at RATE (a 50 ms queue, no drops below it), then netem's delay.
shape() {
  in_ns "$1" tc qdisc add dev "$2" root handle 1: tbf rate "$3" burst 256kb latency 50ms
  if [ "$NETEM" = 1 ] && [ "$4" != 0 ]; then
    in_ns "$1" tc qdisc add dev "$2" parent 1:1 handle 10: netem delay "${4}ms" limit 100000
  fi
}
# node NS PORT ADDR RATE: a namespace on the bridge, its link shaped both ways.
node() {
  netns_add "$1"
  ip -n "$BR" link add "$2" type veth peer name eth0 netns "$1"
  ip -n "$BR" link set "$2" master br0 up
  ip -n "$1" addr add "$3/16" dev eth0
  ip -n "$1" link set eth0 up
  shape "$1" eth0 "$4" "$LATENCY_MS"
  shape "$BR" "$2" "$4" 0
}
node "$MN" m0 "$mnaddr" "$MN_RATE"
for i in $(seq 1 "$MAXN"); do node "$TAG-s$i" "s$i" "$(snaddr "$i")" "$SN_RATE"; done
tx_bytes() { in_ns "$MN" cat /sys/class/net/eth0/statistics/tx_bytes; }

# ---- TLS material: the agents are not on loopback ----
"$HANFS" ca init "$WORK/ca" >/dev/null
"$HANFS" ca issue "$WORK/ca" --name mn >/dev/null
for i in $(seq 1 "$MAXN"); do "$HANFS" ca issue "$WORK/ca" --name "sn$i" >/dev/null; done

# cluster_toml N FANOUT_LINE > FILE
cluster_toml() {
  printf '[cluster]\nsource_root = "%s"\nstate_dir = "%s/mn"\n%s\n' "$SRC" "$WORK" "$2"
  printf '[tls]\nca = "%s/ca/ca.pem"\ncert = "%s/ca/mn.pem"\nkey = "%s/ca/mn.key"\n' "$WORK" "$WORK" "$WORK"
  for i in $(seq 1 "$1"); do
    printf '[[sn]]\nname = "sn%s"\naddress = "%s"\nagent = "%s:7468"\nroot = "%s/sn%s/root"\n' \
      "$i" "$(snaddr "$i")" "$(snaddr "$i")" "$WORK" "$i"
  done
  printf '[[image]]\nname = "gen"\npath = "%s"\nclients = "*"\n' "$IMG"
}
# Does this build take the fan-out key? (An unknown key is refused, exit 2.)
mkdir -p "$SRC/$IMG"
cluster_toml 1 "fanout = $RELAY_FANOUT" > "$WORK/probe.toml"
if "$HANFS" --config "$WORK/probe.toml" exports >/dev/null 2>"$WORK/probe.err"; then
  STAR_LINE="fanout = 0"; RELAY=1
else
  STAR_LINE=""; RELAY=0
  echo "scale.sh: relay: not available in this build ($(head -c 300 "$WORK/probe.err" | tr '\n' ' '))" >&2
fi

# ---- one timed update ----
ROWS=$WORK/rows
NOTES=()
# record N MODE ROUND WALL BYTES MN_CPU SNS_CPU
record() { echo "$*" >> "$ROWS"; printf '%-4s %-6s round %s: %8.2f s  %12d B  MN CPU %7.2f s  SNs CPU %7.2f s\n' "$@" >&2; }

start_agents() {  # N: fresh agents, one per SN namespace, each on its own address
  local n=$1 i d
  APIDS=()
  for i in $(seq 1 "$n"); do
    d=$WORK/sn$i; rm -rf "$d"; mkdir -p "$d"
    printf 'listen = "%s:7468"\nroot = "%s/root"\nstate_dir = "%s/state"\nexports_file = "%s/exports"\nreload = []\n' \
      "$(snaddr "$i")" "$d" "$d" "$d" > "$d/agent.toml"
    # Every agent may relay (only `fanout` > 0 makes the MN ask it to).
    if [ "$RELAY" = 1 ]; then printf 'relay_listen = "%s:7469"\n' "$(snaddr "$i")" >> "$d/agent.toml"; fi
    printf '[tls]\nca = "%s/ca/ca.pem"\ncert = "%s/ca/sn%s.pem"\nkey = "%s/ca/sn%s.key"\n' "$WORK" "$WORK" "$i" "$WORK" "$i" >> "$d/agent.toml"
    # ip netns exec, not in_ns: a function in the background is a subshell, and $! must be the agent.
    ip netns exec "$TAG-s$i" "$HANFS" --config "$d/agent.toml" agent 2>"$d/log" & PIDS+=($!); APIDS+=($!)
  done
  for i in $(seq 1 "$n"); do
    for _ in $(seq 1 600); do grep -qs "listening on" "$WORK/sn$i/log" && break; sleep 0.1; done
    grep -qs "listening on" "$WORK/sn$i/log" || { echo "agent sn$i did not start:" >&2; cat "$WORK/sn$i/log" >&2; exit 1; }
  done
}
stop_agents() {
  local p
  for p in "${APIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

TCK=$(getconf CLK_TCK)
# CPU ticks of PIDS and of their reaped children (utime stime cutime cstime).
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15+$16+$17}' "/proc/$p/stat"))); done; echo "$t"; }
# timed N MODE ROUND COMMAND...: runs COMMAND in the MN's namespace, records wall, bytes, the MN's
# CPU and the receivers' (APIDS: the agents, or the rsync daemons with their reaped children).
timed() {
  local n=$1 mode=$2 round=$3; shift 3
  local b0 b1 t0 t1 u s c0 c1
  sync; c0=$(ticks "${APIDS[@]}"); b0=$(tx_bytes); t0=$(date +%s.%N)
  in_ns "$MN" /usr/bin/time -o "$WORK/time" -f '%U %S' "$@" > "$WORK/out" 2> "$WORK/err" \
    || { echo "$mode at $n SNs failed:" >&2; cat "$WORK/out" "$WORK/err" >&2; exit 1; }
  t1=$(date +%s.%N); b1=$(tx_bytes)
  sleep 0.5  # lets rsyncd reap its per-client children, whose CPU it then carries
  c1=$(ticks "${APIDS[@]}")
  read -r u s < <(tail -1 "$WORK/time")
  record "$n" "$mode" "$round" "$(python3 -c "print($t1 - $t0)")" $((b1 - b0)) "$(python3 -c "print($u + $s)")" \
    "$(python3 -c "print(($c1 - $c0) / $TCK)")"
}

verify() {  # N ROOT_PATTERN [--ignore NAME]: every replica (@ in the pattern: the SN's number) against v2
  local n=$1 pat=$2 i reps=(); shift 2
  for i in $(seq 1 "$n"); do reps+=("${pat//@/$i}"); done
  "$HERE/scale-verify.py" "$@" "$IMAGES/v2" "${reps[@]}" >&2
}

run_hanfs() {  # N MODE ROUND
  local n=$1 mode=$2 round=$3 line
  if [ "$mode" = star ]; then line=$STAR_LINE; else line="fanout = $RELAY_FANOUT"; fi
  rm -rf "$WORK/mn"
  cluster_toml "$n" "$line" > "$WORK/cluster.toml"
  copy_into "$IMAGES/v1" "$SRC/$IMG"
  start_agents "$n"
  in_ns "$MN" "$HANFS" --config "$WORK/cluster.toml" sync > "$WORK/initial.out" 2>&1 \
    || { echo "$mode: initial sync to $n SNs failed:" >&2; cat "$WORK/initial.out" >&2; exit 1; }
  copy_into "$IMAGES/v2" "$SRC/$IMG"
  timed "$n" "$mode" "$round" "$HANFS" --json --config "$WORK/cluster.toml" sync
  # The sync's report (per SN: bytes sent, plan_via, via) kept when asked for.
  if [ -n "${JSON_DIR:-}" ]; then mkdir -p "$JSON_DIR"; cp "$WORK/out" "$JSON_DIR/$mode-$n-$round.json"; fi
  python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["ok"] else 1)' "$WORK/out" \
    || { echo "$mode: sync to $n SNs not ok:" >&2; cat "$WORK/out" >&2; exit 1; }
  # .hanfs: the agent's staging directory inside the replica root, not part of the image.
  verify "$n" "$WORK/sn@/root/$IMG" --ignore .hanfs
  stop_agents
  for i in $(seq 1 "$n"); do rm -rf "$WORK/sn$i"; done
}

run_rsync() {  # N ROUND
  local n=$1 round=$2 i d
  copy_into "$IMAGES/v2" "$SRC/$IMG"
  APIDS=()
  printf '#!/usr/bin/env bash\n# Every SN at once, as prsync does.\nset -e; cl=()\n' > "$WORK/all.sh"
  for i in $(seq 1 "$n"); do
    d=$WORK/sn$i; rm -rf "$d"; mkdir -p "$d"
    cp -a "$IMAGES/v1" "$d/img"
    # use chroot = yes: without it rsyncd rewrites absolute symlinks (issue #11 point 7).
    printf 'pid file = %s/pid\nuse chroot = yes\n[img]\npath = %s/img\nread only = false\nuid = root\ngid = root\n' "$d" "$d" > "$d/rsyncd.conf"
    ip netns exec "$TAG-s$i" rsync --daemon --no-detach --address="$(snaddr "$i")" --port=873 --config="$d/rsyncd.conf" \
      2>"$d/log" & PIDS+=($!); APIDS+=($!)
    printf 'rsync %s "%s/" "rsync://%s/img/" & cl+=($!)\n' "${RSYNC_OPTS[*]}" "$SRC/$IMG" "$(snaddr "$i")" >> "$WORK/all.sh"
  done
  printf 'for c in "${cl[@]}"; do wait "$c"; done\n' >> "$WORK/all.sh"
  chmod +x "$WORK/all.sh"
  for i in $(seq 1 "$n"); do
    for _ in $(seq 1 100); do in_ns "$MN" bash -c "exec 3<>/dev/tcp/$(snaddr "$i")/873" 2>/dev/null && break; sleep 0.1; done
  done
  timed "$n" rsync "$round" "$WORK/all.sh"
  verify "$n" "$WORK/sn@/img"
  stop_agents
  for i in $(seq 1 "$n"); do rm -rf "$WORK/sn$i"; done
}

for n in $SNS; do
  for mode in $MODES; do
    if [ "$mode" = relay ] && [ "$RELAY" = 0 ]; then
      NOTES+=("relay: not available in this build (\`hanfs\` refuses \`fanout\`)"); continue
    fi
    for round in $(seq 1 "$ROUNDS"); do
      case $mode in
        star|relay) run_hanfs "$n" "$mode" "$round" ;;
        rsync) run_rsync "$n" "$round" ;;
        *) echo "scale.sh: unknown mode $mode (star, relay, rsync)" >&2; exit 2 ;;
      esac
    done
  done
done

# ---- the table ----
v1mb=$(du -sm --apparent-size "$IMAGES/v1" | cut -f1)
v2mb=$(du -sm --apparent-size "$IMAGES/v2" | cut -f1)
v2n=$(find "$IMAGES/v2" | wc -l)
{
  echo "Update v1 (${v1mb} MB) -> v2 (${v2mb} MB, ${v2n} entries; ${PERCENT}% of files rewritten, ${PERCENT}% added)," \
    "MN link $MN_RATE, each SN $SN_RATE, latency $([ "$NETEM" = 1 ] && echo "${LATENCY_MS} ms one way per link" || echo "none (no sch_netem)")," \
    "medians of $ROUNDS rounds, every replica verified. hanfs: $("$HANFS" --version 2>/dev/null | head -1)."
  echo
  python3 - "$ROWS" "$MN_RATE" <<'EOS'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
# tc's units: "bit" suffixes are bits per second, "bps" ones bytes per second.
num, unit = re.fullmatch(r"([0-9.]+)([a-z]*)", sys.argv[2].lower()).groups()
mult = {"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
        "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12}[unit]
link_bytes_per_s = float(num) * mult / 8
med = {}
for n, mode, rnd, wall, b, cpu, sncpu in rows:
    med.setdefault((int(n), mode), []).append((float(wall), int(b), float(cpu), float(sncpu)))
m = {k: [statistics.median(x[i] for x in v) for i in range(4)] for k, v in med.items()}
ns = sorted({k[0] for k in m})
modes = [x for x in ("star", "relay", "rsync") if any(k[1] == x for k in m)]
print("| SNs | mode | wall (s) | MN bytes sent | MN link busy | MN CPU (s) | all SNs' CPU (s) | wall / 1-SN wall | bytes / 1-SN bytes | bytes / rsync's |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in ns:
    for mode in modes:
        if (n, mode) not in m:
            continue
        w, b, c, sc = m[(n, mode)]
        one = m.get((min(ns), mode))
        rs = m.get((n, "rsync"))
        rel = lambda x, y: f"{x / y:.2f}x" if y else "-"
        # The share of the wall the MN's link needed at its shaped rate for those bytes: near 100%,
        # the link is what limits the figure; far below, CPU or round trips are.
        busy = b / link_bytes_per_s / w if w else 0
        print(f"| {n} | {mode} | {w:.2f} | {b / 1e6:.1f} MB | {busy:.0%} | {c:.2f} | {sc:.2f} | "
              f"{rel(w, one[0]) if min(ns) == 1 else '-'} | {rel(b, one[1]) if min(ns) == 1 else '-'} | "
              f"{rel(b, rs[1]) if rs else '-'} |")
EOS
  for note in "${NOTES[@]}"; do echo; echo "$note"; done | awk '!seen[$0]++'
} | tee "${OUT:-/dev/null}"
