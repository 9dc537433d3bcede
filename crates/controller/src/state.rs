//! The MN's state directory (`cluster.state_dir`): the one owner of every file and lock in it.
//! Nothing else in hanfs joins a path under `state_dir`.
//!
//! Layout:
//! - `lock`: held (non-blocking flock) by a run that writes image state (`sync`, `plan`).
//! - `statelite.lock`: the placement lock (waiting flock), held by `migrate`/`failover` while they
//!   change moves, by every statelite round, and around every exports render + push, so exports
//!   are always rendered from the placement as it is at the push.
//! - `served_by`: the move overlay, `NODE SN` lines; written only through a [`PlacementLock`].
//! - `images/<name>/`: `last` (the last synced generation), the scan's hash cache, signatures.
//! - `statelite/<area>/<node>/<sn>`: the last successful sync of that backup copy.
//! - `exports/<sn>`: what hanfs last wrote to that SN's exports.
//! - `health.json`: the daemon's health report; `returns.json`: SNs given their services back by
//!   `hanfs migrate --back` (a generation counter a running daemon polls), written under the
//!   placement lock.
//! - `xcat-redirect.log`: what `--apply-xcat` ran.
//!
//! Every whole-file write goes through `tree::fsops::write_atomic` (tmp, fsync, rename, dir fsync).

use anyhow::{anyhow, bail, Context, Result};
use model::Cluster;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The state directory of one cluster.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// Held for a run that writes the MN's image state (`sync`, `plan`): two at once would remove each
/// other's payloads and race on `last`. Released when dropped (or when the process dies).
pub struct StateLock(#[allow(dead_code)] std::fs::File);

/// The placement lock: while it is held nobody else changes which SN serves which node, copies
/// statelite data or pushes exports. Moves are recorded only through it.
pub struct PlacementLock {
    #[allow(dead_code)]
    file: std::fs::File,
    dir: StateDir,
}

impl StateDir {
    pub fn of(cluster: &Cluster) -> StateDir {
        StateDir { root: PathBuf::from(cluster.state_dir().as_str()) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the state lock, or fails at once naming the directory when another run holds it.
    pub fn lock_state(&self) -> Result<StateLock> {
        match flock(&self.root, "lock", false)? {
            Some(f) => Ok(StateLock(f)),
            None => {
                bail!("another hanfs sync or plan is using {} (lock {}/lock)", self.root.display(), self.root.display())
            }
        }
    }

    /// Takes the placement lock, waiting for a running move, statelite round or exports push.
    pub fn lock_placement(&self) -> Result<PlacementLock> {
        let file = flock(&self.root, "statelite.lock", true)?
            .ok_or_else(|| anyhow!("locking {}/statelite.lock", self.root.display()))?;
        Ok(PlacementLock { file, dir: self.clone() })
    }

    /// [`Self::lock_placement`] from async code: the wait happens on a blocking thread.
    pub async fn lock_placement_async(&self) -> Result<PlacementLock> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.lock_placement()).await?
    }

    /// The move overlay file.
    pub fn moves_file(&self) -> PathBuf {
        self.root.join("served_by")
    }

    /// Reads the move overlay (`NODE SN` lines; `#` comments); absent is empty.
    pub fn load_moves(&self) -> Result<BTreeMap<String, String>> {
        let f = self.moves_file();
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", f.display())),
        };
        let mut m = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut w = line.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some(n), Some(s), None) => {
                    m.insert(n.to_string(), s.to_string());
                }
                _ => bail!("{}:{}: expected `NODE SN`", f.display(), i + 1),
            }
        }
        Ok(m)
    }

    /// `base` (the config as loaded) with the recorded moves applied, and a warning for every
    /// entry naming a node or SN no longer in the config (left out, never fatal: the config may
    /// have changed since the move). Read it under a [`PlacementLock`] when what follows depends
    /// on it staying true (an exports push, a statelite copy).
    pub fn placed(&self, base: &Cluster) -> Result<(Cluster, Vec<String>)> {
        Ok(base.with_recorded_moves(&self.load_moves()?))
    }

    /// An image's state (`last`, hash cache, signatures); image names are checked by `model`.
    pub fn image_dir(&self, image: &str) -> PathBuf {
        self.root.join("images").join(image)
    }

    /// The sync record of the copy of `<area>/<node>` on `sn`.
    pub fn statelite_record(&self, area: &str, node: &str, sn: &str) -> Result<PathBuf> {
        for n in [area, node, sn] {
            model::check_name(n).map_err(anyhow::Error::msg)?;
        }
        Ok(self.root.join("statelite").join(area).join(node).join(sn))
    }

    /// What hanfs last wrote to `sn`'s exports.
    pub fn deployed_exports_file(&self, sn: &str) -> Result<PathBuf> {
        model::check_name(sn).map_err(anyhow::Error::msg)?;
        Ok(self.root.join("exports").join(sn))
    }

    /// What hanfs last wrote to `sn`'s exports (None: never, or unreadable).
    pub fn deployed_exports(&self, sn: &str) -> Option<String> {
        std::fs::read_to_string(self.deployed_exports_file(sn).ok()?).ok()
    }

    /// Records `text` as deployed on `sn` (after the agent confirmed the write).
    pub fn record_deployed_exports(&self, sn: &str, text: &str) -> Result<()> {
        write(&self.deployed_exports_file(sn)?, text.as_bytes())
    }

    /// The daemon's health report (`hanfs status --json` shows it).
    pub fn health_file(&self) -> PathBuf {
        self.root.join("health.json")
    }

    /// Replaces the health report (atomically: a reader sees the old one or the new one).
    pub fn record_health(&self, report: &crate::monitor::HealthFile) -> Result<()> {
        write(&self.health_file(), &serde_json::to_vec_pretty(report)?)
    }

    /// The last health report a daemon wrote (None: none yet).
    pub fn load_health(&self) -> Result<Option<crate::monitor::HealthFile>> {
        let f = self.health_file();
        match std::fs::read(&f) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("reading {}", f.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", f.display())),
        }
    }

    /// SNs given their services back (`hanfs migrate --back`).
    pub fn returns_file(&self) -> PathBuf {
        self.root.join("returns.json")
    }

    /// The returns recorded so far (absent: none).
    pub fn load_returns(&self) -> Result<Returns> {
        let f = self.returns_file();
        match std::fs::read(&f) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", f.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Returns::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", f.display())),
        }
    }

    /// Where `--apply-xcat` logs the commands it ran.
    pub fn xcat_log(&self) -> PathBuf {
        self.root.join("xcat-redirect.log")
    }
}

