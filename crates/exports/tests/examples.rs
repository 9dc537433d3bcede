//! Every example cluster under `exports/` re-renders byte for byte to its committed files, parses
//! back to what was rendered, and has no stale files. `HANFS_BLESS=1` rewrites the files instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use model::{Cluster, Dialect};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../exports")
}

pub fn file_name(sn: &str, d: Dialect) -> String {
    match d {
        Dialect::Linux => format!("{sn}.exports"),
        Dialect::Aix => format!("{sn}.aix-exports"),
    }
}

fn example_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("cluster.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn examples_render_byte_for_byte() {
    let bless = std::env::var_os("HANFS_BLESS").is_some_and(|v| v == "1");
    let dirs = example_dirs();
    let names: Vec<String> = dirs.iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in ["linux-ring", "aix-pair", "mixed"] {
        assert!(names.iter().any(|n| n == want), "example {want} missing from {names:?}");
    }
    let mut failures = Vec::new();
    for dir in dirs {
        let cfg = dir.join("cluster.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let cluster = Cluster::from_toml(&cfg.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        let mut expected_files = BTreeSet::from(["cluster.toml".to_string()]);
        for sn in cluster.sns() {
            let ex =
                exports::build(&cluster, &sn.name).unwrap_or_else(|e| panic!("{}: {}: {e}", dir.display(), sn.name));
            let rendered = exports::render(&ex);
            assert_eq!(
                exports::parse(sn.dialect, &rendered).unwrap(),
                ex,
                "{}: {} does not read back",
                dir.display(),
                sn.name
            );
            let name = file_name(&sn.name, sn.dialect);
            let path = dir.join(&name);
            expected_files.insert(name);
            if bless {
                std::fs::write(&path, &rendered).unwrap();
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(committed) if committed == rendered => {}
                Ok(_) => {
                    failures.push(format!("{} differs from the rendering (HANFS_BLESS=1 to update)", path.display()))
                }
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let n = entry.unwrap().file_name().to_string_lossy().into_owned();
            if !expected_files.contains(&n) && !n.ends_with(".md") {
                if bless {
                    std::fs::remove_file(dir.join(&n)).unwrap();
                } else {
                    failures.push(format!("{}: stale file {n}", dir.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn aix_example_splices_into_an_existing_file() {
    let dir = examples_dir().join("aix-pair");
    let block = std::fs::read_to_string(dir.join("aixsn1.aix-exports")).unwrap();
    let existing = "/home -vers=3,rw\n/usr/share/man -ro\n";
    let spliced = exports::splice_aix(existing, &block).unwrap();
    assert!(spliced.starts_with(existing));
    assert_eq!(exports::splice_aix(&spliced, &block).unwrap(), spliced);
    let parsed = exports::parse(Dialect::Aix, &spliced).unwrap();
    assert_eq!(parsed, exports::parse(Dialect::Aix, &block).unwrap());
}

#[test]
fn rendering_is_deterministic_and_independent_of_config_order() {
    for dir in example_dirs() {
        let cfg = dir.join("cluster.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let cluster = Cluster::from_toml("c", &text).unwrap();
        // The same config with its nodes and images written in the reverse order.
        let mut table: toml::Table = text.parse().unwrap();
        for key in ["node", "image"] {
            if let Some(toml::Value::Array(a)) = table.get_mut(key) {
                a.reverse();
            }
        }
        let shuffled = Cluster::from_toml("c", &toml::to_string(&table).unwrap()).unwrap();
        for sn in cluster.sns() {
            let a = exports::render_sn(&cluster, &sn.name).unwrap();
            assert_eq!(a, exports::render_sn(&cluster, &sn.name).unwrap());
            assert_eq!(a, exports::render_sn(&shuffled, &sn.name).unwrap(), "{}: {}", dir.display(), sn.name);
        }
    }
}

#[test]
fn paths_and_referrals_for_the_agent() {
    let cfg = examples_dir().join("mixed/cluster.toml");
    let cluster = Cluster::from_toml("c", &std::fs::read_to_string(cfg).unwrap()).unwrap();
    let ex = exports::build(&cluster, "sn1").unwrap();
    // The area itself too: xCAT's clients mount it, make <node>, then remount (SvrUtils setupStatemnt).
    assert_eq!(
        ex.paths(),
        vec!["/install/netboot/rh9/x86_64/compute/rootimg", "/nodedata", "/nodedata/cn001", "/nodedata/cn002"]
    );
    assert_eq!(ex.referrals(), vec!["/nodedata/cn001"]);
    assert!(exports::build(&cluster, "sn2").unwrap().referrals().is_empty());
}
