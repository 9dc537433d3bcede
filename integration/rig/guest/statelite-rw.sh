# --- statelite-rw: the kernel NFSv3 client writing to a read-write statelite area (issue 13) ----
# `hanfs agent` with `[[statelite_rw]]` serves /run/rw/area (primary copy A bind-mounted there)
# on 127.0.0.1:$RW_PORT. The client creates, writes with fsync, renames a file it holds open,
# unlinks; every result is judged by what A's directory holds. Then the server is switched, on
# the same address, to copy B of A made with its xattrs (the file ids, as the tree engine's
# resync carries them): the descriptor opened before the rename must go on reading and writing
# on B. Control: copy C without xattrs (new ids) must make that descriptor stale.
# Sourced by rig.sh (pass/fail/rig_log/SCEN come from there).
RW_PORT=2051
rw_start() {
    s=/run/rw/$1.state
    mkdir -p "$s" /run/rw/area /run/rw/root
    mount --bind "/run/rw/$1" /run/rw/area || return 1
    printf '%s\n' 'listen = "127.0.0.1:7469"' 'plaintext_loopback = true' 'root = "/run/rw/root"' \
        "state_dir = \"$s\"" 'dialect = "linux"' "exports_file = \"$s/hanfs.exports\"" 'reload = ["true"]' \
        'statelite_roots = ["/run/rw/area"]' '[[statelite_rw]]' 'area = "/run/rw/area"' \
        "listen = \"127.0.0.1:$RW_PORT\"" > "$s/agent.toml"
    LD_LIBRARY_PATH=/share/hanfs/lib /share/hanfs/hanfs agent --config "$s/agent.toml" \
        < /dev/null > /dev/null 2>> /run/rw/server.log &
    RW_PID=$! i=0
    want=$(printf '0100007F:%04X' $RW_PORT)
    while [ $i -lt 300 ]; do
        while read -r sl local remote st rest; do
            [ "$local" = "$want" ] && [ "$st" = 0A ] && return 0
        done < /proc/net/tcp
        kill -0 "$RW_PID" 2> /dev/null || return 1
        sleep 0.1; i=$((i + 1))
    done
    return 1
}
rw_stop() { kill "$RW_PID" 2> /dev/null; wait "$RW_PID" 2> /dev/null; umount /run/rw/area; }
# rw_copy SRC DST XATTRS: copy a tree, with its xattrs (1) or without (0); os module only.
rw_copy() {
    python3 -S -B -c '
import os, sys
src, dst, xa = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def meta(s, d):
    st = os.lstat(s)
    if xa and not os.path.islink(s):
        for n in os.listxattr(s, follow_symlinks=False):
            os.setxattr(d, n, os.getxattr(s, n, follow_symlinks=False), follow_symlinks=False)
    if not os.path.islink(d):
        os.chmod(d, st.st_mode & 0o7777)
for root, dirs, files in os.walk(src):
    rel = os.path.relpath(root, src)
    out = os.path.join(dst, rel) if rel != "." else dst
    os.makedirs(out, exist_ok=True)
    meta(root, out)
    for f in files:
        s, d = os.path.join(root, f), os.path.join(out, f)
        if os.path.islink(s):
            os.symlink(os.readlink(s), d)
        else:
            with open(s, "rb") as a, open(d, "wb") as b:
                b.write(a.read())
        meta(s, d)
' "$1" "$2" "$3"
}