/// `returns.json`: each SN's latest return to service, numbered by one counter that only grows, so
/// a reader (the daemon's monitor) acts on each return once: those with a generation above the
/// last it saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Returns {
    pub generation: u64,
    pub sns: BTreeMap<String, Return>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Return {
    pub generation: u64,
    /// Unix seconds.
    pub at: u64,
}

impl Returns {
    /// The returns recorded after generation `seen`.
    pub fn since(&self, seen: u64) -> impl Iterator<Item = (&str, &Return)> {
        self.sns.iter().filter(move |(_, r)| r.generation > seen).map(|(n, r)| (n.as_str(), r))
    }
}

impl PlacementLock {
    /// The state directory this lock is on.
    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// Records that `sn` was given its services back (its name checked by the model); returns the
    /// new generation.
    pub fn record_return(&self, sn: &str, at: u64) -> Result<u64> {
        model::check_name(sn).map_err(anyhow::Error::msg)?;
        let mut r = self.dir.load_returns()?;
        r.generation += 1;
        r.sns.insert(sn.to_string(), Return { generation: r.generation, at });
        write(&self.dir.returns_file(), &serde_json::to_vec_pretty(&r)?)?;
        Ok(r.generation)
    }

    /// Records moves (node -> new serving SN) in the overlay, checked first by the model against
    /// the placement recorded now (node and SN exist, the node is not there already; nothing is
    /// written when one is refused). An entry is kept relative to the config: a move back to where
    /// the config places the node drops it. Returns `base` with every recorded move applied.
    pub fn record_moves(&self, base: &Cluster, moves: &[(String, String)]) -> Result<Cluster> {
        let mut m = self.dir.load_moves()?;
        let (now, _) = base.with_recorded_moves(&m);
        now.with_moves(&moves.iter().cloned().collect())?;
        for (node, sn) in moves {
            if base.placement().configured(node) == Some(sn.as_str()) {
                m.remove(node);
            } else {
                m.insert(node.clone(), sn.clone());
            }
        }
        let mut text =
            String::from("# hanfs: nodes moved by `hanfs migrate`/`failover` (NODE SN); overrides served_by\n");
        for (n, s) in &m {
            text += &format!("{n} {s}\n");
        }
        write(&self.dir.moves_file(), text.as_bytes())?;
        Ok(base.with_recorded_moves(&m).0)
    }
}

