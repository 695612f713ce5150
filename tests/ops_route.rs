//! Read routing (issue 12, item 3): each policy's promise as a property, checked
//! against a model written independently of the router, plus the token filter fed
//! from real engines.

use std::collections::BTreeMap;

use concord::ops::route::{Health, NoReplica, Policy, Router};
use concord::sync::{Config, PeerLag, SyncEngine};
use concord::{CausalContext, Dot, LwwRegister, ManualClock, OrMap, ReplicaId};
use proptest::prelude::*;

fn id(n: usize) -> ReplicaId {
    ReplicaId::from_u128(n as u128 + 1)
}

fn router(policy: Policy, weights: &[u32]) -> Router {
    let mut r = Router::new(policy);
    for (i, w) in weights.iter().enumerate() {
        r.add(id(i), *w);
    }
    r
}

fn counts(picks: &[ReplicaId]) -> BTreeMap<ReplicaId, u64> {
    let mut c = BTreeMap::new();
    for p in picks {
        *c.entry(*p).or_insert(0) += 1;
    }
    c
}

/// A context holding the given dots (writers 1..=3, counters 1..=6).
fn context(dots: &[(u8, u8)]) -> CausalContext {
    let mut c = CausalContext::new();
    for (w, n) in dots {
        c.insert(Dot::new(id(usize::from(*w)), u64::from(*n)));
    }
    c
}

fn dots() -> impl Strategy<Value = Vec<(u8, u8)>> {
    prop::collection::vec((0u8..3, 1u8..7), 0..8)
}

fn lag(writes: u64, ms: u64) -> PeerLag {
    PeerLag {
        unacked_writes: writes,
        oldest_unacked_ms: ms,
        since_heard_ms: Some(0),
    }
}

