//! The hanfs model: what a cluster is (service nodes, backups, images, statelite areas, nodes) and
//! what an agent is configured with. Pure: parsing and validation only, no I/O. Everything above
//! (rendering, sync, agent) works from a validated [`Cluster`], so invariants checked here hold
//! everywhere: names resolve, addresses are well formed, paths stay under their roots.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod addr;
pub mod agent;
pub mod cluster;
pub mod config;
pub mod error;
pub mod health;
pub mod name;
pub mod path;
pub mod placement;
pub mod relay;

pub use addr::{Address, Endpoint};
pub use agent::AgentConfig;
pub use cluster::{
    BackupPolicy, Cluster, Dialect, ExternalServer, Image, Node, Server, ServiceNode, Statelite, TlsFiles,
};
pub use config::ConfigFile;
pub use error::{Diagnostic, Diagnostics};
pub use health::{Failover, Health, ServiceAddress};
pub use name::{check_name, Name, MAX_NAME};
pub use path::{AbsPath, RelPath};
pub use placement::{MoveError, Placement};
