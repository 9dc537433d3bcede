//! AIX (`/etc/exports`, `Directory -option,option`; lists inside an option use `:`). AIX has no
//! exports.d, so hanfs owns only a block between two marker lines and leaves every other line of the
//! file byte for byte ([`splice_aix`]).
//!
//! Before replicas work an AIX server needs volatile file handles (`chnfs -R on`, settable only
//! while nothing is exported over NFSv4, hence `exportfs -ua` first) and an NFSv4 domain
//! (`chnfsdom <domain>`); [`aix_commands`] prints these steps with the `mknfsexp` equivalent of
//! the block.

use crate::error::{ParseError, SpliceError};
use crate::types::{fsloc_value, parse_options, Entry, Exports, FsLocation, LocKind, Locations};
use model::{Cluster, Dialect, ServiceNode};

pub const BEGIN_MARKER: &str = "# BEGIN hanfs managed block -- do not edit";
pub const END_MARKER: &str = "# END hanfs managed block";
const BLOCK_NOTE: &str = "\
# Written by hanfs; lines outside this block are yours and are kept as they are.
# Images: -vers=4,ro with replicas= (this server first, then its backups; needs chnfs -R on).
# Statelite: each area itself rw (xCAT's AIX nodes mount it and make <node> in it); no refer=.
";

/// The managed block, markers included, ending in a newline.
pub fn render_block(ex: &Exports) -> String {
    let mut out = format!("{BEGIN_MARKER}\n{BLOCK_NOTE}");
    for e in &ex.entries {
        out.push_str(&entry_line(e));
        out.push('\n');
    }
    out.push_str(END_MARKER);
    out.push('\n');
    out
}

/// `/path -opt,opt,...,replicas=...`.
pub fn entry_line(e: &Entry) -> String {
    let mut opts = e.options.clone();
    if let Some(l) = &e.locations {
        opts.push(format!("{}={}", l.kind.keyword(), fsloc_value(&l.list, false)));
    }
    if opts.is_empty() {
        e.path.clone()
    } else {
        format!("{} -{}", e.path, opts.join(","))
    }
}

/// The text between the markers (exclusive), if the text has one balanced block.
pub fn block_body(text: &str) -> Result<Option<&str>, SpliceError> {
    let m = markers(text)?;
    Ok(m.map(|(b, e)| &text[b.1..e.0]))
}

/// Byte ranges (line start, line end incl. newline) of the BEGIN and END lines.
type LineSpan = (usize, usize);

fn markers(text: &str) -> Result<Option<(LineSpan, LineSpan)>, SpliceError> {
    let mut begins = Vec::new();
    let mut ends = Vec::new();
    let mut pos = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let t = line.trim_end();
        let span = (pos, pos + line.len(), i + 1);
        if t == BEGIN_MARKER {
            begins.push(span);
        } else if t == END_MARKER {
            ends.push(span);
        }
        pos += line.len();
    }
    match (begins.as_slice(), ends.as_slice()) {
        ([], []) => Ok(None),
        ([b], [e]) if e.2 < b.2 => Err(SpliceError::Reversed { begin: b.2, end: e.2 }),
        ([b], [e]) => Ok(Some(((b.0, b.1), (e.0, e.1)))),
        _ => {
            let mut lines: Vec<usize> = begins.iter().chain(ends.iter()).map(|s| s.2).collect();
            lines.sort_unstable();
            Err(SpliceError::Unbalanced { begins: begins.len(), ends: ends.len(), lines })
        }
    }
}

