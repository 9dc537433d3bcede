# Runs as "ip netns exec SN unshare -u sh sn-init.sh DIR IP SN": inside SN's network namespace,
# in a mount namespace (ip netns exec makes one) and a UTS namespace of its own, named SN.  Gives the SN its own /install,
# /nodedata, ... ("tops"), exports and NFS state, then starts nfsdcld, rpc.mountd and the
# kernel nfsd, and stays alive as the process whose namespaces `sn SN cmd` enters.
#
# The SN's state lives in DIR (/run/sn/SN, made by rig.sh): DIR is bind-mounted on /self,
# and the initramfs has /etc/exports.d -> /self/exports.d and /var/lib/nfs -> /self/nfs, so
# one bind gives every SN its own exports and NFS state.  The tops cannot be symlinks: nfsd
# exports real directories, and a client walking the pseudo-root must meet directories.
d=$1 ip=$2
# before rpc.nfsd: nfsd copies the host name into its NFSv4.1 server owner when it starts
hostname "$3"
ip -batch - <<EOT
link set lo up
addr add $ip/24 dev eth0
link set eth0 up
EOT
mount --bind "$d" /self
for t in $(cat /share/tops); do mount --bind "$d/root/$t" "/$t"; done
mount -t rpc_pipefs rpc_pipefs /var/lib/nfs/rpc_pipefs
mount -t nfsd nfsd /proc/fs/nfsd
# A fresh nfsd refuses OPEN for a 90 s grace period unless a client tracker tells it that
# no client has state to reclaim.  nfsdcld with an empty database does, but nfsd waits only
# about 1 s for nfsdcld when it starts.  So start nfsdcld first and wait until it watches
# rpc_pipefs for nfsd's pipe: then one of its fds has an "inotify wd:" line in fdinfo.
# (Shell builtins only in the loop: every exec is slow under UML.)  Fallback: 10 s, the
# kernel's shortest grace period.
echo 10 > /proc/fs/nfsd/nfsv4gracetime
nfsdcld -F -p /var/lib/nfs/rpc_pipefs -s /var/lib/nfs/nfsdcld > "$d/nfsdcld.log" 2>&1 &
cld=$! i=0 watching=
while [ -z "$watching" ] && [ $i -lt 100 ]; do
    for f in /proc/$cld/fdinfo/*; do
        while read -r key rest; do [ "$key" = inotify ] && watching=1; done < "$f" 2> /dev/null
    done
    [ -n "$watching" ] || sleep 0.05
    i=$((i + 1))
done
# -F: foreground, logging to stderr, so mountd.log shows its parse of refer=/replicas=.
# No daemon may keep the console open: their output goes to files.
rpc.mountd -F > "$d/mountd.log" 2>&1 &
rpc.nfsd 4 > "$d/nfsd.log" 2>&1 || echo "rpc.nfsd failed: $?" >> "$d/nfsd.log"
echo $$ > "$d/pid"
: > "$d/ready"
exec sleep 100000
