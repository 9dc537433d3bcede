//! Redirect write-back: the xCAT commands that repoint nodes moved to another SN, through xCAT's own
//! commands (`chdef`, `chtab`), never SQL. What changes follows `snmove`
//! (xCAT-server/lib/xcat/plugins/snmove.pm):
//! - `servicenode`: the new SN first, the others kept in order;
//! - `xcatmaster`: the new SN's address as the node sees it;
//! - `tftpserver`, `nfsserver`: set to the new address where they named the old xcatmaster (by name or
//!   IP) — hanfs also repoints them where they named the old SN by name;
//! - `monserver` (`sn,xcatmaster`): repointed when its first value is the old SN;
//! - `statelite.statemnt` with a literal server that is the old SN: a node row with the new address
//!   and the same directory (`chtab node=N statelite.statemnt=ADDR:/dir`, as snmove's
//!   `setAttribs({node => N})`); a `$noderes.xcatmaster` value follows the chdef by itself;
//! - AIX bakes the server IP into `statelite.table` inside the image: it must be regenerated (snmove
//!   runs dolitesetup); Linux bakes statemnt into the boot config: `nodeset` (snmove runs it).
//!
//! - `nodehm.conserver` naming the old SN: the new SN (snmove.pm:803-815), then `makeconservercf`
//!   for those nodes (snmove.pm:842-860);
//! - `nodeset <nodes> osimage=<nodetype.provmethod>` for moved Linux netboot/statelite nodes
//!   (snmove.pm:1065-1115), so the boot configuration names the new server.
//!
//! xCAT's commands are found under /opt/xcat/bin and /opt/xcat/sbin when PATH lacks them (systemd
//! units start with a PATH without them). Not covered: snmove's postscripts.
//!
//! [`plan`] is pure; [`execute`] runs or prints; [`redirect`] is the one call for `hanfs migrate` and
//! `hanfs failover`.

use crate::db::Db;
use crate::map;
use crate::rules;
use crate::source::{SourceError, SourceSpec};
use crate::table::Tables;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A node to repoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMove {
    pub node: String,
    /// The SN that serves it from now on.
    pub to: String,
    /// The new SN's address as the node sees it (the new xcatmaster). `None`: the address the
    /// import maps for that SN (the xcatmaster its own nodes use).
    pub address: Option<String>,
}

/// Command templates. `{node}` (a comma-separated node list for chdef), `{statemnt}`, `{sn}` and
/// `{old_sn}` are substituted in each argument; an argument that is exactly `{attrs}` becomes one
/// `attr=value` argument per changed attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Templates {
    pub chdef: Vec<String>,
    pub chtab: Vec<String>,
    /// `{node}`: the comma-separated nodes whose console server moved.
    pub makeconservercf: Vec<String>,
    /// `{node}`, `{osimage}`: moved Linux nodes, per osimage.
    pub nodeset: Vec<String>,
}

impl Default for Templates {
    fn default() -> Self {
        Templates {
            chdef: ["chdef", "-t", "node", "-o", "{node}", "{attrs}"].map(String::from).to_vec(),
            chtab: ["chtab", "node={node}", "statelite.statemnt={statemnt}"].map(String::from).to_vec(),
            makeconservercf: ["makeconservercf", "{node}"].map(String::from).to_vec(),
            nodeset: ["nodeset", "{node}", "osimage={osimage}"].map(String::from).to_vec(),
        }
    }
}

impl Templates {
    /// Read templates from a TOML file (`chdef = [...]`, `chtab = [...]`; either may be left out).
    pub fn from_toml(file: &str, text: &str) -> Result<Templates, String> {
        let t: Templates = toml::from_str(text).map_err(|e| format!("{file}: {e}"))?;
        if t.chdef.is_empty() || t.chtab.is_empty() || t.makeconservercf.is_empty() || t.nodeset.is_empty() {
            return Err(format!("{file}: a command template is empty"));
        }
        Ok(t)
    }

