//! The daemon's health task (issue 12): probe every SN each interval, feed the results to
//! [`health::Detector`], and execute its decisions — fence a dead SN with the cluster's fence
//! command, then (only with `failover = "auto"`) promote its nodes' backups through
//! [`redirect::promote`] and take over its service address on the backup
//! ([`crate::address::claim`]). The detector's report goes to `state_dir/health.json` on every
//! change (`hanfs status --json` shows it) and into the daemon's metrics.
//!
//! Every probe, fence and promotion runs in a task of its own and reports back over a channel, so
//! a silent SN or a slow fence never delays the probes of the others (see the health crate's
//! "Wiring"). The detector alone decides; nothing here promotes an SN that was not reported fenced.

use crate::daemon::Metrics;
use crate::redirect::{self, Hooks, Repointed};
use crate::{Controller, SnError};
use health::detector::Alert;
use health::fence::{FenceConfig, FenceOutcome};
use health::{Check, Decision, Detector, FailoverMode, HealthConfig, HealthReport, Probe, SnSpec};
use model::Cluster;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// The cluster's health settings on [`HealthConfig`], unchecked (defaults where unset).
fn build(cluster: &Cluster) -> HealthConfig {
    let h = cluster.health();
    let d = HealthConfig::default();
    let s = |v: Option<Duration>, def: f64| v.map_or(def, |x| x.as_secs_f64());
    HealthConfig {
        failover: match h.failover {
            model::Failover::Auto => FailoverMode::Auto,
            model::Failover::Manual => FailoverMode::Manual,
        },
        probe_interval_secs: s(h.probe_interval, d.probe_interval_secs),
        probe_timeout_secs: s(h.probe_timeout, d.probe_timeout_secs),
        dead_after_secs: s(h.dead_after, d.dead_after_secs),
        hold_down_secs: s(h.hold_down, d.hold_down_secs),
        nfs_versions: h.nfs_versions.clone().unwrap_or(d.nfs_versions),
        nfs_port: h.nfs_port.unwrap_or(d.nfs_port),
        mount_port: h.mount_port,
        portmap_port: h.portmap_port.unwrap_or(d.portmap_port),
        reserved_source_port: d.reserved_source_port,
        fence: cluster.fence().to_vec(),
        fence_timeout_secs: s(h.fence_timeout, d.fence_timeout_secs),
        fence_verify: h.fence_verify.clone(),
        fence_verify_expect: h.fence_verify_expect.clone().unwrap_or(d.fence_verify_expect),
        fence_retry_secs: h
            .fence_retry
            .as_ref()
            .map_or(d.fence_retry_secs, |v| v.iter().map(Duration::as_secs_f64).collect()),
        fence_rerun_after_secs: s(h.fence_rerun_after, d.fence_rerun_after_secs),
        notify: h.notify.clone(),
        service_address: cluster
            .sns()
            .iter()
            .filter_map(|sn| sn.service_address.map(|a| (sn.name.clone(), a.ip)))
            .collect(),
        sn_ports: cluster
            .sns()
            .iter()
            .filter(|sn| sn.nfs_port.is_some() || sn.mount_port.is_some())
            .map(|sn| (sn.name.clone(), health::SnPorts { nfs: sn.nfs_port, mount: sn.mount_port }))
            .collect(),
    }
}

/// The probe settings of the cluster, unchecked (`hanfs migrate --back` probes with them).
pub fn probe_config(cluster: &Cluster) -> HealthConfig {
    build(cluster)
}

/// The cluster's health settings, checked together (the model checked each one with its line).
pub fn health_config(cluster: &Cluster) -> Result<HealthConfig, health::ConfigError> {
    let c = build(cluster);
    c.validate()?;
    Ok(c)
}

/// The fence settings even when other health settings do not fit together (`hanfs failover`).
pub fn fence_config_unchecked(cluster: &Cluster) -> FenceConfig {
    build(cluster).fence_config()
}

