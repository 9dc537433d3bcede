//! Which SN serves which node's statelite data now. The one owner of that fact: built from the
//! config when a [`Cluster`](crate::Cluster) is validated and changed only by validated moves
//! ([`Cluster::with_moves`](crate::Cluster::with_moves)), so every render of exports, every sync
//! and every move reads the same answer.

use std::collections::BTreeMap;

/// Node -> home SN (its primary, `sns[0]`) and node -> serving SN for the nodes served elsewhere.
/// A node absent from `moved` is served by its home.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    home: BTreeMap<String, String>,
    /// Moves the config itself states (`served_by`): what a persisted move record is relative to.
    configured: BTreeMap<String, String>,
    moved: BTreeMap<String, String>,
}

/// Why a requested move was refused; nothing is changed when one is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("no node named `{0}`")]
    UnknownNode(String),
    #[error("no SN named `{sn}` (to serve node {node})")]
    UnknownSn { node: String, sn: String },
    #[error("`{sn}` is an external server, not an SN: it cannot serve node {node}")]
    NotAnSn { node: String, sn: String },
    #[error("node {node} is already served by {sn}")]
    AlreadyServed { node: String, sn: String },
}

impl Placement {
    /// From each node's home and, where the config says it is served elsewhere, that SN.
    pub(crate) fn new(nodes: impl IntoIterator<Item = (String, String, Option<String>)>) -> Placement {
        let mut p = Placement::default();
        for (node, home, serving) in nodes {
            if let Some(s) = serving.filter(|s| *s != home) {
                p.moved.insert(node.clone(), s);
            }
            p.home.insert(node, home);
        }
        p.configured = p.moved.clone();
        p
    }

    /// The SN serving `node` now; `None` for a node the cluster does not have.
    pub fn serving(&self, node: &str) -> Option<&str> {
        self.moved.get(node).or_else(|| self.home.get(node)).map(String::as_str)
    }

    /// The node's home (primary) SN: where its data lives unless it was moved.
    pub fn home(&self, node: &str) -> Option<&str> {
        self.home.get(node).map(String::as_str)
    }

    /// The nodes not served by their home: node -> serving SN.
    pub fn moves(&self) -> BTreeMap<String, String> {
        self.moved.clone()
    }

    /// Whether the node's data was moved away from its home SN.
    pub fn is_moved(&self, node: &str) -> bool {
        self.moved.contains_key(node)
    }

    /// The SN the config says serves `node` (its `served_by`, else its home), before any move.
    pub fn configured(&self, node: &str) -> Option<&str> {
        self.configured.get(node).or_else(|| self.home.get(node)).map(String::as_str)
    }

    /// The nodes served elsewhere than the config says: node -> serving SN. This is what a move
    /// record must hold so that [`Cluster::with_recorded_moves`](crate::Cluster::with_recorded_moves)
    /// on the config gives this placement back (a node moved home against a `served_by` included).
    pub fn changes(&self) -> BTreeMap<String, String> {
        self.home
            .keys()
            .filter_map(|n| {
                let now = self.serving(n)?;
                (Some(now) != self.configured(n)).then(|| (n.clone(), now.to_string()))
            })
            .collect()
    }

    /// The nodes `sn` serves now, by name.
    pub fn served_by<'a>(&'a self, sn: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.home.keys().map(String::as_str).filter(move |n| self.serving(n) == Some(sn))
    }

    /// Sets the serving SN of a known node (the caller checked both names).
    pub(crate) fn set(&mut self, node: &str, sn: &str) {
        if self.home.get(node).map(String::as_str) == Some(sn) {
            self.moved.remove(node);
        } else if self.home.contains_key(node) {
            self.moved.insert(node.to_string(), sn.to_string());
        }
    }
}
