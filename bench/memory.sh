#!/usr/bin/env bash
# Peak memory of the agent and the controller on a large generated image (issue 11 point 6: agent
# under 64 MB, controller under 256 MB for a 1M-file image): one `hanfs agent` on loopback, a full
# sync of the image (bench/gen-image.py, ENTRIES entries, MB megabytes), then a no-change sync.
# Peak RSS: the controller's from wait4 (/usr/bin/time %M), the agent's VmHWM (/proc/PID/status).
# Every replica is walked and compared with the source (`hanfs verify` and a walk of our own).
# Usage: bench/memory.sh   (env: ENTRIES=1000000 MB=1000 IMAGE=dir HANFS=target/release/hanfs)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
HANFS=${HANFS:-$HERE/../target/release/hanfs}
ENTRIES=${ENTRIES:-1000000}
MB=${MB:-1000}
IMAGE=${IMAGE:-/var/tmp/hanfs-bench-gen/$ENTRIES-$MB}
[ -x "$HANFS" ] || { echo "no hanfs binary at $HANFS (cargo build --release -p hanfs, or set HANFS)" >&2; exit 1; }
[ -d "$IMAGE" ] || { mkdir -p "$(dirname "$IMAGE")"; "$HERE/gen-image.py" "$IMAGE.tmp" "$ENTRIES" "$MB" && mv "$IMAGE.tmp" "$IMAGE"; }
WORK=$(mktemp -d /var/tmp/hanfs-memory.XXXXXX)
APID=
cleanup() { [ -z "$APID" ] || kill "$APID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
IMG=netboot/gen/x86_64/compute/rootimg
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }   # kB

d=$WORK; mkdir -p "$d/src/$(dirname $IMG)" "$d/sn1"
# The image is moved in (same file system), not copied: a 1M-file copy would double the disk used.
mv "$IMAGE" "$d/src/$IMG"; trap 'mv "$d/src/$IMG" "$IMAGE" 2>/dev/null; cleanup' EXIT INT TERM
p=$(port)
printf 'listen = "127.0.0.1:%s"\nroot = "%s/sn1/root"\nstate_dir = "%s/sn1/state"\nexports_file = "%s/sn1/exports"\nreload = []\nplaintext_loopback = true\n' \
  "$p" "$d" "$d" "$d" > "$d/sn1/agent.toml"
"$HANFS" --config "$d/sn1/agent.toml" agent 2>"$d/sn1/log" & APID=$!
printf '[cluster]\nsource_root = "%s/src"\nstate_dir = "%s/mn"\nplaintext_loopback = true\n[[sn]]\nname = "sn1"\naddress = "127.0.0.1"\nagent = "127.0.0.1:%s"\nroot = "%s/sn1/root"\n[[image]]\nname = "gen"\npath = "%s"\nclients = "*"\n' \
  "$d" "$d" "$p" "$d" "$IMG" > "$d/cluster.toml"
sleep 0.5
entries=$(find "$d/src/$IMG" | wc -l)
echo "image: $entries entries, $(du -sm "$d/src/$IMG" | cut -f1) MB on disk"
for phase in full nochange; do
  /usr/bin/time -o "$d/time" -f '%e %M' "$HANFS" --config "$d/cluster.toml" sync > "$d/out" 2>&1 || { tail -20 "$d/out" >&2; exit 1; }
  read -r wall rss < "$d/time"
  printf '%-9s wall %8.1f s  controller peak RSS %6.1f MB  agent peak RSS so far %6.1f MB\n' \
    "$phase" "$wall" "$(echo "$rss/1024" | bc -l)" "$(echo "$(hwm $APID)/1024" | bc -l)"
done
"$HANFS" --config "$d/cluster.toml" verify > /dev/null || { echo "hanfs verify failed" >&2; exit 1; }
python3 - "$d/src/$IMG" "$d/sn1/root/$IMG" <<'EOS' || { echo "the replica differs from the source" >&2; exit 1; }
import hashlib, os, stat, sys
def walk(root):
    out = {}
    for dp, ds, fs in os.walk(root):
        for n in ds + fs:
            p = os.path.join(dp, n); rel = os.path.relpath(p, root)
            if rel == ".hanfs" or rel.startswith(".hanfs/"):
                continue
            st = os.lstat(p)
            rec = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                rec += (st.st_size, hashlib.blake2b(open(p, "rb").read()).digest())
            elif stat.S_ISLNK(st.st_mode):
                rec += (os.readlink(p),)
            out[rel] = rec
    return out
a, b = walk(sys.argv[1]), walk(sys.argv[2])
bad = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
if bad:
    print(f"{len(bad)} entries differ, e.g. {bad[:3]}", file=sys.stderr); sys.exit(1)
print(f"replica walked: {len(a)} entries equal to the source")
EOS
