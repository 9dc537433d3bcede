//! Names that become one path component somewhere (state directories, spools, statelite copies):
//! image, SN, external server, statelite area and node names. One validator for all of them, used
//! by config parsing, the xCAT import and the wire protocol, so a name accepted anywhere is safe
//! to join to a directory everywhere.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest name: one file-name component (`NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// A checked name: 1 to 255 bytes of ASCII letters, digits, `.`, `_` and `-`, not starting with
/// `.` (so never `.`, `..` or a hidden control directory such as `.hanfs`) nor with `-` (never
/// taken for an option by the commands that get it as an argument). It contains no `/` and no
/// NUL, so joined to a directory it names exactly one entry inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Name(String);

/// Why `s` is not a usable name; `Ok` when it is.
pub fn check_name(s: &str) -> Result<(), String> {
    let shown: String = s.chars().take(64).collect();
    let shown = if shown.len() < s.len() { format!("{shown}...") } else { shown };
    let shown = shown.escape_debug();
    if s.is_empty() {
        return Err("the name is empty".into());
    }
    if s.len() > MAX_NAME {
        return Err(format!("`{shown}` is {} bytes long; a name has at most {MAX_NAME}", s.len()));
    }
    if s.contains('\0') {
        return Err(format!("`{shown}` contains a NUL byte"));
    }
    if s.contains('/') {
        return Err(format!("`{shown}` contains `/`; a name is one path component"));
    }
    if s == "." || s == ".." {
        return Err(format!("`{shown}` is not a name (it names a directory itself or its parent)"));
    }
    if s.starts_with('.') {
        return Err(format!("`{shown}` starts with `.`"));
    }
    if s.starts_with('-') {
        return Err(format!("`{shown}` starts with `-` (it would be taken for an option)"));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("`{shown}` contains `{}`; use letters, digits, `.`, `_` and `-`", c.escape_debug()));
    }
    Ok(())
}

impl Name {
    pub fn parse(s: &str) -> Result<Name, String> {
        check_name(s).map(|()| Name(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        check_name(&s).map(|()| Name(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_xcat_style_names() {
        // Names as xCAT makes them (osimage names from genimage/mknimimage, node and SN names).
        for ok in ["rhels8.6-x86_64-netboot-compute", "71Bspot_res", "cn001", "sn1.cluster", "a", &"x".repeat(255)] {
            Name::parse(ok).unwrap();
        }
    }

    #[test]
    fn refuses_every_kind_of_bad_name() {
        for (bad, why) in [
            ("", "empty"),
            (".", "directory itself"),
            ("..", "directory itself"),
            ("../../victim", "`/`"),
            ("a/b", "`/`"),
            ("a\0b", "NUL"),
            ("-rf", "`-`"),
            (".hanfs", "starts with `.`"),
            ("a b", "contains ` `"),
            ("a\nb", "contains `\\n`"),
        ] {
            let e = Name::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let e = Name::parse(&"x".repeat(256)).unwrap_err();
        assert!(e.contains("256 bytes"), "{e}");
    }

    #[test]
    fn serde_checks() {
        let e: Result<Name, _> = serde_json_like("\"..\"");
        assert!(e.is_err());
    }

    fn serde_json_like(s: &str) -> Result<Name, toml::de::Error> {
        #[derive(Deserialize)]
        struct W {
            #[allow(dead_code)]
            n: Name,
        }
        toml::from_str::<W>(&format!("n = {s}")).map(|w| w.n)
    }
}
