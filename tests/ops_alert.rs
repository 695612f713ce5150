//! Alerts (issue 12, item 4): scripted lag and silence sequences, from real engines
//! on a manual clock, produce exactly the expected transitions; hysteresis holds a
//! firing alert until its clear value; and a property checks that no sequence of
//! values moves a series along an edge the state machine does not have, fires it
//! before `for_ms`, or resolves it before `clear_for_ms` at its clear value.

use concord::ops::alert::{Alerts, Comparison, Rule, Sample, Signal, State, Transition};
use concord::sync::{Config, PeerLag, SyncEngine};
use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
use proptest::prelude::*;

type Settings = OrMap<String, LwwRegister<u32>>;

const T: u64 = 1_700_000_000_000;

fn rule(
    name: &str,
    signal: Signal,
    threshold: u64,
    clear: u64,
    for_ms: u64,
    clear_for_ms: u64,
) -> Rule {
    Rule {
        name: name.into(),
        signal,
        comparison: Comparison::Above,
        threshold,
        clear,
        for_ms,
        clear_for_ms,
        window_ms: 10_000,
    }
}

/// (rule, from, to, value, ms after the start) of each transition.
fn brief(ts: Vec<Transition>) -> Vec<(String, State, State, u64, u64)> {
    ts.into_iter()
        .map(|t| (t.name, t.from, t.to, t.value, t.at_ms - T))
        .collect()
}

fn tr(name: &str, from: State, to: State, value: u64, at: u64) -> (String, State, State, u64, u64) {
    (name.to_string(), from, to, value, at)
}

use State::{Firing, Inactive, Pending, Resolved};

#[test]
fn a_scripted_lag_and_silence_sequence_moves_the_alerts_as_expected() {
    let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    let time = ManualClock::new(T);
    let mut a = SyncEngine::new(
        a_id,
        Settings::new(),
        time.clone(),
        Config::with_peers([b_id]),
    );
    let mut b = SyncEngine::new(
        b_id,
        Settings::new(),
        time.clone(),
        Config::with_peers([a_id]),
    );
    let mut alerts = Alerts::new(vec![
        rule("lag_writes", Signal::LagWrites, 3, 1, 1_000, 500),
        rule("lag_age", Signal::LagMs, 2_000, 500, 0, 0),
        rule("silent", Signal::SilenceMs, 3_000, 1_000, 0, 1_000),
    ])
    .unwrap()
    .keep_resolved_ms(2_500);
    let at = |ms: u64, a: &SyncEngine<Settings, ManualClock>, alerts: &mut Alerts| {
        time.set(T + ms);
        brief(alerts.evaluate(T + ms, &Sample::from(&a.metrics())))
    };

    // Five writes B does not get: past the threshold, pending for a second.
    for v in 0..5 {
        a.update(|m, hlc| m.write(format!("k{v}"), v, hlc)).unwrap();
    }
    assert_eq!(
        at(0, &a, &mut alerts),
        [tr("lag_writes", Inactive, Pending, 5, 0)]
    );
    assert_eq!(at(999, &a, &mut alerts), []);
    assert_eq!(
        at(1_000, &a, &mut alerts),
        [tr("lag_writes", Pending, Firing, 5, 1_000)]
    );
    // The oldest write ages past 2 s; B, never heard, is silent past 3 s.
    assert_eq!(at(2_000, &a, &mut alerts), []);
    assert_eq!(
        at(2_500, &a, &mut alerts),
        [tr("lag_age", Inactive, Firing, 2_500, 2_500)]
    );
    assert_eq!(
        at(3_500, &a, &mut alerts),
        [tr("silent", Inactive, Firing, 3_500, 3_500)]
    );
    assert_eq!(alerts.firing().len(), 3);

    // B answers and acknowledges everything.
    let answer = b
        .receive(a.sync_with(b_id).unwrap())
        .unwrap()
        .reply
        .unwrap();
    let _ = a.receive(answer).unwrap();
    // The age rule clears at once; the others must stay clear for a while.
    assert_eq!(
        at(3_500, &a, &mut alerts),
        [tr("lag_age", Firing, Resolved, 0, 3_500)]
    );
    assert_eq!(
        at(4_000, &a, &mut alerts),
        [tr("lag_writes", Firing, Resolved, 0, 4_000)]
    );
    // B goes quiet again: 1.1 s without hearing it is past `silent`'s clear value,
    // so the clearing starts over (hysteresis), though it is under the threshold.
    assert_eq!(at(4_600, &a, &mut alerts), []);
    let hello = b.sync_with(a_id).unwrap();
    let _ = a.receive(hello).unwrap();
    assert_eq!(at(4_600, &a, &mut alerts), []);
    assert_eq!(at(5_500, &a, &mut alerts), []);
    let hello = b.sync_with(a_id).unwrap();
    let _ = a.receive(hello).unwrap();
    assert_eq!(
        at(5_600, &a, &mut alerts),
        [tr("silent", Firing, Resolved, 100, 5_600)]
    );
    // Resolved alerts stay listed for `keep_resolved_ms`, then go inactive.
    assert_eq!(at(5_999, &a, &mut alerts), []);
    assert_eq!(
        at(6_000, &a, &mut alerts),
        [tr("lag_age", Resolved, Inactive, 0, 6_000)]
    );
    assert_eq!(
        at(6_500, &a, &mut alerts),
        [tr("lag_writes", Resolved, Inactive, 0, 6_500)]
    );
    let listed: Vec<(String, State)> = alerts
        .list()
        .into_iter()
        .map(|a| (a.name, a.state))
        .collect();
    assert_eq!(
        listed,
        [
            ("lag_writes".to_string(), Inactive),
            ("lag_age".to_string(), Inactive),
            ("silent".to_string(), Resolved),
        ]
    );
    // A resolved alert whose value goes bad again fires again.
    for v in 0..4 {
        a.update(|m, hlc| m.write(format!("again{v}"), v, hlc))
            .unwrap();
    }
    assert_eq!(
        at(6_600, &a, &mut alerts),
        [tr("lag_writes", Inactive, Pending, 4, 6_600)]
    );
}

