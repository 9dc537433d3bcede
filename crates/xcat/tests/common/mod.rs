//! The test cluster, generated so every back end gets exactly the same tables, and helpers that write
//! it as tabdump CSV and as xCAT SQLite files. `tests/fixtures/cluster/*.csv` are this generator's
//! output, committed for reading and for the CLI tests; `fixtures_are_current` (tests/import.rs)
//! keeps them in step (XCAT_FIXTURES_UPDATE=1 rewrites them).
//!
//! The cluster: an MN, four Linux SNs (sn1..sn4) and two AIX SNs (aixsn1, aixsn2); 192 Linux nodes
//! cn001..cn192 in racks of 48 (rack01..rack04, each served by sn<r> with sn<r+1> as backup), 8 AIX
//! nodes an001..an008. Addresses come from regex values on groups; a few nodes override, one row
//! holds `""` where another holds NULL, rows are disabled in every way xCAT knows, and some values
//! span lines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use xcat::table::{self, Spec};

/// A row as (column, value) pairs; missing columns are NULL.
pub type FixtureRow = Vec<(&'static str, Option<String>)>;

/// Table name -> rows.
pub struct Fixture {
    pub tables: BTreeMap<&'static str, Vec<FixtureRow>>,
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

impl Fixture {
    fn add(&mut self, table: &'static str, row: &[(&'static str, Option<String>)]) {
        self.tables.entry(table).or_default().push(row.to_vec());
    }

    /// A table set written by hand as tabdump files (`DIR/<table>.csv`), to be loaded into SQLite,
    /// PostgreSQL and MariaDB with exactly the same rows. Columns a file lacks are NULL.
    pub fn from_tabdump(dir: &Path) -> Fixture {
        let mut f = Fixture { tables: BTreeMap::new() };
        for spec in table::TABLES {
            let p = dir.join(format!("{}.csv", spec.name));
            let Ok(text) = std::fs::read_to_string(&p) else { continue };
            let t = xcat::tabdump::parse(spec.name, &p.display().to_string(), &text).unwrap();
            let rows = f.tables.entry(spec.name).or_default();
            for r in &t.rows {
                rows.push(spec.columns.iter().map(|c| (*c, t.col(c).and_then(|i| r.values[i].clone()))).collect());
            }
        }
        f
    }

    /// Rows as full value vectors in schema column order.
    pub fn rows(&self, spec: &Spec) -> Vec<Vec<Option<String>>> {
        self.tables
            .get(spec.name)
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        spec.columns
                            .iter()
                            .map(|c| r.iter().find(|(k, _)| k == c).and_then(|(_, v)| v.clone()))
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tables this fixture defines, in schema order.
    pub fn specs(&self) -> Vec<&'static Spec> {
        table::TABLES.iter().filter(|s| self.tables.contains_key(s.name)).collect()
    }

    /// `tabdump <table>` output for every table.
    pub fn tabdump(&self) -> BTreeMap<String, String> {
        self.specs()
            .into_iter()
            .map(|spec| (spec.name.to_string(), xcat::tabdump::write(spec.columns, &self.rows(spec))))
            .collect()
    }

    pub fn write_tabdump(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in self.tabdump() {
            std::fs::write(dir.join(format!("{name}.csv")), text).unwrap();
        }
    }

    /// xCAT's SQLite layout: `<dir>/<table>.sqlite`, one table of the same name.
    pub fn write_sqlite(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            for spec in self.specs() {
                let path = dir.join(format!("{}.sqlite", spec.name));
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
                let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
                sqlx::query(&create_table(spec, '"')).execute(&mut c).await.unwrap();
                let ins = insert(spec, '"', |_| "?".to_string());
                let mut tx = c.begin().await.unwrap();
                for row in self.rows(spec) {
                    let mut q = sqlx::query(&ins);
                    for v in row {
                        q = q.bind(v);
                    }
                    q.execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
                c.close().await.unwrap();
            }
        });
    }

    /// Load into a PostgreSQL or MySQL database through an open connection.
    pub async fn load_pg(&self, c: &mut sqlx::PgConnection) {
        for spec in self.specs() {
            sqlx::query(&create_table(spec, '"')).execute(&mut *c).await.unwrap();
            let ins = insert(spec, '"', |i| format!("${}", i + 1));
            for row in self.rows(spec) {
                let mut q = sqlx::query(&ins);
                for v in row {
                    q = q.bind(v);
                }
                q.execute(&mut *c).await.unwrap();
            }
        }
    }

    pub async fn load_mysql(&self, c: &mut sqlx::MySqlConnection) {
        for spec in self.specs() {
            sqlx::query(&create_table(spec, '`')).execute(&mut *c).await.unwrap();
            let ins = insert(spec, '`', |_| "?".to_string());
            for row in self.rows(spec) {
                let mut q = sqlx::query(&ins);
                for v in row {
                    q = q.bind(v);
                }
                q.execute(&mut *c).await.unwrap();
            }
        }
    }
}

