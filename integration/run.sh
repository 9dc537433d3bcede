#!/bin/bash
# hanfs integration tests on real Linux kernels: `integration/run.sh`.
#
# One user-mode-linux guest boots an initramfs made from this host's Debian binaries and runs,
# for every scenario in integration/scenarios/, one kernel nfsd per SN (each in its own network
# namespace, at the SN's address) and the kernel NFSv4 client.  The exports come from hanfs:
#
#   - $HANFS, or else the newest of target/{release,debug}/hanfs (and $CARGO_TARGET_DIR/...), run as
#       hanfs exports --config scenarios/<name>/cluster.toml --sn <sn>
#     (it must print that SN's Linux exports file on stdout and exit 0);
#   - when no binary is found, the committed scenarios/<name>/<sn>.exports files.
#
# Prints PASS:/FAIL: lines and ends with "N passed, N failed" (", N skipped"); exit 0 only if
# nothing failed.  Where user-mode-linux cannot run at all it prints "SKIP: <reason>" instead, which
# under CI=true is a failure.  It installs nothing: `make deps` installs the Debian packages it needs.
#
# The nfs3-failover and sn-kill scenarios run `hanfs agent` (its embedded NFSv3 server) from the same binary.
#
# env: HANFS=path/to/hanfs  HANFS_RIG_DIR=/tmp/hanfs-rig (cache + run directories)
#      HANFS_RIG_TIMEOUT=180 (s)  HANFS_RIG_DEBUG=1 (daemon logs)  HANFS_RIG_PCAP=1 (nfs.pcap)
#      HANFS_RIG_HA_ROUNDS=1  HANFS_RIG_HA_OPTS=<mount options>  HANFS_RIG_HA_ARP=1  HANFS_RIG_HA_DETECT=0 (s)
#      HANFS_RIG_HA_BREAK=noaddr|nofence|early|norepl  HANFS_RIG_HA_DRIVER=daemon|script  HANFS_RIG_HA_LOG=info
#      HANFS_RIG_ONLY=sn-kill (check (i) alone)  HANFS_RIG_HA_RW=1 (its statelite area on hanfs' rw server; 0: kernel nfsd)
#      HANFS_RIG_HA_AGENT_LOG=info (the sn-kill/soak agents' HANFS_LOG)
#      (check (i), the sn-kill scenario: see README)
#      HANFS_RIG_SOAK_SECS=S: only the soak-failover scenario, S seconds (`make soak-failover`)
#      HANFS_RIG_SOAK_NETEM=tc netem arguments, `_` for spaces
set -uo pipefail
T0=$(date +%s.%N)
INT=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$INT")
export HANFS_RIG_DIR=${HANFS_RIG_DIR:-/tmp/hanfs-rig}
PY=/usr/bin/python3   # Debian's: tomllib (3.11) and the same stdlib the guest gets
PASSED=0 FAILED=0 SKIPPED=0
mkdir -p "$HANFS_RIG_DIR"

bad()  { echo "FAIL: $*"; FAILED=$((FAILED + 1)); }
since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }
finish() {
    echo "rig: wall time $(since "$T0") s${BOOT_S:+ (of which UML boot + scenarios $BOOT_S s)}"
    line="$PASSED passed, $FAILED failed"
    [ "$SKIPPED" -gt 0 ] && line="$line, $SKIPPED skipped"
    echo "$line"
    [ "$FAILED" -eq 0 ]; exit
}
# A skip says why; under CI (CI=true) nothing may be skipped, so it fails instead.
skip() {
    if [ "${CI:-}" = true ]; then bad "CI=true, so the rig may not skip: $*"; finish; fi
    echo "SKIP: $*"; SKIPPED=$((SKIPPED + 1)); finish
}

# --- 1. Debian packages ------------------------------------------------------------------------
PKGS="user-mode-linux nfs-kernel-server busybox-static kmod cpio iproute2 python3 dash util-linux"
[ "${HANFS_RIG_PCAP:-0}" = 1 ] && PKGS="$PKGS tcpdump"
# the XSAVE shim for UML is C (rig/uml-xstate-shim.c)
command -v cc > /dev/null || PKGS="$PKGS gcc libc6-dev"
missing() {
    for p in $PKGS; do
        dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
    done
}
MISSING=$(missing | xargs)
[ -z "$MISSING" ] || skip "Debian packages missing: $MISSING (\`make deps\` installs them)"

# --- 2. exports for every scenario: hanfs's, or the committed files -------------------------------
HANFS_BIN=
if [ -n "${HANFS:-}" ]; then
    HANFS_BIN=$HANFS
    [ -x "$HANFS_BIN" ] || { bad "HANFS=$HANFS is not an executable"; finish; }
