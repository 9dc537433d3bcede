# Runs inside one SN's network namespace, in a private mount namespace of its own
# (started by sn_start in rig.sh as: nsenter --net=... unshare --mount ... sh sn-init.sh DIR).
# Gives this SN its own /install, /nodedata, ... (the "tops"), /etc/exports.d, NFS state and
# nfsd filesystem, then starts nfsdcld, rpc.mountd and the kernel nfsd.  Stays alive (as the
# process whose namespaces `sn NAME cmd` enters) until the guest powers off.
d=$1
set -e
for t in $(cat /share/tops); do
    mkdir -p "$d/root/$t" "/$t"
    mount --bind "$d/root/$t" "/$t"
done
mount --bind "$d/exports.d" /etc/exports.d
mount -t tmpfs nfs-state /var/lib/nfs
mkdir -p /var/lib/nfs/rpc_pipefs /var/lib/nfs/nfsdcld
: > /var/lib/nfs/etab; : > /var/lib/nfs/rmtab
mount -t rpc_pipefs rpc_pipefs /var/lib/nfs/rpc_pipefs
mount -t nfsd nfsd /proc/fs/nfsd
set +e
# A fresh nfsd refuses OPEN for a 90 s grace period unless a client tracker tells it no
# client has state to reclaim.  nfsdcld (empty database) does, but nfsd waits only about
# 1 s for it when it starts, so start nfsdcld first and wait until it watches rpc_pipefs
# (it holds an inotify fd then).  If that still fails: 10 s, the kernel's minimum grace.
echo 10 > /proc/fs/nfsd/nfsv4gracetime
nfsdcld -F -p /var/lib/nfs/rpc_pipefs -s /var/lib/nfs/nfsdcld > "$d/nfsdcld.log" 2>&1 &
cld=$!
i=0
until ls -l /proc/$cld/fd 2>/dev/null | grep -q inotify || [ $i -ge 150 ]; do sleep 0.02; i=$((i + 1)); done
# -F: stay in the foreground and log to stderr, so mountd.log shows its refer=/replicas= parse.
# Daemons must never write to the console pipe: their output goes to files.
rpc.mountd -F > "$d/mountd.log" 2>&1 &
rpc.nfsd 4 > "$d/nfsd.log" 2>&1 || echo "rpc.nfsd failed: $?" >> "$d/nfsd.log"
echo $$ > "$d/pid"
: > "$d/ready"
exec sleep 100000
