#!/usr/bin/env python3
"""Turns a tree made by gen-image.py into its next version, the way a package upgrade does: 20% of
the files rewritten (half with a small edit inside the old content, half replaced), 20% more files
added next to them, 2% removed. Deterministic (seeded), so v1 -> v2 is the same update every run.
PERCENT (default 20) sets the rewritten and added shares, and a tenth of it the removed share.

Usage: bench/update-image.py DIR [PERCENT]
"""
import os
import random
import sys

root = sys.argv[1]
pct = int(sys.argv[2]) if len(sys.argv) > 2 else 20
rnd = random.Random(12)
files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs
               if os.path.isfile(os.path.join(dp, f)) and not os.path.islink(os.path.join(dp, f)))
dirs = sorted(dp for dp, _, _ in os.walk(root))


def later(p, old_ns):
    # A next version is written later: at least a second after the old one, so that a check by
    # size and mtime in seconds (rsync's quick check) sees a rewrite that kept the size, as it would
    # after a real upgrade, even when this runs within the second v1 was made.
    st = os.stat(p)
    if st.st_mtime_ns < old_ns + 1_000_000_000:
        os.utime(p, ns=(st.st_atime_ns, old_ns + 1_000_000_000))


for p in rnd.sample(files, len(files) * pct // 100):
    old_ns = os.stat(p).st_mtime_ns
    with open(p, "rb") as f:
        b = f.read()
    if rnd.random() < 0.5 and len(b) > 64:
        at = rnd.randrange(len(b))
        b = b[:at] + rnd.randbytes(rnd.randint(1, 64)) + b[at + 16:]
    else:
        b = rnd.randbytes(len(b))
    with open(p, "wb") as f:
        f.write(b)
    later(p, old_ns)
for i, p in enumerate(rnd.sample(files, len(files) * pct // 100)):
    with open(p, "rb") as f:
        b = f.read()
    with open(os.path.join(rnd.choice(dirs), f"n{i}"), "wb") as f:
        f.write(rnd.randbytes(len(b)) if rnd.random() < 0.5 else b[::-1])
for p in rnd.sample(files, len(files) * pct // 1000):
    if os.path.exists(p):
        os.unlink(p)
print(f"{root}: updated")
