//! The agent's config (contract.md "Agent config").

use crate::cluster::{Dialect, TlsFiles};
use crate::error::{Diagnostics, Sink};
use crate::path::AbsPath;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// Replicas live here; the agent writes nothing outside `root`, `statelite_roots`,
    /// its state directory and `exports_file`.
    pub root: AbsPath,
    pub statelite_roots: Vec<AbsPath>,
    pub state_dir: AbsPath,
    /// The only client certificate name allowed to drive this agent (the MN's; `hanfs ca issue
    /// DIR --name mn` makes it).
    pub controller: String,
    pub dialect: Dialect,
    /// Linux: a whole file in /etc/exports.d; AIX: /etc/exports, of which only a marked block is ours.
    pub exports_file: AbsPath,
    pub reload: Vec<String>,
    pub nfs3: Option<SocketAddr>,
    /// The relay listener of image fan-out (`relay_listen`): children the controller names fetch
    /// this agent's payloads there. None: never a relay.
    pub relay_listen: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    /// Accept plain TCP (only honoured when `listen` is loopback).
    pub plaintext_loopback: bool,
    /// Statelite data of a root `R` is kept under `statelite_prefix/R` instead of `R`, so several
    /// agents on one host (tests, demos) keep their statelite trees apart. None: at `R` itself.
    pub statelite_prefix: Option<AbsPath>,
    /// The interface floating service addresses are claimed on (`Claim`); None: the agent refuses
    /// claims.
    pub takeover_interface: Option<String>,
    /// The networks a claimed address must lie in; None: any address.
    pub takeover_allowed: Option<Vec<ipnet::IpNet>>,
    /// Make each exported statelite node directory inside an exported area its own mount point
    /// (a bind mount onto itself), so kernel nfsd crosses from the area's export into the node's own
    /// (and its `refer=`). Default: on for Linux without `statelite_prefix`.
    pub statelite_mounts: bool,
    /// Statelite areas served read-write by the embedded NFSv3 server (`[[statelite_rw]]`).
    pub statelite_rw: Vec<StateliteRw>,
    /// Statelite areas served by kernel nfsd, copied continuously to their backup agent
    /// (`[[statelite_kernel]]`, issue 13 point 4).
    pub statelite_kernel: Vec<StateliteKernel>,
}

/// One statelite area served by kernel nfsd (not by this agent) whose node directories are
/// copied to the backup agent as they change (inotify), instead of only by the controller's
/// periodic copy. `area` lies within `statelite_roots` (under `statelite_prefix` like the rest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateliteKernel {
    pub area: AbsPath,
    /// On the primary: where the changes go and how they are batched.
    pub peer: Option<KernelPeer>,
    /// On the backup: where the primary's stream is accepted, and from whom.
    pub replica: Option<RwReplica>,
}

/// `peer`, `peer_name`, `peer_timeout_ms`, `debounce_ms`, `reconcile_secs` of a `[[statelite_kernel]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPeer {
    pub addr: String,
    pub name: String,
    /// How long one entry may wait for the backup before the stream is given up (and redialled).
    pub timeout_ms: u64,
    /// Quiet time after a change before the changed files are read and sent.
    pub debounce_ms: u64,
    /// Every this many seconds the whole area is compared with what was sent (repairs lost events).
    pub reconcile_secs: u64,
}

/// `debounce_ms`'s default and bounds: short enough for sub-second lag, long enough that a file
/// written in several calls is read once.
pub const DEFAULT_DEBOUNCE_MS: u64 = 100;
pub const MAX_DEBOUNCE_MS: u64 = 60_000;
/// `reconcile_secs`'s default and bounds.
pub const DEFAULT_RECONCILE_SECS: u64 = 300;
pub const MAX_RECONCILE_SECS: u64 = 86_400;

/// One statelite area served read-write over NFSv3 (issue 13): `area` is a path as the cluster
/// names it, equal to or beneath one of `statelite_roots` (kept under `statelite_prefix` like
/// the rest of the statelite data); clients mount `area` itself on `listen`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateliteRw {
    pub area: AbsPath,
    pub listen: SocketAddr,
    /// On the primary: the backup agent's replication listener (`host:port`) every change is
    /// sent to before the client is answered, and the name its certificate must carry.
    pub peer: Option<RwPeer>,
    /// On the backup: where the primary's replication stream is accepted, and the only
    /// certificate name (the primary SN's) it is accepted from. Both `peer` and `replica` (each
    /// naming the other SN) make a symmetric pair, which needs `service_address`: the side
    /// holding it serves and sends, the other is in standby and applies (so a promoted backup
    /// copies back to its returned primary, and the area moves by moving the address).
    pub replica: Option<RwReplica>,
    /// The service address (address/prefix) whose holder serves the area: the area is served
    /// read-write only while this agent holds it (found on `takeover_interface` at start, then
    /// a `Claim` of it promotes the area and a `Release` puts it back in standby). None: a
    /// primary (no `replica_listen`) serves always, a backup never (issue 13: the backup never
    /// serves an area read-write while the primary does).
    pub service_address: Option<ipnet::IpNet>,
}

/// `peer`, `peer_name`, `peer_timeout_ms` of a `[[statelite_rw]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwPeer {
    pub addr: String,
    pub name: String,
    /// How long the primary waits for the backup before it serves without it (unprotected).
    pub timeout_ms: u64,
}

/// `replica_listen`, `primary` of a `[[statelite_rw]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwReplica {
    pub listen: SocketAddr,
    pub primary: String,
}

