//! The changes to a read-write area, answered by the RPC guard itself (issue 13).
//!
//! `nfs3_server` 0.11 answers LINK and MKNOD with `PROC_UNAVAIL`, drops MKDIR's attributes and
//! never tells the file system who calls. So on a read-write area the guard does not send the
//! change procedures (SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME,
//! LINK, COMMIT) on to the NFS layer: it decodes them with the library's XDR types
//! (`nfs3_types`), carries them out through [`AreaFs`] with the caller's AUTH_UNIX ids
//! ([`crate::rw::Caller`]) and answers with the same types (RFC 1813 §3.3.2-§3.3.21). Reads,
//! MOUNT and portmap still go to the NFS layer.
//!
//! Handles are the NFS layer's: the export's generation (8 bytes, little endian), then the
//! file id. The write verifier in WRITE and COMMIT replies is this server instance's.
//!
//! A retransmitted change is answered from a reply cache (keyed by client address, xid,
//! procedure and a hash of the arguments, as nfsd's): while the first is running the
//! retransmission is dropped, once it is answered the same reply is sent again, so a change is
//! carried out at most once and a client whose reply was lost still gets one.

use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use nfs3_server::nfs3_types::nfs3::{
    createhow3, fattr3, mknoddata3, nfs_fh3, nfsstat3, post_op_attr, post_op_fh3, pre_op_attr, stable_how, wcc_attr,
    wcc_data, writeverf3, COMMIT3args, COMMIT3res, COMMIT3resfail, COMMIT3resok, CREATE3args, CREATE3res,
    CREATE3resfail, CREATE3resok, LINK3args, LINK3res, LINK3resfail, LINK3resok, MKDIR3args, MKDIR3res, MKDIR3resfail,
    MKDIR3resok, MKNOD3args, MKNOD3res, MKNOD3resfail, MKNOD3resok, Nfs3Option, Nfs3Result, REMOVE3args, REMOVE3res,
    REMOVE3resfail, REMOVE3resok, RENAME3args, RENAME3res, RENAME3resfail, RENAME3resok, RMDIR3args, RMDIR3res,
    RMDIR3resfail, RMDIR3resok, SETATTR3args, SETATTR3res, SETATTR3resfail, SETATTR3resok, SYMLINK3args, SYMLINK3res,
    SYMLINK3resfail, SYMLINK3resok, WRITE3args, WRITE3res, WRITE3resfail, WRITE3resok,
};
use nfs3_server::nfs3_types::xdr_codec::{Opaque, Pack, Unpack};

use crate::index::Fh;
use crate::rw::{attrs_from, AreaFs, Caller, How, Node};

const SETATTR: u32 = 2;
const WRITE: u32 = 7;
const CREATE: u32 = 8;
const MKDIR: u32 = 9;
const SYMLINK: u32 = 10;
const MKNOD: u32 = 11;
const REMOVE: u32 = 12;
const RMDIR: u32 = 13;
const RENAME: u32 = 14;
const LINK: u32 = 15;
const COMMIT: u32 = 21;

/// Whether the guard answers this NFSv3 procedure itself on a read-write area.
pub(crate) fn serves(proc_: u32) -> bool {
    matches!(proc_, SETATTR | WRITE..=LINK | COMMIT)
}

/// Replies kept for retransmissions (the Linux client has at most a few hundred calls out).
const DRC_MAX: usize = 4096;
/// Bytes of the arguments hashed into a reply cache key (nfsd checksums 256).
const DRC_HASHED: usize = 512;

type Key = (IpAddr, u32, u32, [u8; 16]);

enum Slot {
    Running,
    Done(Arc<Vec<u8>>),
}

/// What the reply cache says about a call.
pub(crate) enum Seen {
    /// Not seen: carry it out.
    New(Key),
    /// Its first transmission is still running: drop this one.
    Running,
    /// Answered: this reply again.
    Done(Arc<Vec<u8>>),
}

#[derive(Default)]
struct Drc {
    map: HashMap<Key, Slot>,
    order: VecDeque<Key>,
}

/// One read-write area's change procedures.
pub(crate) struct Calls {
    fs: AreaFs,
    generation: [u8; 8],
    generation_n: u64,
    verf: [u8; 8],
    drc: Mutex<Drc>,
}

fn decode<T: Unpack>(args: &[u8]) -> Option<T> {
    let mut cur = Cursor::new(args);
    let (v, n) = T::unpack(&mut cur).ok()?;
    // Trailing bytes are garbage, as the NFS layer holds.
    (n == args.len()).then_some(v)
}

fn pack(v: &impl Pack) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.packed_size());
    v.pack(&mut out).ok()?;
    Some(out)
}

