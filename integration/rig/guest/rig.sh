# Sourced by /init in the guest: the rig's building blocks and checks.
#
# One guest kernel, one network namespace per SN, each running its own kernel nfsd:
#
#   root netns: the NFS client, 10.0.0.254 on bridge br0
#     ├── veth ── netns sn1: nfsd + mountd + nfsdcld, 10.0.0.1, own mounts (/install, ...)
#     ├── veth ── netns sn2: ... 10.0.0.2
#     └── ...
#
# Seen from the root namespace, SN NAME's disk is /run/sn/NAME/root (a tmpfs: its /install
# is /run/sn/NAME/root/install) and its logs are /run/sn/NAME/*.log.  The host (plan.py)
# writes /share/sns, /share/tops and one steps.sh per scenario, made of the functions below.

rig_log() { echo "[rig $(cut -d' ' -f1 /proc/uptime)s] $*"; }
pass() { echo "PASS: $SCEN $*"; }
fail() { echo "FAIL: $SCEN $*"; RIG_RC=1; }
note() { echo "  note: $*"; }

net_up() {
    ip link set lo up
    ip link add br0 type bridge
    ip addr add 10.0.0.254/24 dev br0
    ip link set br0 up
}

# sn_start NAME IP INDEX: netns NAME on br0 with nfsd; returns once rpc.nfsd has returned
sn_start() {
    name=$1 ip=$2 d=/run/sn/$1
    mkdir -p "$d/root" "$d/exports.d"
    mount -t tmpfs -o size=64m "sn-$name" "$d/root"
    ip netns add "$name"
    ip link add "veth$3" type veth peer name eth0 netns "$name"
    ip link set "veth$3" master br0 up
    ip -n "$name" link set lo up
    ip -n "$name" addr add "$ip/24" dev eth0
    ip -n "$name" link set eth0 up
    nsenter --net="/run/netns/$name" unshare --mount --propagation private \
        sh /rig/sn-init.sh "$d" < /dev/null > "$d/init.log" 2>&1 &
    i=0
    while [ ! -e "$d/ready" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
    if [ ! -e "$d/ready" ]; then
        fail "SN $name did not start: $(cat "$d/init.log" "$d/nfsd.log" 2>/dev/null | tail -3)"
        return 1
    fi
    # dmesg names the network namespace by its inode number, in hex
    net=$(printf %x "$(stat -L -c %i "/run/netns/$name")")
    if dmesg | grep -q "skipping NFSv4 grace period (net $net)"; then grace="grace period skipped"
    else grace="WARNING: in the 10 s grace period, OPEN waits"; fi
    rig_log "$name up at $ip ($grace)"
}

# sn NAME CMD...: run CMD in SN NAME's network and mount namespaces
sn() { n=$1; shift; nsenter -t "$(cat "/run/sn/$n/pid")" -n -m -- "$@"; }

# --- steps (written by plan.py) ----------------------------------------------------------------
scenario_begin() { SCEN=$1; MNT=0; rig_log "scenario $SCEN"; }

# sn_exports SN FILE: install FILE as the SN's /etc/exports.d/hanfs.exports
sn_exports() { cp "$2" "/run/sn/$1/exports.d/hanfs.exports"; }

# sn_dir SN PATH: create PATH on the SN with a marker file naming the SN and the path
sn_dir() { mkdir -p "/run/sn/$1/root$2" && echo "$1:$2" > "/run/sn/$1/root$2/rig-marker"; }

# sn_mountpoint SN PATH: mount --bind PATH PATH, inside the SN
sn_mountpoint() { sn "$1" mount --bind "$2" "$2" || fail "mount --bind $2 $2 on $1"; }

sn_reload() {
    out=$(sn "$1" exportfs -ra 2>&1) || fail "exportfs -ra on $1: $out"
    [ -z "$out" ] || note "exportfs -ra on $1: $out"
}

# nfs_mount SERVER:PATH: mount it on a new directory $M (not in $(...): M must stay set)
nfs_mount() {
    MNT=$((MNT + 1)); M=/mnt/rig/$SCEN.$MNT; mkdir -p "$M"
    out=$(timeout 30 mount.nfs4 "$1" "$M" -o vers=4.2,soft,timeo=50,retrans=2 2>&1)
}
mounted() { awk -v m="$1" '$2 == m { dev = $1 } END { print dev }' /proc/mounts; }

# check_writable SN PATH ON_SN ON_PATH: a file written via the mount $M shows up on ON_SN
check_writable() {
    msg="written via $1:$2"
    echo "$msg" > "$M/rig-written" 2>/dev/null
    got=$(cat "/run/sn/$3/root$4/rig-written" 2>/dev/null)
    if [ "$got" = "$msg" ]; then pass "(e) rw: a file written via $1:$2 lands in $3:$4"
    else fail "(e) rw: a file written via $1:$2 is not in $3:$4 (found '$got')"; fi
}

# check_refer SN IP PATH TO_SN TO_IP TO_PATH rw|ro: (a) the kernel client follows the referral
check_refer() {
    what="(a) referral $1:$3 -> $5:$6"
    if ! nfs_mount "$2:$3"; then fail "$what: mount failed: $out"; return; fi
    dev=$(mounted "$M"); got=$(timeout 10 cat "$M/rig-marker" 2>&1)
    if [ "$dev" = "$5:$6" ] && [ "$got" = "$4:$6" ]; then
        pass "$what: /proc/mounts shows $dev, read '$got'"
    else
        fail "$what: /proc/mounts shows '$dev', read '$got'"
    fi
    [ "$7" = rw ] && check_writable "$1" "$3" "$4" "$6"
}

# check_local SN IP PATH: (d) a replicas= export is served by the SN itself
check_local() {
    what="(d) replicas export $1:$3 served locally"
    if ! nfs_mount "$2:$3"; then fail "$what: mount failed: $out"; return; fi
    dev=$(mounted "$M"); got=$(timeout 10 cat "$M/rig-marker" 2>&1)
    if [ "$dev" = "$2:$3" ] && [ "$got" = "$1:$3" ]; then pass "$what: read '$got'"
    else fail "$what: /proc/mounts shows '$dev', read '$got'"; fi
}

# check_plain SN IP PATH rw|ro: a plain export mounts (and takes writes when rw)
check_plain() {
    what="(e) export $1:$3 mounts"
    if ! nfs_mount "$2:$3"; then fail "$what: mount failed: $out"; return; fi
    got=$(timeout 10 cat "$M/rig-marker" 2>&1)
    if [ "$got" = "$1:$3" ]; then pass "$what: read '$got'"; else fail "$what: read '$got'"; fi
    [ "$4" = rw ] && check_writable "$1" "$3" "$1" "$3"
}

# check_fsloc EXPECT.json: (b) GETATTR(fs_locations) and (c) mountd's parse, see fsloc.py
check_fsloc() { python3 -S -B /rig/fsloc.py --check "$1" || RIG_RC=1; }

scenario_end() {
    for m in $(awk '$2 ~ "^/mnt/rig/" { print $2 }' /proc/mounts | sort -r); do umount -l "$m"; done
    rig_log "scenario $SCEN done"
}

rig_main() {
    RIG_RC=0
    rig_log "guest ready"
    net_up
    i=0
    while read -r name ip; do
        i=$((i + 1)); sn_start "$name" "$ip" "$i" &
    done < /share/sns
    wait
    # sn_start ran in the background: its fail() could not set RIG_RC here
    while read -r name ip; do [ -e "/run/sn/$name/ready" ] || RIG_RC=1; done < /share/sns
    for s in /share/scenarios/*/steps.sh; do . "$s"; done
    if [ "${RIG_DEBUG:-0}" = 1 ] || [ $RIG_RC != 0 ]; then
        for f in /run/sn/*/*.log; do [ -s "$f" ] && sed "s|^|  $f: |" "$f" | tail -15; done
        dmesg | grep -iE 'nfs|rpc|grace' | tail -15 | sed 's/^/  dmesg: /'
    fi
    return $RIG_RC
}
