//! The controller's cluster config (contract.md "Cluster config"): parsed with serde/toml, then
//! validated into a [`Cluster`] in which every name resolves, every address is well formed and every
//! path stays under its root.

use crate::addr::{Address, Endpoint};
use crate::config::{Clients, ConfigFile, Spanned, Text as S};
use crate::error::{Diagnostics, Sink};
use crate::name::check_name;
use crate::path::{AbsPath, RelPath};
use crate::placement::{MoveError, Placement};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Default TCP port of `hanfs agent`.
pub const DEFAULT_AGENT_PORT: u16 = 7468;

/// Which NFS server flavour an SN runs, and so which exports dialect it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Linux,
    Aix,
}

impl Dialect {
    /// The dialect's name as configs write it (`linux`, `aix`); the one parse of it.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "linux" => Ok(Dialect::Linux),
            "aix" => Ok(Dialect::Aix),
            _ => Err(format!("unknown dialect `{s}`; expected \"linux\" or \"aix\"")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Linux => "linux",
            Dialect::Aix => "aix",
        }
    }
}

impl std::str::FromStr for Dialect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Dialect::parse(s)
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How SNs that name no backups get them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupPolicy {
    /// Each SN is backed by the next one in file order; the last by the first.
    Ring,
    /// sn1<->sn2, sn3<->sn4, ...; with an odd count the last SN is backed by the first.
    Pairs,
    /// No automatic backups.
    None,
}