proptest! {
    /// Smooth weighted round-robin: over every run of picks as long as the sum of the
    /// weights, each replica is picked exactly its weight's number of times, and a
    /// replica of weight 0 never.
    #[test]
    fn weighted_picks_honour_the_weights_exactly(
        weights in prop::collection::vec(0u32..12, 1..7),
        cycles in 1u64..4,
    ) {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut r = router(Policy::weighted(), &weights);
        if total == 0 {
            let none = r.pick(0, None).unwrap_err();
            prop_assert_eq!(none.drained, weights.len());
            return Ok(());
        }
        for _ in 0..cycles {
            let picks: Vec<ReplicaId> =
                (0..total).map(|_| r.pick(0, None).unwrap()).collect();
            let c = counts(&picks);
            for (i, w) in weights.iter().enumerate() {
                prop_assert_eq!(c.get(&id(i)).copied().unwrap_or(0), u64::from(*w));
            }
        }
    }

    /// Smoothness: no replica is picked twice in a row while another has a larger
    /// share left to take (the naive "w picks of A, then w picks of B" order fails
    /// this): a replica of weight w gets at most ceil(w * k / W) + 1 of the first k
    /// picks.
    #[test]
    fn weighted_picks_are_interleaved(weights in prop::collection::vec(1u32..10, 2..6)) {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut r = router(Policy::weighted(), &weights);
        let mut seen = vec![0u64; weights.len()];
        for k in 1..=total {
            let p = r.pick(0, None).unwrap();
            let i = (0..weights.len()).find(|i| id(*i) == p).unwrap();
            seen[i] += 1;
            let share = (u64::from(weights[i]) * k).div_ceil(total);
            prop_assert!(seen[i] <= share + 1, "replica {} got {} of {} picks", i, seen[i], k);
        }
    }

    /// Round-robin: over every run of picks as long as the number of replicas
    /// eligible, each is picked once (weights only drain).
    #[test]
    fn round_robin_takes_each_in_turn(weights in prop::collection::vec(0u32..3, 1..8), runs in 1usize..4) {
        let eligible: Vec<usize> = (0..weights.len()).filter(|i| weights[*i] > 0).collect();
        let mut r = router(Policy::round_robin(), &weights);
        if eligible.is_empty() {
            prop_assert!(r.pick(0, None).is_err());
            return Ok(());
        }
        for _ in 0..runs {
            let picks: Vec<ReplicaId> =
                (0..eligible.len()).map(|_| r.pick(0, None).unwrap()).collect();
            let c = counts(&picks);
            prop_assert_eq!(c.len(), eligible.len());
            prop_assert!(c.values().all(|n| *n == 1));
        }
    }

    /// Health: under any sequence of failure and success reports, health checks and
    /// time, a pick never lands on a replica that is ejected or failing its check, and
    /// never fails while one is up (or on probation); ejection happens exactly at the
    /// `eject_after`-th consecutive failure of a replica that is up.
    #[test]
    fn unhealthy_replicas_are_skipped(
        n in 1usize..5,
        ops in prop::collection::vec((0u8..5, 0usize..5, 0u64..400), 1..80),
        eject_after in 1u32..4,
    ) {
        let policy = Policy::round_robin().healthy().eject_after(eject_after).cooldown_ms(500).max_cooldown_ms(2_000);
        let mut r = router(policy, &vec![1; n]);
        let mut now = 0u64;
        let mut streak = vec![0u32; n];
        let mut failing = vec![false; n];
        for (op, target, dt) in ops {
            let t = target % n;
            now += dt;
            match op {
                0 => {
                    let before = r.health(id(t), now).unwrap();
                    let after = r.report_failure(id(t), now).unwrap();
                    streak[t] += 1;
                    match before {
                        Health::Up if streak[t] >= eject_after => {
                            prop_assert!(after != Health::Up && after != Health::Probation, "{:?}", after)
                        }
                        Health::Up => prop_assert_eq!(after, Health::Up),
                        Health::Probation => {
                            let ejected = matches!(after, Health::Ejected { .. });
                            prop_assert!(ejected, "{:?}", after)
                        }
                        other => prop_assert_eq!(after, other),
                    }
                }
                1 => {
                    r.report_success(id(t), now);
                    streak[t] = 0;
                    let expected = if failing[t] { Health::Failing } else { Health::Up };
                    prop_assert_eq!(r.health(id(t), now), Some(expected));
                }
                2 => {
                    r.report_check(id(t), false);
                    failing[t] = true;
                    prop_assert_eq!(r.health(id(t), now), Some(Health::Failing));
                }
                3 => {
                    r.report_check(id(t), true);
                    failing[t] = false;
                }
                _ => {
                    let usable = (0..n).filter(|i| {
                        matches!(r.health(id(*i), now), Some(Health::Up | Health::Probation))
                    }).count();
                    match r.pick(now, None) {
                        Ok(p) => {
                            let health = r.health(p, now);
                            let usable = matches!(health, Some(Health::Up | Health::Probation));
                            prop_assert!(usable, "{:?}", health)
                        }
                        Err(none) => {
                            prop_assert_eq!(usable, 0);
                            prop_assert_eq!(none.unhealthy, n);
                        }
                    }
                }
            }
        }
    }

    /// Lag bounds: a pick never lands on a replica past either bound (or whose lag is
    /// unknown), and fails only when every replica is.
    #[test]
    fn lagging_replicas_are_skipped(
        lags in prop::collection::vec(prop::option::of((0u64..50, 0u64..5_000)), 1..6),
        max_writes in 0u64..50,
        max_ms in 0u64..5_000,
        picks in 1usize..10,
    ) {
        let mut r = router(Policy::weighted().max_lag_writes(max_writes).max_lag_ms(max_ms), &vec![1; lags.len()]);
        for (i, l) in lags.iter().enumerate() {
            if let Some((w, ms)) = l {
                r.set_lag(id(i), lag(*w, *ms));
            }
        }
        let within = |i: usize| lags[i].is_some_and(|(w, ms)| w <= max_writes && ms <= max_ms);
        let fresh = (0..lags.len()).filter(|i| within(*i)).count();
        for _ in 0..picks {
            match r.pick(0, None) {
                Ok(p) => {
                    let i = (0..lags.len()).find(|i| id(*i) == p).unwrap();
                    prop_assert!(within(i), "picked {} with lag {:?}", i, lags[i]);
                }
                Err(none) => {
                    prop_assert_eq!(fresh, 0);
                    prop_assert_eq!(none.lagging, lags.len());
                }
            }
        }
    }

    /// Tokens: a read is never routed to a replica whose context does not include its
    /// token, and is routed whenever one does.
    #[test]
    fn a_token_goes_only_where_it_can_be_served(
        held in prop::collection::vec(dots(), 1..6),
        token in dots(),
        picks in 1usize..10,
    ) {
        let mut r = router(Policy::round_robin(), &vec![1; held.len()]);
        for (i, d) in held.iter().enumerate() {
            r.set_context(id(i), context(d));
        }
        let token = context(&token);
        let able = (0..held.len()).filter(|i| context(&held[*i]).includes(&token)).count();
        for _ in 0..picks {
            match r.pick(0, Some(&token)) {
                Ok(p) => {
                    let ctx = r.replica(p, 0).unwrap().context;
                    prop_assert!(ctx.includes(&token));
                }
                Err(none) => {
                    prop_assert_eq!(able, 0);
                    prop_assert_eq!(none.behind_token, held.len());
                }
            }
        }
    }

    /// Every filter at once, against a model: the pick passes all of them, an error
    /// comes only when no replica does, and its counts add up to the replicas.
    #[test]
    fn composed_filters_agree_with_a_model(
        replicas in prop::collection::vec(
            (0u32..4, prop::option::of((0u64..20, 0u64..2_000)), dots(), any::<bool>()),
            0..6,
        ),
        token in prop::option::of(dots()),
        excluded in 0usize..6,
    ) {
        let weights: Vec<u32> = replicas.iter().map(|r| r.0).collect();
        let mut r = router(Policy::weighted().healthy().max_lag_writes(10).max_lag_ms(1_000), &weights);
        for (i, (_, l, d, failing)) in replicas.iter().enumerate() {
            if let Some((w, ms)) = l {
                r.set_lag(id(i), lag(*w, *ms));
            }
            r.set_context(id(i), context(d));
            r.report_check(id(i), !failing);
        }
        let token = token.map(|t| context(&t));
        let ok = |i: usize| {
            let (w, l, d, failing) = &replicas[i];
            *w > 0
                && !failing
                && l.is_some_and(|(lw, lms)| lw <= 10 && lms <= 1_000)
                && token.as_ref().is_none_or(|t| context(d).includes(t))
                && i != excluded
        };
        let result = r.pick_with(0, token.as_ref(), |info| info.id != id(excluded));
        match result {
            Ok(p) => {
                let i = (0..replicas.len()).find(|i| id(*i) == p).unwrap();
                prop_assert!(ok(i));
            }
            Err(NoReplica { replicas: n, unhealthy, lagging, behind_token, excluded: ex, drained }) => {
                prop_assert!((0..replicas.len()).all(|i| !ok(i)));
                prop_assert_eq!(n, replicas.len());
                prop_assert_eq!(unhealthy + lagging + behind_token + ex + drained, n);
            }
        }
    }
}