/// Each SN and its backups that are SNs (external servers run no agent to promote).
pub fn sn_specs(cluster: &Cluster) -> Vec<SnSpec> {
    cluster
        .sns()
        .iter()
        .map(|s| SnSpec {
            name: s.name.clone(),
            backups: s.backups.iter().filter(|b| cluster.sn(b).is_some()).cloned().collect(),
        })
        .collect()
}

/// The agent's handshake as a probe part (health crate docs, "Mapping the agent's handshake").
pub fn agent_check(e: &SnError) -> Check {
    use std::io::ErrorKind as K;
    let why = e.to_string();
    match e {
        SnError::Connect { source, .. } => match source {
            transport::Error::Io(io) => match io.kind() {
                K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    Check::Refused(why)
                }
                _ => Check::Silent(why),
            },
            transport::Error::Timeout(..) => Check::Silent(why),
            transport::Error::Closed | transport::Error::Tls(_) | transport::Error::Proto(_) => Check::Refused(why),
            // Our own certificate or key files: says nothing about the SN.
            transport::Error::Cert(_) | transport::Error::File { .. } => Check::Local(why),
        },
        SnError::Timeout(_) => Check::Silent(why),
        SnError::Local(_) => Check::Local(why),
        _ => Check::Refused(why),
    }
}

/// A service address takeover, as reported in `health.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    /// The fenced SN whose address it is.
    pub service: String,
    pub to: String,
    pub address: String,
    pub ok: bool,
    pub detail: String,
    /// Unix seconds.
    pub at: u64,
}

/// `state_dir/health.json`: the detector's report, as of `updated` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthFile {
    pub updated: u64,
    #[serde(flatten)]
    pub report: HealthReport,
    #[serde(default)]
    pub takeovers: Vec<Takeover>,
}

enum Event {
    Probed { sn: String, started: Instant, probe: Probe },
    Fenced { outcome: FenceOutcome },
    Promoted { service: String, to: String, result: Result<Option<Takeover>, String> },
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn alert_kind(a: &Alert) -> &'static str {
    match a {
        Alert::DownManual { .. } => "down_manual",
        Alert::NoQuorum { .. } => "no_quorum",
        Alert::FenceFailed { .. } => "fence_failed",
        Alert::NoBackup { .. } => "no_backup",
        Alert::PromoteFailed { .. } => "promote_failed",
        Alert::AliveWhileFenced => "alive_while_fenced",
    }
}

/// The health task of one daemon.
pub struct Monitor {
    ctl: Arc<Controller>,
    cfg: HealthConfig,
    det: Detector,
    metrics: Arc<Metrics>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    last: Option<HealthReport>,
    takeovers: Vec<Takeover>,
    /// The generation of `returns.json` already acted on.
    returns_seen: u64,
}

impl Monitor {
    /// Checks the cluster's health settings; the daemon refuses to start on bad ones.
    pub fn new(ctl: Arc<Controller>, metrics: Arc<Metrics>) -> Result<Monitor, health::ConfigError> {
        let cfg = health_config(&ctl.cluster)?;
        let det = Detector::new(cfg.detector(), sn_specs(&ctl.cluster));
        let (tx, rx) = mpsc::unbounded_channel();
        // Returns recorded before this daemon started concern SNs it starts with as Up anyway.
        let returns_seen = ctl.state.load_returns().map(|r| r.generation).unwrap_or(0);
        Ok(Monitor { ctl, cfg, det, metrics, tx, rx, last: None, takeovers: Vec::new(), returns_seen })
    }

