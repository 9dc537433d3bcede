//! From xCAT's tables to a hanfs cluster config (contract.md), pure. Everything that cannot be
//! mapped is reported with its table, row and reason instead of being dropped.
//!
//! Row order differs between back ends (PostgreSQL keeps insertion order, MariaDB the primary key's),
//! so nothing here depends on it: nodes, SNs and images are put in natural name order.

use crate::db::{AttrError, Db};
use crate::rules;
use crate::table::Tables;
use model::config::{sp, Clients, ClusterSection, ConfigFile, ImageSection, NodeSection, SnSection, StateliteSection};
use model::{Dialect, TlsFiles};
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

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Import {
    /// The config as written, in model's schema.
    pub config: ConfigFile,
    pub report: Vec<Issue>,
    /// Where the tables came from.
    pub source: String,
}

impl Import {
    /// The config as TOML, with a header comment naming the source and summing up the report.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let body = self.config.to_toml()?;
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

/// A list of names as the schema holds them (no place in a file).
fn texts(v: Vec<String>) -> Vec<model::config::Text> {
    v.into_iter().map(sp).collect()
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

/// NIM resource trees under `<installdir>/nim/<type>/<name>` that xCAT copies to SNs: doSNcopy2's
/// `@dorestypes` (xCAT-server/lib/xcat/plugins/aixinstall.pm:9796-9801), lpp_source only for
/// standalone images (aixinstall.pm:9776-9780).
const NIM_TREES: &[&str] = &["spot", "lpp_source", "resolv_conf", "mksysb"];
/// NIM resources xCAT never copies: per-client read-write ones, and shared_root, which NIM makes on
/// each SN from the spot (not in doSNcopy2's list).
const NIM_NEVER: &[&str] = &["root", "tmp", "home", "shared_home", "paging", "dump", "shared_root"];
/// NIM resources that are single files or lists, not trees.
const NIM_FILES: &[&str] = &["script", "bosinst_data", "installp_bundle", "fb_script", "image_data", "res_group"];

/// The system resolver (DNS, /etc/hosts) as xCAT's `NetworkUtils::getipaddr` falls back to it.
pub type Resolver<'r> = &'r dyn Fn(&str) -> Option<std::net::IpAddr>;

/// `getaddrinfo` through the standard library: what `getipaddr` does after the hosts table.
pub fn system_resolver(name: &str) -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let mut v: Vec<std::net::IpAddr> = (name, 0u16).to_socket_addrs().ok()?.map(|a| a.ip()).collect();
    // IPv4 first, as getipaddr returns the first address and clusters number nodes in IPv4.
    v.sort_by_key(|ip| !ip.is_ipv4());
    v.into_iter().next()
}

struct Mapper<'a, 'r> {
    db: Db<'a>,
    report: Vec<Issue>,
    resolver: Resolver<'r>,
}

impl Mapper<'_, '_> {
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

    /// Every (name, IP) the hosts table defines, as `makehosts` writes them to /etc/hosts
    /// (xCAT-server/lib/xcat/plugins/hosts.pm:600-650): each node's `ip` under its name and its
    /// `hostnames`, and each `otherinterfaces` pair (hosts.pm:284-316: `name:IP` or `name!IP`,
    /// comma-separated; a name starting with `-` is appended to the node's name).
    fn host_entries(&mut self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        if self.db.table("hosts").is_none() {
            return out;
        }
        let nodes: Vec<String> = self.db.nodes.iter().map(|(n, _)| n.clone()).collect();
        for n in nodes {
            if let Some(ip) = self.attr("hosts", &n, "ip").filter(|ip| is_ip(ip)) {
                out.push((n.clone(), ip.clone(), n.clone()));
                for alias in self.attr("hosts", &n, "hostnames").unwrap_or_default().split([',', ' ']) {
                    if !alias.is_empty() {
                        out.push((alias.to_string(), ip.clone(), n.clone()));
                    }
                }
            }
            for pair in self.attr("hosts", &n, "otherinterfaces").unwrap_or_default().split(',') {
                let (itf, ip) = if pair.contains('!') {
                    pair.split_once('!').unwrap_or((pair, ""))
                } else {
                    pair.split_once(':').unwrap_or((pair, ""))
                };
                let ip = ip.split(':').next().unwrap_or("").trim();
                if itf.is_empty() || !is_ip(ip) {
                    continue;
                }
                let name = if itf.starts_with('-') { format!("{n}{itf}") } else { itf.trim().to_string() };
                out.push((name, ip.to_string(), n.clone()));
            }
        }
        out
    }

