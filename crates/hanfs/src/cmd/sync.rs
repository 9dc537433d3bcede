use super::not_yet;
use crate::cli::{Global, ImageFilter, SyncArgs};
use crate::exit::Status;
use anyhow::Result;

pub fn plan(_g: &Global, _a: SyncArgs) -> Result<Status> {
    not_yet("plan")
}

pub fn sync(_g: &Global, _a: SyncArgs) -> Result<Status> {
    not_yet("sync")
}

pub fn status(_g: &Global) -> Result<Status> {
    not_yet("status")
}

pub fn verify(_g: &Global, _a: ImageFilter) -> Result<Status> {
    not_yet("verify")
}