fn peer_sample(peer: ReplicaId, writes: u64) -> Sample {
    Sample {
        peers: vec![(
            peer,
            PeerLag {
                unacked_writes: writes,
                oldest_unacked_ms: 0,
                since_heard_ms: Some(0),
            },
        )],
        ..Sample::default()
    }
}

#[test]
fn hysteresis_holds_a_firing_alert_until_its_clear_value() {
    let peer = ReplicaId::from_u128(9);
    let mut alerts = Alerts::new(vec![rule("lag", Signal::LagWrites, 100, 20, 0, 0)]).unwrap();
    let mut run =
        |now: u64, writes: u64| brief(alerts.evaluate(T + now, &peer_sample(peer, writes)));
    assert_eq!(run(0, 101), [tr("lag", Inactive, Firing, 101, 0)]);
    // Hovering around the threshold neither resolves nor re-fires.
    for (i, w) in [99, 101, 50, 100, 21, 150].into_iter().enumerate() {
        assert_eq!(run(i as u64 + 1, w), []);
    }
    assert_eq!(run(10, 20), [tr("lag", Firing, Resolved, 20, 10)]);
    // A pending alert whose value dips is inactive again (no hysteresis before firing).
    let mut pending = Alerts::new(vec![rule("lag", Signal::LagWrites, 100, 20, 1_000, 0)]).unwrap();
    let mut run =
        |now: u64, writes: u64| brief(pending.evaluate(T + now, &peer_sample(peer, writes)));
    assert_eq!(run(0, 150), [tr("lag", Inactive, Pending, 150, 0)]);
    assert_eq!(run(500, 90), [tr("lag", Pending, Inactive, 90, 500)]);
    assert_eq!(run(600, 150), [tr("lag", Inactive, Pending, 150, 600)]);
    assert_eq!(run(1_599, 150), []);
    assert_eq!(run(1_600, 150), [tr("lag", Pending, Firing, 150, 1_600)]);
}

#[test]
fn rates_count_over_their_window_and_node_signals_have_no_peer() {
    let mut alerts = Alerts::new(vec![
        rule("rejected", Signal::RejectedMessages, 2, 0, 0, 0),
        rule("conflicts", Signal::Conflicts, 5, 1, 0, 0),
        rule("hot", Signal::ContainedHotKeys, 0, 0, 2_000, 0),
    ])
    .unwrap();
    let mut run = |now: u64, rejected: u64, conflicts: u64, hot: u64| {
        let s = Sample {
            rejected,
            conflicts,
            contained_hot_keys: hot,
            peers: vec![],
        };
        brief(alerts.evaluate(T + now, &s))
    };
    // Counters that stood at 1000 before the evaluator started count from there.
    assert_eq!(run(0, 1_000, 1_000, 0), []);
    assert_eq!(
        run(1_000, 1_003, 1_000, 1),
        [
            tr("rejected", Inactive, Firing, 3, 1_000),
            tr("hot", Inactive, Pending, 1, 1_000),
        ]
    );
    assert_eq!(
        run(3_000, 1_003, 1_006, 1),
        [
            tr("conflicts", Inactive, Firing, 6, 3_000),
            tr("hot", Pending, Firing, 1, 3_000),
        ]
    );
    // Ten seconds on, the window no longer holds the rejections.
    assert_eq!(
        run(11_000, 1_003, 1_006, 0),
        [
            tr("rejected", Firing, Resolved, 0, 11_000),
            tr("hot", Firing, Resolved, 0, 11_000),
        ]
    );
    assert_eq!(
        run(13_000, 1_003, 1_006, 0),
        [tr("conflicts", Firing, Resolved, 0, 13_000)]
    );
    assert!(alerts.list().iter().all(|a| a.peer.is_none()));
}