#[test]
fn an_empty_router_says_so_and_a_host_can_tell_why() {
    let mut r = Router::new(Policy::weighted().healthy().max_lag_ms(10));
    let none = r.pick(0, None).unwrap_err();
    assert_eq!(none, NoReplica::default());
    assert!(none.to_string().contains("read from the master"));
    r.add(id(0), 1);
    // Lag never reported: not known to be within the bound.
    assert_eq!(r.pick(0, None).unwrap_err().lagging, 1);
    r.set_lag(id(0), lag(0, 5));
    assert_eq!(r.pick(0, None), Ok(id(0)));
    assert!(r.remove(id(0)));
    assert!(!r.remove(id(0)));
    assert!(r.report_failure(id(0), 0).is_none());
}

#[test]
fn late_failures_of_a_replica_whose_check_fails_do_not_extend_its_ejection() {
    let policy = Policy::round_robin()
        .healthy()
        .eject_after(3)
        .cooldown_ms(5_000)
        .max_cooldown_ms(60_000);
    let mut r = router(policy, &[1, 1]);
    let a = id(0);
    r.report_check(a, false);
    // Eight reads that were in flight come back failed.
    for _ in 0..8 {
        r.report_failure(a, 0);
    }
    // The check passes a second later: out for the first cool-down only.
    r.report_check(a, true);
    assert_eq!(
        r.health(a, 1_000),
        Some(Health::Ejected { until_ms: 5_000 })
    );
    assert_eq!(r.health(a, 5_000), Some(Health::Probation));
}

