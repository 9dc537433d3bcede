//! Two servers over two independently made copies of one tree hand out the same handles,
//! fileids and attributes; a handle from one is served by the other (failover) and by a
//! restarted server that has not seen it yet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use nfs3_client::nfs3_types::nfs3::{Nfs3Result, READDIRPLUS3args};

fn run(cmd: &mut Command) {
    let st = cmd.status().unwrap();
    assert!(st.success(), "{cmd:?}");
}

#[test]
fn replicas_serve_identical_handles_and_accept_each_others() {
    let (tmp, root, _outside) = common::sample_tree();
    let sn1 = tmp.path().join("sn1");
    let sn2 = tmp.path().join("sn2");
    run(Command::new("cp").arg("-a").arg(&root).arg(&sn1));
    // rsync writes every file anew (and unsparse), in its own order: other inode numbers.
    run(Command::new("rsync").arg("-aH").arg(format!("{}/", root.display())).arg(&sn2));
    for f in ["hello.txt", "sub/nested/deep.txt", "many/f0100", "big.sparse"] {
        let (a, b) = (fs::metadata(sn1.join(f)).unwrap(), fs::metadata(sn2.join(f)).unwrap());
        assert_ne!(a.ino(), b.ino(), "{f}: copies share an inode; the test would prove nothing");
    }

    common::run(async {
        let s1 = common::start(&sn1, "/install", true).await;
        let s2 = common::start(&sn2, "/install", true).await;
        let mut c1 = common::connect(s1.local_addr().port(), "/install").await;
        let mut c2 = common::connect(s2.local_addr().port(), "/install").await;

        assert_eq!(c1.root_nfs_fh3().data.to_vec(), c2.root_nfs_fh3().data.to_vec());
        let v1 = common::snapshot(&mut c1).await;
        let v2 = common::snapshot(&mut c2).await;
        assert!(v1.len() > 300, "{}", v1.len());
        assert!(!v1.keys().any(|p| p.windows(6).any(|w| w == b".hanfs")));
        for (p, a) in &v1 {
            assert_eq!(Some(a), v2.get(p), "{}", String::from_utf8_lossy(p));
        }
        assert_eq!(v1, v2);
        // fileids are distinct within the tree (no collision in this sample).
        let ids: std::collections::BTreeSet<_> = v1.values().map(|(h, _)| h.clone()).collect();
        assert_eq!(ids.len(), v1.len());

        // Failover: every handle sn1 gave out works on sn2, and reads the same bytes.
        for f in ["hello.txt", "sub/nested/deep.txt", "sub/hard2", "big.sparse"] {
            let (fh, _) = common::lookup_path(&mut c1, f).await.unwrap();
            let want = fs::read(root.join(f)).unwrap();
            assert!(common::read_all(&mut c2, &fh).await.unwrap() == want, "{f}");
        }
        // A listing begun on sn1 continues on sn2 from sn1's cookie and verifier.
        let (many, _) = common::lookup_path(&mut c1, "many").await.unwrap();
        let args = |cookie, cookieverf| READDIRPLUS3args {
            dir: many.clone(),
            cookie,
            cookieverf,
            dircount: 1024,
            maxcount: 4096,
        };
        let Nfs3Result::Ok(p1) = c1.readdirplus(&args(0, Default::default())).await.unwrap() else { panic!("page 1") };
        let first = p1.reply.entries.into_inner();
        assert!(!p1.reply.eof && !first.is_empty() && first.len() < 300);
        let last = first.last().unwrap();
        let Nfs3Result::Ok(p2) = c2.readdirplus(&args(last.cookie, p1.cookieverf)).await.unwrap() else {
            panic!("page 2 on sn2")
        };
        let next = p2.reply.entries.into_inner();
        assert_eq!(next[0].name.0.to_vec(), format!("f{:04}", first.len()).into_bytes(), "sn2 resumed elsewhere");

        let (lnk, _) = common::lookup_path(&mut c1, "link_abs").await.unwrap();
        assert_eq!(common::readlink(&mut c2, &lnk).await.unwrap(), b"/etc/passwd");

        // A restarted server that walked nothing yet resolves a handle it never gave out.
        drop(c2);
        drop(s2);
        let s3 = common::start(&sn2, "/install", false).await;
        let mut c3 = common::connect(s3.local_addr().port(), "/install").await;
        let (fh, a1) = common::lookup_path(&mut c1, "sub/nested/deep.txt").await.unwrap();
        assert_eq!(s3.fs().index_len(), 1);
        let a3 = common::getattr(&mut c3, &fh).await.unwrap();
        assert_eq!(common::replica_view(&a1), common::replica_view(&a3));
        assert_eq!(s3.fs().walks(), 1);
        // A handle for a path that does not exist is stale, and does not walk again at once.
        let mut bogus = fh.clone();
        let mut data = bogus.data.to_vec();
        *data.last_mut().unwrap() ^= 0xff;
        bogus.data = nfs3_client::nfs3_types::xdr_codec::Opaque::owned(data);
        assert!(common::getattr(&mut c3, &bogus).await.is_err());
        assert_eq!(s3.fs().walks(), 1);

        // Another export name is another generation: its handles are not accepted here.
        let s4 = common::start(&sn2, "/elsewhere", false).await;
        let mut c4 = common::connect(s4.local_addr().port(), "/elsewhere").await;
        assert!(common::getattr(&mut c4, &fh).await.is_err());
    });
}
