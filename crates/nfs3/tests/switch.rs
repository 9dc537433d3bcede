//! Item 6 of issue #9: a commit is one step for NFS clients. A reader reads two files that change
//! together (generation 1: both "A…", generation 2: both "B…") through the server while the tree
//! engine commits a real replica (a child process, so it can be frozen mid-commit with SIGSTOP).
//! Once the reader has seen a "B" it must never see an "A" again, nor find a file missing or
//! unreadable: that would be a mix, a tree that never existed. The same attack without the gate
//! shows the mix, so the check can fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::{nfsstat3, Nfs3Result, READ3args};

/// Set in the child: the tree to commit (its replica, state dir and new source).
const CHILD: &str = "HANFS_NFS3_SWITCH_CHILD";
/// Files changed between the two sentinels (`a/f` first, `z/f` last): the rename burst.
fn burst_files() -> usize {
    std::env::var("HANFS_NFS3_BURST_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

fn write_version(dir: &Path, v: &str, n: usize) {
    for d in ["a", "m", "z"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("a/f"), format!("{v} first")).unwrap();
    std::fs::write(dir.join("z/f"), format!("{v} last")).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("m/{i:06}")), format!("{v}{i}")).unwrap();
    }
}

struct Rig {
    _tmp: tempfile::TempDir,
    served: PathBuf,
    replica: PathBuf,
    state: PathBuf,
    v2: PathBuf,
}

/// A served root holding a replica adopted at generation 1 (content "A"), and the source of
/// generation 2 (content "B").
fn rig() -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let served = tmp.path().join("served");
    let replica = served.join("img");
    let state = tmp.path().join("state");
    let v2 = tmp.path().join("v2");
    let n = burst_files();
    write_version(&replica, "A", n);
    write_version(&v2, "B", n);
    let mut r = tree::Replica::open(&replica, &state, tree::ReplicaOptions::default()).unwrap();
    r.recover().unwrap();
    r.adopt(1).unwrap();
    Rig { _tmp: tmp, served, replica, state, v2 }
}