    /// Probes, decides and acts until the runtime stops.
    pub async fn run(mut self) {
        tracing::info!(
            failover = ?self.cfg.failover,
            interval_secs = self.cfg.probe_interval_secs,
            dead_after_secs = self.cfg.dead_after_secs,
            "health monitor started"
        );
        let mut every = tokio::time::interval(self.cfg.interval());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    self.poll_returns();
                    self.probe_all();
                    let d = self.det.tick(Instant::now());
                    self.execute(d);
                }
                Some(ev) = self.rx.recv() => self.handle(ev),
            }
            self.publish();
        }
    }

    /// One probe of every SN, each in its own task, results sent back with the instant it was sent.
    fn probe_all(&self) {
        for sn in self.ctl.cluster.sns() {
            let (ctl, sn, tx, cfg) = (Arc::clone(&self.ctl), sn.clone(), self.tx.clone(), self.cfg.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let probe = probe(&ctl, &sn, &cfg).await;
                let _ = tx.send(Event::Probed { sn: sn.name.clone(), started, probe });
            });
        }
    }

    /// Acts on the returns `hanfs migrate --back` recorded since the last look (the StateDir's
    /// `returns.json`, polled each interval): the SN is Up again in the detector, serving itself,
    /// with its hold-down, and its takeover is no longer reported.
    fn poll_returns(&mut self) {
        let returns = match self.ctl.state.load_returns() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reading the returns file");
                return;
            }
        };
        let now = Instant::now();
        for (sn, r) in returns.since(self.returns_seen) {
            match self.det.returned(sn, now) {
                Ok(()) => {
                    self.takeovers.retain(|t| t.service != sn);
                    tracing::warn!(sn = %sn, state = "up", generation = r.generation, hold_down_secs = self.cfg.hold_down_secs,
                        "SN returned to service (migrate --back): probed as up, not failed over again within the hold-down");
                }
                // Fencing right now: looked at again next interval (the generation is not taken).
                Err(health::DetectorError::Fencing(_)) => return,
                Err(e) => tracing::error!(sn = %sn, error = %e, "return of an SN"),
            }
        }
        self.returns_seen = returns.generation;
    }

    fn handle(&mut self, ev: Event) {
        let now = Instant::now();
        let decisions = match ev {
            Event::Probed { sn, started, probe } => {
                for (part, c) in [("agent", &probe.agent), ("nfs", &probe.nfs)] {
                    if matches!(c, Check::Refused(_) | Check::Silent(_)) {
                        self.metrics.record_probe_failure(&sn, part);
                        tracing::debug!(sn = %sn, part, check = ?c, "probe failed");
                    }
                }
                self.det.observe(&sn, started, now, &probe)
            }
            Event::Fenced { outcome } => {
                let result = if outcome.fenced() { "fenced" } else { "failed" };
                self.metrics.record_fence(&outcome.sn, result);
                match &outcome.result {
                    Ok(()) => {
                        tracing::warn!(sn = %outcome.sn, state = "fenced", attempts = outcome.attempts.len(), "fence succeeded")
                    }
                    Err(reason) => {
                        tracing::error!(sn = %outcome.sn, state = "down", reason = %reason, attempts = outcome.attempts.len(), "fence FAILED: nothing promoted; will retry")
                    }
                }
                self.det.fence_done(&outcome.sn, outcome.result, now)
            }
            Event::Promoted { service, to, result } => match result {
                Ok(takeover) => {
                    self.metrics.record_promotion(&service, &to, true);
                    tracing::warn!(sn = %service, to = %to, state = "fenced", "services promoted to the backup");
                    if let Some(t) = takeover {
                        self.takeovers.retain(|x| x.service != t.service);
                        self.takeovers.push(t);
                    }
                    self.det.served(&service, &to).map(|()| Vec::new())
                }
                Err(reason) => {
                    self.metrics.record_promotion(&service, &to, false);
                    tracing::error!(sn = %service, to = %to, reason = %reason, "promotion failed; will retry");
                    self.det.promote_failed(&service, reason, now)
                }
            },
        };
        match decisions {
            Ok(d) => self.execute(d),
            Err(e) => tracing::error!(error = %e, "health detector"),
        }
    }

    fn execute(&mut self, decisions: Vec<Decision>) {
        for d in decisions {
            match d {
                Decision::Fence { sn } => {
                    let Some(node) = self.ctl.cluster.sn(&sn).cloned() else { continue };
                    tracing::warn!(sn = %sn, state = "down", reason = self.reason(&sn), "SN is down: fencing");
                    let (cluster, tx) = (Arc::clone(&self.ctl.cluster), self.tx.clone());
                    tokio::spawn(async move {
                        let outcome = redirect::fence(&cluster, &node).await;
                        let _ = tx.send(Event::Fenced { outcome });
                    });
                }
                Decision::Promote { service, from, to } => {
                    if self.cfg.failover != FailoverMode::Auto {
                        // The detector asks only in auto mode; never promote otherwise.
                        tracing::warn!(sn = %service, to = %to, "promotion asked for in manual mode: ignored");
                        continue;
                    }
                    tracing::warn!(sn = %service, from = %from, to = %to, state = "fenced", "promoting the backup");
                    let (ctl, tx) = (Arc::clone(&self.ctl), self.tx.clone());
                    let rt = tokio::runtime::Handle::current();
                    // The redirect hooks are not `Send`: the promotion runs on a blocking thread
                    // of its own, driving its future there.
                    tokio::task::spawn_blocking(move || {
                        let result = rt.block_on(promote_and_claim(&ctl, &service, &to));
                        let _ = tx.send(Event::Promoted { service, to, result });
                    });
                }
                Decision::Alert { sn, alert } => {
                    let kind = alert_kind(&alert);
                    self.metrics.record_alert(&sn, kind);
                    tracing::warn!(sn = %sn, kind, alert = ?alert, state = self.state_name(&sn), "health alert");
                }
                Decision::Recovered { sn } => {
                    tracing::info!(sn = %sn, state = "up", "SN is up again");
                }
            }
        }
    }

    fn reason(&self, sn: &str) -> String {
        let r = self.det.report(Instant::now(), unix_now());
        r.sns.into_iter().find(|s| s.name == sn).and_then(|s| s.reason).unwrap_or_default()
    }

    fn state_name(&self, sn: &str) -> &'static str {
        let r = self.det.report(Instant::now(), unix_now());
        r.sns.iter().find(|s| s.name == sn).map_or("unknown", |s| s.state.as_str())
    }

    /// Report to the state dir (on change) and the metrics.
    fn publish(&mut self) {
        let unix = unix_now();
        let report = self.det.report(Instant::now(), unix);
        if self.last.as_ref() == Some(&report) {
            return;
        }
        self.metrics.record_health(&report);
        let file = HealthFile { updated: unix, report: report.clone(), takeovers: self.takeovers.clone() };
        if let Err(e) = self.ctl.state.record_health(&file) {
            tracing::error!(error = %format!("{e:#}"), "writing the health report");
        }
        self.last = Some(report);
    }
}

