#!/usr/bin/env python3
"""fs_locations over the wire: a small NFSv4.0 client (stdlib only) for the hanfs rig.

  fsloc.py SERVER PATH           print, as JSON, what SERVER answers for PATH:
                                 {"status", "fsid": [major, minor], "fs_root", "locations":
                                  [{"servers": [...], "rootpath": "/..."}, ...]}
  fsloc.py --check EXPECT.json   the rig's checks (b) and (c) for one scenario: for every
                                 refer=/replicas= export listed, compare the server's
                                 fs_locations with the locations derived from the exports file,
                                 then find mountd's parse of the same value in its log.
                                 Prints PASS:/FAIL: lines; exit 1 if any check failed.
  fsloc.py --owners SN=IP...     the rig's check (g): EXCHANGE_ID (NFSv4.1) to every SN; each
                                 must name a server owner of its own, or a 4.1 client takes
                                 them for one server (trunking: one client ID for all).

Why our own client: the Linux NFSv4 client only asks for fs_locations when it meets a
referral (NFS4ERR_MOVED), never for a plain replicas= export, so the only way to see the
replica list a server hands out is to ask.  One COMPOUND does it, and NFSv4.0 needs no
client id or session for it (RFC 7530):

    PUTROOTFH; LOOKUP c1; ...; LOOKUP cn; GETATTR {fsid (8), fs_locations (24)}

sent over TCP (RPC record marking) with AUTH_SYS uid 0.  nfsd's default "secure" export
option wants the client's source port below 1024, so this binds one and must run as root.
"""
import json
import os
import socket
import struct
import sys

NFS_PROGRAM, NFS_V4, PROC_COMPOUND = 100003, 4, 1
AUTH_NONE, AUTH_SYS = 0, 1
OP_GETATTR, OP_LOOKUP, OP_PUTROOTFH, OP_EXCHANGE_ID = 9, 15, 24, 42
EXCHGID4_FLAG_USE_NON_PNFS = 0x00010000
ATTR_FSID, ATTR_FS_LOCATIONS = 8, 24
STATUS = {0: "NFS4_OK", 1: "NFS4ERR_PERM", 2: "NFS4ERR_NOENT", 13: "NFS4ERR_ACCESS",
          20: "NFS4ERR_NOTDIR", 10006: "NFS4ERR_SERVERFAULT", 10013: "NFS4ERR_GRACE",
          10016: "NFS4ERR_WRONGSEC", 10019: "NFS4ERR_MOVED", 10021: "NFS4ERR_MINOR_VERS_MISMATCH"}


# --- XDR (RFC 4506), only the pieces NFSv4 needs here ------------------------------------------
class Encoder:
    def __init__(self):
        self.parts = []

    def uint(self, v):
        self.parts.append(struct.pack(">I", v))
        return self

    def opaque(self, data):
        pad = -len(data) % 4
        self.parts.append(struct.pack(">I", len(data)) + data + b"\0" * pad)
        return self

    def bytes(self):
        return b"".join(self.parts)


