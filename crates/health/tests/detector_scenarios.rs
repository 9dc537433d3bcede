//! The detector step by step through the failover scenarios of issue 12.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use health::{Alert, Check, Decision, Detector, FailoverMode, HealthConfig, Probe, SnSpec, State};

struct Rig {
    det: Detector,
    t0: Instant,
}

fn rig(mode: FailoverMode) -> Rig {
    let cfg = HealthConfig {
        failover: mode,
        fence: vec!["rpower".into(), "{sn}".into(), "off".into()],
        ..HealthConfig::default()
    };
    cfg.validate().unwrap();
    let det = Detector::new(
        cfg.detector(),
        [("a", ["b", "c"]), ("b", ["c", "a"]), ("c", ["a", "b"])]
            .map(|(n, b)| SnSpec { name: n.into(), backups: b.map(String::from).to_vec() }),
    );
    Rig { det, t0: Instant::now() }
}

fn nfs_dead() -> Probe {
    Probe { agent: Check::Ok, nfs: Check::Refused("NFS v3 NULL at 10.0.0.1:2049: connection refused".into()) }
}

fn silent() -> Probe {
    Probe { agent: Check::Silent("handshake timed out".into()), nfs: Check::Silent("no reply within 3s".into()) }
}

impl Rig {
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// One probe round at second `s`: every SN's probe starts at s, `a` gets `a_probe`, which
    /// completes `a_lag` ms later; the others answer within 10 ms.
    fn round(&mut self, s: u64, a_probe: &Probe, a_lag: u64) -> Vec<Decision> {
        let start = self.at(s * 1000);
        let mut out = Vec::new();
        for sn in ["b", "c"] {
            out.extend(self.det.observe(sn, start, self.at(s * 1000 + 10), &Probe::good()).unwrap());
        }
        out.extend(self.det.observe("a", start, self.at(s * 1000 + a_lag), a_probe).unwrap());
        out
    }
}

#[test]
fn a_dead_nfs_service_on_a_live_sn_is_fenced_then_promoted() {
    let mut r = rig(FailoverMode::Auto);
    assert!(r.round(0, &Probe::good(), 5).is_empty());
    let mut fence_at = None;
    for s in 1..=7 {
        let d = r.round(s, &nfs_dead(), 5);
        if d.contains(&Decision::Fence { sn: "a".into() }) {
            assert!(fence_at.is_none(), "fence asked twice");
            fence_at = Some(s);
        }
        if s < 6 {
            assert!(matches!(r.det.state("a"), Some(State::Suspect { .. })), "at {s}: {:?}", r.det.state("a"));
        }
    }
    // First failure sent at 1 s; 5 s of failures once the probe sent at 6 s returns.
    assert_eq!(fence_at, Some(6));
    let d = r.det.fence_done("a", Ok(()), r.at(7500)).unwrap();
    assert_eq!(d, [Decision::Promote { service: "a".into(), from: "a".into(), to: "b".into() }]);
    r.det.served("a", "b").unwrap();
    let rep = r.det.report(r.at(8000), 1_000_000);
    let json = serde_json::to_value(&rep).unwrap();
    let sns = json["sns"].as_array().unwrap();
    assert_eq!(sns[0]["name"], "a");
    assert_eq!(sns[0]["state"], "fenced");
    assert_eq!(sns[0]["served_by"], "b");
    // Last good probe of a completed at 5 ms, 8 s before the report's "now".
    assert_eq!(sns[0]["last_good_probe"], 1_000_000 - 7);
    assert_eq!(sns[1]["state"], "serving-for");
    assert_eq!(sns[1]["serving_for"], serde_json::json!(["a"]));
    assert_eq!(sns[2]["state"], "up");
    assert_eq!(sns[2]["serving_for"], serde_json::json!([]));
}

#[test]
fn a_failed_fence_promotes_nothing_alerts_and_is_retried() {
    let mut r = rig(FailoverMode::Auto);
    r.round(0, &Probe::good(), 5);
    for s in 1..=6 {
        r.round(s, &silent(), 3000);
    }
    assert!(matches!(r.det.state("a"), Some(State::Down { fence: health::FenceState::Running, .. })));
    let d = r.det.fence_done("a", Err("rpower: timed out".into()), r.at(10_000)).unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(matches!(&d[0], Decision::Alert { sn, alert: Alert::FenceFailed { .. } } if sn == "a"));
    assert_eq!(r.det.host("a"), Some("a"));
    // A second report of the same fence (or a late one) changes nothing.
    assert!(r.det.fence_done("a", Ok(()), r.at(10_001)).unwrap().is_empty());
    assert!(!matches!(r.det.state("a"), Some(State::Fenced { .. })));
    // Retried after fence_rerun_after (30 s) while it keeps failing.
    r.round(11, &silent(), 3000);
    assert!(r.det.tick(r.at(20_000)).is_empty());
    r.round(40, &silent(), 3000);
    assert_eq!(r.det.tick(r.at(41_000)), [Decision::Fence { sn: "a".into() }]);
}

