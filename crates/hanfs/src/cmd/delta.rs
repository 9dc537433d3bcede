use super::not_yet;
use crate::cli::{DeltaCommand, Global};
use crate::exit::Status;
use anyhow::Result;

pub fn run(_g: &Global, _c: DeltaCommand) -> Result<Status> {
    not_yet("delta")
}
