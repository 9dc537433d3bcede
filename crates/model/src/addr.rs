//! Server addresses as they appear in `replicas=`/`refer=` and in agent endpoints.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// What NFS clients use to reach a server: an IP literal or a DNS host name.
///
/// AIX wants IP literals in replica lists, and the Linux kernel client needs the `dns_resolver`
/// upcall to follow a host name in fs_locations, so IPs are the safe default; names are allowed for
/// Linux servers only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Address {
    Ip(IpAddr),
    Name(String),
}

impl Address {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Address::Ip(ip));
        }
        if bare != s {
            return Err(format!("`{s}` is bracketed but not an IPv6 address"));
        }
        if is_hostname(s) {
            // A dotted-quad that failed to parse is a typo, not a host name.
            if s.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit())) {
                return Err(format!("`{s}` is not a valid IPv4 address"));
            }
            Ok(Address::Name(s.to_ascii_lowercase()))
        } else {
            Err(format!("`{s}` is neither an IP address nor a valid host name"))
        }
    }

    pub fn is_ip(&self) -> bool {
        matches!(self, Address::Ip(_))
    }

    /// The form used inside fs_locations values: IPv6 in brackets so its colons are not read as
    /// location separators.
    pub fn fsloc(&self) -> String {
        match self {
            Address::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            Address::Ip(IpAddr::V4(v4)) => v4.to_string(),
            Address::Name(n) => n.clone(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => write!(f, "{ip}"),
            Address::Name(n) => f.write_str(n),
        }
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.to_string()
    }
}

impl TryFrom<String> for Address {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Address::parse(&s)
    }
}

/// RFC 1123 host name: labels of letters, digits and hyphens, not starting or ending with a hyphen.
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `host:port` of an agent, where host is an IP literal (IPv6 in brackets) or a host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: Address,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` lacks a port (expected host:port, IPv6 as [addr]:port)"))?;
        if host.contains(':') && !host.starts_with('[') {
            return Err(format!("`{s}`: write an IPv6 endpoint as [addr]:port"));
        }
        let port: u16 = port.parse().map_err(|_| format!("`{s}`: port `{port}` is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(format!("`{s}`: port 0 is not allowed"));
        }
        Ok(Endpoint { host: Address::parse(host)?, port })
    }

    /// Whether the endpoint is on this machine's loopback (plain TCP may then be allowed).
    pub fn is_loopback(&self) -> bool {
        match &self.host {
            Address::Ip(ip) => ip.is_loopback(),
            Address::Name(n) => n == "localhost",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host.fsloc(), self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(Address::parse("10.0.0.1").unwrap().is_ip());
        assert!(Address::parse("fd00::1").unwrap().is_ip());
        assert_eq!(Address::parse("[fd00::1]").unwrap().fsloc(), "[fd00::1]");
        assert_eq!(Address::parse("SN1.cluster").unwrap(), Address::Name("sn1.cluster".into()));
        assert!(Address::parse("10.0.0.300").is_err());
        assert!(Address::parse("bad_name").is_err());
        assert!(Address::parse("-x").is_err());
        assert!(Address::parse("").is_err());
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("[::1]:7468").unwrap();
        assert!(e.is_loopback());
        assert_eq!(e.to_string(), "[::1]:7468");
        assert!(Endpoint::parse("10.0.0.1").is_err());
        assert!(Endpoint::parse("::1:7468").is_err());
        assert!(Endpoint::parse("10.0.0.1:0").is_err());
        assert!(!Endpoint::parse("sn1:7468").unwrap().is_loopback());
    }
}
