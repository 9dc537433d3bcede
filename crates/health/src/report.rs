//! Health report types (`hanfs status --json`) and the metric names that carry the same.

use serde::{Deserialize, Serialize};

/// An SN's health as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    Up,
    /// Some probes failed, not (yet) declared Down.
    Suspect,
    /// Declared dead: failover wanted (see `fence`).
    Down,
    /// Fenced: its services are (being) served by backups (`served_by` / `serving_for`).
    Fenced,
    /// Up, and serving the services of fenced SNs besides its own (`serving_for`).
    ServingFor,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Suspect => "suspect",
            HealthState::Down => "down",
            HealthState::Fenced => "fenced",
            HealthState::ServingFor => "serving-for",
        }
    }

    pub const ALL: [HealthState; 5] =
        [HealthState::Up, HealthState::Suspect, HealthState::Down, HealthState::Fenced, HealthState::ServingFor];
}

/// One SN in `hanfs status --json` (`health` array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnHealth {
    pub name: String,
    pub state: HealthState,
    /// Unix seconds of the last good probe (agent and NFS both answered); `null`: none yet.
    pub last_good_probe: Option<u64>,
    /// Unix seconds of the first failed probe of the current failing run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<u64>,
    /// Why the latest probe failed (while failing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Down/fenced only: `manual` (no automatic failover), `running`, `failed` (retried),
    /// `released`, `done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<String>,
    /// SNs (fenced) whose services this SN serves now.
    pub serving_for: Vec<String>,
    /// The SN serving this one's services now, when not itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
}

/// Health of every SN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub sns: Vec<SnHealth>,
    /// Services of fenced SNs not yet served elsewhere (no Up backup, or promotion failing).
    #[serde(default)]
    pub waiting_for_backup: Vec<String>,
}

/// Suggested Prometheus metric names (label names in braces); the daemon's exporter should use
/// these so dashboards and alerts carry the same facts as `hanfs status --json`.
pub mod metrics {
    /// Gauge, 1 for the SN's current state, 0 for the others: `{sn, state}` (`HealthState::as_str`).
    pub const SN_STATE: &str = "hanfs_sn_state";
    /// Gauge: unix seconds of the last good probe `{sn}`.
    pub const SN_LAST_GOOD_PROBE: &str = "hanfs_sn_last_good_probe_timestamp_seconds";
    /// Counter: failed probes `{sn, part}` with part `agent` or `nfs`.
    pub const SN_PROBE_FAILURES: &str = "hanfs_sn_probe_failures_total";
    /// Histogram: probe round trip `{sn, part}`.
    pub const SN_PROBE_SECONDS: &str = "hanfs_sn_probe_duration_seconds";
    /// Counter: fence runs `{sn, result}` with result `fenced` or `failed`.
    pub const FENCE_RUNS: &str = "hanfs_fence_runs_total";
    /// Counter: promotions `{service, to, result}` with result `ok` or `failed`.
    pub const PROMOTIONS: &str = "hanfs_promotions_total";
    /// Gauge, 1 per (host, service) pair where a host serves a fenced SN's services `{sn, service}`.
    pub const SERVING_FOR: &str = "hanfs_sn_serving_for";
    /// Counter: alerts raised `{sn, kind}` (`no_quorum`, `fence_failed`, `no_backup`, ...).
    pub const ALERTS: &str = "hanfs_health_alerts_total";
}
