//! In-process agents for tests (feature `test-support`): a real [`Agent`] served on a tokio
//! listener bound to port 0 in the test's own runtime, so protocol tests of the controller and
//! the agent need no binary and never probe for a free port.

use crate::Agent;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// One agent serving plain TCP on loopback, with its root, state dir and exports file under a
/// directory of the test's. Stops when dropped.
pub struct TestAgent {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub exports_file: PathBuf,
    /// Full rescans the agent's `Open`s made (the others trusted the replica's drift watch).
    pub rescans: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The agent config [`spawn`] uses: `dir/root`, `dir/state`, `dir/exports`, reload `true`, and
/// `extra` appended (TOML lines, e.g. `statelite_roots`).
pub fn config(dir: &Path, extra: &str) -> anyhow::Result<model::AgentConfig> {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nplaintext_loopback = true\nroot = \"{0}/root\"\nstate_dir = \"{0}/state\"\nexports_file = \"{0}/exports\"\nreload = [\"true\"]\n{extra}",
        dir.display()
    );
    Ok(model::AgentConfig::from_toml("agent.toml", &text)?)
}

/// Starts an agent on the current runtime; returns once it listens.
pub async fn spawn(dir: &Path, extra: &str) -> anyhow::Result<TestAgent> {
    spawn_with_watch_limit(dir, extra, None).await
}

/// [`spawn`] with at most `limit` inodes per image's drift watch (as if the inotify limit were
/// that low: an image with more is rescanned at every `Open`).
pub async fn spawn_with_watch_limit(dir: &Path, extra: &str, limit: Option<u64>) -> anyhow::Result<TestAgent> {
    let cfg = config(dir, extra)?;
    let (root, state_dir, exports_file) =
        (cfg.root.as_str().into(), cfg.state_dir.as_str().into(), cfg.exports_file.as_str().into());
    let mut agent = Agent::new(cfg)?;
    agent.watch_limit = limit;
    let rescans = agent.rescans.clone();
    let bound = agent.bind().await.context("binding the test agent")?;
    let addr = bound.local_addr();
    let task = tokio::spawn(async move {
        if let Err(e) = bound.serve().await {
            tracing::error!("test agent: {e:#}");
        }
    });
    Ok(TestAgent { addr, root, state_dir, exports_file, rescans, task })
}
