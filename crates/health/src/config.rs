//! The health settings, as a struct with the defaults (parsing belongs in `model`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detector::DetectorConfig;
use crate::fence::FenceConfig;
use crate::probe::{MountPort, NfsTarget, SourcePort};

/// `[cluster] failover`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// Down SNs are fenced and their services promoted by the daemon.
    Auto,
    /// Down SNs are reported and alerted; `hanfs failover` is the only trigger (today's behaviour,
    /// and the only safe one without a fence command).
    #[default]
    Manual,
}

/// Proposed `[cluster]` health fields (`[health]` would do as well) and per-SN ones.
///
/// Defaults are sized for the goal of issue 12: interval 1 s + dead_after 5 s puts Down at most
/// ~6 s after a kill whatever the probe timeout (a power loss: probes time out; a dead NFS server:
/// refused at once), which leaves the fence (IPMI `rpower off` takes a few seconds) and the
/// takeover within 15 s. A probe is at most 6 round trips (kernel nfsd: connect and NULLs on 2049,
/// connect and GETPORT on 111, connect and NULL on mountd; the embedded server: 4 on one port), so
/// a 200 ms netem delay with jitter costs about 1.5-2.5 s of the 4 s timeout, and Down needs 5 s of
/// *every* probe failing: a slow but alive SN is not failed over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    pub failover: FailoverMode,
    pub probe_interval_secs: f64,
    /// Deadline of one probe (all its RPC calls, connects included).
    pub probe_timeout_secs: f64,
    pub dead_after_secs: f64,
    pub hold_down_secs: f64,
    /// NFS versions whose NULL call must succeed: `[3]` for the embedded server, `[3, 4]` for
    /// kernel nfsd serving NFSv4 clients (AIX `replicas=`, `refer=`).
    pub nfs_versions: Vec<u32>,
    pub nfs_port: u16,
    /// MOUNT's port; `None`: asked from portmap/rpcbind at `portmap_port`.
    pub mount_port: Option<u16>,
    /// 111 for kernel nfsd (rpcbind); the embedded server answers portmap on its NFS port.
    pub portmap_port: u16,
    /// Probe from a reserved source port (needed by the embedded server's `secure` default).
    pub reserved_source_port: bool,
    /// argv of the fence command; `{sn}` and `{address}` are substituted (today's `cluster.fence`).
    pub fence: Vec<String>,
    pub fence_timeout_secs: f64,
    /// argv run after the fence; it must exit 0 and print `fence_verify_expect` (e.g. xCAT
    /// `["rpower", "{sn}", "stat"]`, which prints `sn1: off`). Empty: the fence's exit status alone.
    pub fence_verify: Vec<String>,
    pub fence_verify_expect: String,
    /// Waits before the second, third, ... fence attempt of one run.
    pub fence_retry_secs: Vec<f64>,
    /// Wait after a failed run before the next run is asked for.
    pub fence_rerun_after_secs: f64,
    /// argv run when a fence run fails (and for other alerts); `{sn}`, `{address}`, `{reason}`.
    pub notify: Vec<String>,
    /// Per SN (by name): the floating address its nodes mount from, probed instead of the SN's
    /// management address (`[[sn]] service_address`).
    pub service_address: BTreeMap<String, IpAddr>,
    /// Per SN (by name): its own NFS and MOUNT ports (`[[sn]] nfs_port`, `mount_port`), over
    /// `nfs_port` and `mount_port` (SNs of one cluster may serve on different ports).
    pub sn_ports: BTreeMap<String, SnPorts>,
}

