//! `hanfs agent [--config FILE]`: the SN agent (see the `agent` crate).

use crate::cli::{AgentArgs, Global};
use crate::exit::{bad_input, Status};
use anyhow::{Context, Result};

pub fn run(g: &Global, _a: AgentArgs) -> Result<Status> {
    let path = match g.config.as_os_str() == crate::cli::CLUSTER_CONFIG_DEFAULT {
        true => std::path::Path::new(crate::cli::AGENT_CONFIG_DEFAULT),
        false => g.config.as_path(),
    };
    let text = super::read_config(path, "agent config")?;
    let cfg = model::AgentConfig::from_toml(&path.display().to_string(), &text).context("invalid agent config")?;
    let agent = agent::Agent::new(cfg).map_err(|e| bad_input(format!("{}: {e:#}", path.display())))?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let bound = agent.bind().await?;
        // The port really bound (the config may say port 0): for scripts and tests.
        eprintln!("hanfs agent: listening on {}", bound.local_addr());
        bound.serve_until_signal().await
    })?;
    Ok(Status::Ok)
}
