#!/usr/bin/env python3
"""Turn scenarios (cluster.toml + one Linux exports file per SN) into the guest's steps.

  plan.py SHARE

SHARE/scenarios/<name>/ holds cluster.toml and exports/<sn>.exports (hanfs's output or the
committed files; run.sh puts them there).  This writes, for the guest:

  SHARE/sns                           "name address" of every SN, one netns + nfsd each
  SHARE/tops                          top-level directories the exports live under (/install ...)
  SHARE/scenarios/<name>/steps.sh     shell steps the guest sources (functions from guest/rig.sh)
  SHARE/scenarios/<name>/expect.json  the fs_locations and mountd parses each refer=/replicas=
                                      export must produce, for guest/fsloc.py --check
  SHARE/plan-failures                 refer=/replicas= values that cannot mean what was meant

Every expectation is derived here from the exports files, never written by hand: which
directories exist on which SN, where a referral must land, and the exact, ordered location
list of every refer=/replicas= value.
"""
import ipaddress
import json
import os
import re
import shlex
import sys
import tomllib

RIG_NET = ipaddress.ip_network("10.0.0.0/24")
CLIENT_IP = "10.0.0.254"  # the guest's NFS client (root netns), see guest/rig.sh
RESERVED_TOPS = {"bin", "dev", "etc", "lib", "lib64", "mnt", "proc", "rig", "run", "sbin",
                 "share", "sys", "tmp", "usr", "var", "init"}


class PlanError(Exception):
    pass


def unescape(path):
    """exports(5) writes a space in a path as \\040 (octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def parse_exports(text, where):
    """Linux exports(5) -> [(path, client, [options])], one item per client."""
    out = []
    for lineno, line in enumerate(text.replace("\\\n", " ").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        toks = shlex.split(line, posix=True) if line.startswith('"') else line.split()
        path, defaults, clients = unescape(toks[0]), [], []
        for tok in toks[1:]:
            if tok.startswith("-"):
                defaults = tok[1:].split(",")
                continue
            m = re.fullmatch(r"([^(]*)(?:\((.*)\))?", tok)
            if not m:
                raise PlanError("%s:%d: cannot parse %r" % (where, lineno, tok))
            clients.append((m.group(1) or "*", defaults + (m.group(2) or "").split(",")))
        for client, opts in clients or [("*", defaults)]:
            out.append((path, client, [o for o in opts if o]))
    return out


def split_locations(value):
    """'P@H[+H]:P@H' -> [(path, hosts_string)]; ':' inside [IPv6] does not split (as mountd)."""
    parts, cur, bracket = [], "", False
    for ch in value:
        bracket = True if ch == "[" else False if ch == "]" else bracket
        if ch == ":" and not bracket:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    locs = []
    for p in filter(None, parts):
        path, at, hosts = p.partition("@")  # mountd splits at the first '@'
        locs.append((path, hosts if at else ""))
    return locs


def fsloc_of(options):
    """The effective refer=/replicas= of one client's options: (kind, value) or None (last wins)."""
    found = None
    for o in options:
        k, eq, v = o.partition("=")
        if eq and k in ("refer", "replicas"):
            found = (k, v)
    return found


def malformed(locs):
    """Why a refer=/replicas= location list cannot mean what its writer meant, or None.

    nfs-utils accepts these silently (a '+' where ':' was meant turns two locations into one
    location with a server named "/path@host"), so the rig reports them instead of checking
    that the server repeats the mistake.
    """
    if not locs:
        return "no location"
    for path, hosts in locs:
        if not path.startswith("/") or path == "/" or "@" in path:
            return "location path %r" % path
        for h in hosts.split("+"):
            if not h or "/" in h or "@" in h or (":" in h and not h.startswith("[")):
                return "server %r in location %s@%s" % (h, path, hosts)
    return None


