# Sourced by /init in the guest: the rig's building blocks and checks.
#
# One guest kernel, one network namespace per SN, each running its own kernel nfsd:
#
#   root netns: the NFS client, 10.0.0.254
#     ├── veth1 ── netns sn1: nfsd + mountd + nfsdcld at 10.0.0.1, own /install, /nodedata, ...
#     ├── veth2 ── netns sn2: ... 10.0.0.2
#     └── ...
#
# No bridge: each veth carries 10.0.0.254/32 and a /32 route to its SN (the bridge module
# would pull in ipv6.ko, the biggest module, for nothing).  Seen from the root namespace,
# SN NAME's disk is /run/sn/NAME/root (tmpfs; its /install is /run/sn/NAME/root/install) and
# its logs are /run/sn/NAME/*.log.  The host (plan.py) writes /share/sns, /share/tops and one
# steps.sh per scenario, which calls the functions below.
#
# Process creation is slow under UML (each exec is a new host process set up via ptrace),
# so these helpers use shell builtins where they can and batch what they cannot.

CLIENT=10.0.0.254
rig_log() { read -r up rest < /proc/uptime; echo "[rig ${up}s] $*"; }
pass() { echo "PASS: $SCEN $*"; }
fail() { echo "FAIL: $SCEN $*"; RIG_RC=1; }
. /rig/statelite-rw.sh
. /rig/statelite-bench.sh
note() { echo "  note: $*"; }

# start every SN in /share/sns ("name ip" lines) at once; return when all nfsds run
sns_start() {
    tops=$(cat /share/tops) dirs= batch= i=0
    while read -r name ip; do
        i=$((i + 1))
        dirs="$dirs /run/sn/$name/root"
        batch="$batch
netns add $name
link add veth$i type veth peer name eth0 netns $name
address add $CLIENT/32 dev veth$i
link set veth$i up
route add $ip/32 dev veth$i src $CLIENT"
    done < /share/sns
    mkdir -p /mnt/rig $dirs $(for t in $tops; do echo "/$t"; done)
    ip link set lo up
    echo "$batch" | ip -batch - || fail "network setup"
    while read -r name ip; do
        d=/run/sn/$name
        mount -t tmpfs -o size=64m "sn-$name" "$d/root"
        mkdir -p "$d/exports.d" "$d/nfs/rpc_pipefs" "$d/nfs/nfsdcld" $(for t in $tops; do echo "$d/root/$t"; done)
        : > "$d/nfs/etab"; : > "$d/nfs/rmtab"
        # unshare -u: an own host name per SN; nfsd takes its NFSv4.1 server owner and scope from
        # it, and a 4.1 client treats servers with the same owner as one (trunking).  /usr/bin/dash by
        # path: busybox would run "sh" as its own ash, which runs busybox ip instead of the real one
        ip netns exec "$name" unshare -u /usr/bin/dash /rig/sn-init.sh "$d" "$ip" "$name" < /dev/null > "$d/init.log" 2>&1 &
    done < /share/sns
    i=0 waiting=x
    while [ -n "$waiting" ] && [ $i -lt 300 ]; do
        waiting=
        while read -r name ip; do [ -e "/run/sn/$name/ready" ] || waiting="$waiting $name"; done < /share/sns
        [ -z "$waiting" ] || sleep 0.1
        i=$((i + 1))
    done
    for name in $waiting; do
        fail "SN $name did not start: $(cat "/run/sn/$name/init.log" "/run/sn/$name/nfsd.log" 2>/dev/null | tail -3)"
    done
    n=$(dmesg | grep -c 'skipping NFSv4 grace period')
    total=$(grep -c . /share/sns)
    if [ "$n" = "$total" ]; then rig_log "$total SNs up (every nfsd skipped its grace period)"
    else rig_log "$total SNs up; WARNING: only $n of them skipped the grace period (OPEN waits up to 10 s)"; fi
}

# (g) each SN its own NFSv4.1 server (own host name, see sns_start).  Run after the scenarios:
# nfsd denies every RPC from a client no export of it names.
check_owners() {
    python3 -S -B /rig/fsloc.py --owners $(while read -r name ip; do echo "$name=$ip"; done < /share/sns) ||
        RIG_RC=1
}

# sn NAME CMD...: run CMD in SN NAME's network, mount and UTS namespaces
sn() { read -r pid < "/run/sn/$1/pid"; shift; nsenter -t "$pid" -n -m -u -- "$@"; }

# --- steps (written by plan.py) ----------------------------------------------------------------
# scenario_begin NAME MOUNTS: the scenario's client mount points, /mnt/rig/NAME.1 ...
scenario_begin() {
    SCEN=$1 MNT=0 i=1 dirs=
    while [ $i -le "$2" ]; do dirs="$dirs /mnt/rig/$SCEN.$i"; i=$((i + 1)); done
    [ -z "$dirs" ] || mkdir -p $dirs
    rig_log "scenario $SCEN"
}

# sn_exports SN FILE: FILE becomes the SN's /etc/exports.d/hanfs.exports
sn_exports() { cp "$2" "/run/sn/$1/exports.d/hanfs.exports"; }

# sn_dirs SN PATH...: create the paths on the SN, each with a marker file "SN:PATH"
sn_dirs() {
    s=$1; shift
    root=/run/sn/$s/root
    mkdir -p $(for p in "$@"; do echo "$root$p"; done)
    for p in "$@"; do echo "$s:$p" > "$root$p/rig-marker"; done
}

