//! The change log of a read-write area: one entry per change a client made, in the order the
//! primary applied them. No I/O: [`crate::rw::AreaFs::apply`] is the one place an entry is
//! carried out, on the primary when a client asks and on a replica when the stream arrives, so
//! both trees go through the same steps with the same file ids.
//!
//! Entries name objects by file id ([`Fh`]), never by path or inode: a replica that applied
//! the same entries holds the same ids, hence hands out the same NFS handles. Everything the
//! primary chose (a new id, the time for `SET_TO_SERVER_TIME`, the exclusive-create verifier)
//! is in the entry, so applying it twice the same way gives the same tree.

use crate::index::Fh;
use serde::{Deserialize, Serialize};

/// A time to set: leave it, or this instant (`SET_TO_SERVER_TIME` resolved by the primary,
/// so the replica sets the same value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SetTime {
    #[default]
    Keep,
    To {
        seconds: i64,
        nanos: u32,
    },
}

/// SETATTR's changes (RFC 1813 §3.3.2 `sattr3`), times resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Attrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: SetTime,
    pub mtime: SetTime,
}

impl Attrs {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        *self == Attrs::default()
    }
}

/// One change to an area.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A new regular file `name` in directory `dir`, with file id `id`. `verf`: the
    /// EXCLUSIVE create verifier (RFC 1813 §3.3.8), kept with the file so a retried CREATE
    /// finds it.
    Create {
        dir: Fh,
        name: Vec<u8>,
        id: Fh,
        mode: u32,
        verf: Option<[u8; 8]>,
    },
    Mkdir {
        dir: Fh,
        name: Vec<u8>,
        id: Fh,
        mode: u32,
    },
    /// Symlinks cannot carry user xattrs on Linux: their id is derived from where they were
    /// made ([`crate::rw::symlink_id`]), the same on every replica.
    Symlink {
        dir: Fh,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    /// REMOVE or RMDIR of `name` in `dir`.
    Remove {
        dir: Fh,
        name: Vec<u8>,
    },
    Rename {
        from_dir: Fh,
        from: Vec<u8>,
        to_dir: Fh,
        to: Vec<u8>,
    },
    SetAttr {
        id: Fh,
        attrs: Attrs,
    },
    /// `sync`: FILE_SYNC/DATA_SYNC (durable before the reply), else UNSTABLE.
    Write {
        id: Fh,
        offset: u64,
        data: Vec<u8>,
        sync: bool,
    },
    /// COMMIT (RFC 1813 §3.3.21): everything written to `id` made durable.
    Commit {
        id: Fh,
    },
    // Appended: postcard numbers variants by position, so the ones above never move.
    /// LINK (RFC 1813 §3.3.15): a further name `name` in directory `dir` for the non-directory
    /// `id`. A regular file counts the links this server made (see [`crate::rw::LINKS_XATTR`]),
    /// so it stays writable where a link planted behind the server's back does not.
    Link {
        id: Fh,
        dir: Fh,
        name: Vec<u8>,
    },
    /// MKNOD (RFC 1813 §3.3.11) of a FIFO or socket, owned by `uid`/`gid`. Like a symlink it
    /// carries no xattr: its id is derived from where it was made ([`crate::rw::symlink_id`]).
    Mknod {
        dir: Fh,
        name: Vec<u8>,
        kind: NodeKind,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// CREATE by a caller other than the server itself (RFC 1813 §3.3.8): [`Op::Create`] with
    /// the owner set before the file is linked in, so it is never visible owned by root.
    CreateOwned {
        dir: Fh,
        name: Vec<u8>,
        id: Fh,
        mode: u32,
        verf: Option<[u8; 8]>,
        uid: u32,
        gid: u32,
    },
    /// MKDIR (RFC 1813 §3.3.9) with the client's mode and the caller as owner.
    MkdirOwned {
        dir: Fh,
        name: Vec<u8>,
        id: Fh,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// The special files MKNOD makes on a read-write area. Character and block devices are not
/// among them (refused before anything is logged; see `rw::ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    Fifo,
    Socket,
}

impl Op {
    /// Whether the primary may answer only once this entry is durable on the replica: every
    /// namespace and metadata change, stable writes and COMMIT; UNSTABLE writes are covered
    /// by the write verifier instead (RFC 1813 §3.3.7).
    pub fn synchronous(&self) -> bool {
        !matches!(self, Op::Write { sync: false, .. })
    }

    /// The bytes of file data the entry carries (for lag accounting).
    pub fn data_len(&self) -> usize {
        match self {
            Op::Write { data, .. } => data.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unstable_writes_are_asynchronous() {
        let id = Fh([7; 16]);
        assert!(!Op::Write { id, offset: 0, data: vec![1], sync: false }.synchronous());
        assert!(Op::Write { id, offset: 0, data: vec![1], sync: true }.synchronous());
        assert!(Op::Commit { id }.synchronous());
        assert!(Op::Remove { dir: id, name: b"x".to_vec() }.synchronous());
        assert!(Op::SetAttr { id, attrs: Attrs::default() }.synchronous());
        assert!(Attrs::default().is_empty());
        assert!(!Attrs { mode: Some(0o600), ..Attrs::default() }.is_empty());
        assert!(Op::Link { id, dir: id, name: b"l".to_vec() }.synchronous());
        assert!(
            Op::Mknod { dir: id, name: b"p".to_vec(), kind: NodeKind::Fifo, mode: 0o600, uid: 1, gid: 1 }.synchronous()
        );
    }

    #[test]
    fn variant_numbers_of_the_first_entries_never_move() {
        // postcard writes the variant index first: Create is 0, Commit 7, the appended ones after.
        let id = Fh([1; 16]);
        let first = |op: &Op| postcard::to_allocvec(op).unwrap()[0];
        assert_eq!(first(&Op::Create { dir: id, name: vec![], id, mode: 0, verf: None }), 0);
        assert_eq!(first(&Op::Commit { id }), 7);
        assert_eq!(first(&Op::Link { id, dir: id, name: vec![] }), 8);
        assert_eq!(first(&Op::Mknod { dir: id, name: vec![], kind: NodeKind::Socket, mode: 0, uid: 0, gid: 0 }), 9);
        assert_eq!(first(&Op::CreateOwned { dir: id, name: vec![], id, mode: 0, verf: None, uid: 0, gid: 0 }), 10);
        assert_eq!(first(&Op::MkdirOwned { dir: id, name: vec![], id, mode: 0, uid: 0, gid: 0 }), 11);
    }
}
