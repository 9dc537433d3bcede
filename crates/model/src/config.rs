//! The cluster config as written (contract.md "Cluster config"): the one schema of the file, read
//! by [`Cluster::from_toml`](crate::Cluster::from_toml), written by the xCAT import, the demo and the
//! tests. Values keep the span they were read from so diagnostics point at line and column; a
//! config built in code has empty spans ([`sp`]). Nothing here is checked: a [`ConfigFile`] becomes
//! a [`Cluster`](crate::Cluster) only through validation ([`Cluster::from_config`](crate::Cluster::from_config)).

use crate::cluster::TlsFiles;
use serde::{Deserialize, Serialize};
pub use toml::Spanned;

/// A string as written, with where it was written.
pub type Text = Spanned<String>;

/// A value with no place in a file: for configs built in code.
pub fn sp<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

fn text(s: impl Into<String>) -> Text {
    sp(s.into())
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub cluster: ClusterSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sn: Vec<SnSection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<ExternalSection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image: Vec<ImageSection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statelite: Vec<StateliteSection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node: Vec<NodeSection>,
}

impl ConfigFile {
    /// A config with only its `[cluster]` section.
    pub fn new(cluster: ClusterSection) -> ConfigFile {
        ConfigFile {
            cluster,
            tls: None,
            sn: Vec::new(),
            external: Vec::new(),
            image: Vec::new(),
            statelite: Vec::new(),
            node: Vec::new(),
        }
    }

    /// Reads a config file as written, unvalidated (for editing it; a `Cluster` comes only from
    /// validation). `file` is only used in diagnostics.
    pub fn parse(file: &str, text: &str) -> Result<ConfigFile, crate::Diagnostics> {
        crate::error::Sink::new(file, text).parse(text)
    }

    /// The file as TOML (sections in schema order, unset optional keys left out).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub source_root: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<Text>,
    /// `ring`, `pairs` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Text>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub plaintext_loopback: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fence: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sn_timeout_secs: Option<Spanned<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd_level: Option<Spanned<i64>>,
    /// `manual` (default) or `auto`: whether `hanfs daemon` fences and promotes a dead SN itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_interval_secs: Option<Spanned<Seconds>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_timeout_secs: Option<Spanned<Seconds>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_after_secs: Option<Spanned<Seconds>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_down_secs: Option<Spanned<Seconds>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_timeout_secs: Option<Spanned<Seconds>>,
    /// Waits before the 2nd, 3rd, ... attempt of one fence run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_retry_secs: Option<Spanned<Vec<Seconds>>>,
    /// Wait after a failed fence run before the next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_rerun_after_secs: Option<Spanned<Seconds>>,
    /// argv run after the fence; it must exit 0 and print `fence_verify_expect`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fence_verify: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_verify_expect: Option<Text>,
    /// argv run when a fence fails (and on other health alerts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs_port: Option<Spanned<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_port: Option<Spanned<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portmap_port: Option<Spanned<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs_versions: Option<Spanned<Vec<i64>>>,
    /// Relay fan-out of image payloads: each SN forwards to at most this many others (0: star,
    /// the MN sends to every SN itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout: Option<Spanned<i64>>,
}

/// A number of seconds as written (integer or fractional). `Eq` compares the written values, which
/// are never NaN once validated; configs are compared only in tests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seconds(pub f64);

impl Eq for Seconds {}

impl ClusterSection {
    pub fn new(source_root: impl Into<String>) -> ClusterSection {
        ClusterSection {
            source_root: text(source_root),
            state_dir: None,
            backups: None,
            domain: None,
            plaintext_loopback: false,
            fence: Vec::new(),
            sn_timeout_secs: None,
            zstd_level: None,
            failover: None,
            probe_interval_secs: None,
            probe_timeout_secs: None,
            dead_after_secs: None,
            hold_down_secs: None,
            fence_timeout_secs: None,
            fence_retry_secs: None,
            fence_rerun_after_secs: None,
            fence_verify: Vec::new(),
            fence_verify_expect: None,
            notify: Vec::new(),
            nfs_port: None,
            mount_port: None,
            portmap_port: None,
            nfs_versions: None,
            fanout: None,
        }
    }
}