    /// A name as xCAT resolves it: an IP is itself; then the hosts table (`ip`, `hostnames`,
    /// `otherinterfaces`, as makehosts puts them in /etc/hosts); then the system resolver
    /// (`NetworkUtils::getipaddr`, perl-xCAT/xCAT/NetworkUtils.pm:246).
    fn resolve(&mut self, entries: &[(String, String, String)], name: &str) -> Option<String> {
        if is_ip(name) {
            return Some(name.to_string());
        }
        if let Some((_, ip, _)) = entries.iter().find(|(n, _, _)| n == name) {
            return Some(ip.clone());
        }
        (self.resolver)(name).map(|ip| ip.to_string())
    }
}

/// The enabled `networks` rows as (net, mask) pairs of IPv4 numbers.
fn networks(tables: &Tables) -> Vec<(String, u32, u32)> {
    let Some(t) = tables.get("networks") else { return Vec::new() };
    t.enabled_rows()
        .filter_map(|r| {
            let net: std::net::Ipv4Addr = t.get(r, "net")?.trim().parse().ok()?;
            let mask: std::net::Ipv4Addr = t.get(r, "mask")?.trim().trim_start_matches('/').parse().ok()?;
            let name = t.get(r, "netname").unwrap_or("?").to_string();
            Some((name, u32::from(net), u32::from(mask)))
        })
        .collect()
}

/// `NetworkUtils::ishostinsubnet` for IPv4: whether `ip` lies in `net`/`mask`.
fn in_net(ip: &str, net: u32, mask: u32) -> bool {
    ip.parse::<std::net::Ipv4Addr>().is_ok_and(|a| u32::from(a) & mask == net & mask)
}

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

/// The interface of `sn` inside `node`'s network (`networks` table), from the hosts table as
/// makehosts writes it: what snmove makes the new xcatmaster when the node has none of its own
/// (snmove.pm:394-422, `ishostinsubnet` of the SN's interfaces and the node's network). `None` when
/// the node is in no network or the SN has no interface there.
pub(crate) fn sn_interface_for(tables: &Tables, node: &str, sn: &str, resolver: Resolver<'_>) -> Option<String> {
    let mut m = Mapper { db: Db::new(tables), report: Vec::new(), resolver };
    let entries = m.host_entries();
    let node_ip = m.resolve(&entries, node)?;
    let (_, net, mask) = networks(tables).into_iter().find(|(_, net, mask)| in_net(&node_ip, *net, *mask))?;
    let mut ips: Vec<String> =
        entries.iter().filter(|(_, _, owner)| owner == sn).map(|(_, ip, _)| ip.clone()).collect();
    if let Some(ip) = m.resolve(&entries, sn) {
        ips.push(ip);
    }
    ips.into_iter().find(|ip| in_net(ip, net, mask))
}

/// Map tables to a config and a report.
pub fn import(tables: &Tables) -> Import {
    import_with(tables, &system_resolver)
}

// ---------------------------------------------------------------------------------------------
// The import, phase by phase. Each phase reads what the earlier ones found and reports what it
// cannot map; the order is the order of `import_with`.

/// A node hanfs serves, with its usable service nodes (primary first).
struct N {
    name: String,
    sns: Vec<String>,
}

/// `site` values every phase needs.
struct Site {
    /// `site.installdir` without a trailing `/` (default `/install`).
    installdir: String,
    /// `<installdir>/`, to make paths relative to it.
    prefix: String,
    /// `site.domain` when it is a valid NFSv4 domain.
    domain: Option<String>,
}

/// The service nodes and the nodes they serve.
struct Topology {
    /// Every node, in natural order.
    all_nodes: Vec<String>,
    /// `noderes.servicenode` of each node that has one, duplicates removed.
    sn_lists: BTreeMap<String, Vec<String>>,
    /// The nodes hanfs serves.
    nodes: Vec<N>,
    /// The service nodes, in natural order.
    sn_names: Vec<String>,
}

/// How nodes reach their service nodes.
struct Addressing {
    /// Each SN's address as its nodes see it.
    addresses: BTreeMap<String, String>,
    /// `noderes.xcatmaster` of the nodes that set it.
    xcatmaster_of: BTreeMap<String, String>,
    /// Every name and address an SN may be written as -> the SN.
    aliases: BTreeMap<String, String>,
}

/// Which osimages each node boots and which nodes are AIX.
struct Os {
    node_images: BTreeMap<String, Vec<String>>,
    node_aix: BTreeSet<String>,
}

/// The images mapped so far; paths are unique.
#[derive(Default)]
struct Images {
    list: Vec<ImageSection>,
    by_path: BTreeMap<String, String>,
}

/// The statelite areas and who keeps data where.
struct StateliteMap {
    areas: Vec<StateliteSection>,
    /// Directory -> area name.
    area_name: BTreeMap<String, String>,
    /// Nodes whose data is on an SN other than their primary.
    served_by: BTreeMap<String, String>,
    /// Each node's statelite directories (one per statelite row that applies to it).
    node_dirs: BTreeMap<String, Vec<String>>,
}

impl Mapper<'_, '_> {
    /// Disabled rows are skipped, as xCAT skips them (Table.pm's `disable is NULL or disable in
    /// ('0','no',...)`); each one is reported.
    fn report_disabled(&mut self, tables: &Tables) {
        for t in tables.tables.values() {
            let key = crate::table::spec(&t.name).and_then(|s| s.keys.first().copied()).unwrap_or("node");
            let rows: Vec<(String, String)> =
                t.disabled_rows().map(|r| (t.get(r, key).unwrap_or("?").to_string(), r.location.clone())).collect();
            for (k, loc) in rows {
                self.issue(Severity::Skipped, &t.name, format!("{k} ({loc})"), "row is disabled");
            }
        }
    }

    /// `site.installdir` (xCAT's default `/install`, TableUtils `getInstallDir`) and `site.domain`,
    /// which must be a valid NFSv4 domain to be written.
    fn read_site(&mut self) -> Site {
        let installdir = self.db.site("installdir").unwrap_or("/install").trim_end_matches('/').to_string();
        let installdir = if installdir.is_empty() { "/install".to_string() } else { installdir };
        let domain = self.db.site("domain").map(str::to_string);
        if let Some(d) = &domain {
            if !model::addr::is_hostname(d) {
                self.issue(Severity::Warning, "site", "domain", format!("`{d}` is not a valid NFSv4 domain; left out"));
            }
        }
        let domain = domain.filter(|d| model::addr::is_hostname(d));
        let prefix = format!("{installdir}/");
        Site { installdir, prefix, domain }
    }

    /// The SNs the `servicenode` table names; a row may name a group, which stands for its members.
    fn servicenode_rows(&mut self, tables: &Tables) -> BTreeSet<String> {
        let mut sn_set: BTreeSet<String> = BTreeSet::new();
        let Some(t) = tables.get("servicenode") else { return sn_set };
        let keys: Vec<(String, String)> =
            t.enabled_rows().filter_map(|r| t.get(r, "node").map(|k| (k.to_string(), r.location.clone()))).collect();
        for (k, loc) in keys {
            if self.db.is_node(&k) {
                sn_set.insert(k);
            } else {
                let members: Vec<String> =
                    self.db.nodes.iter().filter(|(_, g)| g.contains(&k)).map(|(n, _)| n.clone()).collect();
                if members.is_empty() {
                    self.issue(
                        Severity::Warning,
                        "servicenode",
                        format!("{k} ({loc})"),
                        "neither a node nor a group with members",
                    );
                }
                sn_set.extend(members);
            }
        }
        sn_set
    }

