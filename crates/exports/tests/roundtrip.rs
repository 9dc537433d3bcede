//! `parse(render(m)) == m` for both dialects, over generated exports; and diff agrees with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use exports::{Entry, Exports, FsLocation, LocKind, Locations};
use model::Dialect;
use proptest::prelude::*;

/// A path component: Linux may hold anything exports(5) can escape; AIX nothing that splits a line.
fn component(dialect: Dialect) -> BoxedStrategy<String> {
    match dialect {
        Dialect::Linux => "[a-zA-Z0-9_.é -]{1,8}|[a-z]{1,3}[ \t#\\\\\"()][a-z]{0,3}".boxed(),
        Dialect::Aix => "[a-zA-Z0-9_.-]{1,10}".boxed(),
    }
}

fn path(dialect: Dialect) -> impl Strategy<Value = String> {
    prop::collection::vec(component(dialect), 1..5).prop_map(|c| format!("/{}", c.join("/")))
}

/// Location paths cannot hold `:`, `@`, `,`, parentheses (nor white space on AIX).
fn loc_path(dialect: Dialect) -> impl Strategy<Value = String> {
    let comp = match dialect {
        Dialect::Linux => "[a-zA-Z0-9_. -]{1,8}",
        Dialect::Aix => "[a-zA-Z0-9_.-]{1,8}",
    };
    prop::collection::vec(comp, 1..4).prop_map(|c| format!("/{}", c.join("/")))
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u8..255, 0u8..255).prop_map(|(a, b)| format!("10.0.{a}.{b}")),
        (1u16..0xffff).prop_map(|a| format!("[fd00::{a:x}]")),
        "[a-z]{1,6}(\\.[a-z]{1,4})?",
    ]
}

fn locations(dialect: Dialect) -> impl Strategy<Value = Option<Locations>> {
    let kind = prop_oneof![Just(LocKind::Replicas), Just(LocKind::Refer)];
    let list = prop::collection::vec((loc_path(dialect), host()), 1..5)
        .prop_map(|v| v.into_iter().map(|(path, host)| FsLocation { path, host }).collect());
    prop::option::of((kind, list).prop_map(|(kind, list)| Locations { kind, list }))
}

fn options(dialect: Dialect) -> impl Strategy<Value = Vec<String>> {
    let opt = match dialect {
        Dialect::Linux => prop_oneof![
            Just("ro".to_string()),
            Just("rw".to_string()),
            Just("no_root_squash".to_string()),
            Just("sync".to_string()),
            (1u32..0x7fff_ffff).prop_map(|n| format!("fsid={n}")),
        ]
        .boxed(),
        Dialect::Aix => prop_oneof![
            Just("vers=4".to_string()),
            Just("vers=3:4".to_string()),
            Just("ro".to_string()),
            Just("rw".to_string()),
            Just("noauto".to_string()),
            Just("root=*".to_string()),
            "[a-z0-9]{1,5}(:[a-z0-9]{1,5}){0,2}".prop_map(|l| format!("access={l}")),
        ]
        .boxed(),
    };
    prop::collection::vec(opt, 0..5)
}

fn entry(dialect: Dialect) -> impl Strategy<Value = Entry> {
    let client = match dialect {
        Dialect::Linux => prop_oneof![
            Just(Some("*".to_string())),
            Just(Some("10.1.0.0/16".to_string())),
            Just(Some("@compute".to_string())),
            Just(Some("[fd00::]/64".to_string())),
            "[a-z]{1,8}".prop_map(Some),
        ]
        .boxed(),
        Dialect::Aix => Just(None).boxed(),
    };
    (path(dialect), client, options(dialect), locations(dialect)).prop_map(move |(path, client, options, locations)| {
        // An AIX line without options has nowhere to put locations; keep the model consistent.
        Entry { path, client, options, locations }
    })
}

fn exports_of(dialect: Dialect) -> impl Strategy<Value = Exports> {
    prop::collection::vec(entry(dialect), 0..6).prop_map(move |entries| Exports { dialect, entries })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn linux_round_trip(m in exports_of(Dialect::Linux)) {
        let text = exports::render(&m);
        prop_assert_eq!(exports::parse(Dialect::Linux, &text).unwrap(), m);
    }

    #[test]
    fn aix_round_trip(m in exports_of(Dialect::Aix)) {
        let text = exports::render(&m);
        prop_assert_eq!(exports::parse(Dialect::Aix, &text).unwrap(), m.clone());
        // Spliced into an admin's file, the block reads back the same and the admin's lines stay.
        let admin = "/home -vers=3,rw\n# keep me\n";
        let spliced = exports::splice_aix(admin, &text).unwrap();
        prop_assert!(spliced.starts_with(admin));
        prop_assert_eq!(exports::parse(Dialect::Aix, &spliced).unwrap(), m);
    }

    #[test]
    fn diff_is_empty_on_itself_and_survives_a_round_trip(a in exports_of(Dialect::Linux), b in exports_of(Dialect::Linux)) {
        prop_assert!(exports::diff(&a, &a).is_empty());
        let a2 = exports::parse(Dialect::Linux, &exports::render(&a)).unwrap();
        prop_assert_eq!(exports::diff(&a2, &b), exports::diff(&a, &b));
    }
}
