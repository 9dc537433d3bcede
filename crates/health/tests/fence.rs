//! The fence runner against real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use health::fence::{fence, run_command, CmdStatus, FenceConfig};

/// `sh -c SCRIPT fence ARGS...`: placeholders go in as arguments ($1...), never into the script.
fn sh(script: &str) -> Vec<String> {
    sh_args(script, &[])
}

fn sh_args(script: &str, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["sh".into(), "-c".into(), script.into(), "fence".into()];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

fn cfg(command: Vec<String>) -> FenceConfig {
    FenceConfig {
        command,
        timeout: Duration::from_secs(5),
        verify: Vec::new(),
        verify_expect: "off".into(),
        retry: Vec::new(),
        notify: Vec::new(),
    }
}

#[tokio::test]
async fn a_successful_fence_fences_once_with_the_names_substituted() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let c = cfg(sh_args(&format!("echo \"off $1 $2\" >> {}", log.display()), &["{sn}", "{address}"]));
    let out = fence(&c, "sn1", "10.0.0.1").await;
    assert!(out.fenced(), "{out:?}");
    assert_eq!(out.attempts.len(), 1);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "off sn1 10.0.0.1\n");
}

#[tokio::test]
async fn a_failing_fence_is_retried_then_notified_and_never_fenced() {
    let tmp = tempfile::tempdir().unwrap();
    let (count, note) = (tmp.path().join("count"), tmp.path().join("note"));
    let mut c = cfg(sh(&format!("echo x >> {}; echo 'BMC unreachable' >&2; exit 3", count.display())));
    c.retry = vec![Duration::from_millis(50), Duration::from_millis(50)];
    c.notify = sh_args(&format!("printf '%s|%s' \"$1\" \"$2\" > {}", note.display()), &["{sn}", "{reason}"]);
    let out = fence(&c, "sn1", "10.0.0.1").await;
    assert!(!out.fenced());
    assert_eq!(out.attempts.len(), 3);
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
    assert!(out.attempts.iter().all(|a| a.fence.status == CmdStatus::Exited(3)));
    let reason = out.result.clone().unwrap_err();
    assert!(reason.contains("exit status 3") && reason.contains("BMC unreachable"), "{reason}");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), format!("sn1|{reason}"));
    assert!(out.notify.unwrap().success());
}

#[tokio::test]
async fn a_hung_fence_is_killed_with_its_process_group() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("pid");
    // A wrapper that starts a child (as a script starting ipmitool would) and hangs.
    let mut c = cfg(sh(&format!("sleep 60 & echo $! > {}; wait", pidfile.display())));
    c.timeout = Duration::from_millis(500);
    let began = Instant::now();
    let out = fence(&c, "sn1", "10.0.0.1").await;
    assert!(!out.fenced());
    assert_eq!(out.attempts[0].fence.status, CmdStatus::TimedOut(c.timeout));
    assert!(began.elapsed() < Duration::from_secs(3), "took {:?}", began.elapsed());
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // The grandchild is gone too (a zombie awaiting its new parent counts as gone).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start().chars().next()).unwrap_or(None);
        if stat.is_empty() || state == Some('Z') {
            break;
        }
        assert!(Instant::now() < deadline, "the fence's child {pid} survived the timeout: {stat}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn verification_must_say_off() {
    let mut c = cfg(sh("exit 0"));
    c.verify = sh_args("echo \"$1: on\"", &["{sn}"]);
    let out = fence(&c, "sn1", "10.0.0.1").await;
    assert!(!out.fenced(), "{out:?}");
    let reason = out.result.unwrap_err();
    assert!(reason.contains("did not print `off`") && reason.contains("sn1: on"), "{reason}");

    c.verify = sh_args("echo \"$1: off\"", &["{sn}"]);
    let out = fence(&c, "sn1", "10.0.0.1").await;
    assert!(out.fenced(), "{out:?}");
    assert_eq!(out.attempts[0].verify.as_ref().unwrap().stdout, "sn1: off\n");

    // A verification that fails (its BMC unreachable) is not fenced either, whatever it printed.
    c.verify = sh("echo 'sn1: off'; exit 1");
    assert!(!fence(&c, "sn1", "10.0.0.1").await.fenced());
}

#[tokio::test]
async fn no_command_or_a_missing_one_is_not_fenced() {
    let out = fence(&cfg(Vec::new()), "sn1", "10.0.0.1").await;
    assert!(!out.fenced());
    assert!(out.result.unwrap_err().contains("no fence command"));
    let out = fence(&cfg(vec!["/nonexistent/rpower".into(), "{sn}".into()]), "sn1", "10.0.0.1").await;
    assert!(!out.fenced());
    assert!(matches!(out.attempts[0].fence.status, CmdStatus::NotStarted(_)));
    let r = run_command(&sh("kill -9 $$"), Duration::from_secs(5)).await;
    assert_eq!(r.status, CmdStatus::Signalled(9));
    assert!(!r.success());
}
