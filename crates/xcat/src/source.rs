//! Where xCAT's tables come from: a directory of `tabdump` CSV files, a directory of xCAT's SQLite
//! files, or the database `/etc/xcat/cfgloc` names (PostgreSQL or MySQL/MariaDB). One trait, three
//! back ends; the database ones use sqlx (one library for SQLite, PostgreSQL and MySQL), driven by a
//! private single-threaded tokio runtime so callers stay synchronous.

use crate::table::{self, Row, Table, Tables};
use sqlx::{Column, Connection};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything that can go wrong reading tables. Each names the file, line or connection.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{file}:{line}: {message}")]
    Csv { file: String, line: usize, message: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{file}: the required xCAT table `{table}` is missing")]
    MissingTable { file: String, table: String },
    #[error("{cfgloc}: {message}")]
    Cfgloc { cfgloc: String, message: String },
    #[error("cannot connect to {what}: {message}")]
    Connect { what: String, message: String },
    #[error("{what}: reading table `{table}`: {message}")]
    Query { what: String, table: String, message: String },
}

/// A place xCAT's tables can be read from.
pub trait TableSource {
    /// For messages and the config's header: `tabdump directory /x`, `PostgreSQL xcatdb at h:5432`.
    fn describe(&self) -> String;
    /// One table, every row (disabled ones too); `Ok(None)` when the source has no such table.
    fn read_table(&mut self, name: &str) -> Result<Option<Table>, SourceError>;
    /// A message naming where a missing table was looked for.
    fn missing(&self, name: &str) -> SourceError;
}

/// Read every table hanfs uses; a missing required table is an error, a missing optional one is
/// left out.
pub fn read_all(src: &mut dyn TableSource) -> Result<Tables, SourceError> {
    let mut out = Tables { source: src.describe(), ..Tables::default() };
    for spec in table::TABLES {
        match src.read_table(spec.name)? {
            Some(t) => {
                out.tables.insert(spec.name.to_string(), t);
            }
            None if spec.required => return Err(src.missing(spec.name)),
            None => {}
        }
    }
    Ok(out)
}

/// Required key columns present?
fn check_columns(t: &Table, file: &str) -> Result<(), SourceError> {
    if let Some(spec) = table::spec(&t.name) {
        for k in spec.keys {
            if t.col(k).is_none() {
                return Err(SourceError::File {
                    file: file.to_string(),
                    message: format!("table `{}` has no `{k}` column (columns: {})", t.name, t.columns.join(",")),
                });
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// `DIR/<table>.csv` as `tabdump <table>` writes it.
pub struct TabdumpDir {
    pub dir: PathBuf,
}

impl TabdumpDir {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.csv"))
    }
}

impl TableSource for TabdumpDir {
    fn describe(&self) -> String {
        format!("tabdump files in {}", self.dir.display())
    }

    fn read_table(&mut self, name: &str) -> Result<Option<Table>, SourceError> {
        let path = self.file(name);
        let file = path.display().to_string();
        let text = match std::fs::read(&path) {
            Ok(b) => String::from_utf8(b)
                .map_err(|e| SourceError::File { file: file.clone(), message: format!("not UTF-8: {e}") })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SourceError::File { file, message: e.to_string() }),
        };
        let t = crate::tabdump::parse(name, &file, &text).map_err(|e| SourceError::Csv {
            file: file.clone(),
            line: e.line,
            message: e.message,
        })?;
        check_columns(&t, &file)?;
        Ok(Some(t))
    }

    fn missing(&self, name: &str) -> SourceError {
        SourceError::MissingTable { file: self.file(name).display().to_string(), table: name.to_string() }
    }
}

// ---------------------------------------------------------------------------------------------

fn runtime() -> Result<tokio::runtime::Runtime, SourceError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SourceError::Connect { what: "the async runtime".into(), message: e.to_string() })
}

