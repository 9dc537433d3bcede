#!/bin/bash
# Boot the rig's guest under user-mode-linux and stream its console to stdout.
#
#   integration/rig/boot.sh INITRAMFS SHAREDIR
#
# SHAREDIR is the host directory the guest mounts at /share (hostfs): the scenarios go in,
# the exit status comes back as SHAREDIR/rc.  No root, KVM or network setup is needed:
# UML is a Linux kernel that runs as an ordinary process.
#
# env: HANFS_RIG_DIR (/tmp/hanfs-rig)  HANFS_RIG_MEM (MiB, 256)  HANFS_RIG_DEBUG=1 (guest logs)
#      HANFS_RIG_MIGRATE_VERS (NFS version of check (h)'s client, 4.0)
#      HANFS_RIG_CPU (host CPU the guest is pinned to, 0; "none": not pinned)
#      HANFS_RIG_HA_DRIVER=daemon|script (who takes over in check (i)), HANFS_RIG_HA_LOG (the daemon's HANFS_LOG)
#      HANFS_RIG_HA_AGENT_LOG (the sn-kill and soak agents' HANFS_LOG, info; e.g. info,nfs3=debug)
#      HANFS_RIG_LITE_MOUNTS=0 (statelite node directories left plain: the break run of (a), (b), (h), (j))
#      HANFS_RIG_SOAK_SECS (0; else only the soak-failover scenario, that long), HANFS_RIG_SOAK_NETEM
#      HANFS_RIG_BENCH=statelite (only the statelite benchmark), HANFS_RIG_BENCH_CLIENTS (100), HANFS_RIG_BENCH_ROUNDS (3)
#      HANFS_RIG_SHIM=0 (no XSAVE shim)  HANFS_RIG_PCAP=1 (guest captures NFS traffic to SHAREDIR/nfs.pcap; needs tcpdump in the initramfs)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${HANFS_RIG_DIR:-/tmp/hanfs-rig}
MEM=${HANFS_RIG_MEM:-256}
INITRD=$1 SHARE=$(cd "$2" && pwd)

# UML 6.1 and hosts with a large XSAVE area (AVX-512, AMX) need the shim (see its comments).
# It changes nothing where it is not needed, so it is always used when a C compiler exists
# (HANFS_RIG_SHIM=0 leaves it out, to see how UML fares without it).
PRELOAD=
SRC=$HERE/uml-xstate-shim.c
SHIM=$DIR/uml-xstate-shim-$(sha256sum "$SRC" | cut -c1-12).so
if [ ! -e "$SHIM" ] && command -v cc > /dev/null; then
    cc -O2 -Wall -shared -fPIC -o "$SHIM.$$" "$SRC" -ldl && mv "$SHIM.$$" "$SHIM"
fi
[ -e "$SHIM" ] && [ "${HANFS_RIG_SHIM:-1}" != 0 ] && PRELOAD=$SHIM

# UML backs guest RAM with an (unlinked) file in TMPDIR: tmpfs (/dev/shm) is fastest
TMPDIR=$DIR
if [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt $((MEM * 1024 * 2)) ]; then
    TMPDIR=/dev/shm
fi
export TMPDIR
mkdir -p "$DIR/uml"

# One host CPU (taskset -c 0, HANFS_RIG_CPU): UML's host processes then hand over to each other on
#   one core instead of bouncing between cores, and the rig runs about twice as fast.
PIN=
CPU=${HANFS_RIG_CPU:-0}
if [ "$CPU" != none ] && command -v taskset > /dev/null && taskset -c "$CPU" true 2> /dev/null; then
    PIN="taskset -c $CPU"
fi

# rootfstype=tmpfs: with UML's default root=98:0 the initramfs would be a ramfs, and nfsd
#   cannot export a ramfs; the NFSv4 pseudo-root "/" has to be exportable.
# con0=fd:1: the guest console is our stdout; quiet/loglevel=4 keep kernel chatter out of it.
# rig_*=...: not kernel parameters, so the kernel hands them to /init as environment variables.
LD_PRELOAD=$PRELOAD exec $PIN linux.uml mem="${MEM}M" initrd="$INITRD" rdinit=/init rootfstype=tmpfs \
    umid="hanfs-rig-$$" uml_dir="$DIR/uml" con0=null,fd:1 con=null ssl=null quiet loglevel=4 panic=-1 \
    rig_share="$SHARE" RIG_DEBUG="${HANFS_RIG_DEBUG:-0}" RIG_PCAP="${HANFS_RIG_PCAP:-0}" \
    RIG_MIGRATE_VERS="${HANFS_RIG_MIGRATE_VERS:-4.0}" RIG_HA_ROUNDS="${HANFS_RIG_HA_ROUNDS:-1}" \
    RIG_HA_OPTS="${HANFS_RIG_HA_OPTS:-}" RIG_HA_ARP="${HANFS_RIG_HA_ARP:-1}" RIG_HA_BREAK="${HANFS_RIG_HA_BREAK:-}" \
    RIG_HA_DETECT="${HANFS_RIG_HA_DETECT:-0}" RIG_HA_DRIVER="${HANFS_RIG_HA_DRIVER:-daemon}" \
    RIG_HA_LOG="${HANFS_RIG_HA_LOG:-info}" RIG_HA_AGENT_LOG="${HANFS_RIG_HA_AGENT_LOG:-info}" RIG_LITE_MOUNTS="${HANFS_RIG_LITE_MOUNTS:-1}" RIG_SOAK_SECS="${HANFS_RIG_SOAK_SECS:-0}" \
    RIG_ONLY="${HANFS_RIG_ONLY:-}" RIG_HA_RW="${HANFS_RIG_HA_RW:-1}" \
    RIG_SOAK_NETEM="${HANFS_RIG_SOAK_NETEM:-delay_200ms_100ms_loss_5%}" RIG_BENCH="${HANFS_RIG_BENCH:-}" \
    RIG_BENCH_CLIENTS="${HANFS_RIG_BENCH_CLIENTS:-100}" RIG_BENCH_ROUNDS="${HANFS_RIG_BENCH_ROUNDS:-3}" < /dev/null