statelite_rw() {
    SCEN=statelite-rw d=/run/rw m=/mnt/rig/rw
    rig_log "scenario $SCEN"
    mkdir -p $d/a $m
    if ! rw_start a; then fail "(k) the agent did not serve the area: $(tail -3 $d/server.log)"; return; fi
    opts="vers=3,proto=tcp,port=$RW_PORT,mountport=$RW_PORT,mountproto=tcp,mountvers=3,nolock,noacl"
    if ! out=$(mount -t nfs -o "$opts,soft,timeo=30,retrans=2,addr=127.0.0.1" 127.0.0.1:/run/rw/area $m 2>&1); then
        fail "(k) NFSv3 mount of the rw area: $out"; rw_stop; return
    fi
    ok=1
    mkdir $m/var || ok=0
    echo "line 1" > $m/var/messages || ok=0
    dd if=/dev/zero of=$m/var/big bs=64k count=16 conv=fsync 2> /dev/null || ok=0
    ln -s messages $m/var/current || ok=0
    mkdir $m/gone && rmdir $m/gone || ok=0
    echo x > $m/var/tmp && rm $m/var/tmp || ok=0
    l=; read -r l < $d/a/var/messages
    if [ $ok = 1 ] && [ "$l" = "line 1" ] && [ "$(stat -c %s $d/a/var/big)" = 1048576 ] &&
        [ "$(readlink $d/a/var/current)" = messages ] && [ ! -e $d/a/gone ] && [ ! -e $d/a/var/tmp ]; then
        pass "(k) create, write+fsync, symlink, mkdir/rmdir, unlink through the kernel client land in the area"
    else fail "(k) the area after the client's changes: ok=$ok messages='$l' $(ls -la $d/a/var 2>&1 | tr '\n' ' ')"; fi
    # LINK, MKNOD, MKDIR's mode and a writer other than root (issue 13), judged by A's directory.
    ok=1
    ln $m/var/messages $m/var/messages.lnk || ok=0
    mkfifo -m 640 $m/var/fifo || ok=0
    mkdir -m 700 $m/private || ok=0
    mkdir $m/tmp && chmod 1777 $m/tmp || ok=0
    as1000='import os, sys
os.setgroups([]); os.setgid(1000); os.setuid(1000)
try:
    fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o640)
    os.write(fd, b"user\n"); os.fsync(fd); os.close(fd); print("ok")
except OSError as e:
    print(os.strerror(e.errno))'
    # The guest's / is 0700: let uid 1000 reach the mount for these two calls.
    rootmode=$(stat -c %a /); chmod 755 /
    u1=$(python3 -S -B -c "$as1000" $m/tmp/user.txt 2>&1)
    u2=$(python3 -S -B -c "$as1000" $m/private/denied.txt 2>&1)
    chmod "$rootmode" /
    l1=$(stat -c '%i %h' $d/a/var/messages 2> /dev/null) l2=$(stat -c '%i %h' $d/a/var/messages.lnk 2> /dev/null)
    fm=$(stat -c '%F %a' $d/a/var/fifo 2> /dev/null) pm=$(stat -c %a $d/a/private 2> /dev/null)
    um=$(stat -c '%u:%g %a' $d/a/tmp/user.txt 2> /dev/null)
    if [ $ok = 1 ] && [ -n "$l1" ] && [ "$l1" = "$l2" ] && [ "${l1#* }" = 2 ] && [ "$fm" = "fifo 640" ] &&
        [ "$pm" = 700 ] && [ "$u1" = ok ] && [ "$um" = "1000:1000 640" ] && [ "$u2" = "Permission denied" ] &&
        [ ! -e $d/a/private/denied.txt ]; then
        pass "(k) ln (one inode, 2 links), mkfifo -m 640, mkdir -m 700, and uid 1000 writing its own 0640 file in a 1777 directory (refused in root's 0700 one)"
    else fail "(k) link/mknod/mode/uid 1000: ok=$ok links '$l1'/'$l2' fifo '$fm' private '$pm' uid 1000 '$u1' '$um', in 0700 '$u2'"; fi
    rm $m/var/messages.lnk $m/var/fifo
    # NFSv4 on the area's port: refused, as the kernel client reports it.
    mkdir -p $m.v4
    for v in 4.0 4.1 4.2; do
        if out=$(timeout 60 mount -t nfs4 -o "vers=$v,port=$RW_PORT,soft,timeo=30,retrans=1,addr=127.0.0.1,clientaddr=127.0.0.1" 127.0.0.1:/run/rw/area $m.v4 2>&1); then
            umount -l $m.v4; fail "(k) an NFSv$v mount of the rw area succeeded"
        else case $out in
            *"not supported"*) pass "(k) NFSv$v on the rw port is refused: $out" ;;
            *) fail "(k) NFSv$v mount of the rw port: '$out'" ;;
        esac; fi
    done
    grep -q "refused an NFSv4 call" $d/server.log && pass "(k) the server logged the NFSv4 refusal" ||
        fail "(k) no NFSv4 refusal in the server log: $(tail -2 $d/server.log)"
    # Without nolock (the rig runs no rpcbind or statd, as an initrd need not): what a lock does.
    mkdir -p $m.lk
    if out=$(mount -t nfs -o "vers=3,proto=tcp,port=$RW_PORT,mountport=$RW_PORT,mountproto=tcp,mountvers=3,noacl,soft,timeo=30,retrans=2,addr=127.0.0.1" 127.0.0.1:/run/rw/area $m.lk 2>&1); then
        r=$(timeout 60 python3 -S -B -c 'import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print("locked")
except OSError as e:
    print("errno %d (%s)" % (e.errno, os.strerror(e.errno)))' $m.lk/var/messages 2>&1)
        rig_log "rig-figure: statelite-rw mount without nolock: lockf -> ${r:-timed out}"
        echo "rig-figure: statelite-rw mount without nolock: lockf -> ${r:-timed out}"
        umount -l $m.lk
    else echo "rig-figure: statelite-rw mount without nolock: mount failed: $out"; fi
    # A figure, not a check: small files created, written, fsynced and renamed by one client.
    python3 -S -B -c '
import os, sys, time
d = sys.argv[1]
os.mkdir(d)
n, lat = 200, []
t0 = time.monotonic()
for i in range(n):
    t = time.monotonic()
    p = os.path.join(d, "f%d.tmp" % i)
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, b"x" * 512)
    os.fsync(fd)
    os.close(fd)
    os.rename(p, os.path.join(d, "f%d" % i))
    lat.append(time.monotonic() - t)
