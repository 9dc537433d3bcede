//! hanfs transport: how the controller and agents reach each other.
//!
//! - [`ca`]: a small CA (rcgen): `ca init` makes `ca.pem`/`ca.key`, `ca issue` signs a certificate whose
//!   DNS name is the MN's or SN's name. An existing CA (xCAT's `/etc/xcat/cert`) works as well.
//! - [`tls`]: rustls configs with the `ring` provider, TLS 1.3 only, mutual: the agent accepts only
//!   clients whose certificate chains to its CA; the controller checks the agent's certificate names
//!   the SN it meant to reach.
//! - [`Conn`]: one framed connection (plain TCP on loopback, or TLS) carrying [`proto`] frames with a
//!   size limit enforced before allocation, a timeout on every read and write, and TCP keepalive;
//!   typed by its direction (`Conn<proto::Controller>`, `Conn<proto::Agent>`), requests paired
//!   with their replies, bulk data received only up to a cap the caller gives.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod ca;
pub mod conn;
pub mod tls;

pub use conn::{accept, accept_as, connect, dial, pair, Bulk, Conn, IoStream};
pub use tls::Identity;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("certificate: {0}")]
    Cert(String),
    #[error("{0}")]
    Proto(#[from] proto::Error),
    #[error("timed out after {0:?} {1}")]
    Timeout(std::time::Duration, &'static str),
    #[error("connection closed by peer")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The protocol-level error inside, if that is what this is (a refusal, a violation).
    pub fn proto(&self) -> Option<&proto::Error> {
        match self {
            Error::Proto(e) => Some(e),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
