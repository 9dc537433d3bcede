//! Import from a real PostgreSQL and a real MariaDB, each started by its test from Debian's packages
//! (`postgresql`, `mariadb-server`; `make deps` installs them) in a
//! temporary directory, listening on a unix socket only (no TCP port, so nothing can take or
//! collide with one), as an unprivileged user (nobody) when the tests run as root. The tables get xCAT's layout and the
//! generated cluster; the import must equal the tabdump one and the committed expected config.
//! A server that is missing or cannot start makes its test skip with the reason (`testkit::skip`),
//! which is a failure under CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use sqlx::Connection;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xcat::source::SourceError;
use xcat::SourceSpec;

// No `|`: xCAT itself cuts a cfgloc password there (Table.pm:948).
const PASSWORD: &str = "s3cr#t;pw";
const NOBODY: u32 = 65534;

fn body(toml: &str) -> String {
    toml.lines().skip_while(|l| l.starts_with('#') || l.is_empty()).collect::<Vec<_>>().join("\n")
}

fn expected() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/expected.toml");
    body(&std::fs::read_to_string(p).unwrap())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// A command run as the database user: nobody when we are root (initdb and mariadbd refuse or
/// should not run as root), else ourselves. setpriv execs, so the child's pid is the server's.
fn as_db_user(prog: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups", "--"]).arg(prog);
        c
    } else {
        Command::new(prog)
    }
}

fn give_to_db_user(p: &Path) {
    if is_root() {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}

/// Server directories live under /tmp when we are root, so that nobody can reach them whatever
/// TMPDIR says.
fn db_tmp() -> PathBuf {
    if is_root() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

fn pg_bin(name: &str) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    v.sort();
    v.pop()
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.exists())
}

/// The server binaries, or why not (the tests never install them: `make deps` does).
fn ensure_packages() -> Result<(), String> {
    if pg_bin("initdb").is_some() && which("mariadbd").is_some() && which("mariadb-install-db").is_some() {
        return Ok(());
    }
    Err("postgresql / mariadb-server are not installed (`make deps` installs them)".into())
}