impl BackupPolicy {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "ring" => Ok(BackupPolicy::Ring),
            "pairs" => Ok(BackupPolicy::Pairs),
            "none" => Ok(BackupPolicy::None),
            _ => Err(format!("unknown backup policy `{s}`; expected \"ring\", \"pairs\" or \"none\"")),
        }
    }

    /// The policy's name as configs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupPolicy::Ring => "ring",
            BackupPolicy::Pairs => "pairs",
            BackupPolicy::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A service node: serves compute nodes, holds replicas, runs `hanfs agent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNode {
    pub name: String,
    /// What clients use: goes into `replicas=`/`refer=`.
    pub address: Address,
    pub agent: Endpoint,
    pub dialect: Dialect,
    /// Names of SNs or external servers that hold copies of this SN's data, in preference order.
    pub backups: Vec<String>,
    /// Where replicas live on this SN.
    pub root: AbsPath,
    /// AIX only: export the whole `root` once, read-write with `replicas=` self and its one backup,
    /// as xCAT's `mkdsklsnode -S` (setuphanfs) does, instead of one read-only export per image.
    pub setuphanfs: bool,
    /// The floating address its nodes mount from (taken over by a backup on failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_address: Option<crate::health::ServiceAddress>,
    /// Its NFS and MOUNT ports for the health probe when they differ from `[cluster]`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_port: Option<u16>,
    /// Its rack (`[[sn]] rack`): relay children come from their parent's rack first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
}

/// A member of an external HA-NFS domain: a backup server that is not an SN (design arch. 2).
/// hanfs lists it in fs_locations; it is kept in sync by its own means or by an agent if `agent` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalServer {
    pub name: String,
    pub address: Address,
    pub agent: Option<Endpoint>,
    pub root: AbsPath,
}

/// A read-only image tree replicated to SNs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// Relative to `source_root` on the MN and to each SN's `root`.
    pub path: RelPath,
    /// exports(5) client specifications, e.g. `*` or `10.1.0.0/16`.
    pub clients: Vec<String>,
    pub exclude: Vec<String>,
    /// The SNs that hold and export it, in file order.
    pub sns: Vec<String>,
}

/// A writable statelite area: `<path>/<node>` per node, exported rw by the node's serving SN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statelite {
    pub name: String,
    pub path: AbsPath,
    pub clients: Vec<String>,
    /// Copied continuously agent to agent (`continuous = true`): not by the periodic rounds.
    #[serde(default)]
    pub continuous: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Primary first, as xCAT's `noderes.servicenode`. Which one serves the node now is the
    /// cluster's [`Placement`]'s to say.
    pub sns: Vec<String>,
    /// The `[[statelite]]` areas (by name) that hold this node's data; `None`: every area. A node of
    /// a stateless image has `Some([])`; a node with `/gpudata` beside `/nodedata` names both.
    #[serde(default)]
    pub statelite: Option<Vec<String>>,
}

impl Node {
    /// Whether statelite area `area` (its name) holds data of this node.
    pub fn uses_area(&self, area: &str) -> bool {
        self.statelite.as_ref().is_none_or(|l| l.iter().any(|a| a == area))
    }
}

/// A validated cluster. It exists only validated (built by [`Cluster::from_toml`]) and never
/// changes: a node move makes a new one through [`Cluster::with_moves`], which checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    source_root: AbsPath,
    state_dir: AbsPath,
    backup_policy: BackupPolicy,
    domain: Option<String>,
    tls: Option<TlsFiles>,
    plaintext_loopback: bool,
    fence: Vec<String>,
    sn_timeout_secs: u64,
    zstd_level: i32,
    fanout: usize,
    health: crate::health::Health,
    sns: Vec<ServiceNode>,
    externals: Vec<ExternalServer>,
    images: Vec<Image>,
    statelite: Vec<Statelite>,
    nodes: Vec<Node>,
    placement: Placement,
}

/// Any server that may appear in a location list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server<'a> {
    pub name: &'a str,
    pub address: &'a Address,
    pub root: &'a AbsPath,
    pub is_sn: bool,
}

impl Cluster {
    /// Parse and validate a config. `file` is only used in diagnostics.
    pub fn from_toml(file: &str, text: &str) -> Result<Cluster, Diagnostics> {
        let mut sink = Sink::new(file, text);
        let raw: ConfigFile = sink.parse(text)?;
        let cluster = validate(&raw, &mut sink);
        sink.finish()?;
        cluster.ok_or_else(|| Diagnostics(Vec::new()))
    }

    /// Validate a config built in code (or parsed elsewhere). Its spans point nowhere, so
    /// diagnostics name `file` and the field but no line.
    pub fn from_config(file: &str, config: &ConfigFile) -> Result<Cluster, Diagnostics> {
        let mut sink = Sink::unlocated(file);
        let cluster = validate(config, &mut sink);
        sink.finish()?;
        cluster.ok_or_else(|| Diagnostics(Vec::new()))
    }

    /// Where image trees live on the MN.
    pub fn source_root(&self) -> &AbsPath {
        &self.source_root
    }

    /// The controller's state directory on the MN.
    pub fn state_dir(&self) -> &AbsPath {
        &self.state_dir
    }

    pub fn backup_policy(&self) -> BackupPolicy {
        self.backup_policy
    }

    /// The NFSv4 domain, when the config sets one.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Plain TCP to agents; accepted only when every agent endpoint is loopback.
    pub fn plaintext_loopback(&self) -> bool {
        self.plaintext_loopback
    }

    /// Command run by `hanfs failover` to fence a dead SN; `{sn}` and `{address}` are substituted.
    pub fn fence(&self) -> &[String] {
        &self.fence
    }

    /// Deadline of everything one SN does in one run (connect, transfer, commit, exports): an SN
    /// that has not finished by then is reported failed and the run ends without it.
    pub fn sn_timeout_secs(&self) -> u64 {
        self.sn_timeout_secs
    }

    /// zstd level of the payloads sent to agents (0 sends them uncompressed; default 1).
    pub fn zstd_level(&self) -> i32 {
        self.zstd_level
    }

    /// Relay fan-out of image payloads (`[cluster] fanout`): 0 is star (the MN sends to every
    /// SN), k > 0 a tree of SNs where each forwards to at most k (see [`crate::relay::tree`]).
    pub fn fanout(&self) -> usize {
        self.fanout
    }

    /// The health settings (`[cluster] failover`, probe timings, fence verification, ...).
    pub fn health(&self) -> &crate::health::Health {
        &self.health
    }

    pub fn sns(&self) -> &[ServiceNode] {
        &self.sns
    }

    pub fn externals(&self) -> &[ExternalServer] {
        &self.externals
    }

    pub fn images(&self) -> &[Image] {
        &self.images
    }

    pub fn statelite(&self) -> &[Statelite] {
        &self.statelite
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Which SN serves which node now.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The SN serving `node` now (its home unless moved).
    pub fn serving(&self, node: &str) -> Option<&str> {
        self.placement.serving(node)
    }

    /// This cluster with `moves` (node -> SN) applied, each checked: the node exists, the SN is an SN
    /// of this cluster (not an external server) and does not serve the node already. A move to the
    /// node's home undoes its move. All or nothing: on an error nothing is applied.
    pub fn with_moves(&self, moves: &BTreeMap<String, String>) -> Result<Cluster, MoveError> {
        let mut out = self.clone();
        for (node, sn) in moves {
            if self.node(node).is_none() {
                return Err(MoveError::UnknownNode(node.clone()));
            }
            if self.sn(sn).is_none() {
                return Err(if self.externals.iter().any(|e| &e.name == sn) {
                    MoveError::NotAnSn { node: node.clone(), sn: sn.clone() }
                } else {
                    MoveError::UnknownSn { node: node.clone(), sn: sn.clone() }
                });
            }
            if self.placement.serving(node) == Some(sn.as_str()) {
                return Err(MoveError::AlreadyServed { node: node.clone(), sn: sn.clone() });
            }
            out.placement.set(node, sn);
        }
        Ok(out)
    }

    /// This cluster with a persisted move record applied, leniently: the config may have changed
    /// since the moves were made, so an entry naming a node or SN no longer in it is left out with a
    /// warning (never fatal), and an entry naming the SN that serves the node already is a no-op.
    pub fn with_recorded_moves(&self, moves: &BTreeMap<String, String>) -> (Cluster, Vec<String>) {
        let mut out = self.clone();
        let mut warn = Vec::new();
        for (node, sn) in moves {
            if self.sn(sn).is_none() {
                warn.push(format!("moved node {node}: SN `{sn}` is no longer in the config; ignored"));
            } else if self.node(node).is_none() {
                warn.push(format!("moved node `{node}` is no longer in the config; ignored"));
            } else {
                out.placement.set(node, sn);
            }
        }
        (out, warn)
    }

    pub fn sn(&self, name: &str) -> Option<&ServiceNode> {
        self.sns.iter().find(|s| s.name == name)
    }

    pub fn server(&self, name: &str) -> Option<Server<'_>> {
        if let Some(s) = self.sn(name) {
            return Some(Server { name: &s.name, address: &s.address, root: &s.root, is_sn: true });
        }
        self.externals.iter().find(|e| e.name == name).map(|e| Server {
            name: &e.name,
            address: &e.address,
            root: &e.root,
            is_sn: false,
        })
    }

    /// The SN itself, then its backups, in order: the locations of its `replicas=` list.
    pub fn replica_set(&self, sn: &ServiceNode) -> Vec<Server<'_>> {
        std::iter::once(sn.name.as_str())
            .chain(sn.backups.iter().map(String::as_str))
            .filter_map(|n| self.server(n))
            .collect()
    }

    /// Images an SN holds.
    pub fn images_on<'a>(&'a self, sn: &'a str) -> impl Iterator<Item = &'a Image> + 'a {
        self.images.iter().filter(move |i| i.sns.iter().any(|s| s == sn))
    }

    /// The MN-side path of an image.
    pub fn image_source(&self, image: &Image) -> AbsPath {
        self.source_root.join(&image.path)
    }

    pub fn image(&self, name: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.name == name)
    }

    /// The images named (all of them when `names` is empty); an unknown name is an error naming it.
    pub fn select_images(&self, names: &[String]) -> Result<Vec<Image>, String> {
        if names.is_empty() {
            return Ok(self.images.clone());
        }
        names
            .iter()
            .map(|n| self.image(n).cloned().ok_or_else(|| format!("no image named `{n}` in the cluster config")))
            .collect()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Default of `cluster.sn_timeout_secs`: an hour for one SN's whole part of a run.
pub const DEFAULT_SN_TIMEOUT_SECS: u64 = 3600;

/// Default of `cluster.zstd_level`: fast, and most of what compression can save on image files.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Default of `cluster.fanout`: star (the MN sends every SN its copy) until relays are measured
/// the better default on real links.
pub const DEFAULT_FANOUT: usize = 0;
/// Highest `cluster.fanout` (an SN forwarding to more than this is a star of its own).
pub const MAX_FANOUT: usize = 64;

/// Highest `cluster.zstd_level`: zstd's levels above 19 need a larger window on the agents too.
pub const MAX_ZSTD_LEVEL: i32 = 19;

// ---------------------------------------------------------------------------------------------
// Validation.

fn validate(raw: &ConfigFile, sink: &mut Sink<'_>) -> Option<Cluster> {
    let section = cluster_section(&raw.cluster, sink);
    let names = server_names(raw, sink);
    let sns = service_nodes(raw, &section, &names, sink);
    let externals = external_servers(raw, section.source_root.as_ref(), sink);
    aix_rules(raw, &sns, &externals, section.domain.as_deref(), sink);
    let sn_names: Vec<String> = raw.sn.iter().map(|s| s.name.get_ref().clone()).collect();
    let images = images(raw, section.source_root.as_ref(), &sn_names, sink);
    let statelite = statelite_areas(raw, sink);
    let (nodes, placement) = nodes(raw, &sn_names, &statelite, sink);
    transport_security(raw, &sns, sink);
    Some(Cluster {
        source_root: section.source_root?,
        state_dir: section.state_dir?,
        backup_policy: section.backup_policy?,
        domain: section.domain,
        tls: raw.tls.clone(),
        plaintext_loopback: raw.cluster.plaintext_loopback,
        fence: raw.cluster.fence.clone(),
        sn_timeout_secs: section.sn_timeout_secs,
        zstd_level: section.zstd_level,
        fanout: section.fanout,
        health: crate::health::section(&raw.cluster, sink),
        sns,
        externals,
        images,
        statelite,
        nodes,
        placement,
    })
}

/// `[cluster]`, checked; `None` where a value is wrong (reported).
struct Section {
    source_root: Option<AbsPath>,
    state_dir: Option<AbsPath>,
    backup_policy: Option<BackupPolicy>,
    sn_timeout_secs: u64,
    zstd_level: i32,
    fanout: usize,
    domain: Option<String>,
}

fn cluster_section(c: &crate::config::ClusterSection, sink: &mut Sink<'_>) -> Section {
    let source_root = abs(sink, &c.source_root, "cluster.source_root");
    let state_dir = match &c.state_dir {
        Some(s) => abs(sink, s, "cluster.state_dir"),
        None => AbsPath::parse("/var/lib/hanfs").ok(),
    };
    let backup_policy = match &c.backups {
        Some(b) => BackupPolicy::parse(b.get_ref()).map_err(|m| sink.at(b.span(), "cluster.backups", m)).ok(),
        None => Some(BackupPolicy::Ring),
    };
    let sn_timeout_secs = match &c.sn_timeout_secs {
        Some(t) if (1..=7 * 24 * 3600).contains(t.get_ref()) => *t.get_ref() as u64,
        Some(t) => {
            sink.at(t.span(), "cluster.sn_timeout_secs", "must be 1 to 604800 seconds (a week)");
            DEFAULT_SN_TIMEOUT_SECS
        }
        None => DEFAULT_SN_TIMEOUT_SECS,
    };
    let zstd_level = match &c.zstd_level {
        Some(l) if (0..=MAX_ZSTD_LEVEL as i64).contains(l.get_ref()) => *l.get_ref() as i32,
        Some(l) => {
            sink.at(l.span(), "cluster.zstd_level", format!("must be 0 (uncompressed) to {MAX_ZSTD_LEVEL}"));
            DEFAULT_ZSTD_LEVEL
        }
        None => DEFAULT_ZSTD_LEVEL,
    };
    let fanout = match &c.fanout {
        Some(k) if (0..=MAX_FANOUT as i64).contains(k.get_ref()) => *k.get_ref() as usize,
        Some(k) => {
            sink.at(k.span(), "cluster.fanout", format!("must be 0 (star) to {MAX_FANOUT} children per SN"));
            DEFAULT_FANOUT
        }
        None => DEFAULT_FANOUT,
    };
    let domain = c.domain.as_ref().and_then(|d| {
        let v = d.get_ref();
        if crate::addr::is_hostname(v) {
            Some(v.clone())
        } else {
            sink.at(d.span(), "cluster.domain", format!("`{v}` is not a valid NFSv4 domain name"));
            None
        }
    });

    Section { source_root, state_dir, backup_policy, sn_timeout_secs, zstd_level, fanout, domain }
}

/// Server names (SNs and external servers) and where each was defined. Names are shared by SNs and
/// external servers: a backup list may name either, so none may be defined twice.
fn server_names(raw: &ConfigFile, sink: &mut Sink<'_>) -> BTreeMap<String, std::ops::Range<usize>> {
    let mut names: BTreeMap<String, std::ops::Range<usize>> = BTreeMap::new();
    let mut claim = |sink: &mut Sink<'_>, n: &S, field: String| {
        let v = n.get_ref();
        if let Err(m) = check_name(v) {
            sink.at(n.span(), field, m);
        } else if !crate::addr::is_hostname(v) {
            sink.at(n.span(), field, format!("`{v}` is not a valid name (letters, digits, `-`, `.`)"));
        } else if let Some(prev) = names.get(v) {
            let (line, _) = sink.locate(prev.start);
            let first = if line > 0 { format!(" (first defined on line {line})") } else { String::new() };
            sink.at(n.span(), field, format!("duplicate server name `{v}`{first}"));
        } else {
            names.insert(v.clone(), n.span());
        }
    };
    for (i, s) in raw.sn.iter().enumerate() {
        claim(sink, &s.name, format!("sn[{i}].name"));
    }
    for (i, e) in raw.external.iter().enumerate() {
        claim(sink, &e.name, format!("external[{i}].name"));
    }

    if raw.sn.is_empty() {
        sink.nowhere("sn", "the cluster defines no service node ([[sn]])");
    }
    names
}

/// `[[sn]]`: addresses, agents, dialects, roots and backup lists (named, or by the cluster's policy).
fn service_nodes(
    raw: &ConfigFile,
    section: &Section,
    names: &BTreeMap<String, std::ops::Range<usize>>,
    sink: &mut Sink<'_>,
) -> Vec<ServiceNode> {
    let default_root = section.source_root.clone();
    let backup_policy = section.backup_policy;
    let sn_names: Vec<String> = raw.sn.iter().map(|s| s.name.get_ref().clone()).collect();
    let mut sns = Vec::new();
    for (i, s) in raw.sn.iter().enumerate() {
        let f = |k: &str| format!("sn[{i}].{k}");
        let address = Address::parse(s.address.get_ref()).map_err(|m| sink.at(s.address.span(), f("address"), m)).ok();
        let agent = match &s.agent {
            Some(a) => Endpoint::parse(a.get_ref()).map_err(|m| sink.at(a.span(), f("agent"), m)).ok(),
            None => address.clone().map(|host| Endpoint { host, port: DEFAULT_AGENT_PORT }),
        };
        let dialect = match &s.dialect {
            Some(d) => Dialect::parse(d.get_ref()).map_err(|m| sink.at(d.span(), f("dialect"), m)).ok(),
            None => Some(Dialect::Linux),
        };
        let root = match &s.root {
            Some(r) => abs(sink, r, &f("root")),
            None => default_root.clone(),
        };
        let backups = match &s.backups {
            Some(list) => {
                let mut out = Vec::new();
                for (j, b) in list.get_ref().iter().enumerate() {
                    let v = b.get_ref();
                    let field = format!("sn[{i}].backups[{j}]");
                    if v == s.name.get_ref() {
                        sink.at(b.span(), field, format!("SN `{v}` cannot back itself up"));
                    } else if !names.contains_key(v) {
                        sink.at(b.span(), field, format!("unknown server `{v}`: not an [[sn]] or [[external]] name"));
                    } else if out.contains(v) {
                        sink.at(b.span(), field, format!("`{v}` is listed twice"));
                    } else {
                        out.push(v.clone());
                    }
                }
                out
            }
            None => policy_backups(backup_policy.unwrap_or(BackupPolicy::None), &sn_names, i),
        };
        let setuphanfs = s.setuphanfs.as_ref().is_some_and(|v| *v.get_ref());
        let service_address = crate::health::service_address(sink, &s.service_address, f("service_address"));
        let nfs_port = crate::health::sn_port(sink, &s.nfs_port, f("nfs_port"));
        let mount_port = crate::health::sn_port(sink, &s.mount_port, f("mount_port"));
        let rack = s.rack.as_ref().and_then(|r| match check_name(r.get_ref()) {
            Ok(()) => Some(r.get_ref().clone()),
            Err(m) => {
                sink.at(r.span(), f("rack"), m);
                None
            }
        });
        if let (true, Some(d), Some(v)) = (setuphanfs, dialect, &s.setuphanfs) {
            if d != Dialect::Aix {
                sink.at(
                    v.span(),
                    f("setuphanfs"),
                    "setuphanfs is AIX's `mkdsklsnode -S` export: set dialect = \"aix\"",
                );
            } else if backups.len() != 1 {
                // aixinstall.pm:12408-12414: setuphanfs needs exactly one pair of service nodes.
                sink.at(
                    v.span(),
                    f("setuphanfs"),
                    format!(
                        "setuphanfs pairs the SN with exactly one backup (xCAT's SN pair); it has {}",
                        backups.len()
                    ),
                );
            }
        }
        if let (Some(address), Some(agent), Some(dialect), Some(root)) = (address, agent, dialect, root) {
            sns.push(ServiceNode {
                name: s.name.get_ref().clone(),
                address,
                agent,
                dialect,
                backups,
                root,
                setuphanfs,
                service_address,
                nfs_port,
                mount_port,
                rack,
            });
        }
    }

    sns
}

/// `[[external]]`: backup servers that are not SNs.
fn external_servers(raw: &ConfigFile, default_root: Option<&AbsPath>, sink: &mut Sink<'_>) -> Vec<ExternalServer> {
    let mut externals = Vec::new();
    for (i, e) in raw.external.iter().enumerate() {
        let f = |k: &str| format!("external[{i}].{k}");
        let address = Address::parse(e.address.get_ref()).map_err(|m| sink.at(e.address.span(), f("address"), m)).ok();
        let agent = match &e.agent {
            Some(a) => Endpoint::parse(a.get_ref()).map_err(|m| sink.at(a.span(), f("agent"), m)).map(Some).ok(),
            None => Some(None),
        };
        let root = match &e.root {
            Some(r) => abs(sink, r, &f("root")),
            None => default_root.cloned(),
        };
        if let (Some(address), Some(agent), Some(root)) = (address, agent, root) {
            externals.push(ExternalServer { name: e.name.get_ref().clone(), address, agent, root });
        }
    }

    externals
}

/// AIX: replica lists must be IP literals, and replicas need an NFSv4 domain.
fn aix_rules(
    raw: &ConfigFile,
    sns: &[ServiceNode],
    externals: &[ExternalServer],
    domain: Option<&str>,
    sink: &mut Sink<'_>,
) {
    for (i, s) in raw.sn.iter().enumerate() {
        let Some(sn) = sns.iter().find(|x| &x.name == s.name.get_ref()) else { continue };
        if sn.dialect != Dialect::Aix {
            continue;
        }
        if !sn.address.is_ip() {
            sink.at(
                s.address.span(),
                format!("sn[{i}].address"),
                format!(
                    "AIX SN `{}` needs an IP address, not the host name `{}` (AIX replica lists take IPs)",
                    sn.name, sn.address
                ),
            );
        }
        for b in &sn.backups {
            let addr = sns
                .iter()
                .find(|x| &x.name == b)
                .map(|x| &x.address)
                .or_else(|| externals.iter().find(|x| &x.name == b).map(|x| &x.address));
            if let Some(a) = addr.filter(|a| !a.is_ip()) {
                let span = s.backups.as_ref().map(|l| l.span()).unwrap_or(s.name.span());
                sink.at(
                    span,
                    format!("sn[{i}].backups"),
                    format!(
                        "backup `{b}` of AIX SN `{}` has host name `{a}`; AIX replica lists take IP addresses",
                        sn.name
                    ),
                );
            }
        }
        if domain.is_none() && raw.cluster.domain.is_none() {
            sink.at(
                s.dialect.as_ref().map(|d| d.span()).unwrap_or(s.name.span()),
                format!("sn[{i}].dialect"),
                "AIX replicas need an NFSv4 domain: set cluster.domain (see chnfsdom)",
            );
        }
    }
}

/// `[[image]]`: names, paths under the source root (never per-SN trees), clients, SNs; no nesting.
fn images(raw: &ConfigFile, source_root: Option<&AbsPath>, sn_names: &[String], sink: &mut Sink<'_>) -> Vec<Image> {
    let mut images = Vec::new();
    let mut image_names = BTreeSet::new();
    let mut image_paths: BTreeMap<String, String> = BTreeMap::new();
    for (i, im) in raw.image.iter().enumerate() {
        let f = |k: &str| format!("image[{i}].{k}");
        let name = im.name.get_ref();
        let name_ok = check_name(name).map_err(|m| sink.at(im.name.span(), f("name"), m)).is_ok();
        if !image_names.insert(name.clone()) {
            sink.at(im.name.span(), f("name"), format!("duplicate image name `{name}`"));
        }
        let path = image_path(sink, &im.path, &f("path"), source_root);
        if let Some(p) = &path {
            if let Some(other) = image_paths.insert(p.as_str().to_string(), name.clone()) {
                sink.at(im.path.span(), f("path"), format!("path `{p}` is already image `{other}`'s"));
            }
        }
        let clients = clients(sink, im.clients.as_ref(), &f("clients"), "*");
        let isns = match &im.sns {
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(j, s)| {
                    if sn_names.contains(s.get_ref()) {
                        Some(s.get_ref().clone())
                    } else {
                        sink.at(s.span(), format!("image[{i}].sns[{j}]"), format!("unknown SN `{}`", s.get_ref()));
                        None
                    }
                })
                .collect(),
            None => sn_names.to_vec(),
        };
        if let (Some(path), true) = (path, name_ok) {
            images.push(Image { name: name.clone(), path, clients, exclude: im.exclude.clone(), sns: isns });
        }
    }
    // Images nest only by accident: a nested image would be replicated twice and exported inside another.
    for a in &images {
        for b in &images {
            if a.name != b.name && b.path.as_str().starts_with(&format!("{}/", a.path)) {
                let at = raw.image.iter().position(|r| r.name.get_ref() == &b.name);
                let span = at.map(|i| raw.image[i].path.span()).unwrap_or(0..0);
                sink.at(
                    span,
                    format!("image[{}].path", at.unwrap_or(0)),
                    format!("path `{}` lies inside image `{}` (`{}`)", b.path, a.name, a.path),
                );
            }
        }
    }

    images
}

/// `[[statelite]]`: names, absolute paths other than `/`, clients.
fn statelite_areas(raw: &ConfigFile, sink: &mut Sink<'_>) -> Vec<Statelite> {
    let mut statelite = Vec::new();
    let mut statelite_names = BTreeSet::new();
    for (i, st) in raw.statelite.iter().enumerate() {
        let f = |k: &str| format!("statelite[{i}].{k}");
        let name_ok = check_name(st.name.get_ref()).map_err(|m| sink.at(st.name.span(), f("name"), m)).is_ok();
        if !statelite_names.insert(st.name.get_ref().clone()) {
            sink.at(st.name.span(), f("name"), format!("duplicate statelite area `{}`", st.name.get_ref()));
        }
        let path = abs(sink, &st.path, &f("path"));
        if let Some(p) = &path {
            if p.is_root() {
                sink.at(st.path.span(), f("path"), "a statelite path cannot be `/`");
            }
        }
        let clients = clients(sink, st.clients.as_ref(), &f("clients"), "*");
        if let (Some(path), true) = (path.filter(|p| !p.is_root()), name_ok) {
            let continuous = st.continuous.unwrap_or(false);
            statelite.push(Statelite { name: st.name.get_ref().clone(), path, clients, continuous });
        }
    }

    statelite
}

/// `[[node]]`: names, SN lists (home first), areas; and where each node is served from.
fn nodes(
    raw: &ConfigFile,
    sn_names: &[String],
    statelite: &[Statelite],
    sink: &mut Sink<'_>,
) -> (Vec<Node>, Placement) {
    let mut nodes = Vec::new();
    let mut serving = Vec::new();
    let mut node_names = BTreeSet::new();
    for (i, n) in raw.node.iter().enumerate() {
        let name = n.name.get_ref();
        let mut ok = true;
        if let Err(m) = check_name(name) {
            sink.at(n.name.span(), format!("node[{i}].name"), m);
            ok = false;
        } else if !crate::addr::is_hostname(name) {
            sink.at(n.name.span(), format!("node[{i}].name"), format!("`{name}` is not a valid node name"));
            ok = false;
        }
        if !node_names.insert(name.clone()) {
            sink.at(n.name.span(), format!("node[{i}].name"), format!("duplicate node `{name}`"));
        }
        if n.sns.get_ref().is_empty() {
            sink.at(n.sns.span(), format!("node[{i}].sns"), format!("node `{name}` has no service node"));
            continue;
        }
        let mut list = Vec::new();
        for (j, s) in n.sns.get_ref().iter().enumerate() {
            if !sn_names.contains(s.get_ref()) {
                sink.at(s.span(), format!("node[{i}].sns[{j}]"), format!("unknown SN `{}`", s.get_ref()));
                ok = false;
            } else if list.contains(s.get_ref()) {
                sink.at(s.span(), format!("node[{i}].sns[{j}]"), format!("SN `{}` listed twice", s.get_ref()));
                ok = false;
            } else {
                list.push(s.get_ref().clone());
            }
        }
        let served_by = match &n.served_by {
            Some(s) if !sn_names.contains(s.get_ref()) => {
                sink.at(s.span(), format!("node[{i}].served_by"), format!("unknown SN `{}`", s.get_ref()));
                ok = false;
                String::new()
            }
            Some(s) => s.get_ref().clone(),
            None => list.first().cloned().unwrap_or_default(),
        };
        let areas = n.statelite.as_ref().map(|l| {
            let mut out: Vec<String> = Vec::new();
            for (j, a) in l.iter().enumerate() {
                if !statelite.iter().any(|st: &Statelite| &st.name == a.get_ref()) {
                    sink.at(
                        a.span(),
                        format!("node[{i}].statelite[{j}]"),
                        format!("unknown statelite area `{}`", a.get_ref()),
                    );
                    ok = false;
                } else if !out.contains(a.get_ref()) {
                    out.push(a.get_ref().clone());
                }
            }
            out
        });
        if let (true, Some(home)) = (ok, list.first()) {
            serving.push((name.clone(), home.clone(), Some(served_by)));
            nodes.push(Node { name: name.clone(), sns: list, statelite: areas });
        }
    }

    (nodes, Placement::new(serving))
}

/// Agents off loopback need `[tls]`; plain TCP to loopback agents must be asked for.
fn transport_security(raw: &ConfigFile, sns: &[ServiceNode], sink: &mut Sink<'_>) {
    if raw.tls.is_none() {
        let remote: Vec<&str> = sns.iter().filter(|s| !s.agent.is_loopback()).map(|s| s.name.as_str()).collect();
        if !remote.is_empty() {
            // Pointed at the first remote agent: the line that needs TLS.
            let first = raw.sn.iter().position(|r| r.name.get_ref() == remote[0]).unwrap_or(0);
            let span = raw.sn.get(first).map(|r| r.agent.as_ref().unwrap_or(&r.address).span()).unwrap_or(0..0);
            sink.at(
                span,
                format!("sn[{first}].agent"),
                format!(
                    "a [tls] section is required: agents of {} are not on loopback (make one with `hanfs ca init`)",
                    remote.join(", ")
                ),
            );
        } else if !raw.cluster.plaintext_loopback {
            sink.nowhere(
                "cluster.plaintext_loopback",
                "no [tls] section: set plaintext_loopback = true to talk plain TCP to loopback agents",
            );
        }
    }
}

fn policy_backups(policy: BackupPolicy, sns: &[String], i: usize) -> Vec<String> {
    let n = sns.len();
    if n < 2 {
        return Vec::new();
    }
    let j = match policy {
        BackupPolicy::None => return Vec::new(),
        BackupPolicy::Ring => (i + 1) % n,
        BackupPolicy::Pairs => {
            if i.is_multiple_of(2) {
                if i + 1 < n {
                    i + 1
                } else {
                    0
                }
            } else {
                i - 1
            }
        }
    };
    vec![sns[j].clone()]
}

fn abs(sink: &mut Sink<'_>, s: &S, field: &str) -> Option<AbsPath> {
    AbsPath::parse(s.get_ref()).map_err(|m| sink.at(s.span(), field, m)).ok()
}

/// Paths xCAT keeps per SN or never wants copied (design §1).
const NEVER_REPLICATED: &[(&str, &str)] = &[
    ("autoinst", "/install/autoinst holds per-node install files"),
    (".client_data", "NIM `.client_data` is per SN"),
    ("nim/paging", "NIM paging spaces are per node"),
    ("nim/dump", "NIM dump resources are per node"),
];

fn image_path(sink: &mut Sink<'_>, s: &S, field: &str, source_root: Option<&AbsPath>) -> Option<RelPath> {
    let v = s.get_ref();
    let rel = match RelPath::parse(v) {
        Ok(r) => r,
        Err(m) => {
            let hint = match source_root {
                Some(root) if v.starts_with('/') && v.starts_with(&format!("{root}/")) => {
                    format!("; write it as `{}`", &v[root.as_str().len() + 1..])
                }
                _ => String::new(),
            };
            sink.at(s.span(), field, format!("image path must stay under cluster.source_root: {m}{hint}"));
            return None;
        }
    };
    for (bad, why) in NEVER_REPLICATED {
        let hit = rel.as_str() == *bad
            || rel.as_str().starts_with(&format!("{bad}/"))
            || (bad.starts_with('.') && rel.components().any(|c| c == *bad));
        if hit {
            sink.at(s.span(), field, format!("`{v}` must not be replicated: {why}"));
            return None;
        }
    }
    Some(rel)
}

fn clients(sink: &mut Sink<'_>, c: Option<&Spanned<Clients>>, field: &str, default: &str) -> Vec<String> {
    let Some(c) = c else { return vec![default.to_string()] };
    let span = c.span();
    let list = c.get_ref().to_vec();
    if list.is_empty() {
        sink.at(span.clone(), field, "no clients given (use \"*\" for everyone)");
    }
    for cl in &list {
        if cl.is_empty() || cl.chars().any(|ch| ch.is_whitespace() || matches!(ch, '(' | ')' | ',' | '"' | '#')) {
            sink.at(
                span.clone(),
                field,
                format!("client `{cl}` contains a character exports cannot carry (space, `(`, `)`, `,`, `\"`, `#`)"),
            );
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[cluster]
source_root = "/install"
backups = "ring"
domain = "cluster.example"
plaintext_loopback = true

