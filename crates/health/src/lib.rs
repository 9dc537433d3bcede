//! SN health for `hanfs daemon`: detect a dead SN (or a dead NFS service on a live one), fence it,
//! then promote its backups — never two writers.
//!
//! Four parts, pure logic apart from I/O:
//! - [`detector`] (no I/O): one state machine per SN, Up → Suspect → Down → Fenced, fed with probe
//!   results and `Instant`s by the caller, answering with [`Decision`]s to execute.
//! - [`probe`]: ONC RPC NULL calls to NFS (v3, and v4 if configured) and MOUNT v3 (its port from
//!   portmap unless given) on the address clients mount from, under one deadline.
//! - [`fence`]: the fence command, its verification, retries and the notify command.
//! - [`report`]: the serde types of `hanfs status --json` and suggested metric names.
//!
//! [`HealthConfig`] holds the proposed settings with their defaults (interval 1 s, dead after
//! 5 s, hold-down 30 s, probe timeout 4 s, `failover = "manual"`).
//!
//! # Wiring (what the daemon does)
//!
//! ```no_run
//! # async fn daemon(sns: Vec<(String, std::net::IpAddr, Vec<String>)>) -> Result<(), health::DetectorError> {
//! use health::{Check, Decision, Detector, HealthConfig, Probe, SnSpec};
//! use std::time::Instant;
//! let cfg = HealthConfig::default(); // from the cluster config; `cfg.validate()` first
//! let mut det = Detector::new(
//!     cfg.detector(),
//!     sns.iter().map(|(name, _, backups)| SnSpec { name: name.clone(), backups: backups.clone() }),
//! );
//! let mut every = tokio::time::interval(cfg.interval());
//! loop {
//!     every.tick().await;
//!     for (name, address, _) in &sns {
//!         // In the daemon: one task per SN and probe, results sent back over a channel, so a
//!         // silent SN never delays the others.
//!         let started = Instant::now();
//!         let agent = Check::Ok; // outcome of the agent's TLS handshake (transport), mapped to a Check
//!         let nfs = health::probe::probe_nfs(&cfg.nfs_target(name, *address)).await.check();
//!         for d in det.observe(name, started, Instant::now(), &Probe { agent, nfs })? {
//!             match d {
//!                 Decision::Fence { sn } => {
//!                     let out = health::fence::fence(&cfg.fence_config(), &sn, &address.to_string()).await;
//!                     let more = det.fence_done(&sn, out.result, Instant::now())?;
//!                     // ... execute `more` the same way (Promote decisions follow a good fence)
//! #                   drop(more);
//!                 }
//!                 Decision::Promote { service, from, to } => {
//!                     // take over `service`'s address and data on `to`, then:
//!                     det.served(&service, &to)?; // or det.promote_failed(&service, why, now)
//! #                   let _ = from;
//!                 }
//!                 Decision::Alert { sn, alert } => eprintln!("hanfs: {sn}: {alert:?}"),
//!                 Decision::Recovered { sn } => eprintln!("hanfs: {sn} is up again"),
//!             }
//!         }
//!     }
//!     let _ = det.tick(Instant::now()); // fence re-runs, promotions waiting for a backup
//! }
//! # }
//! ```
//!
//! Mapping the agent's handshake: `Ok` → [`Check::Ok`]; connection refused/reset or a refused
//! handshake → [`Check::Refused`] (the host answered); timeout/unreachable → [`Check::Silent`];
//! a local error (no client certificate) → [`Check::Local`] (neither good nor bad).
//!
//! `hanfs status --json` adds `"health": Detector::report(now, unix_now).sns`; `hanfs failover`
//! (manual) can use [`fence::fence`] for the same fence semantics.
//!
//! # What the daemon must keep in mind
//!
//! - Start a probe of every SN every interval even while an earlier one is still running (the
//!   timeout, 4 s, exceeds the interval): Down is then decided `dead_after` after the first failed
//!   probe was sent whatever the timeout. Waiting for each probe before the next would stretch
//!   detection of a silent SN to `dead_after` rounded up to whole timeouts (8 s instead of 5).
//!   Feed results as they come, with the instant each probe was *sent*: late ones are ignored.
//! - Probes from reserved ports (the default) hold one port each while they run: 359 ports
//!   (665-1023) bound the probes in flight, about 80 silent SNs at the defaults; beyond that a
//!   probe fails with a local error (no evidence) rather than a false Down.
//! - States in the report: `up`, `suspect` (failing, not Down: too short, or no quorum), `down`
//!   (with `fence`: `manual`, `running`, `failed`), `fenced` (with `served_by`), and
//!   `serving-for` for an Up SN that serves fenced SNs' services (`serving_for`).
//! - A fenced SN stays fenced until [`Detector::release`] (an operator brought it back); then it
//!   counts as Up after `hold_down` of good probes, and its services stay where they are until the
//!   caller moves them back and reports it with [`Detector::served`].
//! - Kernel nfsd SNs serving NFSv4 clients want `nfs_versions = [3, 4]`; the embedded server
//!   answers v4 with `PROG_MISMATCH` and wants `[3]` with `portmap_port` = its NFS port.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod detector;
pub mod fence;
pub mod probe;
pub mod report;

pub use config::{ConfigError, FailoverMode, HealthConfig, SnPorts};
pub use detector::{Alert, Check, Decision, Detector, DetectorConfig, DetectorError, FenceState, Probe, SnSpec, State};
pub use report::{HealthReport, HealthState, SnHealth};
