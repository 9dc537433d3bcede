use super::not_yet;
use crate::cli::{FailoverArgs, Global, MigrateArgs};
use crate::exit::Status;
use anyhow::Result;

pub fn migrate(_g: &Global, _a: MigrateArgs) -> Result<Status> {
    not_yet("migrate")
}

pub fn failover(_g: &Global, _a: FailoverArgs) -> Result<Status> {
    not_yet("failover")
}
