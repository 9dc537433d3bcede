//! Why one SN's part of a run failed. The variants, not the messages, decide what happens next:
//! a source that changed while it was read is read again, an SN that refused or is full is
//! reported and left for the next run, a protocol violation drops the session.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SnError {
    /// The SN's agent could not be reached (TCP, TLS handshake) or its handshake was refused.
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: transport::Error },
    /// A file on the MN changed while it was being read: reading it again may succeed.
    #[error("{0}")]
    SourceChanged(String),
    /// The agent refused the request (an `Error` reply) with this reason.
    #[error("{0}")]
    Refused(String),
    /// A filesystem of the SN is full (`NoSpace`): the path it was writing.
    #[error("{reason}")]
    NoSpace { path: String, reason: String },
    /// The SN's deadline, or one frame's, passed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The peer broke the protocol (unexpected message, oversized or misframed bulk data, a
    /// version or identity mismatch).
    #[error("{0}")]
    Protocol(String),
    /// The replica committed, but not the source's digest.
    #[error("replica committed digest {got} but the source is {want}")]
    DigestMismatch { got: proto::Digest, want: proto::Digest },
    /// The connection failed mid-session (reset, closed).
    #[error(transparent)]
    Transport(transport::Error),
    /// Work on the MN itself failed (reading a payload, a state file).
    #[error(transparent)]
    Local(anyhow::Error),
}

impl SnError {
    /// Worth another attempt in this run: the MN's own source changed under the read.
    pub fn source_changed(&self) -> bool {
        matches!(self, SnError::SourceChanged(_))
    }

    /// The SN was never talked to (down, unreachable, wrong identity).
    pub fn unreachable(&self) -> bool {
        matches!(self, SnError::Connect { .. })
    }
}

impl From<transport::Error> for SnError {
    fn from(e: transport::Error) -> SnError {
        match e {
            transport::Error::Proto(proto::Error::Remote(r)) => SnError::Refused(r),
            transport::Error::Proto(proto::Error::NoSpace { path, reason }) => SnError::NoSpace { path, reason },
            transport::Error::Proto(p) => SnError::Protocol(p.to_string()),
            transport::Error::Timeout(d, _) => SnError::Timeout(d),
            e => SnError::Transport(e),
        }
    }
}

impl From<anyhow::Error> for SnError {
    fn from(e: anyhow::Error) -> SnError {
        // A changed source is told apart by its type (tree's), wherever it was wrapped.
        if crate::source_changed(&e) {
            return SnError::SourceChanged(format!("{e:#}"));
        }
        match e.downcast::<SnError>() {
            Ok(s) => s,
            Err(e) => SnError::Local(e),
        }
    }
}

impl From<tree::Error> for SnError {
    fn from(e: tree::Error) -> SnError {
        match e {
            tree::Error::Changed(m) => SnError::SourceChanged(m),
            e => SnError::Local(e.into()),
        }
    }
}

impl From<std::io::Error> for SnError {
    fn from(e: std::io::Error) -> SnError {
        SnError::Local(e.into())
    }
}
