//! One writer per replica root. With xCAT's `site.sharedinstall=sns` the SNs mount one shared
//! installdir (snmove.pm treats it as one tree for all SNs); two agents applying into it would
//! each journal, stage and commit under the other's feet from their own state dirs. So the first
//! agent that applies into a root leaves its identity in `<root>/.hanfs/agent` (host and state dir,
//! and its name for the message), and any other agent refuses to apply there, naming the owner and
//! the file.
//!
//! The marker appears whole or not at all: written to a temporary name, then hard-linked to its
//! name, which fails if it exists (atomic on local file systems and NFS alike), so of two agents
//! claiming at once exactly one wins.

use crate::Agent;
use anyhow::Context;
use std::path::{Path, PathBuf};

/// Where the owner of `root` is recorded.
pub(crate) fn marker(root: &Path) -> PathBuf {
    root.join(".hanfs").join("agent")
}

/// This agent's identity as the marker holds it.
pub(crate) fn identity(agent: &Agent) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("agent {}\nhost {}\nstate_dir {}\n", agent.name, host.trim(), agent.cfg.state_dir.as_str())
}

/// Claims the replica root for this agent, or refuses (the error says who owns it and how to
/// release it) when another agent already applies into it. `me` is [`identity`]'s.
pub(crate) fn claim(root: &Path, me: &str) -> anyhow::Result<()> {
    let file = marker(root);
    let read = || std::fs::read_to_string(&file);
    let owner = match read() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = root.join(".hanfs");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let tmp = dir.join(format!("agent.{}.tmp", std::process::id()));
            tree::fsops::write_atomic(&tmp, me.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
            let linked = std::fs::hard_link(&tmp, &file);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    read().with_context(|| format!("reading {}", file.display()))?
                }
                Err(e) => return Err(e).with_context(|| format!("claiming {}", file.display())),
            }
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    // The same agent is the same host and state dir (the state dir's lock admits one agent at a
    // time); its name is recorded for the message only (a plain-TCP agent's name is its listen
    // address, which may change between restarts).
    let key = |t: &str| t.lines().filter(|l| !l.starts_with("agent ")).map(str::to_string).collect::<Vec<_>>();
    if key(&owner) == key(me) {
        return Ok(());
    }
    let who = owner.lines().collect::<Vec<_>>().join(", ");
    anyhow::bail!(
        "replica root {} is written by another agent ({who}; recorded in {}): two agents must never apply into one \
         file system (xCAT site.sharedinstall=sns: the shared installdir is replicated once, by one SN's agent; \
         give the others their own root or no image). If that agent is gone for good, remove {}",
        root.display(),
        file.display(),
        file.display()
    )
}