/// A value of any column as text; xCAT's columns are all text, but SQLite may hold a number.
fn text_of<R: sqlx::Row>(row: &R, i: usize) -> Option<String>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v;
    }
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map(|n| n.to_string());
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
        return v.map(|n| n.to_string());
    }
    row.try_get::<Option<Vec<u8>>, _>(i).ok().flatten().map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn to_table<R: sqlx::Row>(name: &str, origin: &str, rows: &[R]) -> Table
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let columns: Vec<String> = match rows.first() {
        Some(r) => r.columns().iter().map(|c| c.name().to_ascii_lowercase()).collect(),
        None => table::spec(name).map(|s| s.columns.iter().map(|c| c.to_string()).collect()).unwrap_or_default(),
    };
    let rows = rows
        .iter()
        .enumerate()
        .map(|(i, r)| Row {
            location: format!("{origin} row {}", i + 1),
            values: (0..columns.len()).map(|c| text_of(r, c)).collect(),
        })
        .collect();
    Table { name: name.to_string(), origin: origin.to_string(), columns, rows }
}

/// `DIR/<table>.sqlite`, table of the same name, opened read-only (xCAT's default database).
pub struct SqliteDir {
    pub dir: PathBuf,
}

impl SqliteDir {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sqlite"))
    }
}

impl TableSource for SqliteDir {
    fn describe(&self) -> String {
        format!("SQLite files in {}", self.dir.display())
    }

    fn read_table(&mut self, name: &str) -> Result<Option<Table>, SourceError> {
        let path = self.file(name);
        let file = path.display().to_string();
        if !path.exists() {
            return Ok(None);
        }
        let rt = runtime()?;
        let rows = rt.block_on(async {
            let opts =
                sqlx::sqlite::SqliteConnectOptions::new().filename(&path).read_only(true).create_if_missing(false);
            let mut conn = sqlx::SqliteConnection::connect_with(&opts)
                .await
                .map_err(|e| SourceError::File { file: file.clone(), message: format!("cannot open: {e}") })?;
            let exists: Option<(String,)> =
                sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1")
                    .bind(name)
                    .fetch_optional(&mut conn)
                    .await
                    .map_err(|e| SourceError::File { file: file.clone(), message: e.to_string() })?;
            if exists.is_none() {
                return Err(SourceError::File {
                    file: file.clone(),
                    message: format!("holds no table `{name}` (not an xCAT table file?)"),
                });
            }
            let rows =
                sqlx::query(&format!("SELECT * FROM \"{name}\" ORDER BY rowid")).fetch_all(&mut conn).await.map_err(
                    |e| SourceError::Query { what: file.clone(), table: name.to_string(), message: e.to_string() },
                )?;
            let _ = conn.close().await;
            Ok(rows)
        })?;
        let t = to_table(name, &file, &rows);
        check_columns(&t, &file)?;
        Ok(Some(t))
    }

    fn missing(&self, name: &str) -> SourceError {
        SourceError::MissingTable { file: self.file(name).display().to_string(), table: name.to_string() }
    }
}

// ---------------------------------------------------------------------------------------------

/// Which server `cfgloc` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Postgres,
    Mysql,
}

/// A parsed `/etc/xcat/cfgloc`: `Pg:dbname=xcatdb;host=H|user|password` or
/// `mysql:dbname=xcatdb;host=H|user|password` (Perl DBI data source, then user and password).
#[derive(Clone, PartialEq, Eq)]
pub struct Cfgloc {
    pub kind: DbKind,
    pub dbname: String,
    /// Host name, IP, or (PostgreSQL) a socket directory starting with `/`.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// MySQL unix socket (`mysql_socket=`).
    pub socket: Option<String>,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Cfgloc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cfgloc")
            .field("kind", &self.kind)
            .field("dbname", &self.dbname)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("socket", &self.socket)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Where an xCAT configuration string (`/etc/xcat/cfgloc`'s first line, or `$XCATCFG`) puts the
/// tables, read as Table.pm does (perl-xCAT/xCAT/Table.pm:816-848 `get_xcatcfg`, 925-955 `new`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XcatCfg {
    /// `SQLite:/dir`, or a value without `:` (Table.pm:844-846 prefixes `SQLite:`).
    Sqlite(PathBuf),
    Db(Cfgloc),
}

impl XcatCfg {
    /// Only the first line counts (Table.pm:823-825 reads one line and chomps it).
    pub fn parse(text: &str) -> Result<XcatCfg, String> {
        let line = text.split('\n').next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            return Err("the first line is empty (xCAT reads only the first line)".into());
        }
        if !line.contains(':') {
            return Ok(XcatCfg::Sqlite(PathBuf::from(line)));
        }
        if let Some(dir) = line.strip_prefix("SQLite:") {
            return Ok(XcatCfg::Sqlite(PathBuf::from(dir)));
        }
        Cfgloc::parse(line).map(XcatCfg::Db)
    }
}

