//! cfgloc as xCAT's Table.pm reads it: `tests/perl/cfgloc-truth.pl` runs Table.pm's own
//! `get_xcatcfg` and `new` (perl-xCAT/xCAT/Table.pm:816-848, 925-955) for each case below, in a
//! private mount namespace holding the case's /etc/xcat/cfgloc and /opt/xcat/cfg, with DBI->connect
//! recording what it was asked to open. The answers (`tests/fixtures/cfgloc-truth.json`, with the
//! xCAT commit and the command) are what hanfs's choice of source and its cfgloc parse must give.
//! With `XCAT_SRC=/path/to/xcat-core` (root, unshare, perl, libdbi-perl, libjson-perl) the file is
//! made again first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use xcat::source::{DbKind, XcatCfg};
use xcat::SourceSpec;

struct Case {
    name: &'static str,
    xcatcfg: Option<&'static str>,
    cfgloc: Option<&'static str>,
    opt_cfg: bool,
    etc_xcat: bool,
}

const fn case(
    name: &'static str,
    xcatcfg: Option<&'static str>,
    cfgloc: Option<&'static str>,
    opt_cfg: bool,
    etc_xcat: bool,
) -> Case {
    Case { name, xcatcfg, cfgloc, opt_cfg, etc_xcat }
}

const CASES: &[Case] = &[
    case("env-sqlite", Some("SQLite:/srv/xcatdb"), None, false, true),
    case("env-bare-dir", Some("/srv/xcatdb"), None, false, true),
    case("env-over-cfgloc", Some("SQLite:/srv/a"), Some("Pg:dbname=xcatdb;host=mn|xcatadm|pw\n"), true, true),
    case("env-empty", Some(""), Some("Pg:dbname=xcatdb;host=mn|xcatadm|pw\n"), false, true),
    case("cfgloc-pg", None, Some("Pg:dbname=xcatdb;host=mn|xcatadm|pw\n"), true, true),
    case(
        "cfgloc-dbi-mysql",
        None,
        Some("dbi:mysql:dbname=xcatdb;host=10.0.0.1;port=3307|xcatadmin|se:cr\n"),
        false,
        true,
    ),
    case("cfgloc-pg-socket", None, Some("Pg:dbname=xcatdb;host=/var/run/postgresql;port=5433|xcatadm|pw"), false, true),
    case(
        "cfgloc-mysql-socket",
        None,
        Some("mysql:database=xcatdb;mysql_socket=/run/mysqld/mysqld.sock|xcatadmin|pw\n"),
        false,
        true,
    ),
    case("cfgloc-password-pipe", None, Some("Pg:dbname=xcatdb;host=mn|xcatadm|p|w\n"), false, true),
    case("cfgloc-empty-password", None, Some("mysql:dbname=xcatdb;host=db1|xcatadmin|\n"), false, true),
    case(
        "cfgloc-two-lines",
        None,
        Some("Pg:dbname=first;host=mn|u1|p1\nmysql:dbname=second;host=db|u2|p2\n"),
        false,
        true,
    ),
    case("cfgloc-sqlite", None, Some("SQLite:/var/lib/xcat\n"), true, true),
    case("cfgloc-empty-first-line", None, Some("\nPg:dbname=xcatdb;host=mn|xcatadm|pw\n"), true, true),
    case("opt-xcat-cfg", None, None, true, true),
    case("etc-xcat", None, None, false, true),
    case("cfgloc-db2", None, Some("DB2:xcatdb|xcatdb|pw\n"), false, true),
    case("cfgloc-csv", None, Some("CSV:/srv/csv\n"), false, true),
];

fn truth_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cfgloc-truth.json")
}

fn run_perl(src: &Path, c: &Case) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    for d in ["upper", "work"] {
        std::fs::create_dir(tmp.path().join(d)).unwrap();
    }
    let cfg = tmp.path().join("cfgloc");
    let mut script = format!(
        "set -e; mount -t tmpfs t /opt; mount -t overlay overlay -o lowerdir=/etc,upperdir={0}/upper,workdir={0}/work /etc; rm -rf /etc/xcat; ",
        tmp.path().display()
    );
    if c.opt_cfg {
        script += "mkdir -p /opt/xcat/cfg; ";
    }
    if c.etc_xcat || c.cfgloc.is_some() {
        script += "mkdir -p /etc/xcat; ";
    }
    if let Some(text) = c.cfgloc {
        std::fs::write(&cfg, text).unwrap();
        script += &format!("cp {} /etc/xcat/cfgloc; ", cfg.display());
    }
    script += "exec perl \"$@\"";
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/perl/cfgloc-truth.pl");
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"]).arg(&harness).arg(src);
    match c.xcatcfg {
        Some(v) => cmd.env("XCATCFG", v),
        None => cmd.env_remove("XCATCFG"),
    };
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}: {}", c.name, String::from_utf8_lossy(&out.stderr));
    // Table.pm prints its own complaint about the missing handle before the answer: the last line.
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

