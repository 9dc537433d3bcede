use super::not_yet;
use crate::cli::{DaemonArgs, Global};
use crate::exit::Status;
use anyhow::Result;

pub fn run(_g: &Global, _a: DaemonArgs) -> Result<Status> {
    not_yet("daemon")
}
