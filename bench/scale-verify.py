#!/usr/bin/env python3
"""Checks replicas against their source by a walk of its own, independent of hanfs' digests and of
rsync: per entry the path, type, permission bits, numeric owner; for files the size, mtime (ns) and
SHA-256 of the content; symlink targets; device numbers; which paths are hard links of one another
(each member names the smallest path of its group inside the tree). Directory mtimes are left out
(a replica's directories are touched as entries land in them).

Usage: bench/scale-verify.py [--ignore NAME]... SOURCE REPLICA...   exit 1 naming the first
differing entries of every replica that differs; the replicas are walked by JOBS (2) processes.
--ignore NAME leaves out the top-level entry NAME (and what is under it) of each replica: the
receiver's own working directory (hanfs' `.hanfs` staging area), which is not part of the image.
"""
import hashlib
import os
import stat
import sys
from multiprocessing import Pool


def manifest(root, ignore=()):
    out, groups = {}, {}
    for dp, ds, fs in os.walk(root):
        if dp == root:
            ds[:] = [d for d in ds if d not in ignore]
            fs = [f for f in fs if f not in ignore]
        for n in ds + fs:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            rec = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                rec += (st.st_size, st.st_mtime_ns, h.hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                rec += (os.readlink(p),)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec += (st.st_rdev,)
            out[rel] = rec
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
    for members in groups.values():
        if len(members) > 1:
            leader = min(members)
            for m in members:
                out[m] += (("link", leader),)
    return out


def compare(args):
    want, replica, ignore = args
    if not os.path.isdir(replica):
        return replica, ["(no such directory)"]
    got = manifest(replica, ignore)
    bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    return replica, [f"{k}: source {want.get(k)} replica {got.get(k)}" for k in bad[:3]] + (
        [f"... {len(bad)} entries differ"] if len(bad) > 3 else [])


def main():
    args, ignore = sys.argv[1:], []
    while args[:1] == ["--ignore"] and len(args) > 1:
        ignore.append(args[1])
        args = args[2:]
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    src, replicas = args[0], args[1:]
    want = manifest(src)
    if len(want) < 2:
        print(f"{src}: empty source", file=sys.stderr)
        sys.exit(2)
    if any(name in want for name in ignore):
        print(f"{src}: the source itself has an entry the replicas' check would leave out", file=sys.stderr)
        sys.exit(2)
    failed = 0
    with Pool(int(os.environ.get("JOBS", "2"))) as pool:
        for replica, diffs in pool.imap(compare, [(want, r, ignore) for r in replicas]):
            if diffs:
                failed += 1
                print(f"{replica} differs from {src}:", *diffs, sep="\n  ", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(replicas)} replicas differ", file=sys.stderr)
        sys.exit(1)
    print(f"{len(replicas)} replicas match {src} ({len(want)} entries)")


main()
