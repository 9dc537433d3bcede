//! The health settings of `[cluster]` (automatic failover) and an SN's floating service address,
//! checked one by one with their place in the file. Unset values stay `None`: the defaults and the
//! checks between fields (dead_after against the interval, ...) belong to the `health` crate, which
//! the controller maps these onto.

use crate::config::{ClusterSection, Seconds, Spanned, Text};
use crate::error::Sink;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// `[cluster] failover`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failover {
    /// `hanfs failover` is the only trigger.
    #[default]
    Manual,
    /// `hanfs daemon` fences a dead SN and promotes its backups.
    Auto,
}

/// The health settings as configured (`None`: the health crate's default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub failover: Failover,
    pub probe_interval: Option<Duration>,
    pub probe_timeout: Option<Duration>,
    pub dead_after: Option<Duration>,
    pub hold_down: Option<Duration>,
    pub fence_timeout: Option<Duration>,
    pub fence_retry: Option<Vec<Duration>>,
    pub fence_rerun_after: Option<Duration>,
    pub fence_verify: Vec<String>,
    pub fence_verify_expect: Option<String>,
    pub notify: Vec<String>,
    pub nfs_port: Option<u16>,
    pub mount_port: Option<u16>,
    pub portmap_port: Option<u16>,
    pub nfs_versions: Option<Vec<u32>>,
}

/// A floating address with its prefix length (`10.0.1.101/24`, `fd00::101/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAddress {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl ServiceAddress {
    /// `ADDRESS/PREFIX`; the prefix is required (the address is added to an interface with it).
    pub fn parse(s: &str) -> Result<ServiceAddress, String> {
        let Some((ip, prefix)) = s.split_once('/') else {
            return Err(format!("`{s}`: expected ADDRESS/PREFIX, e.g. 10.0.1.101/24"));
        };
        let ip: IpAddr = ip.parse().map_err(|_| format!("`{s}`: `{ip}` is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("`{s}`: the prefix must be 0 to {max}"))?;
        // Loopback is allowed: single-host test clusters serve from 127.0.0.x.
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(format!("`{s}`: not an address clients can mount from"));
        }
        Ok(ServiceAddress { ip, prefix })
    }
}

impl std::fmt::Display for ServiceAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// Longest accepted duration: a day.
const MAX_SECS: f64 = 86_400.0;

fn secs(sink: &mut Sink<'_>, v: &Option<Spanned<Seconds>>, field: &str) -> Option<Duration> {
    let v = v.as_ref()?;
    let Seconds(x) = *v.get_ref();
    match Duration::try_from_secs_f64(x).ok().filter(|d| !d.is_zero() && x <= MAX_SECS) {
        Some(d) => Some(d),
        None => {
            sink.at(
                v.span(),
                format!("cluster.{field}"),
                format!("{x} is not a duration above 0 and up to 86400 seconds"),
            );
            None
        }
    }
}

fn port(sink: &mut Sink<'_>, v: &Option<Spanned<i64>>, field: &str) -> Option<u16> {
    sn_port(sink, v, format!("cluster.{field}"))
}

/// A port field (`cluster.nfs_port`, `sn[i].nfs_port`, ...), checked; `field` is the dotted name.
pub(crate) fn sn_port(sink: &mut Sink<'_>, v: &Option<Spanned<i64>>, field: String) -> Option<u16> {
    let v = v.as_ref()?;
    match u16::try_from(*v.get_ref()).ok().filter(|p| *p > 0) {
        Some(p) => Some(p),
        None => {
            sink.at(v.span(), field, "must be a port, 1 to 65535");
            None
        }
    }
}

fn argv(sink: &mut Sink<'_>, v: &[String], field: &str) {
    if v.first().is_some_and(|p| p.trim().is_empty()) {
        sink.nowhere(format!("cluster.{field}"), "the program (first element) is empty");
    }
}

/// `[cluster]`'s health fields, checked.
pub(crate) fn section(c: &ClusterSection, sink: &mut Sink<'_>) -> Health {
    let failover = match &c.failover {
        None => Failover::Manual,
        Some(t) => match t.get_ref().as_str() {
            "manual" => Failover::Manual,
            "auto" if c.fence.is_empty() => {
                sink.at(
                    t.span(),
                    "cluster.failover",
                    "\"auto\" needs a fence command (cluster.fence): promoting an unfenced SN's data risks two writers",
                );
                Failover::Manual
            }
            "auto" => Failover::Auto,
            other => {
                sink.at(t.span(), "cluster.failover", format!("`{other}`: expected \"manual\" or \"auto\""));
                Failover::Manual
            }
        },
    };
    argv(sink, &c.fence, "fence");
    argv(sink, &c.fence_verify, "fence_verify");
    argv(sink, &c.notify, "notify");
    let fence_verify_expect = c.fence_verify_expect.as_ref().and_then(|t| {
        if t.get_ref().trim().is_empty() {
            sink.at(t.span(), "cluster.fence_verify_expect", "empty: say what the verification prints (e.g. \"off\")");
            None
        } else {
            Some(t.get_ref().clone())
        }
    });
    let nfs_versions = c.nfs_versions.as_ref().and_then(|v| {
        let list = v.get_ref();
        if list.is_empty() || list.iter().any(|x| !(2..=4).contains(x)) {
            sink.at(v.span(), "cluster.nfs_versions", "a non-empty list of 2, 3, 4");
            None
        } else {
            Some(list.iter().map(|x| *x as u32).collect())
        }
    });
    let fence_retry = c.fence_retry_secs.as_ref().map(|v| {
        v.get_ref().iter().filter_map(|x| secs(sink, &Some(Spanned::new(v.span(), *x)), "fence_retry_secs")).collect()
    });
    Health {
        failover,
        probe_interval: secs(sink, &c.probe_interval_secs, "probe_interval_secs"),
        probe_timeout: secs(sink, &c.probe_timeout_secs, "probe_timeout_secs"),
        dead_after: secs(sink, &c.dead_after_secs, "dead_after_secs"),
        hold_down: secs(sink, &c.hold_down_secs, "hold_down_secs"),
        fence_timeout: secs(sink, &c.fence_timeout_secs, "fence_timeout_secs"),
        fence_retry,
        fence_rerun_after: secs(sink, &c.fence_rerun_after_secs, "fence_rerun_after_secs"),
        fence_verify: c.fence_verify.clone(),
        fence_verify_expect,
        notify: c.notify.clone(),
        nfs_port: port(sink, &c.nfs_port, "nfs_port"),
        mount_port: port(sink, &c.mount_port, "mount_port"),
        portmap_port: port(sink, &c.portmap_port, "portmap_port"),
        nfs_versions,
    }
}

/// `sn[i].service_address`, checked.
pub(crate) fn service_address(sink: &mut Sink<'_>, v: &Option<Text>, field: String) -> Option<ServiceAddress> {
    let t = v.as_ref()?;
    ServiceAddress::parse(t.get_ref()).map_err(|m| sink.at(t.span(), field, m)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_addresses_need_a_prefix() {
        assert_eq!(ServiceAddress::parse("10.0.1.101/24").unwrap().to_string(), "10.0.1.101/24");
        assert_eq!(ServiceAddress::parse("fd00::1/64").unwrap().prefix, 64);
        for bad in ["10.0.1.101", "10.0.1.101/33", "x/24", "0.0.0.0/0", "224.0.0.1/4", "fd00::1/129"] {
            assert!(ServiceAddress::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
