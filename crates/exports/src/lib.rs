//! NFS exports for hanfs: pure functions from the cluster model to the text an SN's NFS server reads,
//! and back. No I/O: callers read and write files.
//!
//! - [`build`] turns a validated [`model::Cluster`] into the [`Exports`] one SN must serve, checked
//!   against every limit that would otherwise fail silently ([`limits`]).
//! - [`render`] writes them in the SN's dialect: Linux, the whole `/etc/exports.d/hanfs.exports`;
//!   AIX, a managed block for `/etc/exports` that [`splice_aix`] puts into the existing file, keeping
//!   every other line byte for byte. [`aix_commands`] gives the equivalent `mknfsexp` commands.
//! - [`parse`] reads either dialect back (`parse(render(m)) == m`), so [`diff()`] and [`plan_text`]
//!   can show what a sync would change on a server.
//!
//! # Decisions
//!
//! **Replica order.** An image's `replicas=` lists the SN itself first, then its backups
//! ([`model::Cluster::replica_set`]), each as `<server root>/<image path>@<address>`. AIX clients fail
//! over along this list and AIX wants the server to list itself, so "first = prefer me". Linux gets
//! the same list in the same order: the Linux kernel client does not fail over between read-only
//! replicas (it only follows `refer=`), but it still reads fs_locations, as do other NFSv4 clients that
//! do honour the order, and one order everywhere means one thing to check. A backup SN that does not
//! hold the image is left out (it has nothing to serve); an SN without backups gets no `replicas=`.
//!
//! **fsid.** Linux exports carry `fsid=N` hashed from a path ([`fsid`]): for an image its path on the
//! MN (`source_root/<image path>`), so every replica of an image has the same fsid on every SN whatever
//! the SN's root, as NFSv4 expects of one file system offered at several locations; for statelite
//! directories the export path. Stable across runs, never 0 (the v4 root), unique per SN: collisions
//! are resolved by a deterministic re-hash in sorted order.
//!
//! **refer= exports.** A migrated node's directory on its home SN is exported with exactly the options
//! of the read-write export it replaces (`rw,no_root_squash,sync,no_subtree_check,fsid=N`) plus
//! `refer=<path>/<node>@<new SN>`. nfsd answers every operation under it with NFS4ERR_MOVED, so the
//! options grant nothing; keeping them identical keeps the fsid and makes the plan diff a one-option
//! change. AIX gets none: its nodes mount the statelite area itself, never `<area>/<node>`
//! (xCAT's aixlitesetup), so the area is one read-write export and a moved AIX node reaches its new
//! SN when it mounts again ([`aix_unreferred`] says so wherever such a move shows).
//!
//! **Moved nodes on their new SN (Linux).** The read-write export of a node moved to this SN carries
//! `insecure` as well: a Linux client that had the directory mounted from the old SN follows the
//! referral by NFSv4 migration recovery, reconnects from an unprivileged source port, and nfsd's
//! default `secure` answers it NFS4ERR_PERM on every call (integration/ check (h), Linux 6.1). It is
//! only that export, for the clients it already lists.
//!
//! **Root access.** Images are exported `no_root_squash` (AIX `root=`): diskless nodes boot from them
//! as root and must read root-only files such as `/etc/shadow`; they are read-only anyway.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod aix;
mod build;
pub mod diff;
mod error;
pub mod fsid;
pub mod limits;
pub mod linux;
mod types;

pub use aix::{aix_commands, splice_aix, BEGIN_MARKER, END_MARKER};
pub use build::{aix_moves, aix_unreferred, build, render_sn};
pub use diff::{diff, plan_for, plan_text, render_changes, Change};
pub use error::{ExportError, ParseError, SpliceError};
pub use model::{Dialect, ServiceNode};
pub use types::{escape_path, unescape_path, Entry, Exports, FsLocation, LocKind, Locations};

/// The text of `exports` in its dialect: Linux, a whole exports.d file; AIX, the managed block.
pub fn render(exports: &Exports) -> String {
    match exports.dialect {
        Dialect::Linux => linux::render(exports),
        Dialect::Aix => aix::render_block(exports),
    }
}

/// Read exports text of either dialect. For AIX, when the text holds a hanfs managed block only the
/// block is read (the rest of `/etc/exports` belongs to the admin); otherwise every line is.
pub fn parse(dialect: Dialect, text: &str) -> Result<Exports, ParseError> {
    match dialect {
        Dialect::Linux => linux::parse(text),
        Dialect::Aix => aix::parse(text),
    }
}

/// The entry's line as it appears in its dialect's file (no newline).
pub fn entry_line(dialect: Dialect, entry: &Entry) -> String {
    match dialect {
        Dialect::Linux => linux::entry_line(entry),
        Dialect::Aix => aix::entry_line(entry),
    }
}

/// What an admin runs as root on SN `sn` to install `exports` by hand: AIX the `mknfsexp`
/// commands (with `chnfs -R on` and `chnfsdom` first), Linux a shell snippet that writes the
/// file and runs `exportfs -ra`.
pub fn commands(exports: &Exports, sn: &ServiceNode, domain: Option<&str>) -> String {
    match exports.dialect {
        Dialect::Aix if sn.setuphanfs => aix::setuphanfs_commands(exports, &sn.name, domain),
        Dialect::Aix => aix_commands(exports, &sn.name, domain),
        Dialect::Linux => format!(
            "# hanfs: commands for Linux service node {0}; run them as root on {0}.\n\
             cat > {1} <<'HANFS_EOF'\n{2}HANFS_EOF\nexportfs -ra\n",
            sn.name,
            target_file(Dialect::Linux),
            linux::render(exports)
        ),
    }
}

/// Where the rendered text goes on the SN.
pub fn target_file(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Linux => "/etc/exports.d/hanfs.exports",
        Dialect::Aix => "/etc/exports",
    }
}