/// `[[sn]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnSection {
    pub name: Text,
    pub address: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Text>,
    /// `linux` or `aix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialect: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<Spanned<Vec<Text>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Text>,
    /// AIX `mkdsklsnode -S`: one read-write export of the SN's root (see `ServiceNode::setuphanfs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setuphanfs: Option<Spanned<bool>>,
    /// The floating address its nodes mount from, with its prefix (`10.0.1.101/24`): probed by the
    /// daemon and taken over by a backup on failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_address: Option<Text>,
    /// This SN's NFS port for the health probe, over `[cluster] nfs_port` (SNs of one cluster may
    /// run their servers on different ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs_port: Option<Spanned<i64>>,
    /// This SN's MOUNT port, over `[cluster] mount_port` (set: called directly, no portmap query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_port: Option<Spanned<i64>>,
    /// Where it sits in the network (a rack, a switch): relay children are taken from their
    /// parent's rack first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<Text>,
}

impl SnSection {
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> SnSection {
        SnSection {
            name: text(name),
            address: text(address),
            agent: None,
            dialect: None,
            backups: None,
            root: None,
            setuphanfs: None,
            service_address: None,
            nfs_port: None,
            mount_port: None,
            rack: None,
        }
    }

    pub fn agent(mut self, agent: impl Into<String>) -> SnSection {
        self.agent = Some(text(agent));
        self
    }

    pub fn dialect(mut self, dialect: crate::Dialect) -> SnSection {
        self.dialect = Some(text(dialect.as_str()));
        self
    }

    pub fn backups<I: IntoIterator<Item = S>, S: Into<String>>(mut self, backups: I) -> SnSection {
        self.backups = Some(sp(backups.into_iter().map(text).collect()));
        self
    }

    pub fn root(mut self, root: impl Into<String>) -> SnSection {
        self.root = Some(text(root));
        self
    }

    /// The port its NFS server answers on, when not `[cluster] nfs_port`.
    pub fn nfs_port(mut self, port: u16) -> SnSection {
        self.nfs_port = Some(sp(i64::from(port)));
        self
    }

    pub fn mount_port(mut self, port: u16) -> SnSection {
        self.mount_port = Some(sp(i64::from(port)));
        self
    }
}

/// `[[external]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSection {
    pub name: Text,
    pub address: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Text>,
}

impl ExternalSection {
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> ExternalSection {
        ExternalSection { name: text(name), address: text(address), agent: None, root: None }
    }
}

/// `[[image]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    pub name: Text,
    pub path: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Spanned<Clients>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sns: Option<Vec<Text>>,
}

impl ImageSection {
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> ImageSection {
        ImageSection { name: text(name), path: text(path), clients: None, exclude: Vec::new(), sns: None }
    }

    pub fn sns<I: IntoIterator<Item = S>, S: Into<String>>(mut self, sns: I) -> ImageSection {
        self.sns = Some(sns.into_iter().map(text).collect());
        self
    }

    pub fn clients(mut self, clients: Clients) -> ImageSection {
        self.clients = Some(sp(clients));
        self
    }
}

/// `[[statelite]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateliteSection {
    pub name: Text,
    pub path: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Spanned<Clients>>,
    /// Served by kernel nfsd and copied agent to agent as it changes (`[[statelite_kernel]]` in
    /// the agents' configs): the controller's periodic copy leaves it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous: Option<bool>,
}

impl StateliteSection {
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> StateliteSection {
        StateliteSection { name: text(name), path: text(path), clients: None, continuous: None }
    }

    pub fn clients(mut self, clients: Clients) -> StateliteSection {
        self.clients = Some(sp(clients));
        self
    }
}

/// `[[node]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub name: Text,
    /// Primary (the node's home) first.
    pub sns: Spanned<Vec<Text>>,
    /// The SN serving the node when it is not its home (a move xCAT already made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statelite: Option<Vec<Text>>,
}

impl NodeSection {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(name: impl Into<String>, sns: I) -> NodeSection {
        NodeSection { name: text(name), sns: sp(sns.into_iter().map(text).collect()), served_by: None, statelite: None }
    }

    pub fn served_by(mut self, sn: impl Into<String>) -> NodeSection {
        self.served_by = Some(text(sn));
        self
    }

    pub fn statelite<I: IntoIterator<Item = S>, S: Into<String>>(mut self, areas: I) -> NodeSection {
        self.statelite = Some(areas.into_iter().map(text).collect());
        self
    }
}

/// `clients = "*"` or `clients = ["10.1.0.0/16", "@compute"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Clients {
    /// One string; several specs separated by white space.
    One(String),
    Many(Vec<String>),
}

impl Clients {
    /// The client specs.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Clients::One(s) => s.split_whitespace().map(str::to_string).collect(),
            Clients::Many(v) => v.clone(),
        }
    }
}