/// `peer_timeout_ms`'s default and its bounds.
pub const DEFAULT_PEER_TIMEOUT_MS: u64 = 2000;
pub const MAX_PEER_TIMEOUT_MS: u64 = 600_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    area: Spanned<String>,
    peer: Option<Spanned<String>>,
    peer_name: Option<Spanned<String>>,
    peer_timeout_ms: Option<Spanned<i64>>,
    debounce_ms: Option<Spanned<i64>>,
    reconcile_secs: Option<Spanned<i64>>,
    replica_listen: Option<Spanned<String>>,
    primary: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRw {
    area: Spanned<String>,
    listen: Spanned<String>,
    peer: Option<Spanned<String>>,
    peer_name: Option<Spanned<String>>,
    peer_timeout_ms: Option<Spanned<i64>>,
    replica_listen: Option<Spanned<String>>,
    primary: Option<Spanned<String>>,
    service_address: Option<Spanned<String>>,
}

/// Why `s` is not a `host:port` (a host name or IP address, then a port 1-65535), if it is not.
fn host_port_problem(s: &str) -> Option<String> {
    if s.parse::<SocketAddr>().is_ok() {
        return None;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Some(format!("`{s}` is not host:port"));
    };
    if port.parse::<u16>().ok().filter(|&p| p > 0).is_none() {
        return Some(format!("`{s}`: `{port}` is not a port (1-65535)"));
    }
    if !valid_name(host) || host.contains('_') {
        return Some(format!("`{s}`: `{host}` is not a host name or IP address (IPv6: `[addr]:port`)"));
    }
    None
}

/// The name `hanfs ca issue DIR --name mn` puts in the MN's certificate.
pub const DEFAULT_CONTROLLER: &str = "mn";

/// The longest interface name Linux takes (IFNAMSIZ 16 with its NUL).
pub const MAX_INTERFACE: usize = 15;

/// Why `n` cannot be a Linux interface name, if it cannot.
fn interface_problem(n: &str) -> Option<String> {
    if n.is_empty() || n.len() > MAX_INTERFACE {
        return Some(format!("an interface name is 1-{MAX_INTERFACE} bytes, `{n}` is {}", n.len()));
    }
    if n == "." || n == ".." || n.chars().any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace()) {
        return Some(format!("`{n}` is not an interface name (no `/`, `:`, whitespace; not `.` or `..`)"));
    }
    None
}

/// A DNS name as certificates carry it: 1-253 characters of letters, digits, `-` and `.`.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && !n.starts_with(['.', '-'])
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<Spanned<String>>,
    root: Option<Spanned<String>>,
    #[serde(default)]
    statelite_roots: Vec<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    controller: Option<Spanned<String>>,
    dialect: Option<Spanned<String>>,
    exports_file: Option<Spanned<String>>,
    reload: Option<Vec<String>>,
    nfs3: Option<Spanned<String>>,
    relay_listen: Option<Spanned<String>>,
    tls: Option<TlsFiles>,
    #[serde(default)]
    plaintext_loopback: bool,
    statelite_prefix: Option<Spanned<String>>,
    takeover_interface: Option<Spanned<String>>,
    takeover_allowed: Option<Spanned<Vec<Spanned<String>>>>,
    statelite_mounts: Option<Spanned<bool>>,
    #[serde(default)]
    statelite_rw: Vec<RawRw>,
    #[serde(default)]
    statelite_kernel: Vec<RawKernel>,
}

