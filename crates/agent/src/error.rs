//! Why an agent session (or the agent) ended.

/// The end of a session that was not a clean `Bye`/close, or an agent that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The controller was told why (an `Error`/`NoSpace` reply) and the session ended: a protocol
    /// violation, hostile input, or a failure that leaves the session unusable.
    #[error("refused: {0}")]
    Refused(String),
    /// The connection failed (timeout, reset, TLS, an unreadable frame).
    #[error(transparent)]
    Transport(#[from] transport::Error),
    /// Another agent holds the state directory's lock.
    #[error("state_dir {dir} is in use by another agent{holder} (lock {lock}); give each agent its own state_dir")]
    StateDirInUse { dir: String, holder: String, lock: String },
    /// Local work failed (the agent's own disk, its config): with the context of what it was doing.
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

impl From<tree::Error> for Error {
    fn from(e: tree::Error) -> Error {
        Error::Local(e.into())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Local(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
