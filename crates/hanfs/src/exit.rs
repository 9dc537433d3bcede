//! Exit statuses of the contract.

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Everything succeeded.
    Ok = 0,
    /// The operation failed on some SN, or a replica does not match.
    Failed = 1,
    /// Bad usage, config or input; nothing was changed.
    BadInput = 2,
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> ExitCode {
        ExitCode::from(s as u8)
    }
}

/// Marks an error as the user's input being wrong (exit 2) rather than an operation failing (exit 1).
pub use controller::BadInput;

pub fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg.into()))
}

pub fn classify(e: &anyhow::Error) -> Status {
    if e.chain().any(|c| c.is::<BadInput>() || c.is::<model::Diagnostics>()) {
        Status::BadInput
    } else {
        Status::Failed
    }
}