/// xCAT's CREATE TABLE (Table.pm `buildcreatestmt`): keys `VARCHAR(128) NOT NULL`, `disable
/// varchar(8)`, everything else TEXT, primary key on the keys.
pub fn create_table(spec: &Spec, q: char) -> String {
    let cols: Vec<String> = spec
        .columns
        .iter()
        .map(|c| {
            let ty = if spec.keys.contains(c) {
                "VARCHAR(128) NOT NULL"
            } else if *c == "disable" {
                "varchar(8)"
            } else {
                "TEXT"
            };
            format!("{q}{c}{q} {ty}")
        })
        .collect();
    let keys: Vec<String> = spec.keys.iter().map(|k| format!("{q}{k}{q}")).collect();
    format!("CREATE TABLE {q}{}{q} ({}, PRIMARY KEY ({}))", spec.name, cols.join(", "), keys.join(", "))
}

fn insert(spec: &Spec, q: char, ph: impl Fn(usize) -> String) -> String {
    let cols: Vec<String> = spec.columns.iter().map(|c| format!("{q}{c}{q}")).collect();
    let phs: Vec<String> = (0..spec.columns.len()).map(ph).collect();
    format!("INSERT INTO {q}{}{q} ({}) VALUES ({})", spec.name, cols.join(", "), phs.join(", "))
}