/// The child's side: stage generation 2, say "ready", commit when told, say how long it took.
#[test]
fn switch_child() {
    let Ok(dirs) = std::env::var(CHILD) else { return };
    let mut it = dirs.split('\n').map(PathBuf::from);
    let (replica, state, v2) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let mut r = tree::Replica::open(&replica, &state, tree::ReplicaOptions::default()).unwrap();
    let new = tree::scan(&v2, &[]).unwrap();
    let mut plan = tree::diff(r.manifest().unwrap(), &new);
    plan.generation = 2;
    let mut st = r.begin(plan).unwrap();
    for n in st.needed() {
        let p = v2.join(std::str::from_utf8(&n.path).unwrap());
        st.write_file(&n.path, std::fs::File::open(p).unwrap()).unwrap();
    }
    println!("hanfs-child: ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let t0 = Instant::now();
    st.commit().unwrap();
    println!("hanfs-child: committed {}", t0.elapsed().as_secs_f64());
}

fn spawn_child(rig: &Rig) -> (Child, BufReader<std::process::ChildStdout>) {
    let dirs = format!("{}\n{}\n{}", rig.replica.display(), rig.state.display(), rig.v2.display());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["switch_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, dirs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    wait_for(&mut out, "hanfs-child: ready");
    (child, out)
}

fn wait_for(out: &mut impl BufRead, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child ended before {prefix:?}");
        // libtest may print "test switch_child ... " on the same line first.
        if let Some(i) = line.find(prefix) {
            return line[i + prefix.len()..].trim().to_string();
        }
    }
}

fn first_byte(p: &Path) -> u8 {
    std::fs::read(p).ok().and_then(|b| b.first().copied()).unwrap_or(b'?')
}

/// What one run saw.
#[derive(Debug, Default)]
struct Seen {
    /// Reads that returned "B" content followed later by one returning "A": mixes.
    mixes: usize,
    reads: usize,
    jukebox: usize,
    /// Reads that found the file missing or unreadable (half-way through its replacement).
    vanished: usize,
    last: (u8, u8),
    /// How long the files on disk (what kernel nfsd serves) showed the mix, as a poller saw it.
    disk_window: Duration,
    commit_secs: f64,
}

/// Commits generation 2 while a reader reads `a/f` and `z/f` through the server; with `freeze`,
/// the committing process is stopped for that long as soon as `a/f` has changed on disk but
/// `z/f` has not (in the middle of the rename burst).
fn run(gated: bool, freeze: Option<Duration>, switch_wait: Duration) -> Seen {
    let rig = rig();
    let (mut child, mut out) = spawn_child(&rig);
    let rt = common::runtime();
    let server = rt.block_on(nfs3::serve(
        &rig.served,
        "127.0.0.1:0".parse().unwrap(),
        nfs3::Options {
            export_name: Some("/install".into()),
            walk_on_start: false,
            insecure: true,
            switch_wait,
            ..nfs3::Options::default()
        },
    ));
    let server = server.unwrap();
    let port = server.local_addr().port();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        rt.spawn(async move {
            let mut c = common::connect(port, "/install").await;
            let (a, _) = common::lookup_path(&mut c, "img/a/f").await.unwrap();
            let (z, _) = common::lookup_path(&mut c, "img/z/f").await.unwrap();
            let mut seen = Seen::default();
            let mut saw_b = false;
            let mut last = (b'?', b'?');
            // One more round after the commit ends, so the last read is of the new generation.
            let mut rounds_after = 0;
            while rounds_after < 2 {
                if stop.load(Ordering::SeqCst) {
                    rounds_after += 1;
                }
                for (i, fh) in [&a, &z].into_iter().enumerate() {
                    let r = c.read(&READ3args { file: fh.clone(), offset: 0, count: 64 }).await.unwrap();
                    seen.reads += 1;
                    let b = match r {
                        Nfs3Result::Ok(ok) => ok.data.first().copied().unwrap_or(b'?'),
                        Nfs3Result::Err((nfsstat3::NFS3ERR_JUKEBOX, _)) => {
                            seen.jukebox += 1;
                            continue;
                        }
                        // Between moving the old file out and the new one in the path is gone, and
                        // an installed file has the stage's owner and mode until its metadata step.
                        Nfs3Result::Err((
                            nfsstat3::NFS3ERR_STALE | nfsstat3::NFS3ERR_NOENT | nfsstat3::NFS3ERR_ACCES,
                            _,
                        )) => {
                            seen.vanished += 1;
                            continue;
                        }
                        Nfs3Result::Err((e, _)) => panic!("read: {e:?}"),
                    };
                    if i == 0 {
                        last.0 = b
                    } else {
                        last.1 = b
                    }
                    match b {
                        b'B' => saw_b = true,
                        b'A' if saw_b => seen.mixes += 1,
                        b'A' => {}
                        other => panic!("read {other:?}, neither generation"),
                    }
                }
            }
            seen.last = last;
            seen
        })
    };
    // Let the reader get going on generation 1.
    std::thread::sleep(Duration::from_millis(300));
    let (a, z) = (rig.replica.join("a/f"), rig.replica.join("z/f"));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let poller = std::thread::spawn(move || {
        // Watches the disk from the moment the commit is released.
        let t_end = Instant::now() + Duration::from_secs(60);
        let mut first_changed = None;
        while Instant::now() < t_end {
            let (fa, fz) = (first_byte(&a), first_byte(&z));
            if fa == b'B' && first_changed.is_none() {
                first_changed = Some(Instant::now());
                if fz == b'A' {
                    if let Some(d) = freeze {
                        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
                        std::thread::sleep(d);
                        rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
                    }
                }
            }
            if fz == b'B' {
                return first_changed.map_or(Duration::ZERO, |t| t.elapsed());
            }
        }
        panic!("the commit did not finish within a minute");
    });
    let stdin = child.stdin.as_mut().unwrap();
    let mut commit = || {
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
        wait_for(&mut out, "hanfs-child: committed")
    };
    let secs = if gated { server.switcher().switch(commit) } else { commit() };
    assert!(child.wait().unwrap().success());
    let disk_window = poller.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    let mut seen = rt.block_on(reader).unwrap();
    seen.disk_window = disk_window;
    seen.commit_secs = secs.parse().unwrap();
    eprintln!(
        "{} files, gated {gated}, freeze {freeze:?}: commit {:.3} s, disk showed a mix for {:.3} s; \
         NFS reads {} ({} JUKEBOX, {} found the file missing or unreadable), mixes seen {}",
        burst_files(),
        seen.commit_secs,
        seen.disk_window.as_secs_f64(),
        seen.reads,
        seen.jukebox,
        seen.vanished,
        seen.mixes
    );
    seen
}

#[test]
fn readers_never_see_a_mix_during_a_commit() {
    // A wait longer than any commit here: readers wait for it rather than being refused.
    let seen = run(true, None, Duration::from_secs(120));
    assert_eq!((seen.mixes, seen.vanished), (0, 0), "{seen:?}");
    assert_eq!(seen.last, (b'B', b'B'), "the reader ends on generation 2: {seen:?}");
    assert_eq!(seen.jukebox, 0, "a short commit is waited for, not refused: {seen:?}");
}

#[test]
fn a_frozen_commit_stalls_readers_with_jukebox_but_shows_no_mix() {
    let seen = run(true, Some(Duration::from_millis(1500)), Duration::from_millis(200));
    assert_eq!((seen.mixes, seen.vanished), (0, 0), "{seen:?}");
    assert!(seen.jukebox > 0, "readers during a frozen commit are told to retry: {seen:?}");
    assert_eq!(seen.last, (b'B', b'B'), "{seen:?}");
}

/// The control: the same frozen commit without the gate is seen half-applied (new content next
/// to old, or files missing or unreadable mid-replacement), so the two tests above can fail.
#[test]
fn without_the_gate_a_frozen_commit_is_seen_mixed() {
    let seen = run(false, Some(Duration::from_millis(1000)), nfs3::fs::SWITCH_WAIT);
    assert!(seen.mixes + seen.vanished > 0, "{seen:?}");
    assert!(seen.disk_window >= Duration::from_millis(1000), "{seen:?}");
}