/// One probe of `sn`: the agent's handshake and RPC NULL to NFS and MOUNT on the address its nodes
/// mount from (its service address, else its address), each within the probe timeout. The daemon's
/// probe, and the health check of `hanfs migrate --back`.
pub async fn probe(ctl: &Controller, sn: &model::ServiceNode, cfg: &HealthConfig) -> Probe {
    let timeout = Duration::try_from_secs_f64(cfg.probe_timeout_secs).unwrap_or(Duration::from_secs(4));
    let agent = async {
        match tokio::time::timeout(timeout, ctl.connect(sn)).await {
            Ok(Ok(_conn)) => Check::Ok,
            Ok(Err(e)) => agent_check(&e),
            Err(_) => Check::Silent(format!("agent: no handshake within {timeout:?}")),
        }
    };
    let nfs = async {
        let ip = match (&sn.address, cfg.service_address.get(&sn.name)) {
            (_, Some(ip)) | (model::Address::Ip(ip), None) => Some(*ip),
            (model::Address::Name(n), None) => {
                tokio::net::lookup_host((n.as_str(), 0)).await.ok().and_then(|mut a| a.next()).map(|a| a.ip())
            }
        };
        match ip {
            Some(ip) => health::probe::probe_nfs(&cfg.nfs_target(&sn.name, ip)).await.check(),
            // The MN's resolver, not the SN: no evidence either way.
            None => Check::Local(format!("nfs: cannot resolve {}", sn.address)),
        }
    };
    let (agent, nfs) = tokio::join!(agent, nfs);
    Probe { agent, nfs }
}

