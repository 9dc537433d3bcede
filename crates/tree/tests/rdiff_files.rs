#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The file-to-file helpers behind `hanfs delta signature|diff|patch`, against the real rdiff.

mod common;

use common::*;

#[test]
fn file_helpers_interchange_with_rdiff() {
    ensure_rdiff();
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n);
    let mut r = TRng::new(5);
    // 20 MB: several parallel slices and 8 MiB patch pieces.
    let old = r.bytes(20 << 20);
    let mut new = old.clone();
    for k in 0..40 {
        let at = (r.below(old.len() as u64 - 100)) as usize;
        new[at..at + 50].copy_from_slice(&r.bytes(50));
        if k % 5 == 0 {
            new.splice(at..at, r.bytes(333));
        }
    }
    std::fs::write(p("old"), &old).unwrap();
    std::fs::write(p("new"), &new).unwrap();
    for bl in [None, Some(1024u32)] {
        tree::rdiff::signature_file(&p("old"), &p("h.sig"), bl).unwrap();
        let b = bl.map(|b| b.to_string());
        let mut args = vec!["-H", "md4", "-R", "rollsum", "-S", "8"];
        if let Some(b) = &b {
            args.extend(["-b", b]);
        }
        args.push("signature");
        rdiff(&args, &[&p("old"), &p("r.sig")]);
        assert_eq!(std::fs::read(p("h.sig")).unwrap(), std::fs::read(p("r.sig")).unwrap(), "block {bl:?}");
        tree::rdiff::delta_file(&p("h.sig"), &p("new"), &p("h.delta")).unwrap();
        rdiff(&["patch"], &[&p("old"), &p("h.delta"), &p("r.out")]);
        assert!(std::fs::read(p("r.out")).unwrap() == new);
        rdiff(&["delta"], &[&p("r.sig"), &p("new"), &p("r.delta")]);
        tree::rdiff::patch_file(&p("old"), &p("r.delta"), &p("h.out")).unwrap();
        assert!(std::fs::read(p("h.out")).unwrap() == new);
        let (h, rd) = (std::fs::metadata(p("h.delta")).unwrap().len(), std::fs::metadata(p("r.delta")).unwrap().len());
        assert!(h as f64 <= rd as f64 * 1.05, "delta {h} vs rdiff {rd}");
    }
}

#[test]
fn stock_rdiff_signature_is_refused_with_advice() {
    ensure_rdiff();
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n);
    std::fs::write(p("old"), b"some old content").unwrap();
    std::fs::write(p("new"), b"some new content").unwrap();
    rdiff(&["signature"], &[&p("old"), &p("sig")]);
    let e = tree::rdiff::delta_file(&p("sig"), &p("new"), &p("delta")).unwrap_err().to_string();
    assert!(e.contains("rdiff -H md4 -R rollsum -S 8 signature"), "{e}");
}

#[test]
fn hostile_delta_file_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n);
    std::fs::write(p("old"), b"tiny").unwrap();
    let mut d = delta::DELTA_MAGIC.to_be_bytes().to_vec();
    d.extend_from_slice(&[0x45, 2, 200, 0]); // COPY 2..202 of a 4-byte base
    std::fs::write(p("delta"), &d).unwrap();
    let e = tree::rdiff::patch_file(&p("old"), &p("delta"), &p("out")).unwrap_err().to_string();
    assert!(e.contains("base file has only 4 bytes"), "{e}");
    let mut d = delta::DELTA_MAGIC.to_be_bytes().to_vec();
    d.extend_from_slice(&[0x44, 0, 0, 0, 0x10, 0, 0, 0, 0]); // a 64 GiB literal
    std::fs::write(p("delta"), &d).unwrap();
    let e = tree::rdiff::patch_file_limited(&p("old"), &p("delta"), &p("out"), 1 << 30).unwrap_err().to_string();
    assert!(e.contains("exceed the limit"), "{e}");
}
