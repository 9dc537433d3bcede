//! The exports model shared by both dialects.

use model::Dialect;

/// Everything hanfs exports on one SN, in render order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exports {
    pub dialect: Dialect,
    pub entries: Vec<Entry>,
}

/// One export line (Linux: one `client(options)` of a path; AIX: one path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The exported directory, unescaped (`/install/a b`, not `/install/a\040b`).
    pub path: String,
    /// Linux: the client spec (`*`, `10.1.0.0/16`, `@netgroup`, a host). AIX: `None`; who may mount
    /// is the `access=` option.
    pub client: Option<String>,
    /// Every option but `replicas=`/`refer=`, in order, as written (`ro`, `fsid=7`, `vers=4`, `root=*`).
    pub options: Vec<String>,
    /// `replicas=` or `refer=`, rendered after every other option.
    pub locations: Option<Locations>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocKind {
    /// Read-only copies of the same file system (`replicas=`).
    Replicas,
    /// The file system lives elsewhere now (`refer=`).
    Refer,
}

impl LocKind {
    pub fn keyword(self) -> &'static str {
        match self {
            LocKind::Replicas => "replicas",
            LocKind::Refer => "refer",
        }
    }
}

/// An fs_locations list, in preference order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    pub kind: LocKind,
    pub list: Vec<FsLocation>,
}

/// One `rootpath@server` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsLocation {
    /// The path on that server, unescaped.
    pub path: String,
    /// The server as written in the value: an IPv4 address, an IPv6 address in brackets, or a name.
    pub host: String,
}

impl Exports {
    /// Every exported directory once, in render order: they must exist before the server reads the
    /// file (`exportfs -ra` fails on a missing one).
    pub fn paths(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in &self.entries {
            if !out.contains(&e.path.as_str()) {
                out.push(&e.path);
            }
        }
        out
    }

    /// Directories exported with `refer=`, once each. A Linux client that mounts one itself is
    /// referred whether or not it is a mount point (Linux 6.1, integration/ check (a)); nfsd switches
    /// to its export on a walk down from a parent export only at a mount point (`mount --bind D D`).
    /// AIX creates the referral object itself and wants no ordinary directory there.
    pub fn referrals(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in &self.entries {
            if e.locations.as_ref().is_some_and(|l| l.kind == LocKind::Refer) && !out.contains(&e.path.as_str()) {
                out.push(&e.path);
            }
        }
        out
    }
}

impl Entry {
    /// How diagnostics name this export: the path, and the client on Linux.
    pub fn name(&self) -> String {
        match &self.client {
            Some(c) => format!("{} {c}", self.path),
            None => self.path.clone(),
        }
    }

    /// The value of `replicas=`/`refer=` as written in the file (paths escaped when `escape` is set).
    pub fn fsloc_value(&self, escape: bool) -> Option<String> {
        self.locations.as_ref().map(|l| fsloc_value(&l.list, escape))
    }
}

pub(crate) fn fsloc_value(list: &[FsLocation], escape: bool) -> String {
    list.iter()
        .map(|l| {
            let p = if escape { escape_path(&l.path) } else { l.path.clone() };
            format!("{p}@{}", l.host)
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// Split an fs_locations value into locations: `:` separates them except inside `[...]` (IPv6).
/// Splits an export's option list into plain options and its one `refer=`/`replicas=` location
/// list. Both dialects refuse two location options on one entry: the last would silently win.
pub(crate) fn parse_options(opts: &str, unescape: bool) -> Result<(Vec<String>, Option<Locations>), String> {
    let mut options = Vec::new();
    let mut locations: Option<Locations> = None;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        let kind = if let Some(v) = o.strip_prefix("replicas=") {
            Some((LocKind::Replicas, v))
        } else {
            o.strip_prefix("refer=").map(|v| (LocKind::Refer, v))
        };
        match kind {
            Some((kind, v)) => {
                if locations.is_some() {
                    return Err("more than one refer=/replicas= on one entry (the last would win)".into());
                }
                locations = Some(Locations { kind, list: parse_fsloc(v, unescape)? });
            }
            None => options.push(o.to_string()),
        }
    }
    Ok((options, locations))
}

pub(crate) fn parse_fsloc(value: &str, unescape: bool) -> Result<Vec<FsLocation>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ':' if depth == 0 => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
        .into_iter()
        .map(|p| {
            let (path, host) =
                p.split_once('@').ok_or_else(|| format!("location `{p}` lacks `@server` (expected PATH@SERVER)"))?;
            if path.is_empty() || host.is_empty() {
                return Err(format!("location `{p}` has an empty path or server"));
            }
            let path = if unescape { unescape_path(path)? } else { path.to_string() };
            Ok(FsLocation { path, host: host.to_string() })
        })
        .collect()
}

/// exports(5) escaping: bytes that would end or confuse a token (white space, control characters,
/// `\`, `"`, `#`, `(`, `)`) become `\ooo` octal, e.g. a space is `\040`. Other bytes pass as they are.
pub fn escape_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() && (c.is_ascii_control() || matches!(c, ' ' | '\\' | '"' | '#' | '(' | ')')) {
            out.push_str(&format!("\\{:03o}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The inverse of [`escape_path`]: every `\ooo` (three octal digits) becomes that byte; any other
/// backslash stays as it is.
pub fn unescape_path(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            let byte = u8::try_from(v).map_err(|_| format!("`{s}`: escape \\{} is not a byte", &s[i + 1..i + 4]))?;
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` unescapes to invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_spaces_as_octal() {
        assert_eq!(escape_path("/install/a b"), "/install/a\\040b");
        assert_eq!(escape_path("/x\t(y)#\\\"z"), "/x\\011\\050y\\051\\043\\134\\042z");
        assert_eq!(unescape_path("/install/a\\040b").unwrap(), "/install/a b");
        assert_eq!(unescape_path("/a\\0b\\").unwrap(), "/a\\0b\\");
        assert_eq!(unescape_path("/é\\040ü").unwrap(), "/é ü");
        assert!(unescape_path("/\\777").is_err());
        for s in ["/a b/c\td", "/plain", "/ünï cödé", "/back\\slash", "/\\040literal"] {
            assert_eq!(unescape_path(&escape_path(s)).unwrap(), s);
        }
    }

    #[test]
    fn fsloc_split_respects_brackets() {
        let l = parse_fsloc("/a@10.0.0.1:/b@[fd00::1]:/c@sn3+sn4", false).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[1].host, "[fd00::1]");
        assert_eq!(l[2].host, "sn3+sn4");
        assert!(parse_fsloc("/a", false).is_err());
        assert_eq!(fsloc_value(&l, true), "/a@10.0.0.1:/b@[fd00::1]:/c@sn3+sn4");
    }
}
