#!/usr/bin/env python3
"""A generated image tree with the entry and file-size mix of a Debian compute image.

Deterministic (seeded), so every run of the no-change benchmark scans the same tree. The mix is
taken from the real v2 image of bench/make-images.sh (19.8k files): about 10% directories, 10%
symlinks (some absolute), a few hard links and device nodes; file sizes log-spread with most files
under 8 KiB and a few of several MiB; contents half text-like (compressible), half random.

Usage: bench/gen-image.py DIR [ENTRIES] [MEGABYTES]   (defaults 24000 entries, 200 MB)
"""
import os
import random
import sys

root = sys.argv[1]
entries = int(sys.argv[2]) if len(sys.argv) > 2 else 24000
budget = int(sys.argv[3]) * 1_000_000 if len(sys.argv) > 3 else 200_000_000
rnd = random.Random(11)

# (upper bound in bytes, share of files) from the real image's size histogram.
BUCKETS = [(512, 0.30), (4096, 0.30), (32768, 0.25), (262144, 0.11), (2 << 20, 0.035), (8 << 20, 0.005)]
WORDS = [b"usr", b"lib", b"share", b"config", b"python3", b"locale", b"include", b"static", b"module",
         b"the", b"of", b"and", b"return", b"int", b"char", b"struct", b"if", b"else", b"for", b"0x00"]


def size():
    r, acc, lo = rnd.random(), 0.0, 0
    for hi, share in BUCKETS:
        acc += share
        if r <= acc:
            return rnd.randint(lo, hi)
        lo = hi
    return lo


def content(n):
    if rnd.random() < 0.5:
        out = bytearray()
        while len(out) < n:
            out += rnd.choice(WORDS) + b" "
        return bytes(out[:n])
    return rnd.randbytes(n)


n_dirs = entries // 10
n_links = entries // 10
n_hard = entries // 200
n_dev = 20
n_files = entries - n_dirs - n_links - n_hard - n_dev - 1
dirs = [""]
os.makedirs(root, exist_ok=True)
for i in range(n_dirs):
    parent = rnd.choice(dirs[-200:]) if rnd.random() < 0.7 else rnd.choice(dirs)
    d = os.path.join(parent, f"d{i}")
    os.mkdir(os.path.join(root, d))
    dirs.append(d)
sizes = [size() for _ in range(n_files)]
scale = min(1.0, budget / max(1, sum(sizes)))
files = []
for i, s in enumerate(sizes):
    f = os.path.join(rnd.choice(dirs), f"f{i}")
    with open(os.path.join(root, f), "wb") as w:
        w.write(content(int(s * scale)))
    if rnd.random() < 0.1:
        os.chmod(os.path.join(root, f), 0o755)
    files.append(f)
for i in range(n_links):
    where = os.path.join(root, rnd.choice(dirs), f"l{i}")
    # Absolute targets too: the rsync side must keep them as they are (use chroot = yes).
    os.symlink("/" + rnd.choice(files) if rnd.random() < 0.2 else f"../f{rnd.randrange(n_files)}", where)
for i in range(n_hard):
    os.link(os.path.join(root, rnd.choice(files)), os.path.join(root, rnd.choice(dirs), f"h{i}"))
for i in range(n_dev):
    p = os.path.join(root, rnd.choice(dirs), f"c{i}")
    try:
        os.mknod(p, 0o620 | 0o020000, os.makedev(4, i))
    except PermissionError:
        with open(p, "wb"):
            pass
total = sum(os.lstat(os.path.join(dp, x)).st_size for dp, ds, fs in os.walk(root) for x in fs)
count = sum(len(ds) + len(fs) for _, ds, fs in os.walk(root)) + 1
print(f"{root}: {count} entries, {total / 1e6:.0f} MB")