else
    for b in "$ROOT/target/release/hanfs" "$ROOT/target/debug/hanfs" \
             ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/release/hanfs" "$CARGO_TARGET_DIR/debug/hanfs"}; do
        [ -x "$b" ] && { [ -z "$HANFS_BIN" ] || [ "$b" -nt "$HANFS_BIN" ]; } && HANFS_BIN=$b
    done
fi
if [ -n "$HANFS_BIN" ]; then echo "rig: exports rendered by $HANFS_BIN exports --config ... --sn ..."
else echo "rig: exports from the committed scenarios/*/<sn>.exports (no hanfs binary: build it or set HANFS)"; fi

SHARE=$(mktemp -d "$HANFS_RIG_DIR/run.XXXXXX")
ln -sfn "$SHARE" "$HANFS_RIG_DIR/last"
ls -dt "$HANFS_RIG_DIR"/run.* | tail -n +6 | xargs -r rm -rf   # keep the last five runs

for sdir in "$INT"/scenarios/*/; do
    name=$(basename "$sdir") out=$SHARE/scenarios/$(basename "$sdir")
    mkdir -p "$out/exports"
    cp "$sdir/cluster.toml" "$out/"
    sns=$($PY -c 'import sys, tomllib; print(*(s["name"] for s in tomllib.load(open(sys.argv[1], "rb")).get("sn", [])))' \
          "$sdir/cluster.toml" 2>&1) || { bad "$name: cluster.toml: $sns"; rm -rf "$out"; continue; }
    for sn in $sns; do
        committed=$sdir/$sn.exports
        if [ -z "$HANFS_BIN" ]; then
            cp "$committed" "$out/exports/$sn.exports" || bad "$name: no $committed"
        elif "$HANFS_BIN" exports --config "$sdir/cluster.toml" --sn "$sn" > "$out/exports/$sn.exports" 2> "$out/exports/$sn.err"; then
            diff -u "$committed" "$out/exports/$sn.exports" > "$out/exports/$sn.diff" ||
                echo "  note: $name/$sn: hanfs's output differs from the committed $sn.exports (the checks use hanfs's; diff in $out/exports/$sn.diff)"
        else
            bad "$name: hanfs exports --sn $sn exited $?: $(head -c 300 "$out/exports/$sn.err")"
            rm -rf "$out"; continue 2
        fi
    done
    # A scenario with a `migrate` file (NODE SN lines, what `hanfs migrate` records in the overlay
    # state_dir/served_by) also gets the exports after that move, rendered by hanfs from the same
    # cluster.toml with the overlay in a state_dir of its own (migrated/), or the committed files.
    [ -f "$sdir/migrate" ] || continue
    mig=$out/migrated
    mkdir -p "$mig/exports" "$mig/state"
    cp "$sdir/migrate" "$mig/state/served_by"
    if ! err=$($PY -c 'import re, sys; t = open(sys.argv[1]).read()
n = re.subn(r"(?m)^state_dir\s*=.*$", "state_dir = \"%s\"" % sys.argv[2], t)
sys.exit("cluster.toml: no state_dir line") if n[1] != 1 else open(sys.argv[3], "w").write(n[0])' \
            "$sdir/cluster.toml" "$mig/state" "$mig/cluster.toml" 2>&1); then
        bad "$name: migrated: $err"; rm -rf "$out"; continue
    fi
    for sn in $sns; do
        committed=$sdir/migrated/$sn.exports
        if [ -z "$HANFS_BIN" ]; then
            cp "$committed" "$mig/exports/$sn.exports" || bad "$name: no $committed"
        elif "$HANFS_BIN" exports --config "$mig/cluster.toml" --sn "$sn" > "$mig/exports/$sn.exports" 2> "$mig/exports/$sn.err"; then
            diff -u "$committed" "$mig/exports/$sn.exports" > "$mig/exports/$sn.diff" ||
                echo "  note: $name/migrated/$sn: hanfs's output differs from the committed migrated/$sn.exports (the checks use hanfs's; diff in $mig/exports/$sn.diff)"
        else
            bad "$name: migrated: hanfs exports --sn $sn exited $?: $(head -c 300 "$mig/exports/$sn.err")"
            rm -rf "$out"; continue 2
        fi
    done
done
ls "$SHARE/scenarios" 2>/dev/null | grep -q . || { bad "no scenario to run"; finish; }
# the file check (h) holds open across a move: random, so no stale cache can fake a read
head -c 262144 /dev/urandom > "$SHARE/held"
if ! err=$($PY "$INT/rig/plan.py" "$SHARE" 2>&1); then bad "$err"; finish; fi
while read -r line; do bad "$line"; done < "$SHARE/plan-failures"

# --- 3. initramfs (cached) and one UML boot for all scenarios ------------------------------------
# hanfs' embedded NFSv3 server for the nfs3-failover scenario: `hanfs agent` with `nfs3 =` (plain
# TCP on loopback), from the same binary that rendered the exports; it and its libraries go along
# in the share (a hard link where it can: a debug build is large).
if [ -n "$HANFS_BIN" ]; then
    mkdir -p "$SHARE/hanfs/lib"
    ln -f "$HANFS_BIN" "$SHARE/hanfs/hanfs" 2> /dev/null || cp "$HANFS_BIN" "$SHARE/hanfs/hanfs"
    ldd "$HANFS_BIN" 2>/dev/null | grep -o '/[^ ]*\.so[^ ]*' | grep -v ld-linux | xargs -r cp -L -t "$SHARE/hanfs/lib"
    echo "rig: NFSv3 failover scenario with $HANFS_BIN agent"
    # check (i) driven by `hanfs daemon` (HANFS_RIG_HA_DRIVER=daemon): the daemon in netns mn talks to
    # the agents over the rig's LAN, so mutual TLS: a CA and certificates for mn, sn1 and sn2
    if [ "${HANFS_RIG_HA_DRIVER:-daemon}" = daemon ]; then
        t=$SHARE/hanfs/tls
        if "$HANFS_BIN" ca init "$t" > "$SHARE/ca.log" 2>&1 &&
            ( for n in mn sn1 sn2; do "$HANFS_BIN" ca issue "$t" --name "$n" >> "$SHARE/ca.log" 2>&1 || exit 1; done ); then
            echo "rig: sn-kill driven by $HANFS_BIN daemon (TLS material in $t)"
        else
            bad "sn-kill: hanfs ca init/issue failed: $(tail -2 "$SHARE/ca.log")"
        fi
    fi
else
    bad "nfs3-failover: no hanfs binary to run the agent's NFSv3 server (cargo build -p hanfs, or set HANFS)"
fi

t=$(date +%s.%N)
INITRD=$("$INT/rig/build-initramfs.sh") || { bad "building the initramfs failed"; finish; }
echo "rig: initramfs $INITRD ($(since "$t") s)"

t=$(date +%s.%N)
# (in a subshell: bash would report a crashed linux.uml as "Aborted" on our stderr)
( timeout -k 5 "${HANFS_RIG_TIMEOUT:-180}" "$INT/rig/boot.sh" "$INITRD" "$SHARE" > "$SHARE/console.log" 2>&1; exit $? ) 2> /dev/null
UML_RC=$?
BOOT_S=$(since "$t")

# --- 4. results ----------------------------------------------------------------------------------
MARK="hanfs-rig: guest userspace up"
if ! grep -q "^$MARK" "$SHARE/console.log"; then
    # the guest's /init never ran: UML itself cannot run here (or was killed); say why
    why=$(grep -E 'ptrace|panic|failed|error|not found|cannot|Killed' "$SHARE/console.log" |
          grep -vE 'find_iomem|ubd device' | head -2 | tr '\n' ' ')
    grep -q 'ptrace set fp regs failed' "$SHARE/console.log" &&
        why="$why(the host's XSAVE area is larger than UML 6.1 handles; rig/uml-xstate-shim.c fixes that and needs a C compiler) "
    skip "user-mode-linux did not reach guest userspace (exit $UML_RC): ${why:-$(tail -1 "$SHARE/console.log")} [console: $SHARE/console.log]"
fi
# the guest's own output (everything after the marker)
sed -n "/^$MARK/,\$p" "$SHARE/console.log"
n=$(grep -c '^PASS: ' "$SHARE/console.log"); PASSED=$((PASSED + n))
n=$(grep -c '^FAIL: ' "$SHARE/console.log"); FAILED=$((FAILED + n))
if [ ! -s "$SHARE/rc" ]; then
    [ "$UML_RC" = 124 ] && bad "the guest timed out after ${HANFS_RIG_TIMEOUT:-180} s" ||
        bad "the guest stopped before finishing (linux.uml exit $UML_RC); console: $SHARE/console.log"
elif [ "$(cat "$SHARE/rc")" != 0 ] && [ "$n" = 0 ]; then
    bad "the guest's checks exited $(cat "$SHARE/rc") without a FAIL line"
fi
[ "$PASSED" -gt 0 ] || [ "$FAILED" -gt 0 ] || bad "the guest ran no check"
finish
