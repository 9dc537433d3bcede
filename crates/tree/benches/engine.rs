#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Tree-engine benchmark against the real `rdiff`, in the same run:
//! - a large file (300 MB by default, `HANFS_BENCH_MB`) with scattered edits: signature, delta
//!   and patch time and delta size, hanfs vs `rdiff -H md4 -R rollsum -S 8`;
//! - rescan of a tree of 100,000 files (`HANFS_BENCH_FILES`) with nothing changed, warm.
//!
//! Run: `cargo bench -p tree --bench engine` (prints a Markdown table).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn ensure_rdiff() {
    // Never installs anything: `make deps` does.
    assert!(
        Command::new("rdiff").arg("--version").output().is_ok(),
        "rdiff is not installed (Debian package rdiff; `make deps` installs it)"
    );
}

fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn rdiff(args: &[&str], files: &[&Path]) -> Duration {
    best(|| {
        let st = Command::new("rdiff").arg("--force").args(args).args(files).status().unwrap();
        assert!(st.success());
    })
}

/// Best of three runs: the machine is shared, so the minimum is the least noisy figure.
fn best(mut f: impl FnMut()) -> Duration {
    (0..3).map(|_| time(&mut f).1).min().unwrap_or_default()
}

fn warm(p: &Path) {
    let _ = std::fs::read(p).map(|v| v.len());
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn big_file(dir: &Path) {
    let mb = env_num("HANFS_BENCH_MB", 300);
    let n = (mb << 20) as usize;
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut old = vec![0u8; n];
    for c in old.chunks_mut(8) {
        let v = r.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
    // Scattered edits: 300 spots, each an overwrite, an insertion or a deletion.
    let mut new = Vec::with_capacity(n + (1 << 20));
    let mut spots: Vec<usize> = (0..300).map(|_| (r.next() as usize) % n).collect();
    spots.sort_unstable();
    let mut at = 0;
    for (i, s) in spots.into_iter().enumerate() {
        if s < at {
            continue;
        }
        new.extend_from_slice(&old[at..s]);
        at = s;
        match i % 3 {
            0 => {
                new.extend((0..100).map(|_| r.next() as u8));
                at = (s + 100).min(n);
            }
            1 => new.extend((0..50).map(|_| r.next() as u8)),
            _ => at = (s + 50).min(n),
        }
    }
    new.extend_from_slice(&old[at..]);
    let (o, nw) = (dir.join("old"), dir.join("new"));
    std::fs::write(&o, &old).unwrap();
    std::fs::write(&nw, &new).unwrap();
    drop(old);
    drop(new);
    let p = |s: &str| dir.join(s);
    warm(&o);
    warm(&nw);

    let h_sig = best(|| tree::rdiff::signature_file(&o, &p("h.sig"), None).unwrap());
    let r_sig = rdiff(&["-H", "md4", "-R", "rollsum", "-S", "8", "signature"], &[&o, &p("r.sig")]);
    let same_sig = std::fs::read(p("h.sig")).unwrap() == std::fs::read(p("r.sig")).unwrap();
    let h_delta = best(|| tree::rdiff::delta_file(&p("h.sig"), &nw, &p("h.delta")).unwrap());
    let r_delta = rdiff(&["delta"], &[&p("r.sig"), &nw, &p("r.delta")]);
    let h_patch = best(|| tree::rdiff::patch_file(&o, &p("r.delta"), &p("h.out")).unwrap());
    let r_patch = rdiff(&["patch"], &[&o, &p("h.delta"), &p("r.out")]);
    let want = std::fs::read(&nw).unwrap();
    assert!(std::fs::read(p("h.out")).unwrap() == want, "hanfs patch of rdiff delta is wrong");
    assert!(std::fs::read(p("r.out")).unwrap() == want, "rdiff patch of hanfs delta is wrong");
    // fast_rsync 0.2's own diff on the same input, for the record of why delta has its own encoder.
    let (fr_len, fr_time) = {
        let sig = fast_rsync::Signature::deserialize(std::fs::read(p("h.sig")).unwrap()).unwrap();
        let idx = sig.index();
        let data = std::fs::read(&nw).unwrap();
        let mut out = Vec::new();
        let (_, t) = time(|| fast_rsync::diff(&idx, &data, &mut out).unwrap());
        let mut chk = Vec::new();
        fast_rsync::apply(&std::fs::read(&o).unwrap(), &out, &mut chk).unwrap();
        assert!(chk == data);
        (out.len() as u64, t)
    };
    let hs = std::fs::metadata(p("h.delta")).unwrap().len();
    let rs = std::fs::metadata(p("r.delta")).unwrap().len();
    let (ol, nl) = ((mb << 20), want.len() as u64);
    println!("## Tree engine: {mb} MiB file, 300 scattered edits (block {} B)\n", delta::default_block_len(ol));
    println!("| step | hanfs | rdiff | hanfs/rdiff |");
    println!("|---|---|---|---|");
    for (name, h, r, bytes) in
        [("signature", h_sig, r_sig, ol), ("delta", h_delta, r_delta, nl), ("patch", h_patch, r_patch, nl)]
    {
        println!(
            "| {name} | {:.3} s ({:.0} MB/s) | {:.3} s ({:.0} MB/s) | {:.2}x time |",
            h.as_secs_f64(),
            mbps(bytes, h),
            r.as_secs_f64(),
            mbps(bytes, r),
            h.as_secs_f64() / r.as_secs_f64()
        );
    }
    println!("| delta size | {hs} B | {rs} B | {:.3}x bytes |", hs as f64 / rs as f64);
    println!("| signature identical to rdiff's | {same_sig} | | |");
    println!(
        "| fast_rsync 0.2 diff (not used) | {:.3} s, {fr_len} B | | {:.3}x bytes |\n",
        fr_time.as_secs_f64(),
        fr_len as f64 / rs as f64
    );
}

fn many_files(dir: &Path) {
    let n = env_num("HANFS_BENCH_FILES", 100_000);
    let root = dir.join("tree");
    let per = 100;
    let (_, make) = time(|| {
        for i in 0..n {
            let d = root.join(format!("d{:04}", i / per));
            if i % per == 0 {
                std::fs::create_dir_all(&d).unwrap();
            }
            std::fs::write(d.join(format!("f{i}")), format!("file {i}\n").repeat(1 + (i % 7) as usize)).unwrap();
        }
    });
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let opts = tree::ScanOptions { excludes: vec!["d0000/f1*".into()], state_dir: Some(state.clone()) };
    let mut s = tree::Scanner::new(&root, &opts).unwrap();
    let (m, first) = time(|| s.scan().unwrap());
    let (m2, warm_same) = time(|| s.scan().unwrap());
    let mut best_fresh = Duration::MAX;
    let mut best_same = warm_same;
    for _ in 0..3 {
        let (_, d) = time(|| tree::Scanner::new(&root, &opts).unwrap().scan().unwrap());
        best_fresh = best_fresh.min(d);
        let (_, d2) = time(|| s.scan().unwrap());
        best_same = best_same.min(d2);
    }
    let (_, dg) = time(|| m2.digest());
    assert_eq!(m.digest(), m2.digest());
    println!("## Tree engine: rescan of {} entries ({n} files made in {:.1} s)\n", m.entries.len(), make.as_secs_f64());
    println!("| scan | time |");
    println!("|---|---|");
    println!("| first scan (hash everything, write cache) | {:.3} s |", first.as_secs_f64());
    println!("| rescan, nothing changed, same Scanner (warm) | {:.3} s |", best_same.as_secs_f64());
    println!(
        "| rescan, nothing changed, new Scanner loading the cache from state_dir | {:.3} s |",
        best_fresh.as_secs_f64()
    );
    println!("| digest of the manifest | {:.3} s |\n", dg.as_secs_f64());
    sync_round(dir, &root, &state, &opts, &m);
}

/// One generation on the big tree: 1,000 files changed, 100 added, 100 removed; scan, diff,
/// payloads, apply to a replica (a `cp -a` copy of the old tree), verify.
fn sync_round(dir: &Path, root: &Path, state: &Path, opts: &tree::ScanOptions, old: &tree::Manifest) {
    let rep = dir.join("replica");
    let st = Command::new("cp").arg("-a").arg(root).arg(&rep).status().unwrap();
    assert!(st.success());
    let sn = dir.join("sn");
    let mut replica = tree::Replica::open(&rep, &sn, tree::ReplicaOptions::default()).unwrap();
    replica.recover().unwrap();
    // The copy holds the excluded files too: drop them so the replica is exactly the old manifest.
    for e in std::fs::read_dir(rep.join("d0000")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("f1") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let md = std::fs::symlink_metadata(root.join("d0000")).unwrap();
    std::fs::File::open(rep.join("d0000")).unwrap().set_modified(md.modified().unwrap()).unwrap();
    replica.adopt(1).unwrap();
    assert_eq!(replica.current().unwrap().1, old.digest(), "replica copy differs from the source");
    let store = tree::SigStore::open(&state.join("sigs")).unwrap();
    store.update(root, old).unwrap();
    // Changes.
    let n = old.counts().files;
    let dirs = (n / 100).max(1);
    for i in (0..n).step_by((n as usize / 1000).max(1)).take(1000) {
        let p = root.join(format!("d{:04}/f{}", i / 100, i + 5));
        if p.exists() {
            let mut v = std::fs::read(&p).unwrap();
            v.extend_from_slice(b"changed\n");
            std::fs::write(&p, v).unwrap();
        }
    }
    let (add, del) = (dirs / 2, dirs * 3 / 5);
    for i in 0..100 {
        std::fs::write(root.join(format!("d{add:04}/new{i}")), b"added\n").unwrap();
        let _ = std::fs::remove_file(root.join(format!("d{del:04}/f{}", del * 100 + i)));
    }
    let mut s = tree::Scanner::new(root, opts).unwrap();
    let (new, t_scan) = time(|| s.scan().unwrap());
    let (mut plan, t_diff) = time(|| tree::diff(old, &new));
    // Flush the replica copy made above, so the commit's syncfs times only its own writes.
    let _ = Command::new("sync").status();
    plan.generation = 2;
    let sum = plan.summary;
    let sends: Vec<_> = plan.to_send().cloned().collect();
    let (payloads, t_pay) = time(|| sends.iter().map(|c| store.payload(root, c).unwrap().unwrap()).collect::<Vec<_>>());
    let (_, t_apply) = time(|| {
        let mut stg = replica.begin(plan).unwrap();
        for (c, p) in sends.iter().zip(&payloads) {
            if p.is_delta() {
                stg.add_delta(&c.path, p.reader().unwrap()).unwrap();
            } else {
                stg.write_file(&c.path, p.reader().unwrap()).unwrap();
            }
        }
        stg.commit().unwrap()
    });
    let (_, t_clean) = time(|| replica.cleanup().unwrap());
    let (vm, t_verify) = time(|| replica.scan().unwrap());
    assert_eq!(vm.digest(), new.digest(), "replica does not match after apply");
    println!(
        "## Tree engine: one generation on that tree ({} changed, {} added, {} removed)\n",
        sum.content_changed, sum.added, sum.removed
    );
    println!("| step | time |");
    println!("|---|---|");
    println!("| MN rescan with the changes | {:.3} s |", t_scan.as_secs_f64());
    println!("| diff (plan) | {:.3} s |", t_diff.as_secs_f64());
    println!("| payloads ({} files to send) | {:.3} s |", sends.len(), t_pay.as_secs_f64());
    println!(
        "| replica: stage + journal + commit (until the new generation is recorded) | {:.3} s |",
        t_apply.as_secs_f64()
    );
    println!("| replica: cleanup afterwards (delete replaced inodes) | {:.3} s |", t_clean.as_secs_f64());
    println!("| replica: verify scan (new inodes are rehashed) | {:.3} s |\n", t_verify.as_secs_f64());
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    ensure_rdiff();
    let base = std::env::var("HANFS_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or(std::env::temp_dir());
    let t = tempfile::tempdir_in(base).unwrap();
    println!("threads: {}\n", rayon::current_num_threads());
    if env_num("HANFS_BENCH_MB", 300) > 0 {
        big_file(t.path());
    }
    if env_num("HANFS_BENCH_FILES", 100_000) > 0 {
        many_files(t.path());
    }
}
