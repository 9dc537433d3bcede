//! `hanfs agent [--config FILE]`: the SN agent (see the `agent` crate).

use crate::cli::{AgentArgs, Global};
use crate::exit::{bad_input, Status};
use anyhow::{Context, Result};

pub fn run(g: &Global, _a: AgentArgs) -> Result<Status> {
    let path = if g.config.as_os_str() == crate::cli::CLUSTER_CONFIG_DEFAULT {
        std::path::PathBuf::from(crate::cli::AGENT_CONFIG_DEFAULT)
    } else {
        g.config.clone()
    };
    let path = &path;
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad_input(format!("{}: cannot read the agent config: {e}", path.display())))?;
    let cfg = model::AgentConfig::from_toml(&path.display().to_string(), &text)
        .map_err(anyhow::Error::new)
        .context("invalid agent config")?;
    let agent = agent::Agent::new(cfg).map_err(|e| bad_input(format!("{}: {e:#}", path.display())))?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let bound = agent.bind().await?;
        // The port really bound (the config may say port 0): for scripts and tests.
        eprintln!("hanfs agent: listening on {}", bound.local_addr());
        tokio::select! {
            r = bound.serve() => r,
            // SIGTERM from systemd or a parent: stop accepting; the engine keeps every replica whole.
            _ = terminated() => {
                tracing::info!("agent stopping on signal");
                Ok(())
            }
        }
    })?;
    Ok(Status::Ok)
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            tokio::select! {
                _ = s.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