impl AgentConfig {
    pub fn from_toml(file: &str, text: &str) -> Result<AgentConfig, Diagnostics> {
        let mut sink = Sink::new(file, text);
        let raw: Raw = sink.parse(text)?;
        let mut sock =
            |v: &Option<Spanned<String>>, field: &str, default: Option<&str>| -> Option<Option<SocketAddr>> {
                match v {
                    Some(s) => match s.get_ref().parse::<SocketAddr>() {
                        Ok(a) => Some(Some(a)),
                        Err(_) => {
                            sink.at(s.span(), field, format!("`{}` is not an ip:port socket address", s.get_ref()));
                            None
                        }
                    },
                    None => Some(default.and_then(|d| d.parse().ok())),
                }
            };
        let listen = sock(&raw.listen, "listen", Some("0.0.0.0:7468")).flatten();
        let nfs3 = sock(&raw.nfs3, "nfs3", None);
        let relay_listen = sock(&raw.relay_listen, "relay_listen", None);
        fn abs(sink: &mut Sink<'_>, v: &Option<Spanned<String>>, field: &str, default: &str) -> Option<AbsPath> {
            match v {
                Some(s) => AbsPath::parse(s.get_ref()).map_err(|m| sink.at(s.span(), field, m)).ok(),
                None => AbsPath::parse(default).ok(),
            }
        }
        let root = abs(&mut sink, &raw.root, "root", "/install");
        let state_dir = abs(&mut sink, &raw.state_dir, "state_dir", "/var/lib/hanfs-agent");
        let controller = match &raw.controller {
            Some(c) if valid_name(c.get_ref()) => Some(c.get_ref().clone()),
            Some(c) => {
                sink.at(c.span(), "controller", format!("`{}` is not a certificate DNS name", c.get_ref()));
                None
            }
            None => Some(DEFAULT_CONTROLLER.to_string()),
        };
        let dialect = match &raw.dialect {
            Some(d) => d.get_ref().parse::<Dialect>().map_err(|m| sink.at(d.span(), "dialect", m)).ok(),
            None => Some(Dialect::Linux),
        };
        let default_exports = match dialect {
            Some(Dialect::Aix) => "/etc/exports",
            _ => "/etc/exports.d/hanfs.exports",
        };
        let exports_file = abs(&mut sink, &raw.exports_file, "exports_file", default_exports);
        let statelite_prefix = raw
            .statelite_prefix
            .as_ref()
            .and_then(|s| AbsPath::parse(s.get_ref()).map_err(|m| sink.at(s.span(), "statelite_prefix", m)).ok());
        let mut statelite_roots = Vec::new();
        for (i, s) in raw.statelite_roots.iter().enumerate() {
            match AbsPath::parse(s.get_ref()) {
                Ok(p) if p.is_root() => {
                    sink.at(s.span(), format!("statelite_roots[{i}]"), "a statelite root cannot be `/`")
                }
                Ok(p) => statelite_roots.push(p),
                Err(m) => sink.at(s.span(), format!("statelite_roots[{i}]"), m),
            }
        }
        let takeover_interface = raw.takeover_interface.as_ref().and_then(|i| match interface_problem(i.get_ref()) {
            Some(m) => {
                sink.at(i.span(), "takeover_interface", m);
                None
            }
            None => Some(i.get_ref().clone()),
        });
        let takeover_allowed = raw.takeover_allowed.as_ref().map(|list| {
            if list.get_ref().is_empty() {
                sink.at(list.span(), "takeover_allowed", "an empty list allows no address: leave it out to allow any");
            }
            let mut nets = Vec::new();
            for (i, s) in list.get_ref().iter().enumerate() {
                let field = format!("takeover_allowed[{i}]");
                match s.get_ref().parse::<ipnet::IpNet>() {
                    Ok(n) if n.trunc() != n => {
                        sink.at(s.span(), field, format!("`{n}` has host bits set: the network is `{}`", n.trunc()))
                    }
                    Ok(n) => nets.push(n),
                    Err(_) => sink.at(
                        s.span(),
                        field,
                        format!("`{}` is not a network with a prefix length (10.0.1.0/24, fd00::/64)", s.get_ref()),
                    ),
                }
            }
            nets
        });
        let mut statelite_rw: Vec<StateliteRw> = Vec::new();
        for (i, rw) in raw.statelite_rw.iter().enumerate() {
            let area = match AbsPath::parse(rw.area.get_ref()) {
                Ok(a) => {
                    let within = statelite_roots.iter().any(|r| {
                        let r = r.as_str().trim_end_matches('/');
                        let a = a.as_str().trim_end_matches('/');
                        a == r || a.strip_prefix(r).is_some_and(|x| x.starts_with('/'))
                    });
                    if !within {
                        sink.at(
                            rw.area.span(),
                            format!("statelite_rw[{i}].area"),
                            format!("`{}` is not within statelite_roots", a.as_str()),
                        );
                    }
                    if statelite_rw.iter().any(|o| o.area == a) {
                        sink.at(rw.area.span(), format!("statelite_rw[{i}].area"), "this area is listed twice");
                    }
                    Some(a)
                }
                Err(m) => {
                    sink.at(rw.area.span(), format!("statelite_rw[{i}].area"), m);
                    None
                }
            };
            let listen = match rw.listen.get_ref().parse::<SocketAddr>() {
                Ok(l) => Some(l),
                Err(_) => {
                    sink.at(
                        rw.listen.span(),
                        format!("statelite_rw[{i}].listen"),
                        format!("`{}` is not an ip:port socket address", rw.listen.get_ref()),
                    );
                    None
                }
            };
            let field = |f: &str| format!("statelite_rw[{i}].{f}");
            let mut ok = true;
            let timeout_ms = match &rw.peer_timeout_ms {
                Some(t) if (1..=MAX_PEER_TIMEOUT_MS as i64).contains(t.get_ref()) => *t.get_ref() as u64,
                Some(t) => {
                    sink.at(
                        t.span(),
                        field("peer_timeout_ms"),
                        format!("{} is not in 1..={MAX_PEER_TIMEOUT_MS}", t.get_ref()),
                    );
                    ok = false;
                    DEFAULT_PEER_TIMEOUT_MS
                }
                None => DEFAULT_PEER_TIMEOUT_MS,
            };
            let peer = match (&rw.peer, &rw.peer_name) {
                (Some(p), Some(n)) => {
                    if let Some(m) = host_port_problem(p.get_ref()) {
                        sink.at(p.span(), field("peer"), m);
                        ok = false;
                    }
                    let name = cert_name(&mut sink, n, &field("peer_name"));
                    name.map(|name| RwPeer { addr: p.get_ref().clone(), name, timeout_ms })
                }
                (Some(p), None) => {
                    sink.at(p.span(), field("peer"), "needs `peer_name`, the backup SN's certificate name");
                    None
                }
                (None, Some(n)) => {
                    sink.at(n.span(), field("peer_name"), "without `peer` there is no backup to name");
                    None
                }
                (None, None) => {
                    if let Some(t) = &rw.peer_timeout_ms {
                        sink.at(t.span(), field("peer_timeout_ms"), "without `peer` there is no backup to wait for");
                    }
                    None
                }
            };
            let replica = replica_side(&mut sink, &rw.replica_listen, &rw.primary, &field);
            require_tls(
                &mut sink,
                raw.tls.is_some(),
                [(&rw.peer, "peer"), (&rw.replica_listen, "replica_listen")],
                &field,
            );
            let service_address = rw.service_address.as_ref().and_then(|a| {
                let f = field("service_address");
                let Ok(net) = a.get_ref().parse::<ipnet::IpNet>() else {
                    sink.at(a.span(), f, format!("`{}` is not an address/prefix (10.0.1.101/24)", a.get_ref()));
                    return None;
                };
                if takeover_interface.is_none() {
                    sink.at(a.span(), f, "needs `takeover_interface`: the address is claimed there, or never");
                    return None;
                }
                if let Some(allowed) = &takeover_allowed {
                    if !allowed.iter().any(|n| n.contains(&net.addr())) {
                        sink.at(
                            a.span(),
                            f,
                            format!("`{net}` is not within takeover_allowed: it could never be claimed"),
                        );
                        return None;
                    }
                }
                Some(net)
            });
            if rw.service_address.is_some() && service_address.is_none() {
                ok = false;
            }
            // Both ends on one agent (a symmetric pair): whoever holds the address serves and
            // sends, the other applies. Without an address to decide, it would never serve.
            if let (Some(p), Some(_), None) = (&rw.peer, &rw.replica_listen, &rw.service_address) {
                sink.at(
                    p.span(),
                    field("peer"),
                    "with `replica_listen` too (a symmetric pair) needs `service_address`: its holder serves and replicates to the other",
                );
                ok = false;
            }
            if let (Some(area), Some(listen), true) = (area, listen, ok) {
                statelite_rw.push(StateliteRw { area, listen, peer, replica, service_address });
            }
        }
        let statelite_kernel =
            kernel_areas(&mut sink, &raw.statelite_kernel, &statelite_roots, &statelite_rw, raw.tls.is_some());
        if let (Some(r), Some(raw_root)) = (&root, &raw.root) {
            if r.is_root() {
                sink.at(raw_root.span(), "root", "the replica root cannot be `/`");
            }
        }
        let reload = raw.reload.unwrap_or_else(|| match dialect {
            Some(Dialect::Aix) => vec!["exportfs".into(), "-a".into()],
            _ => vec!["exportfs".into(), "-ra".into()],
        });
        let tls = raw.tls;
        // A relay hands out image payloads: TLS like the control port, plain TCP only on loopback.
        if let (Some(Some(l)), Some(r)) = (relay_listen, &raw.relay_listen) {
            if tls.is_none() && !(l.ip().is_loopback() && raw.plaintext_loopback) {
                sink.at(
                    r.span(),
                    "relay_listen",
                    "a [tls] section is required unless relay_listen is a loopback address and plaintext_loopback = true",
                );
            }
        }
        if let Some(l) = listen {
            if tls.is_none() && !(l.ip().is_loopback() && raw.plaintext_loopback) {
                match &raw.listen {
                    Some(ls) => sink.at(
                        ls.span(),
                        "listen",
                        "a [tls] section is required unless listen is a loopback address and plaintext_loopback = true",
                    ),
                    None => sink.nowhere(
                        "tls",
                        "a [tls] section is required unless listen is a loopback address and plaintext_loopback = true",
                    ),
                }
            }
        }
        if let (Some(Dialect::Aix), Some(m)) = (dialect, &raw.statelite_mounts) {
            if *m.get_ref() {
                sink.at(
                    m.span(),
                    "statelite_mounts",
                    "only for Linux kernel nfsd (AIX exports no directory inside another)",
                );
            }
        }
        // Off with a prefix: the exported paths are then not the directories on disk (tests, demos).
        let statelite_mounts = raw
            .statelite_mounts
            .as_ref()
            .map(|b| *b.get_ref())
            .unwrap_or(dialect == Some(Dialect::Linux) && statelite_prefix.is_none());
        sink.finish()?;
        match (listen, root, state_dir, controller, dialect, exports_file, nfs3, relay_listen) {
            (
                Some(listen),
                Some(root),
                Some(state_dir),
                Some(controller),
                Some(dialect),
                Some(exports_file),
                Some(nfs3),
                Some(relay_listen),
            ) => Ok(AgentConfig {
                listen,
                root,
                statelite_roots,
                state_dir,
                controller,
                dialect,
                exports_file,
                reload,
                nfs3,
                relay_listen,
                tls,
                plaintext_loopback: raw.plaintext_loopback,
                statelite_prefix,
                takeover_interface,
                takeover_allowed,
                statelite_mounts,
                statelite_rw,
                statelite_kernel,
            }),
            _ => Err(Diagnostics(Vec::new())),
        }
    }
}

