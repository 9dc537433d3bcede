//! For the tests of every crate (a dev-dependency only): what a test needs from the machine, and the
//! one skip policy. A test that cannot run here prints `SKIP: <why>` and returns; under `CI=true` (as
//! `.ci/run` runs) a skip is a failure instead, because CI must run everything (`make deps` installs
//! what the tests use). Tests never install anything themselves.
//!
//! ```no_run
//! if !testkit::require_root("mounting a tmpfs") { return; }
//! let Some(exportfs) = testkit::require_program("exportfs", "nfs-kernel-server") else { return };
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Whether this is a CI run (`CI` set to `true` or `1`), where no test may skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips the calling test: prints `SKIP: why` on stderr. Under CI it panics with the reason instead.
#[track_caller]
pub fn skip(why: impl Display) {
    if in_ci() {
        panic!("CI=true, so this test may not skip: {why}");
    }
    eprintln!("SKIP: {why}");
}

/// Whether the tests run as root (chown, mknod, mount, privileged ports).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Root, or skips (see [`skip`]) saying what needs it; the caller returns on `false`.
#[track_caller]
pub fn require_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(format!("{what} needs root"));
    false
}

/// `prog` on `PATH` or in /usr/sbin, /sbin (not on a user's `PATH`), if it is there.
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `prog`, or skips (see [`skip`]) naming the Debian package that `make deps` installs it from.
#[track_caller]
pub fn require_program(prog: &str, package: &str) -> Option<PathBuf> {
    let p = which(prog);
    if p.is_none() {
        skip(format!("{prog} is not installed (Debian package {package}; `make deps` installs it)"));
    }
    p
}

/// `prog`, or fails the test: for tools every machine that runs the tests must have.
#[track_caller]
pub fn program(prog: &str, package: &str) -> PathBuf {
    match which(prog) {
        Some(p) => p,
        None => panic!("{prog} is not installed (Debian package {package}; `make deps` installs it)"),
    }
}

/// A TCP port on 127.0.0.1 where nothing listens, and no one else can take it while the returned
/// socket lives: bound (port 0, so the kernel picks) but never listening, so a connect to it is
/// refused. Asking for a free port and closing it would let another process take it meanwhile.
#[track_caller]
pub fn refusing_port() -> (std::os::fd::OwnedFd, u16) {
    use rustix::net::{bind, getsockname, socket, AddressFamily, SocketAddrAny, SocketType};
    let bound = socket(AddressFamily::INET, SocketType::STREAM, None).and_then(|s| {
        bind(&s, &std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let a: SocketAddrAny = getsockname(&s)?;
        Ok((s, std::net::SocketAddr::try_from(a).map_err(|_| rustix::io::Errno::AFNOSUPPORT)?))
    });
    match bound {
        Ok((s, addr)) => (s, addr.port()),
        Err(e) => panic!("binding a TCP socket on 127.0.0.1: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusing_port_refuses_and_stays_taken() {
        let (_held, port) = refusing_port();
        let e = std::net::TcpStream::connect(("127.0.0.1", port)).map(drop).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err(), "another socket took port {port}");
    }

    #[test]
    fn programs_are_found_on_path_or_sbin() {
        assert!(which("sh").is_some());
        assert!(which("no-such-program-hanfs").is_none());
    }

    #[test]
    fn a_skip_fails_under_ci() {
        // nextest runs each test in a process of its own: CI set here is seen by this test only.
        std::env::set_var("CI", "true");
        assert!(std::panic::catch_unwind(|| skip("no such capability")).is_err());
        std::env::set_var("CI", "false");
        assert!(std::panic::catch_unwind(|| skip("no such capability")).is_ok());
    }
}
