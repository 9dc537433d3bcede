//! Every limit: a cluster (or, where the model cannot express it, an entry) past it gets the named
//! error, and the error names the export.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use exports::limits::{check_entry, AIX_MAX_REPLICAS, FSLOC_MAX, LINUX_MAX_LOCATIONS, TOKEN_MAX};
use exports::{Entry, ExportError, FsLocation, LocKind, Locations};
use model::config::{
    sp, Clients, ClusterSection, ConfigFile, ExternalSection, ImageSection, NodeSection, SnSection, StateliteSection,
};
use model::{Cluster, Dialect};

/// A cluster of one SN `sn1` (dialect `dialect`) with `backups` external servers as backups, one
/// image at `image_path` for `clients`, a statelite area and one node.
fn cluster(dialect: &str, backups: usize, image_path: &str, clients: &[&str]) -> Cluster {
    let mut section = ClusterSection::new("/install");
    section.domain = Some(sp("cluster.example".into()));
    section.plaintext_loopback = true;
    let mut c = ConfigFile::new(section);
    let names: Vec<String> = (1..=backups).map(|i| format!("b{i}")).collect();
    c.sn.push(SnSection::new("sn1", "127.0.0.1").dialect(dialect.parse().unwrap()).backups(names));
    for i in 1..=backups {
        let mut e = ExternalSection::new(format!("b{i}"), format!("10.9.{}.{}", i / 250, i % 250));
        e.root = Some(sp("/x".into()));
        c.external.push(e);
    }
    let clients = match clients {
        [one] => Clients::One(one.to_string()),
        many => Clients::Many(many.iter().map(|s| s.to_string()).collect()),
    };
    c.image.push(ImageSection::new("img", image_path).clients(clients));
    c.statelite.push(StateliteSection::new("st", "/nodedata").clients(Clients::One("10.1.0.0/16".into())));
    c.node.push(NodeSection::new("cn001", ["sn1"]));
    Cluster::from_config("limits.toml", &c).unwrap_or_else(|e| panic!("{e}\n{c:?}"))
}

fn build_err(c: &Cluster) -> ExportError {
    exports::build(c, "sn1").expect_err("the cluster is past a limit")
}

#[test]
fn linux_at_most_40_locations() {
    assert!(
        exports::build(&cluster("linux", LINUX_MAX_LOCATIONS - 1, "i", &["*"]), "sn1")
            .is_err_and(|e| matches!(e, ExportError::FslocTooLong { .. })),
        "40 locations of even the shortest paths exceed 250 bytes: the value limit bites first"
    );
    let e = build_err(&cluster("linux", LINUX_MAX_LOCATIONS, "i", &["*"]));
    assert!(matches!(e, ExportError::TooManyLocations { count: 41, max: 40, .. }), "{e}");
    assert_eq!(e.export(), Some("/install/i *"));
    assert!(e.to_string().contains("export `/install/i *`"), "{e}");
}

#[test]
fn aix_at_most_8_replicas() {
    exports::build(&cluster("aix", AIX_MAX_REPLICAS - 1, "i", &["*"]), "sn1").unwrap();
    let e = build_err(&cluster("aix", AIX_MAX_REPLICAS, "i", &["*"]));
    assert!(matches!(e, ExportError::TooManyReplicas { count: 9, max: 8, .. }), "{e}");
    assert_eq!(e.export(), Some("/install/i"));
}

#[test]
fn fsloc_value_under_250_bytes() {
    // Two locations: `/install/P@127.0.0.1:/x/P@10.9.0.1` is 2*len(P) + 32 bytes.
    let fits = "p".repeat((FSLOC_MAX - 1 - 32) / 2);
    let ex = exports::build(&cluster("linux", 1, &fits, &["*"]), "sn1").unwrap();
    assert_eq!(ex.entries[0].fsloc_value(true).unwrap().len(), FSLOC_MAX - 2);
    let long = format!("{fits}p");
    let e = build_err(&cluster("linux", 1, &long, &["*"]));
    assert!(matches!(e, ExportError::FslocTooLong { len: 250, max: 250, kind: "replicas", .. }), "{e}");
    assert_eq!(e.export(), Some(format!("/install/{long} *").as_str()));
    let e = build_err(&cluster("aix", 1, &long, &["*"]));
    assert!(matches!(e, ExportError::FslocTooLong { .. }), "{e}");
}