class Decoder:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def uint(self):
        (v,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return v

    def hyper(self):
        (v,) = struct.unpack_from(">Q", self.data, self.pos)
        self.pos += 8
        return v

    def opaque(self):
        n = self.uint()
        v = self.data[self.pos:self.pos + n]
        self.pos += n + (-n % 4)
        return v

    def string(self):
        return self.opaque().decode("utf-8", "replace")

    def array(self, item):
        return [item() for _ in range(self.uint())]

    def pathname(self):  # pathname4 = component4<>, shown as "/a/b"
        return "/" + "/".join(self.array(self.string))


# --- ONC RPC over TCP ----------------------------------------------------------------------------
class Connection:
    def __init__(self, server, port=2049):
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        for local_port in range(1023, 599, -1):  # first free privileged port
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                self.sock.bind(("", local_port))
                self.sock.settimeout(10)
                self.sock.connect((server, port))
                break
            except OSError:
                self.sock.close()
        else:
            raise OSError("no privileged source port could reach %s:%d" % (server, port))
        self.xid = struct.unpack(">I", os.urandom(4))[0]

    def call(self, body):
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        cred = Encoder().uint(0).opaque(b"hanfs-rig").uint(0).uint(0).uint(0).bytes()  # stamp, host, uid, gid, gids<>
        msg = (Encoder().uint(self.xid).uint(0).uint(2)              # xid, CALL, RPC version 2
               .uint(NFS_PROGRAM).uint(NFS_V4).uint(PROC_COMPOUND)
               .uint(AUTH_SYS).opaque(cred).uint(AUTH_NONE).opaque(b"").bytes()) + body
        self.sock.sendall(struct.pack(">I", 0x80000000 | len(msg)) + msg)  # one last fragment
        reply = b""
        while True:
            (mark,) = struct.unpack(">I", self._read(4))
            reply += self._read(mark & 0x7FFFFFFF)
            if mark & 0x80000000:
                break
        d = Decoder(reply)
        if d.uint() != self.xid or d.uint() != 1:
            raise OSError("unexpected RPC reply")
        if d.uint() != 0:
            raise OSError("RPC call denied")
        d.uint(), d.opaque()  # verifier
        accept = d.uint()
        if accept != 0:
            raise OSError("RPC accept_stat %d" % accept)
        return d

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OSError("server closed the connection")
            buf += chunk
        return buf

    def close(self):
        self.sock.close()


def fs_locations(conn, path):
    """GETATTR(fsid, fs_locations) of PATH, as a dict (see the module doc)."""
    comps = [c for c in path.split("/") if c]
    args = Encoder().opaque(b"hanfs-rig").uint(0).uint(len(comps) + 2)  # tag, minorversion 0, nops
    args.uint(OP_PUTROOTFH)
    for c in comps:
        args.uint(OP_LOOKUP).opaque(c.encode())
    args.uint(OP_GETATTR).uint(1).uint((1 << ATTR_FSID) | (1 << ATTR_FS_LOCATIONS))
    d = conn.call(args.bytes())
    result = {"status": STATUS.get(d.uint(), "?")}
    d.opaque()  # tag
    for _ in range(d.uint()):
        op, status = d.uint(), d.uint()
        if status != 0:
            result["status"] = STATUS.get(status, str(status))
            result["failed_op"] = op
            break
        if op == OP_GETATTR:
            mask = d.array(d.uint)
            attrs = Decoder(d.opaque())
            if mask and mask[0] & (1 << ATTR_FSID):
                result["fsid"] = [attrs.hyper(), attrs.hyper()]
            if mask and mask[0] & (1 << ATTR_FS_LOCATIONS):
                result["fs_root"] = attrs.pathname()
                result["locations"] = attrs.array(
                    lambda: {"servers": attrs.array(attrs.string), "rootpath": attrs.pathname()})
    return result


def server_owner(conn):
    """EXCHANGE_ID (RFC 8881 18.35) alone in a 4.1 COMPOUND: (so_major_id, so_minor_id, scope).

    A client compares these to tell whether two addresses reach one server (RFC 8881 2.10.5);
    Linux nfsd fills the major id and the scope with its host name when it starts.
    """
    args = Encoder().opaque(b"hanfs-rig").uint(1).uint(1).uint(OP_EXCHANGE_ID)  # tag, minorversion 1
    args.parts.append(os.urandom(8))                                        # co_verifier
    args.opaque(b"hanfs-rig owner probe").uint(EXCHGID4_FLAG_USE_NON_PNFS)  # co_ownerid, flags
    args.uint(0).uint(0)                                                    # SP4_NONE, no impl id
    d = conn.call(args.bytes())
    status = d.uint()
    d.opaque()  # tag
    if status != 0 or d.uint() != 1 or d.uint() != OP_EXCHANGE_ID or d.uint() != 0:
        raise OSError("EXCHANGE_ID failed: %s" % STATUS.get(status, str(status)))
    d.hyper(), d.uint(), d.uint()  # clientid, sequenceid, flags
    if d.uint() != 0:
        raise OSError("EXCHANGE_ID: state protection other than SP4_NONE")
    minor = d.hyper()
    major = d.opaque()
    return major.decode("utf-8", "replace"), minor, d.opaque().decode("utf-8", "replace")


def owners(sns):
    """(g): every SN (NAME=IP) answers EXCHANGE_ID with a server owner no other SN has."""
    seen, ok = {}, True
    for item in sns:
        name, _, ip = item.partition("=")
        try:
            conn = Connection(ip)
            try:
                major, minor, scope = server_owner(conn)
            finally:
                conn.close()
        except OSError as err:
            print("FAIL: (g) EXCHANGE_ID to %s (%s): %s" % (name, ip, err))
            ok = False
            continue
        other = seen.get((major, minor))
        if other:
            print("FAIL: (g) %s and %s present one NFSv4.1 server owner %r: a 4.1 client trunks them as one server"
                  % (other, name, major))
            ok = False
        else:
            print("PASS: (g) %s (%s) is an NFSv4.1 server of its own: owner %r, scope %r" % (name, ip, major, scope))
        seen.setdefault((major, minor), name)
    return ok


# --- the rig's checks ----------------------------------------------------------------------------
def mountd_parse(log_text, value):
    """The locations rpc.mountd logged when it parsed VALUE: ["host:path", ...], or None.

    rpc.mountd -F logs, on a client's first touch of the export:
        method_list(VALUE) / converted to VALUE / replicas listsize=N / then N lines "    host:path"
    """
    lines = [l.split("rpc.mountd: ", 1)[-1] for l in log_text.splitlines()]
    try:
        i = lines.index("method_list(%s)" % value)
    except ValueError:
        return None
    for j in range(i + 1, len(lines)):
        if lines[j].startswith("replicas listsize="):
            n = int(lines[j].split("=", 1)[1])
            return [l.strip() for l in lines[j + 1:j + 1 + n]]
    return None


def check(expect_file, logs="/run/sn"):
    with open(expect_file) as f:
        spec = json.load(f)
    scen, ok = spec["scenario"], True
    conns = {}
    try:
        for e in spec["exports"]:
            name = "%s (b) fs_locations %s:%s [%s]" % (scen, e["sn"], e["path"], e["kind"])
            try:
                conn = conns.get(e["server"]) or conns.setdefault(e["server"], Connection(e["server"]))
                got = fs_locations(conn, e["path"])
            except OSError as err:
                got = {"status": "error: %s" % err}
            want = {"status": "NFS4_OK", "fs_root": e["fs_root"], "locations": e["locations"]}
            seen = {k: got.get(k) for k in want}
            shown = ", ".join("+".join(l["servers"]) + ":" + l["rootpath"] for l in got.get("locations", []))
            if seen == want:
                print("PASS: %s = %s" % (name, shown))
            else:
                ok = False
                print("FAIL: %s\n  got      %s\n  expected %s" % (name, json.dumps(got), json.dumps(want)))
    finally:
        for c in conns.values():
            c.close()
    # (c) only now: mountd parses an export's refer=/replicas= when a client first touches it
    for e in spec["exports"]:
        name = "%s (c) mountd parsed %s:%s %s=" % (scen, e["sn"], e["path"], e["kind"])
        try:
            with open(os.path.join(logs, e["sn"], "mountd.log")) as f:
                got = mountd_parse(f.read(), e["value"])
        except OSError as err:
            got = "error: %s" % err
        if got == e["mountd"]:
            print("PASS: %s -> %s" % (name, " ".join(got)))
        else:
            ok = False
            print("FAIL: %s\n  got      %s\n  expected %s" % (name, got, e["mountd"]))
    return ok


def main(argv):
    if len(argv) == 2 and argv[0] == "--check":
        return 0 if check(argv[1]) else 1
    if len(argv) >= 2 and argv[0] == "--owners":
        return 0 if owners(argv[1:]) else 1
    if len(argv) == 2 and not argv[0].startswith("-"):
        conn = Connection(argv[0])
        try:
            res = fs_locations(conn, argv[1])
        finally:
            conn.close()
        print(json.dumps(res))
        return 0 if res["status"] == "NFS4_OK" else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
