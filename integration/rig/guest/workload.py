#!/usr/bin/env python3
"""A diskless node's I/O for the rig's SN-kill scenario (check (i)), stdlib only.

  workload.py run IMAGE SRC LITEFILE LOGDIR
      Two processes until LOGDIR/stop exists:
        reader:   reads every file under SRC/data through IMAGE/data with O_DIRECT (each read goes
                  to the server, not the page cache) and compares it byte for byte with SRC's copy;
                  then drops the caches and execs IMAGE/bin/busybox (page faults over NFS) and
                  checks its output.  Each op -> LOGDIR/reader.log
        appender: appends a numbered line to LITEFILE with write + fsync, as a node's log does,
                  through one descriptor opened once (reopened only after an error, which counts
                  as a failure).  Each op -> LOGDIR/appender.log.  While LOGDIR/pause exists it
                  appends nothing and says so in LOGDIR/paused.
      A log line is "KIND NAME T0 T1 RESULT [detail]": times in ms of CLOCK_BOOTTIME (the clock
      of /proc/uptime, which the guest script uses for its events), RESULT ok, bad (wrong bytes)
      or err (an errno).  LOGDIR/progress holds the T1 of the reader's last good op.
  workload.py report LOGDIR EVENTS COPY LABEL [rw]
      EVENTS: "NAME MS [ROUND]" lines from the guest script (kill, fence, fence-failed, addr,
      back).  COPY: the statelite file as the node sees it after the last takeover.  Prints the
      PASS:/FAIL: lines of check (i) and "  note:" lines with the figures; exit 1 on a failure.
      rw (the statelite area on hanfs' read-write server): an acknowledged append missing from
      COPY, or a failed one, is a FAIL (with kernel nfsd it is a figure).
  workload.py lost LOGDIR COPY LABEL
      Right after a takeover: every append acknowledged so far must be in COPY (the file on the
      SN that took over).  Prints a PASS:/FAIL: line and a figure; exit 1 on a failure.
  workload.py hold DIR LOGDIR
      The open descriptor across a rename and a takeover: opens DIR/rot.log, appends and fsyncs,
      renames it to rot.log.1 (through NFS), appends and fsyncs through the same descriptor,
      then appends once more WITHOUT fsync and pushes that write to the server as an UNSTABLE
      WRITE (fadvise DONTNEED starts writeback, no COMMIT); LOGDIR/hold.ready.  Once
      LOGDIR/hold.go exists (after the takeover): fsync (the COMMIT meets the new server's
      write verifier, so the client must resend), one more append + fsync, and a read back with
      O_DIRECT; the outcome in LOGDIR/hold.result ("ok" or "err ...").
  workload.py daemon-events DAEMONLOG ROUND DEAD BACKUP
      The round's down, fence and addr events from `hanfs daemon`'s log (HANFS_RIG_HA_DRIVER=daemon),
      as EVENTS lines on stdout.
"""
import errno
import os
import re
import sys
import time

GOAL_MS = 15000  # issue #12: kill -> first successful client I/O after takeover


def now_ms():
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1000)


class Log:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def op(self, kind, name, t0, result, detail=""):
        line = "%s %s %d %d %s %s\n" % (kind, name, t0, now_ms(), result, detail)
        os.write(self.fd, line.encode())


def why(e):
    return "%s:%s" % (errno.errorcode.get(e.errno, e.errno), (e.strerror or "").replace(" ", "_"))


def reader(image, src, logdir):
    log = Log(os.path.join(logdir, "reader.log"))
    names = sorted(os.listdir(os.path.join(src, "data")))
    want = {}
    for n in names:
        with open(os.path.join(src, "data", n), "rb") as f:
            want[n] = f.read()
    stop = os.path.join(logdir, "stop")
    progress = os.path.join(logdir, "progress")
    exe = os.path.join(image, "bin", "busybox")
    while not os.path.exists(stop):
        for n in names:
            t0 = now_ms()
            try:
                fd = os.open(os.path.join(image, "data", n), os.O_RDONLY | os.O_DIRECT)
                try:
                    got = b""
                    while True:
                        b = os.read(fd, 1 << 20)
                        if not b:
                            break
                        got += b
                finally:
                    os.close(fd)
            except OSError as e:
                log.op("read", n, t0, "err", why(e))
                continue
            if got == want[n]:
                log.op("read", n, t0, "ok")
                with open(progress, "w") as f:
                    f.write("%d\n" % now_ms())
            else:
                log.op("read", n, t0, "bad", "%d_bytes" % len(got))
        # exec a binary of the image, its pages read over NFS (drop_caches: not from cache)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        t0 = now_ms()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.dup2(w, 1)
            try:
                os.execv(exe, ["busybox", "echo", "exec-ok"])
            except OSError as e:
                os.write(w, ("execv:" + why(e)).encode())
            os._exit(127)
        os.close(w)
        out = b""
        while True:
            b = os.read(r, 4096)
            if not b:
                break
            out += b
        os.close(r)
        _, st = os.waitpid(pid, 0)
        if out == b"exec-ok\n" and st == 0:
            log.op("exec", "busybox", t0, "ok")
        else:
            log.op("exec", "busybox", t0, "err", "status_%d:%s" % (st, out[:60].decode(errors="replace").replace(" ", "_").strip()))


