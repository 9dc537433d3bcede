//! Typed errors. Every limit error names the export (path, and client on Linux) it is about.

/// An export hanfs will not write because a server would reject it or, worse, silently drop it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("unknown service node `{0}`")]
    UnknownSn(String),
    #[error(
        "export `{export}`: {count} fs locations, but mountd reads at most {max} \
         (the rest would be dropped silently); give the SN fewer backups"
    )]
    TooManyLocations { export: String, count: usize, max: usize },
    #[error("export `{export}`: {count} replicas, but AIX allows at most {max}; give the SN fewer backups")]
    TooManyReplicas { export: String, count: usize, max: usize },
    #[error(
        "export `{export}`: the {kind}= value is {len} bytes, the limit is {max} \
         (shorten the paths or use fewer backups)"
    )]
    FslocTooLong { export: String, kind: &'static str, len: usize, max: usize },
    #[error(
        "export `{export}`: the `client(options)` token would be about {len} bytes once exportfs expands \
         its defaults into etab; mountd drops tokens of {max} bytes or more, and every entry after them"
    )]
    TokenTooLong { export: String, len: usize, max: usize },
    #[error("export `{export}`: `{value}` contains a comma, which would split the export's options")]
    Comma { export: String, value: String },
    #[error("export `{export}`: location path `{value}` contains `{ch}`, which a refer=/replicas= value cannot carry")]
    FslocSyntax { export: String, value: String, ch: char },
    #[error("export `{export}`: server `{host}` is an IPv6 address and must be written in brackets")]
    UnbracketedIpv6 { export: String, host: String },
    #[error("export `{export}`: a location's root path is `/`, which clients skip")]
    RootPath { export: String },
    #[error("export `{export}`: an entry cannot carry both refer= and replicas= (the last would win)")]
    ReferAndReplicas { export: String },
    #[error("export `{export}`: {why}")]
    Unrepresentable { export: String, why: String },
    #[error("export `{export}`: AIX replica and referral lists take IP addresses, not `{host}`")]
    AixNeedsIp { export: String, host: String },
    #[error("export `{export}`: listed twice")]
    Duplicate { export: String },
}

impl ExportError {
    /// The export the error is about, if any.
    pub fn export(&self) -> Option<&str> {
        match self {
            ExportError::UnknownSn(_) => None,
            ExportError::TooManyLocations { export, .. }
            | ExportError::TooManyReplicas { export, .. }
            | ExportError::FslocTooLong { export, .. }
            | ExportError::TokenTooLong { export, .. }
            | ExportError::Comma { export, .. }
            | ExportError::FslocSyntax { export, .. }
            | ExportError::UnbracketedIpv6 { export, .. }
            | ExportError::RootPath { export }
            | ExportError::ReferAndReplicas { export }
            | ExportError::Unrepresentable { export, .. }
            | ExportError::AixNeedsIp { export, .. }
            | ExportError::Duplicate { export } => Some(export),
        }
    }
}

/// Exports text that hanfs cannot read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line in the text given.
    pub line: usize,
    pub message: String,
}

/// `/etc/exports` text whose managed block cannot be replaced safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpliceError {
    #[error(
        "unbalanced hanfs markers in /etc/exports: {begins} `BEGIN` and {ends} `END` lines \
         (lines {lines:?}); fix the file by hand, hanfs will not guess"
    )]
    Unbalanced { begins: usize, ends: usize, lines: Vec<usize> },
    #[error("the hanfs `END` marker (line {end}) comes before its `BEGIN` marker (line {begin})")]
    Reversed { begin: usize, end: usize },
    #[error("the block to splice must start with the BEGIN marker and end with the END marker line")]
    BadBlock,
    #[error(
        "/etc/exports line {line} exports `{path}` outside the hanfs block, and hanfs exports it too; \
         remove one of them"
    )]
    Conflict { line: usize, path: String },
}
