#!/usr/bin/env bash
# No-change and one-file-change syncs of a generated 24k-entry image (bench/gen-image.py) to N
# receivers on loopback, hanfs and rsync in the same run:
#   - hanfs: `hanfs sync` to N `hanfs agent` processes (plain TCP on loopback);
#   - rsync: `rsync -aHAX --numeric-ids --delete` to N `rsync --daemon` (use chroot = yes, so
#     absolute symlinks arrive as they are), all N in parallel.
# Every receiver is first brought to the image (untimed), then RUNS no-change syncs and RUNS
# one-file changes (one 4 KiB file rewritten) are timed. Per run: wall, the MN's CPU (the hanfs
# process, or every rsync sender; user+sys from wait4) and the receivers' CPU (the agents', or the
# daemons' and their children's, from /proc/PID/stat). Prints one row per run and the medians.
# Usage: bench/nochange.sh   (root for rsync's chroot; env: SNS=8 RUNS=5 ENTRIES=24000 MB=200
#        IMAGE=dir (generated once) HANFS=target/release/hanfs)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
HANFS=${HANFS:-$HERE/../target/release/hanfs}
SNS=${SNS:-8}
RUNS=${RUNS:-5}
ENTRIES=${ENTRIES:-24000}
MB=${MB:-200}
IMAGE=${IMAGE:-/var/tmp/hanfs-bench-gen/$ENTRIES}
[ -x "$HANFS" ] || { echo "no hanfs binary at $HANFS (cargo build --release -p hanfs, or set HANFS)" >&2; exit 1; }
[ -d "$IMAGE" ] || { mkdir -p "$(dirname "$IMAGE")"; "$HERE/gen-image.py" "$IMAGE" "$ENTRIES" "$MB"; }
WORK=$(mktemp -d /var/tmp/hanfs-nochange.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
IMG=netboot/gen/x86_64/compute/rootimg
TCK=$(getconf CLK_TCK)

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# CPU seconds of PIDs and of their reaped children (utime stime cutime cstime).
cpu() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15+$16+$17}' "/proc/$p/stat"))); done; echo "$t"; }
# Changes one file of the source (the same path each time, new content each run).
touch_one() { python3 -c 'import os,sys; open(sys.argv[1],"wb").write(os.urandom(4096))' "$1/$2"; }
ONE=$(cd "$IMAGE" && find . -type f -size -8k -size +2k -links 1 | sort | sed -n 1p)

printf '%-6s %-3s %-8s %-3s %8s %8s %8s\n' tool sns phase run wall mn_cpu rcv_cpu
ROWS="$WORK/rows"
row() { printf '%-6s %-3s %-8s %-3s %8.3f %8.3f %8.3f\n' "$@"; echo "$*" >> "$ROWS"; }
# timed TOOL PHASE RUN RECEIVER_PIDS... -- COMMAND...: one row.
timed() {
  local tool=$1 phase=$2 run=$3; shift 3; local rp=(); while [ "$1" != -- ]; do rp+=("$1"); shift; done; shift
  local c0; c0=$(cpu "${rp[@]}")
  /usr/bin/time -o "$WORK/time" -f '%e %U %S' "$@" > "$WORK/out" 2>"$WORK/err" || { cat "$WORK/out" "$WORK/err" >&2; exit 1; }
  local c1; c1=$(cpu "${rp[@]}")
  read -r wall u s < <(tail -1 "$WORK/time")
  row "$tool" "$SNS" "$phase" "$run" "$wall" "$(python3 -c "print($u+$s)")" "$(python3 -c "print(($c1-$c0)/$TCK)")"
}

# ---- hanfs ----
d="$WORK/hanfs"; mkdir -p "$d/src/$(dirname $IMG)"
printf '[cluster]\nsource_root = "%s/src"\nstate_dir = "%s/mn"\nplaintext_loopback = true\n' "$d" "$d" > "$d/cluster.toml"
APIDS=()
for i in $(seq 1 "$SNS"); do
  p=$(port); mkdir -p "$d/sn$i"
  printf 'listen = "127.0.0.1:%s"\nroot = "%s/sn%s/root"\nstate_dir = "%s/sn%s/state"\nexports_file = "%s/sn%s/exports"\nreload = []\nplaintext_loopback = true\n' \
    "$p" "$d" "$i" "$d" "$i" "$d" "$i" > "$d/sn$i/agent.toml"
  "$HANFS" --config "$d/sn$i/agent.toml" agent 2>"$d/sn$i/log" & PIDS+=($!); APIDS+=($!)
  printf '[[sn]]\nname = "sn%s"\naddress = "127.0.0.1"\nagent = "127.0.0.1:%s"\nroot = "%s/sn%s/root"\n' "$i" "$p" "$d" "$i" >> "$d/cluster.toml"