def appender(litefile, logdir):
    log = Log(os.path.join(logdir, "appender.log"))
    stop = os.path.join(logdir, "stop")
    pause, paused = os.path.join(logdir, "pause"), os.path.join(logdir, "paused")
    fd, seq = None, 0
    while not os.path.exists(stop):
        if os.path.exists(pause):
            if not os.path.exists(paused):
                open(paused, "w").close()
            time.sleep(0.05)
            continue
        if os.path.exists(paused):
            os.unlink(paused)
        seq += 1
        t0 = now_ms()
        try:
            if fd is None:
                fd = os.open(litefile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, b"%d %d\n" % (seq, t0))
            os.fsync(fd)
            log.op("append", str(seq), t0, "ok")
        except OSError as e:
            log.op("append", str(seq), t0, "err", why(e))
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                fd = None
            time.sleep(0.2)
        time.sleep(0.05)


def run(image, src, litefile, logdir):
    pid = os.fork()
    if pid == 0:
        try:
            appender(litefile, logdir)
        finally:
            os._exit(0)
    with open(os.path.join(logdir, "appender.pid"), "w") as f:
        f.write("%d\n" % pid)
    reader(image, src, logdir)
    os.waitpid(pid, 0)


def load(path):
    ops = []
    try:
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) >= 5:
                    ops.append((p[0], p[1], int(p[2]), int(p[3]), p[4], " ".join(p[5:])))
    except OSError:
        pass
    return ops


HOLD_LINES = [b"1 before the rename\n", b"2 after the rename\n", b"3 unstable, uncommitted at the kill\n",
              b"4 after the takeover\n"]