    /// Every node's `noderes.servicenode` list (duplicates removed); each name in one is an SN.
    fn servicenode_lists(
        &mut self,
        all_nodes: &[String],
        sn_set: &mut BTreeSet<String>,
    ) -> BTreeMap<String, Vec<String>> {
        let mut sn_lists: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in all_nodes {
            if let Some(list) = self.attr("noderes", n, "servicenode") {
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
        sn_lists
    }

    /// The MN is the source, never a service node: `site.master`, members of `__mgmtnode` and their
    /// IPs leave the SN set; so do names that are no host names.
    fn drop_non_sns(&mut self, sn_set: &mut BTreeSet<String>, sn_lists: &BTreeMap<String, Vec<String>>) {
        let mut mn_names: BTreeSet<String> = BTreeSet::new();
        if let Some(master) = self.db.site("master") {
            mn_names.insert(master.to_string());
        }
        let mgmt: Vec<String> =
            self.db.nodes.iter().filter(|(_, g)| g.iter().any(|g| g == "__mgmtnode")).map(|(n, _)| n.clone()).collect();
        for n in mgmt {
            if let Some(ip) = self.hosts_ip(&n) {
                mn_names.insert(ip);
            }
            mn_names.insert(n);
        }
        let mn_in_lists: Vec<String> = sn_set.iter().filter(|s| mn_names.contains(*s)).cloned().collect();
        for s in &mn_in_lists {
            let users: Vec<String> = sn_lists.iter().filter(|(_, l)| l.contains(s)).map(|(n, _)| n.clone()).collect();
            self.issue(
                Severity::Error,
                "noderes",
                users.join(","),
                format!("servicenode names the management node `{s}`: the MN is hanfs's source, not a replica; left out of their lists"),
            );
            sn_set.remove(s);
        }
        let bad_sns: Vec<String> = sn_set.iter().filter(|s| !model::addr::is_hostname(s)).cloned().collect();
        for s in &bad_sns {
            self.issue(
                Severity::Error,
                "noderes",
                s.clone(),
                format!("service node name `{s}` is not a valid host name"),
            );
            sn_set.remove(s);
        }
    }

    /// The nodes hanfs serves: not SNs, not hidden, with at least one usable SN and a valid name.
    fn served_nodes(
        &mut self,
        all_nodes: &[String],
        sn_set: &BTreeSet<String>,
        sn_lists: &BTreeMap<String, Vec<String>>,
    ) -> Vec<N> {
        let mut nodes: Vec<N> = Vec::new();
        for n in all_nodes {
            if sn_set.contains(n) {
                continue;
            }
            let hidden =
                self.db.table("nodelist").and_then(|t| self.db.row("nodelist", n).and_then(|r| t.get(r, "hidden")));
            if matches!(hidden, Some("1") | Some("yes")) {
                self.issue(Severity::Skipped, "nodelist", n.clone(), "hidden node (hardware control point)");
                continue;
            }
            let Some(list) = sn_lists.get(n) else {
                self.issue(
                    Severity::Skipped,
                    "noderes",
                    n.clone(),
                    "no servicenode: the node is served by the MN directly",
                );
                continue;
            };
            let list: Vec<String> = list.iter().filter(|s| sn_set.contains(*s)).cloned().collect();
            if list.is_empty() {
                self.issue(Severity::Error, "noderes", n.clone(), "none of its service nodes could be mapped");
                continue;
            }
            if !model::addr::is_hostname(n) {
                self.issue(Severity::Error, "nodelist", n.clone(), "not a valid host name");
                continue;
            }
            nodes.push(N { name: n.clone(), sns: list });
        }
        nodes
    }

    /// Phase "read SNs": the SN set from the `servicenode` table and `noderes.servicenode`, and the
    /// nodes they serve.
    fn read_topology(&mut self, tables: &Tables) -> Topology {
        let mut sn_set = self.servicenode_rows(tables);
        let all_nodes: Vec<String> = {
            let mut v: Vec<String> = self.db.nodes.iter().map(|(n, _)| n.clone()).collect();
            v.sort_by(|a, b| natural_cmp(a, b));
            v
        };
        let sn_lists = self.servicenode_lists(&all_nodes, &mut sn_set);
        self.drop_non_sns(&mut sn_set, &sn_lists);
        let nodes = self.served_nodes(&all_nodes, &sn_set, &sn_lists);
        let mut sn_names: Vec<String> = sn_set.into_iter().collect();
        sn_names.sort_by(|a, b| natural_cmp(a, b));
        Topology { all_nodes, sn_lists, nodes, sn_names }
    }

    /// Phase "resolve names": each SN's address as its nodes see it. A node with
    /// `noderes.xcatmaster` reaches its SN there (anaconda.pm:573-610 resolves it to an IP for the
    /// initrd); a node of an SN pool (no xcatmaster) reaches the interface of its SN that lies in the
    /// node's network (snmove.pm:394-422: the SN interface `ishostinsubnet` of the node's `networks`
    /// row), never the SN's MN-facing address. Most nodes win; minorities are warnings.
    fn resolve_addresses(&mut self, tables: &Tables, topo: &Topology) -> Addressing {
        let entries = self.host_entries();
        let nets = networks(tables);
        let mut addresses: BTreeMap<String, String> = BTreeMap::new();
        let mut xcatmaster_of: BTreeMap<String, String> = BTreeMap::new();
        let mut candidates: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        let mut warned: BTreeSet<(String, String)> = BTreeSet::new();
        for n in &topo.nodes {
            let node_ip = self.resolve(&entries, &n.name);
            let net =
                node_ip.as_deref().and_then(|ip| nets.iter().find(|(_, net, mask)| in_net(ip, *net, *mask))).cloned();
            for (k, sn) in n.sns.iter().enumerate() {
                let x = if k == 0 { self.attr("noderes", &n.name, "xcatmaster") } else { None };
                let facing = if let Some(x) = x {
                    xcatmaster_of.insert(n.name.clone(), x.clone());
                    Some(self.resolve(&entries, &x).unwrap_or(x))
                } else if let Some((netname, net, mask)) = &net {
                    let mut sn_ips: Vec<String> =
                        entries.iter().filter(|(_, _, owner)| owner == sn).map(|(_, ip, _)| ip.clone()).collect();
                    if let Some(ip) = self.resolve(&entries, sn) {
                        sn_ips.push(ip);
                    }
                    let found = sn_ips.into_iter().find(|ip| in_net(ip, *net, *mask));
                    if found.is_none() && warned.insert((sn.clone(), netname.clone())) {
                        self.issue(
                            Severity::Warning,
                            "networks",
                            netname.clone(),
                            format!("{} is in network {netname} but its SN {sn} has no interface there (hosts.ip, hosts.otherinterfaces)", n.name),
                        );
                    }
                    found
                } else {
                    None
                };
                if let Some(a) = facing {
                    candidates.entry(sn.clone()).or_default().entry(a).or_default().push(n.name.clone());
                }
            }
        }
        for s in &topo.sn_names {
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
                self.issue(
                    Severity::Warning,
                    "noderes",
                    ns.join(","),
                    format!(
                        "these nodes reach {s} at `{a}`, most of its nodes at `{}`; the config uses the latter",
                        chosen.as_deref().unwrap_or("")
                    ),
                );
            }
            let addr = match chosen {
                Some(a) => a,
                None => match self.resolve(&entries, s) {
                    Some(ip) => {
                        self.issue(
                            Severity::Warning,
                            "noderes",
                            s.clone(),
                            format!(
                                "no node gives its xcatmaster or a network: address `{ip}` is how the MN resolves it"
                            ),
                        );
                        ip
                    }
                    None => {
                        self.issue(
                            Severity::Warning,
                            "noderes",
                            s.clone(),
                            "no node gives its xcatmaster and the name does not resolve; its name is used as address",
                        );
                        s.clone()
                    }
                },
            };
            addresses.insert(s.clone(), addr);
        }
        let aliases = self.sn_aliases(&topo.sn_names, &addresses, &entries);
        Addressing { addresses, xcatmaster_of, aliases }
    }

    /// The names and addresses by which a server may be written: the SN name, its address, its
    /// hosts IP, and every interface name and IP the hosts table gives it (otherinterfaces included).
    fn sn_aliases(
        &mut self,
        sn_names: &[String],
        addresses: &BTreeMap<String, String>,
        entries: &[(String, String, String)],
    ) -> BTreeMap<String, String> {
        let mut aliases: BTreeMap<String, String> = BTreeMap::new();
        for s in sn_names {
            aliases.insert(s.clone(), s.clone());
            if let Some(a) = addresses.get(s) {
                aliases.entry(a.clone()).or_insert_with(|| s.clone());
            }
            if let Some(ip) = self.hosts_ip(s) {
                aliases.entry(ip).or_insert_with(|| s.clone());
            }
        }
        for (name, ip, owner) in entries {
            if sn_names.contains(owner) {
                aliases.entry(name.clone()).or_insert_with(|| owner.clone());
                aliases.entry(ip.clone()).or_insert_with(|| owner.clone());
            }
        }
        aliases
    }

    /// `noderes.nfsserver` (then `tftpserver`) overrides where a node mounts from: one naming another
    /// SN is a warning, one naming no SN (an external NFS server) is not mapped.
    fn check_nfsservers(&mut self, topo: &Topology, addr: &Addressing) {
        for n in &topo.nodes {
            let mut nfs = self.attr("noderes", &n.name, "nfsserver");
            if nfs.is_none() {
                nfs = self.attr("noderes", &n.name, "tftpserver");
            }
            let Some(f) = nfs else { continue };
            // anaconda.pm:580-584: `<xcatmaster>` means "the xcatmaster", as if unset.
            if f == "<xcatmaster>" || Some(&f) == addr.xcatmaster_of.get(&n.name) {
                continue;
            }
            let owner = addr
                .aliases
                .get(&f)
                .cloned()
                .or_else(|| self.hosts_ip(&f).and_then(|ip| addr.aliases.get(&ip).cloned()));
            match owner {
                Some(o) if o == n.sns[0] => {}
                Some(o) => self.issue(
                    Severity::Warning,
                    "noderes",
                    n.name.clone(),
                    format!("nfsserver `{f}` is service node {o}, not its primary {}", n.sns[0]),
                ),
                None => self.issue(
                    Severity::Error,
                    "noderes",
                    n.name.clone(),
                    format!(
                        "nfsserver `{f}` is not a service node (an external NFS server?); add it as [[external]] by hand"
                    ),
                ),
            }
        }
    }

    /// Each node's osimage and OS: `nodetype.provmethod` names the osimage (anaconda.pm:276-281,
    /// snmove.pm:1812-1836); `install`/`netboot`/`statelite` there is the old style, whose image is
    /// `<os>-<arch>-<provmethod>-<profile>` (anaconda.pm:370-381). `noderes.current_osimage` and
    /// `next_osimage` are "Not currently used" (perl-xCAT/xCAT/Schema.pm:691-692) and not read.
    /// AIX: `nodetype.os` `AIX` (aixinstall.pm:1261 sets it for NIM nodes) or a NIM osimage.
    fn node_osimages(&mut self, tables: &Tables, topo: &Topology) -> Os {
        let aix_images = aix_images(tables);
        let osimage_names_all: BTreeSet<String> = tables
            .get("osimage")
            .map(|t| t.enabled_rows().filter_map(|r| t.get(r, "imagename").map(str::to_string)).collect())
            .unwrap_or_default();
        let mut node_images: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut node_aix: BTreeSet<String> = BTreeSet::new();
        for n in topo.all_nodes.iter() {
            let os = self.attr("nodetype", n, "os");
            let mut v = Vec::new();
            if let Some(p) = self.attr("nodetype", n, "provmethod") {
                let img = if matches!(p.as_str(), "install" | "netboot" | "statelite") {
                    let arch = self.attr("nodetype", n, "arch").unwrap_or_default();
                    let profile = self.attr("nodetype", n, "profile").unwrap_or_default();
                    format!("{}-{arch}-{p}-{profile}", os.as_deref().unwrap_or(""))
                } else {
                    p
                };
                if osimage_names_all.contains(&img) {
                    v.push(img);
                } else if topo.sn_lists.contains_key(n) {
                    self.issue(
                        Severity::Error,
                        "nodetype",
                        n.clone(),
                        format!("provmethod names osimage `{img}`, which has no enabled osimage row"),
                    );
                }
            }
            if os.as_deref().is_some_and(|o| o.to_ascii_lowercase().starts_with("aix"))
                || v.iter().any(|i| aix_images.contains(i))
            {
                node_aix.insert(n.clone());
            }
            node_images.insert(n.clone(), v);
        }
        Os { node_images, node_aix }
    }

    /// The `[[sn]]` entries: dialect (an AIX SN serves NIM clients, or its own nodetype says AIX),
    /// address, agent endpoint (the name the MN uses, `noderes.servicenode`), backups (the SN its
    /// nodes list second, most common first). An AIX SN is never written as Linux: one that cannot be
    /// written as AIX (no IP, no `site.domain`) is left out, reported.
    fn sn_entries(&mut self, topo: &Topology, addr: &Addressing, os: &Os, site: &Site) -> Vec<(SnSection, Dialect)> {
        let mut sn_out = Vec::new();
        for s in &topo.sn_names {
            let served: Vec<&N> = topo.nodes.iter().filter(|n| &n.sns[0] == s).collect();
            let aix = std::iter::once(s.as_str())
                .chain(served.iter().map(|n| n.name.as_str()))
                .any(|n| os.node_aix.contains(n));
            let address = addr.addresses.get(s).cloned().unwrap_or_else(|| s.clone());
            let dialect = if aix { Dialect::Aix } else { Dialect::Linux };
            if aix && !is_ip(&address) {
                self.issue(Severity::Error, "noderes", s.clone(), format!("AIX service node address `{address}` is not an IP (AIX replica lists take IPs) and does not resolve; the SN is left out, its nodes lose it"));
                continue;
            }
            if aix && site.domain.is_none() {
                self.issue(
                    Severity::Error,
                    "site",
                    "domain",
                    format!(
                        "AIX service node {s} needs an NFSv4 domain (site.domain); the SN is left out, its nodes lose it"
                    ),
                );
                continue;
            }
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
                self.issue(
                    Severity::Warning,
                    "noderes",
                    s.clone(),
                    "no node names a backup after this SN in servicenode: it gets no backups",
                );
            }
            let agent = format!("{s}:{}", model::cluster::DEFAULT_AGENT_PORT);
            sn_out.push((SnSection::new(s.clone(), address).agent(agent).dialect(dialect).backups(backups), dialect));
        }
        sn_out
    }

