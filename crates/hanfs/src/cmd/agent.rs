use super::not_yet;
use crate::cli::{AgentArgs, Global};
use crate::exit::Status;
use anyhow::Result;

pub fn run(_g: &Global, _a: AgentArgs) -> Result<Status> {
    not_yet("agent")
}