# sn_lite_mounts SN ROOT...: `hanfs agent` with statelite_roots ROOT..., started in SN's namespaces
# (where its mountd resolves export paths) over the SN's exports file: at start it makes every
# statelite node directory exported inside an exported area a mount point of its own, as on a real
# SN after a boot and before each reload (crates/agent/src/mounts.rs); stopped once it listens.
# HANFS_RIG_LITE_MOUNTS=0 leaves them plain directories (the break run: nfsd then keeps the node
# directories inside the area's export, and the referral checks fail).
sn_lite_mounts() {
    s=$1; shift
    [ "${RIG_LITE_MOUNTS:-1}" = 1 ] || { note "$s: statelite node directories left plain (RIG_LITE_MOUNTS=0)"; return; }
    [ -x /share/hanfs/hanfs ] || { fail "$s: no hanfs binary to make the statelite mounts"; return; }
    a=/run/sn/$s/agent roots=
    for r in "$@"; do roots="$roots\"$r\", "; done
    mkdir -p "$a"
    printf '%s\n' 'listen = "127.0.0.1:7468"' 'plaintext_loopback = true' 'root = "/self/agent/root"' \
        'state_dir = "/self/agent/state"' 'dialect = "linux"' 'exports_file = "/etc/exports.d/hanfs.exports"' \
        'reload = ["true"]' "statelite_roots = [${roots%, }]" > "$a/agent.toml"
    : > "$a/agent.log"
    # nsenter itself, not the `sn` function: $! must be the agent (nsenter and env exec it), not a subshell
    read -r snpid < "/run/sn/$s/pid"
    nsenter -t "$snpid" -n -m -u -- env LD_LIBRARY_PATH=/share/hanfs/lib /share/hanfs/hanfs agent \
        --config /self/agent/agent.toml < /dev/null > /dev/null 2>> "$a/agent.log" &
    pid=$! i=0 up=
    while [ -z "$up" ] && [ $i -lt 300 ]; do
        while read -r line; do case $line in *"listening on"*) up=1 ;; esac; done < "$a/agent.log"
        [ -n "$up" ] || { kill -0 "$pid" 2> /dev/null || break; sleep 0.1; }
        i=$((i + 1))
    done
    kill "$pid" 2> /dev/null; wait "$pid" 2> /dev/null
    [ -n "$up" ] || fail "$s: the agent making the statelite mounts did not start: $(tail -3 "$a/agent.log")"
    n=0
    while read -r id parent dev root mp rest; do
        for r in "$@"; do case $mp in "$r"/*) n=$((n + 1)) ;; esac; done
    done < "/proc/$snpid/mountinfo"
    rig_log "$s: $n statelite node directories are mount points"
}

# check_xcat_lite SN IP AREA NODE TO_SN TO_IP: (j) the statelite mount of xCAT's initrd
# (xcat-core 7733d16f, xCAT-server/share/xcat/netboot/rh/dracut_033/xcatroot lines 219-257): mount
# SN:AREA, mkdir -p NODE in it, unmount, mount SN:AREA/NODE and write.  The node's data must be
# TO_SN's (SN itself, or the SN a refer= on SN's node export sends it to): /proc/mounts shows
# TO_IP:AREA/NODE and the file lands on TO_SN's disk.
check_xcat_lite() {
    what="(j) xCAT's statelite mount $1:$3, mkdir $4, remount $1:$3/$4"
    if ! nfs_mount "$2:$3"; then fail "$what: mounting the area failed: $out"; return; fi
    out=$(mkdir -p "$M/$4" 2>&1) || { fail "$what: mkdir -p: $out"; umount "$M"; return; }
    umount "$M" || { fail "$what: umount"; return; }
    if ! nfs_mount "$2:$3/$4"; then fail "$what: mounting the node's directory failed: $out"; return; fi
    msg="xcat-lite via $1:$3/$4" got=
    echo "$msg" > "$M/rig-xcat" 2> /dev/null
    read -r got < "/run/sn/$5/root$3/$4/rig-xcat" 2> /dev/null
    if [ "$DEV" = "$6:$3/$4" ] && [ "$got" = "$msg" ]; then
        pass "$what: /proc/mounts shows $DEV, the file lands on $5's disk"
    else
        fail "$what: /proc/mounts shows '$DEV', on $5's disk: '$got'"
    fi
}

sn_reload() {
    out=$(sn "$1" exportfs -ra 2>&1) || fail "exportfs -ra on $1: $out"
    [ -z "$out" ] || note "exportfs -ra on $1: $out"
}

# nfs_mount SERVER:PATH: mount it (NFS version $VERS, default 4.2) on the next /mnt/rig/SCEN.N,
# set $M, $DEV (what /proc/mounts shows there) and $MARKER (the rig-marker file read through it).
# busybox mount hands the options to the kernel as text, as mount.nfs does for NFSv4 (addr=
# and clientaddr= are what mount.nfs would add); being static it starts much faster under
# UML.  soft: I/O fails instead of hanging if a server does not answer.
nfs_mount() {
    MNT=$((MNT + 1)) M=/mnt/rig/$SCEN.$MNT DEV= MARKER=
    out=$(mount -t nfs4 -o "vers=${VERS:-4.2},soft,timeo=100,retrans=3,addr=${1%%:*},clientaddr=$CLIENT" "$1" "$M" 2>&1) ||
        return 1
    while read -r dev mp rest; do [ "$mp" = "$M" ] && DEV=$dev; done < /proc/mounts
    read -r MARKER < "$M/rig-marker" 2> /dev/null
    return 0
}

# check_writable SN PATH ON_SN ON_PATH: a file written through $M shows up on ON_SN's disk
check_writable() {
    msg="written via $1:$2" got=
    echo "$msg" > "$M/rig-written"
    read -r got < "/run/sn/$3/root$4/rig-written" 2> /dev/null
    if [ "$got" = "$msg" ]; then pass "(e) rw: a file written via $1:$2 lands in $3:$4"
    else fail "(e) rw: a file written via $1:$2 is not in $3:$4 (found '$got')"; fi
}

# check_refer SN IP PATH TO_SN TO_IP TO_PATH rw|ro: (a) the kernel client follows the referral
check_refer() {
    what="(a) referral $1:$3 -> $5:$6"
    if ! nfs_mount "$2:$3"; then fail "$what: mount failed: $out"; return; fi
    if [ "$DEV" = "$5:$6" ] && [ "$MARKER" = "$4:$6" ]; then
        pass "$what: /proc/mounts shows $DEV, read '$MARKER'"
    else
        fail "$what: /proc/mounts shows '$DEV', read '$MARKER'"
    fi
    [ "$7" = rw ] && check_writable "$1" "$3" "$4" "$6"
}

# check_local SN IP PATH: (d) a replicas= export is served by the SN itself
check_local() {
    what="(d) replicas export $1:$3 served locally"
    if ! nfs_mount "$2:$3"; then fail "$what: mount failed: $out"; return; fi
    if [ "$DEV" = "$2:$3" ] && [ "$MARKER" = "$1:$3" ]; then pass "$what: read '$MARKER'"
    else fail "$what: /proc/mounts shows '$DEV', read '$MARKER'"; fi
}

# check_plain SN IP PATH rw|ro: a plain export mounts (and takes writes when rw)
check_plain() {
    what="(e) export $1:$3 mounts"
    if ! nfs_mount "$2:$3"; then fail "$what: mount failed: $out"; return; fi
    if [ "$MARKER" = "$1:$3" ]; then pass "$what: read '$MARKER'"; else fail "$what: read '$MARKER'"; fi
    [ "$4" = rw ] && check_writable "$1" "$3" "$1" "$3"
}

# check_mounted_migrate SN IP PATH TO_SN TO_IP TO_PATH AFTER_DIR: (h) a planned move of data a
# client has mounted.  The client mounts SN:PATH (NFSv$RIG_MIGRATE_VERS, 4.0 unless the host
# says otherwise), opens a file and makes a directory in it its cwd; then every SN switches to
# the exports `hanfs migrate` renders (AFTER_DIR/<sn>.exports: refer= on SN, rw on TO_SN).  The
# next call on the mount gets NFS4ERR_MOVED, and the client fetches fs_locations and moves its
# mount to TO_SN with the same file handles.  kernel nfsd's handles name the export root by fsid
# alone (the same on both SNs) but every other object by inode number and generation, which
# differ on TO_SN's copy: what is reached by a new lookup from the root moves, what the client
# already holds goes stale.  What must hold (README "Planned moves of data a client has mounted"):
#   new files land on TO_SN and a new lookup reads TO_SN's data; the held-open file and the cwd
#   fail with ESTALE (no hang, no wrong data); nothing new lands on SN; no kernel warning.
check_mounted_migrate() {
    vers=${RIG_MIGRATE_VERS:-4.0}
    what="(h) mounted (NFSv$vers), then migrated $1:$3 -> $4:$6"
    from=/run/sn/$1/root$3 to=/run/sn/$4/root$6
    # TO_SN's copy as the final sync of `hanfs migrate` leaves it: the same files, other inodes
    mkdir -p "$from/sub" "$to/sub"
    echo "$4:$6" > "$to/rig-marker"
    for d in "$from" "$to"; do
        cp /share/held "$d/held"
        echo "in the cwd" > "$d/sub/file"
    done
    if ! VERS=$vers nfs_mount "$2:$3"; then fail "$what: mount failed: $out"; return; fi
    exec 4< "$M/held"
    cd "$M/sub" || { fail "$what: cd $M/sub"; exec 4<&-; return; }
    marks=$(dmesg | grep -c .)
    for f in "$7"/*.exports; do s=${f##*/}; sn_exports "${s%.exports}" "$f"; done
    # the agent makes the node directories of the new exports mount points before the reload
    for f in "$7"/*.exports; do s=${f##*/}; sn_lite_mounts "${s%.exports}" $RIG_LITE_ROOTS; done
    sn_reload "$4"; sn_reload "$1"   # rw on the target first, then the referral (as migrate does)
    echo 3 > /proc/sys/vm/drop_caches
    # timeout: a hung call is a failure, not a hung rig (soft mounts give up after about 40 s)
    t0=$(cut -d' ' -f1 /proc/uptime)
    if out=$(timeout 90 dash -c 'echo "created after the move" > "$1/created"' - "$M" 2>&1) &&
        got= && read -r got < "$to/created" 2> /dev/null && [ "$got" = "created after the move" ] &&
        [ ! -e "$from/created" ]; then
        pass "$what: a file created after the move lands on $4's disk, not on $1's"
    else
        fail "$what: a file created after the move: ${out:-not on $4's disk (on $1's: $(ls "$from/created" 2>&1))}"
    fi
    got=$(timeout 90 cat "$M/rig-marker" 2>&1)
    if [ "$got" = "$4:$6" ]; then pass "$what: a new lookup reads $4's copy ('$got')"
    else fail "$what: a new lookup read '$got', not '$4:$6'"; fi
    timeout 90 cat <&4 > /run/held.got 2> /run/held.err
    got=$(head -c 200 /run/held.err)
    case $got in
        *"Stale file handle"*) pass "$what: the held-open file fails with ESTALE, as documented" ;;
        *) if cmp -s /run/held.got /share/held; then
               fail "$what: the held-open file still reads, byte for byte: the documented ESTALE is wrong"
           else fail "$what: the held-open file: '$got', $(wc -c < /run/held.got) bytes read (documented: ESTALE)"; fi ;;
    esac
    got=$(timeout 90 cat file 2>&1)
    case $got in
        *"Stale file handle"*) pass "$what: the cwd fails with ESTALE, as documented" ;;
        *) fail "$what: the cwd: '$got' (documented: ESTALE)" ;;
    esac
    cd /; exec 4<&-
    t1=$(cut -d' ' -f1 /proc/uptime)
    rig_log "after the move: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s for the four calls"
    H_MARKS=$marks H_WHAT=$what   # the kernel check waits for scenario_end: the warnings come late
}

# check_fsloc EXPECT.json: (b) GETATTR(fs_locations) and (c) mountd's parse, see fsloc.py
check_fsloc() { python3 -S -B /rig/fsloc.py --check "$1" || RIG_RC=1; }