    /// Templates from the TOML file `path`, or xCAT's own commands when none is given.
    pub fn load(path: Option<&Path>) -> Result<Templates, String> {
        let Some(f) = path else { return Ok(Templates::default()) };
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("{}: cannot read the templates: {e}", f.display()))?;
        Templates::from_toml(&f.display().to_string(), &text)
    }
}

/// One attribute a node gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub table: String,
    pub attr: String,
    pub old: Option<String>,
    pub new: String,
}

/// What changes for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePlan {
    pub node: String,
    pub old_sn: String,
    pub new_sn: String,
    /// chdef attributes (noderes), in a fixed order.
    pub chdef: Vec<Change>,
    /// The new statelite.statemnt, when its server was the old SN written literally.
    pub statemnt: Option<Change>,
    /// What the admin must know or do that no command here does.
    pub notes: Vec<String>,
    /// nodehm.conserver moved: `makeconservercf` must run for this node.
    pub conserver: bool,
    /// A Linux netboot/statelite node's osimage: `nodeset` must run for it.
    pub nodeset: Option<String>,
}

/// The plan for a set of moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub nodes: Vec<NodePlan>,
}

/// A command to run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Command {
    pub argv: Vec<String>,
    pub why: String,
    /// The xCAT commands that take it back once it ran (never run by hanfs: printed when a later
    /// command fails): the old attribute values per node, the old `statemnt` (or deleting the node
    /// row that was added), and `makeconservercf`/`nodeset` again once the tables are back.
    pub undo: Vec<Vec<String>>,
}

impl Command {
    /// The command as a shell line an administrator can paste.
    pub fn shell_line(&self) -> String {
        shell_words(&self.argv)
    }
}

/// `argv` as a shell line.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

/// `s` quoted for a POSIX shell (left as is when it needs no quoting).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{0}")]
    Input(String),
    #[error("{log}: cannot record what ran: {message}")]
    Log { log: String, message: String },
}

