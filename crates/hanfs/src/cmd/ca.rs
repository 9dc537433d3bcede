use super::not_yet;
use crate::cli::{CaCommand, Global};
use crate::exit::Status;
use anyhow::Result;

pub fn run(_g: &Global, _c: CaCommand) -> Result<Status> {
    not_yet("ca")
}