/// Put `block` (from [`render_block`]) into an existing `/etc/exports`: replace the old managed
/// block where it is, or append it. Every line outside the block is kept byte for byte. Fails on
/// unbalanced markers, and when a line outside the block exports a path the block exports too
/// (AIX would refuse one of them).
pub fn splice_aix(existing: &str, block: &str) -> Result<String, SpliceError> {
    let first = block.lines().next().map(str::trim_end);
    let last = block.lines().last().map(str::trim_end);
    if first != Some(BEGIN_MARKER) || last != Some(END_MARKER) || !block.ends_with('\n') {
        return Err(SpliceError::BadBlock);
    }
    if block.lines().filter(|l| l.trim_end() == BEGIN_MARKER || l.trim_end() == END_MARKER).count() != 2 {
        return Err(SpliceError::BadBlock);
    }
    let (before, after) = match markers(existing)? {
        None => (existing, ""),
        Some((b, e)) => (&existing[..b.0], &existing[e.1..]),
    };
    // AIX refuses to export the same directory twice: catch the admin's own line for it.
    let ours: Vec<String> = block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    for part in [before, after] {
        for line in part.lines() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if let Some(p) = t.split_whitespace().next() {
                if ours.iter().any(|o| o == p) {
                    let line = existing_line_of(existing, part, line);
                    return Err(SpliceError::Conflict { line, path: p.to_string() });
                }
            }
        }
    }
    let mut out = String::with_capacity(existing.len() + block.len() + 1);
    out.push_str(before);
    if !before.is_empty() && !before.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(block);
    out.push_str(after);
    Ok(out)
}

/// 1-based line number in `whole` of `line`, a sub-slice of `part`, itself a sub-slice of `whole`.
fn existing_line_of(whole: &str, part: &str, line: &str) -> usize {
    let base = part.as_ptr() as usize - whole.as_ptr() as usize;
    let off = base + (line.as_ptr() as usize - part.as_ptr() as usize);
    whole[..off].matches('\n').count() + 1
}

/// Read AIX exports: only the managed block if the text has one, else every line.
pub fn parse(text: &str) -> Result<Exports, ParseError> {
    let (body, first_line) = match markers(text) {
        Ok(Some((b, e))) => (&text[b.1..e.0], text[..b.1].matches('\n').count() + 1),
        Ok(None) => (text, 1),
        Err(s) => return Err(ParseError { line: 0, message: s.to_string() }),
    };
    let mut entries = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let n = first_line + i;
        let err = |message: String| ParseError { line: n, message };
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut words = t.split_whitespace();
        let path = words.next().unwrap_or_default().to_string();
        if !path.starts_with('/') {
            return Err(err(format!("`{path}` is not an absolute path")));
        }
        let opts = match (words.next(), words.next()) {
            (None, _) => "",
            (Some(o), None) => o.strip_prefix('-').ok_or_else(|| err(format!("`{o}`: options start with `-`")))?,
            (Some(_), Some(x)) => return Err(err(format!("unexpected `{x}` after the options"))),
        };
        let (options, locations) = parse_options(opts, false).map_err(|m| err(format!("`{path}`: {m}")))?;
        entries.push(Entry { path, client: None, options, locations });
    }
    Ok(Exports { dialect: Dialect::Aix, entries })
}

/// The `mknfsexp` commands equivalent to the block, with the setup an AIX SN needs first. They
/// write ordinary `/etc/exports` lines (outside hanfs's block): use them instead of the block, not
/// with it.
pub fn aix_commands(ex: &Exports, sn: &str, domain: Option<&str>) -> String {
    let mut out = format!("# hanfs: mknfsexp commands for AIX service node {sn}; run them as root on {sn}.\n");
    let replicas = ex.entries.iter().any(|e| e.locations.as_ref().is_some_and(|l| l.kind == LocKind::Replicas));
    if replicas {
        out.push_str(
            "# Replicas need volatile file handles, which can only be switched on while nothing is\n\
             # exported over NFSv4:\n\
             exportfs -ua\n\
             chnfs -R on\n",
        );
    }
    match domain {
        Some(d) => {
            out.push_str(&format!("# Every replica server and client must share one NFSv4 domain:\nchnfsdom {d}\n"))
        }
        None if replicas => out.push_str("# Set the NFSv4 domain first: chnfsdom <domain>\n"),
        None => {}
    }
    out.push_str("# Each export: drop an old entry for the directory, then add it to /etc/exports (-I).\n");
    for e in &ex.entries {
        entry_commands(e, &mut out);
    }
    out.push_str("exportfs -va\n");
    out
}

