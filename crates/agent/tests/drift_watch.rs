#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The drift watch: an `Open` of a replica unchanged since the last rescan needs no rescan, and a
//! replica changed behind the agent's back while it was idle (content with its mtime put back,
//! a file added, a hard link planted in it or made to it from outside, a chmod) is still reported
//! `drifted` and taken as it is; so is one changed just before the agent's restart, and one too
//! big for its watch (rescanned at every `Open`).

use proto::{req, Name, RelPath};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

async fn open(a: &agent::testing::TestAgent) -> (proto::ImageState, Option<proto::Digest>) {
    open_at(a, "img").await
}

async fn open_at(a: &agent::testing::TestAgent, path: &str) -> (proto::ImageState, Option<proto::Digest>) {
    let mut c = transport::connect(&a.addr.to_string(), "agent", None, T).await.unwrap();
    c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.unwrap();
    let o = c.call(req::Open { image: Name::parse("img").unwrap(), path: RelPath::parse(path).unwrap() }).await;
    let o = o.unwrap();
    let _ = c.send(&proto::ToAgent::Bye).await;
    let _ = c.flush().await;
    // The watch is put back before the image's lock is released: the next `Open` waits for it.
    drop(c);
    (o.state, o.drifted)
}

fn digest_of(root: &Path) -> proto::Digest {
    tree::scan(root, &[]).unwrap().digest().parse().unwrap()
}

