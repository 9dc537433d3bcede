//! Reads the export back with libnfs' command-line client (a real NFSv3 peer).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::process::Command;

fn tool(name: &str) -> Command {
    assert!(
        Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().unwrap().status.success(),
        "{name} not found: install libnfs-utils (make deps)"
    );
    Command::new(name)
}

fn nfs_cat(url: &str) -> Result<Vec<u8>, String> {
    let out = tool("nfs-cat").arg(url).output().unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn nfs_ls(url: &str) -> String {
    let out = tool("nfs-ls").arg(url).output().unwrap();
    assert!(out.status.success(), "nfs-ls {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn libnfs_reads_back_files_and_listings() {
    let (_tmp, root, _outside) = common::sample_tree();
    let rt = common::runtime();
    // As root, libnfs binds a privileged port like the kernel client: keep the default check.
    let server = rt.block_on(common::start_with(&root, "/", true, !common::is_root()));
    let port = server.local_addr().port();
    let url = |p: &str| format!("nfs://127.0.0.1/{p}?nfsport={port}&mountport={port}&version=3");

    for f in ["hello.txt", "empty", "hard1", "sub/hard2", "sub/nested/deep.txt", "many/f0123", "big.sparse"] {
        let got = nfs_cat(&url(&format!("/{f}"))).unwrap_or_else(|e| panic!("nfs-cat {f}: {e}"));
        let want = fs::read(root.join(f)).unwrap();
        assert_eq!(got.len(), want.len(), "{f}");
        assert!(got == want, "{f}: content differs");
    }

    let ls = nfs_ls(&url("/"));
    for n in ["hello.txt", "sub", "link_rel", "link_abs", "escape", "big.sparse", "many", "fifo", "empty"] {
        assert!(
            ls.lines().any(|l| l.ends_with(&format!(" {n}")) || l.contains(&format!(" {n} "))),
            "{n} missing from:\n{ls}"
        );
    }
    assert!(!ls.contains(".hanfs"), "private dir listed:\n{ls}");
    let ls_many = nfs_ls(&url("/many"));
    assert_eq!(ls_many.lines().filter(|l| l.contains(" f0")).count(), 300, "{ls_many}");
    let ls_sub = nfs_ls(&url("/sub"));
    assert!(ls_sub.contains("nested") && ls_sub.contains("hard2") && !ls_sub.contains(".hanfs"), "{ls_sub}");

    // Nothing private, nothing outside.
    assert!(nfs_cat(&url("/.hanfs/stage/7/staged")).is_err());
    assert!(nfs_cat(&url("/sub/.hanfs/private")).is_err());
    let esc = nfs_cat(&url("/escape_file"));
    assert!(!esc.unwrap_or_default().windows(10).any(|w| w == b"TOP SECRET"));
    let esc = nfs_cat(&url("/escape/secret.txt"));
    assert!(!esc.unwrap_or_default().windows(10).any(|w| w == b"TOP SECRET"));
    drop(server);
}

#[test]
fn libnfs_mounts_a_named_export_and_its_subdirectories() {
    let (_tmp, root, _outside) = common::sample_tree();
    let rt = common::runtime();
    let server = rt.block_on(common::start(&root, "/install", false));
    let port = server.local_addr().port();
    let url = |p: &str| format!("nfs://127.0.0.1{p}?nfsport={port}&mountport={port}&version=3");
    assert_eq!(nfs_cat(&url("/install/hello.txt")).unwrap(), b"hello world\n");
    assert_eq!(
        nfs_cat(&url("/install/sub/nested/deep.txt")).unwrap(),
        fs::read(root.join("sub/nested/deep.txt")).unwrap()
    );
    // A path that is not the export is refused at MOUNT.
    assert!(nfs_cat(&url("/other/hello.txt")).is_err());
}