/// The realistic cluster.
pub fn cluster() -> Fixture {
    let mut f = Fixture { tables: BTreeMap::new() };

    // --- site
    for (k, v) in [
        ("master", "10.0.0.1"),
        ("installdir", "/install"),
        ("domain", "cluster.example"),
        ("sharedinstall", "no"),
        ("xcatdport", "3001"),
        ("nameservers", "<xcatmaster>"),
    ] {
        f.add("site", &[("key", s(k)), ("value", s(v))]);
    }
    // A disabled site key must not count.
    f.add("site", &[("key", s("installdir_old")), ("value", s("/oldinstall")), ("disable", s("1"))]);

    // --- nodelist: the MN, SNs, 192 Linux and 8 AIX compute nodes.
    f.add("nodelist", &[("node", s("xcatmn")), ("groups", s("__mgmtnode,all"))]);
    for i in 1..=4 {
        f.add("nodelist", &[("node", s(&format!("sn{i}"))), ("groups", s("service,all")), ("status", s("booted"))]);
    }
    for i in 1..=2 {
        f.add("nodelist", &[("node", s(&format!("aixsn{i}"))), ("groups", s("service,aixservice,all"))]);
    }
    for i in 1..=192 {
        let rack = (i - 1) / 48 + 1;
        let mut row = vec![("node", s(&format!("cn{i:03}"))), ("groups", s(&format!("rack{rack:02},compute,all")))];
        if i == 13 {
            row.push(("disable", s("1"))); // a disabled node: not in the config at all
        }
        if i == 2 {
            row.push(("comments", s("replaced DIMM\n2026-03-01, \"see ticket\"")));
        }
        if i == 3 {
            row.push(("disable", s("no"))); // enabled: "no" is not set
        }
        f.add("nodelist", &row);
    }
    for i in 1..=8 {
        f.add("nodelist", &[("node", s(&format!("an{i:03}"))), ("groups", s("aixcompute,all"))]);
    }
    // A hidden hardware control point.
    f.add("nodelist", &[("node", s("fsp01")), ("groups", s("fsp,all")), ("hidden", s("1"))]);

    // --- servicenode: one row for the whole `service` group.
    f.add(
        "servicenode",
        &[
            ("node", s("service")),
            ("nameserver", s("1")),
            ("dhcpserver", s("1")),
            ("tftpserver", s("1")),
            ("nfsserver", s("1")),
            ("conserver", s("1")),
            ("ipforward", s("1")),
        ],
    );

    // --- noderes
    // The compute group: shadowed servicenode (racks come first in nodelist.groups), regex xcatmaster.
    f.add(
        "noderes",
        &[
            ("node", s("compute")),
            ("servicenode", s("sn1")),
            ("netboot", s("xnba")),
            ("xcatmaster", s(r"|cn(\d+)|10.0.(($1-1)/48+1).254|")),
            ("current_osimage", s("rh86-compute")),
            ("installnic", s("mac")),
            ("primarynic", s("mac")),
            ("comments", s("compute nodes:\nrack SN first, the next rack's SN as backup")),
        ],
    );
    for r in 1..=4 {
        let next = r % 4 + 1;
        f.add("noderes", &[("node", s(&format!("rack{r:02}"))), ("servicenode", s(&format!("sn{r},sn{next}")))]);
    }
    // AIX nodes: both servicenode and xcatmaster by regex; xcatmaster is a name, resolved by hosts.
    f.add(
        "noderes",
        &[
            ("node", s("aixcompute")),
            ("servicenode", s(r"|an(\d+)|aixsn(($1-1)/4+1),aixsn((($1-1)/4+1)%2+1)|")),
            ("xcatmaster", s(r"|an(\d+)|aixsn(($1-1)/4+1)|")),
            ("current_osimage", s("aix71-diskless")),
        ],
    );
    // cn005 overrides on its own row: served by sn2 with sn1 as backup.
    f.add("noderes", &[("node", s("cn005")), ("servicenode", s("sn2,sn1")), ("xcatmaster", s("10.0.2.254"))]);
    // cn010: servicenode "" on its own row: Table.pm getAttribs drops empty values, so the group's
    // list applies as for NULL (xcat-truth.json: cn010 noderes.servicenode = "sn1,sn2").
    f.add("noderes", &[("node", s("cn010")), ("servicenode", s("")), ("netboot", s("xnba"))]);
    // cn011: servicenode NULL on its own row: inherited from rack01; nfsserver names its SN's address.
    f.add("noderes", &[("node", s("cn011")), ("nfsserver", s("10.0.1.254")), ("tftpserver", s("10.0.1.254"))]);
    // cn012: a disabled row that would move it to sn4: ignored.
    f.add("noderes", &[("node", s("cn012")), ("servicenode", s("sn4,sn3")), ("disable", s("1"))]);
    // cn014: disable = "" disables the row in xCAT (its SQL keeps NULL, '0' and 'no' only).
    f.add("noderes", &[("node", s("cn014")), ("servicenode", s("sn4,sn3")), ("disable", s(""))]);
    // cn015: disable = "0" keeps the row.
    f.add(
        "noderes",
        &[("node", s("cn015")), ("servicenode", s("sn1,sn3")), ("disable", s("0")), ("monserver", s("sn1,10.0.1.254"))],
    );
    // cn021: mounts from an NFS server that is no SN.
    f.add("noderes", &[("node", s("cn021")), ("nfsserver", s("nfs-ext"))]);
    // cn191: the MN written as its backup SN: the MN is the source, not an SN.
    f.add("noderes", &[("node", s("cn191")), ("servicenode", s("sn4,xcatmn"))]);
    // cn100 (rack03, sn3): mounts from sn3 by name.
    f.add("noderes", &[("node", s("cn100")), ("nfsserver", s("sn3"))]);

    // --- nodetype: provmethod names the osimage (noderes.current_osimage above is unused by xCAT):
    // racks 1, 2 and 4 boot statelite, rack03 stateless; the AIX nodes are NIM diskless clients.
    f.add(
        "nodetype",
        &[
            ("node", s("compute")),
            ("os", s("rhels8.6")),
            ("arch", s("x86_64")),
            ("profile", s("compute")),
            ("provmethod", s("rh86-statelite")),
        ],
    );
    f.add("nodetype", &[("node", s("rack03")), ("provmethod", s("rh86-compute"))]);
    f.add("nodetype", &[("node", s("aixservice")), ("os", s("AIX")), ("arch", s("ppc64"))]);
    f.add(
        "nodetype",
        &[("node", s("aixcompute")), ("os", s("AIX")), ("arch", s("ppc64")), ("provmethod", s("aix71-diskless"))],
    );

    f.add("hosts", &[("node", s("xcatmn")), ("ip", s("10.0.0.1"))]);
    // --- hosts: MN-side addresses of SNs, the AIX SNs' node-side ones, and a regex for compute.
    for i in 1..=4 {
        f.add("hosts", &[("node", s(&format!("sn{i}"))), ("ip", s(&format!("10.0.0.{}", 10 + i)))]);
    }
    f.add("hosts", &[("node", s("aixsn1")), ("ip", s("10.2.0.1"))]);
    f.add("hosts", &[("node", s("aixsn2")), ("ip", s("10.2.0.2"))]);
    f.add("hosts", &[("node", s("compute")), ("ip", s(r"|cn(\d+)|10.1.(($1-1)/48+1).($1+0)|"))]);

    // --- osimage / linuximage / nimimage
    let os = |name: &str, prov: &str, ty: &str, osname: &str, prof: &str| -> Vec<(&'static str, Option<String>)> {
        vec![
            ("imagename", s(name)),
            ("provmethod", s(prov)),
            ("imagetype", s(ty)),
            ("osname", s(osname)),
            ("profile", s(prof)),
            ("osvers", if osname == "AIX" { s("7.1") } else { s("rhels8.6") }),
            ("osarch", if osname == "AIX" { s("ppc64") } else { s("x86_64") }),
        ]
    };
    let mut row = os("rh86-compute", "netboot", "linux", "Linux", "compute");
    row.push(("description", s("RHEL 8.6 compute\nbuilt by genimage, \"golden\"")));
    f.add("osimage", &row);
    f.add("osimage", &os("rh86-statelite", "statelite", "linux", "Linux", "statelite"));
    f.add("osimage", &os("rh86-install", "install", "linux", "Linux", "compute"));
    let mut row = os("rh79-old", "netboot", "linux", "Linux", "old");
    row.push(("disable", s("1")));
    f.add("osimage", &row);
    f.add("osimage", &os("aix71-diskless", "diskless", "NIM", "AIX", "aix"));
    f.add(
        "linuximage",
        &[
            ("imagename", s("rh86-compute")),
            ("rootimgdir", s("/install/netboot/rhels8.6/x86_64/compute")),
            ("exlist", s("/opt/xcat/share/xcat/netboot/rh/compute.rhels8.x86_64.exlist")),
        ],
    );
    f.add("linuximage", &[("imagename", s("rh86-statelite"))]); // rootimgdir NULL: xCAT's default
    f.add(
        "linuximage",
        &[("imagename", s("rh86-install")), ("template", s("/opt/xcat/share/xcat/install/rh/compute.tmpl"))],
    );
    f.add("linuximage", &[("imagename", s("orphan")), ("rootimgdir", s("/install/netboot/orphan"))]);
    f.add(
        "nimimage",
        &[
            ("imagename", s("aix71-diskless")),
            ("nimtype", s("diskless")),
            ("lpp_source", s("710lpp_source")),
            ("spot", s("710spot")),
            ("shared_root", s("710shared_root")),
            ("paging", s("710paging")),
            ("dump", s("710dump")),
            ("resolv_conf", s("710resolv_conf")),
            ("bosinst_data", s("710bosinst")),
            ("nimmethod", s("rte")),
        ],
    );

    // --- statelite
    f.add(
        "statelite",
        &[("node", s("compute")), ("statemnt", s("$noderes.xcatmaster:/nodedata")), ("mntopts", s("soft,timeo=30"))],
    );
    // cn007's data was moved to its backup sn2 earlier: a literal server.
    f.add("statelite", &[("node", s("cn007")), ("statemnt", s("10.0.2.254:/nodedata"))]);
    // cn030: its own SN written literally (not $noderes.xcatmaster): a move needs a chtab.
    f.add("statelite", &[("node", s("cn030")), ("statemnt", s("10.0.1.254:/nodedata"))]);
    // AIX: a regex statemnt.
    f.add("statelite", &[("node", s("aixcompute")), ("statemnt", s(r"|an(\d+)|10.2.0.(($1-1)/4+1):/aixstate|"))]);
    // cn190: persistent data on the MN: hanfs cannot serve it.
    f.add("statelite", &[("node", s("cn190")), ("statemnt", s("10.0.0.1:/mnstate"))]);

    // --- litetree / litefile
    f.add(
        "litetree",
        &[("priority", s("1.0")), ("image", s("ALL")), ("directory", s("$noderes.xcatmaster:/install/litetree/base"))],
    );
    f.add("litetree", &[("priority", s("2.0")), ("image", s("ALL")), ("directory", s("10.0.0.1:/statelite/mnfiles"))]);
    f.add(
        "litetree",
        &[("priority", s("3.0")), ("image", s("ALL")), ("directory", s("10.0.0.1:/old")), ("disable", s("yes"))],
    );
    f.add("litefile", &[("image", s("ALL")), ("file", s("/etc/adjtime")), ("options", s("tmpfs"))]);
    f.add("litefile", &[("image", s("rh86-statelite")), ("file", s("/var/log/")), ("options", s("persistent"))]);
    f.add("litefile", &[("image", s("rh86-statelite")), ("file", s("/etc/ssh/")), ("options", s("rw"))]);
    f.add("litefile", &[("image", s("gone-image")), ("file", s("/etc/motd")), ("options", s("ro"))]);
    f
}

/// The xCAT commit the checkout at `src` holds (`git rev-parse HEAD`, else `$XCAT_COMMIT`): recorded
/// with every expected value produced by running xCAT's own Perl from it.
pub fn xcat_commit(src: &Path) -> String {
    let out = std::process::Command::new("git").arg("-C").arg(src).args(["rev-parse", "HEAD"]).output().ok();
    out.filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .or_else(|| std::env::var("XCAT_COMMIT").ok())
        .expect("XCAT_SRC is no git checkout: set XCAT_COMMIT to the xCAT commit it holds")
}
