//! The failure detector: one state machine per SN, driven by probe results and the caller's clock.
//!
//! No I/O and no sleeping: every input carries its `Instant`s, every output is a [`Decision`] the
//! caller executes (fence, promote, alert) and reports back ([`Detector::fence_done`],
//! [`Detector::served`], [`Detector::promote_failed`]).
//!
//! Rules (each checked by the property tests in `tests/detector_props.rs`):
//! - An SN is Down only after `dead_after` of continuous failed probes (from the start of the first
//!   failed probe of the run to the completion of the latest one), and only while the MN reaches a
//!   strict majority of the other, unfenced SNs, each continuously since no later than the start of
//!   the candidate's latest failed probe (so a probe that timed out while the MN itself was cut off
//!   never counts once the MN's network is back). "Reaches" means good probes, not mere answers:
//!   a fault on the MN's side that makes every agent refuse it (an expired client certificate, a
//!   replaced CA) fails every SN at once, and must fence none of them.
//! - A failed probe is either part: the agent's handshake or the NFS service (an SN whose agent
//!   answers but whose NFS server does not is Down too).
//! - One good probe ends a Suspect run. A Down SN counts as Up again only after `hold_down` of
//!   continuous good probes, so Down is entered at most once per `hold_down`.
//! - In `auto` mode Down asks for a fence; only a fence reported done makes the SN Fenced, and only
//!   services hosted by a Fenced SN are ever promoted elsewhere (never two writers).
//! - Results older than one already processed for the same SN (probes overlap when the timeout
//!   exceeds the interval) are ignored: the newer probe is the better evidence.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::config::FailoverMode;
use crate::report::{HealthReport, HealthState, SnHealth};

/// Timing and policy of the detector (see [`crate::HealthConfig::detector`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorConfig {
    pub dead_after: Duration,
    pub hold_down: Duration,
    pub failover: FailoverMode,
    /// After a failed fence run, how long before the next one is asked for.
    pub fence_retry_after: Duration,
    /// After a failed promotion, how long before it is asked for again.
    pub promote_retry_after: Duration,
}

/// One SN as the detector knows it: its name and its backups in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnSpec {
    pub name: String,
    pub backups: Vec<String>,
}

/// The outcome of one part of a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Ok,
    /// The host answered, but not as a healthy server does: connection refused or closed, an RPC
    /// error (`PROG_UNAVAIL`, auth error, ...), a refused TLS handshake. The SN's network is up.
    Refused(String),
    /// No answer at all: timeout, host or network unreachable.
    Silent(String),
    /// The probe could not be made for a reason on the MN (no reserved port, no socket): it says
    /// nothing about the SN and is neither a good nor a failed probe.
    Local(String),
}

impl Check {
    fn failed(&self) -> Option<&str> {
        match self {
            Check::Refused(r) | Check::Silent(r) => Some(r),
            Check::Ok | Check::Local(_) => None,
        }
    }
}

/// One probe of one SN: the agent (TLS handshake, done by the caller with `transport`) and the NFS
/// service on the address clients use ([`crate::probe::probe_nfs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub agent: Check,
    pub nfs: Check,
}

impl Probe {
    pub fn good() -> Probe {
        Probe { agent: Check::Ok, nfs: Check::Ok }
    }
}

/// Why the caller should tell someone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alert {
    /// Down in `manual` mode: `hanfs failover` is the operator's to run.
    DownManual { reason: String },
    /// Failing for `dead_after`, but the MN reaches too few other SNs to trust that: nothing is
    /// failed over (the MN may be the one cut off).
    NoQuorum { reached: usize, of: usize },
    /// The fence run failed: nothing is promoted; it is retried after `fence_retry_after`.
    FenceFailed { reason: String },
    /// A service of a fenced SN has no Up backup to move to (retried as backups come up).
    NoBackup { service: String },
    /// A promotion failed (retried after `promote_retry_after`).
    PromoteFailed { service: String, to: String, reason: String },
    /// A fenced SN answers probes: the fence (or its verification) did not do what it said.
    AliveWhileFenced,
}

