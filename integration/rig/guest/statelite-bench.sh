# --- statelite-bench (`make bench-statelite`, issue 13): small-file rate, embedded rw area vs kernel nfsd ----
# Not a check: figures.  The same kernel NFSv3 client (xCAT's statelite options) against
#   K  kernel nfsd, `sync` export of /run/bench/k, NFSv4.0 (the rig's nfsd serves only NFSv4, see bench_kernel);
#   H  `hanfs agent`'s read-write area /run/bench/h, replicated synchronously (mutual TLS) to a
#      second agent's copy (statelite_prefix /run/bench/b), i.e. every change on both before the reply;
#   U  the same area served by one agent without a backup (how much the replication costs).
# All in the last SN's netns, the client across its veth; all on the guest's tmpfs, so fsync costs nothing and what is compared is the servers' own work.
# Each client (a process with a directory of its own) loops create+write 4 KiB+fsync+close+rename;
# one client, then RIG_BENCH_CLIENTS (100) at once; RIG_BENCH_ROUNDS (3) rounds, servers in turn.
# Sourced by rig.sh (pass/fail/rig_log/note come from there).
BK=/run/bench BENCH_TLS=/share/hanfs/tls

# bench_agent NAME TLSNAME EXTRA...: `hanfs agent` NAME; EXTRA lines end its config
bench_agent() {
    s=$BK/$1.state n=$1 t=$2; shift 2
    mkdir -p "$s" $BK/root
    { printf '%s\n' "listen = \"127.0.0.1:0\"" 'controller = "mn"' "root = \"$BK/root\"" \
          "state_dir = \"$s\"" 'dialect = "linux"' "exports_file = \"$s/hanfs.exports\"" 'reload = ["true"]' \
          'statelite_mounts = false'
      printf '%s\n' "$@"
      printf '%s\n' '[tls]' "ca = \"$BENCH_TLS/ca.pem\"" "cert = \"$BENCH_TLS/$t.pem\"" "key = \"$BENCH_TLS/$t.key\""
    } > "$s/agent.toml"
    nsenter -t "$BPID" -n -m -u -- env LD_LIBRARY_PATH=/share/hanfs/lib /share/hanfs/hanfs agent \
        --config "$s/agent.toml" < /dev/null > /dev/null 2>> $BK/$n.log &
    echo $! > "$s/pid"
}
# bench_listening PORT: wait until something listens on PORT in the benchmark SN's netns (IPv4 or IPv6, any address)
bench_listening() {
    want=$(printf ':%04X' "$1") i=0
    while [ $i -lt 300 ]; do
        for f in /proc/$BPID/net/tcp /proc/$BPID/net/tcp6; do
            [ -e $f ] || continue
            while read -r sl local remote st rest; do
                [ "${local%"$want"}" != "$local" ] && [ "$st" = 0A ] && return 0
            done < $f
        done
        sleep 0.1; i=$((i + 1))
    done
    return 1
}
bench_stop() { read -r p < "$BK/$1.state/pid"; kill "$p" 2> /dev/null; wait "$p" 2> /dev/null; }

# bench_kernel: one more export on the last SN's kernel nfsd (BSN, BPID: that SN). The rig's
# nfsd serves NFSv4 only: an NFSv3 kernel server needs rpcbind and a listening mountd, and the
# guest's mountd hung registering with rpcbind (tried: fixed port, no inet6 netconfig).
bench_kernel() {
    mkdir -p $BK/k
    echo "$BK/k $CLIENT(rw,no_root_squash,sync,no_subtree_check,insecure,fsid=2001)" > /run/sn/$BSN/exports.d/bench.exports
    sn $BSN exportfs -ra > $BK/exportfs.log 2>&1
}