#[test]
fn manual_mode_reports_and_alerts_but_never_fences() {
    let mut r = rig(FailoverMode::Manual);
    r.round(0, &Probe::good(), 5);
    let mut all = Vec::new();
    for s in 1..=20 {
        all.extend(r.round(s, &silent(), 3000));
        all.extend(r.det.tick(r.at(s * 1000 + 3001)));
    }
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        matches!(&all[0], Decision::Alert { alert: Alert::DownManual { reason }, .. } if reason.contains("handshake timed out"))
    );
    assert!(matches!(r.det.state("a"), Some(State::Down { fence: health::FenceState::Manual, .. })));
    // Back after hold_down (30 s) of good probes.
    for s in 21..=50 {
        assert!(r.round(s, &Probe::good(), 5).is_empty(), "at {s}");
    }
    assert_eq!(r.round(51, &Probe::good(), 5), [Decision::Recovered { sn: "a".into() }]);
    assert_eq!(r.det.state("a"), Some(State::Up));
}

#[test]
fn a_probe_lost_while_the_mn_was_cut_off_never_counts() {
    let mut r = rig(FailoverMode::Auto);
    for sn in ["a", "b", "c"] {
        r.det.observe(sn, r.at(0), r.at(5), &Probe::good()).unwrap();
    }
    // The MN loses its network from 1 s to 12 s: every probe times out, nothing is failed over.
    let mut d = Vec::new();
    for s in 1..=11 {
        for sn in ["a", "b", "c"] {
            d.extend(r.det.observe(sn, r.at(s * 1000), r.at(s * 1000 + 3000), &silent()).unwrap());
        }
    }
    assert!(
        d.iter().all(|d| matches!(d, Decision::Alert { alert: Alert::NoQuorum { reached: 0, of: 2 }, .. })),
        "{d:?}"
    );
    assert_eq!(d.len(), 3, "one no-quorum alert per SN and run: {d:?}");
    // Back at 12 s: b and c answer at once; a's probe sent at 11.5 s (still cut off) times out
    // afterwards. It must not make a Down, though a has been failing for 10 s and b, c answer.
    for sn in ["b", "c"] {
        r.det.observe(sn, r.at(12_000), r.at(12_010), &Probe::good()).unwrap();
    }
    let d = r.det.observe("a", r.at(11_500), r.at(14_500), &silent()).unwrap();
    assert!(d.is_empty(), "{d:?}");
    assert!(matches!(r.det.state("a"), Some(State::Suspect { .. })));
    // a's probe sent at 12 s answers: one good probe and it is up.
    r.det.observe("a", r.at(12_000), r.at(14_600), &Probe::good()).unwrap();
    assert_eq!(r.det.state("a"), Some(State::Up));
}

#[test]
fn results_older_than_one_seen_are_ignored() {
    let mut r = rig(FailoverMode::Auto);
    r.det.observe("a", r.at(2000), r.at(2010), &Probe::good()).unwrap();
    // The probe sent at 1 s timed out after the one sent at 2 s answered.
    r.det.observe("a", r.at(1000), r.at(4000), &silent()).unwrap();
    assert_eq!(r.det.state("a"), Some(State::Up));
    assert!(r.det.observe("nope", r.at(1), r.at(2), &Probe::good()).is_err());
}

#[test]
fn local_probe_errors_are_no_evidence() {
    let mut r = rig(FailoverMode::Auto);
    r.round(0, &Probe::good(), 5);
    let local = Probe { agent: Check::Ok, nfs: Check::Local("no free reserved port".into()) };
    for s in 1..=20 {
        assert!(r.round(s, &local, 5).is_empty());
    }
    assert_eq!(r.det.state("a"), Some(State::Up));
}

#[test]
fn a_fenced_backup_hands_on_what_it_served() {
    let mut r = rig(FailoverMode::Auto);
    for sn in ["a", "b", "c"] {
        r.det.observe(sn, r.at(0), r.at(1), &Probe::good()).unwrap();
    }
    // a was failed over to b earlier (the daemon restarted and knows it).
    r.det.set_host("a", "b").unwrap();
    // Now b dies; a is fenced (silent), c answers.
    for s in 1..=7u64 {
        r.det.observe("c", r.at(s * 1000), r.at(s * 1000 + 5), &Probe::good()).unwrap();
        r.det.observe("a", r.at(s * 1000), r.at(s * 1000 + 5), &Probe::good()).unwrap();
        r.det.observe("b", r.at(s * 1000), r.at(s * 1000 + 3000), &silent()).unwrap();
    }
    assert!(matches!(r.det.state("b"), Some(State::Down { .. })));
    let mut d = r.det.fence_done("b", Ok(()), r.at(11_000)).unwrap();
    d.sort_by_key(|x| format!("{x:?}"));
    // b's own service goes to its first backup, c; a's (held by b) to a's first Up backup: b is
    // fenced, so c.
    assert_eq!(
        d,
        [
            Decision::Promote { service: "a".into(), from: "b".into(), to: "c".into() },
            Decision::Promote { service: "b".into(), from: "b".into(), to: "c".into() },
        ]
    );
    r.det.promote_failed("a", "address add failed".into(), r.at(11_500)).unwrap();
    assert!(r.det.tick(r.at(12_000)).is_empty(), "retried before promote_retry_after");
    assert_eq!(r.det.tick(r.at(17_000)), [Decision::Promote { service: "a".into(), from: "b".into(), to: "c".into() }]);
}