/// Work out what changes, from the tables as xCAT reads them. Pure.
pub fn plan(tables: &Tables, moves: &[NodeMove]) -> Result<Plan, RedirectError> {
    let db = Db::new(tables);
    let imported = map::import(tables);
    let attr = |table: &str, node: &str, col: &str| -> Result<Option<String>, RedirectError> {
        db.attr(table, node, col)
            .map_err(|e| RedirectError::Input(format!("{table}.{col} of {node} ({}): {}", e.found.location, e.error)))
    };
    let hosts_ip = |name: &str| -> Option<String> {
        let v = if db.is_node(name) {
            db.attr("hosts", name, "ip").ok().flatten()
        } else {
            let t = db.table("hosts")?;
            t.get(db.row("hosts", name)?, "ip").and_then(|v| rules::trans_regex(name, v).ok().flatten())
        };
        v.filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
    };
    let aix_images = map::aix_images(tables);
    let mut out = Vec::new();
    for mv in moves {
        let node = mv.node.as_str();
        if !db.is_node(node) {
            return Err(RedirectError::Input(format!("node `{node}` is not in nodelist (or its row is disabled)")));
        }
        let list: Vec<String> = attr("noderes", node, "servicenode")?
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let Some(old_sn) = list.first().cloned() else {
            return Err(RedirectError::Input(format!("node `{node}` has no noderes.servicenode: nothing to repoint")));
        };
        let sn_cfg = imported.config.sn.iter().find(|s| *s.name.get_ref() == mv.to);
        // The new SN's interface in this node's network first (snmove.pm:394-422), then the SN's
        // address as most of its nodes see it.
        let facing = || map::sn_interface_for(tables, node, &mv.to, &map::system_resolver);
        let mut fallback = None;
        let new_xm = match (&mv.address, sn_cfg) {
            (Some(a), _) => a.clone(),
            (None, Some(s)) => facing().unwrap_or_else(|| {
                let a = s.address.get_ref().clone();
                fallback = Some(format!(
                    "no interface of {} is in {node}'s network (networks, hosts.ip, hosts.otherinterfaces): snmove would stop here \
                     (snmove.pm:424-430); xcatmaster {a} is {}'s address as its own nodes see it (give the address to choose another)",
                    mv.to, mv.to
                ));
                a
            }),
            (None, None) => {
                return Err(RedirectError::Input(format!(
                    "`{}` is not a service node in xCAT's tables; give its address explicitly",
                    mv.to
                )))
            }
        };
        let mut chdef: Vec<Change> = Vec::new();
        let mut notes: Vec<String> = fallback.into_iter().collect();
        let mut statemnt: Option<Change> = None;
        let mut change = |attr: &str, old: Option<String>, new: String| {
            if old.as_deref() != Some(new.as_str()) {
                chdef.push(Change { table: "noderes".into(), attr: attr.into(), old, new });
            }
        };
        // servicenode: the new SN first, the rest in order (snmove: grep out, unshift).
        let mut new_list = vec![mv.to.clone()];
        new_list.extend(list.iter().filter(|s| **s != mv.to).cloned());
        change("servicenode", Some(list.join(",")), new_list.join(","));
        let old_xm = attr("noderes", node, "xcatmaster")?;
        change("xcatmaster", old_xm.clone(), new_xm.clone());
        // What counts as "the old SN": the old xcatmaster and its IP (snmove), its name and address.
        let mut old_names: Vec<String> = vec![old_sn.clone()];
        if let Some(x) = &old_xm {
            old_names.push(x.clone());
            if let Some(ip) = hosts_ip(x) {
                old_names.push(ip);
            }
        }
        if let Some(s) = imported.config.sn.iter().find(|s| *s.name.get_ref() == old_sn) {
            old_names.push(s.address.get_ref().clone());
        }
        if let Some(ip) = hosts_ip(&old_sn) {
            old_names.push(ip);
        }
        let names_old = |v: &str| old_names.iter().any(|o| o == v);
        for a in ["tftpserver", "nfsserver"] {
            if let Some(v) = attr("noderes", node, a)? {
                if names_old(&v) {
                    change(a, Some(v), new_xm.clone());
                } else {
                    notes.push(format!("{a} `{v}` does not name the old SN {old_sn}: left as is"));
                }
            }
        }
        if let Some(mon) = attr("noderes", node, "monserver")? {
            let parts: Vec<&str> = mon.split(',').collect();
            if parts.len() >= 2 && parts[0] == old_sn {
                change("monserver", Some(mon.clone()), format!("{},{new_xm}", mv.to));
            }
        }
        // nodehm.conserver: snmove sets it to the new SN where it named the old one (snmove.pm:803-815).
        let mut conserver = false;
        if let Some(cs) = attr("nodehm", node, "conserver")? {
            if names_old(&cs) {
                chdef.push(Change {
                    table: "nodehm".into(),
                    attr: "conserver".into(),
                    old: Some(cs),
                    new: mv.to.clone(),
                });
                conserver = true;
            }
        }
        // The node's osimage is nodetype.provmethod (snmove.pm:1812-1836); AIX by nodetype.os or a
        // NIM image.
        let provmethod = attr("nodetype", node, "provmethod")?;
        let os_aix = attr("nodetype", node, "os")?.is_some_and(|o| o.to_ascii_lowercase().starts_with("aix"));
        let is_aix = provmethod
            .clone()
            .filter(|i| os_aix || aix_images.contains(i))
            .or_else(|| os_aix.then(|| "(its NIM image)".to_string()));
        let img_prov = provmethod.as_deref().and_then(|i| {
            let t = tables.get("osimage")?;
            t.enabled_rows().find(|r| t.get(r, "imagename") == Some(i)).and_then(|r| t.get(r, "provmethod"))
        });
        let nodeset = match (&is_aix, &provmethod) {
            (None, Some(p)) if matches!(img_prov, Some("netboot" | "statelite")) => Some(p.clone()),
            _ => None,
        };
        if let Some(f) = db.raw("statelite", node, "statemnt") {
            let value = rules::trans_regex(node, &f.raw)
                .map_err(|e| RedirectError::Input(format!("statelite.statemnt of {node} ({}): {e}", f.location)))?;
            if let Some(value) = value {
                let (server, dir) = rules::split_server_dir(&value);
                if value.contains('$') {
                    let follows = server.contains("$noderes.xcatmaster") || server.contains("$noderes.servicenode");
                    notes.push(if follows {
                        format!("statemnt `{value}` ({}) follows xcatmaster: no table change", f.location)
                    } else {
                        format!("statemnt `{value}` ({}) uses variables that do not name the SN: check it", f.location)
                    });
                } else if names_old(&server) {
                    statemnt = Some(Change {
                        table: "statelite".into(),
                        attr: "statemnt".into(),
                        old: Some(value.clone()),
                        new: format!("{new_xm}:{dir}"),
                    });
                } else if !server.is_empty() {
                    notes
                        .push(format!("statemnt `{value}` ({}) is not on the old SN {old_sn}: left as is", f.location));
                }
                match &is_aix {
                    Some(img) => notes.push(format!(
                        "AIX: statelite.table in the shared_root of image {img} holds the old server's IP for {node}: \
                         regenerate it (snmove runs dolitesetup; or `mkdsklsnode -f -i {img} {node}`) before the node reboots"
                    )),
                    None if nodeset.is_some() => {}
                    None => notes.push(format!(
                        "Linux: the boot configuration carries statemnt: run `nodeset {node} osimage=<its image>` before the node reboots (snmove does); nodetype.provmethod names no diskless osimage"
                    )),
                }
            }
        }
        out.push(NodePlan {
            node: node.to_string(),
            old_sn,
            new_sn: mv.to.clone(),
            chdef,
            statemnt,
            notes,
            conserver,
            nodeset,
        });
    }
    Ok(Plan { nodes: out })
}

