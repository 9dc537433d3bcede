//! The limits that make NFS servers drop or misread exports without an error, checked before
//! anything is written. See design §2: mountd parses at most 40 locations; AIX takes at most 8
//! replicas; a `client(options)` token of 512 bytes or more (after exportfs expands the defaults
//! into etab) makes mountd drop it and every entry after it while `exportfs -ra` still exits 0;
//! options split on `,`, locations on `:`, path and server on `@`.

use crate::error::ExportError;
use crate::types::{fsloc_value, Entry, Exports, LocKind};
use model::Dialect;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// mountd's `FSLOC_MAX_LIST`.
pub const LINUX_MAX_LOCATIONS: usize = 40;
/// AIX: a replica list holds at most 8 servers.
pub const AIX_MAX_REPLICAS: usize = 8;
/// A `replicas=`/`refer=` value must be shorter than this many bytes.
pub const FSLOC_MAX: usize = 250;
/// mountd drops a `client(options)` etab token of this many bytes or more.
pub const TOKEN_MAX: usize = 512;
/// How much exportfs grows a token when it writes the defaults into etab (`sync,wdelay,hide,
/// nocrossmnt,secure,...,anonuid=65534,anongid=65534,sec=sys,...`); measured against nfs-utils'
/// etab by the exportfs test, with margin.
pub const ETAB_GROWTH: usize = 190;

/// Check one entry against every limit of its dialect.
pub fn check_entry(dialect: Dialect, e: &Entry) -> Result<(), ExportError> {
    let export = e.name();
    let unrep = |why: String| ExportError::Unrepresentable { export: export.clone(), why };
    if !e.path.starts_with('/') {
        return Err(unrep(format!("`{}` is not an absolute path", e.path)));
    }
    if e.path.contains(',') {
        return Err(ExportError::Comma { export, value: e.path.clone() });
    }
    if dialect == Dialect::Aix && e.path.chars().any(char::is_whitespace) {
        return Err(unrep(format!("AIX /etc/exports cannot carry white space in the path `{}`", e.path)));
    }
    match (dialect, &e.client) {
        (Dialect::Linux, None) => return Err(unrep("a Linux export needs a client".into())),
        (Dialect::Aix, Some(c)) => return Err(unrep(format!("AIX exports name clients in access=, not `{c}`"))),
        (Dialect::Linux, Some(c)) => {
            if c.contains(',') {
                return Err(ExportError::Comma { export, value: c.clone() });
            }
            if c.is_empty() || c.chars().any(|ch| ch.is_whitespace() || matches!(ch, '(' | ')' | '"' | '#')) {
                return Err(unrep(format!("client `{c}` cannot be written in exports(5)")));
            }
        }
        (Dialect::Aix, None) => {}
    }
    let mut fsloc_opts = 0;
    for o in &e.options {
        if o.contains(',') {
            return Err(ExportError::Comma { export, value: o.clone() });
        }
        if o.is_empty() || o.chars().any(|ch| ch.is_whitespace() || matches!(ch, '(' | ')')) {
            return Err(unrep(format!("option `{o}` cannot be written in an exports file")));
        }
        if o.starts_with("refer=") || o.starts_with("replicas=") {
            fsloc_opts += 1;
        }
    }
    if fsloc_opts > 0 {
        if fsloc_opts > 1 || e.locations.is_some() {
            return Err(ExportError::ReferAndReplicas { export });
        }
        return Err(unrep("refer=/replicas= belong in the entry's locations, not its options".into()));
    }
    if let Some(locs) = &e.locations {
        let n = locs.list.len();
        if n == 0 {
            return Err(unrep(format!("{}= with no location", locs.kind.keyword())));
        }
        match dialect {
            Dialect::Linux if n > LINUX_MAX_LOCATIONS => {
                return Err(ExportError::TooManyLocations { export, count: n, max: LINUX_MAX_LOCATIONS })
            }
            Dialect::Aix if n > AIX_MAX_REPLICAS => {
                return Err(ExportError::TooManyReplicas { export, count: n, max: AIX_MAX_REPLICAS })
            }
            _ => {}
        }
        for l in &locs.list {
            if l.path == "/" {
                return Err(ExportError::RootPath { export });
            }
            if !l.path.starts_with('/') {
                return Err(unrep(format!("location path `{}` is not absolute", l.path)));
            }
            if l.path.contains(',') {
                return Err(ExportError::Comma { export, value: l.path.clone() });
            }
            // `:` separates locations, `@` path and server; exportfs decodes `\050`/`\051` before it
            // splits the option list, so parentheses end it early ("bad option list", rc=1).
            if let Some(ch) = l.path.chars().find(|c| matches!(c, ':' | '@' | '(' | ')')) {
                return Err(ExportError::FslocSyntax { export, value: l.path.clone(), ch });
            }
            if dialect == Dialect::Aix && l.path.chars().any(char::is_whitespace) {
                return Err(unrep(format!("AIX cannot carry white space in the location path `{}`", l.path)));
            }
            check_host(dialect, &export, &l.host)?;
        }
        let value = fsloc_value(&locs.list, dialect == Dialect::Linux);
        if value.len() >= FSLOC_MAX {
            return Err(ExportError::FslocTooLong {
                export,
                kind: locs.kind.keyword(),
                len: value.len(),
                max: FSLOC_MAX,
            });
        }
        if dialect == Dialect::Aix && locs.kind == LocKind::Refer && e.options.iter().any(|o| o == "ro") {
            return Err(unrep("an AIX referral is exported rw (the referral object is created there)".into()));
        }
    }
    if dialect == Dialect::Linux {
        let len = crate::linux::token(e).len() + ETAB_GROWTH;
        if len >= TOKEN_MAX {
            return Err(ExportError::TokenTooLong { export, len, max: TOKEN_MAX });
        }
    }
    Ok(())
}

fn check_host(dialect: Dialect, export: &str, host: &str) -> Result<(), ExportError> {
    let export = export.to_string();
    for h in host.split('+') {
        if h.contains(',') {
            return Err(ExportError::Comma { export, value: host.to_string() });
        }
        if h.is_empty() || h.chars().any(|c| c.is_whitespace() || matches!(c, '@' | '(' | ')')) {
            return Err(ExportError::Unrepresentable { export, why: format!("`{host}` is not a server address") });
        }
        let bracketed = h.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
        match bracketed {
            Some(inner) => {
                if inner.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(ExportError::Unrepresentable {
                        export,
                        why: format!("`{h}` is bracketed but not an IPv6 address"),
                    });
                }
            }
            None if h.contains(':') => {
                return Err(ExportError::UnbracketedIpv6 { export, host: h.to_string() });
            }
            None => {
                if dialect == Dialect::Aix && h.parse::<IpAddr>().is_err() {
                    return Err(ExportError::AixNeedsIp { export, host: h.to_string() });
                }
            }
        }
    }
    Ok(())
}

/// Check every entry, and that no export (path and client) is listed twice.
pub fn check(exports: &Exports) -> Result<(), ExportError> {
    let mut seen = BTreeSet::new();
    for e in &exports.entries {
        check_entry(exports.dialect, e)?;
        if !seen.insert((e.path.as_str(), e.client.as_deref())) {
            return Err(ExportError::Duplicate { export: e.name() });
        }
    }
    Ok(())
}