#[test]
fn a_fenced_sn_that_answers_is_an_alert_and_release_needs_hold_down() {
    let mut r = rig(FailoverMode::Auto);
    r.round(0, &Probe::good(), 5);
    for s in 1..=6 {
        r.round(s, &silent(), 3000);
    }
    r.det.fence_done("a", Ok(()), r.at(10_000)).unwrap();
    r.det.served("a", "b").unwrap();
    let d = r.round(11, &Probe::good(), 5);
    assert_eq!(d, [Decision::Alert { sn: "a".into(), alert: Alert::AliveWhileFenced }]);
    assert!(r.round(12, &Probe::good(), 5).is_empty(), "alerted once");
    assert!(r.det.release("b", r.at(12_500)).is_err(), "b is not fenced");
    r.det.release("a", r.at(13_000)).unwrap();
    for s in 13..=42 {
        r.round(s, &Probe::good(), 5);
        assert!(matches!(r.det.state("a"), Some(State::Down { .. })), "at {s}");
    }
    assert_eq!(r.round(43, &Probe::good(), 5), [Decision::Recovered { sn: "a".into() }]);
    assert_eq!(r.det.host("a"), Some("b"), "services stay until moved back");
}

#[test]
fn every_agent_refusing_the_mn_fences_nothing() {
    // An MN-side fault (expired client certificate): every handshake is refused, every SN's
    // host answers. Nothing may be fenced: no SN is reached by a good probe.
    let mut r = rig(FailoverMode::Auto);
    for sn in ["a", "b", "c"] {
        r.det.observe(sn, r.at(0), r.at(5), &Probe::good()).unwrap();
    }
    let refused = Probe { agent: Check::Refused("certificate expired".into()), nfs: Check::Ok };
    let mut d = Vec::new();
    for s in 1..=30 {
        for sn in ["a", "b", "c"] {
            d.extend(r.det.observe(sn, r.at(s * 1000), r.at(s * 1000 + 5), &refused).unwrap());
        }
    }
    assert!(d.iter().all(|x| matches!(x, Decision::Alert { alert: Alert::NoQuorum { .. }, .. })), "{d:?}");
}

#[test]
fn a_manual_failover_is_recorded_without_promotions() {
    let mut r = rig(FailoverMode::Manual);
    r.round(0, &Probe::good(), 5);
    r.det.mark_fenced("a", r.at(1000)).unwrap();
    r.det.served("a", "c").unwrap();
    assert!(matches!(r.det.state("a"), Some(State::Fenced { .. })));
    assert!(r.det.tick(r.at(60_000)).is_empty());
    let rep = r.det.report(r.at(2000), 100);
    assert_eq!(rep.sns[2].serving_for, ["a"]);
    assert_eq!(rep.sns[0].served_by.as_deref(), Some("c"));
    assert!(r.det.mark_fenced("zz", r.at(1)).is_err());
}

#[test]
fn a_returned_sn_is_up_serves_itself_and_is_not_failed_over_again_within_hold_down() {
    let mut r = rig(FailoverMode::Auto);
    r.round(0, &Probe::good(), 5);
    let mut d = Vec::new();
    for s in 1..=6 {
        d.extend(r.round(s, &silent(), 3000));
    }
    assert!(d.contains(&Decision::Fence { sn: "a".into() }), "{d:?}");
    assert_eq!(r.det.returned("a", r.at(9500)), Err(health::DetectorError::Fencing("a".into())));
    r.det.fence_done("a", Ok(()), r.at(10_000)).unwrap();
    r.det.served("a", "b").unwrap();
    // migrate --back at 20 s: up at once, serving itself, b serving nothing but itself.
    r.det.returned("a", r.at(20_000)).unwrap();
    assert_eq!(r.det.state("a"), Some(State::Up));
    assert_eq!(r.det.host("a"), Some("a"));
    let rep = r.det.report(r.at(20_000), 1_000_000);
    let json = serde_json::to_value(&rep).unwrap();
    assert_eq!(json["sns"][0]["state"], "up", "{json}");
    assert_eq!(json["sns"][1]["state"], "up", "b serves for nobody: {json}");
    assert!(json["waiting_for_backup"].as_array().unwrap().is_empty());
    // It dies again at once: failures show (Suspect), but no fence before 30 s of hold-down.
    let mut d = Vec::new();
    for s in 21..=49 {
        d.extend(r.round(s, &silent(), 900));
        assert!(matches!(r.det.state("a"), Some(State::Suspect { .. })), "at {s}: {:?}", r.det.state("a"));
    }
    assert!(!d.iter().any(|x| matches!(x, Decision::Fence { .. })), "{d:?}");
    // Past the hold-down, the failures (already longer than dead_after) make it Down and fenced.
    let d = r.round(50, &silent(), 900);
    assert_eq!(d, [Decision::Fence { sn: "a".into() }]);
}