fn fill(arg: &str, vars: &[(&str, &str)]) -> String {
    let mut s = arg.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

impl Plan {
    /// The commands, in order: one chdef per set of nodes with identical changes, then the chtabs.
    pub fn commands(&self, t: &Templates) -> Vec<Command> {
        let mut groups: BTreeMap<Vec<(String, String)>, Vec<&NodePlan>> = BTreeMap::new();
        let mut order: Vec<Vec<(String, String)>> = Vec::new();
        for n in &self.nodes {
            if n.chdef.is_empty() {
                continue;
            }
            let key: Vec<(String, String)> = n.chdef.iter().map(|c| (c.attr.clone(), c.new.clone())).collect();
            if !groups.contains_key(&key) {
                order.push(key.clone());
            }
            groups.entry(key).or_default().push(n);
        }
        let mut out = Vec::new();
        for key in order {
            let nodes = &groups[&key];
            let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
            let list = names.join(",");
            let (sn, old) = (nodes[0].new_sn.as_str(), nodes[0].old_sn.as_str());
            let chdef = |node: &str, attrs: Vec<String>| {
                let mut argv = Vec::new();
                for a in &t.chdef {
                    if a == "{attrs}" {
                        argv.extend(attrs.iter().cloned());
                    } else {
                        argv.push(fill(a, &[("node", node), ("sn", sn), ("old_sn", old)]));
                    }
                }
                argv
            };
            let argv = chdef(&list, key.iter().map(|(k, v)| format!("{k}={v}")).collect());
            // Old values differ per node (the group shares only the new ones); unset was unset.
            let undo = nodes
                .iter()
                .map(|n| {
                    chdef(
                        &n.node,
                        n.chdef.iter().map(|c| format!("{}={}", c.attr, c.old.as_deref().unwrap_or(""))).collect(),
                    )
                })
                .collect();
            out.push(Command { argv, why: format!("repoint {list} from {old} to {sn}"), undo });
        }
        for n in &self.nodes {
            if let Some(c) = &n.statemnt {
                let chtab = |statemnt: &str| -> Vec<String> {
                    t.chtab
                        .iter()
                        .map(|a| {
                            fill(
                                a,
                                &[("node", &n.node), ("statemnt", statemnt), ("sn", &n.new_sn), ("old_sn", &n.old_sn)],
                            )
                        })
                        .collect()
                };
                let argv = chtab(&c.new);
                // No old value: the node row is new (the old one came from a group row), so it goes.
                let undo = vec![match &c.old {
                    Some(old) => chtab(old),
                    None => ["chtab", "-d", &format!("node={}", n.node), "statelite"].map(String::from).to_vec(),
                }];
                out.push(Command {
                    argv,
                    undo,
                    why: format!(
                        "{}'s persistent data now on {} (was `{}`)",
                        n.node,
                        n.new_sn,
                        c.old.as_deref().unwrap_or("")
                    ),
                });
            }
        }
        // After the tables: the console server config, then the boot configuration (snmove's order).
        let cons: Vec<&str> = self.nodes.iter().filter(|n| n.conserver).map(|n| n.node.as_str()).collect();
        if !cons.is_empty() {
            let list = cons.join(",");
            let argv: Vec<String> = t.makeconservercf.iter().map(|a| fill(a, &[("node", &list)])).collect();
            let undo = vec![argv.clone()];
            out.push(Command { argv, why: format!("console server of {list} moved"), undo });
        }
        let mut by_image: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for n in &self.nodes {
            if let Some(i) = &n.nodeset {
                by_image.entry(i.as_str()).or_default().push(n.node.as_str());
            }
        }
        for (img, nodes) in by_image {
            let list = nodes.join(",");
            let argv: Vec<String> = t.nodeset.iter().map(|a| fill(a, &[("node", &list), ("osimage", img)])).collect();
            let undo = vec![argv.clone()];
            out.push(Command { argv, why: format!("boot configuration of {list} names the new server"), undo });
        }
        out
    }

    pub fn notes(&self) -> Vec<String> {
        self.nodes.iter().flat_map(|n| n.notes.iter().cloned()).collect()
    }
}

/// Print or run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Change nothing; the outcome lists the commands.
    DryRun,
    /// Run each command, stop at the first failure, and append what ran to this log file.
    Apply { log: PathBuf },
}