/// What the caller is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run the fence for this SN, then call [`Detector::fence_done`].
    Fence {
        sn: String,
    },
    /// Serve `service` (an SN's images, statelite data and service address) on `to`; `from` is
    /// fenced. Then call [`Detector::served`] or [`Detector::promote_failed`].
    Promote {
        service: String,
        from: String,
        to: String,
    },
    Alert {
        sn: String,
        alert: Alert,
    },
    /// A Down SN that was never fenced counts as Up again (after `hold_down` of good probes).
    Recovered {
        sn: String,
    },
}

/// The public view of an SN's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    /// Failing since (start of the first failed probe of the run), not (yet) Down.
    Suspect {
        failing_since: Instant,
    },
    Down {
        since: Instant,
        fence: FenceState,
    },
    Fenced {
        since: Instant,
    },
}

/// Where the fence of a Down SN stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceState {
    /// `manual` mode: none asked for.
    Manual,
    /// Asked for, result not reported yet.
    Running,
    /// The last run failed at this instant.
    Failed { at: Instant },
    /// Back from Fenced through [`Detector::release`]: nothing more to fence.
    Released,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Live,
    Down { since: Instant, fence: FenceState },
    Fenced { since: Instant },
}

#[derive(Debug, Clone)]
struct Sn {
    backups: Vec<String>,
    st: St,
    last_started: Option<Instant>,
    last_good: Option<Instant>,
    failing_since: Option<Instant>,
    last_failed_start: Option<Instant>,
    good_since: Option<Instant>,
    reachable_since: Option<Instant>,
    reason: Option<String>,
    no_quorum_alerted: bool,
    alive_alerted: bool,
    /// Returned to service ([`Detector::returned`]): not declared Down again before this.
    hold_until: Option<Instant>,
}

/// A call named an SN the detector was not built with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectorError {
    #[error("no SN named `{0}` in the health detector")]
    UnknownSn(String),
    #[error("SN `{0}` is not fenced: only a fenced SN can be released")]
    NotFenced(String),
    #[error("SN `{0}` is being fenced: it cannot return before the fence has ended")]
    Fencing(String),
}

#[derive(Debug, Clone)]
struct Waiting {
    in_flight: Option<String>,
    failed_at: Option<Instant>,
    alerted: bool,
}

/// Failure detector for every SN of a cluster.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: DetectorConfig,
    sns: BTreeMap<String, Sn>,
    /// service (an SN's name) -> the SN serving it now.
    host: BTreeMap<String, String>,
    /// Services whose host is fenced, waiting for (or in) a promotion.
    waiting: BTreeMap<String, Waiting>,
}