fn make_image(img: &Path) {
    std::fs::create_dir_all(img.join("etc/sub")).unwrap();
    std::fs::write(img.join("etc/motd"), b"hello\n").unwrap();
    std::fs::write(img.join("etc/sub/conf"), b"a = 1\n").unwrap();
    std::fs::write(img.join("bin"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("etc/motd", img.join("motd")).unwrap();
}

/// Opens until the replica is watched: the first `Open` adopts it, the second rescans and arms.
async fn watched(a: &agent::testing::TestAgent) {
    let (s, d) = open(a).await;
    assert_eq!((s.generation, d), (0, None));
    let (_, d) = open(a).await;
    assert_eq!(d, None);
    let before = a.rescans.load(Ordering::Relaxed);
    let (s, d) = open(a).await;
    assert_eq!(d, None);
    assert_eq!(a.rescans.load(Ordering::Relaxed), before, "an unchanged, watched replica is not rescanned");
    assert_eq!(s.digest, digest_of(&a.root.join("img")));
}

/// One change behind the agent's back: reported as drifted from the digest it had, the new
/// state is the tree as it is, and the next `Open` (rescanned, then watched again) finds no drift.
async fn drifts(a: &agent::testing::TestAgent, what: &str, change: impl FnOnce(&Path)) {
    let img = a.root.join("img");
    let had = digest_of(&img);
    change(&img);
    let now = digest_of(&img);
    assert_ne!(had, now, "{what}: the change must change the digest");
    let before = a.rescans.load(Ordering::Relaxed);
    let (s, d) = open(a).await;
    assert_eq!(d, Some(had), "{what}: reported drifted from the digest it had");
    assert_eq!(s.digest, now, "{what}: adopted as it is");
    assert_eq!(a.rescans.load(Ordering::Relaxed), before + 1, "{what}");
    let (_, d) = open(a).await;
    assert_eq!(d, None, "{what}");
    let before = a.rescans.load(Ordering::Relaxed);
    let (_, d) = open(a).await;
    assert_eq!(d, None, "{what}");
    assert_eq!(a.rescans.load(Ordering::Relaxed), before, "{what}: watched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_behind_a_watched_replica_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent::testing::spawn(&dir.path().join("a"), "").await.unwrap();
    make_image(&a.root.join("img"));
    watched(&a).await;
    // Same size, mtime put back: only the content (and ctime) differ.
    drifts(&a, "content", |img| {
        let p = img.join("etc/motd");
        let m = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::fs::write(&p, b"HELLO\n").unwrap();
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(m).unwrap();
    })
    .await;
    drifts(&a, "file added", |img| std::fs::write(img.join("etc/sub/new"), b"new\n").unwrap()).await;
    drifts(&a, "chmod", |img| {
        std::fs::set_permissions(img.join("etc/sub/conf"), std::fs::Permissions::from_mode(0o600)).unwrap()
    })
    .await;
    drifts(&a, "hard link planted inside", |img| std::fs::hard_link(img.join("bin"), img.join("etc/bin2")).unwrap())
        .await;
    // A link made from outside the replica: only the inode's own watch sees it (its link count);
    // not drift by the digest's measure (the tree's names are the same), but rescanned.
    let outside = dir.path().join("outside-link");
    std::fs::hard_link(a.root.join("img/etc/sub/conf"), &outside).unwrap();
    let before = a.rescans.load(Ordering::Relaxed);
    assert_eq!(open(&a).await.1, None);
    assert_eq!(a.rescans.load(Ordering::Relaxed), before + 1, "the outside link fired the watch");
    // A write through that outside name reaches a replica inode: its watch fires too.
    drifts(&a, "write through the outside link", |_| std::fs::write(&outside, b"b = 2\n").unwrap()).await;
    drifts(&a, "directory removed", |img| std::fs::remove_dir_all(img.join("etc/sub")).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_just_before_a_restart_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("a");
    let a = agent::testing::spawn(&at, "").await.unwrap();
    make_image(&a.root.join("img"));
    watched(&a).await;
    let img = a.root.join("img");
    let had = digest_of(&img);
    drop(a);
    std::fs::write(img.join("etc/motd"), b"changed while down\n").unwrap();
    // The old agent's state-dir lock goes with its task: retry until it has.
    let mut a = None;
    for _ in 0..100 {
        match agent::testing::spawn(&at, "").await {
            Ok(x) => {
                a = Some(x);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let a = a.expect("the agent restarts");
    let (s, d) = open(&a).await;
    assert_eq!(d, Some(had));
    assert_eq!(s.digest, digest_of(&img));
    assert_eq!(a.rescans.load(Ordering::Relaxed), 1, "a restarted agent rescans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_too_big_for_its_watch_is_rescanned_at_every_open() {
    let dir = tempfile::tempdir().unwrap();
    // Seven inodes in the image, room for five watches.
    let a = agent::testing::spawn_with_watch_limit(&dir.path().join("a"), "", Some(5)).await.unwrap();
    make_image(&a.root.join("img"));
    let (_, d) = open(&a).await;
    assert_eq!(d, None);
    for n in 1..=3 {
        let (_, d) = open(&a).await;
        assert_eq!(d, None);
        assert_eq!(a.rescans.load(Ordering::Relaxed), n, "unwatched: every open rescans");
    }
    let img = a.root.join("img");
    let had = digest_of(&img);
    std::fs::set_permissions(img.join("bin"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (s, d) = open(&a).await;
    assert_eq!(d, Some(had));
    assert_eq!(s.digest, digest_of(&img));
}

/// One whole update of `img` to the tree at `src` (every file sent whole), at `generation`.
async fn push(a: &agent::testing::TestAgent, src: &Path, generation: u64) -> proto::reply::Committed {
    use std::os::unix::ffi::OsStrExt;
    let mut c = transport::connect(&a.addr.to_string(), "agent", None, T).await.unwrap();
    c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.unwrap();
    let o = c.call(req::Open { image: Name::parse("img").unwrap(), path: RelPath::parse("img").unwrap() }).await;
    assert_eq!(o.unwrap().drifted, None);
    let m = c.call(req::GetManifest).await.unwrap();
    let theirs = tree::Manifest::from_bytes(&c.recv_bulk("manifest", m.len, 1 << 30).await.unwrap()).unwrap();
    let mut plan = tree::diff(&theirs, &tree::scan(src, &[]).unwrap());
    plan.generation = generation;
    let b = plan.to_bytes().unwrap();
    let need = c.call_with_bulk(req::Plan { len: b.len() as u64, zstd: false }, &b).await.unwrap();
    for i in need.indexes {
        let data = std::fs::read(src.join(std::ffi::OsStr::from_bytes(&plan.contents[i as usize].path))).unwrap();
        let blob =
            proto::ToAgent::Blob { index: i, encoding: proto::Encoding::Literal, len: data.len() as u64, zstd: false };
        c.send(&blob).await.unwrap();
        c.send_bulk(&data).await.unwrap();
        c.send(&proto::ToAgent::BlobEnd).await.unwrap();
    }
    let r = c.call(req::Commit).await.unwrap();
    c.bye().await;
    r
}

/// The commit's own changes fire the watch; it is armed again over the new generation (and the
/// tree rescanned) after the commit, so the next `Open` needs no rescan, and a change after
/// that is still reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_commit_the_watch_is_armed_again() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent::testing::spawn(&dir.path().join("a"), "").await.unwrap();
    make_image(&a.root.join("img"));
    watched(&a).await;
    let src = dir.path().join("src");
    make_image(&src);
    std::fs::write(src.join("etc/motd"), b"new motd\n").unwrap();
    std::fs::write(src.join("etc/added"), b"added\n").unwrap();
    let done = push(&a, &src, 1).await;
    assert_eq!(done.state.digest, digest_of(&src));
    let before = a.rescans.load(Ordering::Relaxed);
    let (s, d) = open(&a).await;
    assert_eq!((s.generation, d), (1, None));
    assert_eq!(a.rescans.load(Ordering::Relaxed), before, "watched again after the commit");
    drifts(&a, "after a commit", |img| std::fs::write(img.join("etc/added"), b"edited\n").unwrap()).await;
}

/// An ancestor of the image's root renamed away and replaced by another tree: no watch of the
/// old tree sees it, the root's inode at that path tells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ancestor_replaced_behind_a_watched_replica_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent::testing::spawn(&dir.path().join("a"), "").await.unwrap();
    let img = a.root.join("x/img");
    make_image(&img);
    for _ in 0..2 {
        assert_eq!(open_at(&a, "x/img").await.1, None);
    }
    let before = a.rescans.load(Ordering::Relaxed);
    assert_eq!(open_at(&a, "x/img").await.1, None);
    assert_eq!(a.rescans.load(Ordering::Relaxed), before, "watched");
    let had = digest_of(&img);
    std::fs::rename(a.root.join("x"), a.root.join("x-old")).unwrap();
    make_image(&img);
    std::fs::write(img.join("etc/motd"), b"another tree\n").unwrap();
    let (s, d) = open_at(&a, "x/img").await;
    assert_eq!(d, Some(had));
    assert_eq!(s.digest, digest_of(&img));
}