/// Promotes the fenced `service`'s nodes (no fence: the detector saw it fenced), then claims its
/// service address on `to`. A failed claim is reported, not fatal: the nodes are served either way
/// once xCAT or the address points at `to`.
async fn promote_and_claim(ctl: &Arc<Controller>, service: &str, to: &str) -> Result<Option<Takeover>, String> {
    let mut step = |s: &str| tracing::info!(sn = %service, step = %s, "failover");
    let mut repoint = |moves: &[(String, String)], _dry: bool| Repointed {
        ok: true,
        steps: moves
            .iter()
            .map(|(n, s)| {
                format!("xCAT not repointed by the daemon for {n} -> {s} (the service address moves instead)")
            })
            .collect(),
        xcat: None,
    };
    let mut hooks = Hooks { step: &mut step, repoint: &mut repoint };
    let rep = redirect::promote(ctl, service, false, &mut hooks).await.map_err(|e| format!("{e:#}"))?;
    if !rep.ok {
        let why: Vec<String> = rep.failed.iter().map(|f| format!("{}: {}", f.node, f.reason)).collect();
        let exports: Vec<String> =
            rep.exports.iter().filter(|e| !e.ok).map(|e| format!("exports of {}: {}", e.sn, e.output)).collect();
        return Err([why, exports].concat().join("; "));
    }
    for m in &rep.moved {
        tracing::warn!(sn = %service, node = %m.node, to = %m.to, "node promoted");
    }
    let Some(addr) = ctl.cluster.sn(service).and_then(|s| s.service_address) else {
        tracing::warn!(sn = %service, "no service_address configured: nodes keep mounting the fenced SN until xCAT is repointed");
        return Ok(None);
    };
    let address = addr.to_string();
    let (ok, detail) = match ctl.cluster.sn(to) {
        None => (false, format!("no SN named `{to}`")),
        Some(sn) => match crate::address::claim(ctl, sn, &address).await {
            Ok(r) => (true, format!("{} (announced: {}) {}", r.change, r.announced, r.detail)),
            Err(e) => (false, e.to_string()),
        },
    };
    if ok {
        tracing::warn!(sn = %service, to = %to, address = %address, detail = %detail, "service address taken over");
    } else {
        tracing::error!(sn = %service, to = %to, address = %address, reason = %detail, "service address NOT taken over");
    }
    Ok(Some(Takeover { service: service.to_string(), to: to.to_string(), address, ok, detail, at: unix_now() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_map_to_checks() {
        let io = |k| SnError::Connect { addr: "a".into(), source: transport::Error::Io(std::io::Error::from(k)) };
        assert!(matches!(agent_check(&io(std::io::ErrorKind::ConnectionRefused)), Check::Refused(_)));
        assert!(matches!(agent_check(&io(std::io::ErrorKind::TimedOut)), Check::Silent(_)));
        let cert = SnError::Connect { addr: "a".into(), source: transport::Error::Cert("expired".into()) };
        assert!(matches!(agent_check(&cert), Check::Local(_)));
        assert!(matches!(agent_check(&SnError::Timeout(Duration::from_secs(1))), Check::Silent(_)));
        assert!(matches!(agent_check(&SnError::Refused("no".into())), Check::Refused(_)));
    }
}