/// `rmnfsexp` + `mknfsexp -I` for one entry.
fn entry_commands(e: &Entry, out: &mut String) {
    let mut args: Vec<String> = vec!["-d".into(), e.path.clone()];
    let mut unmapped = Vec::new();
    for o in &e.options {
        match o.split_once('=') {
            Some(("vers", v)) => args.extend(["-v".into(), v.replace(':', ",")]),
            Some(("access", v)) => args.extend(["-c".into(), v.replace(':', ",")]),
            Some(("root", v)) => args.extend(["-r".into(), v.replace(':', ",")]),
            None if o == "ro" || o == "rw" => args.extend(["-t".into(), o.clone()]),
            None if o == "noauto" => args.push("-x".into()),
            _ => unmapped.push(o.clone()),
        }
    }
    if let Some(l) = &e.locations {
        let flag = if l.kind == LocKind::Replicas { "-g" } else { "-G" };
        args.extend([flag.into(), fsloc_value(&l.list, false)]);
    }
    args.push("-I".into());
    for u in unmapped {
        out.push_str(&format!("# note: option `{u}` of {} has no mknfsexp flag; add it with chnfsexp\n", e.path));
    }
    out.push_str(&format!("rmnfsexp -d {} -I 2>/dev/null\n", shell_quote(&e.path)));
    let quoted: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    out.push_str(&format!("mknfsexp {}\n", quoted.join(" ")));
}

/// The one export of an SN in setuphanfs mode, as `mkdsklsnode -S` makes it
/// (xCAT-server/lib/xcat/plugins/aixinstall.pm:12673, xCAT 7733d16f):
/// `mknfsexp -d $install_dir -B -v 4 -g $install_dir@$localip:$install_dir@$remoteip -x -t rw -r '*'`,
/// i.e. the SN's root (xCAT: `site.installdir`), NFSv4, `noauto` (`-x`), read-write, root access for
/// every client, `replicas=` this SN first, then its partner. hanfs keeps the options in that
/// order; AIX's exportfs reads them in any order.
pub fn setuphanfs_entry(cluster: &Cluster, sn: &ServiceNode) -> Entry {
    let list: Vec<FsLocation> = cluster
        .replica_set(sn)
        .into_iter()
        .map(|s| FsLocation { path: s.root.to_string(), host: s.address.fsloc() })
        .collect();
    Entry {
        path: sn.root.to_string(),
        client: None,
        options: vec!["vers=4".into(), "noauto".into(), "rw".into(), "root=*".into()],
        locations: Some(Locations { kind: LocKind::Replicas, list }),
    }
}