/// One SN's own probe ports; `None`: the cluster-wide setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnPorts {
    pub nfs: Option<u16>,
    pub mount: Option<u16>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            failover: FailoverMode::Manual,
            probe_interval_secs: 1.0,
            probe_timeout_secs: 4.0,
            dead_after_secs: 5.0,
            hold_down_secs: 30.0,
            nfs_versions: vec![3],
            nfs_port: 2049,
            mount_port: None,
            portmap_port: 111,
            reserved_source_port: true,
            fence: Vec::new(),
            fence_timeout_secs: 20.0,
            fence_verify: Vec::new(),
            fence_verify_expect: "off".to_string(),
            fence_retry_secs: vec![2.0, 5.0],
            fence_rerun_after_secs: 30.0,
            notify: Vec::new(),
            service_address: BTreeMap::new(),
            sn_ports: BTreeMap::new(),
        }
    }
}

/// A setting that cannot work, by field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn secs(field: &'static str, v: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero() && *d <= Duration::from_secs(86_400))
        .ok_or(ConfigError { field, reason: format!("{v} is not a duration between 0 and 1 day (seconds)") })
}

impl HealthConfig {
    /// Checks what `model` should check when it parses these fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let interval = secs("probe_interval_secs", self.probe_interval_secs)?;
        let timeout = secs("probe_timeout_secs", self.probe_timeout_secs)?;
        let dead = secs("dead_after_secs", self.dead_after_secs)?;
        secs("hold_down_secs", self.hold_down_secs)?;
        secs("fence_timeout_secs", self.fence_timeout_secs)?;
        secs("fence_rerun_after_secs", self.fence_rerun_after_secs)?;
        for r in &self.fence_retry_secs {
            secs("fence_retry_secs", *r)?;
        }
        if dead < interval {
            return Err(ConfigError {
                field: "dead_after_secs",
                reason: "shorter than probe_interval_secs: one lost probe would declare an SN dead".into(),
            });
        }
        if timeout >= dead {
            return Err(ConfigError {
                field: "probe_timeout_secs",
                reason: "not shorter than dead_after_secs: no second probe could fail before Down".into(),
            });
        }
        if self.nfs_versions.is_empty() || self.nfs_versions.iter().any(|v| !matches!(v, 2..=4)) {
            return Err(ConfigError { field: "nfs_versions", reason: "a non-empty list of 2, 3, 4".into() });
        }
        if self.failover == FailoverMode::Auto && self.fence.is_empty() {
            return Err(ConfigError {
                field: "failover",
                reason:
                    "\"auto\" needs a fence command (cluster.fence): promoting an unfenced SN's data risks two writers"
                        .into(),
            });
        }
        if !self.fence_verify.is_empty() && self.fence_verify_expect.trim().is_empty() {
            return Err(ConfigError { field: "fence_verify_expect", reason: "empty".into() });
        }
        Ok(())
    }

    fn dur(v: f64) -> Duration {
        Duration::try_from_secs_f64(v).unwrap_or(Duration::from_secs(1))
    }

    pub fn interval(&self) -> Duration {
        Self::dur(self.probe_interval_secs)
    }

    pub fn detector(&self) -> DetectorConfig {
        DetectorConfig {
            dead_after: Self::dur(self.dead_after_secs),
            hold_down: Self::dur(self.hold_down_secs),
            failover: self.failover,
            fence_retry_after: Self::dur(self.fence_rerun_after_secs),
            promote_retry_after: Self::dur(self.probe_interval_secs).max(Duration::from_secs(5)),
        }
    }

    /// The NFS probe of an SN whose management address is `address` (its service address wins).
    /// The SN's own ports (`sn_ports`) win over the cluster-wide ones.
    pub fn nfs_target(&self, sn: &str, address: IpAddr) -> NfsTarget {
        let own = self.sn_ports.get(sn).copied().unwrap_or_default();
        NfsTarget {
            address: self.service_address.get(sn).copied().unwrap_or(address),
            nfs_port: own.nfs.unwrap_or(self.nfs_port),
            nfs_versions: self.nfs_versions.clone(),
            mount: match own.mount.or(self.mount_port) {
                Some(p) => MountPort::Fixed(p),
                None => MountPort::Portmap(self.portmap_port),
            },
            timeout: Self::dur(self.probe_timeout_secs),
            source: if self.reserved_source_port { SourcePort::Reserved } else { SourcePort::Any },
        }
    }

    pub fn fence_config(&self) -> FenceConfig {
        FenceConfig {
            command: self.fence.clone(),
            timeout: Self::dur(self.fence_timeout_secs),
            verify: self.fence_verify.clone(),
            verify_expect: self.fence_verify_expect.clone(),
            retry: self.fence_retry_secs.iter().map(|s| Self::dur(*s)).collect(),
            notify: self.notify.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_meet_the_goal() {
        let c = HealthConfig::default();
        assert_eq!(c.validate(), Ok(()));
        // Down at most interval + dead_after after a kill, well inside 15 s with a fence.
        assert!(c.probe_interval_secs + c.dead_after_secs <= 6.0);
        // Six round trips with a 200 ms (+ 100 ms jitter) netem delay stay below the probe timeout.
        assert!(c.probe_timeout_secs > 6.0 * 0.3);
    }

    #[test]
    fn bad_settings_are_named() {
        let auto = HealthConfig { failover: FailoverMode::Auto, ..HealthConfig::default() };
        assert_eq!(auto.validate().map_err(|e| e.field), Err("failover"));
        let slow = HealthConfig { probe_timeout_secs: 9.0, ..HealthConfig::default() };
        assert_eq!(slow.validate().map_err(|e| e.field), Err("probe_timeout_secs"));
        let neg = HealthConfig { hold_down_secs: -1.0, ..HealthConfig::default() };
        assert_eq!(neg.validate().map_err(|e| e.field), Err("hold_down_secs"));
        let v5 = HealthConfig { nfs_versions: vec![5], ..HealthConfig::default() };
        assert_eq!(v5.validate().map_err(|e| e.field), Err("nfs_versions"));
    }

    #[test]
    fn fields_read_as_written() {
        let c: HealthConfig = serde_json::from_str(
            r#"{"failover": "auto", "fence": ["rpower", "{sn}", "off"], "fence_verify": ["rpower", "{sn}", "stat"],
                "service_address": {"sn1": "10.0.0.100"}, "nfs_versions": [3, 4]}"#,
        )
        .unwrap();
        assert_eq!(c.failover, FailoverMode::Auto);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.dead_after_secs, 5.0);
        assert!(serde_json::from_str::<HealthConfig>(r#"{"failover": "sometimes"}"#).is_err());
        assert!(serde_json::from_str::<HealthConfig>(r#"{"dead_after": 5}"#).is_err(), "unknown field accepted");
    }

    #[test]
    fn service_address_is_probed() {
        let mut c = HealthConfig::default();
        c.service_address.insert("sn1".into(), "10.0.0.100".parse().unwrap());
        assert_eq!(c.nfs_target("sn1", "10.0.0.1".parse().unwrap()).address.to_string(), "10.0.0.100");
        assert_eq!(c.nfs_target("sn2", "10.0.0.2".parse().unwrap()).address.to_string(), "10.0.0.2");
    }

    #[test]
    fn an_sns_own_ports_win() {
        let mut c = HealthConfig { nfs_port: 2049, mount_port: None, portmap_port: 111, ..HealthConfig::default() };
        c.sn_ports.insert("sn2".into(), SnPorts { nfs: Some(3049), mount: Some(3050) });
        c.sn_ports.insert("sn3".into(), SnPorts { nfs: Some(4049), mount: None });
        let t = |sn: &str| c.nfs_target(sn, "10.0.0.1".parse().unwrap());
        assert_eq!((t("sn1").nfs_port, t("sn1").mount), (2049, MountPort::Portmap(111)));
        assert_eq!((t("sn2").nfs_port, t("sn2").mount), (3049, MountPort::Fixed(3050)));
        assert_eq!((t("sn3").nfs_port, t("sn3").mount), (4049, MountPort::Portmap(111)));
    }
}
