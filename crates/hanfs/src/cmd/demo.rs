use super::not_yet;
use crate::cli::{DemoArgs, Global};
use crate::exit::Status;
use anyhow::Result;

pub fn run(_g: &Global, _a: DemoArgs) -> Result<Status> {
    not_yet("demo")
}
