//! The read-write area server's test harness (issue 13): a server over an area directory, a root
//! connection to it, and one call per NFSv3 change, for `rw.rs` and `replica.rs`.

use std::path::Path;
use std::sync::Arc;

use std::fs;

use super::{connect_as, lookup, name, Conn};
use nfs3_client::nfs3_types::nfs3::{
    createhow3, diropargs3, nfs_fh3, nfspath3, nfsstat3, sattr3, set_mode3, stable_how, symlinkdata3, COMMIT3args,
    CREATE3args, MKDIR3args, Nfs3Result, REMOVE3args, RENAME3args, RMDIR3args, SETATTR3args, SYMLINK3args, WRITE3args,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

pub const EXPORT: &str = "/statelite";

pub async fn start(root: &Path, rep: Option<Arc<dyn nfs3::rw::Replicate>>) -> nfs3::RwServer {
    let opts = nfs3::RwOptions { export_name: Some(EXPORT.into()), insecure: true, ..Default::default() };
    nfs3::serve_rw(root, "127.0.0.1:0".parse().unwrap(), opts, rep).await.unwrap()
}

pub async fn root_conn(s: &nfs3::RwServer) -> Conn {
    connect_as(s.local_addr().port(), EXPORT, 0, 0, &[]).await.unwrap()
}

pub fn fh(h: &nfs_fh3) -> Vec<u8> {
    h.data.to_vec()
}

pub fn where_(dir: &nfs_fh3, n: &[u8]) -> diropargs3<'static> {
    diropargs3 { dir: dir.clone(), name: name(n) }
}

pub fn mode(m: u32) -> sattr3 {
    sattr3 { mode: set_mode3::Some(m), ..sattr3::default() }
}

pub async fn create(c: &mut Conn, dir: &nfs_fh3, n: &[u8], how: createhow3) -> Result<nfs_fh3, nfsstat3> {
    match c.create(&CREATE3args { where_: where_(dir, n), how }).await.unwrap() {
        Nfs3Result::Ok(ok) => match ok.obj {
            nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(h) => Ok(h),
            nfs3_client::nfs3_types::nfs3::Nfs3Option::None => Ok(lookup(c, dir, n).await?.0),
        },
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

pub async fn mkdir(c: &mut Conn, dir: &nfs_fh3, n: &[u8]) -> Result<nfs_fh3, nfsstat3> {
    match c.mkdir(&MKDIR3args { where_: where_(dir, n), attributes: mode(0o755) }).await.unwrap() {
        Nfs3Result::Ok(ok) => match ok.obj {
            nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(h) => Ok(h),
            nfs3_client::nfs3_types::nfs3::Nfs3Option::None => panic!("mkdir without handle"),
        },
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

/// (committed, verifier)
pub async fn write(
    c: &mut Conn,
    f: &nfs_fh3,
    off: u64,
    data: &[u8],
    stable: stable_how,
) -> Result<(stable_how, [u8; 8]), nfsstat3> {
    let args = WRITE3args {
        file: f.clone(),
        offset: off,
        count: data.len() as u32,
        stable,
        data: Opaque::owned(data.to_vec()),
    };
    match c.write(&args).await.unwrap() {
        Nfs3Result::Ok(ok) => {
            assert_eq!(ok.count as usize, data.len());
            Ok((ok.committed, ok.verf.0))
        }
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

pub async fn commit(c: &mut Conn, f: &nfs_fh3) -> Result<[u8; 8], nfsstat3> {
    match c.commit(&COMMIT3args { file: f.clone(), offset: 0, count: 0 }).await.unwrap() {
        Nfs3Result::Ok(ok) => Ok(ok.verf.0),
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

pub async fn rename(c: &mut Conn, fd: &nfs_fh3, f: &[u8], td: &nfs_fh3, t: &[u8]) -> Result<(), nfsstat3> {
    match c.rename(&RENAME3args { from: where_(fd, f), to: where_(td, t) }).await.unwrap() {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

pub async fn remove(c: &mut Conn, d: &nfs_fh3, n: &[u8]) -> Result<(), nfsstat3> {
    match c.remove(&REMOVE3args { object: where_(d, n) }).await.unwrap() {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

pub async fn rmdir(c: &mut Conn, d: &nfs_fh3, n: &[u8]) -> Result<(), nfsstat3> {
    match c.rmdir(&RMDIR3args { object: where_(d, n) }).await.unwrap() {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

pub async fn setattr(c: &mut Conn, f: &nfs_fh3, a: sattr3) -> Result<(), nfsstat3> {
    match c.setattr(&SETATTR3args { object: f.clone(), new_attributes: a, guard: Default::default() }).await.unwrap() {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

pub async fn symlink(c: &mut Conn, d: &nfs_fh3, n: &[u8], target: &[u8]) -> Result<nfs_fh3, nfsstat3> {
    let args = SYMLINK3args {
        where_: where_(d, n),
        symlink: symlinkdata3 {
            symlink_attributes: sattr3::default(),
            symlink_data: nfspath3(Opaque::owned(target.to_vec())),
        },
    };
    match c.symlink(&args).await.unwrap() {
        Nfs3Result::Ok(_) => Ok(lookup(c, d, n).await?.0),
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

pub fn xattr_id(p: &Path) -> Option<[u8; 16]> {
    let mut b = [0u8; 16];
    match rustix::fs::lgetxattr(p, nfs3::rw::ID_XATTR, &mut b[..]) {
        Ok(16) => Some(b),
        _ => None,
    }
}

pub fn area() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("area");
    fs::create_dir(&root).unwrap();
    (tmp, root)
}

pub async fn mkdir_mode(c: &mut Conn, dir: &nfs_fh3, n: &[u8], m: u32) -> Result<nfs_fh3, nfsstat3> {
    match c.mkdir(&MKDIR3args { where_: where_(dir, n), attributes: mode(m) }).await.unwrap() {
        Nfs3Result::Ok(ok) => match ok.obj {
            nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(h) => Ok(h),
            nfs3_client::nfs3_types::nfs3::Nfs3Option::None => panic!("mkdir without handle"),
        },
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

/// LINK (RFC 1813 §3.3.15); the file's attributes after it (nlink one more).
pub async fn link(
    c: &mut Conn,
    file: &nfs_fh3,
    dir: &nfs_fh3,
    n: &[u8],
) -> Result<nfs3_client::nfs3_types::nfs3::fattr3, nfsstat3> {
    use nfs3_client::nfs3_types::nfs3::{LINK3args, Nfs3Option};
    match c.link(&LINK3args { file: file.clone(), link: where_(dir, n) }).await.unwrap() {
        Nfs3Result::Ok(ok) => match ok.file_attributes {
            Nfs3Option::Some(a) => Ok(a),
            Nfs3Option::None => panic!("LINK without the file's attributes"),
        },
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

/// MKNOD (RFC 1813 §3.3.11).
pub async fn mknod(
    c: &mut Conn,
    dir: &nfs_fh3,
    n: &[u8],
    what: nfs3_client::nfs3_types::nfs3::mknoddata3,
) -> Result<nfs_fh3, nfsstat3> {
    use nfs3_client::nfs3_types::nfs3::{MKNOD3args, Nfs3Option};
    match c.mknod(&MKNOD3args { where_: where_(dir, n), what }).await.unwrap() {
        Nfs3Result::Ok(ok) => match ok.obj {
            Nfs3Option::Some(h) => Ok(h),
            Nfs3Option::None => panic!("mknod without handle"),
        },
        Nfs3Result::Err((e, _)) => Err(e),
    }
}