/// A number in `lo..=hi` with its line, `default` when absent.
fn bounded(
    sink: &mut Sink<'_>,
    v: &Option<Spanned<i64>>,
    field: String,
    lo: u64,
    hi: u64,
    default: u64,
) -> Option<u64> {
    match v {
        Some(t) if (lo as i64..=hi as i64).contains(t.get_ref()) => Some(*t.get_ref() as u64),
        Some(t) => {
            sink.at(t.span(), field, format!("{} is not in {lo}..={hi}", t.get_ref()));
            None
        }
        None => Some(default),
    }
}

fn within_roots(a: &AbsPath, roots: &[AbsPath]) -> bool {
    roots.iter().any(|r| {
        let r = r.as_str().trim_end_matches('/');
        let a = a.as_str().trim_end_matches('/');
        a == r || a.strip_prefix(r).is_some_and(|x| x.starts_with('/'))
    })
}

/// `[[statelite_kernel]]`: each value checked with its line, as `[[statelite_rw]]`'s are.
/// A certificate DNS name (`peer_name`, `primary`), else an error at its line.
fn cert_name(sink: &mut Sink<'_>, v: &Spanned<String>, field: &str) -> Option<String> {
    if valid_name(v.get_ref()) {
        Some(v.get_ref().clone())
    } else {
        sink.at(v.span(), field, format!("`{}` is not a certificate DNS name", v.get_ref()));
        None
    }
}

/// A backup's side of a replicated area: `replica_listen` and `primary`, both or neither.
fn replica_side(
    sink: &mut Sink<'_>,
    listen: &Option<Spanned<String>>,
    primary: &Option<Spanned<String>>,
    field: &dyn Fn(&str) -> String,
) -> Option<RwReplica> {
    match (listen, primary) {
        (Some(l), Some(p)) => {
            let listen = l.get_ref().parse::<SocketAddr>().ok();
            if listen.is_none() {
                sink.at(
                    l.span(),
                    field("replica_listen"),
                    format!("`{}` is not an ip:port socket address", l.get_ref()),
                );
            }
            let primary = cert_name(sink, p, &field("primary"));
            Some(RwReplica { listen: listen?, primary: primary? })
        }
        (Some(l), None) => {
            sink.at(l.span(), field("replica_listen"), "needs `primary`, the primary SN's certificate name");
            None
        }
        (None, Some(p)) => {
            sink.at(p.span(), field("primary"), "needs `replica_listen`, where the primary's stream arrives");
            None
        }
        (None, None) => None,
    }
}

