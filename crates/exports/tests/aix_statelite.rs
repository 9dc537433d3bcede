//! AIX statelite exports as xCAT's AIX nodes mount them: the area directory itself, never
//! `<area>/<node>` (xcat-core 7733d16f, xCAT/postscripts/aixlitesetup:53-80 mounts `SERVER:<area>`
//! and makes `<node>` in it; the SPOT's rc.dd_boot, patched by aixinstall.pm:7603 and :7625, mounts
//! the same area, with `-o vers=4` under site.useNFSv4onAIX, :170-177). A moved AIX node gets no
//! `refer=`, and whatever shows the move says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use model::{Cluster, Dialect};
use std::collections::BTreeMap;
use std::path::Path;

fn example(name: &str) -> Cluster {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../exports").join(name).join("cluster.toml");
    Cluster::from_toml(&p.display().to_string(), &std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn lines(c: &Cluster, sn: &str) -> Vec<String> {
    let text = exports::render_sn(c, sn).unwrap();
    text.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect()
}

const AREA: &str = "/nodedata -vers=3:4,rw,access=@10.2.0.0/16,root=@10.2.0.0/16";

#[test]
fn the_area_itself_once_per_sn_with_nodes_of_it() {
    let c = example("aix-pair");
    for sn in ["aixsn1", "aixsn2"] {
        let l = lines(&c, sn);
        // NFS 3 for aixlitesetup's plain mount, 4 for rc.dd_boot's `mount -o vers=4`; root for the
        // clients, whose root makes `<node>`; nothing per node (exports(4): no export inside another).
        assert_eq!(l.iter().filter(|l| l.starts_with("/nodedata")).collect::<Vec<_>>(), [AREA], "{sn}");
        let ex = exports::build(&c, sn).unwrap();
        assert!(ex.referrals().is_empty(), "{sn}");
        assert_eq!(exports::parse(Dialect::Aix, &exports::render(&ex)).unwrap(), ex, "{sn}");
    }
    // An SN with no node of the area exports none of it; a node moved away keeps it on its home.
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../exports/aix-setuphanfs/cluster.toml");
    let text = std::fs::read_to_string(p).unwrap().replace("[\"aixsn2\", \"aixsn1\"]", "[\"aixsn1\", \"aixsn2\"]");
    let all_on_1 = Cluster::from_toml("one.toml", &text).unwrap();
    assert!(lines(&all_on_1, "aixsn2").iter().all(|l| !l.starts_with("/nodedata")));
    let moved = all_on_1.with_moves(&BTreeMap::from([("aixcn05".to_string(), "aixsn2".to_string())])).unwrap();
    for sn in ["aixsn1", "aixsn2"] {
        assert!(lines(&moved, sn).iter().any(|l| l.starts_with("/nodedata -")), "{sn}");
    }
}

#[test]
fn mknfsexp_for_the_area() {
    let c = example("aix-pair");
    let ex = exports::build(&c, "aixsn1").unwrap();
    let cmds = exports::commands(&ex, c.sn("aixsn1").unwrap(), c.domain());
    assert!(cmds.contains("rmnfsexp -d /nodedata -I 2>/dev/null\n"), "{cmds}");
    assert!(cmds.contains("mknfsexp -d /nodedata -v 3,4 -t rw -c @10.2.0.0/16 -r @10.2.0.0/16 -I\n"), "{cmds}");
    assert!(!cmds.contains("/nodedata/"), "{cmds}");
}

#[test]
fn a_moved_aix_node_gets_no_referral_and_the_move_is_named() {
    let c = example("aix-pair").with_moves(&BTreeMap::from([("aixcn01".to_string(), "aixsn2".to_string())])).unwrap();
    // Its home still exports the area (the running node has it mounted), the new SN too; no refer=
    // anywhere, since the node never mounts `<area>/<node>`.
    for sn in ["aixsn1", "aixsn2"] {
        let l = lines(&c, sn);
        assert!(l.contains(&AREA.to_string()), "{sn}: {l:?}");
        assert!(l.iter().all(|l| !l.contains("refer=")), "{sn}: {l:?}");
    }
    let notes = exports::aix_moves(&c, "aixsn1");
    assert_eq!(notes.len(), 1, "{notes:?}");
    let n = &notes[0];
    for part in ["aixcn01: no refer= from AIX SN aixsn1", "mount /nodedata itself", "boots from it", "service address"]
    {
        assert!(n.contains(part), "{part}: {n}");
    }
    assert!(exports::aix_moves(&c, "aixsn2").is_empty());
    assert_eq!(exports::aix_unreferred(&c, "aixcn01", "aixsn1", "aixsn2").as_ref(), Some(n));
    // A Linux SN sends the node on with refer=: nothing to say.
    let linux = example("mixed");
    let moved = linux.nodes().iter().find(|n| linux.placement().is_moved(&n.name)).unwrap();
    let (home, to) = (linux.placement().home(&moved.name).unwrap(), linux.serving(&moved.name).unwrap());
    assert_eq!(exports::aix_unreferred(&linux, &moved.name, home, to), None);
}

#[test]
fn the_splice_keeps_foreign_lines_around_the_area() {
    let c = example("aix-pair");
    let block = exports::render_sn(&c, "aixsn1").unwrap();
    let admin = "# site\n/export/home -vers=3,rw\n\n/usr/share/man\t-ro  \n";
    let spliced = exports::splice_aix(admin, &block).unwrap();
    assert_eq!(spliced, format!("{admin}{block}"));
    // Re-splicing a changed block (a node moved) keeps them byte for byte, in place.
    let moved = c.with_moves(&BTreeMap::from([("aixcn03".to_string(), "aixsn1".to_string())])).unwrap();
    let tail = "/tail -ro\n";
    let again =
        exports::splice_aix(&format!("{spliced}{tail}"), &exports::render_sn(&moved, "aixsn1").unwrap()).unwrap();
    assert!(again.starts_with(admin) && again.ends_with(tail), "{again}");
    assert_eq!(exports::parse(Dialect::Aix, &again).unwrap(), exports::build(&moved, "aixsn1").unwrap());
    // The admin's own export of the area is a conflict, named by line.
    let e = exports::splice_aix("/export/home -rw\n/nodedata -rw\n", &block).unwrap_err();
    assert_eq!(e, exports::SpliceError::Conflict { line: 2, path: "/nodedata".into() });
}

#[test]
fn an_area_nesting_with_an_image_is_refused_on_aix() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../exports/aix-pair/cluster.toml");
    let text = std::fs::read_to_string(p).unwrap().replace("path    = \"/nodedata\"", "path    = \"/install/nim\"");
    let c = Cluster::from_toml("nested.toml", &text).unwrap();
    let e = exports::build(&c, "aixsn1").unwrap_err().to_string();
    assert!(e.contains("/install/nim") && e.contains("nest") && e.contains("exports(4)"), "{e}");
}
