use super::not_yet;
use crate::cli::{Global, XcatCommand};
use crate::exit::Status;
use anyhow::Result;

pub fn run(_g: &Global, _c: XcatCommand) -> Result<Status> {
    not_yet("xcat")
}
