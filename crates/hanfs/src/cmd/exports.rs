use super::not_yet;
use crate::cli::{ExportsArgs, Global};
use crate::exit::Status;
use anyhow::Result;

pub fn run(_g: &Global, _a: ExportsArgs) -> Result<Status> {
    not_yet("exports")
}
