#!/usr/bin/env bash
# Builds the benchmark images once and caches them outside the tree (reproducible from this script):
#   v1: Debian bookworm, debootstrap --variant=minbase, plus a compute image's packages;
#   v2: v1 with more packages installed and everything upgraded from bookworm-updates/-security,
#       done in a chroot, as an admin updates an image with genimage/packimage.
# Usage: bench/make-images.sh [CACHE_DIR]   (default $HANFS_BENCH_CACHE or /var/cache/hanfs-bench)
set -euo pipefail
CACHE=${1:-${HANFS_BENCH_CACHE:-/var/cache/hanfs-bench}}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# What an xCAT diskless compute image carries (xCAT's compute.*.pkglist, Debian names).
V1_PKGS=openssh-server,nfs-common,iproute2,ifupdown,isc-dhcp-client,kmod,procps,rsyslog,cron,less,vim-tiny,ntpsec,pciutils,ethtool,rsync,python3
# What the update adds (tools the users asked for).
V2_PKGS="strace gdb htop tcpdump numactl hwloc perl libopenmpi3 openmpi-bin"

[ "$(id -u)" = 0 ] || { echo "make-images.sh: needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
mkdir -p "$CACHE"

if [ ! -e "$CACHE/v1/.done" ]; then
  rm -rf "$CACHE/v1.tmp"
  debootstrap --variant=minbase --include="$V1_PKGS" "$SUITE" "$CACHE/v1.tmp" "$MIRROR"
  rm -rf "$CACHE/v1.tmp/var/cache/apt/archives/"*.deb
  mv "$CACHE/v1.tmp" "$CACHE/v1"
  touch "$CACHE/v1/.done"
fi

if [ ! -e "$CACHE/v2/.done" ]; then
  rm -rf "$CACHE/v2.tmp"
  cp -a "$CACHE/v1" "$CACHE/v2.tmp"
  rm -f "$CACHE/v2.tmp/.done"
  cat > "$CACHE/v2.tmp/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
SRC
  mount -t proc proc "$CACHE/v2.tmp/proc"
  trap 'umount "$CACHE/v2.tmp/proc" 2>/dev/null || true' EXIT
  chroot "$CACHE/v2.tmp" env DEBIAN_FRONTEND=noninteractive sh -c \
    "apt-get update -qq && apt-get -y -qq upgrade && apt-get install -y -qq --no-install-recommends $V2_PKGS && apt-get clean"
  umount "$CACHE/v2.tmp/proc"
  trap - EXIT
  mv "$CACHE/v2.tmp" "$CACHE/v2"
  touch "$CACHE/v2/.done"
fi
du -sh "$CACHE/v1" "$CACHE/v2"