def plan_scenario(name, sdir, sns_all, failures):
    with open(os.path.join(sdir, "cluster.toml"), "rb") as f:
        cluster = tomllib.load(f)
    sns = {}
    for sn in cluster.get("sn", []):
        sname, addr = sn["name"], sn["address"]
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,12}", sname):
            raise PlanError("%s: SN name %r: the rig needs [A-Za-z0-9_-]{1,12}" % (name, sname))
        ip = ipaddress.ip_address(addr)
        if ip not in RIG_NET or str(ip) in (CLIENT_IP, "10.0.0.0", "10.0.0.255"):
            raise PlanError("%s: SN %s address %s: the rig's SNs live in %s (not %s)"
                            % (name, sname, addr, RIG_NET, CLIENT_IP))
        if sns_all.get(sname, addr) != addr or addr in {a for n, a in sns_all.items() if n != sname}:
            raise PlanError("%s: SN %s=%s clashes with another scenario's SNs" % (name, sname, addr))
        sns[sname] = sns_all[sname] = addr
    by_ip = {a: n for n, a in sns.items()}

    exports = {}
    for sname in sns:
        fn = os.path.join(sdir, "exports", sname + ".exports")
        with open(fn) as f:
            exports[sname] = parse_exports(f.read(), fn)

    q = shlex.quote
    steps = []
    checks, expect, tops = [], [], set()
    for sname, entries in exports.items():
        ip = sns[sname]
        steps.append("sn_exports %s %s" % (sname, q("/share/scenarios/%s/exports/%s.exports" % (name, sname))))
        seen, dirs = set(), []
        for path, client, opts in entries:
            if path in seen:
                continue  # several clients of one path: one directory, one set of checks
            seen.add(path)
            if not path.startswith("/") or path == "/":
                raise PlanError("%s: %s: export path %r" % (name, sname, path))
            top = path.split("/")[1]
            if top in RESERVED_TOPS or " " in path:
                raise PlanError("%s: %s: export path %r is not usable in the rig" % (name, sname, path))
            tops.add(top)
            dirs.append(q(path))
            fl = fsloc_of(opts)
            rw = "rw" if "rw" in opts else "ro"
            if fl is None:
                checks.append("check_plain %s %s %s %s" % (sname, ip, q(path), rw))
                continue
            kind, value = fl
            locs = split_locations(value)
            why = malformed(locs)
            if why:
                failures.append("%s: %s:%s %s=%s: %s" % (name, sname, path, kind, value, why))
                continue
            expect.append({
                "sn": sname, "server": ip, "path": path, "kind": kind, "value": value,
                "fs_root": path,
                "locations": [{"servers": [h.strip("[]") for h in hosts.split("+")], "rootpath": p}
                              for p, hosts in locs],
                # mountd logs a location's servers joined by ':' (as it hands them to the kernel)
                "mountd": ["%s:%s" % (hosts.replace("+", ":"), p) for p, hosts in locs],
            })
            if kind == "refer":
                # a statelite node directory is a mount point of its own (sn_lite_mounts: the
                # agent makes it one), so nfsd crosses into its refer= export from the area's
                tpath, thosts = locs[0] if locs else ("", "")
                tsn = by_ip.get(thosts.split("+")[0])
                if tsn:
                    checks.append("check_refer %s %s %s %s %s %s %s" % (
                        sname, ip, q(path), tsn, sns[tsn], q(tpath), rw))
                else:
                    checks.append("note %s" % q("%s:%s refer= target %r is not a rig SN: not mounted"
                                                % (sname, path, thosts)))
            else:
                checks.append("check_local %s %s %s" % (sname, ip, q(path)))
        if dirs:
            steps.append("sn_dirs %s %s" % (sname, " ".join(dirs)))
    areas = [a["path"].rstrip("/") for a in cluster.get("statelite", [])]
    lite = []
    if areas:
        # the agent makes each SN's statelite node directories mount points before the reload
        steps.append("RIG_LITE_ROOTS=%s" % q(" ".join(areas)))
        steps += ["sn_lite_mounts %s $RIG_LITE_ROOTS" % s for s in sns]
        lite = plan_xcat_lite(sns, by_ip, exports, areas)
    checks += lite
    checks += plan_migrated(name, sdir, sns, by_ip, exports, failures)
    # check_xcat_lite mounts twice (the area, then the node's directory)
    mounts = sum(c.startswith("check_") and not c.startswith("check_fsloc") for c in checks) + len(lite)
    steps = ["# generated by integration/rig/plan.py from %s/cluster.toml and exports/*.exports" % name,
             "scenario_begin %s %d" % (q(name), mounts)] + steps
    steps += ["sn_reload %s" % s for s in sns]
    steps += checks
    if expect:
        steps.append("check_fsloc %s" % q("/share/scenarios/%s/expect.json" % name))
    steps.append("scenario_end")
    with open(os.path.join(sdir, "steps.sh"), "w") as f:
        f.write("\n".join(steps) + "\n")
    with open(os.path.join(sdir, "expect.json"), "w") as f:
        json.dump({"scenario": name, "exports": expect}, f, indent=1)
    return tops


