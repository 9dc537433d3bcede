#!/bin/bash
# Build the rig's guest initramfs for user-mode-linux from this host's own Debian binaries.
#
#   integration/rig/build-initramfs.sh        -> prints the path of the (cached) cpio archive
#
# No debootstrap, no disk image: we copy just the programs the guest runs (with their shared
# libraries), the UML kernel modules for nfsd, the NFSv4 and NFSv3 clients and veth, a few lines
# of /etc, the python3 stdlib modules fsloc.py imports, and the guest scripts in rig/guest/.
#
# Cache: the archive is rebuilt only when an input changes.  The key hashes this script, the
# guest scripts, and name+size+mtime of every host file that goes in (so a package upgrade
# rebuilds it).  Computing the key takes a fraction of a second; a build about 2 s.
#
# env: HANFS_RIG_DIR (default /tmp/hanfs-rig)   HANFS_RIG_PCAP=1 also puts tcpdump in
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${HANFS_RIG_DIR:-/tmp/hanfs-rig}
PCAP=${HANFS_RIG_PCAP:-0}
mkdir -p "$DIR"

# The UML kernel's modules live in /usr/lib/uml/modules/<version>; modprobe/depmod want
# <base>/lib/modules/<version>, so point a small symlink tree at them.
KV=$(ls /usr/lib/uml/modules | sort -V | tail -1)
KBASE=$DIR/uml-modules
mkdir -p "$KBASE/lib/modules"; ln -sfn "/usr/lib/uml/modules/$KV" "$KBASE/lib/modules/$KV"
MODULES="nfsd nfsv4 nfsv3 veth dummy macvlan sch_netem"   # nfsv3: the client side of the nfs3-failover scenario; dummy, macvlan: the sn-kill LAN; sch_netem: the soak

# (mount, also for NFS, umount, nsenter and the small tools come from busybox: it is static, so
# it starts quickly; each dynamic program's start costs many page faults under UML)
PROGS="/usr/bin/dash /usr/bin/busybox /usr/bin/kmod /usr/sbin/ip /usr/sbin/tc
       /usr/sbin/rpc.nfsd /usr/sbin/rpc.mountd /usr/sbin/exportfs /usr/sbin/nfsdcld /usr/bin/python3"
[ "$PCAP" = 1 ] && [ -x /usr/bin/tcpdump ] && PROGS="$PROGS /usr/bin/tcpdump"
ETC="/etc/netconfig /etc/protocols /etc/services"

# --- the list of host files that go in -------------------------------------------------------
files() {
    local p
    for p in $PROGS; do
        echo "$p"
        # shared libraries (busybox is static: ldd says so on stderr)
        ldd "$p" 2>/dev/null | grep -o '/[^ ]*' || true
    done
    # the stdlib modules fsloc.py really imports, plus their byte-code so the guest's python
    # does not recompile them on every boot (slow under UML)
    /usr/bin/python3 -S -B - "$HERE/guest" <<'PY'
import sys, importlib.util
sys.path.insert(0, sys.argv[1])
import fsloc  # noqa: F401  (imports everything the guest's python needs)
import workload  # noqa: F401
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None) or ""
    if f.startswith("/usr/lib/python3"):
        print(f)
        pyc = importlib.util.cache_from_source(f)
        try:
            open(pyc, "rb").close(); print(pyc)
        except OSError:
            pass
PY
    echo $ETC
}
LIST=$(files | tr ' ' '\n' | sed '/^$/d' | sort -u)
# kernel modules with their dependencies, as paths relative to the module tree
MODLIST=$(for m in $MODULES; do
              modprobe -d "$KBASE" -S "$KV" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
          done | sed "s|.*/lib/modules/$KV/||" | sort -u)