#[test]
fn bad_rules_are_refused() {
    let ok = rule("lag", Signal::LagWrites, 10, 5, 0, 0);
    assert!(Alerts::new(vec![ok.clone()]).is_ok());
    assert!(Alerts::new(Rule::builtin()).is_ok());
    assert!(Alerts::new(vec![ok.clone(), ok.clone()]).is_err());
    let bad = |f: fn(&mut Rule)| {
        let mut r = ok.clone();
        f(&mut r);
        Alerts::new(vec![r]).is_err()
    };
    assert!(bad(|r| r.clear = 11));
    assert!(bad(|r| r.name = String::new()));
    assert!(bad(|r| r.name = "a b".into()));
    assert!(bad(|r| {
        r.comparison = Comparison::Below;
        r.clear = 9;
    }));
    assert!(bad(|r| {
        r.signal = Signal::Conflicts;
        r.window_ms = 0;
    }));
}

#[test]
fn a_below_rule_fires_under_its_threshold() {
    let peer = ReplicaId::from_u128(3);
    let mut r = rule("too_few", Signal::LagWrites, 10, 20, 0, 0);
    r.comparison = Comparison::Below;
    let mut alerts = Alerts::new(vec![r]).unwrap();
    let mut run = |now: u64, v: u64| brief(alerts.evaluate(T + now, &peer_sample(peer, v)));
    assert_eq!(run(0, 10), []);
    assert_eq!(run(1, 9), [tr("too_few", Inactive, Firing, 9, 1)]);
    assert_eq!(run(2, 19), []);
    assert_eq!(run(3, 20), [tr("too_few", Firing, Resolved, 20, 3)]);
}

#[test]
fn peers_that_leave_the_samples_are_forgotten() {
    let mut alerts = Alerts::new(vec![rule("lag", Signal::LagWrites, 1, 0, 0, 0)]).unwrap();
    for n in 0..1_000u128 {
        // A different peer every time: only the current one is kept.
        alerts.evaluate(T + n as u64, &peer_sample(ReplicaId::from_u128(n + 1), 5));
        assert_eq!(alerts.list().len(), 1);
    }
}

proptest! {
    /// Any sequence of values and times: a series moves only along the state
    /// machine's edges, fires only after its value was past the threshold at every
    /// evaluation of the last `for_ms` (since the pending began), and resolves only
    /// after its value was at `clear` at every evaluation of the last `clear_for_ms`.
    #[test]
    fn transitions_follow_the_state_machine(
        steps in prop::collection::vec((0u64..400, 0u64..30), 1..120),
        for_ms in 0u64..800,
        clear_for_ms in 0u64..800,
        keep in 0u64..2_000,
    ) {
        let peer = ReplicaId::from_u128(1);
        let (threshold, clear) = (15, 8);
        let mut alerts = Alerts::new(vec![rule("x", Signal::LagWrites, threshold, clear, for_ms, clear_for_ms)])
            .unwrap()
            .keep_resolved_ms(keep);
        let mut now = 0;
        let mut seen: Vec<(u64, u64)> = Vec::new();
        let mut state = Inactive;
        let mut entered = 0;
        let mut entered_at = 0;
        for (dt, v) in steps {
            now += dt;
            seen.push((now, v));
            let changes = alerts.evaluate(now, &peer_sample(peer, v));
            prop_assert!(changes.len() <= 1);
            if let Some(t) = changes.first() {
                prop_assert_eq!(t.from, state);
                let edge = (t.from, t.to);
                prop_assert!(matches!(
                    edge,
                    (Inactive | Resolved, Pending | Firing)
                        | (Pending, Inactive | Firing)
                        | (Firing, Resolved)
                        | (Resolved, Inactive)
                ), "no edge {:?}", edge);
                // When the run of evaluations ending now that all satisfy `ok` began.
                let run_start = |ok: &dyn Fn(u64) -> bool| {
                    seen.iter().rev().take_while(|(_, v)| ok(*v)).last().map(|(t, _)| *t)
                };
                match edge {
                    (Pending, Firing) => {
                        prop_assert!(now - entered >= for_ms);
                        prop_assert!(seen[entered_at..].iter().all(|(_, v)| *v > threshold));
                    }
                    (_, Firing) | (_, Pending) => prop_assert!(v > threshold),
                    (Firing, Resolved) => {
                        let start = run_start(&|v| v <= clear);
                        prop_assert!(start.is_some_and(|s| now - s >= clear_for_ms));
                    }
                    (Pending, Inactive) => prop_assert!(v <= threshold),
                    (Resolved, Inactive) => prop_assert!(now - entered >= keep && v <= threshold),
                    _ => {}
                }
                state = t.to;
                entered = now;
                entered_at = seen.len() - 1;
            } else {
                // Nothing moved: the state had no reason to.
                match state {
                    Inactive => prop_assert!(v <= threshold),
                    Pending => prop_assert!(v > threshold && now - entered < for_ms),
                    _ => {}
                }
            }
            prop_assert_eq!(alerts.list()[0].state, state);
        }
    }
}