def plan_xcat_lite(sns, by_ip, exports, areas):
    """Check (j): every statelite node export on an SN that also exports the node's area.

    xCAT's initrd mounts the area, makes <node>, and mounts <area>/<node>: the data must come from
    the SN itself for a plain export, or from the refer= target for a moved node.
    """
    q, out = shlex.quote, []
    for sname, entries in exports.items():
        paths = {p for p, _, _ in entries}
        seen = set()
        for path, client, opts in entries:
            area, _, node = path.rpartition("/")
            if area not in areas or area not in paths or path in seen or "rw" not in opts:
                continue
            seen.add(path)
            fl = fsloc_of(opts)
            to = sname
            if fl is not None:
                locs = split_locations(fl[1])
                if fl[0] != "refer" or malformed(locs) or locs[0][0] != path:
                    continue
                to = by_ip.get(locs[0][1].split("+")[0])
                if not to:
                    continue
            out.append("check_xcat_lite %s %s %s %s %s %s" % (sname, sns[sname], q(area), q(node), to, sns[to]))
    return out


def plan_migrated(name, sdir, sns, by_ip, before, failures):
    """Check (h) for a scenario with migrated/exports/ (the exports after `hanfs migrate`).

    Every export that is plain on an SN before and a refer= on that SN after is a planned move of
    mounted data: the guest mounts it from the old SN first, then switches every SN to the
    exports after the move (check_mounted_migrate).  The target must export the path after it.
    """
    mdir = os.path.join(sdir, "migrated", "exports")
    if not os.path.isdir(mdir):
        return []
    after = {}
    for sname in sns:
        fn = os.path.join(mdir, sname + ".exports")
        with open(fn) as f:
            after[sname] = parse_exports(f.read(), fn)
    q, out, done = shlex.quote, [], set()
    for sname, entries in after.items():
        plain_before = {p for p, _, o in before[sname] if fsloc_of(o) is None}
        for path, client, opts in entries:
            fl = fsloc_of(opts)
            if fl is None or fl[0] != "refer" or path not in plain_before:
                continue
            locs = split_locations(fl[1])
            tpath, thosts = locs[0] if locs else ("", "")
            tsn = by_ip.get(thosts.split("+")[0])
            if malformed(locs) or not tsn or not any(p == tpath and fsloc_of(o) is None for p, _, o in after[tsn]):
                failures.append("%s: migrated: %s:%s refer=%s: no plain export of it on a rig SN after the move"
                                % (name, sname, path, fl[1]))
                continue
            if (sname, path) in done:
                continue  # several clients of one path: one check
            done.add((sname, path))
            out.append("check_mounted_migrate %s %s %s %s %s %s %s" % (
                sname, sns[sname], q(path), tsn, sns[tsn], q(tpath),
                q("/share/scenarios/%s/migrated/exports" % name)))
    if not out:
        failures.append("%s: migrated/: no export moves from plain to refer= (nothing to check)" % name)
    return out


def main(share):
    sns_all, tops, failures = {}, set(), []
    sdirs = sorted(os.listdir(os.path.join(share, "scenarios")))
    for name in sdirs:
        tops |= plan_scenario(name, os.path.join(share, "scenarios", name), sns_all, failures)
    # run.sh prints these as FAIL lines; the guest still runs everything else
    with open(os.path.join(share, "plan-failures"), "w") as f:
        f.writelines(line + "\n" for line in failures)
    with open(os.path.join(share, "sns"), "w") as f:
        f.writelines("%s %s\n" % kv for kv in sns_all.items())
    with open(os.path.join(share, "tops"), "w") as f:
        f.write(" ".join(sorted(tops)) + "\n")


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except (PlanError, OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as e:
        print("plan: %s" % e, file=sys.stderr)
        sys.exit(2)