#[test]
fn client_options_token_under_512_after_etab_growth() {
    let client = format!("@{}", "n".repeat(150));
    let e = build_err(&cluster("linux", 1, &"p".repeat(100), &[client.as_str()]));
    match &e {
        ExportError::TokenTooLong { len, max, export } => {
            assert!(*len >= TOKEN_MAX && *max == TOKEN_MAX);
            assert!(export.ends_with(&client), "{export}");
        }
        other => panic!("{other}"),
    }
    exports::build(&cluster("linux", 1, &"p".repeat(10), &[client.as_str()]), "sn1").unwrap();
}

#[test]
fn no_commas_in_paths() {
    let e = build_err(&cluster("linux", 1, "netboot/a,b", &["*"]));
    assert!(matches!(&e, ExportError::Comma { value, .. } if value == "/install/netboot/a,b"), "{e}");
    assert_eq!(e.export(), Some("/install/netboot/a,b *"));
    let e = build_err(&cluster("aix", 0, "nim/a,b", &["*"]));
    assert!(matches!(e, ExportError::Comma { .. }), "{e}");
}

#[test]
fn location_separators_in_paths() {
    for (p, ch) in [("a:b", ':'), ("a@b", '@'), ("a(b)", '(')] {
        let e = build_err(&cluster("linux", 1, p, &["*"]));
        assert!(matches!(e, ExportError::FslocSyntax { ch: c, .. } if c == ch), "{p}: {e}");
    }
    // Without backups there is no replicas= value, and an export path may hold them (escaped).
    let ex = exports::build(&cluster("linux", 0, "a(b) c", &["*"]), "sn1").unwrap();
    assert!(exports::render(&ex).contains("\n/install/a\\050b\\051\\040c *(ro,"));
}

#[test]
fn spaces_are_written_as_040_and_read_back() {
    let c = cluster("linux", 1, "netboot/my image/rootimg", &["*"]);
    let ex = exports::build(&c, "sn1").unwrap();
    let text = exports::render(&ex);
    assert!(
        text.contains("/install/netboot/my\\040image/rootimg *(ro,no_root_squash,no_subtree_check,fsid="),
        "{text}"
    );
    assert!(text
        .contains("replicas=/install/netboot/my\\040image/rootimg@127.0.0.1:/x/netboot/my\\040image/rootimg@10.9.0.1"));
    let back = exports::parse(Dialect::Linux, &text).unwrap();
    assert_eq!(back.entries[0].path, "/install/netboot/my image/rootimg");
    assert_eq!(back, ex);
    // AIX has no escape: refuse rather than write a line AIX would split.
    let e = build_err(&cluster("aix", 1, "nim/my spot", &["*"]));
    assert!(matches!(e, ExportError::Unrepresentable { .. }), "{e}");
}

fn entry(dialect: Dialect, locs: Vec<(&str, &str)>) -> Entry {
    Entry {
        path: "/install/x".into(),
        client: (dialect == Dialect::Linux).then(|| "*".to_string()),
        options: vec!["ro".into()],
        locations: Some(Locations {
            kind: LocKind::Replicas,
            list: locs.into_iter().map(|(p, h)| FsLocation { path: p.into(), host: h.into() }).collect(),
        }),
    }
}

