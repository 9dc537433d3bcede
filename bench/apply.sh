#!/usr/bin/env bash
# The receiver's cost of one image update (issue #11 point 3): one `hanfs agent` against one
# `rsync --daemon` (use chroot = yes), the same update applied alternately forwards (v1 -> v2)
# and backwards (v2 -> v1), RUNS times each. Per run: wall, the sender's CPU and the receiver's
# CPU (the agent's, or the daemon's and its children's, from /proc/PID/stat). Images: the scale
# rig's generated pair (bench/gen-image.py + bench/update-image.py), made once.
# Usage: bench/apply.sh   (root; env: RUNS=3 ENTRIES=6000 MB=80 PERCENT=20 HANFS=target/release/hanfs
#        IMAGES=dir-with-v1-and-v2 PERF=1 to record the agent with perf into $PERF_OUT,
#        FS=ext4|xfs to put both receivers on a fresh loop-mounted filesystem of that type, made
#        with its defaults, as an SN's would be, instead of the directory holding /var/tmp)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
HANFS=${HANFS:-$HERE/../target/release/hanfs}
RUNS=${RUNS:-3}
ENTRIES=${ENTRIES:-6000}
MB=${MB:-80}
PERCENT=${PERCENT:-20}
IMAGES=${IMAGES:-/var/tmp/hanfs-bench-scale/$ENTRIES-$MB-$PERCENT}
[ -x "$HANFS" ] || { echo "no hanfs binary at $HANFS (cargo build --release -p hanfs, or set HANFS)" >&2; exit 1; }
if [ ! -d "$IMAGES/v2" ]; then
  mkdir -p "$IMAGES"
  "$HERE/gen-image.py" "$IMAGES/v1" "$ENTRIES" "$MB"
  cp -a "$IMAGES/v1" "$IMAGES/v2"
  "$HERE/update-image.py" "$IMAGES/v2" "$PERCENT"
fi
WORK=$(mktemp -d /var/tmp/hanfs-apply.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  if mountpoint -q "$WORK/fs"; then umount "$WORK/fs"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
IMG=netboot/gen/x86_64/compute/rootimg
TCK=$(getconf CLK_TCK)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15+$16+$17}' "/proc/$p/stat"))); done; echo "$t"; }
ROWS="$WORK/rows"
printf '%-6s %-9s %-3s %8s %8s %8s\n' tool direction run wall snd_cpu rcv_cpu
row() { printf '%-6s %-9s %-3s %8.3f %8.3f %8.3f\n' "$@"; echo "$*" >> "$ROWS"; }
timed() {
  local tool=$1 dir=$2 run=$3 rp=$4; shift 5
  local c0; c0=$(cpu "$rp")
  /usr/bin/time -o "$WORK/time" -f '%e %U %S' "$@" > "$WORK/out" 2>"$WORK/err" || { cat "$WORK/out" "$WORK/err" >&2; exit 1; }
  # A daemon's child is counted once the daemon has reaped it.
  local w; for w in $(seq 50); do pgrep -P "$rp" >/dev/null || break; sleep 0.1; done
  local c1; c1=$(cpu "$rp")
  read -r wall u s < <(tail -1 "$WORK/time")
  row "$tool" "$dir" "$run" "$wall" "$(python3 -c "print($u+$s)")" "$(python3 -c "print(($c1-$c0)/$TCK)")"
}
# Makes the source tree SRC the image V (untimed, outside every measured interval).
become() { rsync -aHAX --numeric-ids --delete "$IMAGES/$2/" "$1/"; }

RCV=$WORK
if [ -n "${FS:-}" ]; then
  truncate -s 8G "$WORK/fs.img"; "mkfs.$FS" -q "$WORK/fs.img" >/dev/null
  mkdir "$WORK/fs"; mount -o loop "$WORK/fs.img" "$WORK/fs"; RCV=$WORK/fs
fi

# ---- hanfs ----
d="$WORK/hanfs"; mkdir -p "$d/src/$IMG" "$RCV/hsn1"; ln -s "$RCV/hsn1" "$d/sn1"
p=$(port)
printf '[cluster]\nsource_root = "%s/src"\nstate_dir = "%s/mn"\nplaintext_loopback = true\n' "$d" "$d" > "$d/cluster.toml"
printf 'listen = "127.0.0.1:%s"\nroot = "%s/sn1/root"\nstate_dir = "%s/sn1/state"\nexports_file = "%s/sn1/exports"\nreload = []\nplaintext_loopback = true\n' \
  "$p" "$d" "$d" "$d" > "$d/sn1/agent.toml"