fn wcc_of(a: &fattr3) -> wcc_attr {
    wcc_attr { size: a.size, mtime: a.mtime, ctime: a.ctime }
}

impl Calls {
    pub(crate) fn new(fs: AreaFs, generation: u64, verf: [u8; 8]) -> Calls {
        Calls { fs, generation: generation.to_le_bytes(), generation_n: generation, verf, drc: Mutex::default() }
    }

    /// Looks a call up in the reply cache (and marks a new one running).
    pub(crate) fn seen(&self, peer: IpAddr, xid: u32, proc_: u32, args: &[u8]) -> Seen {
        let mut h = blake3::Hasher::new();
        h.update(&(args.len() as u64).to_le_bytes());
        h.update(&args[..args.len().min(DRC_HASHED)]);
        let mut d = [0u8; 16];
        d.copy_from_slice(&h.finalize().as_bytes()[..16]);
        let key = (peer, xid, proc_, d);
        let Ok(mut drc) = self.drc.lock() else {
            return Seen::New(key);
        };
        match drc.map.get(&key) {
            Some(Slot::Running) => Seen::Running,
            Some(Slot::Done(r)) => Seen::Done(Arc::clone(r)),
            None => {
                drc.map.insert(key, Slot::Running);
                drc.order.push_back(key);
                while drc.order.len() > DRC_MAX {
                    if let Some(old) = drc.order.pop_front() {
                        drc.map.remove(&old);
                    }
                }
                Seen::New(key)
            }
        }
    }

    /// Keeps the reply sent for `key`.
    pub(crate) fn done(&self, key: Key, reply: Arc<Vec<u8>>) {
        if let Ok(mut drc) = self.drc.lock() {
            if let Some(s) = drc.map.get_mut(&key) {
                *s = Slot::Done(reply);
            }
        }
    }

    /// The file id in a handle; a handle of another generation is stale (older) or bad, as the
    /// NFS layer answers.
    fn id(&self, h: &nfs_fh3) -> Result<Fh, nfsstat3> {
        let d = &h.data[..];
        let (g, rest) = d.split_at_checked(8).ok_or(nfsstat3::NFS3ERR_BADHANDLE)?;
        if g != self.generation {
            let mut b = [0u8; 8];
            b.copy_from_slice(g);
            return Err(if u64::from_le_bytes(b) < self.generation_n {
                nfsstat3::NFS3ERR_STALE
            } else {
                nfsstat3::NFS3ERR_BADHANDLE
            });
        }
        let id: [u8; 16] = rest.try_into().map_err(|_| nfsstat3::NFS3ERR_BADHANDLE)?;
        Ok(Fh(id))
    }

    fn fh(&self, id: &Fh) -> nfs_fh3 {
        let mut v = Vec::with_capacity(24);
        v.extend_from_slice(&self.generation);
        v.extend_from_slice(&id.0);
        nfs_fh3 { data: Opaque::owned(v) }
    }

    fn pre(&self, id: &Fh) -> pre_op_attr {
        match self.fs.attributes(id) {
            Ok(a) => Nfs3Option::Some(wcc_of(&a)),
            Err(_) => Nfs3Option::None,
        }
    }

    fn post(&self, id: &Fh) -> post_op_attr {
        match self.fs.attributes(id) {
            Ok(a) => Nfs3Option::Some(a),
            Err(_) => Nfs3Option::None,
        }
    }

    fn wcc(&self, before: pre_op_attr, id: &Fh) -> wcc_data {
        wcc_data { before, after: self.post(id) }
    }

