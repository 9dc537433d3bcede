//! From xCAT's tables to a hanfs cluster config (contract.md), pure. Everything that cannot be
//! mapped is reported with its table, row and reason instead of being dropped.
//!
//! Row order differs between back ends (PostgreSQL keeps insertion order, MariaDB the primary key's),
//! so nothing here depends on it: nodes, SNs and images are put in natural name order.

use crate::db::{AttrError, Db};
use crate::rules;
use crate::table::Tables;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// How serious a report entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Left out on purpose (disabled rows, paging/dump, diskful images).
    Skipped,
    /// Mapped, but the admin should look (conflicting addresses, guesses).
    Warning,
    /// Could not be mapped; the config lacks it.
    Error,
}

/// One thing the import could not take over as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub severity: Severity,
    pub table: String,
    /// The row's key (node, group, image name, ...) and where it was read.
    pub row: String,
    pub reason: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Skipped => "skipped",
            Severity::Warning => "warning",
            Severity::Error => "not mapped",
        };
        write!(f, "{sev}: {} {}: {}", self.table, self.row, self.reason)
    }
}

// ---------------------------------------------------------------------------------------------
// The config as written (contract.md); serialised with serde/toml.

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub cluster: ClusterOut,
    pub tls: TlsOut,
    pub sn: Vec<SnOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image: Vec<ImageOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statelite: Vec<StateliteOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node: Vec<NodeOut>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterOut {
    pub source_root: String,
    pub state_dir: String,
    pub backups: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsOut {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnOut {
    pub name: String,
    pub address: String,
    pub dialect: String,
    pub backups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageOut {
    pub name: String,
    pub path: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sns: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateliteOut {
    pub name: String,
    pub path: String,
    pub clients: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeOut {
    pub name: String,
    pub sns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Import {
    pub config: Config,
    pub report: Vec<Issue>,
    /// Where the tables came from.
    pub source: String,
}

impl Import {
    /// The config as TOML, with a header comment naming the source and summing up the report.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let body = toml::to_string(&self.config)?;
        let count = |s: Severity| self.report.iter().filter(|i| i.severity == s).count();
        Ok(format!(
            "# hanfs cluster config, written by `hanfs xcat import` from {}.\n\
             # {} service nodes, {} nodes, {} images, {} statelite areas; report: {} not mapped, {} warnings, {} skipped\n\
             # (rerun the import to see them). Check [tls] and each SN's address before `hanfs sync`{}.\n\n{}",
            self.source,
            self.config.sn.len(),
            self.config.node.len(),
            self.config.image.len(),
            self.config.statelite.len(),
            count(Severity::Error),
            count(Severity::Warning),
            count(Severity::Skipped),
            if self.config.statelite.is_empty() {
                ""
            } else {
                ";\n# statelite clients are \"*\": narrow them to the compute networks"
            },
            body
        ))
    }
}

/// Names compared with their digit runs as numbers: cn2 < cn10.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let o = match (x, y) {
            ((true, p), (true, q)) => {
                let (p2, q2) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                p2.len().cmp(&q2.len()).then_with(|| p2.cmp(q2)).then_with(|| p.len().cmp(&q.len()))
            }
            ((_, p), (_, q)) => p.cmp(q),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// NIM resource columns that are directory trees under `<installdir>/nim/<type>/<name>`.
const NIM_TREES: &[&str] =
    &["spot", "shared_root", "root", "lpp_source", "resolv_conf", "tmp", "home", "shared_home", "mksysb"];
/// NIM resources that are per node and never replicated (README §1).
const NIM_NEVER: &[&str] = &["paging", "dump"];
/// NIM resources that are single files or lists, not trees.
const NIM_FILES: &[&str] = &["script", "bosinst_data", "installp_bundle", "fb_script", "image_data", "res_group"];

struct Mapper<'a> {
    db: Db<'a>,
    report: Vec<Issue>,
}

impl Mapper<'_> {
    fn issue(&mut self, severity: Severity, table: &str, row: impl Into<String>, reason: impl Into<String>) {
        self.report.push(Issue { severity, table: table.to_string(), row: row.into(), reason: reason.into() });
    }

    fn attr(&mut self, table: &str, node: &str, col: &str) -> Option<String> {
        let mut errs: Vec<AttrError> = Vec::new();
        let v = self.db.attr_or_report(table, node, col, &mut |e| errs.push(e.clone()));
        for e in errs {
            self.issue(
                Severity::Error,
                table,
                format!("{} ({})", e.found.from, e.found.location),
                format!("{col} `{}` for node {node}: {}", e.found.raw, e.error),
            );
        }
        v
    }

    /// The IP of a name from the hosts table (node row or groups, regex applied), if any.
    fn hosts_ip(&mut self, name: &str) -> Option<String> {
        self.db.table("hosts")?;
        let v = if self.db.is_node(name) {
            self.attr("hosts", name, "ip")
        } else {
            let row = self.db.row("hosts", name)?;
            let t = self.db.table("hosts")?;
            t.get(row, "ip").and_then(|v| rules::trans_regex(name, v).ok().flatten())
        };
        v.filter(|ip| is_ip(ip))
    }
}

/// Map tables to a config and a report.
/// Names of the enabled osimage rows that are AIX (osname) or NIM (imagetype) images.
pub(crate) fn aix_images(tables: &Tables) -> BTreeSet<String> {
    tables
        .get("osimage")
        .map(|t| {
            t.enabled_rows()
                .filter(|r| {
                    t.get(r, "osname").is_some_and(|o| o.eq_ignore_ascii_case("aix"))
                        || t.get(r, "imagetype").is_some_and(|o| o.eq_ignore_ascii_case("nim"))
                })
                .filter_map(|r| t.get(r, "imagename").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn import(tables: &Tables) -> Import {
    let mut m = Mapper { db: Db::new(tables), report: Vec::new() };

    // Disabled rows are skipped, as xCAT skips them; say so.
    for t in tables.tables.values() {
        let key = crate::table::spec(&t.name).and_then(|s| s.keys.first().copied()).unwrap_or("node");
        let rows: Vec<(String, String)> =
            t.disabled_rows().map(|r| (t.get(r, key).unwrap_or("?").to_string(), r.location.clone())).collect();
        for (k, loc) in rows {
            m.issue(Severity::Skipped, &t.name, format!("{k} ({loc})"), "row is disabled");
        }
    }

    let installdir = m.db.site("installdir").unwrap_or("/install").trim_end_matches('/').to_string();
    let installdir = if installdir.is_empty() { "/install".to_string() } else { installdir };
    let domain = m.db.site("domain").map(str::to_string);
    if let Some(d) = &domain {
        if !model::addr::is_hostname(d) {
            m.issue(Severity::Warning, "site", "domain", format!("`{d}` is not a valid NFSv4 domain; left out"));
        }
    }
    let domain = domain.filter(|d| model::addr::is_hostname(d));

    // --- service nodes: servicenode rows (a row may name a group) and every name in noderes.servicenode.
    let mut sn_set: BTreeSet<String> = BTreeSet::new();
    if let Some(t) = tables.get("servicenode") {
        let keys: Vec<(String, String)> =
            t.enabled_rows().filter_map(|r| t.get(r, "node").map(|k| (k.to_string(), r.location.clone()))).collect();
        for (k, loc) in keys {
            if m.db.is_node(&k) {
                sn_set.insert(k);
            } else {
                let members: Vec<String> =
                    m.db.nodes.iter().filter(|(_, g)| g.contains(&k)).map(|(n, _)| n.clone()).collect();
                if members.is_empty() {
                    m.issue(
                        Severity::Warning,
                        "servicenode",
                        format!("{k} ({loc})"),
                        "neither a node nor a group with members",
                    );
                }
                sn_set.extend(members);
            }
        }
    }

    // --- nodes and their SN lists.
    struct N {
        name: String,
        sns: Vec<String>,
    }
    let all_nodes: Vec<String> = {
        let mut v: Vec<String> = m.db.nodes.iter().map(|(n, _)| n.clone()).collect();
        v.sort_by(|a, b| natural_cmp(a, b));
        v
    };
    let mut nodes: Vec<N> = Vec::new();
    let mut sn_lists: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &all_nodes {
        if let Some(list) = m.attr("noderes", n, "servicenode") {
            let mut out: Vec<String> = Vec::new();
            for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !out.iter().any(|x| x == s) {
                    out.push(s.to_string());
                }
            }
            if !out.is_empty() {
                sn_set.extend(out.iter().cloned());
                sn_lists.insert(n.clone(), out);
            }
        }
    }
    // The MN is the source, never a service node: site.master, members of __mgmtnode, their IPs.
    let mut mn_names: BTreeSet<String> = BTreeSet::new();
    if let Some(master) = m.db.site("master") {
        mn_names.insert(master.to_string());
    }
    let mgmt: Vec<String> =
        m.db.nodes.iter().filter(|(_, g)| g.iter().any(|g| g == "__mgmtnode")).map(|(n, _)| n.clone()).collect();
    for n in mgmt {
        if let Some(ip) = m.hosts_ip(&n) {
            mn_names.insert(ip);
        }
        mn_names.insert(n);
    }
    let mn_in_lists: Vec<String> = sn_set.iter().filter(|s| mn_names.contains(*s)).cloned().collect();
    for s in &mn_in_lists {
        let users: Vec<String> = sn_lists.iter().filter(|(_, l)| l.contains(s)).map(|(n, _)| n.clone()).collect();
        m.issue(
            Severity::Error,
            "noderes",
            users.join(","),
            format!("servicenode names the management node `{s}`: the MN is hanfs's source, not a replica; left out of their lists"),
        );
        sn_set.remove(s);
    }
    let bad_sns: Vec<String> = sn_set.iter().filter(|s| !model::addr::is_hostname(s)).cloned().collect();
    for s in &bad_sns {
        m.issue(Severity::Error, "noderes", s.clone(), format!("service node name `{s}` is not a valid host name"));
        sn_set.remove(s);
    }
    for n in &all_nodes {
        if sn_set.contains(n) {
            continue;
        }
        let hidden = m.db.table("nodelist").and_then(|t| m.db.row("nodelist", n).and_then(|r| t.get(r, "hidden")));
        if matches!(hidden, Some("1") | Some("yes")) {
            m.issue(Severity::Skipped, "nodelist", n.clone(), "hidden node (hardware control point)");
            continue;
        }
        let Some(list) = sn_lists.get(n) else {
            m.issue(Severity::Skipped, "noderes", n.clone(), "no servicenode: the node is served by the MN directly");
            continue;
        };
        let list: Vec<String> = list.iter().filter(|s| sn_set.contains(*s)).cloned().collect();
        if list.is_empty() {
            m.issue(Severity::Error, "noderes", n.clone(), "none of its service nodes could be mapped");
            continue;
        }
        if !model::addr::is_hostname(n) {
            m.issue(Severity::Error, "nodelist", n.clone(), "not a valid host name");
            continue;
        }
        nodes.push(N { name: n.clone(), sns: list });
    }
    let mut sn_names: Vec<String> = sn_set.into_iter().collect();
    sn_names.sort_by(|a, b| natural_cmp(a, b));

    // --- each SN's address as its nodes see it: noderes.xcatmaster of the nodes it serves first.
    let mut addresses: BTreeMap<String, String> = BTreeMap::new();
    let mut xcatmaster_of: BTreeMap<String, String> = BTreeMap::new();
    let mut candidates: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for n in &nodes {
        if let Some(x) = m.attr("noderes", &n.name, "xcatmaster") {
            xcatmaster_of.insert(n.name.clone(), x.clone());
            candidates.entry(n.sns[0].clone()).or_default().entry(x).or_default().push(n.name.clone());
        }
    }
    for s in &sn_names {
        let chosen = candidates.get(s).and_then(|c| {
            let mut v: Vec<(&String, &Vec<String>)> = c.iter().collect();
            v.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| natural_cmp(a.0, b.0)));
            v.first().map(|(a, _)| (*a).clone())
        });
        let minority: Vec<(String, Vec<String>)> = candidates
            .get(s)
            .map(|c| {
                c.iter().filter(|(a, _)| Some(*a) != chosen.as_ref()).map(|(a, n)| (a.clone(), n.clone())).collect()
            })
            .unwrap_or_default();
        for (a, ns) in minority {
            m.issue(
                Severity::Warning,
                "noderes",
                ns.join(","),
                format!(
                    "xcatmaster `{a}` differs from the address most nodes of {s} use (`{}`); the config uses the latter",
                    chosen.as_deref().unwrap_or("")
                ),
            );
        }
        let addr = match chosen {
            Some(a) if is_ip(&a) => a,
            Some(a) => match m.hosts_ip(&a) {
                Some(ip) => ip,
                None => a,
            },
            None => match m.hosts_ip(s) {
                Some(ip) => {
                    m.issue(
                        Severity::Warning,
                        "noderes",
                        s.clone(),
                        format!("no node gives its xcatmaster; address `{ip}` from the hosts table"),
                    );
                    ip
                }
                None => {
                    m.issue(
                        Severity::Warning,
                        "noderes",
                        s.clone(),
                        "no node gives its xcatmaster and the hosts table has no IP; its name is used as address",
                    );
                    s.clone()
                }
            },
        };
        addresses.insert(s.clone(), addr);
    }
    // The names and addresses by which a server may be written: the SN name, its address, its hosts IP.
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    for s in &sn_names {
        aliases.insert(s.clone(), s.clone());
        if let Some(a) = addresses.get(s) {
            aliases.entry(a.clone()).or_insert_with(|| s.clone());
        }
        if let Some(ip) = m.hosts_ip(s) {
            aliases.entry(ip).or_insert_with(|| s.clone());
        }
    }
    // nfsserver (then tftpserver) overrides where a node mounts from.
    for n in &nodes {
        let mut nfs = m.attr("noderes", &n.name, "nfsserver");
        if nfs.is_none() {
            nfs = m.attr("noderes", &n.name, "tftpserver");
        }
        let Some(f) = nfs else { continue };
        if Some(&f) == xcatmaster_of.get(&n.name) {
            continue;
        }
        let owner = aliases.get(&f).cloned().or_else(|| m.hosts_ip(&f).and_then(|ip| aliases.get(&ip).cloned()));
        match owner {
            Some(o) if o == n.sns[0] => {}
            Some(o) => m.issue(
                Severity::Warning,
                "noderes",
                n.name.clone(),
                format!("nfsserver `{f}` is service node {o}, not its primary {}", n.sns[0]),
            ),
            None => m.issue(
                Severity::Error,
                "noderes",
                n.name.clone(),
                format!(
                    "nfsserver `{f}` is not a service node (an external NFS server?); add it as [[external]] by hand"
                ),
            ),
        }
    }

    // --- dialect: AIX when the SN or its nodes run a NIM image (noderes.current_osimage / next_osimage).
    let aix_images = aix_images(tables);
    let mut node_images: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in all_nodes.iter() {
        let mut v = Vec::new();
        for col in ["current_osimage", "next_osimage"] {
            if let Some(i) = m.attr("noderes", n, col) {
                if !v.contains(&i) {
                    v.push(i);
                }
            }
        }
        node_images.insert(n.clone(), v);
    }
    let mut sn_out = Vec::new();
    for s in &sn_names {
        let served: Vec<&N> = nodes.iter().filter(|n| &n.sns[0] == s).collect();
        let aix = std::iter::once(s.as_str())
            .chain(served.iter().map(|n| n.name.as_str()))
            .any(|n| node_images.get(n).is_some_and(|is| is.iter().any(|i| aix_images.contains(i))));
        let address = addresses.get(s).cloned().unwrap_or_else(|| s.clone());
        let mut dialect = if aix { "aix" } else { "linux" };
        if aix && !is_ip(&address) {
            m.issue(Severity::Error, "noderes", s.clone(), format!("AIX service node address `{address}` is not an IP (AIX replica lists take IPs) and the hosts table has none; written as dialect linux, fix by hand"));
            dialect = "linux";
        }
        if aix && domain.is_none() {
            m.issue(
                Severity::Error,
                "site",
                "domain",
                format!(
                    "AIX service node {s} needs an NFSv4 domain (site.domain); written as dialect linux, fix by hand"
                ),
            );
            dialect = "linux";
        }
        // Backups: the second SN its nodes list, most common first.
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for n in &served {
            if let Some(b) = n.sns.get(1) {
                *counts.entry(b.clone()).or_default() += 1;
            }
        }
        let mut backups: Vec<(String, usize)> = counts.into_iter().collect();
        backups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| natural_cmp(&a.0, &b.0)));
        let backups: Vec<String> = backups.into_iter().map(|(b, _)| b).collect();
        if backups.is_empty() && !served.is_empty() {
            m.issue(
                Severity::Warning,
                "noderes",
                s.clone(),
                "no node names a backup after this SN in servicenode: it gets no backups",
            );
        }
        sn_out.push(SnOut { name: s.clone(), address, dialect: dialect.to_string(), backups });
    }
    let aix_sns: Vec<String> = sn_out.iter().filter(|s| s.dialect == "aix").map(|s| s.name.clone()).collect();
    let linux_sns: Vec<String> = sn_out.iter().filter(|s| s.dialect == "linux").map(|s| s.name.clone()).collect();

    // --- images.
    let mut images: Vec<ImageOut> = Vec::new();
    let mut by_path: BTreeMap<String, String> = BTreeMap::new();
    let prefix = format!("{installdir}/");
    let image_users = |img: &str| -> Vec<String> {
        let mut v: Vec<String> = nodes
            .iter()
            .filter(|n| node_images.get(&n.name).is_some_and(|is| is.iter().any(|i| i == img)))
            .map(|n| n.sns[0].clone())
            .collect();
        v.sort_by(|a, b| natural_cmp(a, b));
        v.dedup();
        v
    };
    let all_count = sn_names.len();
    let pick_sns = |users: Vec<String>, same_dialect: &Vec<String>| -> Option<Vec<String>> {
        let v = if users.is_empty() { same_dialect.clone() } else { users };
        if v.is_empty() || v.len() == all_count {
            None
        } else {
            Some(v)
        }
    };
    fn add_image(
        m: &mut Mapper<'_>,
        images: &mut Vec<ImageOut>,
        by_path: &mut BTreeMap<String, String>,
        img: ImageOut,
        table: &str,
        row: &str,
    ) {
        // The name becomes a directory in hanfs' state: one safe path component, or the row is not mapped.
        if let Err(e) = model::check_name(&img.name) {
            m.issue(Severity::Error, table, row.to_string(), format!("image name: {e}"));
            return;
        }
        if let Some(other) = by_path.get(&img.path) {
            if other != &img.name {
                m.issue(Severity::Skipped, table, row.to_string(), format!("`{}` is already image {other}", img.path));
            }
            return;
        }
        by_path.insert(img.path.clone(), img.name.clone());
        images.push(img);
    }
    let osimage_rows: Vec<(String, String)> = tables
        .get("osimage")
        .map(|t| {
            t.enabled_rows()
                .filter_map(|r| t.get(r, "imagename").map(|n| (n.to_string(), r.location.clone())))
                .collect()
        })
        .unwrap_or_default();
    let mut osimages: Vec<(String, String)> = osimage_rows;
    osimages.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    let img_row = |table: &str, name: &str| -> Option<(usize, &crate::table::Table)> {
        let t = tables.get(table)?;
        t.rows
            .iter()
            .position(|r| !crate::table::is_disabled(t.get(r, "disable")) && t.get(r, "imagename") == Some(name))
            .map(|i| (i, t))
    };
    let osimage_names: BTreeSet<String> = osimages.iter().map(|(n, _)| n.clone()).collect();
    for (name, loc) in &osimages {
        let rowname = format!("{name} ({loc})");
        let os = img_row("osimage", name);
        let oget = |c: &str| os.and_then(|(i, t)| t.get(&t.rows[i], c)).map(str::to_string);
        let nim = img_row("nimimage", name);
        let lin = img_row("linuximage", name);
        let is_nim = nim.is_some() || oget("imagetype").is_some_and(|t| t.eq_ignore_ascii_case("nim"));
        if is_nim {
            let Some((i, t)) = nim else {
                m.issue(Severity::Error, "nimimage", name.clone(), "osimage says NIM but there is no nimimage row");
                continue;
            };
            let r = &t.rows[i];
            let users = image_users(name);
            for col in NIM_TREES {
                let Some(v) = t.get(r, col).filter(|v| !v.is_empty()) else { continue };
                if v.contains(',') || v.contains('/') || !model::addr::is_hostname(&v.replace('_', "-")) {
                    m.issue(
                        Severity::Error,
                        "nimimage",
                        format!("{name} ({})", r.location),
                        format!("{col} `{v}` is not a single NIM resource name"),
                    );
                    continue;
                }
                let img = ImageOut {
                    name: v.to_string(),
                    path: format!("nim/{col}/{v}"),
                    exclude: vec!["**/.client_data".to_string()],
                    sns: pick_sns(users.clone(), &aix_sns),
                };
                add_image(&mut m, &mut images, &mut by_path, img, "nimimage", &format!("{name} ({})", r.location));
            }
            for col in NIM_NEVER {
                if let Some(v) = t.get(r, col).filter(|v| !v.is_empty()) {
                    m.issue(
                        Severity::Skipped,
                        "nimimage",
                        format!("{name} ({})", r.location),
                        format!("{col} `{v}` is per node and never replicated"),
                    );
                }
            }
            for col in NIM_FILES {
                if let Some(v) = t.get(r, col).filter(|v| !v.is_empty()) {
                    m.issue(
                        Severity::Skipped,
                        "nimimage",
                        format!("{name} ({})", r.location),
                        format!("{col} `{v}` is a file resource, not a tree: not replicated"),
                    );
                }
            }
            continue;
        }
        let provmethod = oget("provmethod").unwrap_or_default();
        if !matches!(provmethod.as_str(), "netboot" | "statelite") {
            m.issue(
                Severity::Skipped,
                "osimage",
                rowname,
                format!("provmethod `{provmethod}`: not a diskless image, no rootimg to replicate"),
            );
            continue;
        }
        let rootimgdir =
            lin.and_then(|(i, t)| t.get(&t.rows[i], "rootimgdir").filter(|v| !v.is_empty()).map(str::to_string));
        let dir = match rootimgdir {
            Some(d) => d,
            None => match (oget("osvers"), oget("osarch"), oget("profile")) {
                (Some(v), Some(a), Some(p)) => {
                    let d = format!("{installdir}/netboot/{v}/{a}/{p}");
                    m.issue(
                        Severity::Warning,
                        "linuximage",
                        name.clone(),
                        format!("no rootimgdir; xCAT's default `{d}` assumed"),
                    );
                    d
                }
                _ => {
                    m.issue(
                        Severity::Error,
                        "linuximage",
                        rowname,
                        "no rootimgdir and no osvers/osarch/profile to derive it",
                    );
                    continue;
                }
            },
        };
        let root = format!("{}/rootimg", dir.trim_end_matches('/'));
        let Some(rel) = root.strip_prefix(&prefix) else {
            m.issue(
                Severity::Error,
                "linuximage",
                rowname,
                format!("rootimg `{root}` lies outside installdir `{installdir}`"),
            );
            continue;
        };
        if let Err(e) = model::RelPath::parse(rel) {
            m.issue(Severity::Error, "linuximage", rowname, format!("rootimg `{root}`: {e}"));
            continue;
        }
        let img = ImageOut {
            name: name.clone(),
            path: rel.to_string(),
            exclude: Vec::new(),
            sns: pick_sns(image_users(name), &linux_sns),
        };
        add_image(&mut m, &mut images, &mut by_path, img, "linuximage", &rowname);
    }
    for table in ["linuximage", "nimimage"] {
        if let Some(t) = tables.get(table) {
            for r in t.enabled_rows() {
                if let Some(n) = t.get(r, "imagename") {
                    if !osimage_names.contains(n) {
                        m.issue(
                            Severity::Error,
                            table,
                            format!("{n} ({})", r.location),
                            "no enabled osimage row of that name",
                        );
                    }
                }
            }
        }
    }

    // --- statelite: statemnt per node; the server tells which SN holds the node's persistent data.
    let lookups = |m: &mut Mapper<'_>, node: &str, value: &str| -> Result<(String, String), rules::RuleError> {
        let mut errs = Vec::new();
        let db = &m.db;
        let r = rules::resolve_server_dir(value, node, &mut |t: &str, c: &str| {
            if t == "site" {
                return db.site(c).map(str::to_string);
            }
            db.attr_or_report(t, node, c, &mut |e| errs.push(e.clone()))
        });
        for e in errs {
            m.issue(Severity::Error, "statelite", node.to_string(), format!("{}", e.error));
        }
        r
    };
    let mut statelite_dirs: BTreeMap<String, String> = BTreeMap::new();
    let mut served_by: BTreeMap<String, String> = BTreeMap::new();
    for n in &nodes {
        let Some(f) = m.db.raw("statelite", &n.name, "statemnt") else { continue };
        let row = format!("{} ({})", f.from, f.location);
        let value = match rules::trans_regex(&n.name, &f.raw) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                m.issue(Severity::Error, "statelite", row, format!("statemnt `{}` for {}: {e}", f.raw, n.name));
                continue;
            }
        };
        if f.raw.contains("$node") && rules::split_server_dir(&f.raw).1.contains("$node") {
            m.issue(
                Severity::Error,
                "statelite",
                row,
                format!("statemnt `{}` puts $node in the directory; hanfs keeps <dir>/<node> itself", f.raw),
            );
            continue;
        }
        let (server, dir) = match lookups(&mut m, &n.name, &value) {
            Ok(x) => x,
            Err(e) => {
                m.issue(Severity::Error, "statelite", row, format!("statemnt `{value}` for {}: {e}", n.name));
                continue;
            }
        };
        let dir = dir.trim_end_matches('/').to_string();
        if !dir.starts_with('/') || dir.is_empty() || dir.contains("UNDEFINED") {
            m.issue(
                Severity::Error,
                "statelite",
                row,
                format!("statemnt `{value}` gives directory `{dir}` for {}", n.name),
            );
            continue;
        }
        let owner = if server.is_empty() {
            None
        } else if Some(&server) == xcatmaster_of.get(&n.name) {
            Some(n.sns[0].clone())
        } else {
            aliases.get(&server).cloned().or_else(|| m.hosts_ip(&server).and_then(|ip| aliases.get(&ip).cloned()))
        };
        let Some(owner) = owner else {
            m.issue(Severity::Error, "statelite", row, format!("{}'s persistent data is on `{server}`, not a service node (the MN or an external server): hanfs does not serve it", n.name));
            continue;
        };
        if !n.sns.contains(&owner) {
            m.issue(
                Severity::Error,
                "statelite",
                row,
                format!(
                    "{}'s persistent data is on {owner}, which is not in its servicenode list {}",
                    n.name,
                    n.sns.join(",")
                ),
            );
            continue;
        }
        if owner != n.sns[0] {
            served_by.insert(n.name.clone(), owner);
        }
        let len = statelite_dirs.len();
        statelite_dirs.entry(dir).or_insert_with(|| format!("{len}"));
    }
    let mut statelite = Vec::new();
    let mut used = BTreeSet::new();
    for dir in statelite_dirs.keys() {
        let base: String = dir
            .rsplit('/')
            .next()
            .unwrap_or("statelite")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
            .collect();
        let mut name = if base.is_empty() { "statelite".to_string() } else { base };
        let mut k = 2;
        while !used.insert(name.clone()) {
            name = format!("{}-{k}", name.trim_end_matches(char::is_numeric).trim_end_matches('-'));
            k += 1;
        }
        statelite.push(StateliteOut { name, path: dir.clone(), clients: "*".into() });
    }

    // --- litetree: a directory on the node's SN under installdir must be replicated like an image.
    if let Some(t) = tables.get("litetree") {
        let mut rows: Vec<(String, String, String)> = t
            .enabled_rows()
            .filter_map(|r| {
                Some((t.get(r, "priority")?.to_string(), t.get(r, "directory")?.to_string(), r.location.clone()))
            })
            .collect();
        rows.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        for (prio, value, loc) in rows {
            let row = format!("{prio} ({loc})");
            let mut paths = BTreeSet::new();
            let mut on_sn = true;
            let mut failed = None;
            for n in &nodes {
                match lookups(&mut m, &n.name, &value) {
                    Ok((server, dir)) => {
                        let owner = if Some(&server) == xcatmaster_of.get(&n.name) {
                            Some(n.sns[0].clone())
                        } else {
                            aliases.get(&server).cloned()
                        };
                        on_sn &= owner.is_some();
                        paths.insert(dir.trim_end_matches('/').to_string());
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                m.issue(Severity::Error, "litetree", row, format!("directory `{value}`: {e}"));
                continue;
            }
            if !on_sn {
                m.issue(
                    Severity::Skipped,
                    "litetree",
                    row,
                    format!("directory `{value}` is not on the nodes' service node: nothing to replicate"),
                );
                continue;
            }
            if paths.len() != 1 {
                m.issue(
                    Severity::Error,
                    "litetree",
                    row,
                    format!("directory `{value}` differs per node ({} paths): not replicated", paths.len()),
                );
                continue;
            }
            let Some(path) = paths.into_iter().next() else { continue };
            let Some(rel) = path.strip_prefix(&prefix).map(str::to_string) else {
                m.issue(
                    Severity::Error,
                    "litetree",
                    row,
                    format!("directory `{path}` lies outside installdir `{installdir}`"),
                );
                continue;
            };
            if let Some(img) = images.iter().find(|i| rel == i.path || rel.starts_with(&format!("{}/", i.path))) {
                m.issue(Severity::Skipped, "litetree", row, format!("`{path}` is inside image {}", img.name));
                continue;
            }
            if model::RelPath::parse(&rel).is_err() {
                m.issue(Severity::Error, "litetree", row, format!("directory `{path}` is not a usable path"));
                continue;
            }
            let img = ImageOut { name: format!("litetree-{prio}"), path: rel, exclude: Vec::new(), sns: None };
            add_image(&mut m, &mut images, &mut by_path, img, "litetree", &row);
        }
    }
    // litefile rows must name an image (or ALL).
    if let Some(t) = tables.get("litefile") {
        let bad: Vec<(String, String)> = t
            .enabled_rows()
            .filter_map(|r| {
                let img = t.get(r, "image")?;
                (img != "ALL" && !osimage_names.contains(img)).then(|| (img.to_string(), r.location.clone()))
            })
            .collect();
        for (img, loc) in bad {
            m.issue(Severity::Warning, "litefile", format!("{img} ({loc})"), "names no enabled osimage");
        }
    }

    let node_out: Vec<NodeOut> = nodes
        .iter()
        .map(|n| NodeOut { name: n.name.clone(), sns: n.sns.clone(), served_by: served_by.get(&n.name).cloned() })
        .collect();
    if node_out.is_empty() {
        m.issue(Severity::Error, "noderes", "*", "no node has a service node: nothing for hanfs to serve");
    }
    let config = Config {
        cluster: ClusterOut {
            source_root: installdir,
            state_dir: "/var/lib/hanfs".into(),
            backups: "none".into(),
            domain,
        },
        tls: TlsOut {
            ca: "/etc/hanfs/ca.pem".into(),
            cert: "/etc/hanfs/mn.pem".into(),
            key: "/etc/hanfs/mn.key".into(),
        },
        sn: sn_out,
        image: images,
        statelite,
        node: node_out,
    };
    let mut report = m.report;
    report.sort_by(|a, b| {
        b.severity.cmp(&a.severity).then_with(|| a.table.cmp(&b.table)).then_with(|| natural_cmp(&a.row, &b.row))
    });
    report.dedup();
    Import { config, report, source: tables.source.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["cn10", "cn2", "sn1", "cn002", "cn1"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["cn1", "cn2", "cn002", "cn10", "sn1"]);
    }
}