#[test]
fn ipv6_in_brackets() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../exports/mixed/cluster.toml")).unwrap();
    let c = Cluster::from_toml("mixed", &text).unwrap();
    let ex = exports::build(&c, "sn1").unwrap();
    let v = ex.entries[0].fsloc_value(true).unwrap();
    assert!(v.contains("@[fd00:10::1]:") && v.ends_with("@[fd00:10::101]"), "{v}");
    let e = check_entry(Dialect::Linux, &entry(Dialect::Linux, vec![("/install/x", "fd00::1")])).unwrap_err();
    assert!(matches!(&e, ExportError::UnbracketedIpv6 { host, .. } if host == "fd00::1"), "{e}");
    assert_eq!(e.export(), Some("/install/x *"));
    check_entry(Dialect::Linux, &entry(Dialect::Linux, vec![("/install/x", "[fd00::1]")])).unwrap();
    assert!(check_entry(Dialect::Linux, &entry(Dialect::Linux, vec![("/install/x", "[sn1]")])).is_err());
}

#[test]
fn rootpath_never_slash() {
    // The model cannot produce it (image paths are never empty): checked on the entry.
    let e = check_entry(Dialect::Linux, &entry(Dialect::Linux, vec![("/install/x", "10.0.0.1"), ("/", "10.0.0.2")]))
        .unwrap_err();
    assert!(matches!(e, ExportError::RootPath { .. }), "{e}");
    assert_eq!(e.export(), Some("/install/x *"));
    let e = check_entry(Dialect::Aix, &entry(Dialect::Aix, vec![("/", "10.0.0.2")])).unwrap_err();
    assert!(matches!(e, ExportError::RootPath { .. }), "{e}");
}

#[test]
fn never_refer_and_replicas_together() {
    let mut e = entry(Dialect::Linux, vec![("/install/x", "10.0.0.1")]);
    e.options.push("refer=/install/x@10.0.0.2".into());
    let err = check_entry(Dialect::Linux, &e).unwrap_err();
    assert!(matches!(err, ExportError::ReferAndReplicas { .. }), "{err}");
    assert_eq!(err.export(), Some("/install/x *"));
    // And a deployed file with both is refused by the reader rather than guessed at.
    let p = exports::parse(Dialect::Linux, "/x *(ro,replicas=/x@a,refer=/x@b)\n").unwrap_err();
    assert!(p.to_string().contains("more than one refer=/replicas="), "{p}");
    let p = exports::parse(Dialect::Aix, "/x -vers=4,refer=/x@10.0.0.1,replicas=/x@10.0.0.2\n").unwrap_err();
    assert!(p.to_string().contains("more than one"), "{p}");
}

#[test]
fn aix_takes_ips_only() {
    let e = check_entry(Dialect::Aix, &entry(Dialect::Aix, vec![("/install/x", "10.0.0.1"), ("/install/x", "sn2")]))
        .unwrap_err();
    assert!(matches!(&e, ExportError::AixNeedsIp { host, .. } if host == "sn2"), "{e}");
    check_entry(Dialect::Linux, &entry(Dialect::Linux, vec![("/install/x", "sn2.cluster")])).unwrap();
}

#[test]
fn aix_clients_it_cannot_write() {
    for (clients, why) in [(["fd00::/64"], "`:`"), (["*.cluster"], "wildcard")] {
        let e = build_err(&cluster("aix", 1, "nim/spot/s", &clients));
        assert!(matches!(&e, ExportError::Unrepresentable { why: w, .. } if w.contains(why)), "{clients:?}: {e}");
    }
    let ex = exports::build(&cluster("aix", 1, "nim/spot/s", &["10.1.0.0/16", "@compute", "cn1"]), "sn1").unwrap();
    assert_eq!(
        ex.entries[0].options,
        vec!["vers=4", "ro", "access=@10.1.0.0/16:compute:cn1", "root=@10.1.0.0/16:compute:cn1"]
    );
}

#[test]
fn duplicates_are_refused() {
    let e = entry(Dialect::Linux, vec![("/install/x", "10.0.0.1")]);
    let ex = exports::Exports { dialect: Dialect::Linux, entries: vec![e.clone(), e] };
    let err = exports::limits::check(&ex).unwrap_err();
    assert!(matches!(err, ExportError::Duplicate { .. }), "{err}");
}

#[test]
fn unknown_sn() {
    let c = cluster("linux", 0, "i", &["*"]);
    assert_eq!(exports::build(&c, "nope").unwrap_err(), ExportError::UnknownSn("nope".into()));
}