/// Writes a whole state file (creating its directory) through the one atomic-write helper.
pub(crate) fn write(file: &Path, bytes: &[u8]) -> Result<()> {
    let dir = file.parent().ok_or_else(|| anyhow!("{}: no parent", file.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    tree::fsops::write_atomic(file, bytes).with_context(|| format!("writing {}", file.display()))
}

/// Opens `dir/name` (creating both) and takes an exclusive flock on it, waiting for it when `wait`,
/// else `None` if another holder has it. The lock lives as long as the returned file.
fn flock(dir: &Path, name: &str, wait: bool) -> Result<Option<std::fs::File>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join(name);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    use rustix::fs::FlockOperation as Op;
    let op = if wait { Op::LockExclusive } else { Op::NonBlockingLockExclusive };
    match rustix::fs::flock(&f, op) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) if !wait => return Ok(None),
        Err(e) => return Err(std::io::Error::from(e)).with_context(|| format!("locking {}", p.display())),
    }
    Ok(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(d: &Path) -> Cluster {
        let toml = format!(
            "[cluster]\nsource_root = \"{0}/src\"\nstate_dir = \"{0}/state\"\nplaintext_loopback = true\n\
             [[sn]]\nname = \"sn1\"\naddress = \"127.0.0.1\"\nagent = \"127.0.0.1:7468\"\n\
             [[sn]]\nname = \"sn2\"\naddress = \"127.0.0.2\"\nagent = \"127.0.0.1:7469\"\n\
             [[statelite]]\nname = \"nodedata\"\npath = \"/nodedata\"\nclients = \"10.1.0.0/16\"\n\
             [[node]]\nname = \"cn001\"\nsns = [\"sn1\", \"sn2\"]\n",
            d.display()
        );
        Cluster::from_toml("t.toml", &toml).unwrap()
    }

    #[test]
    fn one_state_writing_run_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::of(&cluster(d.path()));
        let held = sd.lock_state().unwrap();
        let e = sd.lock_state().err().unwrap().to_string();
        assert!(e.contains("another hanfs sync or plan"), "{e}");
        drop(held);
        sd.lock_state().unwrap();
    }

    #[test]
    fn moves_recorded_under_the_lock_are_what_the_next_reader_sees() {
        let d = tempfile::tempdir().unwrap();
        let base = cluster(d.path());
        let sd = StateDir::of(&base);
        assert_eq!(sd.placed(&base).unwrap().0.serving("cn001"), Some("sn1"));
        let after = sd.lock_placement().unwrap().record_moves(&base, &[("cn001".into(), "sn2".into())]).unwrap();
        assert_eq!(after.serving("cn001"), Some("sn2"));
        // A move the model refuses (already there, unknown SN) records nothing.
        let l = sd.lock_placement().unwrap();
        assert!(l.record_moves(&base, &[("cn001".into(), "sn2".into())]).is_err());
        assert!(l.record_moves(&base, &[("cn001".into(), "sn9".into())]).is_err());
        drop(l);
        let (now, warn) = sd.placed(&base).unwrap();
        assert_eq!(now.serving("cn001"), Some("sn2"));
        assert!(warn.is_empty());
        // Back home: the entry goes away.
        sd.lock_placement().unwrap().record_moves(&base, &[("cn001".into(), "sn1".into())]).unwrap();
        assert!(sd.load_moves().unwrap().is_empty());
        // Stale entries warn, never fail.
        std::fs::write(sd.moves_file(), "cn001 sn9\ncn404 sn2\n").unwrap();
        let (now, warn) = sd.placed(&base).unwrap();
        assert_eq!(now.serving("cn001"), Some("sn1"));
        assert_eq!(warn.len(), 2, "{warn:?}");
        std::fs::write(sd.moves_file(), "cn001\n").unwrap();
        assert!(sd.placed(&base).is_err());
    }

    #[test]
    fn each_return_gets_a_new_generation_and_a_reader_sees_only_newer_ones() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::of(&cluster(d.path()));
        assert_eq!(sd.load_returns().unwrap(), Returns::default());
        let l = sd.lock_placement().unwrap();
        assert_eq!(l.record_return("sn1", 100).unwrap(), 1);
        assert_eq!(l.record_return("sn2", 101).unwrap(), 2);
        assert_eq!(l.record_return("sn1", 102).unwrap(), 3);
        assert!(l.record_return("../sn1", 103).is_err());
        drop(l);
        let r = sd.load_returns().unwrap();
        assert_eq!(r.generation, 3);
        let newer: Vec<(&str, u64)> = r.since(1).map(|(n, x)| (n, x.at)).collect();
        assert_eq!(newer, [("sn1", 102), ("sn2", 101)]);
        assert_eq!(r.since(3).count(), 0);
    }

    #[test]
    fn names_that_would_leave_the_directory_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::of(&cluster(d.path()));
        assert!(sd.statelite_record("nodedata", "..", "sn1").is_err());
        assert!(sd.deployed_exports_file("../x").is_err());
    }

    /// cn002's home is sn2; the config has it on sn1 (`served_by`, a move xCAT made).
    fn served_by_cluster(state: &Path) -> Cluster {
        use model::config::{sp, ClusterSection, ConfigFile, NodeSection, SnSection};
        let mut section = ClusterSection::new("/install");
        section.state_dir = Some(sp(state.to_str().unwrap().to_string()));
        section.plaintext_loopback = true;
        let mut f = ConfigFile::new(section);
        f.sn.push(SnSection::new("sn1", "127.0.0.1"));
        f.sn.push(SnSection::new("sn2", "127.0.0.2"));
        f.node.push(NodeSection::new("cn001", ["sn1", "sn2"]));
        f.node.push(NodeSection::new("cn002", ["sn2", "sn1"]).served_by("sn1"));
        Cluster::from_config("t.toml", &f).unwrap()
    }

    /// Every recorded move survives a reload of the config, a move home against `served_by` too
    /// (the overlay is kept relative to the config, not to each node's first SN).
    #[test]
    fn recorded_moves_survive_a_reload() {
        let d = tempfile::tempdir().unwrap();
        let c = served_by_cluster(d.path());
        let sd = StateDir::of(&c);
        let moves = vec![("cn001".to_string(), "sn2".to_string()), ("cn002".to_string(), "sn2".to_string())];
        sd.lock_placement().unwrap().record_moves(&c, &moves).unwrap();
        let (after, warn) = sd.placed(&served_by_cluster(d.path())).unwrap();
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(after.serving("cn001"), Some("sn2"));
        assert_eq!(after.serving("cn002"), Some("sn2"), "moved home, and stays home");
        // And back: cn001 where the config has it drops its entry; only cn002's stays.
        sd.lock_placement().unwrap().record_moves(&c, &[("cn001".to_string(), "sn1".to_string())]).unwrap();
        assert_eq!(sd.load_moves().unwrap(), BTreeMap::from([("cn002".to_string(), "sn2".to_string())]));
    }
}