fn truth() -> serde_json::Value {
    if let Some(src) = std::env::var_os("XCAT_SRC").map(PathBuf::from) {
        let commit = common::xcat_commit(&src);
        let mut cases = serde_json::Map::new();
        for c in CASES {
            cases.insert(c.name.to_string(), run_perl(&src, c));
        }
        let v = serde_json::json!({
            "xcat_commit": commit,
            "made_by": format!("per case, in unshare -m with the case's /etc/xcat/cfgloc, /opt/xcat/cfg and $XCATCFG: perl crates/xcat/tests/perl/cfgloc-truth.pl <xcat-core checkout> (xCAT {commit})"),
            "cases": cases,
        });
        std::fs::write(truth_file(), serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    }
    serde_json::from_str(&std::fs::read_to_string(truth_file()).unwrap()).unwrap()
}

/// The DBI data source's `key=value` pairs.
fn dsn_params(p: &str) -> Vec<(String, String)> {
    p.split(';')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').unwrap())
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

#[test]
fn source_and_dsn_equal_table_pm() {
    let truth = truth();
    assert_eq!(truth["xcat_commit"].as_str().unwrap().len(), 40);
    let cases = truth["cases"].as_object().unwrap();
    assert_eq!(cases.len(), CASES.len(), "a recorded answer per case");
    for c in CASES {
        let want = &cases[c.name];
        let tmp = tempfile::tempdir().unwrap();
        let cfgloc = tmp.path().join("cfgloc");
        if let Some(t) = c.cfgloc {
            std::fs::write(&cfgloc, t).unwrap();
        }
        let opt = tmp.path().join("opt-xcat-cfg");
        if c.opt_cfg {
            std::fs::create_dir(&opt).unwrap();
        }
        let spec = SourceSpec::default_from(c.xcatcfg.map(String::from), &cfgloc, &opt);
        let text = match &spec {
            SourceSpec::Xcatcfg(t) => t.clone(),
            SourceSpec::Cfgloc(f) => std::fs::read_to_string(f).unwrap(),
            SourceSpec::Sqlite(d) if *d == opt => "SQLite:/opt/xcat/cfg".into(),
            SourceSpec::Sqlite(d) => format!("SQLite:{}", d.display()),
            other => panic!("{}: {other:?}", c.name),
        };
        let ours = XcatCfg::parse(&text);
        let dsn = want["dsn"].as_str().unwrap();
        let dsn = dsn.strip_prefix("dbi:").unwrap();
        let (driver, params) = dsn.split_once(':').unwrap();
        match driver {
            "SQLite" => {
                let dir = params.strip_suffix("/nodelist.sqlite").unwrap();
                assert_eq!(ours.unwrap(), XcatCfg::Sqlite(dir.into()), "{}", c.name);
            }
            "Pg" | "mysql" => {
                let XcatCfg::Db(db) = ours.unwrap_or_else(|e| panic!("{}: {e}", c.name)) else {
                    panic!("{}: not a database", c.name)
                };
                assert_eq!(db.kind, if driver == "Pg" { DbKind::Postgres } else { DbKind::Mysql }, "{}", c.name);
                assert_eq!(Some(db.user.as_str()), want["user"].as_str(), "{}: user", c.name);
                assert_eq!(Some(db.password.as_str()), want["password"].as_str(), "{}: password", c.name);
                for (k, v) in dsn_params(params) {
                    let got = match k.as_str() {
                        "dbname" | "database" => Some(db.dbname.clone()),
                        "host" => db.host.clone(),
                        "port" => db.port.map(|p| p.to_string()),
                        "mysql_socket" => db.socket.clone(),
                        other => panic!("{}: a DSN key this test does not know: {other}", c.name),
                    };
                    assert_eq!(got.as_deref(), Some(v.as_str()), "{}: {k}", c.name);
                }
            }
            // xCAT would open these; hanfs refuses and says what to do instead.
            "DB2" => {
                let e = ours.unwrap_err();
                assert!(e.contains("dumpxCATdb") && e.contains("--tabdump"), "{}: {e}", c.name);
            }
            "CSV" => {
                let e = ours.unwrap_err();
                assert!(e.contains("--tabdump"), "{}: {e}", c.name);
            }
            other => panic!("{}: driver {other}", c.name),
        }
    }
}
