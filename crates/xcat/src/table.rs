//! Tables as read from any source, and the part of xCAT's schema (`Schema.pm`) that hanfs reads.

use std::collections::BTreeMap;

/// One table as read: column names in source order and every row, disabled ones included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    /// Where it came from (a file or a database), for messages.
    pub origin: String,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

/// A row: `None` is SQL NULL, `Some("")` the empty string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `file:line` for CSV, `table row N` for databases.
    pub location: String,
    pub values: Vec<Option<String>>,
}

impl Table {
    pub fn col(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The value of `column` in `row`, `None` when NULL or when the table has no such column.
    pub fn get<'a>(&self, row: &'a Row, column: &str) -> Option<&'a str> {
        self.col(column).and_then(|i| row.values.get(i)).and_then(|v| v.as_deref())
    }

    /// Rows xCAT reads: `disable` NULL, `0` or `no` in any case (Table.pm's
    /// `disable is NULL or disable in ('0','no','NO','No','nO')`). Note that `""` disables a row.
    pub fn enabled_rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| !is_disabled(self.get(r, "disable")))
    }

    pub fn disabled_rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| is_disabled(self.get(r, "disable")))
    }
}

/// xCAT's test for a disabled row.
pub fn is_disabled(v: Option<&str>) -> bool {
    match v {
        None => false,
        Some(s) => !(s == "0" || s.eq_ignore_ascii_case("no")),
    }
}

/// A table xCAT defines: its columns in schema order and its key columns.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub columns: &'static [&'static str],
    pub keys: &'static [&'static str],
    /// hanfs cannot build a config without it.
    pub required: bool,
}

/// The tables `hanfs xcat import` reads (README §1), plus `hosts` for name-to-IP when present.
pub const TABLES: &[Spec] = &[
    Spec {
        name: "nodelist",
        columns: &[
            "node",
            "groups",
            "status",
            "statustime",
            "appstatus",
            "appstatustime",
            "primarysn",
            "hidden",
            "updatestatus",
            "updatestatustime",
            "zonename",
            "comments",
            "disable",
        ],
        keys: &["node"],
        required: true,
    },
    Spec {
        name: "noderes",
        columns: &[
            "node",
            "servicenode",
            "netboot",
            "tftpserver",
            "tftpdir",
            "nfsserver",
            "monserver",
            "nfsdir",
            "installnic",
            "primarynic",
            "discoverynics",
            "cmdinterface",
            "xcatmaster",
            "current_osimage",
            "next_osimage",
            "nimserver",
            "routenames",
            "nameservers",
            "proxydhcp",
            "syslog",
            "comments",
            "disable",
        ],
        keys: &["node"],
        required: true,
    },
    Spec {
        name: "servicenode",
        columns: &[
            "node",
            "nameserver",
            "dhcpserver",
            "tftpserver",
            "nfsserver",
            "conserver",
            "monserver",
            "ldapserver",
            "ntpserver",
            "ftpserver",
            "nimserver",
            "ipforward",
            "dhcpinterfaces",
            "proxydhcp",
            "comments",
            "disable",
        ],
        keys: &["node"],
        required: true,
    },
    Spec { name: "site", columns: &["key", "value", "comments", "disable"], keys: &["key"], required: true },
    Spec {
        name: "osimage",
        columns: &[
            "imagename",
            "groups",
            "profile",
            "imagetype",
            "description",
            "provmethod",
            "rootfstype",
            "nfsrootopts",
            "osdistroname",
            "osupdatename",
            "cfmdir",
            "osname",
            "osvers",
            "osarch",
            "synclists",
            "postscripts",
            "postbootscripts",
            "serverrole",
            "isdeletable",
            "kitcomponents",
            "environvar",
            "comments",
            "disable",
        ],
        keys: &["imagename"],
        required: false,
    },
    Spec {
        name: "linuximage",
        columns: &[
            "imagename",
            "template",
            "boottarget",
            "addkcmdline",
            "pkglist",
            "pkgdir",
            "otherpkglist",
            "otherpkgdir",
            "exlist",
            "postinstall",
            "rootimgdir",
            "kerneldir",
            "nodebootif",
            "otherifce",
            "netdrivers",
            "kernelver",
            "krpmver",
            "permission",
            "dump",
            "crashkernelsize",
            "partitionfile",
            "driverupdatesrc",
            "comments",
            "disable",
        ],
        keys: &["imagename"],
        required: false,
    },
    Spec {
        name: "nimimage",
        columns: &[
            "imagename",
            "nimtype",
            "lpp_source",
            "spot",
            "root",
            "dump",
            "paging",
            "resolv_conf",
            "tmp",
            "home",
            "shared_home",
            "res_group",
            "nimmethod",
            "script",
            "bosinst_data",
            "installp_bundle",
            "mksysb",
            "fb_script",
            "shared_root",
            "otherpkgs",
            "image_data",
            "configdump",
            "comments",
            "disable",
        ],
        keys: &["imagename"],
        required: false,
    },
    Spec {
        name: "litefile",
        columns: &["image", "file", "options", "comments", "disable"],
        keys: &["image", "file"],
        required: false,
    },
    Spec {
        name: "litetree",
        columns: &["priority", "image", "directory", "mntopts", "comments", "disable"],
        keys: &["priority"],
        required: false,
    },
    Spec {
        name: "statelite",
        columns: &["node", "image", "statemnt", "mntopts", "comments", "disable"],
        keys: &["node"],
        required: false,
    },
    // Schema.pm `nodetype`: `provmethod` names the node's osimage, `os` says AIX (snmove.pm:1812,
    // aixinstall.pm mkdsklsnode); noderes.current_osimage is "Not currently used" (Schema.pm:691).
    Spec {
        name: "nodetype",
        columns: &["node", "os", "arch", "profile", "provmethod", "supportedarchs", "nodetype", "comments", "disable"],
        keys: &["node"],
        required: false,
    },
    // Schema.pm `nodehm`: `conserver` is repointed by snmove (snmove.pm:803-860).
    Spec {
        name: "nodehm",
        columns: &[
            "node",
            "power",
            "mgt",
            "cons",
            "termserver",
            "termport",
            "conserver",
            "serialport",
            "serialspeed",
            "serialflow",
            "getmac",
            "cmdmapping",
            "consoleondemand",
            "consoleenabled",
            "comments",
            "disable",
        ],
        keys: &["node"],
        required: false,
    },
    // Schema.pm `networks`: which SN interface faces a node (snmove.pm:394-422).
    Spec {
        name: "networks",
        columns: &[
            "netname",
            "net",
            "mask",
            "mgtifname",
            "gateway",
            "dhcpserver",
            "tftpserver",
            "nameservers",
            "ntpservers",
            "logservers",
            "dynamicrange",
            "staticrange",
            "staticrangeincrement",
            "nodehostname",
            "ddnsdomain",
            "vlanid",
            "domain",
            "mtu",
            "comments",
            "disable",
        ],
        keys: &["net", "mask"],
        required: false,
    },
    Spec {
        name: "hosts",
        columns: &["node", "ip", "hostnames", "otherinterfaces", "comments", "disable"],
        keys: &["node"],
        required: false,
    },
];

pub fn spec(name: &str) -> Option<&'static Spec> {
    TABLES.iter().find(|s| s.name == name)
}

/// Every table read, by name; an optional table the source lacks is simply absent.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub tables: BTreeMap<String, Table>,
    /// Where the tables came from, for the config's header comment and the report.
    pub source: String,
}

impl Tables {
    pub fn get(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }
}
