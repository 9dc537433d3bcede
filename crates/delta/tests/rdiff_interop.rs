#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Interop with the real `rdiff` (Debian package `rdiff`), both ways.

use std::path::Path;
use std::process::Command;

use proptest::prelude::*;

/// `rdiff` must be there (Debian package rdiff, `make deps`): a missing one fails the test.
fn ensure_rdiff() {
    testkit::program("rdiff", "rdiff");
}

fn rdiff(args: &[&str], files: &[&Path]) {
    let st = Command::new("rdiff").args(args).args(files).status().unwrap();
    assert!(st.success(), "rdiff {args:?} failed");
}

fn check(old: &[u8], new: &[u8], bl: Option<u32>) {
    ensure_rdiff();
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    std::fs::write(p("old"), old).unwrap();
    std::fs::write(p("new"), new).unwrap();
    let mut args = vec!["-H", "md4", "-R", "rollsum", "-S", "8"];
    let b;
    if let Some(x) = bl {
        b = x.to_string();
        args.extend(["-b", &b]);
    }
    args.push("signature");
    rdiff(&args, &[&p("old"), &p("rsig")]);
    let ours = delta::signature(old, bl).unwrap();
    assert_eq!(ours, std::fs::read(p("rsig")).unwrap(), "signature differs from rdiff's (bl {bl:?})");

    // hanfs delta, rdiff patch
    let sig = delta::Signature::parse(&ours).unwrap();
    let mut dl = Vec::new();
    delta::diff(&sig, new, &mut dl).unwrap();
    std::fs::write(p("hdelta"), &dl).unwrap();
    rdiff(&["patch"], &[&p("old"), &p("hdelta"), &p("out1")]);
    assert!(std::fs::read(p("out1")).unwrap() == new, "rdiff patch of hanfs delta is wrong");

    // rdiff delta, hanfs patch
    rdiff(&["delta"], &[&p("rsig"), &p("new"), &p("rdelta")]);
    let rd = std::fs::read(p("rdelta")).unwrap();
    let mut out = Vec::new();
    delta::patch(old, &rd[..], &mut out, u64::MAX).unwrap();
    assert!(out == new, "hanfs patch of rdiff delta is wrong");
    // Size: ours should be no bigger than rdiff's beyond a small slack.
    assert!(dl.len() as f64 <= rd.len() as f64 * 1.05 + 64.0, "delta {} vs rdiff {}", dl.len(), rd.len());
}

#[test]
fn default_block_len_matches_rdiff() {
    for n in [0usize, 1, 255, 65_536, 65_537, 1_000_000, 3_000_001] {
        let old: Vec<u8> = (0..n).map(|i| (i * 31 % 253) as u8).collect();
        check(&old, &old[..n / 2], None);
    }
}

#[test]
fn refuses_stock_rdiff_signature_with_advice() {
    ensure_rdiff();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("old"), b"hello world").unwrap();
    rdiff(&["signature"], &[&d.path().join("old"), &d.path().join("sig")]);
    let e = delta::Signature::parse(&std::fs::read(d.path().join("sig")).unwrap()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("rdiff -H md4 -R rollsum -S 8 signature"), "{msg}");
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn apply_edits(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = v.len().max(1);
        match e {
            Edit::Flip(i) if !v.is_empty() => {
                let i = i % n;
                v[i] ^= 0xa5;
            }
            Edit::Insert(i, b) => {
                let i = i % (v.len() + 1);
                v.splice(i..i, b.iter().copied());
            }
            Edit::Delete(i, l) if !v.is_empty() => {
                let i = i % n;
                let e = (i + l).min(v.len());
                v.drain(i..e);
            }
            _ => {}
        }
    }
    v
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Flip),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..300)).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..2000).prop_map(|(i, l)| Edit::Delete(i, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn edited_files_roundtrip_with_rdiff(
        old in prop::collection::vec(any::<u8>(), 0..200_000),
        edits in prop::collection::vec(edit(), 0..12),
        bl in prop_oneof![Just(None), (16u32..3000).prop_map(Some)],
        repeat in any::<bool>(),
    ) {
        // Repetitive data exercises runs of identical blocks.
        let old = if repeat { old.iter().map(|b| b % 3).collect() } else { old };
        let new = apply_edits(old.clone(), &edits);
        check(&old, &new, bl);
    }

    #[test]
    fn random_files_roundtrip_with_rdiff(
        old in prop::collection::vec(any::<u8>(), 0..50_000),
        new in prop::collection::vec(any::<u8>(), 0..50_000),
        bl in prop_oneof![Just(None), (1u32..600).prop_map(Some)],
    ) {
        check(&old, &new, bl);
    }
}