    /// Add an image unless its name is unusable or its path is already an image.
    fn add_image(&mut self, images: &mut Images, img: ImageSection, table: &str, row: &str) {
        // The name becomes a directory in hanfs' state: one safe path component, or the row is not mapped.
        if let Err(e) = model::check_name(img.name.get_ref()) {
            self.issue(Severity::Error, table, row.to_string(), format!("image name: {e}"));
            return;
        }
        if let Some(other) = images.by_path.get(img.path.get_ref()) {
            if other != img.name.get_ref() {
                self.issue(
                    Severity::Skipped,
                    table,
                    row.to_string(),
                    format!("`{}` is already image {other}", img.path),
                );
            }
            return;
        }
        images.by_path.insert(img.path.get_ref().clone(), img.name.get_ref().clone());
        images.list.push(img);
    }

    /// A NIM osimage: the resource trees xCAT copies to SNs (doSNcopy2), each an image; per-client
    /// read-write resources, shared_root and file resources are reported, never replicated.
    fn nim_image(
        &mut self,
        ctx: &ImageCtx<'_>,
        images: &mut Images,
        name: &str,
        rowname: &str,
        nim: Option<(usize, &crate::table::Table)>,
    ) {
        let Some((i, t)) = nim else {
            self.issue(Severity::Error, "nimimage", name.to_string(), "osimage says NIM but there is no nimimage row");
            return;
        };
        let r = &t.rows[i];
        let row = format!("{name} ({})", r.location);
        let Ok(sns) = ctx.pick_sns(ctx.image_users(name), &ctx.aix_sns) else {
            self.issue(
                Severity::Skipped,
                "osimage",
                rowname.to_string(),
                "no node served by an AIX service node boots it (nodetype.provmethod): not replicated",
            );
            return;
        };
        let standalone = t.get(r, "nimtype").is_some_and(|n| n.eq_ignore_ascii_case("standalone"));
        for col in NIM_TREES {
            let Some(v) = t.get(r, col).filter(|v| !v.is_empty()) else { continue };
            if *col == "lpp_source" && !standalone {
                self.issue(
                    Severity::Skipped,
                    "nimimage",
                    row.clone(),
                    format!("lpp_source `{v}`: xCAT copies no lpp_source to SNs for diskless/dataless images"),
                );
                continue;
            }
            if v.contains(',') || v.contains('/') || !model::addr::is_hostname(&v.replace('_', "-")) {
                self.issue(
                    Severity::Error,
                    "nimimage",
                    row.clone(),
                    format!("{col} `{v}` is not a single NIM resource name"),
                );
                continue;
            }
            let mut img = ImageSection::new(v, format!("nim/{col}/{v}"));
            img.exclude = vec!["**/.client_data".to_string()];
            img.sns = sns.clone().map(texts);
            self.add_image(images, img, "nimimage", &row);
        }
        for col in NIM_NEVER {
            if let Some(v) = t.get(r, col).filter(|v| !v.is_empty()) {
                self.issue(
                    Severity::Skipped,
                    "nimimage",
                    row.clone(),
                    if *col == "shared_root" {
                        format!("shared_root `{v}` is made on each SN by NIM, not copied by xCAT: not replicated")
                    } else {
                        format!("{col} `{v}` is per client and read-write: never replicated")
                    },
                );
            }
        }
        for col in NIM_FILES {
            if let Some(v) = t.get(r, col).filter(|v| !v.is_empty()) {
                self.issue(
                    Severity::Skipped,
                    "nimimage",
                    row.clone(),
                    format!("{col} `{v}` is a file resource, not a tree: not replicated"),
                );
            }
        }
    }