impl Cfgloc {
    /// Parse a generic DBI line as Table.pm:948-955 does: `split(/\|/)` gives the data source,
    /// user and password (a password holding `|` is cut there, as in xCAT), an optional `dbi:`
    /// prefix is dropped. `Err` is a message without the file name.
    pub fn parse(text: &str) -> Result<Cfgloc, String> {
        let line = text.split('\n').next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            return Err("the first line is empty (xCAT reads only the first line)".into());
        }
        let mut parts = line.split('|');
        let dsn = parts.next().unwrap_or("");
        let dsn = dsn.strip_prefix("dbi:").unwrap_or(dsn);
        let user = parts.next();
        let password = parts.next().unwrap_or("").to_string();
        let (driver, params) = dsn.split_once(':').ok_or_else(|| format!("`{dsn}` is not `Pg:...` or `mysql:...`"))?;
        let kind = match driver.to_ascii_lowercase().as_str() {
            "pg" => DbKind::Postgres,
            "mysql" => DbKind::Mysql,
            "db2" => {
                return Err("DB2 is not supported by hanfs: dump the tables with xCAT's `dumpxCATdb -p DIR` and \
                            import with `hanfs xcat import --tabdump DIR`, or migrate xCAT to PostgreSQL or \
                            MySQL/MariaDB (xCAT's DB2 back end is deprecated)"
                    .into())
            }
            "csv" => return Err("xCAT's CSV back end is not supported: use `--tabdump DIR` on the CSV files".into()),
            _ => return Err(format!("unknown database driver `{driver}`; expected Pg or mysql")),
        };
        let user = user.ok_or("no `|user|password` after the data source")?.to_string();
        let mut c = Cfgloc { kind, dbname: String::new(), host: None, port: None, socket: None, user, password };
        for kv in params.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("`{kv}` is not key=value"))?;
            match k.trim().to_ascii_lowercase().as_str() {
                "dbname" | "database" | "db" => c.dbname = v.trim().to_string(),
                "host" | "hostname" => c.host = Some(v.trim().to_string()),
                "port" => c.port = Some(v.trim().parse().map_err(|_| format!("port `{v}` is not a number"))?),
                "mysql_socket" | "socket" => c.socket = Some(v.trim().to_string()),
                _ => {} // other DBI options (sslmode, ...) do not change where the data is
            }
        }
        if c.dbname.is_empty() {
            return Err("no dbname= in the data source".into());
        }
        Ok(c)
    }

    /// `PostgreSQL database xcatdb at host:port as user`.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            DbKind::Postgres => "PostgreSQL",
            DbKind::Mysql => "MySQL",
        };
        let at = match (&self.socket, &self.host, self.port) {
            (Some(s), _, _) => format!("socket {s}"),
            // libpq's (and DBD::Pg's) `host=/dir`: the socket `.s.PGSQL.<port>` in that directory.
            (None, Some(d), p) if d.starts_with('/') && self.kind == DbKind::Postgres => {
                format!("socket {}/.s.PGSQL.{}", d.trim_end_matches('/'), p.unwrap_or(PG_DEFAULT_PORT))
            }
            (None, Some(h), Some(p)) => format!("{h}:{p}"),
            (None, Some(h), None) => h.clone(),
            (None, None, Some(p)) => format!("localhost:{p}"),
            (None, None, None) => "localhost".into(),
        };
        format!("{kind} database {} at {at} as {}", self.dbname, self.user)
    }
}

enum Conn {
    Pg(sqlx::PgConnection),
    My(sqlx::MySqlConnection),
}

