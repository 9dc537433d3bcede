//! Paths that must stay beneath a root.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest path the kernel opens, its terminating NUL included.
pub const PATH_MAX: usize = 4096;

/// A relative path with only normal components: no `..`, no `.`, no leading `/`, no empty
/// components, no NUL. Joined to any root it can never name anything outside that root (symlinks
/// aside: the file-system layer opens each component without following them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct RelPath(String);

impl RelPath {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the path is empty".into());
        }
        // The kernel's limits (PATH_MAX with its NUL, NAME_MAX): a longer path can never be opened.
        if s.len() >= PATH_MAX {
            return Err(format!("the path is {} bytes long; paths are limited to {} bytes", s.len(), PATH_MAX - 1));
        }
        if s.starts_with('/') {
            return Err(format!("`{s}` is absolute; give it relative to the root"));
        }
        if s.contains('\0') {
            return Err("the path contains a NUL byte".into());
        }
        let trimmed = s.trim_end_matches('/');
        for c in trimmed.split('/') {
            match c {
                "" => return Err(format!("`{s}` has an empty component (`//`)")),
                "." | ".." => return Err(format!("`{s}` has a `{c}` component, which could escape the root")),
                c if c.len() > crate::name::MAX_NAME => {
                    return Err(format!(
                        "a component of the path is {} bytes long; components are limited to {}",
                        c.len(),
                        crate::name::MAX_NAME
                    ))
                }
                _ => {}
            }
        }
        Ok(RelPath(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.0
    }
}

impl TryFrom<String> for RelPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        RelPath::parse(&s)
    }
}

/// An absolute, normalised path (`/a/b`, no trailing slash except for `/` itself, no `.`/`..`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct AbsPath(String);

impl AbsPath {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() >= PATH_MAX {
            return Err(format!("the path is {} bytes long; paths are limited to {} bytes", s.len(), PATH_MAX - 1));
        }
        let rest = s.strip_prefix('/').ok_or_else(|| format!("`{s}` is not absolute"))?;
        if rest.trim_end_matches('/').is_empty() {
            return Ok(AbsPath("/".into()));
        }
        let rel = RelPath::parse(rest)?;
        Ok(AbsPath(format!("/{rel}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// `self/rel`, still normalised.
    pub fn join(&self, rel: &RelPath) -> AbsPath {
        if self.is_root() {
            AbsPath(format!("/{rel}"))
        } else {
            AbsPath(format!("{}/{rel}", self.0))
        }
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<AbsPath> for String {
    fn from(p: AbsPath) -> String {
        p.0
    }
}

impl TryFrom<String> for AbsPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        AbsPath::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_paths() {
        assert_eq!(RelPath::parse("a/b/").unwrap().as_str(), "a/b");
        assert!(RelPath::parse("../x").is_err());
        assert!(RelPath::parse("a/../x").is_err());
        assert!(RelPath::parse("/a").is_err());
        assert!(RelPath::parse("a//b").is_err());
        assert!(RelPath::parse("a/./b").is_err());
        assert!(RelPath::parse("").is_err());
        // Linux limits: NAME_MAX 255 per component, PATH_MAX 4096 with the NUL.
        RelPath::parse(&"c".repeat(255)).unwrap();
        assert!(RelPath::parse(&"c".repeat(256)).unwrap_err().contains("256 bytes"));
        let deep = vec!["d".repeat(200); 20].join("/");
        assert!(deep.len() < 4096);
        RelPath::parse(&deep).unwrap();
        let deeper = vec!["d".repeat(200); 21].join("/");
        assert!(RelPath::parse(&deeper).unwrap_err().contains("limited to 4095"));
        assert!(AbsPath::parse(&format!("/{}", "x/".repeat(5 << 20))).is_err());
    }

    #[test]
    fn abs_paths() {
        assert_eq!(AbsPath::parse("/install/").unwrap().as_str(), "/install");
        assert!(AbsPath::parse("/").unwrap().is_root());
        assert!(AbsPath::parse("install").is_err());
        assert!(AbsPath::parse("/a/../b").is_err());
        let root = AbsPath::parse("/").unwrap();
        assert_eq!(root.join(&RelPath::parse("x").unwrap()).as_str(), "/x");
    }
}