printf '[[sn]]\nname = "sn1"\naddress = "127.0.0.1"\nagent = "127.0.0.1:%s"\nroot = "%s/sn1/root"\n' "$p" "$d" >> "$d/cluster.toml"
printf '[[image]]\nname = "gen"\npath = "%s"\nclients = "*"\n' "$IMG" >> "$d/cluster.toml"
"$HANFS" --config "$d/sn1/agent.toml" agent 2>"$d/sn1/log" & APID=$!; PIDS+=($APID)
[ -n "${PERF:-}" ] && { perf record -q --call-graph dwarf,16384 -F 499 -o "${PERF_OUT:-/tmp/apply-perf}.data" -p "$APID" 2>/dev/null & PIDS+=($!); }
sleep 0.5
become "$d/src/$IMG" v1
"$HANFS" --config "$d/cluster.toml" sync >/dev/null
for r in $(seq 1 "$RUNS"); do
  become "$d/src/$IMG" v2; timed hanfs forwards "$r" "$APID" -- "$HANFS" --config "$d/cluster.toml" sync
  become "$d/src/$IMG" v1; timed hanfs backwards "$r" "$APID" -- "$HANFS" --config "$d/cluster.toml" sync
done
"$HANFS" --config "$d/cluster.toml" verify >/dev/null || { echo "hanfs verify failed" >&2; exit 1; }
if [ -n "${PERF:-}" ]; then
  kill -INT "${PIDS[-1]}"; sleep 2
  perf report -i "${PERF_OUT:-/tmp/apply-perf}.data" --children --percent-limit 2 --stdio -g none 2>/dev/null | grep -v "^$" > "${PERF_OUT:-/tmp/apply-perf}.txt"
fi

# ---- rsync ----
r="$WORK/rsync"; mkdir -p "$r/src" "$RCV/rsn1"; ln -s "$RCV/rsn1" "$r/sn1"
p=$(port)
printf 'pid file = %s/sn1.pid\nuse chroot = yes\n[img]\npath = %s/sn1\nread only = false\nuid = root\ngid = root\n' "$r" "$r" > "$r/sn1.conf"
rsync --daemon --no-detach --address=127.0.0.1 --port="$p" --config="$r/sn1.conf" & RPID=$!; PIDS+=($RPID)
sleep 0.5
push() { rsync -aHAX --numeric-ids --delete --no-whole-file "$r/src/" "rsync://127.0.0.1:$p/img/"; }
become "$r/src" v1; push
for i in $(seq 1 "$RUNS"); do
  become "$r/src" v2; timed rsync forwards "$i" "$RPID" -- rsync -aHAX --numeric-ids --delete --no-whole-file "$r/src/" "rsync://127.0.0.1:$p/img/"
  become "$r/src" v1; timed rsync backwards "$i" "$RPID" -- rsync -aHAX --numeric-ids --delete --no-whole-file "$r/src/" "rsync://127.0.0.1:$p/img/"
done

echo "medians of $RUNS runs (receivers on $(df --output=fstype "$RCV" | tail -1) at $RCV, $(nproc) cores, $(uptime | sed 's/.*load/load/')):"
python3 - "$ROWS" <<'EOS'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {}
for tool, d, run, wall, snd, rcv in rows:
    med.setdefault((tool, d), []).append((float(wall), float(snd), float(rcv)))
for d in ("forwards", "backwards"):
    h = [statistics.median(x[i] for x in med[("hanfs", d)]) for i in range(3)]
    r = [statistics.median(x[i] for x in med[("rsync", d)]) for i in range(3)]
    print(f"{d:9} hanfs wall {h[0]:.3f} s, MN CPU {h[1]:.3f} s, agent CPU {h[2]:.3f} s | "
          f"rsync wall {r[0]:.3f} s, sender CPU {r[1]:.3f} s, receiver CPU {r[2]:.3f} s | "
          f"receiver CPU hanfs/rsync {h[2] / max(r[2], 1e-3):.2f}x")
EOS
