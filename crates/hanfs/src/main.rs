//! `hanfs`: the one binary. Parses the command line, sets up logging, dispatches to `cmd::*`, and
//! maps every outcome to the contract's exit status (0 ok, 1 failed on some SN, 2 bad usage/input).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod cli;
mod cmd;
mod exit;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if !matches!(cli.command, cli::Command::Agent(_) | cli::Command::Daemon(_)) {
        // A command whose reader went away (`hanfs exports | head`) ends quietly with status 0
        // (contract) instead of panicking in println!. Sockets never raise SIGPIPE (std sends with
        // MSG_NOSIGNAL); the long-running agent and daemon keep ignoring it.
        sigpipe::exit_quietly();
    }
    init_logging(cli.global.verbose, cli.global.quiet);
    match cmd::run(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            let code = exit::classify(&e);
            // The chain gives the admin the file, line and field when the error came from config.
            eprintln!("hanfs: {e:#}");
            code.into()
        }
    }
}

/// A SIGPIPE handler. Raw libc with `unsafe`: installing a signal handler is outside rustix's safe
/// API (and signal-hook's registration is `unsafe` too); the handler calls only async-signal-safe
/// functions.
#[allow(unsafe_code)]
mod sigpipe {
    /// Installs [`on_sigpipe`] for SIGPIPE.
    pub fn exit_quietly() {
        // SAFETY: installing a handler that only calls async-signal-safe functions (poll, _exit).
        unsafe {
            libc::signal(libc::SIGPIPE, on_sigpipe as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }

    /// SIGPIPE: when it is standard output whose reader is gone, end now with status 0; any other
    /// pipe gets its EPIPE error as usual.
    extern "C" fn on_sigpipe(_: libc::c_int) {
        let mut p = libc::pollfd { fd: 1, events: 0, revents: 0 };
        // SAFETY: poll and _exit are async-signal-safe; `p` is a valid pollfd.
        unsafe {
            if libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLERR != 0 {
                libc::_exit(0);
            }
        }
    }
}

/// Logs go to stderr so `--json` output on stdout stays machine-readable.
fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("HANFS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