def hold(d, logdir):
    result = os.path.join(logdir, "hold.result")
    try:
        fd = os.open(os.path.join(d, "rot.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, HOLD_LINES[0])
        os.fsync(fd)
        os.rename(os.path.join(d, "rot.log"), os.path.join(d, "rot.log.1"))
        os.write(fd, HOLD_LINES[1])
        os.fsync(fd)
        os.write(fd, HOLD_LINES[2])
        # writeback without waiting (WB_SYNC_NONE): an UNSTABLE WRITE, and no COMMIT
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as e:
        with open(result, "w") as f:
            f.write("err before the takeover: %s\n" % why(e))
        return 1
    open(os.path.join(logdir, "hold.ready"), "w").close()
    go = os.path.join(logdir, "hold.go")
    while not os.path.exists(go):
        time.sleep(0.05)
    try:
        os.fsync(fd)
        os.write(fd, HOLD_LINES[3])
        os.fsync(fd)
        os.close(fd)
        rfd = os.open(os.path.join(d, "rot.log.1"), os.O_RDONLY | os.O_DIRECT)
        got = b""
        while True:
            b = os.read(rfd, 1 << 20)
            if not b:
                break
            got += b
        os.close(rfd)
    except OSError as e:
        with open(result, "w") as f:
            f.write("err after the takeover: %s\n" % why(e))
        return 1
    with open(result, "w") as f:
        f.write("ok\n" if got == b"".join(HOLD_LINES) else "err read back %r\n" % got[:200])
    return 0


def lines_of(copy):
    have = set()
    with open(copy) as f:
        for line in f:
            p = line.split()
            if p:
                have.add(p[0])
    return have


def lost(logdir, copy, label):
    # the log first: every append it shows acknowledged was acknowledged before COPY is read
    acked = [o for o in load(os.path.join(logdir, "appender.log")) if o[4] == "ok"]
    try:
        have = lines_of(copy)
    except OSError as e:
        print("FAIL: %s statelite: %s: %s" % (label, copy, e.strerror))
        return 1
    missing = [o for o in acked if o[1] not in have]
    ok = not missing and len(acked) > 0
    print("%s: %s statelite right after the takeover: %d appends acknowledged so far, %d missing on the SN that took over%s"
          % ("PASS" if ok else "FAIL", label, len(acked), len(missing),
             "; first missing: seq %s acked at %d ms" % (missing[0][1], missing[0][3]) if missing else ""))
    print("rig-figure: %s statelite-takeover acked=%d missing=%d" % (label.split()[-1], len(acked), len(missing)))
    return 0 if ok else 1


def report(logdir, events_file, copy, label, rw=""):
    failed = False

    def check(ok, msg):
        nonlocal failed
        print("%s: %s %s" % ("PASS" if ok else "FAIL", label, msg))
        failed |= not ok

    def note(msg):
        print("  note: %s" % msg)

    events = []
    with open(events_file) as f:
        for line in f:
            p = line.split()
            if len(p) >= 3:
                events.append((p[0], int(p[1]), p[2]))
    reads = load(os.path.join(logdir, "reader.log"))
    appends = load(os.path.join(logdir, "appender.log"))
    bad = [o for o in reads if o[4] != "ok"]
    good = [o for o in reads if o[4] == "ok"]
    check(not bad and len(good) > 0,
          "(i) the node's image reads and execs: %d ok (byte-exact), %d failed%s"
          % (len(good), len(bad), "; first: %s %s %s %s" % (bad[0][0], bad[0][1], bad[0][4], bad[0][5]) if bad else ""))
    rounds = []
    for name, t, rnd in events:
        if name == "kill":
            rounds.append({"round": rnd, "kill": t})
        elif rounds and rounds[-1]["round"] == rnd:
            rounds[-1].setdefault(name, t)
    ends = [r["kill"] for r in rounds[1:]] + [None]
    for r, end in zip(rounds, ends):
        rnd, kill = r["round"], r["kill"]
        # served again: the first good op done after the address moved (before that no server
        # holds it; an op done just after the kill may carry a reply sent before it)
        served = max(kill, r.get("addr", kill))
        after = [o for o in good if o[3] > served and (end is None or o[3] < end)]
        first = min((o[3] for o in after), default=None)
        what = "(i) %s:" % rnd
        if "fence-failed" in r:
            # the fence failed: until the retried fence succeeds nothing may serve the address
            fenced = r.get("fence")
            early = [o for o in good if o[2] > kill and o[3] < (fenced or 1 << 62)]
            check(not early and fenced is not None and r.get("addr", 0) >= fenced,
                  "%s fence failed at +%d ms: no I/O served until the fence succeeded at +%s ms (%d early ops), the address moved after it"
                  % (what, r["fence-failed"] - kill, fenced - kill if fenced else "never", len(early)))
        elif "addr" in r:
            check(r.get("fence", 1 << 62) <= r["addr"],
                  "%s fence done at +%s ms, service address moved at +%d ms (the fence must come first)"
                  % (what, r["fence"] - kill if "fence" in r else "never", r["addr"] - kill))
        if first is None:
            check(False, "%s no successful image I/O after the kill" % what)
            continue
        stall = first - kill
        check("fence-failed" in r or stall <= GOAL_MS,
              "%s stall %d ms from the kill to the first image read after takeover (takeover done at +%s ms; goal <= %d ms)"
              % (what, stall, r["addr"] - kill if "addr" in r else "?", GOAL_MS))
        # what the node's statelite file did in this round (kernel nfsd on both SNs: see README)
        la = [o for o in appends if o[2] > kill and (end is None or o[3] < end)]
        if la:
            f_ok = next((o for o in la if o[4] == "ok"), None)
            f_err = next((o for o in la if o[4] != "ok"), None)
            note("%s statelite after the kill: %d appends ok, %d failed%s%s" % (
                what, sum(o[4] == "ok" for o in la), sum(o[4] != "ok" for o in la),
                "; first ok at +%d ms" % (f_ok[3] - kill) if f_ok else "",
                "; first failure at +%d ms: %s" % (f_err[3] - kill, f_err[5]) if f_err else ""))
        print("rig-figure: %s stall_ms=%d takeover_ms=%s%s" % (
            rnd, stall, r["addr"] - kill if "addr" in r else "?",
            " down_ms=%d" % (r["down"] - kill) if "down" in r else ""))
    # statelite: appends acknowledged (fsync returned) but absent from the copy the node sees now
    acked = [o for o in appends if o[4] == "ok"]
    errs = [o for o in appends if o[4] != "ok"]
    have = set()
    try:
        with open(copy) as f:
            for line in f:
                p = line.split()
                if p:
                    have.add(p[0])
    except OSError as e:
        note("statelite: the node's file on the SN serving it now: %s (nothing copies statelite data in the rig yet)" % e.strerror)
    missing = [o for o in acked if o[1] not in have]
    kinds = sorted({o[5].split(":")[0] for o in errs})
    if rw == "rw":
        check(not missing and not errs and len(acked) > 0,
              "(i) statelite on the read-write server: %d appends acknowledged through one open descriptor, "
              "%d missing from the copy served now, %d failed (%s)" % (len(acked), len(missing), len(errs), ",".join(kinds) or "none"))
    note("statelite appends: %d acknowledged, %d of them missing from the copy now served, %d failed (%s)"
         % (len(acked), len(missing), len(errs), ",".join(kinds) or "none"))
    if errs:
        note("first failed append: seq %s at %d ms: %s" % (errs[0][1], errs[0][2], errs[0][5]))
    print("rig-figure: statelite acked=%d missing=%d failed=%d" % (len(acked), len(missing), len(errs)))
    return 1 if failed else 0


def civil_to_days(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (no datetime module in the guest)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def log_epoch(ts):
    """Seconds since the epoch of a tracing timestamp such as 2026-12-02T06:41:14.123456Z."""
    m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?Z$", ts)
    if not m:
        return None
    y, mo, d, h, mi, s = (int(x) for x in m.groups()[:6])
    return civil_to_days(y, mo, d) * 86400 + h * 3600 + mi * 60 + s + float(m.group(7) or 0)


ANSI = re.compile(r"\x1b\[[0-9;]*m")
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def daemon_events(log, rnd, dead, backup):
    """The round's events from `hanfs daemon`'s log: when it declared DEAD down, when DEAD's fence
    succeeded (fence), when BACKUP claimed the service address (addr), as EVENTS lines in ms of
    CLOCK_BOOTTIME.  The log's times are wall-clock (UTC): they are shifted by the difference of
    the two clocks, read here at one instant (in the rig both tick with the host's clock)."""
    shift = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    found = {}
    with open(log, errors="replace") as f:
        for line in f:
            line = ANSI.sub("", line).strip()
            parts = line.split(None, 2)
            if len(parts) < 3:
                continue
            t = log_epoch(parts[0])
            if t is None:
                continue
            text = parts[2]
            fields = {k: v.strip('"') for k, v in FIELD.findall(text)}
            msg = FIELD.sub("", text).lower()
            for name in classify(msg, fields, dead, backup):
                found.setdefault(name, int((t - shift) * 1000))
    for name in ("down", "fence", "addr"):
        if name in found:
            print("%s %d %s" % (name, found[name], rnd))
    return 0


def classify(msg, fields, dead, backup):
    """Which of the round's events one structured line of the daemon is: the daemon logs every
    decision with the SN (`sn`, the service's SN for a takeover) and the backup (`to`)."""
    sn = fields.get("sn", "")
    out = []
    failed = "fail" in msg or "not " in msg or "refused" in msg
    if sn == dead and " down" in msg:
        out.append("down")
    if sn == dead and "fence" in msg and not failed and ("fenced" in msg or "succeeded" in msg):
        out.append("fence")
    if ("taken over" in msg or "claimed" in msg) and not failed and fields.get("to") == backup:
        out.append("addr")
    return out


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) == 5 and a[0] == "run":
        run(*a[1:])
    elif len(a) in (5, 6) and a[0] == "report":
        sys.exit(report(*a[1:]))
    elif len(a) == 4 and a[0] == "lost":
        sys.exit(lost(*a[1:]))
    elif len(a) == 3 and a[0] == "hold":
        sys.exit(hold(*a[1:]))
    elif len(a) == 5 and a[0] == "daemon-events":
        sys.exit(daemon_events(*a[1:]))
    else:
        sys.exit(__doc__)