/// The commands that set an SN up as `mkdsklsnode -S` does, for [`crate::build`]'s exports of an
/// SN in setuphanfs mode (its first entry from [`setuphanfs_entry`]), as a POSIX shell script to run
/// as root on the SN. Every step follows xCAT 7733d16f, xCAT-server/lib/xcat/plugins/aixinstall.pm:
/// - NFSv4 domain, only when `chnfsdom` prints `N/A`: `chnfsdom <domain>`, then the NFS group
///   restarted (`stopsrc -g nfs`, `sleep 2`, `startsrc -g nfs`; make_SN_resource, :13149-13195);
/// - `lsnfsexp -c`, and for the line of the root (:12553-12613): replicas naming both SNs — nothing
///   to do; replicas naming others — those are kept (`chnfsexp ... -g <pair>:<others>`, :12672-12677);
///   a line without replicas — `rmnfsexp -d <root>` first;
/// - otherwise (:12619-12673) `exportfs -ua`, `chnfs -R on`, `stopsrc -g nfs`, `startsrc -g nfs`,
///   `exportfs -a`, then `mknfsexp -d <root> -B -v 4 -g <self>:<partner> -x -t rw -r '*'`.
///
/// As in xCAT a failed step does not stop the later ones; each failure is reported by name and the
/// script exits 1. Lines of `/etc/exports` other than the root's are never touched. The remaining
/// entries (statelite) follow as `mknfsexp -I` commands, as in [`aix_commands`].
pub fn setuphanfs_commands(ex: &Exports, sn: &str, domain: Option<&str>) -> String {
    let mut out = format!(
        "#!/bin/sh\n# hanfs: AIX service node {sn} set up as xCAT's `mkdsklsnode -S` does; run as root on {sn}.\n"
    );
    let Some(first) = ex.entries.first() else { return out };
    let pair: Vec<&FsLocation> = first.locations.as_ref().map(|l| l.list.iter().collect()).unwrap_or_default();
    let ip = |i: usize| pair.get(i).map(|l| l.host.clone()).unwrap_or_default();
    let want = first.locations.as_ref().map(|l| fsloc_value(&l.list, false)).unwrap_or_default();
    out.push_str(
        "rc=0\nrun() { \"$@\" || { echo \"hanfs: setuphanfs: \\`$*\\` failed on $(hostname)\" >&2; rc=1; }; }\n",
    );
    match domain {
        Some(d) => out.push_str(&format!(
            "# The NFSv4 domain, only when none is set; then the NFS group restarted.\n\
             if chnfsdom | grep 'N/A' >/dev/null; then\n    run chnfsdom {}\n    run stopsrc -g nfs\n    sleep 2\n    run startsrc -g nfs\nfi\n",
            shell_quote(d)
        )),
        None => out.push_str("# No NFSv4 domain known (site.domain): set one with chnfsdom first.\n"),
    }
    out.push_str(&format!(
        "dir={dir}\nlocal_ip={l}\nremote_ip={r}\n\
         # What is exported at $dir now: done (both SNs replicate it), plain (no replicas),\n\
         # extra:<other replicas, kept>, or nothing.\n\
         state=$(lsnfsexp -c | awk -F: -v d=\"$dir\" -v l=\"$local_ip\" -v r=\"$remote_ip\" '\n\
         /^#/ {{ next }}\n\
         $1 == d {{\n\
         \x20   if ($7 == \"\") {{ print \"plain\"; exit }}\n\
         \x20   n = split($7, reps, \",\"); fl = 0; fr = 0; extra = \"\"\n\
         \x20   for (i = 1; i <= n; i++) {{\n\
         \x20       split(reps[i], p, \"@\")\n\
         \x20       if (p[2] == r) fr = 1\n\
         \x20       if (p[2] == l) fl = 1\n\
         \x20       if (fl && fr) {{ print \"done\"; exit }}\n\
         \x20       if (p[2] != r && p[2] != l) extra = extra \":\" reps[i]\n\
         \x20   }}\n\
         \x20   print \"extra\" extra; exit\n\
         }}')\n\
         case \"$state\" in\n\
         done) ;;\n\
         extra:*) run chnfsexp -d \"$dir\" -B -v 4 -g {want}\"${{state#extra}}\" -x -t rw -r '*' ;;\n\
         *)\n\
         \x20   if [ \"$state\" = plain ]; then run rmnfsexp -d \"$dir\"; fi\n\
         \x20   run exportfs -ua\n\
         \x20   run chnfs -R on\n\
         \x20   run stopsrc -g nfs\n\
         \x20   run startsrc -g nfs\n\
         \x20   run exportfs -a\n\
         \x20   run mknfsexp -d \"$dir\" -B -v 4 -g {want} -x -t rw -r '*' ;;\n\
         esac\n",
        dir = shell_quote(&first.path),
        l = shell_quote(&ip(0)),
        r = shell_quote(&ip(1)),
        want = shell_quote(&want),
    ));
    if ex.entries.len() > 1 {
        out.push_str("# The statelite exports: drop an old entry for the directory, then add it (-I).\n");
        for e in &ex.entries[1..] {
            let mut one = String::new();
            entry_commands(e, &mut one);
            for line in one.lines() {
                // rmnfsexp fails where there was no entry: only mknfsexp's failure counts.
                if line.starts_with("mknfsexp ") {
                    out.push_str(&format!("run {line}"));
                } else {
                    out.push_str(line);
                }
                out.push('\n');
            }
        }
        out.push_str("run exportfs -va\n");
    }
    out.push_str("exit $rc\n");
    out
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-@:+=,%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FsLocation, Locations};

    fn sample() -> Exports {
        Exports {
            dialect: Dialect::Aix,
            entries: vec![
                Entry {
                    path: "/install/nim/spot/s1".into(),
                    client: None,
                    options: vec!["vers=4".into(), "ro".into(), "root=*".into()],
                    locations: Some(Locations {
                        kind: LocKind::Replicas,
                        list: vec![
                            FsLocation { path: "/install/nim/spot/s1".into(), host: "10.0.0.1".into() },
                            FsLocation { path: "/install/nim/spot/s1".into(), host: "10.0.0.2".into() },
                        ],
                    }),
                },
                Entry {
                    path: "/nodedata/cn002".into(),
                    client: None,
                    options: vec!["vers=4".into(), "rw".into(), "access=@10.1.0.0/16".into()],
                    locations: Some(Locations {
                        kind: LocKind::Refer,
                        list: vec![FsLocation { path: "/nodedata/cn002".into(), host: "10.0.0.2".into() }],
                    }),
                },
            ],
        }
    }

    #[test]
    fn block_round_trip() {
        let ex = sample();
        let b = render_block(&ex);
        assert!(b.contains(
            "\n/install/nim/spot/s1 -vers=4,ro,root=*,replicas=/install/nim/spot/s1@10.0.0.1:/install/nim/spot/s1@10.0.0.2\n"
        ));
        assert_eq!(parse(&b).unwrap(), ex);
    }

    #[test]
    fn splice_keeps_other_lines_byte_for_byte() {
        let block = render_block(&sample());
        let admin = "# admin's\n/home -vers=3,rw\r\n\n/export/x\t-ro   \n";
        let once = splice_aix(admin, &block).unwrap();
        assert_eq!(once, format!("{admin}{block}"));
        let no_nl = splice_aix("/home -rw", &block).unwrap();
        assert_eq!(no_nl, format!("/home -rw\n{block}"));
        // Replace in place, keeping what follows.
        let with_tail = format!("{once}/tail -ro\n");
        let new_block = render_block(&Exports { dialect: Dialect::Aix, entries: vec![] });
        let replaced = splice_aix(&with_tail, &new_block).unwrap();
        assert_eq!(replaced, format!("{admin}{new_block}/tail -ro\n"));
        assert_eq!(splice_aix(&replaced, &new_block).unwrap(), replaced, "idempotent");
        assert_eq!(
            block_body(&replaced).unwrap(),
            Some(&new_block[BEGIN_MARKER.len() + 1..new_block.len() - END_MARKER.len() - 1])
        );
    }

    #[test]
    fn splice_refuses_unbalanced_and_conflicts() {
        let block = render_block(&sample());
        let e = splice_aix(&format!("{BEGIN_MARKER}\n/a\n"), &block).unwrap_err();
        assert!(matches!(e, SpliceError::Unbalanced { begins: 1, ends: 0, .. }), "{e}");
        let e = splice_aix(&format!("{END_MARKER}\n{BEGIN_MARKER}\n"), &block).unwrap_err();
        assert!(matches!(e, SpliceError::Reversed { begin: 2, end: 1 }), "{e}");
        let e = splice_aix(&format!("{block}{block}"), &block).unwrap_err();
        assert!(matches!(e, SpliceError::Unbalanced { begins: 2, ends: 2, .. }), "{e}");
        assert_eq!(splice_aix("", "/x -ro\n").unwrap_err(), SpliceError::BadBlock);
        let e = splice_aix("# x\n/nodedata/cn002 -rw\n", &block).unwrap_err();
        assert_eq!(e, SpliceError::Conflict { line: 2, path: "/nodedata/cn002".into() });
    }

    #[test]
    fn commands() {
        let c = aix_commands(&sample(), "sn1", Some("cluster.example"));
        assert!(c.contains("exportfs -ua\nchnfs -R on\n"), "{c}");
        assert!(c.contains("chnfsdom cluster.example\n"));
        assert!(c.contains(
            "mknfsexp -d /install/nim/spot/s1 -v 4 -t ro -r '*' -g /install/nim/spot/s1@10.0.0.1:/install/nim/spot/s1@10.0.0.2 -I\n"
        ), "{c}");
        assert!(
            c.contains("mknfsexp -d /nodedata/cn002 -v 4 -t rw -c @10.1.0.0/16 -G /nodedata/cn002@10.0.0.2 -I\n"),
            "{c}"
        );
        assert!(c.ends_with("exportfs -va\n"));
    }
}
