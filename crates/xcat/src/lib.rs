//! hanfs's xCAT integration.
//!
//! - Reading: [`source`] reads xCAT's tables from `tabdump` CSV files, SQLite files or the database
//!   `/etc/xcat/cfgloc` names (PostgreSQL, MySQL/MariaDB), behind one trait ([`source::TableSource`]).
//! - Rules, pure: [`tabdump`] (the CSV format), [`rules`] (regex values, arithmetic, `$table.column`
//!   substitution), [`db`] (attribute lookup: node row, then groups), [`map`] (tables to a cluster
//!   config plus a report of what could not be mapped).
//! - Write-back: [`redirect`] plans and runs the `chdef`/`chtab` commands that repoint moved nodes;
//!   [`redirect::redirect`] is the entry point for `hanfs migrate` and `hanfs failover`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod db;
pub mod map;
pub mod redirect;
pub mod rules;
pub mod source;
pub mod tabdump;
pub mod table;

pub use map::{Import, Issue, Severity};
pub use redirect::{NodeMove, Templates};
pub use source::{SourceError, SourceSpec, TableSource};

/// Everything an import yields: the mapped config, its TOML text (validated by
/// [`model::Cluster::from_toml`]), and the report.
#[derive(Debug, Clone)]
pub struct Imported {
    pub import: Import,
    pub toml: String,
    pub cluster: model::Cluster,
}

impl Imported {
    /// The report as an administrator reads it: every error and warning, the skipped rows only up
    /// to `skipped_shown` (then one line counting the rest; `--json` has them all).
    pub fn report_lines(&self, skipped_shown: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut skipped = 0;
        for issue in &self.import.report {
            if issue.severity == Severity::Skipped {
                skipped += 1;
                if skipped > skipped_shown {
                    continue;
                }
            }
            out.push(format!("hanfs: xcat import: {issue}"));
        }
        if skipped > skipped_shown {
            out.push(format!(
                "hanfs: xcat import: ... and {} more skipped rows (--json lists them all)",
                skipped - skipped_shown
            ));
        }
        out
    }

    /// One line: what was imported from where (and where it was written).
    pub fn summary(&self, output: Option<&std::path::Path>) -> String {
        let c = &self.import.config;
        format!(
            "hanfs: xcat import: {} SNs, {} nodes, {} images, {} statelite areas from {}{}",
            c.sn.len(),
            c.node.len(),
            c.image.len(),
            c.statelite.len(),
            self.import.source,
            output.map(|p| format!(" -> {}", p.display())).unwrap_or_default()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the imported config does not serialise: {0}")]
    Toml(#[from] toml::ser::Error),
    /// The mapping produced a config the model rejects: a bug in the mapping or a case it misses.
    #[error("the imported config does not validate (please report this):\n{0}")]
    Invalid(model::Diagnostics),
}

/// Map tables already read and validate the result.
pub fn import_tables(tables: &table::Tables) -> Result<Imported, ImportError> {
    let import = map::import(tables);
    let toml = import.to_toml()?;
    let cluster = model::Cluster::from_toml("(imported config)", &toml).map_err(ImportError::Invalid)?;
    Ok(Imported { import, toml, cluster })
}

/// Read xCAT's tables from `source`, map them, validate.
pub fn import(source: &SourceSpec) -> Result<Imported, ImportError> {
    import_tables(&source.read()?)
}