[[sn]]
name = "sn1"
address = "127.0.0.1"
agent = "127.0.0.1:7001"

[[sn]]
name = "sn2"
address = "127.0.0.2"
agent = "127.0.0.1:7002"

[[sn]]
name = "sn3"
address = "127.0.0.3"
agent = "127.0.0.1:7003"
backups = ["sn1", "sn2"]

[[image]]
name = "rh8"
path = "netboot/rh8/x86_64/compute/rootimg"

[[statelite]]
name = "nodedata"
path = "/nodedata"
clients = "10.1.0.0/16"

[[node]]
name = "cn001"
sns = ["sn1", "sn2"]

[[node]]
name = "cn002"
sns = ["sn2", "sn1"]
served_by = "sn1"
"#;

    fn errs(text: &str) -> Vec<String> {
        match Cluster::from_toml("c.toml", text) {
            Ok(_) => vec![],
            Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn parses_and_resolves_backups() {
        let c = Cluster::from_toml("c.toml", OK).unwrap();
        assert_eq!(c.sns[0].backups, vec!["sn2"]);
        assert_eq!(c.sns[1].backups, vec!["sn3"]);
        assert_eq!(c.sns[2].backups, vec!["sn1", "sn2"]);
        assert_eq!(c.images[0].sns, vec!["sn1", "sn2", "sn3"]);
        assert_eq!(c.sns[0].agent.port, 7001);
        assert!(c.placement().is_moved("cn002"));
        assert!(!c.placement().is_moved("cn001"));
        let rs: Vec<_> = c.replica_set(&c.sns[2]).iter().map(|s| s.name).collect();
        assert_eq!(rs, vec!["sn3", "sn1", "sn2"]);
    }

    #[test]
    fn pairs_policy() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(policy_backups(BackupPolicy::Pairs, &names, 0), vec!["b"]);
        assert_eq!(policy_backups(BackupPolicy::Pairs, &names, 1), vec!["a"]);
        assert_eq!(policy_backups(BackupPolicy::Pairs, &names, 2), vec!["a"]);
        assert!(policy_backups(BackupPolicy::None, &names, 0).is_empty());
        assert!(policy_backups(BackupPolicy::Ring, &names[..1], 0).is_empty());
    }

    #[test]
    fn wrong_type_names_line_and_field() {
        let text = OK.replace("agent = \"127.0.0.1:7002\"", "agent = 7002");
        let e = errs(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("c.toml:16:"), "{}", e[0]);
        assert!(e[0].contains("sn[1].agent"), "{}", e[0]);
    }

    #[test]
    fn unknown_backup() {
        let text = OK.replace("backups = [\"sn1\", \"sn2\"]", "backups = [\"sn1\", \"sn9\"]");
        let e = errs(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("c.toml:22:"), "{}", e[0]);
        assert!(e[0].contains("sn[2].backups[1]: unknown server `sn9`"), "{}", e[0]);
    }

    #[test]
    fn self_backup() {
        let text = OK.replace("backups = [\"sn1\", \"sn2\"]", "backups = [\"sn3\"]");
        assert!(errs(&text)[0].contains("cannot back itself up"));
    }

    #[test]
    fn aix_hostname() {
        let text = OK.replace("address = \"127.0.0.1\"", "address = \"sn1.cluster\"\ndialect = \"aix\"");
        let e = errs(&text);
        assert!(
            e.iter().any(|e| e.starts_with("c.toml:10:") && e.contains("sn[0].address") && e.contains("needs an IP")),
            "{e:?}"
        );
    }

    #[test]
    fn aix_needs_domain() {
        let text = OK
            .replace("domain = \"cluster.example\"\n", "")
            .replace("agent = \"127.0.0.1:7001\"", "agent = \"127.0.0.1:7001\"\ndialect = \"aix\"");
        assert!(errs(&text).iter().any(|e| e.contains("NFSv4 domain")));
    }

    #[test]
    fn escaping_image_path() {
        for bad in ["../etc", "/etc/passwd", "netboot/../../etc", "autoinst/x", "nim/spot/.client_data"] {
            let text = OK.replace("netboot/rh8/x86_64/compute/rootimg", bad);
            let e = errs(&text);
            assert!(e.iter().any(|e| e.contains("image[0].path")), "{bad}: {e:?}");
        }
        let text = OK.replace("\"netboot/rh8/x86_64/compute/rootimg\"", "\"/install/netboot/x\"");
        assert!(errs(&text)[0].contains("write it as `netboot/x`"));
    }

    #[test]
    fn node_without_sn_and_unknown_sn() {
        let text = OK.replace("sns = [\"sn1\", \"sn2\"]", "sns = []");
        assert!(errs(&text)[0].contains("has no service node"));
        let text = OK.replace("sns = [\"sn1\", \"sn2\"]", "sns = [\"snX\"]");
        assert!(errs(&text)[0].contains("node[0].sns[0]: unknown SN `snX`"));
    }

    #[test]
    fn duplicates_and_unknown_fields() {
        let text = OK.replace("name = \"sn2\"", "name = \"sn1\"");
        assert!(errs(&text).iter().any(|e| e.contains("duplicate server name `sn1`")));
        let text = OK.replace("backups = \"ring\"", "backups = \"ring\"\nbakcups = 1");
        let e = errs(&text);
        assert!(e[0].contains("bakcups"), "{e:?}");
    }

    #[test]
    fn bad_addresses() {
        let text = OK.replace("address = \"127.0.0.2\"", "address = \"10.0.0.256\"");
        assert!(errs(&text)[0].contains("sn[1].address"));
    }

    #[test]
    fn names_that_are_not_one_safe_path_component() {
        // Each kind of name that ends up as a path component, each kind of bad name.
        let long = "x".repeat(256);
        let bads = ["..", ".", "../../victim", "a/b", "", "a\\u0000b", "-rf", long.as_str()];
        let fields = [
            ("name = \"rh8\"", "image[0].name"),
            ("name = \"nodedata\"", "statelite[0].name"),
            ("name = \"cn001\"", "node[0].name"),
            ("name = \"sn3\"", "sn[2].name"),
        ];
        for (orig, field) in fields {
            let line = OK[..OK.find(orig).unwrap()].matches('\n').count() + 1;
            for bad in bads {
                let text = OK.replace(orig, &format!("name = \"{bad}\""));
                let e = errs(&text);
                assert!(
                    e.iter().any(|e| e.starts_with(&format!("c.toml:{line}:")) && e.contains(&format!("{field}: "))),
                    "{field} = {bad:?}: {e:?}"
                );
            }
        }
    }

    #[test]
    fn zstd_level_is_config_with_a_default() {
        assert_eq!(Cluster::from_toml("c.toml", OK).unwrap().zstd_level(), DEFAULT_ZSTD_LEVEL);
        for l in [0, 7, MAX_ZSTD_LEVEL] {
            let text = OK.replace("[cluster]\n", &format!("[cluster]\nzstd_level = {l}\n"));
            assert_eq!(Cluster::from_toml("c.toml", &text).unwrap().zstd_level(), l);
        }
    }

    #[test]
    fn health_settings_read_as_written() {
        let c = Cluster::from_toml("c.toml", OK).unwrap();
        assert_eq!(c.health(), &crate::Health::default());
        assert_eq!(c.sn("sn1").unwrap().service_address, None);
        let text = OK
            .replace(
                "[cluster]\n",
                "[cluster]\nfailover = \"auto\"\nfence = [\"rpower\", \"{sn}\", \"off\"]\nprobe_interval_secs = 0.2\n\
                 dead_after_secs = 1\nfence_verify = [\"rpower\", \"{sn}\", \"stat\"]\nfence_verify_expect = \"off\"\n\
                 notify = [\"logger\", \"{reason}\"]\nnfs_port = 2050\nportmap_port = 2050\nnfs_versions = [3]\n",
            )
            .replace(
                "agent = \"127.0.0.1:7001\"\n",
                "agent = \"127.0.0.1:7001\"\nservice_address = \"10.0.1.101/24\"\n",
            );
        let c = Cluster::from_toml("c.toml", &text).unwrap();
        let h = c.health();
        assert_eq!(h.failover, crate::Failover::Auto);
        assert_eq!(h.probe_interval, Some(std::time::Duration::from_millis(200)));
        assert_eq!(h.dead_after, Some(std::time::Duration::from_secs(1)));
        assert_eq!((h.nfs_port, h.portmap_port, h.mount_port), (Some(2050), Some(2050), None));
        assert_eq!(h.fence_verify_expect.as_deref(), Some("off"));
        assert_eq!(h.nfs_versions, Some(vec![3]));
        assert_eq!(c.sn("sn1").unwrap().service_address.unwrap().to_string(), "10.0.1.101/24");
    }

    #[test]
    fn fanout_and_racks_are_checked_with_their_line() {
        let c = Cluster::from_toml("c.toml", OK).unwrap();
        assert_eq!(c.fanout(), 0, "star by default");
        assert_eq!(c.sn("sn1").unwrap().rack, None);
        let text = OK
            .replace("[cluster]\n", "[cluster]\nfanout = 3\n")
            .replace("agent = \"127.0.0.1:7002\"\n", "agent = \"127.0.0.1:7002\"\nrack = \"r12\"\n");
        let c = Cluster::from_toml("c.toml", &text).unwrap();
        assert_eq!(c.fanout(), 3);
        assert_eq!(c.sn("sn2").unwrap().rack.as_deref(), Some("r12"));
        let e = Cluster::from_toml("c.toml", &OK.replace("[cluster]\n", "[cluster]\nfanout = 65\n")).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:3:10: cluster.fanout: must be 0 (star) to 64"), "{e}");
        let bad = OK.replace("agent = \"127.0.0.1:7002\"\n", "agent = \"127.0.0.1:7002\"\nrack = \"../r\"\n");
        let e = Cluster::from_toml("c.toml", &bad).unwrap_err();
        assert!(e.to_string().contains("sn[1].rack:"), "{e}");
    }

    #[test]
    fn an_sn_may_have_its_own_nfs_and_mount_ports() {
        let text = OK.replace(
            "agent = \"127.0.0.1:7002\"\n",
            "agent = \"127.0.0.1:7002\"\nnfs_port = 2050\nmount_port = 2051\n",
        );
        let c = Cluster::from_toml("c.toml", &text).unwrap();
        let (a, b) = (c.sn("sn1").unwrap(), c.sn("sn2").unwrap());
        assert_eq!((a.nfs_port, a.mount_port), (None, None));
        assert_eq!((b.nfs_port, b.mount_port), (Some(2050), Some(2051)));
        // Written back through the schema, read the same.
        let again = ConfigFile::parse("c.toml", &text).unwrap().to_toml().unwrap();
        assert_eq!(Cluster::from_toml("c.toml", &again).unwrap().sn("sn2"), Some(b));
    }

    #[test]
    fn every_error_carries_line_column_and_field() {
        let nested = format!("{OK}\n[[image]]\nname = \"inner\"\npath = \"netboot/rh8/x86_64/compute/rootimg/sub\"\n");
        let cases: Vec<(String, &str)> = vec![
            (nested.clone(), "image[1].path: path `netboot/rh8/x86_64/compute/rootimg/sub` lies inside image `rh8`"),
            (OK.replace("agent = \"127.0.0.1:7001\"", "agent = \"10.0.0.1:7001\""), "sn[0].agent: a [tls] section"),
            (OK.replace("plaintext_loopback = true\n", ""), "cluster.plaintext_loopback:"),
            (
                "[cluster]\nsource_root = \"/install\"\nplaintext_loopback = true\n".to_string(),
                "sn: the cluster defines no",
            ),
            (
                OK.replace("sn_timeout", "x").replace("[cluster]\n", "[cluster]\nsn_timeout_secs = 0\n"),
                "cluster.sn_timeout_secs:",
            ),
            (OK.replace("[cluster]\n", "[cluster]\nzstd_level = 20\n"), "cluster.zstd_level: must be 0"),
            (OK.replace("[cluster]\n", "[cluster]\nzstd_level = -1\n"), "cluster.zstd_level: must be 0"),
            (OK.replace("[cluster]\n", "[cluster]\nfailover = \"auto\"\n"), "cluster.failover: \"auto\" needs a fence"),
            (OK.replace("[cluster]\n", "[cluster]\nfailover = \"sometimes\"\n"), "cluster.failover: `sometimes`"),
            (OK.replace("[cluster]\n", "[cluster]\ndead_after_secs = 0\n"), "cluster.dead_after_secs: 0 is not"),
            (OK.replace("[cluster]\n", "[cluster]\nprobe_interval_secs = -1.5\n"), "cluster.probe_interval_secs:"),
            (OK.replace("[cluster]\n", "[cluster]\nnfs_port = 70000\n"), "cluster.nfs_port: must be a port"),
            (OK.replace("[cluster]\n", "[cluster]\nnfs_versions = [3, 5]\n"), "cluster.nfs_versions:"),
            (OK.replace("[cluster]\n", "[cluster]\nfence_verify_expect = \" \"\n"), "cluster.fence_verify_expect:"),
            (
                OK.replace(
                    "agent = \"127.0.0.1:7002\"\n",
                    "agent = \"127.0.0.1:7002\"\nservice_address = \"10.0.1.102\"\n",
                ),
                "sn[1].service_address: `10.0.1.102`: expected ADDRESS/PREFIX",
            ),
            (
                OK.replace("agent = \"127.0.0.1:7002\"\n", "agent = \"127.0.0.1:7002\"\nnfs_port = 0\n"),
                "sn[1].nfs_port: must be a port",
            ),
            (
                OK.replace("agent = \"127.0.0.1:7002\"\n", "agent = \"127.0.0.1:7002\"\nmount_port = 65536\n"),
                "sn[1].mount_port: must be a port",
            ),
        ];
        for (text, want) in cases {
            let d = Cluster::from_toml("c.toml", &text).unwrap_err();
            for x in &d.0 {
                assert!(x.line > 0 && x.column > 0 && !x.field.is_empty(), "{x}");
            }
            let e: Vec<String> = d.0.iter().map(|x| x.to_string()).collect();
            assert!(e.iter().any(|e| e.contains(want)), "{want}: {e:?}");
        }
        // The nested image is pointed at its own path line.
        let d = Cluster::from_toml("c.toml", &nested).unwrap_err();
        let line = nested[..nested.rfind("path = ").unwrap()].matches('\n').count() + 1;
        assert_eq!(d.0[0].line, line, "{d}");
    }

    fn moves(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect()
    }

    #[test]
    fn placement_from_config() {
        let c = Cluster::from_toml("c.toml", OK).unwrap();
        let p = c.placement();
        assert_eq!(p.home("cn001"), Some("sn1"));
        assert_eq!(p.serving("cn001"), Some("sn1"));
        // served_by in the config is a move away from the home (sns[0]).
        assert_eq!(p.home("cn002"), Some("sn2"));
        assert_eq!(p.serving("cn002"), Some("sn1"));
        assert_eq!(p.moves(), moves(&[("cn002", "sn1")]));
        assert_eq!(p.serving("cn999"), None);
        assert_eq!(p.served_by("sn1").collect::<Vec<_>>(), vec!["cn001", "cn002"]);
        assert_eq!(p.served_by("sn2").count(), 0);
    }

    #[test]
    fn with_moves_checks_each_move() {
        let text = format!("{OK}\n[[external]]\nname = \"ext1\"\naddress = \"127.0.0.9\"\n");
        let c = Cluster::from_toml("c.toml", &text).unwrap();
        assert_eq!(c.with_moves(&moves(&[("cn009", "sn2")])), Err(MoveError::UnknownNode("cn009".into())));
        assert_eq!(
            c.with_moves(&moves(&[("cn001", "sn9")])),
            Err(MoveError::UnknownSn { node: "cn001".into(), sn: "sn9".into() })
        );
        assert_eq!(
            c.with_moves(&moves(&[("cn001", "ext1")])),
            Err(MoveError::NotAnSn { node: "cn001".into(), sn: "ext1".into() })
        );
        assert_eq!(
            c.with_moves(&moves(&[("cn001", "sn1")])),
            Err(MoveError::AlreadyServed { node: "cn001".into(), sn: "sn1".into() })
        );
        // All or nothing: a good move beside a bad one is not applied either.
        assert!(c.with_moves(&moves(&[("cn001", "sn3"), ("cn009", "sn2")])).is_err());
        assert_eq!(c.placement().serving("cn001"), Some("sn1"));

        let after = c.with_moves(&moves(&[("cn001", "sn3")])).unwrap();
        assert_eq!(after.serving("cn001"), Some("sn3"));
        assert!(after.placement().is_moved("cn001"));
        // The original is untouched: a Cluster never changes.
        assert_eq!(c.serving("cn001"), Some("sn1"));
        // Back home undoes the move.
        let back = after.with_moves(&moves(&[("cn001", "sn1"), ("cn002", "sn2")])).unwrap();
        assert!(back.placement().moves().is_empty());
        assert_eq!(back.serving("cn002"), Some("sn2"));
    }

    #[test]
    fn recorded_moves_drop_stale_entries() {
        let c = Cluster::from_toml("c.toml", OK).unwrap();
        let (after, warn) =
            c.with_recorded_moves(&moves(&[("cn001", "sn2"), ("cn002", "sn1"), ("gone", "sn1"), ("cn002x", "sn7")]));
        assert_eq!(after.placement().moves(), moves(&[("cn001", "sn2"), ("cn002", "sn1")]));
        assert_eq!(warn.len(), 2, "{warn:?}");
        assert!(warn.iter().any(|w| w.contains("`gone` is no longer in the config")), "{warn:?}");
        assert!(warn.iter().any(|w| w.contains("SN `sn7` is no longer in the config")), "{warn:?}");
    }

    #[test]
    fn schema_round_trip_and_code_built_config() {
        use crate::config::*;
        let file: ConfigFile = toml::from_str(OK).unwrap();
        let again: ConfigFile = toml::from_str(&file.to_toml().unwrap()).unwrap();
        assert_eq!(again, file);
        let from_text = Cluster::from_toml("c.toml", OK).unwrap();
        assert_eq!(Cluster::from_toml("c.toml", &file.to_toml().unwrap()).unwrap(), from_text);

        // The same cluster built in code.
        let mut cluster = ClusterSection::new("/install");
        cluster.backups = Some(sp("ring".into()));
        cluster.domain = Some(sp("cluster.example".into()));
        cluster.plaintext_loopback = true;
        let mut built = ConfigFile::new(cluster);
        built.sn = vec![
            SnSection::new("sn1", "127.0.0.1").agent("127.0.0.1:7001"),
            SnSection::new("sn2", "127.0.0.2").agent("127.0.0.1:7002"),
            SnSection::new("sn3", "127.0.0.3").agent("127.0.0.1:7003").backups(["sn1", "sn2"]),
        ];
        built.image = vec![ImageSection::new("rh8", "netboot/rh8/x86_64/compute/rootimg")];
        built.statelite =
            vec![StateliteSection::new("nodedata", "/nodedata").clients(Clients::One("10.1.0.0/16".into()))];
        built.node =
            vec![NodeSection::new("cn001", ["sn1", "sn2"]), NodeSection::new("cn002", ["sn2", "sn1"]).served_by("sn1")];
        assert_eq!(built, file, "spans are not part of the value");
        assert_eq!(Cluster::from_config("built", &built).unwrap(), from_text);

        // A code-built config's diagnostics name the field; there is no line to name.
        built.node[0].sns = sp(vec![sp("sn9".to_string())]);
        let d = Cluster::from_config("built", &built).unwrap_err();
        assert_eq!(d.to_string(), "built: node[0].sns[0]: unknown SN `sn9`");
    }

    #[test]
    fn dialect_parses_one_way() {
        assert_eq!("aix".parse::<Dialect>(), Ok(Dialect::Aix));
        assert_eq!("linux".parse::<Dialect>(), Ok(Dialect::Linux));
        assert!("AIX".parse::<Dialect>().unwrap_err().contains("unknown dialect `AIX`"));
        for d in [Dialect::Aix, Dialect::Linux] {
            assert_eq!(d.to_string().parse::<Dialect>(), Ok(d));
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        const NODES: [&str; 2] = ["cn001", "cn002"];
        const SNS: [&str; 3] = ["sn1", "sn2", "sn3"];

        proptest! {
            /// Any sequence of accepted moves leaves each node served where its last move put it, a
            /// node is "moved" exactly when that is not its home, and the move set applied to the
            /// original config reproduces the same placement (the persisted overlay round trip).
            #[test]
            fn moves_compose(steps in proptest::collection::vec((0..2usize, 0..3usize), 0..12)) {
                let base = Cluster::from_toml("c.toml", OK).unwrap();
                let mut c = base.clone();
                let mut want: BTreeMap<&str, &str> = BTreeMap::from([("cn001", "sn1"), ("cn002", "sn1")]);
                for (n, s) in steps {
                    let m = moves(&[(NODES[n], SNS[s])]);
                    match c.with_moves(&m) {
                        Ok(next) => {
                            prop_assert_ne!(want[NODES[n]], SNS[s]);
                            want.insert(NODES[n], SNS[s]);
                            c = next;
                        }
                        Err(e) => {
                            prop_assert_eq!(e, MoveError::AlreadyServed { node: NODES[n].into(), sn: SNS[s].into() });
                            prop_assert_eq!(want[NODES[n]], SNS[s]);
                        }
                    }
                }
                for n in NODES {
                    prop_assert_eq!(c.serving(n), Some(want[n]));
                    prop_assert_eq!(c.placement().is_moved(n), c.placement().home(n) != Some(want[n]));
                }
                // The record of changes, replayed onto the config, gives the same placement back:
                // also for cn002 moved home against the config's `served_by`.
                let (replayed, warn) = base.with_recorded_moves(&c.placement().changes());
                prop_assert!(warn.is_empty());
                prop_assert_eq!(replayed.placement(), c.placement());
            }
        }
    }

    #[test]
    fn tls_required_off_loopback() {
        let text = OK.replace("agent = \"127.0.0.1:7001\"", "agent = \"10.0.0.1:7001\"");
        assert!(errs(&text)[0].contains("[tls] section is required"));
    }
}