    /// A Linux osimage: `netboot`/`statelite` images replicate `linuximage.rootimgdir` (default
    /// `installdir/netboot/osvers/osarch/profile`) whole: rootimg, kernel, initrds, packed images;
    /// others have no rootimg.
    fn linux_image(
        &mut self,
        ctx: &ImageCtx<'_>,
        images: &mut Images,
        name: &str,
        rowname: &str,
        oget: &dyn Fn(&str) -> Option<String>,
        lin: Option<(usize, &crate::table::Table)>,
    ) {
        let installdir = &ctx.site.installdir;
        let provmethod = oget("provmethod").unwrap_or_default();
        if !matches!(provmethod.as_str(), "netboot" | "statelite") {
            self.issue(
                Severity::Skipped,
                "osimage",
                rowname.to_string(),
                format!("provmethod `{provmethod}`: not a diskless image, no rootimg to replicate"),
            );
            return;
        }
        let rootimgdir =
            lin.and_then(|(i, t)| t.get(&t.rows[i], "rootimgdir").filter(|v| !v.is_empty()).map(str::to_string));
        let dir = match rootimgdir {
            Some(d) => d,
            None => match (oget("osvers"), oget("osarch"), oget("profile")) {
                (Some(v), Some(a), Some(p)) => {
                    let d = format!("{installdir}/netboot/{v}/{a}/{p}");
                    self.issue(
                        Severity::Warning,
                        "linuximage",
                        name.to_string(),
                        format!("no rootimgdir; xCAT's default `{d}` assumed"),
                    );
                    d
                }
                _ => {
                    self.issue(
                        Severity::Error,
                        "linuximage",
                        rowname.to_string(),
                        "no rootimgdir and no osvers/osarch/profile to derive it",
                    );
                    return;
                }
            },
        };
        // The whole rootimgdir, not only its rootimg tree: nodeset on the SN (anaconda.pm runs there
        // for the nodes it serves) wants `kernel`, `initrd-stateless.gz`/`initrd-statelite.gz`
        // (anaconda.pm:453-491) and the packed image SvrUtils::searchcompressedrootimg picks
        // (`rootimg.sfs|gz`, `rootimg.cpio.gz|xz`, `rootimg.tar.gz|xz`, SvrUtils.pm:2475-2497;
        // `rootimg-statelite.gz` for RAM-disk statelite, anaconda.pm:470) in it, and stateless nodes
        // fetch that image from the SN (imgurl=, anaconda.pm:708-711); statelite nodes mount its
        // `rootimg` subdirectory (NFSROOT=, anaconda.pm:641-648), which the export of the whole
        // directory covers.
        let root = dir.trim_end_matches('/').to_string();
        let Some(rel) = root.strip_prefix(&ctx.site.prefix) else {
            self.issue(
                Severity::Error,
                "linuximage",
                rowname.to_string(),
                format!("rootimgdir `{root}` lies outside installdir `{installdir}`"),
            );
            return;
        };
        if let Err(e) = model::RelPath::parse(rel) {
            self.issue(Severity::Error, "linuximage", rowname.to_string(), format!("rootimgdir `{root}`: {e}"));
            return;
        }
        let Ok(sns) = ctx.pick_sns(ctx.image_users(name), &ctx.linux_sns) else {
            self.issue(
                Severity::Skipped,
                "osimage",
                rowname.to_string(),
                "no node served by a Linux service node boots it (nodetype.provmethod): not replicated",
            );
            return;
        };
        let mut img = ImageSection::new(name, rel);
        img.sns = sns.map(texts);
        self.add_image(images, img, "linuximage", rowname);
    }