el = time.monotonic() - t0
lat.sort()
print("rig-figure: statelite-rw create+write+fsync+rename one client: %d files %.0f/s p50 %.1f ms p99 %.1f ms"
      % (n, n / el, lat[n // 2] * 1e3, lat[n * 99 // 100] * 1e3))
' $m/bench || note "(k) the small-file figure failed"
    # Log rotation under an open descriptor: rename, then append through the old descriptor.
    exec 4>> $m/var/messages
    mv $m/var/messages $m/var/messages.1
    echo "line 2" >&4
    sync
    if [ "$(cat $d/a/var/messages.1)" = "$(printf 'line 1\nline 2')" ] && [ ! -e $d/a/var/messages ]; then
        pass "(k) a file renamed while open takes writes through the old descriptor (its handle survived the rename)"
    else fail "(k) after the rename: $(cat $d/a/var/messages.1 2>&1 | tr '\n' ' ')"; fi
    rw_stop
    rw_copy $d/a $d/b 1
    rw_copy $d/a $d/c 0
    if ! rw_start b; then fail "(k) the agent did not serve copy B: $(tail -3 $d/server.log)"; exec 4>&-; return; fi
    echo 3 > /proc/sys/vm/drop_caches
    if echo "line 3" >&4 2> $d/err && exec 4>&- && [ "$(tail -1 $d/b/var/messages.1)" = "line 3" ] &&
        [ "$(cat $m/var/messages.1)" = "$(printf 'line 1\nline 2\nline 3')" ]; then
        pass "(k) after the switch to a copy with the same file ids, the open descriptor writes on (no ESTALE)"
    else fail "(k) the open descriptor after the switch: $(cat $d/err) / $(cat $d/b/var/messages.1 2>&1 | tr '\n' ' ')"; fi
    exec 4>> $m/var/messages.1
    rw_stop
    if ! rw_start c; then fail "(k) the agent did not serve copy C"; exec 4>&-; return; fi
    echo 3 > /proc/sys/vm/drop_caches
    if echo "line 4" >&4 2> /dev/null && exec 4>&- 2> /dev/null && [ "$(tail -1 $d/c/var/messages.1)" = "line 4" ]; then
        fail "(k) control: a copy with other file ids still took the write (the check proves nothing)"
    else pass "(k) control: with other file ids the open descriptor goes stale"; fi
    exec 4>&- 2> /dev/null
    umount -l $m 2> /dev/null
    rw_stop
    rig_log "scenario $SCEN done"
}