impl Detector {
    /// Every SN starts Up (no probe yet) and serving itself.
    pub fn new(cfg: DetectorConfig, sns: impl IntoIterator<Item = SnSpec>) -> Detector {
        let mut map = BTreeMap::new();
        let mut host = BTreeMap::new();
        for s in sns {
            host.insert(s.name.clone(), s.name.clone());
            map.insert(
                s.name,
                Sn {
                    backups: s.backups,
                    st: St::Live,
                    last_started: None,
                    last_good: None,
                    failing_since: None,
                    last_failed_start: None,
                    good_since: None,
                    reachable_since: None,
                    reason: None,
                    no_quorum_alerted: false,
                    alive_alerted: false,
                    hold_until: None,
                },
            );
        }
        Detector { cfg, sns: map, host, waiting: BTreeMap::new() }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Records that `service` is served by `host` (also at start, when the daemon knows of an
    /// earlier failover).
    pub fn set_host(&mut self, service: &str, host: &str) -> Result<(), DetectorError> {
        self.known(service)?;
        self.known(host)?;
        self.host.insert(service.to_string(), host.to_string());
        Ok(())
    }

    fn known(&self, sn: &str) -> Result<(), DetectorError> {
        if self.sns.contains_key(sn) {
            Ok(())
        } else {
            Err(DetectorError::UnknownSn(sn.to_string()))
        }
    }

    pub fn state(&self, sn: &str) -> Option<State> {
        let s = self.sns.get(sn)?;
        Some(match s.st {
            St::Live => match s.failing_since {
                Some(f) => State::Suspect { failing_since: f },
                None => State::Up,
            },
            St::Down { since, fence } => State::Down { since, fence },
            St::Fenced { since } => State::Fenced { since },
        })
    }

    /// When the last good probe of `sn` completed.
    pub fn last_good(&self, sn: &str) -> Option<Instant> {
        self.sns.get(sn)?.last_good
    }

    /// The SN serving `service` now.
    pub fn host(&self, service: &str) -> Option<&str> {
        self.host.get(service).map(String::as_str)
    }

    /// Feeds one probe result: `started` when the probe was sent, `now` when its result came.
    pub fn observe(
        &mut self,
        sn: &str,
        started: Instant,
        now: Instant,
        probe: &Probe,
    ) -> Result<Vec<Decision>, DetectorError> {
        let s = self.sns.get_mut(sn).ok_or_else(|| DetectorError::UnknownSn(sn.to_string()))?;
        if s.last_started.is_some_and(|l| started < l) {
            return Ok(Vec::new());
        }
        s.last_started = Some(started);
        let failure = probe
            .agent
            .failed()
            .map(|r| format!("agent: {r}"))
            .or_else(|| probe.nfs.failed().map(|r| format!("nfs: {r}")));
        match failure {
            Some(reason) => {
                s.failing_since.get_or_insert(started);
                s.last_failed_start = Some(started);
                s.good_since = None;
                s.reachable_since = None;
                s.reason = Some(reason);
            }
            None if probe.agent == Check::Ok && probe.nfs == Check::Ok => {
                s.last_good = Some(now);
                s.failing_since = None;
                s.last_failed_start = None;
                s.no_quorum_alerted = false;
                s.good_since.get_or_insert(started);
                s.reachable_since.get_or_insert(started);
            }
            // Local trouble only: no evidence either way.
            None => return Ok(Vec::new()),
        }
        Ok(self.evaluate(sn, now))
    }

    /// (reached, of): other unfenced SNs reachable continuously since no later than `at`.
    fn quorum(&self, sn: &str, at: Instant) -> (usize, usize) {
        let others = self.sns.iter().filter(|(n, s)| n.as_str() != sn && !matches!(s.st, St::Fenced { .. }));
        let (mut reached, mut of) = (0, 0);
        for (_, s) in others {
            of += 1;
            if s.reachable_since.is_some_and(|r| r <= at) {
                reached += 1;
            }
        }
        (reached, of)
    }

    fn evaluate(&mut self, sn: &str, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        let Some(s) = self.sns.get(sn) else { return out };
        match s.st {
            St::Live => {
                let (Some(f), Some(last)) = (s.failing_since, s.last_failed_start) else { return out };
                if now.saturating_duration_since(f) < self.cfg.dead_after || s.hold_until.is_some_and(|h| now < h) {
                    return out;
                }
                let (reached, of) = self.quorum(sn, last);
                let reason = s.reason.clone().unwrap_or_default();
                let Some(s) = self.sns.get_mut(sn) else { return out };
                if reached * 2 > of {
                    let fence = match self.cfg.failover {
                        FailoverMode::Auto => FenceState::Running,
                        FailoverMode::Manual => FenceState::Manual,
                    };
                    s.st = St::Down { since: now, fence };
                    s.good_since = None;
                    out.push(match fence {
                        FenceState::Running => Decision::Fence { sn: sn.to_string() },
                        _ => Decision::Alert { sn: sn.to_string(), alert: Alert::DownManual { reason } },
                    });
                } else if !s.no_quorum_alerted {
                    s.no_quorum_alerted = true;
                    out.push(Decision::Alert { sn: sn.to_string(), alert: Alert::NoQuorum { reached, of } });
                }
            }
            St::Down { since, fence } => {
                let Some(g) = s.good_since else { return out };
                if s.failing_since.is_none()
                    && fence != FenceState::Running
                    && now.saturating_duration_since(g.max(since)) >= self.cfg.hold_down
                {
                    if let Some(s) = self.sns.get_mut(sn) {
                        s.st = St::Live;
                    }
                    out.push(Decision::Recovered { sn: sn.to_string() });
                }
            }
            St::Fenced { .. } => {
                if s.failing_since.is_none() && s.good_since.is_some() && !s.alive_alerted {
                    if let Some(s) = self.sns.get_mut(sn) {
                        s.alive_alerted = true;
                    }
                    out.push(Decision::Alert { sn: sn.to_string(), alert: Alert::AliveWhileFenced });
                }
            }
        }
        out
    }

    /// Reports the result of a fence run asked for by [`Decision::Fence`]. `Err(reason)`: not
    /// fenced (failed, timed out, verification said still on); nothing is promoted.
    pub fn fence_done(
        &mut self,
        sn: &str,
        result: Result<(), String>,
        now: Instant,
    ) -> Result<Vec<Decision>, DetectorError> {
        let s = self.sns.get_mut(sn).ok_or_else(|| DetectorError::UnknownSn(sn.to_string()))?;
        let mut out = Vec::new();
        if !matches!(s.st, St::Down { fence: FenceState::Running, .. }) {
            // A result nobody asked for (a second report, a stale task): ignored, never promotes.
            return Ok(out);
        }
        match result {
            Ok(()) => {
                s.st = St::Fenced { since: now };
                s.alive_alerted = false;
                s.good_since = None;
                let served: Vec<String> =
                    self.host.iter().filter(|(_, h)| h.as_str() == sn).map(|(svc, _)| svc.clone()).collect();
                for svc in served {
                    self.waiting.entry(svc).or_insert(Waiting { in_flight: None, failed_at: None, alerted: false });
                }
                out.extend(self.promotions(now));
            }
            Err(reason) => {
                if let St::Down { since, .. } = s.st {
                    s.st = St::Down { since, fence: FenceState::Failed { at: now } };
                }
                out.push(Decision::Alert { sn: sn.to_string(), alert: Alert::FenceFailed { reason } });
                out.extend(self.evaluate(sn, now));
            }
        }
        Ok(out)
    }

    /// Records a promotion asked for by [`Decision::Promote`] as done (or any later move of a
    /// service, such as returning it to its own SN).
    pub fn served(&mut self, service: &str, host: &str) -> Result<(), DetectorError> {
        self.set_host(service, host)?;
        self.waiting.remove(service);
        Ok(())
    }

    /// Records a failed promotion; it is asked for again after `promote_retry_after`.
    pub fn promote_failed(
        &mut self,
        service: &str,
        reason: String,
        now: Instant,
    ) -> Result<Vec<Decision>, DetectorError> {
        self.known(service)?;
        let mut out = Vec::new();
        if let Some(w) = self.waiting.get_mut(service) {
            let to = w.in_flight.take().unwrap_or_default();
            w.failed_at = Some(now);
            let host = self.host.get(service).cloned().unwrap_or_default();
            out.push(Decision::Alert {
                sn: host,
                alert: Alert::PromoteFailed { service: service.to_string(), to, reason },
            });
        }
        Ok(out)
    }

    /// Records a fence done outside the detector (`hanfs failover`, manual mode): the SN is Fenced
    /// and nothing is promoted by the detector (the command did it; report its moves with
    /// [`Self::served`]).
    pub fn mark_fenced(&mut self, sn: &str, now: Instant) -> Result<(), DetectorError> {
        let s = self.sns.get_mut(sn).ok_or_else(|| DetectorError::UnknownSn(sn.to_string()))?;
        s.st = St::Fenced { since: now };
        s.alive_alerted = false;
        s.good_since = None;
        Ok(())
    }

    /// An operator brought a fenced SN back (powered on, checked): it counts as Up after
    /// `hold_down` of good probes. Its services stay where they are until moved back ([`Self::served`]).
    pub fn release(&mut self, sn: &str, now: Instant) -> Result<(), DetectorError> {
        let s = self.sns.get_mut(sn).ok_or_else(|| DetectorError::UnknownSn(sn.to_string()))?;
        if !matches!(s.st, St::Fenced { .. }) {
            return Err(DetectorError::NotFenced(sn.to_string()));
        }
        s.st = St::Down { since: now, fence: FenceState::Released };
        s.good_since = None;
        Ok(())
    }

    /// `sn` was given its services back (`hanfs migrate --back`: its statelite data copied back,
    /// its service address moved back from the backup, its nodes' placements moved back), after
    /// a fence or a release: it is Up and serves itself again, and it is not declared Down before
    /// `hold_down` has passed (so a flapping SN is not failed over again at once; its failures
    /// still show as Suspect). A Down SN whose fence is running cannot return.
    pub fn returned(&mut self, sn: &str, now: Instant) -> Result<(), DetectorError> {
        let hold = self.cfg.hold_down;
        let s = self.sns.get_mut(sn).ok_or_else(|| DetectorError::UnknownSn(sn.to_string()))?;
        if matches!(s.st, St::Down { fence: FenceState::Running, .. }) {
            return Err(DetectorError::Fencing(sn.to_string()));
        }
        s.st = St::Live;
        s.failing_since = None;
        s.last_failed_start = None;
        s.good_since = None;
        s.reachable_since = None;
        s.no_quorum_alerted = false;
        s.alive_alerted = false;
        s.hold_until = now.checked_add(hold);
        self.host.insert(sn.to_string(), sn.to_string());
        self.waiting.remove(sn);
        Ok(())
    }

    /// Time-driven work: fence retries, promotions waiting for a backup or a retry.
    pub fn tick(&mut self, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        for (name, s) in self.sns.iter_mut() {
            if let St::Down { since, fence: FenceState::Failed { at } } = s.st {
                if s.failing_since.is_some() && now.saturating_duration_since(at) >= self.cfg.fence_retry_after {
                    s.st = St::Down { since, fence: FenceState::Running };
                    out.push(Decision::Fence { sn: name.clone() });
                }
            }
        }
        out.extend(self.promotions(now));
        out
    }

    fn is_up(&self, sn: &str) -> bool {
        self.sns.get(sn).is_some_and(|s| s.st == St::Live && s.failing_since.is_none())
    }

    fn promotions(&mut self, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        let services: Vec<String> = self.waiting.keys().cloned().collect();
        for svc in services {
            let Some(from) = self.host.get(&svc).cloned() else { continue };
            // Only away from a fenced host: never two writers.
            if !self.sns.get(&from).is_some_and(|s| matches!(s.st, St::Fenced { .. })) {
                continue;
            }
            let Some(w) = self.waiting.get(&svc) else { continue };
            if w.in_flight.is_some()
                || w.failed_at.is_some_and(|f| now.saturating_duration_since(f) < self.cfg.promote_retry_after)
            {
                continue;
            }
            let backups = self.sns.get(&svc).map(|s| s.backups.clone()).unwrap_or_default();
            let to = backups.into_iter().find(|b| *b != from && self.is_up(b));
            let Some(w) = self.waiting.get_mut(&svc) else { continue };
            match to {
                Some(to) => {
                    w.in_flight = Some(to.clone());
                    out.push(Decision::Promote { service: svc.clone(), from, to });
                }
                None if !w.alerted => {
                    w.alerted = true;
                    out.push(Decision::Alert { sn: from, alert: Alert::NoBackup { service: svc.clone() } });
                }
                None => {}
            }
        }
        out
    }

    /// The report for `hanfs status --json` at `now` (`unix_now`: the same moment in seconds since
    /// the epoch, to turn `Instant`s into wall-clock times).
    pub fn report(&self, now: Instant, unix_now: u64) -> HealthReport {
        let unix = |t: Instant| unix_now.saturating_sub(now.saturating_duration_since(t).as_secs());
        let mut sns = Vec::new();
        for (name, s) in &self.sns {
            let serving_for: Vec<String> =
                self.host.iter().filter(|(svc, h)| *h == name && *svc != name).map(|(svc, _)| svc.clone()).collect();
            let (state, fence) = match self.state(name) {
                Some(State::Up) if !serving_for.is_empty() => (HealthState::ServingFor, None),
                Some(State::Up) | None => (HealthState::Up, None),
                Some(State::Suspect { .. }) => (HealthState::Suspect, None),
                Some(State::Down { fence, .. }) => (
                    HealthState::Down,
                    Some(
                        match fence {
                            FenceState::Manual => "manual",
                            FenceState::Running => "running",
                            FenceState::Failed { .. } => "failed",
                            FenceState::Released => "released",
                        }
                        .to_string(),
                    ),
                ),
                Some(State::Fenced { .. }) => (HealthState::Fenced, Some("done".to_string())),
            };
            sns.push(SnHealth {
                name: name.clone(),
                state,
                last_good_probe: s.last_good.map(unix),
                failing_since: s.failing_since.map(unix),
                reason: s.failing_since.and(s.reason.clone()),
                fence,
                serving_for,
                served_by: self.host.get(name).filter(|h| *h != name).cloned(),
            });
        }
        let waiting: BTreeSet<String> = self.waiting.keys().cloned().collect();
        HealthReport { sns, waiting_for_backup: waiting.into_iter().collect() }
    }
}