    /// The result of one change call (what follows the RPC accept status), or `None` when its
    /// arguments do not decode (`GARBAGE_ARGS`). Blocking: file system work and, with a backup,
    /// the wait for its acknowledgement.
    pub(crate) fn answer(&self, proc_: u32, c: &Caller, args: &[u8]) -> Option<Vec<u8>> {
        match proc_ {
            SETATTR => {
                let a: SETATTR3args = decode(args)?;
                let res: SETATTR3res = match self.id(&a.object) {
                    Err(e) => Nfs3Result::Err((e, SETATTR3resfail::default())),
                    Ok(id) => {
                        let before = self.pre(&id);
                        let (attrs, client_times) = attrs_from(&a.new_attributes);
                        let guard = match a.guard {
                            Nfs3Option::Some(t) => Some(t),
                            Nfs3Option::None => None,
                        };
                        let r = self.fs.setattr_as(c, &id, &attrs, client_times, guard);
                        let obj_wcc = self.wcc(before, &id);
                        match r {
                            Ok(()) => Nfs3Result::Ok(SETATTR3resok { obj_wcc }),
                            Err(e) => Nfs3Result::Err((e, SETATTR3resfail { obj_wcc })),
                        }
                    }
                };
                pack(&res)
            }
            WRITE => {
                let a: WRITE3args<'static> = decode(args)?;
                let res: WRITE3res = match self.id(&a.file) {
                    Err(e) => Nfs3Result::Err((e, WRITE3resfail::default())),
                    Ok(id) => {
                        let before = self.pre(&id);
                        let mut data = a.data.into_owned();
                        // RFC 1813 §3.3.7: `count` bytes of `data` are written.
                        data.truncate(a.count as usize);
                        let count = data.len() as u32;
                        let sync = !matches!(a.stable, stable_how::UNSTABLE);
                        let r = self.fs.write_as(c, &id, a.offset, data, sync);
                        let file_wcc = self.wcc(before, &id);
                        match r {
                            // DATA_SYNC is answered as done (fdatasync); UNSTABLE as left unstable.
                            Ok(()) => Nfs3Result::Ok(WRITE3resok {
                                file_wcc,
                                count,
                                committed: if sync { a.stable } else { stable_how::UNSTABLE },
                                verf: writeverf3(self.verf),
                            }),
                            Err(e) => Nfs3Result::Err((e, WRITE3resfail { file_wcc })),
                        }
                    }
                };
                pack(&res)
            }
            COMMIT => {
                let a: COMMIT3args = decode(args)?;
                let res: COMMIT3res = match self.id(&a.file) {
                    Err(e) => Nfs3Result::Err((e, COMMIT3resfail { file_wcc: wcc_data::default() })),
                    Ok(id) => {
                        let before = self.pre(&id);
                        let r = self.fs.commit_as(c, &id);
                        let file_wcc = self.wcc(before, &id);
                        match r {
                            Ok(()) => Nfs3Result::Ok(COMMIT3resok { file_wcc, verf: writeverf3(self.verf) }),
                            Err(e) => Nfs3Result::Err((e, COMMIT3resfail { file_wcc })),
                        }
                    }
                };
                pack(&res)
            }
            CREATE => {
                let a: CREATE3args<'static> = decode(args)?;
                let how = match &a.how {
                    createhow3::UNCHECKED(s) => How::Unchecked(attrs_from(s).0),
                    createhow3::GUARDED(s) => How::Guarded(attrs_from(s).0),
                    createhow3::EXCLUSIVE(v) => How::Exclusive(v.0),
                };
                let res: CREATE3res =
                    match self.made(&a.where_.dir, |dir| self.fs.create_as(c, dir, &a.where_.name.0, how)) {
                        (Ok((h, obj_attributes)), dir_wcc) => {
                            Nfs3Result::Ok(CREATE3resok { obj: post_op_fh3::Some(h), obj_attributes, dir_wcc })
                        }
                        (Err(e), dir_wcc) => Nfs3Result::Err((e, CREATE3resfail { dir_wcc })),
                    };
                pack(&res)
            }
            MKDIR => {
                let a: MKDIR3args<'static> = decode(args)?;
                let attrs = attrs_from(&a.attributes).0;
                let res: MKDIR3res =
                    match self.made(&a.where_.dir, |dir| self.fs.mkdir_as(c, dir, &a.where_.name.0, &attrs)) {
                        (Ok((h, obj_attributes)), dir_wcc) => {
                            Nfs3Result::Ok(MKDIR3resok { obj: post_op_fh3::Some(h), obj_attributes, dir_wcc })
                        }
                        (Err(e), dir_wcc) => Nfs3Result::Err((e, MKDIR3resfail { dir_wcc })),
                    };
                pack(&res)
            }
            SYMLINK => {
                let a: SYMLINK3args<'static> = decode(args)?;
                let attrs = attrs_from(&a.symlink.symlink_attributes).0;
                let target = &a.symlink.symlink_data.0;
                let res: SYMLINK3res = match self
                    .made(&a.where_.dir, |dir| self.fs.symlink_as(c, dir, &a.where_.name.0, target, &attrs))
                {
                    (Ok((h, obj_attributes)), dir_wcc) => {
                        Nfs3Result::Ok(SYMLINK3resok { obj: post_op_fh3::Some(h), obj_attributes, dir_wcc })
                    }
                    (Err(e), dir_wcc) => Nfs3Result::Err((e, SYMLINK3resfail { dir_wcc })),
                };
                pack(&res)
            }
            MKNOD => {
                let a: MKNOD3args<'static> = decode(args)?;
                let what = match &a.what {
                    mknoddata3::NF3FIFO(s) => Node::Fifo(attrs_from(s).0),
                    mknoddata3::NF3SOCK(s) => Node::Socket(attrs_from(s).0),
                    mknoddata3::NF3CHR(_) | mknoddata3::NF3BLK(_) => Node::Device,
                    mknoddata3::default => Node::Other,
                };
                let res: MKNOD3res =
                    match self.made(&a.where_.dir, |dir| self.fs.mknod_as(c, dir, &a.where_.name.0, &what)) {
                        (Ok((h, obj_attributes)), dir_wcc) => {
                            Nfs3Result::Ok(MKNOD3resok { obj: post_op_fh3::Some(h), obj_attributes, dir_wcc })
                        }
                        (Err(e), dir_wcc) => Nfs3Result::Err((e, MKNOD3resfail { dir_wcc })),
                    };
                pack(&res)
            }
            REMOVE | RMDIR => {
                let o = if proc_ == REMOVE {
                    decode::<REMOVE3args<'static>>(args)?.object
                } else {
                    decode::<RMDIR3args<'static>>(args)?.object
                };
                let r = match self.id(&o.dir) {
                    Err(e) => Err((e, wcc_data::default())),
                    Ok(dir) => {
                        let before = self.pre(&dir);
                        let r = self.fs.remove_as(c, &dir, &o.name.0, proc_ == RMDIR);
                        let dir_wcc = self.wcc(before, &dir);
                        match r {
                            Ok(()) => Ok(dir_wcc),
                            Err(e) => Err((e, dir_wcc)),
                        }
                    }
                };
                match (proc_, r) {
                    (REMOVE, Ok(dir_wcc)) => pack(&REMOVE3res::Ok(REMOVE3resok { dir_wcc })),
                    (REMOVE, Err((e, dir_wcc))) => pack(&REMOVE3res::Err((e, REMOVE3resfail { dir_wcc }))),
                    (_, Ok(dir_wcc)) => pack(&RMDIR3res::Ok(RMDIR3resok { dir_wcc })),
                    (_, Err((e, dir_wcc))) => pack(&RMDIR3res::Err((e, RMDIR3resfail { dir_wcc }))),
                }
            }
            RENAME => {
                let a: RENAME3args<'static, 'static> = decode(args)?;
                let res: RENAME3res = match (self.id(&a.from.dir), self.id(&a.to.dir)) {
                    (Err(e), _) | (_, Err(e)) => Nfs3Result::Err((e, RENAME3resfail::default())),
                    (Ok(fd), Ok(td)) => {
                        let (fb, tb) = (self.pre(&fd), self.pre(&td));
                        let r = self.fs.rename_as(c, &fd, &a.from.name.0, &td, &a.to.name.0);
                        let (fromdir_wcc, todir_wcc) = (self.wcc(fb, &fd), self.wcc(tb, &td));
                        match r {
                            Ok(()) => Nfs3Result::Ok(RENAME3resok { fromdir_wcc, todir_wcc }),
                            Err(e) => Nfs3Result::Err((e, RENAME3resfail { fromdir_wcc, todir_wcc })),
                        }
                    }
                };
                pack(&res)
            }
            LINK => {
                let a: LINK3args<'static> = decode(args)?;
                let res: LINK3res = match (self.id(&a.file), self.id(&a.link.dir)) {
                    (Err(e), _) | (_, Err(e)) => Nfs3Result::Err((
                        e,
                        LINK3resfail { file_attributes: Nfs3Option::None, linkdir_wcc: wcc_data::default() },
                    )),
                    (Ok(id), Ok(dir)) => {
                        let before = self.pre(&dir);
                        let r = self.fs.link_as(c, &id, &dir, &a.link.name.0);
                        let (file_attributes, linkdir_wcc) = (self.post(&id), self.wcc(before, &dir));
                        match r {
                            Ok(()) => Nfs3Result::Ok(LINK3resok { file_attributes, linkdir_wcc }),
                            Err(e) => Nfs3Result::Err((e, LINK3resfail { file_attributes, linkdir_wcc })),
                        }
                    }
                };
                pack(&res)
            }
            _ => None,
        }
    }

    /// CREATE, MKDIR, SYMLINK, MKNOD: the new object's handle and attributes (or the error),
    /// and the directory's weak cache consistency data.
    fn made(
        &self,
        dir: &nfs_fh3,
        make: impl FnOnce(&Fh) -> Result<Fh, nfsstat3>,
    ) -> (Result<(nfs_fh3, post_op_attr), nfsstat3>, wcc_data) {
        let dir = match self.id(dir) {
            Ok(d) => d,
            Err(e) => return (Err(e), wcc_data::default()),
        };
        let before = self.pre(&dir);
        let r = make(&dir).map(|id| (self.fh(&id), self.post(&id)));
        (r, self.wcc(before, &dir))
    }
}