/// The database `cfgloc` names; connected on creation (one connection for all tables).
pub struct CfglocDb {
    pub cfgloc: Cfgloc,
    file: String,
    rt: tokio::runtime::Runtime,
    conn: Conn,
}

/// PostgreSQL's port when cfgloc names none; with `host=/dir` it names the socket file too.
const PG_DEFAULT_PORT: u16 = 5432;

/// How long a connection attempt may take before the database counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl CfglocDb {
    /// Read `file` (e.g. /etc/xcat/cfgloc) and connect.
    pub fn open(file: &Path) -> Result<CfglocDb, SourceError> {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file)
            .map_err(|e| SourceError::Cfgloc { cfgloc: name.clone(), message: format!("cannot read: {e}") })?;
        let cfg = Cfgloc::parse(&text).map_err(|m| SourceError::Cfgloc { cfgloc: name.clone(), message: m })?;
        Self::connect(cfg, name)
    }

    pub fn connect(cfg: Cfgloc, file: String) -> Result<CfglocDb, SourceError> {
        let rt = runtime()?;
        let what = format!("{} (from {file})", cfg.describe());
        let fail = |m: String| SourceError::Connect { what: what.clone(), message: m };
        let conn = rt.block_on(async {
            let fut = async {
                match cfg.kind {
                    DbKind::Postgres => {
                        let mut o = sqlx::postgres::PgConnectOptions::new_without_pgpass()
                            .database(&cfg.dbname)
                            .username(&cfg.user)
                            .password(&cfg.password);
                        match cfg.host.as_deref() {
                            Some(h) if h.starts_with('/') => o = o.socket(h),
                            Some(h) => o = o.host(h),
                            None => o = o.host("localhost"),
                        }
                        if let Some(p) = cfg.port {
                            o = o.port(p);
                        }
                        sqlx::PgConnection::connect_with(&o).await.map(Conn::Pg)
                    }
                    DbKind::Mysql => {
                        let mut o = sqlx::mysql::MySqlConnectOptions::new()
                            .database(&cfg.dbname)
                            .username(&cfg.user)
                            .password(&cfg.password);
                        if let Some(s) = &cfg.socket {
                            o = o.socket(s);
                        } else {
                            o = o.host(cfg.host.as_deref().unwrap_or("localhost"));
                        }
                        if let Some(p) = cfg.port {
                            o = o.port(p);
                        }
                        sqlx::MySqlConnection::connect_with(&o).await.map(Conn::My)
                    }
                }
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
                Ok(r) => r.map_err(|e| fail(e.to_string())),
                Err(_) => Err(fail(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))),
            }
        })?;
        Ok(CfglocDb { cfgloc: cfg, file, rt, conn })
    }
}

impl TableSource for CfglocDb {
    fn describe(&self) -> String {
        self.cfgloc.describe()
    }

    fn read_table(&mut self, name: &str) -> Result<Option<Table>, SourceError> {
        let what = format!("{} (from {})", self.cfgloc.describe(), self.file);
        let qerr =
            |e: sqlx::Error| SourceError::Query { what: what.clone(), table: name.to_string(), message: e.to_string() };
        let origin = format!("{}.{name}", self.cfgloc.dbname);
        let conn = &mut self.conn;
        let t = self.rt.block_on(async {
            match conn {
                Conn::Pg(c) => {
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT count(*) FROM information_schema.tables WHERE table_name = $1 AND table_schema = ANY (current_schemas(false))",
                    )
                    .bind(name)
                    .fetch_one(&mut *c)
                    .await
                    .map_err(qerr)?;
                    if n == 0 {
                        return Ok(None);
                    }
                    let rows = sqlx::query(&format!("SELECT * FROM \"{name}\"")).fetch_all(&mut *c).await.map_err(qerr)?;
                    Ok(Some(to_table(name, &origin, &rows)))
                }
                Conn::My(c) => {
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = DATABASE()",
                    )
                    .bind(name)
                    .fetch_one(&mut *c)
                    .await
                    .map_err(qerr)?;
                    if n == 0 {
                        return Ok(None);
                    }
                    let rows = sqlx::query(&format!("SELECT * FROM `{name}`")).fetch_all(&mut *c).await.map_err(qerr)?;
                    Ok(Some(to_table(name, &origin, &rows)))
                }
            }
        })?;
        if let Some(t) = &t {
            check_columns(t, &origin)?;
        }
        Ok(t)
    }

    fn missing(&self, name: &str) -> SourceError {
        SourceError::MissingTable {
            file: format!("{} (from {})", self.cfgloc.describe(), self.file),
            table: name.to_string(),
        }
    }
}

