#!/bin/bash
# Check the built packages with the packaging tools themselves: `dist/check-packages.sh DEB RPM HANFS`.
#
# dpkg-deb -c and rpm -qlp must list every file of the install layout (README "Installing"); the
# files unpacked from each package (dpkg-deb -x, rpm2cpio | cpio) must be byte for byte the files
# under dist/, with their modes, and the binary must run and report the version of HANFS, the one
# packaged (cargo-deb strips it, so its bytes differ); and the xCAT
# postscript, run from the unpacked deb against a scratch root, must write an agent config for
# its node and refuse to start without the node's TLS files.  Prints PASS:/FAIL: lines; exit 0
# only if nothing failed.
set -uo pipefail
DEB=$(realpath "$1") RPM=$(realpath "$2") BIN=$(realpath "$3")
DIST=$(cd "$(dirname "$0")" && pwd)
FAILED=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILED=1; }

# install path -> source and mode; the layout README documents
LAYOUT="/usr/bin/hanfs $BIN 755
/usr/lib/systemd/system/hanfs-agent.service $DIST/systemd/hanfs-agent.service 644
/usr/lib/systemd/system/hanfs-daemon.service $DIST/systemd/hanfs-daemon.service 644
/usr/share/hanfs/examples/agent.toml $DIST/agent.toml 644
/usr/share/hanfs/examples/hanfs.toml $DIST/hanfs.toml 644
/usr/share/hanfs/xcat/hanfs-agent $DIST/xcat/hanfs-agent 755
/usr/share/hanfs/xcat/hanfs-sync $DIST/xcat/hanfs-sync 755
/usr/share/doc/hanfs/README.md $DIST/../README.md 644"

T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
# The service-node package (hanfs-agent) leaves out the MN's prescript (dist/xcat/hanfs-sync syncs on
# the MN only): not in its layout, and it must not be listed.
ONLY_MN=/usr/share/hanfs/xcat/hanfs-sync
if [ "$(dpkg-deb -f "$DEB" Package 2>/dev/null)" = hanfs-agent ]; then
    AGENT=1; LAYOUT=$(grep -v "^$ONLY_MN " <<< "$LAYOUT")
else AGENT=0; fi
absent() {  # KIND LIST_FILE
    [ "$AGENT" = 1 ] || return 0
    if grep -qx "$ONLY_MN" "$2"; then fail "$1: $ONLY_MN (the MN's prescript) is in the SN package"
    else pass "$1: $ONLY_MN (the MN's prescript) left out of the SN package"; fi
}
check() {  # KIND LIST_FILE TREE
    while read -r path src mode; do
        if ! grep -qx "$path" "$2"; then fail "$1: $path not in the package's file list"; continue; fi
        if [ "$src" = "$BIN" ]; then
            ver=$("$3$path" --version 2>&1) want=$("$BIN" --version 2>&1)
            [ "$ver" = "$want" ] || { fail "$1: $path --version: '$ver', not '$want'"; continue; }
        elif ! cmp -s "$3$path" "$src"; then fail "$1: $path differs from $src"; continue; fi
        got=$(stat -c %a "$3$path")
        if [ "$got" != "$mode" ]; then fail "$1: $path has mode $got, not $mode"; continue; fi
        if [ "$src" = "$BIN" ]; then pass "$1: $path ($mode) runs: $ver"
        else pass "$1: $path ($mode) is $src"; fi
    done <<< "$LAYOUT"
}

# deb: dpkg-deb -c prints "./usr/bin/hanfs" in its last column
if dpkg-deb -c "$DEB" > "$T/deb.c"; then
    awk '{ print $NF }' "$T/deb.c" | sed 's|^\.||; s|/$||' > "$T/deb.list"
    dpkg-deb -x "$DEB" "$T/deb"
    check deb "$T/deb.list" "$T/deb"
    absent deb "$T/deb.list"
    dpkg-deb -f "$DEB" Package Version Architecture | tr '\n' ' ' | sed 's/^/  deb: /; s/$/\n/'
else fail "dpkg-deb -c $DEB"; fi

# rpm: rpm -qlp lists the paths; rpm2cpio | cpio unpacks them
if ! command -v rpm > /dev/null; then
    fail "rpm is not installed (apt-get install rpm)"
elif rpm -qlp "$RPM" > "$T/rpm.list" 2> "$T/rpm.err"; then
    mkdir "$T/rpm"
    (cd "$T/rpm" && rpm2cpio "$RPM" | cpio -idm --quiet)
    check rpm "$T/rpm.list" "$T/rpm"
    absent rpm "$T/rpm.list"
    rpm -qp --qf '  rpm: %{NAME} %{VERSION}-%{RELEASE} %{ARCH}\n' "$RPM"
    [ -z "$(rpm -qp --configfiles "$RPM")" ] || fail "rpm: config files listed, none expected (examples only)"
else fail "rpm -qlp $RPM: $(cat "$T/rpm.err")"; fi

# the postscript from the package, as xCAT runs it on an SN (NODE set), against a scratch root
R=$T/root
mkdir -p "$R/usr/share/hanfs/examples"
cp "$T/deb/usr/share/hanfs/examples/agent.toml" "$R/usr/share/hanfs/examples/"
ps=$T/deb/usr/share/hanfs/xcat/hanfs-agent
if out=$(NODE=sn7 HANFS_POSTSCRIPT_ROOT=$R SYSTEMCTL=echo "$ps" 2>&1); then
    fail "postscript: started without the TLS files: $out"
else
    case $out in *"/etc/hanfs/sn7.pem"*) pass "postscript: refuses to start without sn7's TLS files" ;;
                 *) fail "postscript: without the TLS files: $out" ;; esac
fi
touch "$R/etc/hanfs/ca.pem" "$R/etc/hanfs/sn7.pem" "$R/etc/hanfs/sn7.key"
if out=$(NODE=sn7 HANFS_POSTSCRIPT_ROOT=$R SYSTEMCTL=echo "$ps" 2>&1) &&
   grep -qx 'enable --now hanfs-agent.service' <<< "$out" &&
   python3 -c 'import sys, tomllib; t = tomllib.load(open(sys.argv[1], "rb"))["tls"]
sys.exit(0 if (t["cert"], t["key"]) == ("/etc/hanfs/sn7.pem", "/etc/hanfs/sn7.key") else "tls: %r" % t)' "$R/etc/hanfs/agent.toml"; then
    pass "postscript: writes agent.toml with sn7's certificate and enables hanfs-agent.service"
else fail "postscript: $out"; fi

[ "$FAILED" = 0 ] && echo "packages: all checks passed" || echo "packages: some checks failed"
exit "$FAILED"