/// Replication runs over the cluster's mutual TLS: each of `given` set without `[tls]` is an error.
fn require_tls<const N: usize>(
    sink: &mut Sink<'_>,
    tls: bool,
    given: [(&Option<Spanned<String>>, &str); N],
    field: &dyn Fn(&str) -> String,
) {
    if tls {
        return;
    }
    for (v, f) in given {
        if let Some(v) = v {
            sink.at(v.span(), field(f), "replication runs over the cluster's mutual TLS: a [tls] section is required");
        }
    }
}

fn kernel_areas(
    sink: &mut Sink<'_>,
    raw: &[RawKernel],
    roots: &[AbsPath],
    rw: &[StateliteRw],
    tls: bool,
) -> Vec<StateliteKernel> {
    let mut out: Vec<StateliteKernel> = Vec::new();
    for (i, k) in raw.iter().enumerate() {
        let field = |f: &str| format!("statelite_kernel[{i}].{f}");
        let mut ok = true;
        let area = match AbsPath::parse(k.area.get_ref()) {
            Ok(a) => {
                if !within_roots(&a, roots) {
                    sink.at(k.area.span(), field("area"), format!("`{}` is not within statelite_roots", a.as_str()));
                } else if out.iter().any(|o| o.area == a) {
                    sink.at(k.area.span(), field("area"), "this area is listed twice");
                } else if rw.iter().any(|o| o.area == a) {
                    sink.at(
                        k.area.span(),
                        field("area"),
                        "this area is served read-write by the agent (`[[statelite_rw]]`), not by kernel nfsd",
                    );
                }
                Some(a)
            }
            Err(m) => {
                sink.at(k.area.span(), field("area"), m);
                None
            }
        };
        let timeout_ms = bounded(
            sink,
            &k.peer_timeout_ms,
            field("peer_timeout_ms"),
            1,
            MAX_PEER_TIMEOUT_MS,
            DEFAULT_PEER_TIMEOUT_MS,
        );
        let debounce_ms = bounded(sink, &k.debounce_ms, field("debounce_ms"), 1, MAX_DEBOUNCE_MS, DEFAULT_DEBOUNCE_MS);
        let reconcile_secs =
            bounded(sink, &k.reconcile_secs, field("reconcile_secs"), 1, MAX_RECONCILE_SECS, DEFAULT_RECONCILE_SECS);
        let peer = match (&k.peer, &k.peer_name) {
            (Some(p), Some(n)) => {
                if let Some(m) = host_port_problem(p.get_ref()) {
                    sink.at(p.span(), field("peer"), m);
                    ok = false;
                }
                let name = cert_name(sink, n, &field("peer_name"));
                match (name, timeout_ms, debounce_ms, reconcile_secs) {
                    (Some(name), Some(timeout_ms), Some(debounce_ms), Some(reconcile_secs)) => {
                        Some(KernelPeer { addr: p.get_ref().clone(), name, timeout_ms, debounce_ms, reconcile_secs })
                    }
                    _ => None,
                }
            }
            (Some(p), None) => {
                sink.at(p.span(), field("peer"), "needs `peer_name`, the backup SN's certificate name");
                None
            }
            (None, Some(n)) => {
                sink.at(n.span(), field("peer_name"), "without `peer` there is no backup to name");
                None
            }
            (None, None) => {
                for (v, f) in [
                    (&k.peer_timeout_ms, "peer_timeout_ms"),
                    (&k.debounce_ms, "debounce_ms"),
                    (&k.reconcile_secs, "reconcile_secs"),
                ] {
                    if let Some(t) = v {
                        sink.at(t.span(), field(f), "without `peer` nothing is sent from here");
                    }
                }
                None
            }
        };
        let replica = replica_side(sink, &k.replica_listen, &k.primary, &field);
        if k.peer.is_none() && k.replica_listen.is_none() && k.primary.is_none() {
            sink.at(
                k.area.span(),
                field("area"),
                "needs `peer` (this SN is the primary) or `replica_listen` (its backup), or both",
            );
        }
        require_tls(sink, tls, [(&k.peer, "peer"), (&k.replica_listen, "replica_listen")], &field);
        if let (Some(area), true) = (area, ok) {
            out.push(StateliteKernel { area, peer, replica });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statelite_kernel_settings_are_checked_with_their_line() {
        let base = "listen = \"127.0.0.1:7001\"\nstatelite_roots = [\"/nodedata\"]\n[tls]\nca = \"/c\"\ncert = \"/c\"\nkey = \"/k\"\n[[statelite_kernel]]\narea = \"/nodedata\"\n";
        let a = AgentConfig::from_toml("a.toml", &format!("{base}peer = \"sn2:7471\"\npeer_name = \"sn2\"\n")).unwrap();
        let p = a.statelite_kernel[0].peer.clone().unwrap();
        assert_eq!((p.addr.as_str(), p.name.as_str()), ("sn2:7471", "sn2"));
        assert_eq!(
            (p.timeout_ms, p.debounce_ms, p.reconcile_secs),
            (DEFAULT_PEER_TIMEOUT_MS, DEFAULT_DEBOUNCE_MS, DEFAULT_RECONCILE_SECS)
        );
        let a = AgentConfig::from_toml(
            "a.toml",
            &format!("{base}peer = \"sn2:7471\"\npeer_name = \"sn2\"\ndebounce_ms = 50\nreconcile_secs = 30\nreplica_listen = \"0.0.0.0:7471\"\nprimary = \"sn3\"\n"),
        )
        .unwrap();
        let k = &a.statelite_kernel[0];
        assert_eq!(k.peer.as_ref().map(|p| (p.debounce_ms, p.reconcile_secs)), Some((50, 30)));
        assert_eq!(k.replica.as_ref().map(|r| r.primary.as_str()), Some("sn3"));
        for (extra, at) in [
            ("", "a.toml:8:8: statelite_kernel[0].area: needs `peer`"),
            ("peer = \"sn2:7471\"", "a.toml:9:8: statelite_kernel[0].peer: needs `peer_name`"),
            ("peer = \"sn2\"\npeer_name = \"sn2\"", "a.toml:9:8: statelite_kernel[0].peer:"),
            (
                "peer = \"sn2:1\"\npeer_name = \"sn2\"\ndebounce_ms = 0",
                "a.toml:11:15: statelite_kernel[0].debounce_ms:",
            ),
            (
                "peer = \"sn2:1\"\npeer_name = \"sn2\"\nreconcile_secs = 100000",
                "a.toml:11:18: statelite_kernel[0].reconcile_secs:",
            ),
            (
                "replica_listen = \"0.0.0.0:1\"\nprimary = \"sn1\"\ndebounce_ms = 50",
                "a.toml:11:15: statelite_kernel[0].debounce_ms: without `peer`",
            ),
            ("replica_listen = \"x:1\"\nprimary = \"sn1\"", "a.toml:9:18: statelite_kernel[0].replica_listen:"),
            ("primary = \"sn1\"", "a.toml:9:11: statelite_kernel[0].primary:"),
        ] {
            let e = AgentConfig::from_toml("a.toml", &format!("{base}{extra}\n")).unwrap_err().to_string();
            assert!(e.starts_with(at), "{extra}: {e}");
        }
        let outside = base.replace("area = \"/nodedata\"", "area = \"/srv\"\npeer = \"sn2:1\"\npeer_name = \"sn2\"");
        let e = AgentConfig::from_toml("a.toml", &outside).unwrap_err().to_string();
        assert!(e.starts_with("a.toml:8:8: statelite_kernel[0].area:") && e.contains("not within"), "{e}");
        let both = format!("{base}peer = \"sn2:1\"\npeer_name = \"sn2\"\n[[statelite_rw]]\narea = \"/nodedata\"\nlisten = \"0.0.0.0:2050\"\n");
        let e = AgentConfig::from_toml("a.toml", &both).unwrap_err().to_string();
        assert!(e.starts_with("a.toml:8:8: statelite_kernel[0].area:") && e.contains("read-write"), "{e}");
        let plain = "listen = \"127.0.0.1:7001\"\nplaintext_loopback = true\nstatelite_roots = [\"/nodedata\"]\n[[statelite_kernel]]\narea = \"/nodedata\"\npeer = \"127.0.0.1:7471\"\npeer_name = \"sn2\"\n";
        let e = AgentConfig::from_toml("a.toml", plain).unwrap_err().to_string();
        assert!(e.starts_with("a.toml:6:8: statelite_kernel[0].peer:") && e.contains("[tls]"), "{e}");
    }

    #[test]
    fn statelite_rw_areas_must_lie_within_statelite_roots() {
        let base = "listen = \"127.0.0.1:7001\"\nplaintext_loopback = true\nstatelite_roots = [\"/nodedata\"]\n";
        let ok = format!("{base}[[statelite_rw]]\narea = \"/nodedata\"\nlisten = \"0.0.0.0:2050\"\n");
        let a = AgentConfig::from_toml("a.toml", &ok).unwrap();
        assert_eq!(a.statelite_rw.len(), 1);
        assert_eq!(a.statelite_rw[0].area.as_str(), "/nodedata");
        assert_eq!(a.statelite_rw[0].listen.port(), 2050);
        let outside = format!("{base}[[statelite_rw]]\narea = \"/nodedatax\"\nlisten = \"0.0.0.0:2050\"\n");
        let e = AgentConfig::from_toml("a.toml", &outside).unwrap_err().to_string();
        assert!(e.contains("a.toml:5") && e.contains("statelite_rw[0].area") && e.contains("not within"), "{e}");
        let bad = format!("{base}[[statelite_rw]]\narea = \"/nodedata/x\"\nlisten = \"2050\"\n");
        let e = AgentConfig::from_toml("a.toml", &bad).unwrap_err().to_string();
        assert!(e.contains("a.toml:6") && e.contains("statelite_rw[0].listen"), "{e}");
        assert!(AgentConfig::from_toml("a.toml", base).unwrap().statelite_rw.is_empty());
    }

    #[test]
    fn statelite_rw_service_address_is_checked_with_its_line() {
        let base = "listen = \"127.0.0.1:7001\"\nplaintext_loopback = true\nstatelite_roots = [\"/nodedata\"]\n";
        let area = "[[statelite_rw]]\narea = \"/nodedata\"\nlisten = \"0.0.0.0:2051\"\n";
        let iface = "takeover_interface = \"eth0\"\ntakeover_allowed = [\"10.0.1.0/24\"]\n";
        let ok = format!("{base}{iface}{area}service_address = \"10.0.1.101/24\"\n");
        let a = AgentConfig::from_toml("a.toml", &ok).unwrap();
        assert_eq!(a.statelite_rw[0].service_address, Some("10.0.1.101/24".parse().unwrap()));
        assert_eq!(
            AgentConfig::from_toml("a.toml", &format!("{base}{area}")).unwrap().statelite_rw[0].service_address,
            None
        );
        for (cfg, want) in [
            (
                format!("{base}{iface}{area}service_address = \"10.0.1.101\"\n"),
                "a.toml:9:19: statelite_rw[0].service_address: `10.0.1.101` is not an address/prefix",
            ),
            (
                format!("{base}{area}service_address = \"10.0.1.101/24\"\n"),
                "a.toml:7:19: statelite_rw[0].service_address: needs `takeover_interface`",
            ),
            (
                format!("{base}{iface}{area}service_address = \"10.0.2.101/24\"\n"),
                "a.toml:9:19: statelite_rw[0].service_address: `10.0.2.101/24` is not within takeover_allowed",
            ),
        ] {
            let e = AgentConfig::from_toml("a.toml", &cfg).unwrap_err().to_string();
            assert!(e.contains(want), "{want}\n{e}");
        }
    }

    #[test]
    fn statelite_rw_replication_settings_are_checked_with_their_line() {
        let base = "listen = \"127.0.0.1:7001\"\nstatelite_roots = [\"/nodedata\"]\n[tls]\nca = \"/c\"\ncert = \"/c\"\nkey = \"/k\"\n[[statelite_rw]]\narea = \"/nodedata\"\nlisten = \"0.0.0.0:2050\"\n";
        let a = AgentConfig::from_toml("a.toml", &format!("{base}peer = \"sn2:7470\"\npeer_name = \"sn2\"\n")).unwrap();
        let p = a.statelite_rw[0].peer.clone().unwrap();
        assert_eq!((p.addr.as_str(), p.name.as_str(), p.timeout_ms), ("sn2:7470", "sn2", DEFAULT_PEER_TIMEOUT_MS));
        assert_eq!(a.statelite_rw[0].replica, None);
        let a =
            AgentConfig::from_toml("a.toml", &format!("{base}replica_listen = \"0.0.0.0:7470\"\nprimary = \"sn1\"\n"))
                .unwrap();
        let r = a.statelite_rw[0].replica.clone().unwrap();
        assert_eq!((r.listen.port(), r.primary.as_str()), (7470, "sn1"));
        for (extra, at) in [
            ("peer = \"sn2:7470\"", "a.toml:10:8: statelite_rw[0].peer: needs `peer_name`"),
            ("peer_name = \"sn2\"", "a.toml:10:13: statelite_rw[0].peer_name:"),
            ("peer = \"sn2\"\npeer_name = \"sn2\"", "a.toml:10:8: statelite_rw[0].peer:"),
            ("peer = \"sn2:0\"\npeer_name = \"sn2\"", "a.toml:10:8: statelite_rw[0].peer:"),
            ("peer = \"sn2:1\"\npeer_name = \"s n\"", "a.toml:11:13: statelite_rw[0].peer_name:"),
            (
                "peer = \"sn2:1\"\npeer_name = \"sn2\"\npeer_timeout_ms = 0",
                "a.toml:12:19: statelite_rw[0].peer_timeout_ms:",
            ),
            ("peer_timeout_ms = 10", "a.toml:10:19: statelite_rw[0].peer_timeout_ms:"),
            ("replica_listen = \"0.0.0.0:7470\"", "a.toml:10:18: statelite_rw[0].replica_listen: needs `primary`"),
            ("primary = \"sn1\"", "a.toml:10:11: statelite_rw[0].primary:"),
            ("replica_listen = \"x:1\"\nprimary = \"sn1\"", "a.toml:10:18: statelite_rw[0].replica_listen:"),
        ] {
            let e = AgentConfig::from_toml("a.toml", &format!("{base}{extra}\n")).unwrap_err().to_string();
            assert!(e.starts_with(at), "{extra}: {e}");
        }
        // A symmetric pair: both ends, decided by the service address; without one it is refused.
        let pair = "peer = \"sn2:7470\"\npeer_name = \"sn2\"\nreplica_listen = \"0.0.0.0:7470\"\nprimary = \"sn2\"\n";
        let e = AgentConfig::from_toml("a.toml", &format!("{base}{pair}")).unwrap_err().to_string();
        assert!(e.starts_with("a.toml:10:8: statelite_rw[0].peer:") && e.contains("needs `service_address`"), "{e}");
        let with_addr = format!("takeover_interface = \"eth0\"\n{base}{pair}service_address = \"10.0.1.101/24\"\n");
        let a = AgentConfig::from_toml("a.toml", &with_addr).unwrap();
        let rw = &a.statelite_rw[0];
        assert_eq!(rw.peer.as_ref().map(|p| p.name.as_str()), Some("sn2"));
        assert_eq!(rw.replica.as_ref().map(|r| r.primary.as_str()), Some("sn2"));
        assert_eq!(rw.service_address, Some("10.0.1.101/24".parse().unwrap()));
        let plain = "listen = \"127.0.0.1:7001\"\nplaintext_loopback = true\nstatelite_roots = [\"/nodedata\"]\n[[statelite_rw]]\narea = \"/nodedata\"\nlisten = \"0.0.0.0:2050\"\npeer = \"127.0.0.1:7470\"\npeer_name = \"sn2\"\n";
        let e = AgentConfig::from_toml("a.toml", plain).unwrap_err().to_string();
        assert!(e.starts_with("a.toml:7:8: statelite_rw[0].peer:") && e.contains("[tls]"), "{e}");
    }

    #[test]
    fn defaults_and_errors() {
        let a = AgentConfig::from_toml(
            "a.toml",
            "listen = \"127.0.0.1:7001\"\nplaintext_loopback = true\nroot = \"/srv/r\"\n",
        )
        .unwrap();
        assert_eq!(a.exports_file.as_str(), "/etc/exports.d/hanfs.exports");
        assert_eq!(a.reload, vec!["exportfs", "-ra"]);
        assert_eq!(a.controller, "mn");
        let e = AgentConfig::from_toml(
            "a.toml",
            "plaintext_loopback = true\nlisten = \"127.0.0.1:1\"\ncontroller = \"a b\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("a.toml:3:"), "{e}");
        let e = AgentConfig::from_toml("a.toml", "listen = \"0.0.0.0:7468\"\n").unwrap_err();
        assert!(e.to_string().contains("[tls]"));
        let e = AgentConfig::from_toml("a.toml", "listen = \"nope\"\n").unwrap_err();
        assert!(e.to_string().starts_with("a.toml:1:"), "{e}");
        let e = AgentConfig::from_toml("a.toml", "plaintext_loopback = true\nlisten = \"127.0.0.1:1\"\nroot = \"/\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("cannot be `/`"));
        assert!(e.to_string().starts_with("a.toml:3:8: root:"), "{e}");
        assert_eq!(a.statelite_prefix, None);
        assert!(a.statelite_mounts, "on by default for Linux");
        let base = "plaintext_loopback = true\nlisten = \"127.0.0.1:1\"\n";
        let p = AgentConfig::from_toml("a.toml", &format!("{base}statelite_prefix = \"/srv/sn1\"\n")).unwrap();
        assert!(!p.statelite_mounts, "off with a prefix: the exported paths are not the directories on disk");
        assert_eq!(p.statelite_prefix.map(|p| p.as_str().to_string()), Some("/srv/sn1".to_string()));
        let e = AgentConfig::from_toml("a.toml", &format!("{base}dialect = \"aix\"\nstatelite_mounts = true\n"))
            .unwrap_err();
        assert!(e.to_string().starts_with("a.toml:4:20: statelite_mounts:"), "{e}");
        let e = AgentConfig::from_toml("a.toml", &format!("{base}statelite_prefix = \"rel\"\n")).unwrap_err();
        assert!(e.to_string().starts_with("a.toml:3:20: statelite_prefix:"), "{e}");
    }

    #[test]
    fn relay_listen_is_checked_with_its_line() {
        let base = "plaintext_loopback = true\nlisten = \"127.0.0.1:1\"\n";
        assert_eq!(AgentConfig::from_toml("a.toml", base).unwrap().relay_listen, None);
        let a = AgentConfig::from_toml("a.toml", &format!("{base}relay_listen = \"127.0.0.1:7469\"\n")).unwrap();
        assert_eq!(a.relay_listen, Some("127.0.0.1:7469".parse().unwrap()));
        let e = AgentConfig::from_toml("a.toml", &format!("{base}relay_listen = \"x\"\n")).unwrap_err();
        assert!(e.to_string().starts_with("a.toml:3:16: relay_listen: `x` is not an ip:port"), "{e}");
        // Off loopback a relay needs TLS, like the control port.
        let e = AgentConfig::from_toml("a.toml", &format!("{base}relay_listen = \"0.0.0.0:7469\"\n")).unwrap_err();
        assert!(e.to_string().starts_with("a.toml:3:16: relay_listen:") && e.to_string().contains("[tls]"), "{e}");
    }

    #[test]
    fn takeover_settings_are_checked_with_their_line() {
        let base = "plaintext_loopback = true\nlisten = \"127.0.0.1:1\"\n";
        let a = AgentConfig::from_toml("a.toml", base).unwrap();
        assert_eq!((a.takeover_interface, a.takeover_allowed), (None, None));
        let a = AgentConfig::from_toml(
            "a.toml",
            &format!("{base}takeover_interface = \"eth1\"\ntakeover_allowed = [\"10.0.1.0/24\", \"fd00::/64\"]\n"),
        )
        .unwrap();
        assert_eq!(a.takeover_interface.as_deref(), Some("eth1"));
        let nets: Vec<String> = a.takeover_allowed.unwrap().iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.1.0/24", "fd00::/64"]);
        for (line, at) in [
            ("takeover_interface = \"eth 1\"", "a.toml:3:22: takeover_interface:"),
            ("takeover_interface = \"0123456789abcdef\"", "a.toml:3:22: takeover_interface:"),
            ("takeover_interface = \"\"", "a.toml:3:22: takeover_interface:"),
            ("takeover_allowed = [\"10.0.1.0\"]", "a.toml:3:21: takeover_allowed[0]:"),
            ("takeover_allowed = [\"10.0.1.0/24\", \"10.0.2.7/24\"]", "a.toml:3:36: takeover_allowed[1]:"),
            ("takeover_allowed = []", "a.toml:3:20: takeover_allowed:"),
        ] {
            let e = AgentConfig::from_toml("a.toml", &format!("{base}{line}\n")).unwrap_err().to_string();
            assert!(e.starts_with(at), "{line}: {e}");
        }
        let e = AgentConfig::from_toml("a.toml", &format!("{base}takeover_allowed = [\"10.0.2.7/24\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the network is `10.0.2.0/24`"), "{e}");
    }

    #[test]
    fn oversized_paths_are_refused_with_their_line() {
        // A 10 MB root (the review's case), a 256-byte component, and the limit itself.
        let base = "plaintext_loopback = true\nlisten = \"127.0.0.1:1\"\n";
        let huge = format!("/{}", "r/".repeat(5 << 20));
        let e = AgentConfig::from_toml("a.toml", &format!("{base}root = \"{huge}\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("a.toml:3:8: root:") && e.contains("limited to 4095 bytes"), "{}", &e[..200]);
        assert!(e.len() < 1000, "the message does not echo 10 MB");
        let e = AgentConfig::from_toml("a.toml", &format!("{base}state_dir = \"/{}\"\n", "s".repeat(256)))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a.toml:3:13: state_dir:") && e.contains("limited to 255"), "{e}");
        let ok = format!("/{}", vec!["d".repeat(255); 15].join("/"));
        assert!(ok.len() < 4096);
        AgentConfig::from_toml("a.toml", &format!("{base}root = \"{ok}\"\n")).unwrap();
    }
}