/// Which source a command line chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Tabdump(PathBuf),
    Sqlite(PathBuf),
    /// A cfgloc file: its first line as [`XcatCfg`] (a database, or `SQLite:/dir`).
    Cfgloc(PathBuf),
    /// The text of `$XCATCFG`, which xCAT prefers to /etc/xcat/cfgloc.
    Xcatcfg(String),
}

fn open_xcatcfg(text: &str, name: String) -> Result<Box<dyn TableSource>, SourceError> {
    match XcatCfg::parse(text).map_err(|m| SourceError::Cfgloc { cfgloc: name.clone(), message: m })? {
        XcatCfg::Sqlite(dir) => {
            dir_exists(&dir)?;
            Ok(Box::new(SqliteDir { dir }))
        }
        XcatCfg::Db(cfg) => Ok(Box::new(CfglocDb::connect(cfg, name)?)),
    }
}

impl SourceSpec {
    /// Open the source (connects for cfgloc).
    pub fn open(&self) -> Result<Box<dyn TableSource>, SourceError> {
        Ok(match self {
            SourceSpec::Tabdump(d) => {
                dir_exists(d)?;
                Box::new(TabdumpDir { dir: d.clone() })
            }
            SourceSpec::Sqlite(d) => {
                dir_exists(d)?;
                Box::new(SqliteDir { dir: d.clone() })
            }
            SourceSpec::Cfgloc(f) => {
                let name = f.display().to_string();
                let text = std::fs::read_to_string(f)
                    .map_err(|e| SourceError::Cfgloc { cfgloc: name.clone(), message: format!("cannot read: {e}") })?;
                open_xcatcfg(&text, name)?
            }
            SourceSpec::Xcatcfg(text) => open_xcatcfg(text, "$XCATCFG".into())?,
        })
    }

    /// Where xCAT keeps its tables on the MN, in Table.pm's order (Table.pm:816-848): `$XCATCFG`,
    /// else `/etc/xcat/cfgloc`, else SQLite in `/opt/xcat/cfg` when that directory exists, else
    /// SQLite in `/etc/xcat`. For `hanfs migrate` / `failover`.
    pub fn default_on_mn() -> SourceSpec {
        Self::default_from(std::env::var("XCATCFG").ok(), Path::new("/etc/xcat/cfgloc"), Path::new("/opt/xcat/cfg"))
    }

    /// [`SourceSpec::default_on_mn`] with its inputs given.
    pub fn default_from(xcatcfg: Option<String>, cfgloc: &Path, opt_cfg: &Path) -> SourceSpec {
        if let Some(v) = xcatcfg.filter(|v| !v.is_empty()) {
            return SourceSpec::Xcatcfg(v);
        }
        // Table.pm:820-828 takes cfgloc only when readable, and its chomped first line only
        // when not empty; otherwise it goes on to the SQLite directories.
        let first_line = std::fs::read_to_string(cfgloc).ok().map(|t| t.split('\n').next().unwrap_or("").to_string());
        if first_line.is_some_and(|l| !l.is_empty()) {
            SourceSpec::Cfgloc(cfgloc.to_path_buf())
        } else if opt_cfg.is_dir() {
            SourceSpec::Sqlite(opt_cfg.to_path_buf())
        } else {
            SourceSpec::Sqlite(PathBuf::from("/etc/xcat"))
        }
    }

    /// Open and read every table.
    pub fn read(&self) -> Result<Tables, SourceError> {
        read_all(self.open()?.as_mut())
    }
}

