//! The command line: every command of contract.md, with help that teaches the workflow.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const ABOUT: &str = "Keep NFS up in hierarchical xCAT clusters.

hanfs replicates read-only image trees (/install/netboot, /install/nim) from the management node to \
every service node with librsync deltas computed once, applies them atomically and proves every replica \
identical by digest; writes NFSv4 replicas=/refer= exports (Linux and AIX) so clients can fail over; and \
moves nodes' writable statelite data between service nodes.";

const AFTER: &str = "Typical use on the management node:
  hanfs xcat import --cfgloc /etc/xcat/cfgloc -o /etc/hanfs/hanfs.toml   # describe the cluster once
  hanfs ca init /etc/hanfs/ca && hanfs ca issue /etc/hanfs/ca --name sn1   # TLS for the agents
  hanfs plan                     # what a sync would send and which exports it would write
  hanfs sync                     # after each image update (genimage, packimage, NIM updates)
  hanfs verify                   # every replica's digest against the source
On each service node: `hanfs agent --config /etc/hanfs/agent.toml` (systemd unit hanfs-agent.service).

Exit status: 0 success; 1 the operation failed on some SN or a replica does not match; 2 bad usage,
config or input (nothing changed).";

#[derive(Debug, Parser)]
#[command(name = "hanfs", version, about = ABOUT, after_help = AFTER, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Cluster config (TOML; see `exports/*/cluster.toml` for examples).
    #[arg(long, global = true, env = "HANFS_CONFIG", default_value = CLUSTER_CONFIG_DEFAULT)]
    pub config: PathBuf,
    /// Machine-readable JSON on stdout; logs stay on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log detail (-v info, -vv debug, -vvv trace). HANFS_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what `sync` would send and which exports it would write, per SN. Changes nothing.
    Plan(SyncArgs),
    /// Replicate images to every SN: scan, send deltas, apply atomically, verify, write exports, reload NFS.
    Sync(SyncArgs),
    /// Watch source_root and sync what changed once the tree is quiet.
    Daemon(DaemonArgs),
    /// Per SN: reachable, generation and digest per image.
    Status,
    /// Compare every replica's digest with the source's.
    Verify(ImageFilter),
    /// Print the rendered exports for one SN (or all), in its dialect.
    Exports(ExportsArgs),
    /// Planned move of nodes' writable statelite data to another SN (--back SN: after a failover).
    Migrate(MigrateArgs),
    /// Unplanned: fence a dead SN, promote its backups' copies, repoint xCAT, re-export.
    Failover(FailoverArgs),
    /// Read the cluster from xCAT's tables.
    #[command(subcommand)]
    Xcat(XcatCommand),
    /// Mutual-TLS material for the MN and the agents.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run the service-node agent: receive deltas, apply, write exports, serve NFSv3 if asked.
    ///
    /// The agent reads its own config (contract "Agent config"): `--config FILE`, else
    /// $HANFS_CONFIG, else /etc/hanfs/agent.toml (not the cluster config).
    Agent(AgentArgs),
    /// librsync-format signature/delta/patch files, interchangeable with `rdiff` (MD4 flavour).
    #[command(subcommand)]
    Delta(DeltaCommand),
    /// Run the whole job locally: N agents on loopback, a sample image, syncs, exports, read-back.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct ImageFilter {
    /// Only this image (repeatable). Default: every image.
    #[arg(long = "image", value_name = "NAME")]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub filter: ImageFilter,
    /// Compute and show everything, send and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9468.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Seconds the tree must stay quiet before a sync starts.
    #[arg(long, default_value_t = 10)]
    pub quiet_secs: u64,
    /// Copy statelite data (each node's directory, serving SN -> backups) every this many seconds;
    /// 0 turns it off. Writable data changes without image updates, so it has its own clock.
    #[arg(long, default_value_t = 300)]
    pub statelite_secs: u64,
}

#[derive(Debug, Args)]
pub struct ExportsArgs {
    /// Only this SN. Default: every SN, each under a `# sn: NAME` heading.
    #[arg(long, value_name = "NAME")]
    pub sn: Option<String>,
    /// Print commands instead of the file: AIX the `mknfsexp` commands (with `chnfs -R on` and
    /// `chnfsdom` first), Linux a shell snippet that writes the file and runs `exportfs -ra`.
    #[arg(long)]
    pub commands: bool,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Node to move (repeatable).
    #[arg(long = "node", value_name = "NODE", required_unless_present = "back")]
    pub nodes: Vec<String>,
    /// The SN that will serve them.
    #[arg(long, value_name = "SN", required_unless_present = "back")]
    pub to: Option<String>,
    /// Give the failed-over SN, healthy again, its nodes, data and service address back.
    #[arg(long, value_name = "SN", conflicts_with_all = ["to", "nodes"])]
    pub back: Option<String>,
    /// Show the steps, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub xcat: XcatRepoint,
}