KEY=$( { cat "$0" "$HERE"/guest/*; echo "pcap=$PCAP kv=$KV"; echo "$LIST" | xargs stat -L -c '%n %s %Y'; echo "$MODLIST"; } | sha256sum | cut -c1-16)
OUT=$DIR/initramfs-$KEY.cpio
if [ -s "$OUT" ]; then echo "$OUT"; exit 0; fi

# --- build (under a lock: two runs at once must not build into the same place) ---------------
exec 9>"$DIR/build.lock"; flock 9
if [ -s "$OUT" ]; then echo "$OUT"; exit 0; fi
start=$(date +%s.%N)
R=$(mktemp -d "$DIR/stage.XXXXXX")
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,proc,sys,dev,run,tmp,mnt,share,rig,var/lib,self}
# merged-/usr layout as on the host, so library paths and #! lines resolve as they do there
ln -s usr/bin "$R/bin"; ln -s usr/sbin "$R/sbin"; ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"
ln -s /run "$R/var/run"
# each SN bind-mounts its own state directory on /self (guest/sn-init.sh)
ln -s /self/exports.d "$R/etc/exports.d"; ln -s /self/nfs "$R/var/lib/nfs"

# copy each file to its real path, and keep the name we asked for as a symlink to it;
# -p keeps mtimes, which python checks before trusting a .pyc
echo "$LIST" | while read -r f; do
    real=$(readlink -f "$f")
    [ -e "$R$real" ] || { mkdir -p "$R$(dirname "$real")"; cp -pL "$f" "$R$real"; }
    if [ "$f" != "$real" ] && [ ! -e "$R$f" ] && [ ! -L "$R$f" ]; then
        mkdir -p "$R$(dirname "$f")"; ln -s "$real" "$R$f"
    fi
done
# module tree as the UML kernel expects it, /lib/modules/<its version>, with its own modules.dep;
# Debian ships UML modules with debug info: without it they are a quarter of the size
for rel in $MODLIST; do
    mkdir -p "$R/lib/modules/$KV/$(dirname "$rel")"
    strip --strip-debug -o "$R/lib/modules/$KV/$rel" "/usr/lib/uml/modules/$KV/$rel" 2>/dev/null ||
        cp "/usr/lib/uml/modules/$KV/$rel" "$R/lib/modules/$KV/$rel"
done
cp /usr/lib/uml/modules/"$KV"/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$KV/"
depmod -b "$R" "$KV"
echo "$MODULES" > "$R/rig/modules"

# busybox supplies the small tools (cat, sed, grep, sleep, timeout, ...) but never a name a
# real program above already has; /bin/sh is dash because busybox ash would run its own
# applets (ip, mount) even when the real ones are in PATH
for a in $(/usr/bin/busybox --list); do
    [ -e "$R/usr/bin/$a" ] || [ -e "$R/usr/sbin/$a" ] || ln -s busybox "$R/usr/bin/$a"
done
ln -sfn dash "$R/usr/bin/sh"
for l in modprobe insmod lsmod depmod; do ln -sfn ../bin/kmod "$R/usr/sbin/$l"; done
ln -sfn "$(basename "$(readlink -f /usr/bin/python3)")" "$R/usr/bin/python3"

# /etc: root and nobody; files-only name service; NFSv4 only (so no rpcbind, statd or lockd)
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files\n' > "$R/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n' > "$R/etc/hosts"
printf '[nfsd]\nvers2=n\nvers3=n\nudp=n\n[mountd]\nmanage-gids=n\n' > "$R/etc/nfs.conf"
: > "$R/etc/exports"
ln -s /proc/self/mounts "$R/etc/mtab"

cp "$HERE"/guest/* "$R/rig/"
mv "$R/rig/init" "$R/init"; chmod +x "$R/init"

# uncompressed: UML reads it from the host's page cache, and a gzip -1 archive (12 MB instead
# of 28 MB) booted no faster here
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
# keep only the newest few archives
ls -t "$DIR"/initramfs-*.cpio 2>/dev/null | tail -n +4 | xargs -r rm -f
echo "built initramfs ($(du -sh "$R" | cut -f1)) in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s" >&2
echo "$OUT"
