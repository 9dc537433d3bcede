//! Runs the fence command (then its verification), with a deadline, retries and an alert.
//!
//! The commands are argv vectors (no shell) with `{sn}` and `{address}` substituted, as
//! `cluster.fence` is for `hanfs failover` today. Each runs in its own process group, so a
//! timeout kills the command and whatever it started (an `ipmitool` under a wrapper script).
//! A fence counts only if the command exited 0 within its deadline and, when a verification
//! command is set, that one exited 0 too and printed the expected word: xCAT's `rpower <sn> stat`
//! prints `<sn>: off` for a powered-off node (xCAT-server/lib/xcat/plugins/ipmi.pm: the state is
//! `on`/`off` from the chassis status bit, line 2849, sent prefixed with the node name by
//! `xCAT::SvrUtils::sendmsg`, lines 2857-2861). Anything else (non-zero exit, a signal, a timeout,
//! a command that cannot start, "on") is "not fenced".

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Output kept per command (the rest is read and dropped, so the command never blocks on a pipe).
const MAX_OUTPUT: usize = 16 << 10;
/// How long a killed process group gets to be reaped.
const REAP: Duration = Duration::from_secs(5);

/// What to run (see [`crate::HealthConfig::fence_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceConfig {
    pub command: Vec<String>,
    pub timeout: Duration,
    pub verify: Vec<String>,
    pub verify_expect: String,
    /// Waits before the 2nd, 3rd, ... attempt.
    pub retry: Vec<Duration>,
    /// Run once when every attempt failed; `{reason}` is substituted too.
    pub notify: Vec<String>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdStatus {
    Exited(i32),
    Signalled(i32),
    /// Killed (with its process group) at the deadline.
    TimedOut(Duration),
    NotStarted(String),
}

/// One command run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdRun {
    pub argv: Vec<String>,
    pub status: CmdStatus,
    /// stdout then stderr, lossy UTF-8, at most 16 KiB each.
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdRun {
    pub fn success(&self) -> bool {
        self.status == CmdStatus::Exited(0)
    }

    fn describe(&self) -> String {
        let how = match &self.status {
            CmdStatus::Exited(c) => format!("exit status {c}"),
            CmdStatus::Signalled(s) => format!("killed by signal {s}"),
            CmdStatus::TimedOut(t) => format!("timed out after {t:?} (killed)"),
            CmdStatus::NotStarted(e) => format!("could not start: {e}"),
        };
        let out = format!("{}{}", self.stdout, self.stderr);
        let out = out.trim();
        if out.is_empty() {
            format!("`{}`: {how}", self.argv.join(" "))
        } else {
            format!("`{}`: {how}: {out}", self.argv.join(" "))
        }
    }
}

/// One attempt: the fence command, then (if it succeeded) the verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub fence: CmdRun,
    pub verify: Option<CmdRun>,
    /// `Err(reason)`: this attempt did not fence.
    pub result: Result<(), String>,
}

/// The result of a fence run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceOutcome {
    pub sn: String,
    pub attempts: Vec<Attempt>,
    /// The notify command, when every attempt failed and one is configured.
    pub notify: Option<CmdRun>,
    /// Why not fenced, when not (`Ok`: fenced). What [`crate::Detector::fence_done`] takes.
    pub result: Result<(), String>,
}

impl FenceOutcome {
    pub fn fenced(&self) -> bool {
        self.result.is_ok()
    }
}

/// Substitutes `{name}` placeholders in every argument.
pub fn substitute(template: &[String], vars: &[(&str, &str)]) -> Vec<String> {
    template.iter().map(|a| vars.iter().fold(a.clone(), |acc, (k, v)| acc.replace(&format!("{{{k}}}"), v))).collect()
}

/// Whether a verification's output says `expect`: some line is `expect`, or ends in `: expect`
/// (xCAT prints `<node>: off`). Case-sensitive, whole word: `off` does not match `offline`.
pub fn says(output: &str, expect: &str) -> bool {
    output.lines().any(|l| {
        let l = l.trim();
        l == expect || l.rsplit_once(':').is_some_and(|(_, v)| v.trim() == expect)
    })
}

async fn read_capped<R: AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(mut r) = r else { return out };
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let keep = n.min(MAX_OUTPUT.saturating_sub(out.len()));
                out.extend_from_slice(&buf[..keep]);
            }
        }
    }
}

