//! Properties of the failure detector, checked against an independent record of its inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use health::{Check, Decision, Detector, DetectorConfig, FailoverMode, Probe, SnSpec, State};
use proptest::prelude::*;

const DEAD: Duration = Duration::from_secs(5);
const HOLD: Duration = Duration::from_secs(12);
const SNS: [&str; 3] = ["a", "b", "c"];

fn cfg(mode: FailoverMode) -> DetectorConfig {
    DetectorConfig {
        dead_after: DEAD,
        hold_down: HOLD,
        failover: mode,
        fence_retry_after: Duration::from_secs(7),
        promote_retry_after: Duration::from_secs(5),
    }
}

fn detector(mode: FailoverMode) -> Detector {
    Detector::new(
        cfg(mode),
        [("a", ["b", "c"]), ("b", ["c", "a"]), ("c", ["a", "b"])]
            .map(|(n, b)| SnSpec { name: n.into(), backups: b.map(String::from).to_vec() }),
    )
}

#[derive(Debug, Clone)]
enum Op {
    Probe { sn: usize, dt_ms: u64, lag_ms: u64, agent: u8, nfs: u8 },
    FenceReply { ok: bool },
    Tick { dt_ms: u64 },
}

fn check(k: u8) -> Check {
    match k {
        0..=2 => Check::Ok,
        3 => Check::Refused("refused".into()),
        4 => Check::Silent("timeout".into()),
        _ => Check::Local("no port".into()),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..3, 0u64..1500, 0u64..3000, 0u8..6, 0u8..6)
            .prop_map(|(sn, dt_ms, lag_ms, agent, nfs)| Op::Probe { sn, dt_ms, lag_ms, agent, nfs }),
        1 => any::<bool>().prop_map(|ok| Op::FenceReply { ok }),
        1 => (0u64..3000).prop_map(|dt_ms| Op::Tick { dt_ms }),
    ]
}

/// One accepted observation: (started, completed, good? (None: inconclusive), reached? (the same:
/// only a good probe shows the MN reaches an SN)).
type Obs = (Instant, Instant, Option<bool>, Option<bool>);

struct Model {
    t0: Instant,
    now: Instant,
    log: BTreeMap<&'static str, Vec<Obs>>,
    last_started: BTreeMap<&'static str, Instant>,
    down_entries: BTreeMap<&'static str, Vec<Instant>>,
    down_since: BTreeMap<&'static str, Instant>,
    pending_fences: Vec<String>,
    fenced_ok: Vec<String>,
}

fn is_down(s: Option<State>) -> bool {
    matches!(s, Some(State::Down { .. }))
}