/// A running server; stopped (SIGINT: PostgreSQL's fast shutdown; SIGTERM for MariaDB) on drop.
struct Server {
    child: Child,
    signal: &'static str,
    /// PostgreSQL: the socket directory (`-k`); MariaDB: the socket itself.
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args([self.signal, &self.child.id().to_string()]).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(c: &mut Command, what: &str, log: &Path) -> Result<(), String> {
    let out = c.stdin(Stdio::null()).output().map_err(|e| format!("{what}: {e}"))?;
    std::fs::write(log, [out.stdout.as_slice(), out.stderr.as_slice()].concat()).ok();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Retry until the server answers or the deadline passes.
async fn wait_for<T, F, Fut>(mut f: F, child: &mut Child, log: &Path) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let t = Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if let Ok(Some(st)) = child.try_wait() {
                    let l = std::fs::read_to_string(log).unwrap_or_default();
                    return Err(format!(
                        "the server exited ({st}): {}",
                        l.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                    ));
                }
                if t.elapsed() > Duration::from_secs(60) {
                    return Err(format!("the server did not answer within 60s: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn start_postgres() -> Result<Server, String> {
    ensure_packages()?;
    let initdb = pg_bin("initdb").ok_or("no initdb under /usr/lib/postgresql/*/bin")?;
    let postgres = pg_bin("postgres").ok_or("no postgres binary")?;
    let dir = tempfile::Builder::new().prefix("hanfs-xcat-pg").tempdir_in(db_tmp()).map_err(|e| e.to_string())?;
    give_to_db_user(dir.path());
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    give_to_db_user(&pw);
    let data = dir.path().join("data");
    let sock = dir.path().join("sock");
    std::fs::create_dir(&sock).unwrap();
    give_to_db_user(&sock);
    run(
        as_db_user(&initdb)
            .arg("-D")
            .arg(&data)
            .args(["-U", "xcatadm", "-A", "scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", pw.display())),
        "initdb",
        &dir.path().join("initdb.log"),
    )?;
    let log = dir.path().join("postgres.log");
    // No TCP (listen_addresses empty): the socket `.s.PGSQL.5432` in `sock`, the port naming it.
    let child = as_db_user(&postgres)
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(&sock)
        .args(["-c", "listen_addresses=", "-p", "5432", "-c", "fsync=off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map_err(|e| format!("postgres: {e}"))?;
    let mut s = Server { child, signal: "-INT", sock: sock.clone(), dir };
    let opts = sqlx::postgres::PgConnectOptions::new_without_pgpass()
        .socket(&sock)
        .port(5432)
        .username("xcatadm")
        .password(PASSWORD);
    rt().block_on(async {
        let o = opts.clone().database("postgres");
        let mut c = wait_for(|| sqlx::PgConnection::connect_with(&o), &mut s.child, &log).await?;
        sqlx::query("CREATE DATABASE xcatdb").execute(&mut c).await.map_err(|e| e.to_string())?;
        let mut c =
            sqlx::PgConnection::connect_with(&opts.clone().database("xcatdb")).await.map_err(|e| e.to_string())?;
        common::cluster().load_pg(&mut c).await;
        // The hand-written table sets, one database each, with the same rows as their CSV files.
        for (db, dir) in sets() {
            let mut c = sqlx::PgConnection::connect_with(&opts.clone().database("postgres"))
                .await
                .map_err(|e| e.to_string())?;
            sqlx::query(&format!("CREATE DATABASE {db}")).execute(&mut c).await.map_err(|e| e.to_string())?;
            let mut c =
                sqlx::PgConnection::connect_with(&opts.clone().database(&db)).await.map_err(|e| e.to_string())?;
            common::Fixture::from_tabdump(&dir).load_pg(&mut c).await;
        }
        Ok::<_, String>(())
    })?;
    Ok(s)
}

fn start_mariadb() -> Result<Server, String> {
    ensure_packages()?;
    let install = which("mariadb-install-db").ok_or("no mariadb-install-db")?;
    let mariadbd = which("mariadbd").ok_or("no mariadbd")?;
    let dir = tempfile::Builder::new().prefix("hanfs-xcat-my").tempdir_in(db_tmp()).map_err(|e| e.to_string())?;
    give_to_db_user(dir.path());
    let data = dir.path().join("data");
    run(
        as_db_user(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]),
        "mariadb-install-db",
        &dir.path().join("install.log"),
    )?;
    let sock = dir.path().join("mysqld.sock");
    let log = dir.path().join("mariadbd.log");
    let child = as_db_user(&mariadbd)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", sock.display()))
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .arg(format!("--log-error={}", log.display()))
        // The unix socket only: no TCP port at all.
        .args(["--skip-networking", "--skip-log-bin", "--innodb-buffer-pool-size=32M", "--skip-name-resolve"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("mariadbd: {e}"))?;
    let mut s = Server { child, signal: "-TERM", sock: sock.clone(), dir };
    rt().block_on(async {
        let root = sqlx::mysql::MySqlConnectOptions::new().socket(&sock).username("root");
        let mut c = wait_for(|| sqlx::MySqlConnection::connect_with(&root), &mut s.child, &log).await?;
        for q in [
            "CREATE DATABASE xcatdb".to_string(),
            // A unix-socket client is 'user'@'localhost'.
            format!("CREATE USER 'xcatadm'@'localhost' IDENTIFIED BY '{PASSWORD}'"),
            "GRANT ALL ON xcatdb.* TO 'xcatadm'@'localhost'".to_string(),
        ] {
            sqlx::query(&q).execute(&mut c).await.map_err(|e| format!("{q}: {e}"))?;
        }
        let mut c =
            sqlx::MySqlConnection::connect_with(&root.clone().database("xcatdb")).await.map_err(|e| e.to_string())?;
        common::cluster().load_mysql(&mut c).await;
        for (db, dir) in sets() {
            for q in [format!("CREATE DATABASE {db}"), format!("GRANT ALL ON {db}.* TO 'xcatadm'@'localhost'")] {
                sqlx::query(&q).execute(&mut c).await.map_err(|e| format!("{q}: {e}"))?;
            }
            let mut c =
                sqlx::MySqlConnection::connect_with(&root.clone().database(&db)).await.map_err(|e| e.to_string())?;
            common::Fixture::from_tabdump(&dir).load_mysql(&mut c).await;
        }
        Ok::<_, String>(())
    })?;
    Ok(s)
}

/// (database name, directory) of each table set under tests/fixtures/sets.
fn sets() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sets");
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (format!("set_{}", p.file_name().unwrap().to_string_lossy().replace('-', "_")), p))
        .collect();
    v.sort();
    v
}

/// Each table set read from the database equals its tabdump import.
fn check_sets(kind: &str, dir: &Path, line: impl Fn(&str) -> String) {
    for (db, set) in sets() {
        let want = xcat::import(&SourceSpec::Tabdump(set.clone())).unwrap();
        let f = cfgloc(dir, &format!("cfgloc-{db}"), &line(&db));
        let got = xcat::import(&SourceSpec::Cfgloc(f)).unwrap_or_else(|e| panic!("{kind} {db}: {e}"));
        assert_eq!(body(&got.toml), body(&want.toml), "{kind}: {} differs from its tabdump import", set.display());
        assert_eq!(got.import.report.len(), want.import.report.len(), "{kind} {db}");
    }
}

fn cfgloc(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).unwrap();
    p
}

fn tabdump_import() -> xcat::Imported {
    let tmp = tempfile::tempdir().unwrap();
    common::cluster().write_tabdump(tmp.path());
    xcat::import(&SourceSpec::Tabdump(tmp.path().to_path_buf())).unwrap()
}

#[test]
fn postgresql_import_matches_tabdump() {
    let t = Instant::now();
    let server = match start_postgres() {
        Ok(s) => s,
        Err(why) => {
            testkit::skip(format!("cannot start PostgreSQL: {why}"));
            return;
        }
    };
    eprintln!("PostgreSQL up and loaded in {:?}", t.elapsed());
    let d = server.dir.path();
    let sock = server.sock.display().to_string();
    // The server made the socket that the description names (`.s.PGSQL.<port>`, PostgreSQL's name).
    let file = server.sock.join(".s.PGSQL.5432");
    assert!(std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_socket()), "{}", file.display());
    let reference = tabdump_import();
    // DBD::Pg hands libpq `host=/dir` as a socket directory; the port (default 5432) names the file.
    for (name, text) in [
        ("socket-dir", format!("Pg:dbname=xcatdb;host={sock}|xcatadm|{PASSWORD}")),
        ("socket-dir-port", format!("Pg:dbname=xcatdb;host={sock}/;port=5432|xcatadm|{PASSWORD}")),
    ] {
        let f = cfgloc(d, &format!("cfgloc-{name}"), &text);
        let imp = xcat::import(&SourceSpec::Cfgloc(f)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(body(&imp.toml), expected(), "{name}: PostgreSQL import differs from expected.toml");
        assert_eq!(imp.cluster, reference.cluster);
        assert_eq!(imp.import.report.len(), reference.import.report.len());
        let want = format!("PostgreSQL database xcatdb at socket {} as xcatadm", file.display());
        assert!(imp.import.source.starts_with(&want), "{}", imp.import.source);
    }
    check_sets("PostgreSQL", d, |db| format!("Pg:dbname={db};host={sock}|xcatadm|{PASSWORD}"));
    // A wrong password is a connection error that names the database.
    let f = cfgloc(d, "cfgloc-badpw", &format!("Pg:dbname=xcatdb;host={sock}|xcatadm|wrong"));
    match xcat::import(&SourceSpec::Cfgloc(f)) {
        Err(xcat::ImportError::Source(e @ SourceError::Connect { .. })) => {
            let m = e.to_string();
            assert!(m.contains(&format!("PostgreSQL database xcatdb at socket {} as xcatadm", file.display())), "{m}");
            assert!(!m.contains("wrong"), "the password must not be printed: {m}");
        }
        other => panic!("{other:?}"),
    }
    // A redirect plan from the database equals the one from tabdump.
    let mv = [xcat::NodeMove { node: "cn020".into(), to: "sn2".into(), address: None }];
    let f = cfgloc(d, "cfgloc-r", &format!("Pg:dbname=xcatdb;host={sock}|xcatadm|{PASSWORD}"));
    let a = xcat::redirect::redirect(
        &SourceSpec::Cfgloc(f),
        &mv,
        &xcat::Templates::default(),
        &xcat::redirect::Mode::DryRun,
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    common::cluster().write_tabdump(tmp.path());
    let b = xcat::redirect::redirect(
        &SourceSpec::Tabdump(tmp.path().to_path_buf()),
        &mv,
        &xcat::Templates::default(),
        &xcat::redirect::Mode::DryRun,
    )
    .unwrap();
    assert_eq!(a.commands, b.commands);
    drop(server);
    eprintln!("postgresql test done in {:?}", t.elapsed());
}

#[test]
fn mariadb_import_matches_tabdump() {
    let t = Instant::now();
    let server = match start_mariadb() {
        Ok(s) => s,
        Err(why) => {
            testkit::skip(format!("cannot start MariaDB: {why}"));
            return;
        }
    };
    eprintln!("MariaDB up and loaded in {:?}", t.elapsed());
    let d = server.dir.path();
    let sock = server.sock.display().to_string();
    let reference = tabdump_import();
    // DBD::mysql: `mysql_socket=`, with or without `host=localhost` (which means the socket too).
    for (name, text) in [
        ("socket", format!("mysql:dbname=xcatdb;mysql_socket={sock}|xcatadm|{PASSWORD}")),
        ("localhost-socket", format!("mysql:dbname=xcatdb;host=localhost;mysql_socket={sock}|xcatadm|{PASSWORD}")),
    ] {
        let f = cfgloc(d, &format!("cfgloc-{name}"), &text);
        let imp = xcat::import(&SourceSpec::Cfgloc(f)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(body(&imp.toml), expected(), "{name}: MariaDB import differs from expected.toml");
        assert_eq!(imp.cluster, reference.cluster);
        assert_eq!(imp.import.report.len(), reference.import.report.len());
    }
    check_sets("MariaDB", d, |db| format!("mysql:dbname={db};mysql_socket={sock}|xcatadm|{PASSWORD}"));
    // A database without the required tables.
    rt().block_on(async {
        let root = sqlx::mysql::MySqlConnectOptions::new().socket(&server.sock).username("root").database("xcatdb");
        let mut c = sqlx::MySqlConnection::connect_with(&root).await.unwrap();
        sqlx::query("DROP TABLE noderes").execute(&mut c).await.unwrap();
    });
    let f = cfgloc(d, "cfgloc-missing", &format!("mysql:dbname=xcatdb;mysql_socket={sock}|xcatadm|{PASSWORD}"));
    let e = xcat::import(&SourceSpec::Cfgloc(f)).unwrap_err().to_string();
    assert!(e.contains("MySQL database xcatdb") && e.contains("`noderes` is missing"), "{e}");
    drop(server);
    eprintln!("mariadb test done in {:?}", t.elapsed());
}

#[test]
fn unreachable_database_names_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    // Bound but never listening, held for the test: connects are refused, no one else takes it.
    let (_held, port) = testkit::refusing_port();
    let none = tmp.path().join("none");
    for (text, want) in [
        (
            format!("Pg:dbname=xcatdb;host=127.0.0.1;port={port}|xcatadm|pw"),
            format!("PostgreSQL database xcatdb at 127.0.0.1:{port}"),
        ),
        (
            format!("mysql:dbname=xcatdb;host=127.0.0.1;port={port}|xcatadm|pw"),
            format!("MySQL database xcatdb at 127.0.0.1:{port}"),
        ),
        (
            format!("Pg:dbname=xcatdb;host={}|xcatadm|pw", none.display()),
            format!("PostgreSQL database xcatdb at socket {}/.s.PGSQL.5432", none.display()),
        ),
        (
            format!("mysql:dbname=xcatdb;mysql_socket={}|xcatadm|pw", none.join("m.sock").display()),
            format!("MySQL database xcatdb at socket {}", none.join("m.sock").display()),
        ),
    ] {
        let f = cfgloc(tmp.path(), "cfgloc", &text);
        let e = xcat::import(&SourceSpec::Cfgloc(f.clone())).unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("cannot connect to") && m.contains(&want), "{m}");
        assert!(m.contains(&f.display().to_string()), "names the cfgloc file: {m}");
    }
}