/// Where `migrate`/`failover` repoint moved nodes in xCAT (like `hanfs xcat redirect`). Without a
/// source the xCAT step is skipped and the equivalent `hanfs xcat redirect` command is printed.
#[derive(Debug, Args)]
pub struct XcatRepoint {
    #[command(flatten)]
    pub source: XcatSource,
    /// Run the chdef/chtab commands (default: print them).
    #[arg(long)]
    pub apply_xcat: bool,
    /// TOML file with command templates (`chdef = [...]`, `chtab = [...]`).
    #[arg(long, value_name = "FILE")]
    pub templates: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The dead SN.
    #[arg(long, value_name = "SN")]
    pub sn: String,
    /// Show the steps, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Promote even when fencing fails or no fence command is configured (risks split brain).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub xcat: XcatRepoint,
}

#[derive(Debug, Subcommand)]
pub enum XcatCommand {
    /// Build the cluster config from xCAT's tables.
    Import(XcatImportArgs),
    /// Repoint nodes to another SN in xCAT (chdef/chtab, as snmove changes them). Prints the
    /// commands unless --apply.
    Redirect(XcatRedirectArgs),
}

/// Exactly one table source is required (checked when the command runs).
#[derive(Debug, Args)]
pub struct XcatRedirectArgs {
    #[command(flatten)]
    pub source: XcatSource,
    /// Node to repoint (repeatable).
    #[arg(long = "node", value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
    /// The SN that serves them from now on.
    #[arg(long, value_name = "SN")]
    pub to: String,
    /// The new SN's address as the nodes see it (default: the xcatmaster its own nodes use).
    #[arg(long, value_name = "ADDR")]
    pub address: Option<String>,
    /// Run the commands (default: print them).
    #[arg(long)]
    pub apply: bool,
    /// TOML file with command templates (`chdef = [...]`, `chtab = [...]`).
    #[arg(long, value_name = "FILE")]
    pub templates: Option<PathBuf>,
    /// Where --apply records what ran (default: xcat-redirect.log in the cluster's state_dir).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

/// Where xCAT's tables are: at most one of the three (commands that need them say so).
#[derive(Debug, Args)]
#[group(id = "xcat_source", multiple = false)]
pub struct XcatSource {
    /// A directory of `<table>.csv` files written by `tabdump <table>`.
    #[arg(long, value_name = "DIR")]
    pub tabdump: Option<PathBuf>,
    /// A directory of xCAT SQLite files (`<table>.sqlite`), e.g. /etc/xcat.
    #[arg(long, value_name = "DIR")]
    pub sqlite: Option<PathBuf>,
    /// xCAT's /etc/xcat/cfgloc naming a PostgreSQL or MySQL/MariaDB database.
    #[arg(long, value_name = "FILE")]
    pub cfgloc: Option<PathBuf>,
}

/// Exactly one table source is required (checked when the command runs).
#[derive(Debug, Args)]
pub struct XcatImportArgs {
    #[command(flatten)]
    pub source: XcatSource,
    /// Write the config here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA (ca.pem, ca.key) in DIR.
    Init { dir: PathBuf },
    /// Issue a certificate for the MN or an agent, signed by the CA in DIR.
    Issue {
        dir: PathBuf,
        /// Certificate name (the SN name, or `mn`); also its DNS subject alternative name.
        #[arg(long)]
        name: String,
        /// Extra IP addresses or DNS names for the certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    // The agent reads its own config through the global `--config`: an explicit path or
    // $HANFS_CONFIG is taken as is; the cluster default /etc/hanfs/hanfs.toml means
    // /etc/hanfs/agent.toml here (a second `--config` on this subcommand would clash with the global).
}

/// Where `hanfs agent` reads its config when `--config` was not given.
pub const AGENT_CONFIG_DEFAULT: &str = "/etc/hanfs/agent.toml";
/// The global `--config` default (the cluster config).
pub const CLUSTER_CONFIG_DEFAULT: &str = "/etc/hanfs/hanfs.toml";

#[derive(Debug, Subcommand)]
pub enum DeltaCommand {
    /// Write the MD4 signature of OLD (same bytes as `rdiff -H md4 -R rollsum -S 8 signature`).
    Signature {
        /// Block size; default as librsync picks it from the file size.
        #[arg(short = 'b', long = "block-size")]
        block: Option<u32>,
        old: PathBuf,
        sig: PathBuf,
    },
    /// Write the delta that turns the file SIG describes into NEW.
    Diff { sig: PathBuf, new: PathBuf, delta: PathBuf },
    /// Apply DELTA to OLD, writing NEW.
    Patch { old: PathBuf, delta: PathBuf, new: PathBuf },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Work directory (default: a new temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of local agents.
    #[arg(long, default_value_t = 3)]
    pub sns: usize,
}
