//! Diagnostics that point at the file, line and field an admin must fix.

use std::fmt;

/// One problem in a config file, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the config came from (as given by the caller; only used for display).
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// Dotted path of the field, e.g. `sn[2].backups`; empty when the error is not about one field.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// Every problem found in one config file. Validation collects them all rather than stopping at the
/// first, so an admin fixes a file in one pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets of a source text to 1-based (line, column).
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    pub(crate) fn locate(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let col = offset - self.starts[line - 1] + 1;
        (line, col)
    }
}

/// Collects diagnostics for one file.
pub(crate) struct Sink<'a> {
    pub(crate) file: &'a str,
    /// `None` for a config built in code: its spans point into no text.
    index: Option<LineIndex>,
    pub(crate) out: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a str, text: &str) -> Self {
        Sink { file, index: Some(LineIndex::new(text)), out: Vec::new() }
    }

    /// For a config that was not read from text: diagnostics carry the field, line and column 0.
    pub(crate) fn unlocated(file: &'a str) -> Self {
        Sink { file, index: None, out: Vec::new() }
    }

    /// (line, column) of a byte offset; (0, 0) when there is no text.
    pub(crate) fn locate(&self, offset: usize) -> (usize, usize) {
        self.index.as_ref().map(|i| i.locate(offset)).unwrap_or((0, 0))
    }

    pub(crate) fn at(&mut self, span: std::ops::Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let (line, column) = self.locate(span.start);
        self.out.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }

    /// A problem of the file as a whole (nothing to point at, e.g. a missing table): located at
    /// its first line, so every diagnostic still reads `file:line:column: field: message`.
    pub(crate) fn nowhere(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let (line, column) = if self.index.is_some() { (1, 1) } else { (0, 0) };
        self.out.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }

    /// A toml/serde error: toml reports the span; serde's message often names the key, and we
    /// add the dotted path of the key at that span when we can find it.
    pub(crate) fn toml(&mut self, text: &str, e: &toml::de::Error) {
        let message = e.message().trim().to_string();
        match e.span() {
            Some(span) => {
                let field = key_path_at(text, span.start);
                self.at(span, field, message)
            }
            None => self.nowhere("", message),
        }
    }

    /// Deserialises `text`; on failure the located error is the only diagnostic.
    pub(crate) fn parse<T: serde::de::DeserializeOwned>(&mut self, text: &str) -> Result<T, Diagnostics> {
        toml::from_str(text).map_err(|e| {
            self.toml(text, &e);
            Diagnostics(std::mem::take(&mut self.out))
        })
    }

    pub(crate) fn finish(self) -> Result<(), Diagnostics> {
        if self.out.is_empty() {
            Ok(())
        } else {
            Err(Diagnostics(self.out))
        }
    }
}

/// Best-effort dotted path of the TOML key whose value starts at `offset`: the enclosing
/// `[table]`/`[[array]]` header (with the array index) and the key on that line.
pub(crate) fn key_path_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut pos = 0;
    let mut key = String::new();
    for line in text.split_inclusive('\n') {
        let start = pos;
        pos += line.len();
        let t = line.trim();
        if start > offset {
            break;
        }
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
            key.clear();
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
            key.clear();
        } else if let Some((k, _)) = t.split_once('=') {
            if !t.starts_with('#') && offset < pos {
                key = k.trim().trim_matches('"').to_string();
            }
        }
    }
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines() {
        let idx = LineIndex::new("a\nbc\n\nd");
        assert_eq!(idx.locate(0), (1, 1));
        assert_eq!(idx.locate(2), (2, 1));
        assert_eq!(idx.locate(3), (2, 2));
        assert_eq!(idx.locate(5), (3, 1));
        assert_eq!(idx.locate(6), (4, 1));
    }

    #[test]
    fn key_paths() {
        let text = "[cluster]\nx = 1\n[[sn]]\nname = \"a\"\n[[sn]]\nname = 3\n";
        let off = text.rfind('3').unwrap();
        assert_eq!(key_path_at(text, off), "sn[1].name");
        assert_eq!(key_path_at(text, text.find('1').unwrap()), "cluster.x");
    }
}