fn run(ops: Vec<Op>, mode: FailoverMode) -> Result<(), TestCaseError> {
    let mut det = detector(mode);
    let t0 = Instant::now();
    let mut m = Model {
        t0,
        now: t0 + Duration::from_secs(10),
        log: BTreeMap::new(),
        last_started: BTreeMap::new(),
        down_entries: BTreeMap::new(),
        down_since: BTreeMap::new(),
        pending_fences: Vec::new(),
        fenced_ok: Vec::new(),
    };
    for op in ops {
        let before: BTreeMap<&str, Option<State>> = SNS.iter().map(|s| (*s, det.state(s))).collect();
        let decisions = match op {
            Op::Probe { sn, dt_ms, lag_ms, agent, nfs } => {
                m.now += Duration::from_millis(dt_ms);
                let name = SNS[sn];
                let started = (m.now - Duration::from_millis(lag_ms)).max(m.t0);
                let probe = Probe { agent: check(agent), nfs: check(nfs) };
                let d = det.observe(name, started, m.now, &probe).unwrap();
                let stale = m.last_started.get(name).is_some_and(|l| started < *l);
                if !stale {
                    m.last_started.insert(name, started);
                    let failed = |c: &Check| matches!(c, Check::Refused(_) | Check::Silent(_));
                    let good = if failed(&probe.agent) || failed(&probe.nfs) {
                        Some(false)
                    } else if probe.agent == Check::Ok && probe.nfs == Check::Ok {
                        Some(true)
                    } else {
                        None
                    };
                    // Reached: a good probe (see the detector's docs); inconclusive ones say nothing.
                    m.log.entry(name).or_default().push((started, m.now, good, good));
                    // Property: one good probe ends a Suspect run.
                    if good == Some(true) && matches!(before[name], Some(State::Suspect { .. })) {
                        prop_assert_eq!(det.state(name), Some(State::Up), "a good probe left {} suspect", name);
                    }
                } else {
                    prop_assert!(d.is_empty(), "a stale result decided something: {:?}", d);
                }
                d
            }
            Op::FenceReply { ok } => {
                if m.pending_fences.is_empty() {
                    continue;
                }
                let sn = m.pending_fences.remove(0);
                let r = if ok { Ok(()) } else { Err("rpower: timeout".to_string()) };
                let d = det.fence_done(&sn, r, m.now).unwrap();
                if ok && matches!(det.state(&sn), Some(State::Fenced { .. })) {
                    m.fenced_ok.push(sn.clone());
                }
                if !ok {
                    prop_assert!(!matches!(det.state(&sn), Some(State::Fenced { .. })), "a failed fence fenced {}", sn);
                }
                d
            }
            Op::Tick { dt_ms } => {
                m.now += Duration::from_millis(dt_ms);
                det.tick(m.now)
            }
        };
        for d in &decisions {
            match d {
                Decision::Fence { sn } => {
                    prop_assert_eq!(mode, FailoverMode::Auto, "a fence asked for in manual mode");
                    m.pending_fences.push(sn.clone());
                }
                Decision::Promote { from, to, .. } => {
                    // Never two writers: only away from an SN fenced by a fence that succeeded.
                    prop_assert!(
                        matches!(det.state(from), Some(State::Fenced { .. })),
                        "promoted away from unfenced {}",
                        from
                    );
                    prop_assert!(m.fenced_ok.contains(from), "{} not fenced by a good fence", from);
                    prop_assert_eq!(det.state(to), Some(State::Up));
                }
                _ => {}
            }
        }
        for sn in SNS {
            let (was, is) = (before[sn], det.state(sn));
            if !is_down(was) && is_down(is) && !matches!(was, Some(State::Fenced { .. })) {
                let obs = m.log.get(sn).cloned().unwrap_or_default();
                // Property: dead_after of continuous failures (from the first failed start after
                // the last good probe).
                let last_good = obs.iter().rposition(|o| o.2 == Some(true));
                let first_fail = obs.iter().skip(last_good.map_or(0, |i| i + 1)).find(|o| o.2 == Some(false));
                let Some(first_fail) = first_fail else {
                    return Err(TestCaseError::fail(format!("{sn} down without a failed probe")));
                };
                prop_assert!(m.now - first_fail.0 >= DEAD, "{} down after {:?} of failures", sn, m.now - first_fail.0);
                prop_assert_eq!(
                    obs.last().map(|o| o.2),
                    Some(Some(false)),
                    "{} down on a probe that was not a failure",
                    sn
                );
                // Property: quorum — a strict majority of the other unfenced SNs answered last.
                let others: Vec<&str> = SNS
                    .iter()
                    .copied()
                    .filter(|o| *o != sn && !matches!(det.state(o), Some(State::Fenced { .. })))
                    .collect();
                let reached = others
                    .iter()
                    .filter(|o| m.log.get(*o).and_then(|l| l.iter().rev().find_map(|x| x.3)).unwrap_or(false))
                    .count();
                prop_assert!(
                    reached * 2 > others.len(),
                    "{} down with {}/{} others reached (good last probe)",
                    sn,
                    reached,
                    others.len()
                );
                // Property: no flapping faster than hold_down.
                let entries = m.down_entries.entry(sn).or_default();
                if let Some(prev) = entries.last() {
                    prop_assert!(m.now - *prev >= HOLD, "{} down twice within {:?}", sn, m.now - *prev);
                }
                entries.push(m.now);
                m.down_since.insert(sn, m.now);
            }
            if is_down(was) && is == Some(State::Up) {
                // Property: back Up only after hold_down of good probes since it went down.
                let since = m.down_since[sn];
                prop_assert!(m.now - since >= HOLD);
                let obs = m.log.get(sn).cloned().unwrap_or_default();
                prop_assert!(
                    obs.iter().filter(|o| o.2 == Some(false)).all(|o| o.0 + HOLD <= m.now),
                    "{} up with a failure inside the hold-down",
                    sn
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn auto_mode_keeps_the_rules(ops in proptest::collection::vec(op(), 1..300)) {
        run(ops, FailoverMode::Auto)?;
    }

    #[test]
    fn manual_mode_keeps_the_rules_and_never_fences(ops in proptest::collection::vec(op(), 1..300)) {
        run(ops, FailoverMode::Manual)?;
    }

    /// A cut-off MN (every SN silent) declares nothing Down, however long it lasts.
    #[test]
    fn an_isolated_mn_fails_nothing_over(steps in 1usize..200, dt in 200u64..2000) {
        let mut det = detector(FailoverMode::Auto);
        let mut now = Instant::now();
        for sn in SNS {
            det.observe(sn, now, now, &Probe::good()).unwrap();
        }
        let silent = Probe { agent: Check::Silent("timeout".into()), nfs: Check::Silent("timeout".into()) };
        for i in 0..steps {
            now += Duration::from_millis(dt);
            let d = det.observe(SNS[i % 3], now - Duration::from_millis(dt / 2), now, &silent).unwrap();
            prop_assert!(!d.iter().any(|d| matches!(d, Decision::Fence { .. })), "{:?}", d);
            for sn in SNS {
                prop_assert!(!is_down(det.state(sn)));
            }
        }
    }
}

/// The properties above must be able to fail: a detector without the quorum rule or the
/// dead_after wait would be caught. Here the scenario that exercises both, step by step.
#[test]
fn dead_after_and_quorum_gate_the_first_fence() {
    let mut det = detector(FailoverMode::Auto);
    let t = Instant::now();
    let s = |ms: u64| t + Duration::from_millis(ms);
    let silent = Probe { agent: Check::Silent("timeout".into()), nfs: Check::Silent("timeout".into()) };
    for sn in SNS {
        det.observe(sn, s(0), s(0), &Probe::good()).unwrap();
    }
    // a fails from 1 s; b and c answer every second.
    let mut fenced_at = None;
    for i in 1..=10u64 {
        for sn in ["b", "c"] {
            det.observe(sn, s(i * 1000), s(i * 1000 + 10), &Probe::good()).unwrap();
        }
        let d = det.observe("a", s(i * 1000), s(i * 1000 + 3000), &silent).unwrap();
        if d.contains(&Decision::Fence { sn: "a".into() }) {
            fenced_at.get_or_insert(i);
        }
    }
    // First failed probe sent at 1 s; at probe i it completes at i+3 s: 5 s of failure at i = 3.
    assert_eq!(fenced_at, Some(3));
}
