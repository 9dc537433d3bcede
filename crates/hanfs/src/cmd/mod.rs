//! One module per command family; each owns its output (human and `--json`).

use crate::cli::{Cli, Command, Global};
use crate::exit::{bad_input, Status};
use anyhow::{Context, Result};
use std::sync::Arc;

mod agent;
mod ca;
mod daemon;
mod delta;
mod demo;
mod exports;
mod redirect;
mod sync;
#[cfg(feature = "xcat")]
mod xcat;

pub fn run(cli: Cli) -> Result<Status> {
    let g = &cli.global;
    match cli.command {
        Command::Plan(a) => sync::plan(g, a),
        Command::Sync(a) => sync::sync(g, a),
        Command::Daemon(a) => daemon::run(g, a),
        Command::Status => sync::status(g),
        Command::Verify(a) => sync::verify(g, a),
        Command::Exports(a) => exports::run(g, a),
        Command::Migrate(a) => redirect::migrate(g, a),
        Command::Failover(a) => redirect::failover(g, a),
        #[cfg(feature = "xcat")]
        Command::Xcat(c) => xcat::run(g, c),
        #[cfg(not(feature = "xcat"))]
        Command::Xcat(_) => Err(bad_input(WITHOUT_XCAT)),
        Command::Ca(c) => ca::run(g, c),
        Command::Agent(a) => agent::run(g, a),
        Command::Delta(c) => delta::run(g, c),
        Command::Demo(a) => demo::run(g, a),
    }
}

/// What the xCAT commands say in a build without the `xcat` feature (the service-node package).
#[cfg(not(feature = "xcat"))]
pub(crate) const WITHOUT_XCAT: &str =
    "this hanfs is built without xCAT support (the service-node package): run xCAT commands on the management node";

/// Read and validate the cluster config named by `--config`, as the file says (moves recorded in
/// the state dir not applied). Any problem is bad input (exit 2) and names the file, line and field.
pub fn load_config(g: &Global) -> Result<model::Cluster> {
    let text = read_config(&g.config, "cluster config")?;
    model::Cluster::from_toml(&g.config.display().to_string(), &text).context("invalid cluster config")
}

/// A config file's text; an unreadable one is bad input naming it.
pub fn read_config(path: &std::path::Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| bad_input(format!("{}: cannot read the {what}: {e}", path.display())))
}

/// The cluster as served now: the config with the moves made by `migrate`/`failover` applied.
pub fn load_cluster(g: &Global) -> Result<model::Cluster> {
    let base = load_config(g)?;
    let (placed, warnings) = controller::StateDir::of(&base).placed(&base)?;
    for w in warnings {
        eprintln!("hanfs: warning: {w}");
    }
    Ok(placed)
}

/// A controller for the config (TLS material loaded); a config it cannot use is bad input.
pub fn controller(g: &Global, progress: Option<controller::progress::Hook>) -> Result<Arc<controller::Controller>> {
    let mut c = controller::Controller::new(load_config(g)?)
        .map_err(|e| bad_input(format!("{}: {e:#}", g.config.display())))?;
    c.progress = progress;
    Ok(Arc::new(c))
}

/// The async runtime of the network commands (two shared cores are the common case; CPU and disk
/// work runs on blocking threads, so a few workers keep every SN's task moving).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?)
}

/// The images named on the command line (all when none); an unknown name is bad input.
pub fn select(g: &Global, c: &model::Cluster, names: &[String]) -> Result<Vec<model::Image>> {
    c.select_images(names).map_err(|e| bad_input(format!("{}: {e}", g.config.display())))
}

/// Print a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
