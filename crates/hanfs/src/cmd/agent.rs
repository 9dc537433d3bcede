//! `hanfs agent [--config FILE]`: the SN agent (see the `agent` crate).

use crate::cli::{AgentArgs, Global};
use crate::exit::{bad_input, Status};
use anyhow::{Context, Result};

pub fn run(g: &Global, _a: AgentArgs) -> Result<Status> {
    let default = g.config.as_os_str() == crate::cli::CLUSTER_CONFIG_DEFAULT;
    let path = if default { std::path::Path::new(crate::cli::AGENT_CONFIG_DEFAULT) } else { g.config.as_path() };
    let text = super::read_config(path, "agent config")?;
    let cfg = model::AgentConfig::from_toml(&path.display().to_string(), &text).context("invalid agent config")?;
    let agent = agent::Agent::new(cfg).map_err(|e| bad_input(format!("{}: {e:#}", path.display())))?;
    super::runtime()?.block_on(async {
        let bound = agent.bind().await?;
        // The ports really bound (port 0 allowed), for scripts and tests; NFSv3's first.
        if let Some(a) = bound.nfs3_addr() {
            eprintln!("hanfs agent: serving NFSv3 on {a}");
        }
        eprintln!("hanfs agent: listening on {}", bound.local_addr());
        bound.serve_until_signal().await
    })?;
    Ok(Status::Ok)
}