/// Runs `argv` with stdin closed, in its own process group, killed with the group at `timeout`.
/// The deadline covers its output too: a process it left behind holding the pipes open counts
/// as the command still running.
pub async fn run_command(argv: &[String], timeout: Duration) -> CmdRun {
    let began = Instant::now();
    let done = |status, stdout: Vec<u8>, stderr: Vec<u8>| CmdRun {
        argv: argv.to_vec(),
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: began.elapsed(),
    };
    let Some((prog, args)) = argv.split_first() else {
        return done(CmdStatus::NotStarted("empty command".into()), Vec::new(), Vec::new());
    };
    let mut child = match tokio::process::Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return done(CmdStatus::NotStarted(format!("`{prog}`: {e}")), Vec::new(), Vec::new()),
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (o, e, st) = tokio::join!(read_capped(stdout), read_capped(stderr), child.wait());
        (o, e, st)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok((o, e, Ok(st))) => {
            use std::os::unix::process::ExitStatusExt;
            let status = match (st.code(), st.signal()) {
                (Some(c), _) => CmdStatus::Exited(c),
                (None, Some(s)) => CmdStatus::Signalled(s),
                (None, None) => CmdStatus::NotStarted("no exit status".into()),
            };
            done(status, o, e)
        }
        Ok((o, e, Err(err))) => done(CmdStatus::NotStarted(format!("wait: {err}")), o, e),
        Err(_) => {
            // The group exists while the command or a process it left runs, so its id cannot
            // have been reused by now.
            if let Some(p) = pgid {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
            let _ = tokio::time::timeout(REAP, child.wait()).await;
            done(CmdStatus::TimedOut(timeout), Vec::new(), Vec::new())
        }
    }
}

/// Fences `sn` (management address `address`): attempts per the retry schedule until one fences;
/// if none does, runs the notify command. Never reports fenced for a failed, killed or
/// unverified attempt.
pub async fn fence(cfg: &FenceConfig, sn: &str, address: &str) -> FenceOutcome {
    let vars = [("sn", sn), ("address", address)];
    let mut attempts = Vec::new();
    let mut reason = "no fence command configured (cluster.fence)".to_string();
    if !cfg.command.is_empty() {
        for i in 0..=cfg.retry.len() {
            if let Some(wait) = i.checked_sub(1).and_then(|j| cfg.retry.get(j)) {
                tokio::time::sleep(*wait).await;
            }
            let f = run_command(&substitute(&cfg.command, &vars), cfg.timeout).await;
            if !f.success() {
                reason = format!("fence {}", f.describe());
                attempts.push(Attempt { fence: f, verify: None, result: Err(reason.clone()) });
                continue;
            }
            if cfg.verify.is_empty() {
                attempts.push(Attempt { fence: f, verify: None, result: Ok(()) });
                return FenceOutcome { sn: sn.to_string(), attempts, notify: None, result: Ok(()) };
            }
            let v = run_command(&substitute(&cfg.verify, &vars), cfg.timeout).await;
            if v.success() && says(&v.stdout, &cfg.verify_expect) {
                attempts.push(Attempt { fence: f, verify: Some(v), result: Ok(()) });
                return FenceOutcome { sn: sn.to_string(), attempts, notify: None, result: Ok(()) };
            }
            reason = if v.success() {
                format!("verify `{}` did not print `{}`: {}", v.argv.join(" "), cfg.verify_expect, v.stdout.trim())
            } else {
                format!("verify {}", v.describe())
            };
            attempts.push(Attempt { fence: f, verify: Some(v), result: Err(reason.clone()) });
        }
    }
    let notify = if cfg.notify.is_empty() {
        None
    } else {
        let argv = substitute(&cfg.notify, &[("sn", sn), ("address", address), ("reason", &reason)]);
        Some(run_command(&argv, cfg.timeout).await)
    };
    FenceOutcome { sn: sn.to_string(), attempts, notify, result: Err(reason) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_verdicts() {
        let t = vec!["rpower".to_string(), "{sn}".into(), "off".into(), "--ip={address}".into()];
        assert_eq!(
            substitute(&t, &[("sn", "sn1"), ("address", "10.0.0.1")]),
            ["rpower", "sn1", "off", "--ip=10.0.0.1"]
        );
        assert!(says("sn1: off\n", "off"));
        assert!(says("off", "off"));
        assert!(!says("sn1: on\n", "off"));
        assert!(!says("sn1: offline\n", "off"));
        assert!(!says("", "off"));
    }
}