#[test]
fn ejections_back_off_and_a_success_brings_a_replica_back() {
    let policy = Policy::round_robin()
        .healthy()
        .eject_after(2)
        .cooldown_ms(100)
        .max_cooldown_ms(350);
    let mut r = router(policy, &[1, 1]);
    let a = id(0);
    r.report_failure(a, 0);
    assert_eq!(r.health(a, 0), Some(Health::Up));
    assert_eq!(
        r.report_failure(a, 0),
        Some(Health::Ejected { until_ms: 100 })
    );
    assert!((0..4).all(|_| r.pick(50, None) == Ok(id(1))));
    assert_eq!(r.health(a, 100), Some(Health::Probation));
    // One failure on probation: out again, for twice as long, then capped.
    assert_eq!(
        r.report_failure(a, 100),
        Some(Health::Ejected { until_ms: 300 })
    );
    assert_eq!(
        r.report_failure(a, 300),
        Some(Health::Ejected { until_ms: 650 })
    );
    assert_eq!(
        r.report_failure(a, 650),
        Some(Health::Ejected { until_ms: 1_000 })
    );
    // A successful probe while ejected: back at once, and the back-off forgotten.
    r.report_success(a, 700);
    assert_eq!(r.health(a, 700), Some(Health::Up));
    r.report_failure(a, 800);
    assert_eq!(
        r.report_failure(a, 800),
        Some(Health::Ejected { until_ms: 900 })
    );
}

type Settings = OrMap<String, LwwRegister<u32>>;

/// The token filter fed from real engines: a client's token never reaches a replica
/// whose engine could not serve it (`SyncEngine::can_serve`), and reaches it once it
/// can.
#[test]
fn tokens_from_real_engines_route_only_to_replicas_that_can_serve_them() {
    let (a_id, b_id, c_id) = (id(0), id(1), id(2));
    let time = ManualClock::new(1_000);
    let engine = |me, peers: [ReplicaId; 2]| {
        SyncEngine::new(me, Settings::new(), time.clone(), Config::with_peers(peers))
    };
    let mut a = engine(a_id, [b_id, c_id]);
    let mut b = engine(b_id, [a_id, c_id]);
    let mut c = engine(c_id, [a_id, b_id]);
    let mut r = router(Policy::round_robin(), &[1, 1, 1]);

    a.update(|m, hlc| m.write("k".into(), 1, hlc)).unwrap();
    let token = a.token();
    // B gets the write and acknowledges it; C does not.
    let reply = b
        .receive(a.sync_with(b_id).unwrap())
        .unwrap()
        .reply
        .unwrap();
    let _ = a.receive(reply).unwrap();
    r.observe(&a.metrics());
    assert_eq!(r.replica(b_id, 0).unwrap().lag.unwrap().unacked_writes, 0);
    assert_eq!(r.replica(c_id, 0).unwrap().lag.unwrap().unacked_writes, 1);
    for _ in 0..6 {
        let p = r.pick(0, Some(&token)).unwrap();
        assert_ne!(p, c_id);
        let can = [(a_id, &a), (b_id, &b), (c_id, &c)]
            .iter()
            .find(|(i, _)| *i == p)
            .map(|(_, e)| e.can_serve(&token))
            .unwrap();
        assert!(can, "routed to {p:?}, which cannot serve the token");
    }
    // Reads without a token may go anywhere.
    let anywhere: Vec<ReplicaId> = (0..3).map(|_| r.pick(0, None).unwrap()).collect();
    assert!(anywhere.contains(&c_id));
    // C catches up and acknowledges: now it serves the token too.
    let reply = c
        .receive(a.sync_with(c_id).unwrap())
        .unwrap()
        .reply
        .unwrap();
    let _ = a.receive(reply).unwrap();
    assert!(c.can_serve(&token));
    r.observe(&a.metrics());
    let with_token: Vec<ReplicaId> = (0..3).map(|_| r.pick(0, Some(&token)).unwrap()).collect();
    assert!(with_token.contains(&c_id));
}