bench_run() {  # bench_run LABEL DIR CLIENTS FILES: prints the figure line
    python3 -S -B -c '
import os, sys, time
label, d, nc, nf = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r, w = os.pipe()
kids = []
for c in range(nc):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        sub = os.path.join(d, "c%d" % c)
        os.makedirs(sub, exist_ok=True)
        lat = []
        for i in range(nf):
            t = time.monotonic()
            p = os.path.join(sub, "f%d.tmp" % i)
            fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            os.close(fd)
            os.rename(p, os.path.join(sub, "f%d" % i))
            lat.append(time.monotonic() - t)
        os.write(w, (" ".join("%.6f" % x for x in lat) + "\n").encode())
        os._exit(0)
    kids.append(pid)
os.close(w)
t0 = time.monotonic()
data = b""
while True:
    b = os.read(r, 65536)
    if not b:
        break
    data += b
bad = 0
for k in kids:
    _, st = os.waitpid(k, 0)
    bad += st != 0
el = time.monotonic() - t0
lat = sorted(float(x) for x in data.split())
n = len(lat)
if bad or n != nc * nf:
    print("rig-figure: statelite-bench %s clients=%d FAILED (%d clients failed, %d of %d files)" % (label, nc, bad, n, nc * nf))
    sys.exit(1)
print("rig-figure: statelite-bench %s clients=%d files=%d rate=%.1f/s p50=%.1fms p99=%.1fms"
      % (label, nc, n, n / el, lat[n // 2] * 1e3, lat[min(n - 1, n * 99 // 100)] * 1e3))
' "$@"
}

statelite_bench() {
    SCEN=statelite-bench
    rig_log "scenario $SCEN"
    mkdir -p $BK/h $BK/u $BK/b /mnt/bench/k /mnt/bench/h /mnt/bench/u
    while read -r a b; do BSN=$a BIP=$b; done < /share/sns
    read -r BPID < /run/sn/$BSN/pid
    bench_kernel || { fail "exporting $BK/k on $BSN: $(tail -3 $BK/exportfs.log)"; return; }
    bench_agent backup sn2 'statelite_roots = ["/run/bench/h"]' "statelite_prefix = \"$BK/b\"" '[[statelite_rw]]' \
        'area = "/run/bench/h"' 'listen = "127.0.0.1:2062"' 'replica_listen = "127.0.0.1:7470"' 'primary = "sn1"'
    bench_listening 7470 || { fail "the backup agent did not listen: $(tail -2 $BK/backup.log)"; return; }
    bench_agent primary sn1 'statelite_roots = ["/run/bench/h"]' '[[statelite_rw]]' 'area = "/run/bench/h"' \
        'listen = "0.0.0.0:2061"' 'peer = "127.0.0.1:7470"' 'peer_name = "sn2"'
    bench_agent single sn1 'statelite_roots = ["/run/bench/u"]' '[[statelite_rw]]' 'area = "/run/bench/u"' \
        'listen = "0.0.0.0:2063"'
    bench_listening 2061 && bench_listening 2063 ||
        { fail "the agents did not serve: $(tail -2 $BK/primary.log $BK/single.log)"; return; }
    # xCAT's statelite options (rh/dracut_033/xcatroot), loopback, no ACL side protocol
    o="nolock,rsize=32768,tcp,nfsvers=3,timeo=14,noacl,addr=$BIP,mountproto=tcp"
    k=${o%%nfsvers=3*}vers=4.0${o#*nfsvers=3}
    mount -t nfs4 -o "${k%,mountproto=tcp},clientaddr=$CLIENT" $BIP:$BK/k /mnt/bench/k &&
        mount -t nfs -o "$o,port=2061,mountport=2061" $BIP:$BK/h /mnt/bench/h &&
        mount -t nfs -o "$o,port=2063,mountport=2063" $BIP:$BK/u /mnt/bench/u ||
        { fail "mounting the three servers: $(dmesg | tail -2)"; return; }
    nc=${RIG_BENCH_CLIENTS:-100} rounds=${RIG_BENCH_ROUNDS:-3} r=1 ok=1
    while [ $r -le "$rounds" ]; do
        for s in k h u; do
            bench_run "$s round=$r" /mnt/bench/$s/one$r 1 "${RIG_BENCH_FILES1:-300}" || ok=0
            bench_run "$s round=$r" /mnt/bench/$s/many$r "$nc" "${RIG_BENCH_FILESN:-10}" || ok=0
        done
        r=$((r + 1))
    done
    # the replicated area's backup must hold what the client was told is durable
    a=$(cd $BK/h && find . | sort | md5sum) b=$(cd $BK/b$BK/h && find . | sort | md5sum)
    if [ "$ok" = 1 ] && [ "$a" = "$b" ]; then pass "three servers measured; the backup holds every file of the replicated area"
    else fail "ok=$ok; primary and backup trees differ: $a / $b"; fi
    umount /mnt/bench/k /mnt/bench/h /mnt/bench/u 2> /dev/null
    for a in primary single backup; do bench_stop $a; done
    rig_log "scenario $SCEN done"
}