done
printf '[[image]]\nname = "gen"\npath = "%s"\nclients = "*"\n' "$IMG" >> "$d/cluster.toml"
cp -a "$IMAGE" "$d/src/$IMG"
sleep 0.5
"$HANFS" --config "$d/cluster.toml" sync >/dev/null
"$HANFS" --config "$d/cluster.toml" sync >/dev/null   # warms every hash cache
for r in $(seq 1 "$RUNS"); do timed hanfs nochange "$r" "${APIDS[@]}" -- "$HANFS" --config "$d/cluster.toml" sync; done
for r in $(seq 1 "$RUNS"); do
  touch_one "$d/src/$IMG" "$ONE"
  timed hanfs onefile "$r" "${APIDS[@]}" -- "$HANFS" --config "$d/cluster.toml" sync
done
"$HANFS" --config "$d/cluster.toml" verify >/dev/null || { echo "hanfs verify failed" >&2; exit 1; }

# ---- rsync ----
r="$WORK/rsync"; mkdir -p "$r"; cp -a "$IMAGE" "$r/src"
ports=(); RPIDS=()
for i in $(seq 1 "$SNS"); do
  p=$(port); mkdir -p "$r/sn$i"; ports+=("$p")
  printf 'pid file = %s/sn%s.pid\nuse chroot = yes\n[img]\npath = %s/sn%s\nread only = false\nuid = root\ngid = root\n' "$r" "$i" "$r" "$i" > "$r/sn$i.conf"
  rsync --daemon --no-detach --address=127.0.0.1 --port="$p" --config="$r/sn$i.conf" & PIDS+=($!); RPIDS+=($!)
done
sleep 0.5
cat > "$r/all.sh" <<EOS
#!/usr/bin/env bash
# Every receiver in parallel, as prsync does.
set -e; cl=()
for p in ${ports[*]}; do rsync -aHAX --numeric-ids --delete "$r/src/" "rsync://127.0.0.1:\$p/img/" & cl+=(\$!); done
for c in "\${cl[@]}"; do wait "\$c"; done
EOS
chmod +x "$r/all.sh"
"$r/all.sh"
for r2 in $(seq 1 "$RUNS"); do timed rsync nochange "$r2" "${RPIDS[@]}" -- "$r/all.sh"; done
for r2 in $(seq 1 "$RUNS"); do
  touch_one "$r/src" "$ONE"
  timed rsync onefile "$r2" "${RPIDS[@]}" -- "$r/all.sh"
done
# Each rsync replica against the source, by a walk of our own (type, mode, owner, size, mtime of
# non-directories, content, link target, device number).
for i in $(seq 1 "$SNS"); do
  python3 - "$r/src" "$r/sn$i" <<'EOS' || { echo "rsync replica sn$i differs from the source" >&2; exit 1; }
import hashlib, os, stat, sys
def walk(root):
    out = {}
    for dp, ds, fs in os.walk(root):
        for n in ds + fs:
            p = os.path.join(dp, n); st = os.lstat(p); rel = os.path.relpath(p, root)
            rec = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                rec += (st.st_size, st.st_mtime_ns, hashlib.blake2b(open(p, "rb").read()).digest())
            elif stat.S_ISLNK(st.st_mode):
                rec += (os.readlink(p),)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec += (st.st_rdev,)
            out[rel] = rec
    return out
a, b = walk(sys.argv[1]), walk(sys.argv[2])
bad = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
if bad:
    print(f"{len(bad)} entries differ, e.g. {bad[:3]}", file=sys.stderr); sys.exit(1)
EOS
done

echo "medians of $RUNS runs ($SNS receivers, $(uptime | sed 's/.*load/load/')):"
python3 - "$ROWS" <<'EOS'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {}
for tool, sns, phase, run, wall, mn, rcv in rows:
    med.setdefault((tool, phase), []).append((float(wall), float(mn), float(rcv)))
for phase in ("nochange", "onefile"):
    h = [statistics.median(x[i] for x in med[("hanfs", phase)]) for i in range(3)]
    r = [statistics.median(x[i] for x in med[("rsync", phase)]) for i in range(3)]
    print(f"{phase:9} hanfs wall {h[0]:.3f} s, MN CPU {h[1]:.3f} s, receivers' CPU {h[2]:.3f} s | "
          f"rsync wall {r[0]:.3f} s, MN CPU {r[1]:.3f} s, receivers' CPU {r[2]:.3f} s | "
          f"hanfs/rsync wall {h[0] / r[0]:.2f}x, MN CPU {h[1] / max(r[1], 1e-3):.2f}x")
EOS