    /// Phase "images per SN": every enabled osimage, NIM or Linux, goes only to the SNs (of its
    /// dialect) whose nodes boot it; `linuximage`/`nimimage` rows without an osimage are reported.
    /// Returns the images and the enabled osimage names.
    fn map_images(&mut self, tables: &Tables, ctx: &ImageCtx<'_>) -> (Images, BTreeSet<String>) {
        let mut images = Images::default();
        let mut osimages: Vec<(String, String)> = tables
            .get("osimage")
            .map(|t| {
                t.enabled_rows()
                    .filter_map(|r| t.get(r, "imagename").map(|n| (n.to_string(), r.location.clone())))
                    .collect()
            })
            .unwrap_or_default();
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
            let is_nim = nim.is_some() || oget("imagetype").is_some_and(|t| t.eq_ignore_ascii_case("nim"));
            if is_nim {
                self.nim_image(ctx, &mut images, name, &rowname, nim);
            } else {
                self.linux_image(ctx, &mut images, name, &rowname, &oget, img_row("linuximage", name));
            }
        }
        for table in ["linuximage", "nimimage"] {
            if let Some(t) = tables.get(table) {
                for r in t.enabled_rows() {
                    if let Some(n) = t.get(r, "imagename") {
                        if !osimage_names.contains(n) {
                            self.issue(
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
        (images, osimage_names)
    }

    /// `noderes.nfsdir`: a statelite node mounts its root from `<nfsdir>/netboot/<osvers>/<osarch>/<profile>`
    /// (`//dir` as is, without the xCAT suffix) instead of the image's rootimgdir (anaconda.pm:622-636).
    /// hanfs replicates an image at the same path as on the MN, so a node whose nfsdir points
    /// elsewhere would mount a directory hanfs never fills: reported, not silently ignored.
    fn check_nfsdir(&mut self, tables: &Tables, topo: &Topology, os: &Os, images: &Images, site: &Site) {
        let Some(t) = tables.get("osimage") else { return };
        for n in &topo.nodes {
            let Some(nfsdir) = self.attr("noderes", &n.name, "nfsdir") else { continue };
            for img in os.node_images.get(&n.name).into_iter().flatten() {
                let Some(r) = t.enabled_rows().find(|r| t.get(r, "imagename") == Some(img.as_str())) else { continue };
                if t.get(r, "provmethod") != Some("statelite") {
                    continue;
                }
                let dir = if let Some(abs) = nfsdir.strip_prefix("//") {
                    format!("/{abs}")
                } else {
                    let part = |c: &str| t.get(r, c).unwrap_or_default().to_string();
                    format!(
                        "{}/netboot/{}/{}/{}",
                        nfsdir.trim_end_matches('/'),
                        part("osvers"),
                        part("osarch"),
                        part("profile")
                    )
                };
                let dir = dir.trim_end_matches('/').to_string();
                let Some(image) = images.list.iter().find(|i| i.name.get_ref() == img) else { continue };
                let replicated = format!("{}{}", site.prefix, image.path.get_ref());
                if dir != replicated {
                    self.issue(
                        Severity::Error,
                        "noderes",
                        n.name.clone(),
                        format!(
                            "nfsdir `{nfsdir}`: {} mounts its root from `{dir}/rootimg`, but image {img} is replicated at `{replicated}`; set linuximage.rootimgdir to `{dir}` or clear nfsdir",
                            n.name
                        ),
                    );
                }
            }
        }
    }

    /// `site.sharedinstall=sns`: the SNs mount one shared installdir (snmove.pm:570-580 and 830-870
    /// treat it as one tree for all SNs), so two agents must never write one file system: each image
    /// is replicated once, to the first SN that needs it; the others serve it from the shared tree.
    fn shared_install(&mut self, site: &Site, images: &mut Images, written: &[String]) {
        if !self.db.site("sharedinstall").is_some_and(|v| v.eq_ignore_ascii_case("sns")) {
            return;
        }
        let installdir = &site.installdir;
        for img in &mut images.list {
            let want: Vec<String> = img
                .sns
                .as_ref()
                .map(|l| l.iter().map(|s| s.get_ref().clone()).collect())
                .unwrap_or_else(|| written.to_vec());
            let Some(first) = want.first().cloned() else { continue };
            if want.len() > 1 {
                self.issue(
                    Severity::Warning,
                    "site",
                    "sharedinstall",
                    format!(
                        "sns: one shared {installdir} on the SNs: image {} is replicated once, to {first}; {} see it in the shared tree and keep their own exports of it (an agent refuses to apply into a root another agent applies into: root/.hanfs/agent)",
                        img.name,
                        want[1..].join(",")
                    ),
                );
            }
            img.sns = if written.len() == 1 { None } else { Some(vec![sp(first)]) };
        }
    }

    /// A statelite or litetree value for a node: regex, then `$table.column` (`site` directly), as
    /// server and directory. Lookup errors are reported under `statelite`.
    fn server_dir(&mut self, node: &str, value: &str) -> Result<(String, String), rules::RuleError> {
        let mut errs = Vec::new();
        let db = &self.db;
        let r = rules::resolve_server_dir(value, node, &mut |t: &str, c: &str| {
            if t == "site" {
                return db.site(c).map(str::to_string);
            }
            db.attr_or_report(t, node, c, &mut |e| errs.push(e.clone()))
        });
        for e in errs {
            self.issue(Severity::Error, "statelite", node.to_string(), format!("{}", e.error));
        }
        r
    }

    /// Phase "statelite areas": each node's `statemnt` resolved (regex, then `subVars`), only for
    /// nodes of statelite images (anaconda.pm builds STATEMNT= only `if ($statelite)`,
    /// anaconda.pm:617-680); its server tells which SN holds the node's data. One area per directory.
    fn map_statelite(&mut self, tables: &Tables, topo: &Topology, addr: &Addressing, os: &Os) -> StateliteMap {
        let mut statelite_dirs: BTreeMap<String, String> = BTreeMap::new();
        let mut served_by: BTreeMap<String, String> = BTreeMap::new();
        let mut node_dirs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let provmethod_of = |img: &str| -> Option<String> {
            let t = tables.get("osimage")?;
            t.enabled_rows()
                .find(|r| t.get(r, "imagename") == Some(img))
                .and_then(|r| t.get(r, "provmethod"))
                .map(str::to_string)
        };
        for n in &topo.nodes {
            let Some(f) = self.db.raw("statelite", &n.name, "statemnt") else { continue };
            let row = format!("{} ({})", f.from, f.location);
            // A stateless (netboot) node never mounts a statemnt.
            let stateless: Vec<String> = os
                .node_images
                .get(&n.name)
                .map(|v| v.iter().filter(|i| provmethod_of(i).as_deref() == Some("netboot")).cloned().collect())
                .unwrap_or_default();
            if let Some(img) = stateless.first() {
                self.issue(
                    Severity::Skipped,
                    "statelite",
                    row,
                    format!("{} boots stateless image {img}, which mounts no statemnt: nothing to serve", n.name),
                );
                continue;
            }
            let value = match rules::trans_regex(&n.name, &f.raw) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    self.issue(Severity::Error, "statelite", row, format!("statemnt `{}` for {}: {e}", f.raw, n.name));
                    continue;
                }
            };
            if f.raw.contains("$node") && rules::split_server_dir(&f.raw).1.contains("$node") {
                self.issue(
                    Severity::Error,
                    "statelite",
                    row,
                    format!("statemnt `{}` puts $node in the directory; hanfs keeps <dir>/<node> itself", f.raw),
                );
                continue;
            }
            let (server, dir) = match self.server_dir(&n.name, &value) {
                Ok(x) => x,
                Err(e) => {
                    self.issue(Severity::Error, "statelite", row, format!("statemnt `{value}` for {}: {e}", n.name));
                    continue;
                }
            };
            let dir = dir.trim_end_matches('/').to_string();
            if !dir.starts_with('/') || dir.is_empty() || dir.contains("UNDEFINED") {
                self.issue(
                    Severity::Error,
                    "statelite",
                    row,
                    format!("statemnt `{value}` gives directory `{dir}` for {}", n.name),
                );
                continue;
            }
            let owner = if server.is_empty() {
                None
            } else if Some(&server) == addr.xcatmaster_of.get(&n.name) {
                Some(n.sns[0].clone())
            } else {
                addr.aliases
                    .get(&server)
                    .cloned()
                    .or_else(|| self.hosts_ip(&server).and_then(|ip| addr.aliases.get(&ip).cloned()))
            };
            let Some(owner) = owner else {
                self.issue(Severity::Error, "statelite", row, format!("{}'s persistent data is on `{server}`, not a service node (the MN or an external server): hanfs does not serve it", n.name));
                continue;
            };
            if !n.sns.contains(&owner) {
                self.issue(
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
            statelite_dirs.entry(dir.clone()).or_insert_with(|| format!("{len}"));
            node_dirs.entry(n.name.clone()).or_default().push(dir);
        }
        let (areas, area_name) = area_names(statelite_dirs.keys());
        StateliteMap { areas, area_name, served_by, node_dirs }
    }

    /// `litetree`: a directory on the node's SN under installdir is replicated like an image (one
    /// path for all nodes); one elsewhere is reported.
    fn map_litetree(
        &mut self,
        tables: &Tables,
        site: &Site,
        topo: &Topology,
        addr: &Addressing,
        os: &Os,
        images: &mut Images,
    ) {
        let Some(t) = tables.get("litetree") else { return };
        let mut rows: Vec<(String, String, String, String)> = t
            .enabled_rows()
            .filter_map(|r| {
                Some((
                    t.get(r, "priority")?.to_string(),
                    t.get(r, "directory")?.to_string(),
                    r.location.clone(),
                    t.get(r, "image").unwrap_or_default().to_string(),
                ))
            })
            .collect();
        rows.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        let groups = osimage_groups(tables);
        for (prio, value, loc, image) in rows {
            let row = format!("{prio} ({loc})");
            let mut paths = BTreeSet::new();
            let mut on_sn = true;
            let mut failed = None;
            // Only the nodes whose image the row names (litetree.pm:340-359).
            let users: Vec<&N> = topo
                .nodes
                .iter()
                .filter(|n| {
                    let imgs = os.node_images.get(&n.name).map(Vec::as_slice).unwrap_or_default();
                    image_row_applies(&image, imgs, &groups)
                })
                .collect();
            if users.is_empty() {
                self.issue(
                    Severity::Skipped,
                    "litetree",
                    row,
                    format!("image `{image}`: no node hanfs serves boots that image (or image group)"),
                );
                continue;
            }
            for n in users {
                match self.server_dir(&n.name, &value) {
                    Ok((server, dir)) => {
                        let owner = if Some(&server) == addr.xcatmaster_of.get(&n.name) {
                            Some(n.sns[0].clone())
                        } else {
                            addr.aliases.get(&server).cloned()
                        };
                        on_sn &= owner.is_some();
                        paths.insert(dir.trim_end_matches('/').to_string());
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                self.issue(Severity::Error, "litetree", row, format!("directory `{value}`: {e}"));
                continue;
            }
            if !on_sn {
                self.issue(
                    Severity::Skipped,
                    "litetree",
                    row,
                    format!("directory `{value}` is not on the nodes' service node: nothing to replicate"),
                );
                continue;
            }
            if paths.len() != 1 {
                self.issue(
                    Severity::Error,
                    "litetree",
                    row,
                    format!("directory `{value}` differs per node ({} paths): not replicated", paths.len()),
                );
                continue;
            }
            let Some(path) = paths.into_iter().next() else { continue };
            let Some(rel) = path.strip_prefix(&site.prefix).map(str::to_string) else {
                self.issue(
                    Severity::Error,
                    "litetree",
                    row,
                    format!("directory `{path}` lies outside installdir `{}`", site.installdir),
                );
                continue;
            };
            if let Some(img) = images
                .list
                .iter()
                .find(|i| rel == *i.path.get_ref() || rel.starts_with(&format!("{}/", i.path.get_ref())))
            {
                self.issue(Severity::Skipped, "litetree", row, format!("`{path}` is inside image {}", img.name));
                continue;
            }
            if model::RelPath::parse(&rel).is_err() {
                self.issue(Severity::Error, "litetree", row, format!("directory `{path}` is not a usable path"));
                continue;
            }
            let img = ImageSection::new(format!("litetree-{prio}"), rel);
            self.add_image(images, img, "litetree", &row);
        }
    }

    /// `litefile` rows must name an image, an image group (an `osimage.groups` value) or ALL
    /// (litetree.pm:340-359 selects rows by exactly these).
    fn check_litefile(&mut self, tables: &Tables, osimage_names: &BTreeSet<String>) {
        let Some(t) = tables.get("litefile") else { return };
        let groups = osimage_groups(tables);
        let bad: Vec<(String, String)> = t
            .enabled_rows()
            .filter_map(|r| {
                let img = t.get(r, "image")?;
                (img != "ALL" && !osimage_names.contains(img) && !groups.values().any(|g| g == img))
                    .then(|| (img.to_string(), r.location.clone()))
            })
            .collect();
        for (img, loc) in bad {
            self.issue(Severity::Warning, "litefile", format!("{img} ({loc})"), "names no enabled osimage");
        }
    }

    /// Phase "nodes": the `[[node]]` entries; SNs left out (an AIX SN that cannot be written as AIX)
    /// leave every list they were in.
    fn node_entries(
        &mut self,
        topo: &Topology,
        sl: &StateliteMap,
        sn_out: &mut [SnSection],
        written: &[String],
    ) -> Vec<NodeSection> {
        for s in sn_out.iter_mut() {
            if let Some(b) = &mut s.backups {
                b.get_mut().retain(|b| written.contains(b.get_ref()));
            }
        }
        let mut node_out: Vec<NodeSection> = Vec::new();
        for n in &topo.nodes {
            let sns: Vec<String> = n.sns.iter().filter(|s| written.contains(s)).cloned().collect();
            if sns.is_empty() {
                self.issue(Severity::Error, "noderes", n.name.clone(), "none of its service nodes could be written");
                continue;
            }
            let served = sl.served_by.get(&n.name).filter(|s| written.contains(s)).cloned();
            // Which areas hold its data; written only when not every area does (or none).
            let areas: Vec<String> = sl
                .node_dirs
                .get(&n.name)
                .map(|ds| ds.iter().filter_map(|d| sl.area_name.get(d).cloned()).collect())
                .unwrap_or_default();
            let statelite = (areas.len() != sl.areas.len()).then_some(areas);
            let mut node = NodeSection::new(n.name.clone(), sns);
            node.served_by = served.map(sp);
            node.statelite = statelite.map(texts);
            node_out.push(node);
        }
        if node_out.is_empty() {
            self.issue(Severity::Error, "noderes", "*", "no node has a service node: nothing for hanfs to serve");
        }
        node_out
    }
}

/// `osimage.groups` of each enabled osimage that has one.
fn osimage_groups(tables: &Tables) -> BTreeMap<String, String> {
    let Some(t) = tables.get("osimage") else { return BTreeMap::new() };
    t.enabled_rows()
        .filter_map(|r| Some((t.get(r, "imagename")?.to_string(), t.get(r, "groups")?.to_string())))
        .collect()
}

/// Whether a litetree/litefile row for `image` applies to a node booting `imgs`: xCAT's
/// litetree.pm getNodeData (:340-359) takes the rows whose image is empty, `ALL`, the node's osimage,
/// or that osimage's whole `osimage.groups` value (compared as one string, as getAttribs does).
fn image_row_applies(image: &str, imgs: &[String], groups: &BTreeMap<String, String>) -> bool {
    image.is_empty() || image == "ALL" || imgs.iter().any(|i| i == image || groups.get(i).is_some_and(|g| g == image))
}

/// One statelite area per directory, named after its last component (made unique).
fn area_names<'d>(dirs: impl Iterator<Item = &'d String>) -> (Vec<StateliteSection>, BTreeMap<String, String>) {
    let mut statelite = Vec::new();
    let mut used = BTreeSet::new();
    let mut area_name: BTreeMap<String, String> = BTreeMap::new();
    for dir in dirs {
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
        area_name.insert(dir.clone(), name.clone());
        statelite.push(StateliteSection::new(name, dir.clone()).clients(Clients::One("*".into())));
    }
    (statelite, area_name)
}

/// What the image phase needs to know about nodes and SNs.
struct ImageCtx<'c> {
    site: &'c Site,
    topo: &'c Topology,
    os: &'c Os,
    aix_sns: Vec<String>,
    linux_sns: Vec<String>,
    /// The SNs written to the config.
    written: Vec<String>,
}

impl ImageCtx<'_> {
    /// The SNs (every one in their servicenode lists) of the nodes that boot `img`.
    fn image_users(&self, img: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .topo
            .nodes
            .iter()
            .filter(|n| self.os.node_images.get(&n.name).is_some_and(|is| is.iter().any(|i| i == img)))
            .flat_map(|n| n.sns.iter().cloned())
            .collect();
        v.sort_by(|a, b| natural_cmp(a, b));
        v.dedup();
        v
    }

    /// Images go only to the SNs whose nodes boot them (`Err` when no node does): None means all SNs.
    fn pick_sns(&self, users: Vec<String>, same_dialect: &[String]) -> Result<Option<Vec<String>>, ()> {
        let v: Vec<String> =
            users.into_iter().filter(|u| same_dialect.contains(u) && self.written.contains(u)).collect();
        if v.is_empty() {
            Err(())
        } else if v.len() == self.topo.sn_names.len() {
            Ok(None)
        } else {
            Ok(Some(v))
        }
    }
}

/// [`import`] with a given resolver for names the hosts table does not define. The phases, in order:
/// disabled rows, site, SNs and nodes, addresses, nfsserver checks, osimages per node, `[[sn]]`,
/// images, sharedinstall, statelite areas, litetree, litefile, `[[node]]`.
pub fn import_with(tables: &Tables, resolver: Resolver<'_>) -> Import {
    let mut m = Mapper { db: Db::new(tables), report: Vec::new(), resolver };
    m.report_disabled(tables);
    let site = m.read_site();
    let topo = m.read_topology(tables);
    let addr = m.resolve_addresses(tables, &topo);
    m.check_nfsservers(&topo, &addr);
    let os = m.node_osimages(tables, &topo);
    let sn_dialects = m.sn_entries(&topo, &addr, &os, &site);
    let by_dialect = |d: Dialect| -> Vec<String> {
        sn_dialects.iter().filter(|(_, x)| *x == d).map(|(s, _)| s.name.get_ref().clone()).collect()
    };
    let (aix_sns, linux_sns) = (by_dialect(Dialect::Aix), by_dialect(Dialect::Linux));
    let mut sn_out: Vec<SnSection> = sn_dialects.into_iter().map(|(s, _)| s).collect();
    let ctx = ImageCtx {
        site: &site,
        topo: &topo,
        os: &os,
        aix_sns,
        linux_sns,
        written: sn_out.iter().map(|s| s.name.get_ref().clone()).collect(),
    };
    let (mut images, osimage_names) = m.map_images(tables, &ctx);
    m.shared_install(&site, &mut images, &ctx.written);
    m.check_nfsdir(tables, &topo, &os, &images, &site);
    let sl = m.map_statelite(tables, &topo, &addr, &os);
    m.map_litetree(tables, &site, &topo, &addr, &os, &mut images);
    m.check_litefile(tables, &osimage_names);
    let written = ctx.written.clone();
    let node_out = m.node_entries(&topo, &sl, &mut sn_out, &written);
    let mut cluster = ClusterSection::new(site.installdir);
    cluster.state_dir = Some(sp("/var/lib/hanfs".into()));
    cluster.backups = Some(sp(model::BackupPolicy::None.as_str().into()));
    cluster.domain = site.domain.map(sp);
    let mut config = ConfigFile::new(cluster);
    config.tls = Some(TlsFiles {
        ca: "/etc/hanfs/ca.pem".into(),
        cert: "/etc/hanfs/mn.pem".into(),
        key: "/etc/hanfs/mn.key".into(),
    });
    config.sn = sn_out;
    config.image = images.list;
    config.statelite = sl.areas;
    config.node = node_out;
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