fn dir_exists(d: &Path) -> Result<(), SourceError> {
    if d.is_dir() {
        Ok(())
    } else {
        Err(SourceError::File { file: d.display().to_string(), message: "not a directory".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfgloc_forms() {
        // Table.pm:948 `split(/\|/, $xcatcfg)` into three: a `|` in the password cuts it.
        let c = Cfgloc::parse("Pg:dbname=xcatdb;host=10.0.0.1|xcatadm|se|cret\n").unwrap();
        assert_eq!(c.kind, DbKind::Postgres);
        assert_eq!(c.dbname, "xcatdb");
        assert_eq!(c.host.as_deref(), Some("10.0.0.1"));
        assert_eq!(c.user, "xcatadm");
        assert_eq!(c.password, "se");
        assert!(!format!("{c:?}").contains("cret"), "password stays out of debug output");
        let c = Cfgloc::parse("mysql:dbname=xcatdb;host=mn;port=3307|xcat|pw").unwrap();
        assert_eq!((c.kind, c.port), (DbKind::Mysql, Some(3307)));
        let c = Cfgloc::parse("Pg:dbname=xcatdb;host=/run/postgresql|u|p").unwrap();
        assert_eq!(c.describe(), "PostgreSQL database xcatdb at socket /run/postgresql/.s.PGSQL.5432 as u");
        let c = Cfgloc::parse("Pg:dbname=xcatdb;host=/run/pg/;port=5433|u|p").unwrap();
        assert_eq!(c.describe(), "PostgreSQL database xcatdb at socket /run/pg/.s.PGSQL.5433 as u");
        let c = Cfgloc::parse("mysql:dbname=x;mysql_socket=/run/m.sock|u|p").unwrap();
        assert_eq!(c.socket.as_deref(), Some("/run/m.sock"));
        assert!(Cfgloc::parse("Pg:host=h|u|p").unwrap_err().contains("dbname"));
        assert!(Cfgloc::parse("Oracle:dbname=x|u|p").unwrap_err().contains("unknown"));
        assert!(Cfgloc::parse("Pg:dbname=x").unwrap_err().contains("user"));
        // Table.pm:953-954: a `dbi:` prefix is optional.
        assert_eq!(Cfgloc::parse("dbi:Pg:dbname=x|u|p").unwrap().kind, DbKind::Postgres);
        // Only the first line (Table.pm:823-825).
        assert!(XcatCfg::parse("\nPg:dbname=x|u|p").unwrap_err().contains("first line"));
        assert_eq!(
            XcatCfg::parse("Pg:dbname=x|u|p\n# x\n").unwrap(),
            XcatCfg::Db(Cfgloc::parse("Pg:dbname=x|u|p").unwrap())
        );
        // SQLite:DIR, and a value without `:` (Table.pm:844-846).
        assert_eq!(XcatCfg::parse("SQLite:/etc/xcat\n").unwrap(), XcatCfg::Sqlite("/etc/xcat".into()));
        assert_eq!(XcatCfg::parse("/opt/xcat/cfg").unwrap(), XcatCfg::Sqlite("/opt/xcat/cfg".into()));
        // DB2: a refusal that says what to do instead.
        let e = XcatCfg::parse("DB2:xcatdb|xcatdb|pw").unwrap_err();
        assert!(e.contains("dumpxCATdb") && e.contains("--tabdump"), "{e}");
    }

    #[test]
    fn default_location_in_xcat_order() {
        let tmp = tempfile::tempdir().unwrap();
        let cfgloc = tmp.path().join("cfgloc");
        let opt = tmp.path().join("opt-cfg");
        let d = |x: Option<&str>| SourceSpec::default_from(x.map(str::to_string), &cfgloc, &opt);
        assert_eq!(d(None), SourceSpec::Sqlite("/etc/xcat".into()));
        std::fs::create_dir(&opt).unwrap();
        assert_eq!(d(None), SourceSpec::Sqlite(opt.clone()));
        std::fs::write(&cfgloc, "Pg:dbname=x|u|p\n").unwrap();
        assert_eq!(d(None), SourceSpec::Cfgloc(cfgloc.clone()));
        assert_eq!(d(Some("SQLite:/x")), SourceSpec::Xcatcfg("SQLite:/x".into()));
    }
}