scenario_end() {
    umount -l $(while read -r dev mp rest; do case $mp in /mnt/rig/*) echo "$mp" ;; esac; done < /proc/mounts) 2> /dev/null
    if [ -n "${H_MARKS:-}" ]; then  # (h): nothing in the kernel log since the move, unmount included
        sleep 1
        warn=$(dmesg | tail -n +$((H_MARKS + 1)) | grep -E 'WARNING|BUG|Oops|refcount_t|use-after-free|general protection' | head -3)
        if [ -z "$warn" ]; then pass "$H_WHAT: no kernel warning, also after unmounting"
        else fail "$H_WHAT: kernel: $warn"; fi
        H_MARKS=
    fi
    rig_log "scenario $SCEN done"
}

# --- nfs3-failover: the kernel NFSv3 client against hanfs' embedded server (crates/nfs3) ------
# Two copies of one tree (cp -a: other inode numbers), served one after the other on the same
# address by `hanfs agent` (nfs3 =), as when a node's SN dies and its backup takes the address
# over. The client holds an open file and a cwd in the mount across the switch; both must keep
# working, which they do only if both servers hand out the same file handles. Control: a server
# whose handles differ (the same bytes at other paths: hanfs' handles are hashes of the path)
# must make the same open file stale, as kernel nfsd on another SN would.
NFS3_PORT=2050
# NAME: an agent serving /run/v3/NAME over NFSv3, its state in /run/v3/NAME.state.  Every agent's
# root is /run/v3/srv (NAME bind-mounted there), as every SN's is /install: the export name, and
# so the handle generation, is the root's path.
nfs3_start() {
    s=/run/v3/$1.state
    mkdir -p "$s" /run/v3/srv
    mount --bind "/run/v3/$1" /run/v3/srv || return 1
    printf '%s\n' 'listen = "127.0.0.1:7468"' 'plaintext_loopback = true' 'root = "/run/v3/srv"' \
        "state_dir = \"$s\"" 'dialect = "linux"' "exports_file = \"$s/hanfs.exports\"" 'reload = ["true"]' \
        "nfs3 = \"127.0.0.1:$NFS3_PORT\"" > "$s/agent.toml"
    LD_LIBRARY_PATH=/share/hanfs/lib /share/hanfs/hanfs agent --config "$s/agent.toml" \
        < /dev/null > /dev/null 2>> /run/v3/server.log &
    NFS3_PID=$! i=0
    # up when /proc/net/tcp lists 127.0.0.1:2050 (0100007F:0802) in state LISTEN (0A)
    want=$(printf '0100007F:%04X' $NFS3_PORT)
    while [ $i -lt 300 ]; do
        while read -r sl local remote st rest; do
            [ "$local" = "$want" ] && [ "$st" = 0A ] && return 0
        done < /proc/net/tcp
        kill -0 "$NFS3_PID" 2> /dev/null || return 1
        sleep 0.1; i=$((i + 1))
    done
    return 1
}
nfs3_stop() { kill "$NFS3_PID" 2> /dev/null; wait "$NFS3_PID" 2> /dev/null; umount /run/v3/srv; }

nfs3_failover() {
    SCEN=nfs3-failover d=/run/v3 m=/mnt/rig/nfs3
    rig_log "scenario $SCEN"
    mkdir -p $d/a/sub $m
    echo "hello from the image" > $d/a/hello
    dd if=/dev/urandom of=$d/a/sub/big bs=64k count=32 2> /dev/null
    ln -s ../hello $d/a/sub/link
    touch -h -d "2024-05-01 12:00:00" $d/a/hello $d/a/sub/big $d/a/sub/link $d/a/sub $d/a
    cp -a $d/a $d/b
    cp -a $d/b $d/c; mv $d/c/sub $d/c/moved   # the control: the same bytes at other paths
    [ "$(stat -c %i $d/a/sub/big)" != "$(stat -c %i $d/b/sub/big)" ] || note "the copies share inode numbers"
    if ! nfs3_start a; then fail "(f) server A did not start: $(tail -3 $d/server.log)"; return; fi
    opts="vers=3,proto=tcp,port=$NFS3_PORT,mountport=$NFS3_PORT,mountproto=tcp,mountvers=3,nolock,noacl"
    if ! out=$(mount -t nfs -o "$opts,soft,timeo=30,retrans=2,addr=127.0.0.1" 127.0.0.1:/run/v3/srv $m 2>&1); then
        fail "(f) NFSv3 mount of server A: $out"; nfs3_stop; return
    fi
    l=; read -r l < $m/hello
    if [ "$l" = "hello from the image" ]; then pass "(f) the kernel NFSv3 client reads hanfs' server"
    else fail "(f) read '$l' through the NFSv3 mount"; fi
    exec 3< $m/sub/big
    cd $m/sub
    nfs3_stop
    if ! nfs3_start b; then fail "(f) server B did not start: $(tail -3 $d/server.log)"; cd /; return; fi
    echo 3 > /proc/sys/vm/drop_caches
    if cat <&3 > $d/got 2> $d/err && cmp -s $d/got $d/b/sub/big; then
        pass "(f) a file opened on server A reads on from server B (another copy, other inodes)"
    else fail "(f) the open file after the switch: $(cat $d/err)"; fi
    l=$(cat link 2>&1)
    if [ "$l" = "hello from the image" ]; then pass "(f) the cwd and a symlink in it work after the switch"
    else fail "(f) cwd/symlink after the switch: $l"; fi
    exec 3<&-
    exec 3< $m/sub/big
    cd /
    nfs3_stop
    if ! nfs3_start c; then fail "(f) server C did not start"; exec 3<&-; return; fi
    echo 3 > /proc/sys/vm/drop_caches
    if cat <&3 > $d/got 2> /dev/null && cmp -s $d/got $d/c/moved/big; then
        fail "(f) control: a server with other handles still served the open file (the check proves nothing)"
    else pass "(f) control: with other handles the open file goes stale, as with kernel nfsd on another SN"; fi
    exec 3<&-
    umount -l $m 2> /dev/null
    nfs3_stop
    rig_log "scenario $SCEN done"
}

# --- sn-kill (check (i)): an SN dies under a running node, its backup takes the address over ------
# Issue #12 points 4 and 5.  On a LAN of its own (10.0.1.0/24: a dummy device with one macvlan per
# party, bridge mode, so ARP works as on a switch, and a gratuitous ARP really matters):
#   root netns = the node (client, 10.0.1.254)   netns mn: 10.0.1.250 (`hanfs daemon`: driver daemon)
#   netns sn1: 10.0.1.1 + the service address 10.0.1.101   netns sn2: 10.0.1.2 (sn1's backup)
# sn1 and sn2 run `hanfs agent` serving the same image replica (cp -a: other inodes) over NFSv3 at
# the same root path, so their handles are the same; their kernel nfsd serves the node's
# statelite directory.  The node mounts both from the service address with xCAT's options and
# runs workload.py.  Then sn1 is killed and the hook `takeover sn1 sn2` moves the address (later
# rounds alternate: the dead SN, repaired, is the next round's backup).
#
# RIG_HA_DRIVER=daemon (the default): `hanfs daemon` in netns mn detects, fences (ha-fence.sh) and has the
# backup's agent claim the address; the hook only waits (see "the daemon driver" below).
# RIG_HA_DRIVER=script, SCRIPTED STAND-INS:
#   - detection: the script knows when it killed sn1 (no health probe runs);
#   - the fence: ha_fence takes sn1's link down and kills its agent, as `rpower sn1 off` would,
#     and checks both (the fence-fails round makes its first attempt fail);
#   - the address move: `ip addr replace` in the backup's netns and busybox `arping -U` (the
#     takeover crate will do both through netlink and a packet socket inside the backup's agent);
#     no IPv6 here, and the guest has no ndisc6;
#   - the backup's agent listens on 0.0.0.0, so it serves the address as soon as it is there;
#   - ha_repair stands in for a repaired SN booting again as the spare.
HA_NET=10.0.1 HA_SVC=10.0.1.101 HA_PORT=2050 HA_DRIVER=${RIG_HA_DRIVER:-daemon}
# The node's statelite directory (issue 13), with the daemon driver: on hanfs' read-write server
# (`[[statelite_rw]]`, port $HA_RW_PORT): sn1's agent the primary of the area /ha-lite, sn2's its
# synchronous backup (the stream on $HA_RW_REPL, mutual TLS), both following the service address
# (standby until it is claimed).  HANFS_RIG_HA_RW=0, or the script driver: kernel nfsd (NFSv4.0)
# on both SNs, with nothing copied between them, as before.
HA_RW_PORT=2051 HA_RW_REPL=7470 HA_RW=${RIG_HA_RW:-1}
[ "$HA_DRIVER" = daemon ] || HA_RW=0
HA_LOG=/run/ha/log HA_EV=/run/ha/events
ha_ev() { read -r up rest < /proc/uptime; echo "$1 $(( ${up%.*}${up#*.} * 10 )) $2" >> $HA_EV; }

# ha_agent_start SN: `hanfs agent` in SN's namespaces, NFSv3 on 0.0.0.0:$HA_PORT, root /ha/image
ha_agent_start() {
    s=/run/sn/$1/ha-agent
    mkdir -p "$s"
    if [ "$HA_DRIVER" = daemon ]; then
        # driven by `hanfs daemon` in netns mn: mutual TLS on the LAN, and the LAN interface as the
        # one a claimed service address goes on (HANFS_RIG_HA_BREAK=noaddr: none, claims are refused)
        t=/share/hanfs/tls
        printf '%s\n' 'listen = "0.0.0.0:7468"' 'controller = "mn"' 'root = "/ha/image"' \
            "state_dir = \"$s\"" 'dialect = "linux"' "exports_file = \"$s/hanfs.exports\"" 'reload = ["true"]' \
            "nfs3 = \"0.0.0.0:$HA_PORT\"" > "$s/agent.toml"
        [ "${RIG_HA_BREAK:-}" = noaddr ] ||
            printf '%s\n' "takeover_interface = \"ha-$1\"" "takeover_allowed = [\"$HA_NET.0/24\"]" >> "$s/agent.toml"
        [ "$HA_RW" = 1 ] && printf '%s\n' 'statelite_roots = ["/ha-lite"]' 'statelite_mounts = false' >> "$s/agent.toml"
        printf '%s\n' '[tls]' "ca = \"$t/ca.pem\"" "cert = \"$t/$1.pem\"" "key = \"$t/$1.key\"" >> "$s/agent.toml"
        if [ "$HA_RW" = 1 ]; then
            # the rounds always kill sn1; both follow $HA_SVC as a symmetric pair: each streams to
            # the other while it holds the address (sn1 at first; sn2 after the takeover, which
            # copies back to the returned sn1 and streams to it until `migrate --back`) and applies
            # the other's stream in standby.  HANFS_RIG_HA_BREAK=norepl: sn1 sends nothing, sn2
            # only applies (no copy back either), the break run of the zero-loss checks.
            printf '%s\n' '[[statelite_rw]]' 'area = "/ha-lite"' "listen = \"0.0.0.0:$HA_RW_PORT\"" >> "$s/agent.toml"
            [ "${RIG_HA_BREAK:-}" = noaddr ] || echo "service_address = \"$HA_SVC/24\"" >> "$s/agent.toml"
            if [ "$1" = sn1 ]; then o=sn2 on=$HA_NET.2; else o=sn1 on=$HA_NET.1; fi
            if [ "${RIG_HA_BREAK:-}" != norepl ] && [ "${RIG_HA_BREAK:-}" != noaddr ]; then
                printf '%s\n' "peer = \"$on:$HA_RW_REPL\"" "peer_name = \"$o\"" >> "$s/agent.toml"
            fi
            if [ "$1" = sn2 ] || { [ "${RIG_HA_BREAK:-}" != norepl ] && [ "${RIG_HA_BREAK:-}" != noaddr ]; }; then
                printf '%s\n' "replica_listen = \"0.0.0.0:$HA_RW_REPL\"" "primary = \"$o\"" >> "$s/agent.toml"
            fi
        fi
    else
        printf '%s\n' 'listen = "127.0.0.1:7468"' 'plaintext_loopback = true' 'root = "/ha/image"' \
            "state_dir = \"$s\"" 'dialect = "linux"' "exports_file = \"$s/hanfs.exports\"" 'reload = ["true"]' \
            "nfs3 = \"0.0.0.0:$HA_PORT\"" > "$s/agent.toml"
    fi
    read -r snpid < "/run/sn/$1/pid"
    # nsenter execs (no fork without -p), env execs: $! is the agent itself
    nsenter -t "$snpid" -n -m -u -- env HANFS_LOG="${RIG_HA_AGENT_LOG:-info}" LD_LIBRARY_PATH=/share/hanfs/lib /share/hanfs/hanfs agent \
        --config "$s/agent.toml" < /dev/null > /dev/null 2>> "/run/sn/$1/ha-agent.log" &
    echo $! > "$s/pid"
    a=$! i=0 want=$(printf '00000000:%04X' $HA_PORT) want_rw=$(printf '00000000:%04X' $HA_RW_PORT)
    [ "$HA_RW" = 1 ] && [ "$HA_DRIVER" = daemon ] || want_rw=
    while [ $i -lt 300 ]; do   # its netns' /proc/net/tcp lists 0.0.0.0:2050 (and 2051) in LISTEN (0A)
        up= up_rw=
        while read -r sl local remote st rest; do
            [ "$local" = "$want" ] && [ "$st" = 0A ] && up=1
            [ "$local" = "$want_rw" ] && [ "$st" = 0A ] && up_rw=1
        done < "/proc/$a/net/tcp"
        [ -n "$up" ] && { [ -z "$want_rw" ] || [ -n "$up_rw" ]; } && return 0
        kill -0 "$a" 2> /dev/null || return 1
        sleep 0.1; i=$((i + 1))
    done
    return 1
}
ha_agent_pid() { read -r p < "/run/sn/$1/ha-agent/pid"; echo "$p"; }

# ha_fence SN: STAND-IN for the fence command (`rpower SN off`, then a check that it is off):
# SN's link down, its agent killed, then both verified.  Fails while HA_FENCE_FAILS > 0 (as a timed-out rpower would).
ha_fence() {
    if [ "${HA_FENCE_FAILS:-0}" -gt 0 ]; then HA_FENCE_FAILS=$((HA_FENCE_FAILS - 1)); return 1; fi
    p=$(ha_agent_pid "$1")
    kill -9 "$p" 2> /dev/null; wait "$p" 2> /dev/null
    ip -n "$1" link set "ha-$1" down || return 1
    ! kill -0 "$p" 2> /dev/null || return 1
    flags=$(ip -n "$1" -o link show "ha-$1") || return 1
    case $flags in *"<UP"*|*",UP"*) return 1 ;; esac
    return 0
}

# takeover DEAD BACKUP ROUND: THE decide-and-take-over step (one hook).  Today a script; when
# `hanfs daemon` (health + fence) and the agent (takeover crate) are wired in, its body becomes:
# wait until the daemon reports DEAD fenced and BACKUP serving-for DEAD, and take the times of
# the fence and the address move from its log.  What it does today, in the daemon's order:
#   1. fence DEAD (ha_fence); if that fails: nothing promoted, return 1 (the caller retries);
#   2. the service address on BACKUP's interface (`ip addr replace`: idempotent);
#   3. gratuitous ARP from BACKUP (busybox arping -U, RFC 5227 announcement) so the node's
#      neighbour entry moves now rather than when its own probes time out (RIG_HA_ARP=0: off);
#   4. BACKUP's agent serving NFSv3 on it: nothing to do, it listens on 0.0.0.0.
# RIG_HA_BREAK=noaddr skips step 2, =nofence promotes although the fence failed, =early adds
# the address before fencing: each must make check (i) fail.
takeover() {
    if [ "${RIG_HA_BREAK:-}" = early ]; then ip -n "$2" addr replace $HA_SVC/24 dev "ha-$2"; ha_ev addr "$3"; fi
    if ! ha_fence "$1"; then
        ha_ev fence-failed "$3"
        [ "${RIG_HA_BREAK:-}" = nofence ] || return 1
    else
        ha_ev fence "$3"
    fi
    [ "${RIG_HA_BREAK:-}" = noaddr ] || ip -n "$2" addr replace $HA_SVC/24 dev "ha-$2" || fail "(i) ip addr replace on $2"
    ha_ev addr "$3"
    [ "${RIG_HA_ARP:-1}" = 0 ] || sn "$2" arping -q -U -c 2 -w 2 -I "ha-$2" -s $HA_SVC $HA_SVC > /dev/null 2>&1 &
    return 0
}

# (dash has no local variables: these functions use names sn_kill and ha_round do not)
# --- the daemon driver (RIG_HA_DRIVER=daemon): `hanfs daemon` in netns mn decides and takes over -------
# One daemon per round, with that round's roles: DEAD carries the service address, BACKUP is its
# backup.  A fresh daemon per round stands in for the operator's release of the repaired SN (the
# detector keeps a fenced SN fenced until released, and the daemon has no release command yet).
# The daemon probes both SNs (TLS handshake with the agent, RPC NULL to NFSv3 and MOUNT on
# $HA_PORT at the service address, else at the SN's address), declares DEAD down after
# dead_after_secs, fences it with ha-fence.sh (ha_fence's steps, as `rpower off` and `rpower stat`),
# promotes BACKUP and asks BACKUP's agent to claim the address (takeover_interface, netlink, and a
# gratuitous ARP).  The hook only waits, and the times of the fence and of the claim come from the
# daemon's log (workload.py daemon-events).
HA_MN=/run/ha/mn
# ha_daemon_start DEAD BACKUP ROUND: write the round's cluster.toml, start the daemon, wait until it
# has had a good probe of both SNs (the detector needs the backup reachable to trust a Down)
ha_daemon_start() {
    c=$HA_MN/cluster-$3.toml st=$HA_MN/state-$3 t=/share/hanfs/tls
    mkdir -p "$st" $HA_MN/src/img
    [ -e $HA_MN/src/img/README ] || echo "the daemon watches this; the image is served from the SNs' copies" > $HA_MN/src/img/README
    {
        echo '[cluster]'
        echo "source_root = \"$HA_MN/src\""
        echo "state_dir = \"$st\""
        echo 'backups = "none"'
        echo 'failover = "auto"'
        echo 'fence = ["/usr/bin/dash", "/rig/ha-fence.sh", "{sn}", "off"]'
        echo 'fence_verify = ["/usr/bin/dash", "/rig/ha-fence.sh", "{sn}", "stat"]'
        echo 'fence_verify_expect = "off"'
        echo 'fence_timeout_secs = 10'
        # detection within the 15 s budget: Down 3-4 s after a kill; a probe (TLS handshake with
        # a debug agent under UML, at load) gets 2 s before it counts as failed
        # (the soak: hanfs' defaults, none of these lines)
        if [ "$3" != soak ]; then
            echo "probe_interval_secs = ${RIG_HA_INTERVAL:-1}"
            echo "probe_timeout_secs = ${RIG_HA_PROBE_TIMEOUT:-2}"
            echo "dead_after_secs = ${RIG_HA_DEAD_AFTER:-3}"
            echo 'hold_down_secs = 30'
        fi
        echo "nfs_port = $HA_PORT"
        echo "mount_port = $HA_PORT"
        echo "portmap_port = $HA_PORT"
        echo 'nfs_versions = [3]'
        printf '[tls]\nca = "%s/ca.pem"\ncert = "%s/mn.pem"\nkey = "%s/mn.key"\n' $t $t $t
        for s in sn1 sn2; do
            o=sn2; [ $s = sn2 ] && o=sn1
            printf '[[sn]]\nname = "%s"\naddress = "%s"\nagent = "%s:7468"\ndialect = "linux"\nbackups = ["%s"]\n' \
                $s $HA_NET.${s#sn} $HA_NET.${s#sn} $o
            [ $s = "$1" ] && echo "service_address = \"$HA_SVC/24\""
        done
        # the daemon wants an image to watch; this one goes to no SN (sns = []): the image the
        # node mounts is the SNs' own copies
        printf '[[image]]\nname = "ha-image"\npath = "img"\nclients = "*"\nsns = []\n'
        # the planned round moves the node by name (`migrate --node`): it must be declared
        [ "$3" != planned ] || printf '[[node]]\nname = "cn001"\nsns = ["sn1", "sn2"]\n'
    } > "$c"
    ip netns exec mn env NO_COLOR=1 HANFS_LOG="${RIG_HA_LOG:-info}" LD_LIBRARY_PATH=/share/hanfs/lib \
        /share/hanfs/hanfs --config "$c" daemon < /dev/null > /dev/null 2> $HA_MN/daemon-$3.log &
    HA_DAEMON=$! i=0
    while [ $i -lt 400 ]; do   # 40 s
        hd_n=0
        if [ -e "$st/health.json" ]; then
            hd_n=$(grep -o '"last_good_probe": *[0-9]' "$st/health.json" | grep -c .)
        fi
        [ "$hd_n" -ge 2 ] && { rig_log "sn-kill: daemon up, both SNs probed ($3)"; return 0; }
        kill -0 $HA_DAEMON 2> /dev/null || break
        sleep 0.1; i=$((i + 1))
    done
    fail "(i) $3: hanfs daemon did not report a good probe of both SNs: $(tail -3 $HA_MN/daemon-$3.log)"
    kill $HA_DAEMON 2> /dev/null; wait $HA_DAEMON 2> /dev/null
    return 1
}

# ha_holds SN: SN's network namespace has the service address (a local /32 in its fib_trie; read
# with the shell's read, as an `ip` exec per poll is slow under UML)
ha_holds() {
    read -r p < "/run/sn/$1/pid"; prev=
    while read -r a b c; do
        [ "$prev" = "|-- $HA_SVC" ] && [ "$a $b $c" = "/32 host LOCAL" ] && return 0
        prev="$a $b"
    done < "/proc/$p/net/fib_trie"
    return 1
}

# takeover_daemon DEAD BACKUP ROUND: wait (30 s at most) until the daemon's takeover put the service
# address on BACKUP; when the fence command failed on purpose (fence-fails), BACKUP must not hold
# it at that moment.  Then stop the daemon and turn its log into the round's events.
takeover_daemon() {
    i=0 seen=
    while [ $i -lt 300 ]; do
        if [ -z "$seen" ]; then
            while read -r e ms r; do [ "$e $r" = "fence-failed $3" ] && seen=$ms; done < $HA_EV
            if [ -n "$seen" ]; then
                if ha_holds "$2"; then fail "(i) $3: the fence failed, yet $2 holds $HA_SVC"
                else pass "(i) $3: the fence failed, $2 does not hold $HA_SVC"; fi
            fi
        fi
        ha_holds "$2" && break
        sleep 0.1; i=$((i + 1))
    done
    ha_holds "$2" || { fail "(i) $3: $2 does not hold $HA_SVC 30 s after the kill: $(grep -iE 'warn|error' $HA_MN/daemon-$3.log | tail -2)"; return 1; }
    [ "${RIG_HA_ARP:-1}" = 1 ] || note "RIG_HA_ARP=0 has no effect with the daemon driver"
    return 0
}

# ha_daemon_stop ROUND DEAD BACKUP: stop the round's daemon, append its decisions to the events
ha_daemon_stop() {
    kill $HA_DAEMON 2> /dev/null; wait $HA_DAEMON 2> /dev/null
    python3 -S -B /rig/workload.py daemon-events $HA_MN/daemon-$1.log "$1" "$2" "$3" >> $HA_EV ||
        fail "(i) $1: reading the daemon's log"
}

# ha_repair SN: STAND-IN for a repaired SN booting again: on the LAN, its agent up, without the
# service address (that stays with the backup until `hanfs migrate --back`, not tested here)
ha_repair() {
    # A rebooted SN has no TCP connection left; this netns would keep the dead agent's orphaned
    # sockets (their FIN never left: the link was down), and with the same 4-tuple as the node's
    # next connection (the RPC client reconnects from the same port) they swallow it: no RST, the
    # node hangs.  tcp_orphan_retries=1 (set at start-up) ends them within about a second.
    read -r snpid < "/run/sn/$1/pid"
    i=0 want=$(printf ':%04X' $HA_PORT) left=x
    while [ -n "$left" ] && [ $i -lt 50 ]; do
        left=
        while read -r sl local remote st rest; do
            case $local in *"$want") [ "$st" = 0A ] || left="$left $st" ;; esac
        done < "/proc/$snpid/net/tcp"
        [ -z "$left" ] || sleep 0.1
        i=$((i + 1))
    done
    [ -z "$left" ] || fail "(i) $1: connections of its former life left (TCP states$left)"
    ip -n "$1" addr del $HA_SVC/24 dev "ha-$1" 2> /dev/null
    ip -n "$1" link set "ha-$1" up
    ha_agent_start "$1" || { fail "(i) $1's agent did not restart: $(tail -2 "/run/sn/$1/ha-agent.log")"; return 1; }
    # (read-write area: no copy back here; BACKUP, holding the address, reconciles the returned
    # DEAD, in standby, and streams to it while the node keeps appending; migrate --back waits
    # for that)
}

# ha_rw_after_takeover DEAD BACKUP ROUND: the acceptance of issue 13 on the node's statelite file:
# every append acknowledged so far is on BACKUP's disk, and (first round) the descriptor the
# holder opened before renaming its file works on BACKUP: its uncommitted UNSTABLE write and a
# new append are under the new name on BACKUP's disk.
ha_rw_after_takeover() {
    python3 -S -B /rig/workload.py lost $HA_LOG /run/sn/$2/root/ha-lite/cn001/node.log "$SCEN (i) $3" || RIG_RC=1
    [ -e $HA_LOG/hold.ready ] && [ ! -e $HA_LOG/hold.go ] || return 0
    : > $HA_LOG/hold.go
    i=0; while [ ! -s $HA_LOG/hold.result ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    res=$(cat $HA_LOG/hold.result 2> /dev/null)
    d=/run/sn/$2/root/ha-lite/cn001
    want=$(printf '1 before the rename\n2 after the rename\n3 unstable, uncommitted at the kill\n4 after the takeover')
    if [ "$res" = ok ] && [ "$(cat $d/rot.log.1 2> /dev/null)" = "$want" ] && [ ! -e $d/rot.log ]; then
        pass "(i) $3: a file renamed while open, then the takeover: its descriptor writes on (the uncommitted UNSTABLE write resent after the new verifier, then fsync), the bytes under the new name on $2's disk"
    else
        fail "(i) $3: the descriptor held across the rename and the takeover: ${res:-no result} / $2 has: $(cat $d/rot.log.1 2>&1 | tr '\n' '|')"
    fi
    grep -q 'statelite area promoted' /run/sn/$2/ha-agent.log || fail "(i) $3: $2's agent logged no promotion of the area"
}

# ha_rw_back_checks DEAD BACKUP ROUND: after `migrate --back` of the read-write area (a symmetric
# pair): it moved by the service address (the report's `via`), BACKUP had reconciled the returned
# DEAD (its agent's log), and every append the node had acknowledged is on DEAD's disk, which
# serves it again.
ha_rw_back_checks() {
    via=$(python3 -S -B -c 'import json, sys; print(json.load(open(sys.argv[1])).get("via"))' $HA_MN/back-$3.json 2>&1)
    if [ "$via" = service_address ]; then
        pass "(i) $3: migrate --back moved the read-write area by its service address (no copy by the MN)"
    else fail "(i) $3: migrate --back went by '$via', not by the service address"; fi
    if grep -q 'backup reconciled, area protected' /run/sn/$2/ha-agent.log; then
        pass "(i) $3: $2 (promoted) reconciled the returned $1 (standby) before the move back"
    else fail "(i) $3: $2's agent logged no reconciliation of $1"; fi
    python3 -S -B /rig/workload.py lost $HA_LOG /run/sn/$1/root/ha-lite/cn001/node.log "$SCEN (i) $3 back on $1" || RIG_RC=1
}

# ha_back DEAD BACKUP ROUND: the repaired DEAD gets its service address back from BACKUP through
# `hanfs migrate --back DEAD` (netns mn, the round's config) while the round's daemon runs:
# afterwards DEAD holds the address and BACKUP does not, the node keeps reading from its image,
# and the running daemon probes DEAD as up again (health.json) without fencing it a second time.
ha_back() {
    c=$HA_MN/cluster-$3.toml st=$HA_MN/state-$3
    if ! ip netns exec mn env NO_COLOR=1 HANFS_LOG=info LD_LIBRARY_PATH=/share/hanfs/lib /share/hanfs/hanfs \
            --config "$c" --json migrate --back "$1" < /dev/null > $HA_MN/back-$3.json 2> $HA_MN/back-$3.log; then
        fail "(i) $3: hanfs migrate --back $1 failed: $(grep -v '^ ' $HA_MN/back-$3.log | tail -3)"; return 1
    fi
    ha_ev back "$3"
    if ha_holds "$1" && ! ha_holds "$2"; then
        pass "(i) $3: migrate --back: $1 holds $HA_SVC again, $2 no longer (released, checked gone, then claimed)"
    else
        fail "(i) $3: after migrate --back: $1 holds $HA_SVC: $(ha_holds "$1" && echo yes || echo no), $2: $(ha_holds "$2" && echo yes || echo no)"
        return 1
    fi
    ha_wait_progress "$3 back" || return 1
    [ "$HA_RW" != 1 ] || [ "${RIG_HA_BREAK:-}" = norepl ] || ha_rw_back_checks "$1" "$2" "$3"
    # the running daemon reads returns.json each probe interval; 5 s later it must still call DEAD up
    i=0
    while [ $i -lt 50 ] && ! grep -q 'SN returned to service' $HA_MN/daemon-$3.log; do sleep 0.1; i=$((i + 1)); done
    sleep 5
    hb=$(python3 -S -B -c 'import json, sys
h = json.load(open(sys.argv[1]))
print(" ".join("%s=%s" % (s["name"], s["state"]) for s in h["sns"]))' "$st/health.json" 2>&1)
    fences=$(awk '/SN returned to service/ { r = 1 } r && /SN is down: fencing/ { n++ } END { print n + 0 }' $HA_MN/daemon-$3.log)
    case " $hb " in
        *" $1=up "*) [ "$fences" = 0 ] && { pass "(i) $3: the running daemon probes $1 as up after its return ($hb), no second fence"; return 0; } ;;
    esac
    fail "(i) $3: after migrate --back the daemon reports $hb, fenced $fences times after the return: $(grep -iE 'returned|error' $HA_MN/daemon-$3.log | tail -2)"
    return 1
}

# ha_planned FROM TO ROUND: issue 13 point 5, a planned move with the embedded server: `hanfs
# migrate --node cn001 --to TO` under a running daemon while the node appends through its open
# descriptor.  It must go by the service address (the report's `via`; no copy by the MN), TO then
# holds the address and FROM not, the node's reads go on, and every append acknowledged so far is
# on TO's disk; then `migrate --back FROM` returns it (ha_back's checks).
ha_planned() {
    echo "$3" > /run/ha/round; echo 0 > /run/ha/fence-fails
    ha_daemon_start "$1" "$2" "$3" || return 1
    c=$HA_MN/cluster-$3.toml hp_rc=0
    if ! ip netns exec mn env NO_COLOR=1 HANFS_LOG=info LD_LIBRARY_PATH=/share/hanfs/lib /share/hanfs/hanfs \
            --config "$c" --json migrate --node cn001 --to "$2" < /dev/null > $HA_MN/fwd-$3.json 2> $HA_MN/fwd-$3.log; then
        fail "(i) $3: hanfs migrate --node cn001 --to $2 failed: $(grep -v '^ ' $HA_MN/fwd-$3.log | tail -3)"; hp_rc=1
    fi
    if [ $hp_rc = 0 ]; then
        via=$(python3 -S -B -c 'import json, sys; print(json.load(open(sys.argv[1])).get("via"))' $HA_MN/fwd-$3.json 2>&1)
        if [ "$via" = service_address ]; then
            pass "(i) $3: migrate --node cn001 --to $2 moved the read-write area by its service address (no copy by the MN)"
        else fail "(i) $3: migrate --node went by '$via', not by the service address"; hp_rc=1; fi
        if ha_holds "$2" && ! ha_holds "$1"; then
            pass "(i) $3: after the planned move $2 holds $HA_SVC, $1 no longer"
        else
            fail "(i) $3: after the planned move: $2 holds $HA_SVC: $(ha_holds "$2" && echo yes || echo no), $1: $(ha_holds "$1" && echo yes || echo no)"
            hp_rc=1
        fi
    fi
    if [ $hp_rc = 0 ]; then
        ha_wait_progress "$3 moved" || hp_rc=1
        python3 -S -B /rig/workload.py lost $HA_LOG /run/sn/$2/root/ha-lite/cn001/node.log "$SCEN (i) $3 on $2" || RIG_RC=1
        ha_back "$1" "$2" "$3" || hp_rc=1
    fi
    ha_daemon_stop "$3" "$1" "$2"
    [ $hp_rc = 0 ] && rig_log "sn-kill: $3 ($1 -> $2 -> $1, planned) done (hanfs daemon)"
    return $hp_rc
}

# ha_wait_progress WHAT: wait (20 s at most) until the node's reader completes a good op after now
ha_wait_progress() {
    read -r up rest < /proc/uptime; since=$(( ${up%.*}${up#*.} * 10 )) i=0
    while [ $i -lt 200 ]; do
        p=0; read -r p 2> /dev/null < $HA_LOG/progress
        [ "${p:-0}" -gt "$since" ] && return 0
        sleep 0.1; i=$((i + 1))
    done
    fail "(i) $1: the node got no good image read for 20 s"; return 1
}

# ha_kill SN ROUND power|nfs: power: SN's agent SIGKILLed and its link down at once (power loss);
# nfs: only its NFS service (the agent, which serves it) dies, the SN stays on the network
ha_kill() {
    p=$(ha_agent_pid "$1")
    # power: the link first: killed first, the agent's sockets would send FIN and refuse the node's
    # reconnects (RST) before the link went down, which a powered-off SN never does
    [ "$3" = nfs ] || ip -n "$1" link set "ha-$1" down
    kill -9 "$p"
    ha_ev kill "$2"
    wait "$p" 2> /dev/null
}

ha_round() {  # ha_round DEAD BACKUP NAME power|nfs [FENCE_FAILS [back]]
    if [ "$HA_DRIVER" = daemon ]; then
        echo "$3" > /run/ha/round
        hr_f=${5:-0}; [ "${RIG_HA_BREAK:-}" = nofence ] && hr_f=1000   # nofence: the fence never works
        echo "$hr_f" > /run/ha/fence-fails
        ha_daemon_start "$1" "$2" "$3" || return 1
        sleep 0.3
        ha_kill "$1" "$3" "$4"
        takeover_daemon "$1" "$2" "$3"; hr_rc=$?
        [ $hr_rc != 0 ] || ha_wait_progress "$3" || hr_rc=1
        [ $hr_rc != 0 ] || [ "$HA_RW" != 1 ] || ha_rw_after_takeover "$1" "$2" "$3" || hr_rc=1
        # back: DEAD repaired and given its address back under the same daemon
        if [ $hr_rc = 0 ] && [ "${6:-}" = back ]; then { ha_repair "$1" "$2" && ha_back "$1" "$2" "$3"; } || hr_rc=1; fi
        ha_daemon_stop "$3" "$1" "$2"
        [ $hr_rc = 0 ] && rig_log "sn-kill: $3 ($1 -> $2) done (hanfs daemon)"
        return $hr_rc
    fi
    sleep 0.3
    ha_kill "$1" "$3" "$4"
    # RIG_HA_DETECT=S: S seconds before the hook, the time `hanfs daemon` will need to declare the
    # SN dead (its dead_after), to measure the stall a node will see then
    [ "${RIG_HA_DETECT:-0}" = 0 ] || sleep "$RIG_HA_DETECT"
    HA_FENCE_FAILS=${5:-0}
    while ! takeover "$1" "$2" "$3"; do
        # the fence failed: the daemon alerts and retries; the address must not have moved
        case $(ip -n "$2" -o addr show dev "ha-$2") in
            *" $HA_SVC/"*) fail "(i) $3: the fence failed, yet $2 holds $HA_SVC" ;;
            *) pass "(i) $3: the fence failed, $2 does not hold $HA_SVC" ;;
        esac
        sleep 1
    done
    ha_wait_progress "$3" && rig_log "sn-kill: $3 ($1 -> $2) done"
}

# ha_setup: the LAN, both agents, the node's mounts and its workload (sn-kill and the soak)
ha_setup() {
    sn1=$(grep -c '^sn[12] ' /share/sns)
    [ "$sn1" = 2 ] || { fail "(i) needs SNs sn1 and sn2 in the rig"; return 1; }
    mkdir -p /run/ha/src/bin /run/ha/src/data $HA_LOG /ha/image /ha-lite /mnt/ha/image /mnt/ha/lite
    : > $HA_EV
    cp /usr/bin/busybox /run/ha/src/bin/
    dd if=/dev/urandom of=/run/ha/src/data/a bs=64k count=1 2> /dev/null
    dd if=/dev/urandom of=/run/ha/src/data/b bs=64k count=4 2> /dev/null
    echo "a small file of the image" > /run/ha/src/data/c
    : > $HA_LOG/appender.log
    rm -f $HA_LOG/pause $HA_LOG/paused $HA_LOG/hold.*
    for s in sn1 sn2; do
        # (rw: the node makes cn001 through the primary, so both SNs hold it with one file id)
        if [ "$HA_RW" = 1 ]; then mkdir -p /run/sn/$s/root/ha-lite; else mkdir -p /run/sn/$s/root/ha-lite/cn001; fi
        cp -a /run/ha/src /run/sn/$s/root/ha-image   # the replica: same bytes, other inodes
        sn $s dash -c "mount --bind /run/sn/$s/root/ha-image /ha/image && mount --bind /run/sn/$s/root/ha-lite /ha-lite &&
                       echo 1 > /proc/sys/net/ipv4/tcp_orphan_retries" ||
            fail "(i) bind mounts on $s"
        # kernel nfsd mode: the statelite area exported by nfsd (hand-written here, not rendered by hanfs)
        if [ "$HA_RW" != 1 ]; then
            echo "/ha-lite 10.0.1.0/24(rw,no_root_squash,sync,no_subtree_check,insecure,fsid=1011)" > /run/sn/$s/exports.d/ha.exports
            sn_reload $s
        fi
    done
    ip netns add mn
    ip -batch - <<EOT || fail "(i) network"
link add ha-lan type dummy
link set ha-lan up
link add ha-c link ha-lan type macvlan mode bridge
address add $HA_NET.254/24 dev ha-c
link set ha-c up
link add ha-mn link ha-lan type macvlan mode bridge
link set ha-mn netns mn
link add ha-sn1 link ha-lan type macvlan mode bridge
link set ha-sn1 netns sn1
link add ha-sn2 link ha-lan type macvlan mode bridge
link set ha-sn2 netns sn2
EOT
    printf 'address add %s/24 dev ha-sn1\naddress add %s/24 dev ha-sn1\nlink set ha-sn1 up\n' $HA_NET.1 $HA_SVC | ip -n sn1 -batch -
    printf 'address add %s/24 dev ha-sn2\nlink set ha-sn2 up\n' $HA_NET.2 | ip -n sn2 -batch -
    printf 'address add %s/24 dev ha-mn\nlink set ha-mn up\n' $HA_NET.250 | ip -n mn -batch -
    for s in sn1 sn2; do
        ha_agent_start $s || { fail "(i) $s's agent did not start: $(tail -3 /run/sn/$s/ha-agent.log)"; return 1; }
    done
    # xCAT's statelite initrd mounts the image and the node's persistent directory with
    # "nolock,rsize=32768,tcp,nfsvers=3,timeo=14": hard, 1.4 s per try (README, check (i)).
    # Here: port/mountport because kernel nfsd holds 2049 in the SN's netns; noacl as in (f);
    # the statelite mount is NFSv4.0 because the rig's nfsd serves only NFSv4.
    xcat=${RIG_HA_OPTS:-nolock,rsize=32768,tcp,nfsvers=3,timeo=14}
    if ! out=$(mount -t nfs -o "$xcat,port=$HA_PORT,mountport=$HA_PORT,mountproto=tcp,noacl,addr=$HA_SVC" \
               $HA_SVC:/ha/image /mnt/ha/image 2>&1); then
        fail "(i) NFSv3 mount of $HA_SVC:/ha/image: $out"; return 1
    fi
    if [ "$HA_RW" = 1 ]; then
        # as xCAT's statelite initrd does (rh/dracut_033/xcatroot 219-257): mount SN:/area, make the
        # node's directory, unmount, mount SN:/area/node; NFSv3 with xCAT's options, hanfs' rw port
        rwo="$xcat,port=$HA_RW_PORT,mountport=$HA_RW_PORT,mountproto=tcp,noacl,addr=$HA_SVC"
        if ! out=$({ mount -t nfs -o "$rwo" $HA_SVC:/ha-lite /mnt/ha/lite && mkdir -p /mnt/ha/lite/cn001 &&
                     umount /mnt/ha/lite && mount -t nfs -o "$rwo" $HA_SVC:/ha-lite/cn001 /mnt/ha/lite; } 2>&1); then
            fail "(i) NFSv3 mount of the statelite directory $HA_SVC:/ha-lite/cn001 (hanfs' read-write server): $out"; return 1
        fi
    else
        lite=${xcat%%nfsvers=3*}vers=4.0${xcat#*nfsvers=3}
        if ! out=$(mount -t nfs4 -o "$lite,addr=$HA_SVC,clientaddr=$HA_NET.254" $HA_SVC:/ha-lite/cn001 /mnt/ha/lite 2>&1); then
            fail "(i) NFSv4 mount of the statelite directory $HA_SVC:/ha-lite/cn001: $out"; return 1
        fi
    fi
    rig_log "sn-kill: mounted with $xcat; workload starts"
    python3 -S -B /rig/workload.py run /mnt/ha/image /run/ha/src /mnt/ha/lite/node.log $HA_LOG \
        < /dev/null > $HA_LOG/workload.out 2>&1 &
    wl=$!
    if [ "$HA_RW" = 1 ]; then
        python3 -S -B /rig/workload.py hold /mnt/ha/lite $HA_LOG < /dev/null > $HA_LOG/hold.out 2>&1 &
        i=0; while [ ! -e $HA_LOG/hold.ready ] && [ ! -s $HA_LOG/hold.result ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
        [ -e $HA_LOG/hold.ready ] || fail "(i) the descriptor holder did not get ready: $(cat $HA_LOG/hold.result $HA_LOG/hold.out 2> /dev/null)"
    fi
    ha_wait_progress start || { kill -9 $wl; return 1; }
}

sn_kill() {
    SCEN=sn-kill
    rig_log "scenario $SCEN"
    ha_setup || return
    # the rounds alternate between the two SNs: each takeover leaves the dead SN repaired as
    # the spare, so no move back (a second client switch) is needed between rounds
    # (daemon driver) the first round ends with `hanfs migrate --back`: the address returns to
    # sn1, repaired, and the next round kills sn1 again
    n=0 ok=1 from=sn1 to=sn2
    if [ "$HA_DRIVER" = daemon ]; then
        ha_round $from $to power-loss-back power 0 back || ok=0
    fi
    if [ "$HA_RW" = 1 ]; then
        # the read-write area: every round kills the primary sn1 and ends with its return
        # (`migrate --back`), so each starts with sn1 serving and sn2 its synchronous backup
        while [ $n -lt "${RIG_HA_ROUNDS:-1}" ] && [ $ok = 1 ]; do
            n=$((n + 1)); r=power-loss; [ $n = 1 ] || r=power-loss-$n
            ha_round sn1 sn2 $r power 0 back || ok=0
        done
        [ $ok = 0 ] || ha_round sn1 sn2 fence-fails power 1 back || ok=0
        [ $ok = 0 ] || ha_round sn1 sn2 nfs-dies nfs 0 back || ok=0
        [ $ok = 0 ] || [ "${RIG_HA_BREAK:-}" = norepl ] || [ "${RIG_HA_BREAK:-}" = noaddr ] || ha_planned sn1 sn2 planned || ok=0
        n=1000000 to=sn1
    fi
    while [ $n -lt "${RIG_HA_ROUNDS:-1}" ] && [ $ok = 1 ]; do
        n=$((n + 1)); r=power-loss; [ $n = 1 ] || r=power-loss-$n
        { ha_round $from $to $r power && ha_repair $from; } || ok=0
        x=$from from=$to to=$x
    done
    if [ "$HA_RW" != 1 ]; then
        [ $ok = 0 ] || { ha_round $from $to fence-fails power 1 && ha_repair $from; } || ok=0
        x=$from from=$to to=$x
        [ $ok = 0 ] || ha_round $from $to nfs-dies nfs || ok=0
    fi
    sleep 0.5
    : > $HA_LOG/stop
    i=0; while kill -0 $wl 2> /dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
    if kill -0 $wl 2> /dev/null; then
        note "sn-kill: the workload hangs (hard mount); killed"
        read -r ap < $HA_LOG/appender.pid; kill -9 $wl $ap 2> /dev/null
    fi
    rw=; [ "$HA_RW" = 1 ] && rw=rw
    python3 -S -B /rig/workload.py report $HA_LOG $HA_EV /run/sn/$to/root/ha-lite/cn001/node.log "$SCEN" $rw || RIG_RC=1
    if [ "$HA_RW" = 1 ]; then
        if cmp -s /run/sn/sn1/root/ha-lite/cn001/node.log /run/sn/sn2/root/ha-lite/cn001/node.log; then
            pass "(i) the backup sn2 holds the node's file byte for byte as the primary sn1 (replicated since the last return)"
        else fail "(i) sn2's copy of the node's file differs from sn1's: $(wc -c /run/sn/sn[12]/root/ha-lite/cn001/node.log | tr '\n' ' ')"; fi
    fi
    mkdir -p /share/sn-kill; cp $HA_EV $HA_LOG/*.log /run/sn/*/ha-agent.log $HA_MN/*.log $HA_MN/*.toml /share/sn-kill/ 2> /dev/null
    dmesg | grep -E 'nfs|rpc' > /share/sn-kill/dmesg
    [ ! -s $HA_LOG/workload.out ] || note "workload: $(tail -3 $HA_LOG/workload.out)"
    umount -f -l /mnt/ha/image /mnt/ha/lite 2> /dev/null
    rig_log "scenario $SCEN done"
}

# --- soak-failover (`make soak-failover`): no false failover on a bad but live network ----------
# Issue #12's goal: 0 failovers in RIG_SOAK_SECS (600) with one SN's network delayed and lossy but
# alive.  The sn-kill LAN and node; `hanfs daemon` in netns mn with hanfs' default health settings
# (probe every 1 s, 4 s timeout, down after 5 s, hold-down 30 s) and failover = "auto"; sch_netem
# on sn1's interface (egress: every reply from sn1, the NFS traffic to the node included; the node
# gets few reads through it, and each must be right):
# RIG_SOAK_NETEM (tc's netem arguments, `_` for spaces: "delay_200ms_100ms_loss_5%").  Passes when the daemon
# fenced nothing, reports sn1 up at the end, and the node's image reads all succeeded.
soak_failover() {
    SCEN=soak-failover
    rig_log "scenario $SCEN (${RIG_SOAK_SECS} s)"
    ha_setup || return
    echo soak > /run/ha/round; echo 0 > /run/ha/fence-fails
    ha_daemon_start sn1 sn2 soak || return
    # (underscores for spaces: it comes on the kernel command line)
    netem=$(echo "${RIG_SOAK_NETEM:-delay_200ms_100ms_loss_5%}" | tr _ ' ')
    # shellcheck disable=SC2086
    if ! out=$(ip netns exec sn1 tc qdisc add dev ha-sn1 root netem $netem 2>&1); then
        fail "(soak) tc qdisc add dev ha-sn1 root netem $netem: $out"; kill $HA_DAEMON; return
    fi
    rig_log "soak: netem on sn1's link: $(ip netns exec sn1 tc qdisc show dev ha-sn1 | head -1)"
    sk_t0=$(awk '{ printf "%d", $1 * 1000 }' /proc/uptime)
    sk_end=$(( $(cut -d. -f1 /proc/uptime) + RIG_SOAK_SECS )) sk_n=0
    while [ "$(cut -d. -f1 /proc/uptime)" -lt $sk_end ]; do
        sleep 30; sk_n=$((sk_n + 30))
        rig_log "soak: ${sk_n} s: $(grep -c 'SN is down: fencing' $HA_MN/daemon-soak.log) fences, $(grep -c 'health alert' $HA_MN/daemon-soak.log) alerts, $(grep -c ' ok' $HA_LOG/reader.log) reads ok, $(grep -c ' ok' $HA_LOG/appender.log) appends ok"
    done
    stats=$(ip netns exec sn1 tc -s qdisc show dev ha-sn1 | grep -m1 -o 'Sent.*')
    # what the node's mounts and the TCP connections look like while netem is still on (is a call
    # outstanding, was it retransmitted, how often did the client reconnect, what is queued where)
    mkdir -p /share/soak
    cat /proc/self/mountstats > /share/soak/mountstats 2>&1
    read -r snpid < /run/sn/sn1/pid
    { echo "# the node (root netns)"; cat /proc/net/tcp; echo "# sn1"; cat /proc/$snpid/net/tcp; } > /share/soak/proc-net-tcp 2>&1
    ip netns exec sn1 tc -s qdisc show dev ha-sn1 > /share/soak/sn1-qdisc 2>&1
    dmesg | grep -E 'nfs|rpc|NFS' > /share/soak/dmesg
    ip netns exec sn1 tc qdisc del dev ha-sn1 root
    : > $HA_LOG/stop
    i=0; while kill -0 $wl 2> /dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 $wl 2> /dev/null
    hs=$(python3 -S -B -c 'import json, sys
h = json.load(open(sys.argv[1]))
print(" ".join("%s=%s" % (s["name"], s["state"]) for s in h["sns"]))' "$HA_MN/state-soak/health.json" 2>&1)
    kill $HA_DAEMON 2> /dev/null; wait $HA_DAEMON 2> /dev/null
    fences=$(grep -c 'SN is down: fencing' $HA_MN/daemon-soak.log)
    takeovers=$(grep -c 'service address taken over' $HA_MN/daemon-soak.log)
    alerts=$(grep -c 'health alert' $HA_MN/daemon-soak.log)
    reads=$(grep -c ' ok' $HA_LOG/reader.log) badr=$(grep -vc ' ok' $HA_LOG/reader.log)
    mkdir -p /share/soak; cp $HA_MN/daemon-soak.log $HA_MN/cluster-soak.toml $HA_LOG/*.log /share/soak/ 2> /dev/null
    for s in sn1 sn2; do cp /run/sn/$s/ha-agent.log /share/soak/$s-agent.log 2> /dev/null; done
    # when each kind of the node's I/O last completed, in ms after netem went on
    rig_log "soak: last image read ok $(awk -v t0=$sk_t0 '/ ok/ { l = $4 } END { print l - t0 }' $HA_LOG/reader.log) ms and last append ok $(awk -v t0=$sk_t0 '/ ok/ { l = $4 } END { print l - t0 }' $HA_LOG/appender.log) ms after netem"
    echo "rig-figure: soak secs=$RIG_SOAK_SECS netem=\"$netem\" fences=$fences takeovers=$takeovers alerts=$alerts reads_ok=$reads reads_failed=$badr sn1_qdisc=\"$stats\""
    if [ "$fences" = 0 ] && [ "$takeovers" = 0 ] && [ "$badr" = 0 ] && [ "$reads" -gt 0 ]; then
        case " $hs " in *" sn1=up "*|*" sn1=suspect "*)
            pass "(soak) ${RIG_SOAK_SECS} s with sn1's network delayed and lossy ($netem): 0 failovers, $alerts alerts, $reads image reads ok, 0 failed ($hs)"
            umount -f -l /mnt/ha/image /mnt/ha/lite 2> /dev/null; return ;;
        esac
    fi
    fail "(soak) ${RIG_SOAK_SECS} s, netem $netem: $fences fences, $takeovers takeovers, $badr failed reads of $((reads + badr)), health $hs"
    umount -f -l /mnt/ha/image /mnt/ha/lite 2> /dev/null
}

rig_main() {
    RIG_RC=0
    rig_log "guest ready"
    if [ "${RIG_PCAP:-0}" = 1 ] && command -v tcpdump > /dev/null; then
        tcpdump -Z root -i any -s 0 -U -w /share/nfs.pcap 'port 2049 or port 2050 or arp' > /run/tcpdump.log 2>&1 &
        pcap=$!
    fi
    sns_start
    if [ "${RIG_SOAK_SECS:-0}" != 0 ]; then   # make soak-failover: the soak alone
        soak_failover
        return $RIG_RC
    fi
    if [ "${RIG_BENCH:-}" = statelite ]; then   # make bench-statelite: the benchmark alone
        statelite_bench
        return $RIG_RC
    fi
    if [ "${RIG_ONLY:-}" = sn-kill ]; then   # HANFS_RIG_ONLY=sn-kill: check (i) alone
        [ -x /share/hanfs/hanfs ] && sn_kill
        for f in /run/sn/*/*.log; do [ $RIG_RC = 0 ] || { [ -s "$f" ] && sed "s|^|  $f: |" "$f" | tail -15; }; done
        return $RIG_RC
    fi
    for s in /share/scenarios/*/steps.sh; do
        if [ "${RIG_DEBUG:-0}" = 1 ]; then  # trace each step with the time it starts
            while read -r step; do rig_log "+ $step"; eval "$step"; done < "$s"
        else
            . "$s"
        fi
    done
    check_owners
    if [ -x /share/hanfs/hanfs ]; then nfs3_failover; sn_kill; statelite_rw; fi
    if [ "${RIG_DEBUG:-0}" = 1 ] || [ $RIG_RC != 0 ]; then
        for f in /run/sn/*/*.log; do [ -s "$f" ] && sed "s|^|  $f: |" "$f" | tail -15; done
        dmesg | grep -iE 'nfs|rpc|grace' | tail -15 | sed 's/^/  dmesg: /'
    fi
    [ -z "${pcap:-}" ] || { sleep 0.5; kill "$pcap"; }
    return $RIG_RC
}