/// A command that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ran {
    pub argv: Vec<String>,
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Where one command stands after [`execute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Dry run: printed only.
    ToRun,
    /// Ran and exited 0.
    Done,
    /// Ran and failed (or could not be started): the run stopped here.
    Failed,
    /// Not run: an earlier command failed.
    NotRun,
}

/// What [`redirect`] / [`execute`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub applied: bool,
    pub plan: Plan,
    pub commands: Vec<Command>,
    pub notes: Vec<String>,
    pub ran: Vec<Ran>,
    /// One per command, in order: what became of it.
    pub states: Vec<State>,
    /// The failure that stopped the run (`argv`, how it ended, its stderr), if one did.
    pub failed: Option<Failure>,
}

/// The command that stopped an applied redirect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub argv: Vec<String>,
    pub status: String,
    pub stderr: String,
    pub log: String,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn log_line(log: &Path, v: &serde_json::Value) -> Result<(), RedirectError> {
    let err = |e: std::io::Error| RedirectError::Log { log: log.display().to_string(), message: e.to_string() };
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(err)?;
    writeln!(f, "{v}").map_err(err)?;
    f.sync_data().map_err(err)
}

/// A bare command name that PATH does not hold, but /opt/xcat/bin or /opt/xcat/sbin does, is run
/// from there (xCAT installs its commands there; a systemd unit's PATH lacks them).
pub fn xcat_program(prog: &str, path: Option<&std::ffi::OsStr>) -> PathBuf {
    xcat_program_in(prog, path, &[Path::new("/opt/xcat/bin"), Path::new("/opt/xcat/sbin")])
}

/// [`xcat_program`] with the xCAT directories given.
pub fn xcat_program_in(prog: &str, path: Option<&std::ffi::OsStr>, dirs: &[&Path]) -> PathBuf {
    if prog.contains('/') {
        return PathBuf::from(prog);
    }
    let in_path = path.is_some_and(|p| std::env::split_paths(p).any(|d| d.join(prog).is_file()));
    if !in_path {
        for d in dirs {
            let c = d.join(prog);
            if c.is_file() {
                return c;
            }
        }
    }
    PathBuf::from(prog)
}

/// Print (dry run) or run the plan's commands. Each run is recorded in the log (JSON lines:
/// time, argv, exit status, output) before the next starts; the first failure stops the rest and is
/// the outcome's `failed`, with every command's [`State`] (and the undo of those done) to report.
pub fn execute(plan: Plan, templates: &Templates, mode: &Mode) -> Result<Outcome, RedirectError> {
    let commands = plan.commands(templates);
    let notes = plan.notes();
    let mut ran = Vec::new();
    let mut failed = None;
    let mut states =
        vec![if matches!(mode, Mode::Apply { .. }) { State::NotRun } else { State::ToRun }; commands.len()];
    if let Mode::Apply { log } = mode {
        let logs = log.display().to_string();
        log_line(log, &serde_json::json!({"time": now(), "event": "redirect", "commands": commands.len()}))?;
        for (i, c) in commands.iter().enumerate() {
            states[i] = State::Done;
            let Some((prog, args)) = c.argv.split_first() else { continue };
            let prog = xcat_program(prog, std::env::var_os("PATH").as_deref());
            let out = std::process::Command::new(&prog).args(args).stdin(std::process::Stdio::null()).output();
            let (status, stdout, stderr, desc) = match out {
                Ok(o) => {
                    let code = o.status.code().unwrap_or(-1);
                    (
                        code,
                        String::from_utf8_lossy(&o.stdout).into_owned(),
                        String::from_utf8_lossy(&o.stderr).into_owned(),
                        if o.status.success() { None } else { Some(format!("{}", o.status)) },
                    )
                }
                Err(e) => (-1, String::new(), e.to_string(), Some(format!("cannot run: {e}"))),
            };
            log_line(
                log,
                &serde_json::json!({"time": now(), "argv": c.argv, "status": status, "stdout": stdout, "stderr": stderr}),
            )?;
            ran.push(Ran { argv: c.argv.clone(), status, stdout, stderr: stderr.clone() });
            if let Some(d) = desc {
                failed =
                    Some(Failure { argv: c.argv.clone(), status: d, stderr: stderr.trim().to_string(), log: logs });
                states[i] = State::Failed;
                break;
            }
        }
    }
    let applied = matches!(mode, Mode::Apply { .. });
    Ok(Outcome { applied, plan, commands, notes, ran, states, failed })
}

/// Repoint nodes in xCAT: read the tables from `source`, plan as snmove would, then print or run
/// the commands. This is what `hanfs migrate` and `hanfs failover` call after moving the data.
pub fn redirect(
    source: &SourceSpec,
    moves: &[NodeMove],
    templates: &Templates,
    mode: &Mode,
) -> Result<Outcome, RedirectError> {
    let tables = source.read()?;
    let p = plan(&tables, moves)?;
    execute(p, templates, mode)
}

/// What repointing moved nodes in xCAT did, as `hanfs migrate`/`failover` report it.
#[derive(Debug, Clone)]
pub struct Repointed {
    pub ok: bool,
    /// One line per command (run, or to run) or per problem.
    pub steps: Vec<String>,
    pub outcome: Option<Outcome>,
}

/// Repoints `moves` (node, new SN) in xCAT after the data moved: the tables from `source`, the
/// templates from `templates` (a TOML file; default: xCAT's own commands), run and logged to `log`
/// when given, else only printed. Never fails: a problem is a step with `ok == false`.
pub fn repoint(
    source: &SourceSpec,
    templates: Option<&Path>,
    moves: &[(String, String)],
    log: Option<PathBuf>,
) -> Repointed {
    let failed = |step: String| Repointed { ok: false, steps: vec![step], outcome: None };
    let templates = match Templates::load(templates) {
        Ok(t) => t,
        Err(e) => return failed(format!("xCAT: templates: {e}")),
    };
    let mode = match log {
        Some(log) => Mode::Apply { log },
        None => Mode::DryRun,
    };
    let nm: Vec<NodeMove> =
        moves.iter().map(|(n, t)| NodeMove { node: n.clone(), to: t.clone(), address: None }).collect();
    match redirect(source, &nm, &templates, &mode) {
        Ok(o) => {
            let steps = o.step_lines("xCAT ");
            Repointed { ok: o.failed.is_none(), steps, outcome: Some(o) }
        }
        Err(e) => failed(format!("xCAT repoint FAILED: {e}")),
    }
}

impl Outcome {
    /// One line per command: what became of it (`prefix(ran)`, `prefix(to run)`, `prefix(FAILED ...)`,
    /// `prefix(not run)`); after a failure, the undo of what ran, last first.
    pub fn step_lines(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (c, st) in self.commands.iter().zip(&self.states) {
            let what = match st {
                State::ToRun => "to run".to_string(),
                State::Done => "ran".to_string(),
                State::NotRun => "not run".to_string(),
                State::Failed => match &self.failed {
                    Some(f) if !f.stderr.is_empty() => format!("FAILED, {}: {}", f.status, f.stderr),
                    Some(f) => format!("FAILED, {}", f.status),
                    None => "FAILED".to_string(),
                },
            };
            out.push(format!("{prefix}({what}): {}", c.shell_line()));
        }
        if let Some(f) = &self.failed {
            let done: Vec<&Command> =
                self.commands.iter().zip(&self.states).filter(|(_, s)| **s == State::Done).map(|(c, _)| c).collect();
            if done.is_empty() {
                out.push(format!("{prefix}nothing was changed (log: {})", f.log));
            } else {
                out.push(format!("{prefix}to take back what ran (log: {}), run in this order:", f.log));
                for c in done.iter().rev() {
                    for u in &c.undo {
                        out.push(format!("{prefix}  undo: {}", shell_words(u)));
                    }
                }
            }
        }
        out
    }

    /// What `hanfs xcat redirect` tells the administrator besides the commands themselves (stderr).
    pub fn summary(&self, mode: &Mode) -> Vec<String> {
        let mut out: Vec<String> = self.notes.iter().map(|n| format!("hanfs: note: {n}")).collect();
        if let Some(f) = &self.failed {
            out.extend(self.step_lines("hanfs: "));
            out.push(format!(
                "hanfs: xcat redirect: `{}` failed ({}); {} of {} commands ran before it, the rest did not run",
                f.argv.join(" "),
                f.status,
                self.ran.len().saturating_sub(1),
                self.commands.len()
            ));
            return out;
        }
        out.push(if self.commands.is_empty() {
            "hanfs: xcat redirect: nothing to change".to_string()
        } else if !self.applied {
            format!("hanfs: xcat redirect: dry run; add --apply to run these {} commands", self.commands.len())
        } else if let Mode::Apply { log } = mode {
            format!("hanfs: xcat redirect: ran {} commands; recorded in {}", self.ran.len(), log.display())
        } else {
            String::new()
        });
        out
    }
}

/// The hint when `migrate`/`failover` were given no xCAT tables to repoint the moved nodes in.
pub fn no_source_hint(moves: &[(String, String)]) -> Vec<String> {
    moves
        .iter()
        .map(|(node, to)| format!("xCAT not repointed (no --tabdump/--sqlite/--cfgloc given): run `hanfs xcat redirect --cfgloc /etc/xcat/cfgloc --node {node} --to {to} --apply`"))
        .collect()
}
