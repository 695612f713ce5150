//! The sync engine's specification, one behaviour per test: a session converges in
//! one round trip and reports the race; push, acknowledgement levels and lag; lossy,
//! duplicated and reordered delivery; restart from an older snapshot; followers;
//! typed errors that leave everything as it was; session tokens; metrics.
//!
//! Everything is deterministic: fixed node ids and incarnations, one shared
//! `ManualClock` (or a skewed one where the test is about skew).

use concord::sync::{AckLevel, Config, Message, PeerLag, Role, SyncEngine, PROTOCOL_VERSION};
use concord::{
    Crdt, Dot, Error, Limits, LwwRegister, ManualClock, MvRegister, OrMap, ReplicaId, Resolver,
    Timestamp, VectorClock,
};

type Map = OrMap<String, MvRegister<u8>>;
type Engine<T = Map> = SyncEngine<T, ManualClock>;

const START_MS: u64 = 1_700_000_000_000;

/// Node `n`'s id (`Debug` shows it as `ReplicaId(0000000n)`).
fn node(n: u128) -> ReplicaId {
    ReplicaId::from_u128(n)
}

/// The id of node `n`'s incarnation `i`: `0x1000 * n + i`, so incarnations sort by
/// node, then by incarnation (`ReplicaId(00001001)` is node 1's first).
fn incarnation(n: u128, i: u128) -> ReplicaId {
    ReplicaId::from_u128(0x1000 * n + i)
}

/// Node `n`'s first incarnation, peered with `peers`.
fn config(n: u128, peers: &[u128]) -> Config {
    Config::with_peers(peers.iter().map(|p| node(*p))).incarnation(incarnation(n, 1))
}

fn engine_with<T: Crdt + Default>(n: u128, time: &ManualClock, config: Config) -> Engine<T> {
    SyncEngine::new(node(n), T::default(), time.clone(), config)
}

fn engine(n: u128, peers: &[u128], time: &ManualClock) -> Engine {
    engine_with(n, time, config(n, peers))
}

fn put(e: &mut Engine, key: &str, value: u8) -> Dot {
    e.update(|m, hlc| m.write(key.to_string(), value, hlc))
        .expect("a master accepts writes")
        .dot
        .expect("a write issues a dot")
}

fn values(reg: &MvRegister<u8>) -> Vec<u8> {
    reg.values().copied().collect()
}

/// The siblings at `key` (empty if absent).
fn read(e: &Engine, key: &str) -> Vec<u8> {
    e.state()
        .get(&key.to_string())
        .map(values)
        .unwrap_or_default()
}

/// Runs a full session `from` -> `to` -> `from`; returns the number of messages.
fn session<T: Crdt>(from: &mut Engine<T>, to: &mut Engine<T>) -> usize {
    let hello = from.sync_with(to.node()).expect("peers");
    let answer = to.receive(hello).expect("valid hello");
    let reply = answer.reply.expect("a session asks for an answer");
    let done = from.receive(reply).expect("valid answer");
    assert!(done.reply.is_none(), "an answer is not answered");
    2
}

/// What a rejected message must leave untouched: the state, the version vector, the
/// peers' acknowledged vectors and when they were last heard from, the hybrid logical
/// clock, and the counters of accepted messages and writes.
#[derive(Debug, PartialEq)]
struct Fingerprint<T> {
    state: T,
    clock: VectorClock,
    acked: Vec<(ReplicaId, concord::CausalContext)>,
    lag: Vec<PeerLag>,
    hlc_last: Timestamp,
    received: u64,
    writes: u64,
}

fn fingerprint<T: Crdt>(e: &mut Engine<T>) -> Fingerprint<T> {
    let metrics = e.metrics();
    Fingerprint {
        state: e.state().clone(),
        clock: e.clock(),
        acked: metrics
            .peers
            .iter()
            .map(|p| (p.peer, p.acked.clone()))
            .collect(),
        lag: metrics.peers.iter().map(|p| p.lag).collect(),
        hlc_last: e.snapshot().unwrap().hlc_last,
        received: metrics.messages_received,
        writes: metrics.writes,
    }
}

#[test]
fn one_round_trip_converges_two_diverged_replicas() {
    let time = ManualClock::new(START_MS);
    let mut a = engine(1, &[2], &time);
    let mut b = engine(2, &[1], &time);
    put(&mut a, "only-a", 1);
    put(&mut a, "shared", 10);
    put(&mut b, "only-b", 2);
    put(&mut b, "shared", 20);
    assert_ne!(a.state(), b.state());

    let mut messages = 0;
    let hello = a.sync_with(node(2)).unwrap();
    messages += 1;
    let at_b = b.receive(hello).unwrap();
    let reply = at_b.reply.clone().expect("B answers the session");
    messages += 1;
    let at_a = a.receive(reply).unwrap();
    assert!(at_a.reply.is_none());
    assert_eq!(messages, 2);

    assert_eq!(a.state(), b.state());
    assert_eq!(a.clock(), b.clock());
    assert_eq!(read(&a, "only-a"), [1]);
    assert_eq!(read(&a, "only-b"), [2]);
    // Canonical sibling order is by dot: node 1's incarnation sorts first.
    assert_eq!(read(&a, "shared"), [10, 20]);
    assert_eq!(a.metrics().messages_sent + b.metrics().messages_sent, 2);

    // Each side reports the race on "shared", and only that.
    let a_dot = Dot::new(incarnation(1, 1), 2);
    let b_dot = Dot::new(incarnation(2, 1), 2);
    for (received, ours, theirs, ours_dot, theirs_dot) in
        [(&at_b, 20, 10, b_dot, a_dot), (&at_a, 10, 20, a_dot, b_dot)]
    {
        assert_eq!(received.conflicts.len(), 1, "{:?}", received.conflicts);
        let c = &received.conflicts[0];
        assert_eq!(c.key, "shared");
        assert_eq!(values(&c.ours), [ours]);
        assert_eq!(values(&c.theirs), [theirs]);
        assert_eq!(values(&c.resolved), [10, 20]);
        assert!(c.ours_clock.covers(ours_dot) && !c.ours_clock.covers(theirs_dot));
        assert!(c.theirs_clock.covers(theirs_dot) && !c.theirs_clock.covers(ours_dot));
    }

    // A second session finds nothing to send in either direction.
    let hello = a.sync_with(node(2)).unwrap();
    assert!(hello.delta.is_none(), "{hello:?}");
    let at_b = b.receive(hello).unwrap();
    assert!(at_b.conflicts.is_empty());
    assert!(at_b.reply.as_ref().unwrap().delta.is_none());
}

#[test]
fn push_acknowledgement_levels_and_lag() {
    let time = ManualClock::new(START_MS);
    let mut a = engine(1, &[2, 3], &time);
    let mut b = engine(2, &[1, 3], &time);
    let mut c = engine(3, &[1, 2], &time);

    assert!(a.push().is_empty(), "nothing to push yet");
    let lag = a.lag(node(2)).unwrap();
    assert_eq!(
        (
            lag.unacked_writes,
            lag.oldest_unacked_ms,
            lag.since_heard_ms
        ),
        (0, 0, None)
    );
    assert!(a.lag(node(9)).is_none());

    let first = put(&mut a, "x", 1);
    time.advance(100);
    let second = put(&mut a, "y", 2);
    time.advance(50);
    for peer in [2, 3] {
        let lag = a.lag(node(peer)).unwrap();
        assert_eq!(lag.unacked_writes, 2);
        assert_eq!(lag.oldest_unacked_ms, 150);
        assert_eq!(lag.since_heard_ms, None);
    }
    for dot in [first, second] {
        assert!(a.holders(dot).is_empty());
        assert!(a.is_replicated(dot, AckLevel::None));
        assert!(!a.is_replicated(dot, AckLevel::Peers(1)));
        assert!(!a.is_replicated(dot, AckLevel::All));
    }

    // One message per lagging peer; nothing more until the state changes.
    let pushed = a.push();
    assert_eq!(pushed.len(), 2);
    assert_eq!(
        pushed.iter().map(|m| m.to).collect::<Vec<_>>(),
        [node(2), node(3)]
    );
    assert!(pushed.iter().all(|m| m.reply && m.delta.is_some()));
    assert!(a.push().is_empty());
    let (to_b, to_c) = (pushed[0].clone(), pushed[1].clone());

    // B applies it; the write is held at B only once A hears back.
    let ack = b
        .receive(to_b)
        .unwrap()
        .reply
        .expect("a push asks for an ack");
    assert_eq!(read(&b, "y"), [2]);
    assert!(a.holders(second).is_empty());
    time.advance(20);
    let _ = a.receive(ack).unwrap();
    assert_eq!(a.holders(first), [node(2)]);
    assert_eq!(a.holders(second), [node(2)]);
    assert!(a.is_replicated(second, AckLevel::Peers(1)));
    assert!(!a.is_replicated(second, AckLevel::Peers(2)));
    assert!(!a.is_replicated(second, AckLevel::All));
    let lag_b = a.lag(node(2)).unwrap();
    assert_eq!((lag_b.unacked_writes, lag_b.oldest_unacked_ms), (0, 0));
    assert_eq!(lag_b.since_heard_ms, Some(0));
    time.advance(30);
    assert_eq!(a.lag(node(2)).unwrap().since_heard_ms, Some(30));
    let lag_c = a.lag(node(3)).unwrap();
    assert_eq!(lag_c.unacked_writes, 2);
    assert_eq!(lag_c.oldest_unacked_ms, 200);
    assert_eq!(lag_c.since_heard_ms, None);

    // A third write: B lags by one, C by three; the oldest age is per peer.
    let third = put(&mut a, "z", 3);
    time.advance(5);
    assert_eq!(a.lag(node(2)).unwrap().unacked_writes, 1);
    assert_eq!(a.lag(node(2)).unwrap().oldest_unacked_ms, 5);
    assert_eq!(a.lag(node(3)).unwrap().unacked_writes, 3);
    assert_eq!(a.lag(node(3)).unwrap().oldest_unacked_ms, 205);
    assert!(!a.is_replicated(third, AckLevel::Peers(1)));

    // C receives the stale push and then the fresh one; after both acks, all hold it.
    let ack = c.receive(to_c).unwrap().reply.unwrap();
    let _ = a.receive(ack).unwrap();
    assert_eq!(a.holders(second), [node(2), node(3)]);
    assert!(a.is_replicated(second, AckLevel::All));
    assert!(!a.is_replicated(third, AckLevel::Peers(1)));
    let pushed = a.push();
    assert_eq!(pushed.len(), 2, "both peers lack the third write");
    for msg in pushed {
        let ack = if msg.to == node(2) {
            b.receive(msg).unwrap()
        } else {
            c.receive(msg).unwrap()
        };
        let _ = a.receive(ack.reply.unwrap()).unwrap();
    }
    assert!(a.is_replicated(third, AckLevel::All));
    assert_eq!(a.holders(third), [node(2), node(3)]);
    for peer in [2, 3] {
        let lag = a.lag(node(peer)).unwrap();
        assert_eq!((lag.unacked_writes, lag.oldest_unacked_ms), (0, 0));
    }
    assert_eq!(a.state(), b.state());
    assert_eq!(a.state(), c.state());
    assert!(a.push().is_empty());
}

#[test]
fn reordered_duplicated_and_dropped_messages_converge() {
    let time = ManualClock::new(START_MS);
    let mut a = engine(1, &[2], &time);
    let mut b = engine(2, &[1], &time);

    // Five rounds of writes (overwrites, races, a removal) on both sides, each pushed;
    // some acknowledgements get through, so later pushes carry small deltas.
    let mut to_a: Vec<Message<Map>> = Vec::new();
    let mut to_b: Vec<Message<Map>> = Vec::new();
    for round in 0..5u8 {
        put(&mut a, &format!("a{round}"), round);
        put(&mut a, "hot", round);
        put(&mut b, &format!("b{round}"), 100 + round);
        put(&mut b, "hot", 100 + round);
        if round == 3 {
            a.update(|m, hlc| m.remove(&"a1".to_string(), hlc)).unwrap();
            b.update(|m, hlc| m.remove(&"b0".to_string(), hlc)).unwrap();
        }
        time.advance(10);
        to_b.extend(a.push());
        to_a.extend(b.push());
        if round == 1 {
            // One exchange goes through in order: acknowledgements advance.
            let ack = b.receive(to_b.pop().unwrap()).unwrap().reply.unwrap();
            let _ = a.receive(ack).unwrap();
        }
    }
    assert_eq!(to_b.len() + to_a.len(), 9);
    let expected = {
        let mut s = a.state().clone();
        s.merge(b.state().clone());
        s
    };

    // Deliver in reverse, twice each, dropping every third message and every reply.
    let mut conflicts = 0;
    for (i, msg) in to_b.iter().rev().enumerate() {
        for _ in 0..2 {
            if i % 3 != 0 {
                conflicts += b.receive(msg.clone()).unwrap().conflicts.len();
            }
        }
    }
    for (i, msg) in to_a.iter().rev().enumerate() {
        for _ in 0..2 {
            if i % 3 != 0 {
                conflicts += a.receive(msg.clone()).unwrap().conflicts.len();
            }
        }
    }
    assert!(conflicts > 0, "the races on \"hot\" are reported");
    // The newest pushes were dropped: the replicas have not converged yet.
    assert_ne!(a.state(), b.state());
    assert_ne!(a.state(), &expected);

    // A fresh session heals everything the lost messages carried.
    assert_eq!(session(&mut a, &mut b), 2);
    assert_eq!(a.state(), b.state());
    assert_eq!(a.state(), &expected);
    assert!(read(&a, "a1").is_empty() && read(&a, "b0").is_empty());
    assert_eq!(read(&a, "hot"), [4, 104]);
    for round in 0..5u8 {
        if round != 1 {
            assert_eq!(read(&a, &format!("a{round}")), [round]);
        }
        if round != 0 {
            assert_eq!(read(&a, &format!("b{round}")), [100 + round]);
        }
    }

    // Replaying every old message once more changes nothing.
    let before = a.state().clone();
    for msg in to_a {
        assert!(!a.receive(msg).unwrap().outcome.changed());
    }
    assert_eq!(a.state(), &before);
}

/// Dots the replica `who` issued, up to its current counter.
fn issued(e: &Engine, who: ReplicaId) -> Vec<Dot> {
    (1..=e.state().context().max_counter(who))
        .map(|c| Dot::new(who, c))
        .collect()
}

#[test]
fn restore_from_an_older_snapshot_does_not_reuse_dots() {
    let time = ManualClock::new(START_MS);
    let mut a = engine(1, &[2], &time);
    let mut b = engine(2, &[1], &time);
    // B holds several keys of its own, so that catching A up is a delta, not a full
    // state.
    for i in 0..8 {
        put(&mut b, &format!("b{i}"), i);
    }
    put(&mut a, "k1", 1);
    put(&mut a, "k0", 9);
    session(&mut a, &mut b);
    let snapshot = a.snapshot().unwrap();
    let snapshot_json = serde_json::to_string(&snapshot).unwrap();

    // After the snapshot: a write and an overwrite, replicated to B. (A removal is
    // covered by `a_removal_replicated_before_a_crash_is_not_lost`.)
    put(&mut a, "k2", 2);
    put(&mut a, "k1", 3);
    session(&mut a, &mut b);
    assert_eq!(a.state(), b.state());
    let first_life = a.incarnation();
    let before_crash = issued(&a, first_life);
    assert_eq!(before_crash.len(), 4);

    // Crash: restore the older snapshot as a new incarnation.
    let restored: concord::sync::Snapshot<Map> = serde_json::from_str(&snapshot_json).unwrap();
    assert_eq!(restored, snapshot);
    let mut a = SyncEngine::restore(
        restored,
        time.clone(),
        Config::with_peers([node(2)]).incarnation(incarnation(1, 2)),
    )
    .unwrap();
    assert_eq!(a.node(), node(1));
    assert_eq!(a.incarnation(), incarnation(1, 2));
    assert_eq!(read(&a, "k1"), [1], "the restored state is the old one");

    // A writes again before hearing from anyone: its dots are new to everyone.
    let fresh = put(&mut a, "k3", 4);
    let again = put(&mut a, "k1", 5);
    for dot in [fresh, again] {
        assert_eq!(dot.replica(), incarnation(1, 2));
        assert!(!before_crash.contains(&dot));
        assert!(!b.state().context().contains(dot), "B never saw {dot}");
    }

    // The peers converge, and nothing replicated before the crash is lost.
    session(&mut a, &mut b);
    assert_eq!(a.state(), b.state());
    assert_eq!(read(&a, "k2"), [2]);
    assert_eq!(read(&a, "k3"), [4]);
    // The post-crash write never saw the pre-crash overwrite (3): they raced.
    assert_eq!(read(&a, "k1"), [3, 5]);
    assert_eq!(read(&a, "k0"), [9]);
    for dot in &before_crash {
        assert!(a.state().context().contains(*dot));
    }
}

/// A removal made after a snapshot and acknowledged by every peer survives the
/// remover's crash: the peer no longer has it in its removal log (every peer
/// acknowledged it), yet the restored replica, now below what it acknowledged, must
/// still learn it rather than keep the removed key forever.
#[test]
fn a_removal_replicated_before_a_crash_is_not_lost() {
    let time = ManualClock::new(START_MS);
    let mut a = engine(1, &[2], &time);
    let mut b = engine(2, &[1], &time);
    for i in 0..8 {
        put(&mut b, &format!("b{i}"), i);
    }
    put(&mut a, "doomed", 9);
    session(&mut a, &mut b);
    let snapshot = a.snapshot().unwrap();
    a.update(|m, hlc| m.remove(&"doomed".to_string(), hlc))
        .unwrap();
    session(&mut a, &mut b);
    assert!(read(&b, "doomed").is_empty());

    let config = Config::with_peers([node(2)]).incarnation(incarnation(1, 2));
    let mut a = SyncEngine::restore(snapshot, time.clone(), config).unwrap();
    session(&mut a, &mut b);
    assert!(read(&b, "doomed").is_empty());
    assert_eq!(a.state(), b.state(), "A resurrected \"doomed\"");
}

#[test]
fn restoring_with_an_incarnation_that_already_wrote_is_refused() {
    let time = ManualClock::new(START_MS);
    let mut a = engine(1, &[2], &time);
    put(&mut a, "k", 1);
    let snapshot = a.snapshot().unwrap();
    let err = SyncEngine::restore(snapshot.clone(), time.clone(), config(1, &[2])).unwrap_err();
    assert!(matches!(err, Error::InvalidSnapshot { .. }), "{err:?}");

    // The same holds for a later incarnation once it has written.
    let mut a = SyncEngine::restore(
        snapshot,
        time.clone(),
        Config::with_peers([node(2)]).incarnation(incarnation(1, 2)),
    )
    .unwrap();
    put(&mut a, "k", 2);
    let err = SyncEngine::restore(
        a.snapshot().unwrap(),
        time.clone(),
        Config::with_peers([node(2)]).incarnation(incarnation(1, 2)),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidSnapshot { .. }), "{err:?}");
    // An unused incarnation is fine.
    let a = SyncEngine::restore(
        a.snapshot().unwrap(),
        time.clone(),
        Config::with_peers([node(2)]).incarnation(incarnation(1, 3)),
    )
    .unwrap();
    assert_eq!(read(&a, "k"), [2]);
}

#[test]
fn a_follower_refuses_writes_receives_deltas_and_accepts_writes_once_promoted() {
    let time = ManualClock::new(START_MS);
    let mut a = engine(1, &[2], &time);
    let mut f = engine_with::<Map>(2, &time, config(2, &[1]).follower());
    assert_eq!(f.role(), Role::Follower);

    let before = fingerprint(&mut f);
    let err = f
        .update(|m, hlc| m.write("x".to_string(), 1, hlc))
        .unwrap_err();
    assert_eq!(err, Error::ReadOnly { replica: node(2) });
    assert_eq!(fingerprint(&mut f), before);

    put(&mut a, "x", 7);
    for msg in a.push() {
        let ack = f.receive(msg).unwrap().reply.unwrap();
        let _ = a.receive(ack).unwrap();
    }
    assert_eq!(read(&f, "x"), [7]);
    assert_eq!(f.state(), a.state());
    assert!(
        f.push().is_empty(),
        "a follower has nothing of its own to push"
    );

    assert_eq!(
        f.promote().unwrap(),
        1,
        "the first promotion starts epoch 1"
    );
    assert_eq!(f.role(), Role::Master);
    let dot = f
        .update(|m, hlc| m.write("x".to_string(), 8, hlc))
        .unwrap()
        .dot
        .unwrap();
    assert_eq!(dot.replica(), incarnation(2, 1));
    session(&mut f, &mut a);
    assert_eq!(read(&a, "x"), [8], "the promoted follower's write saw A's");
    assert!(f.is_replicated(dot, AckLevel::All));

    f.demote();
    assert!(matches!(
        f.update(|m, hlc| m.write("y".to_string(), 1, hlc)),
        Err(Error::ReadOnly { .. })
    ));
}

/// Two replicas (1 and 2) that have synced once, with a write of each side pending.
fn synced_pair(time: &ManualClock, b_config: Config) -> (Engine, Engine) {
    let mut a = engine(1, &[2], time);
    let mut b = engine_with(2, time, b_config);
    put(&mut a, "x", 1);
    put(&mut b, "y", 2);
    session(&mut a, &mut b);
    put(&mut a, "x", 3);
    put(&mut b, "z", 4);
    (a, b)
}

/// Asserts that `bytes` is rejected with an error matching `expected` and leaves `b`
/// exactly as it was; then that `b` still takes a valid message.
fn assert_rejected(b: &mut Engine, bytes: &[u8], expected: impl Fn(&Error) -> bool) {
    let before = fingerprint(b);
    let rejected = b.metrics().messages_rejected;
    let err = b.receive_bytes(bytes).unwrap_err();
    assert!(expected(&err), "unexpected error {err:?}");
    assert_eq!(
        fingerprint(b),
        before,
        "state changed by a rejected message ({err})"
    );
    assert_eq!(b.metrics().messages_rejected, rejected + 1);
}

#[test]
fn typed_errors_leave_the_state_unchanged() {
    let time = ManualClock::new(START_MS);
    let (mut a, mut b) = synced_pair(&time, config(2, &[1]));
    let valid = a.sync_with(node(2)).unwrap();

    // Unknown peer: a message from a replica outside the peer set.
    let mut stranger = engine(3, &[2], &time);
    put(&mut stranger, "x", 66);
    let from_stranger = stranger.sync_with(node(2)).unwrap();
    assert_rejected(&mut b, &from_stranger.encode(), |e| {
        *e == Error::UnknownPeer { peer: node(3) }
    });
    assert_eq!(
        b.sync_with(node(3)).unwrap_err(),
        Error::UnknownPeer { peer: node(3) }
    );

    // Unknown version, through the bytes and through a decoded message.
    let mut future = valid.clone();
    future.v = PROTOCOL_VERSION + 1;
    assert_rejected(
        &mut b,
        &future.encode(),
        |e| matches!(e, Error::UnsupportedVersion { version, supported: PROTOCOL_VERSION } if *version == PROTOCOL_VERSION + 1),
    );
    let before = fingerprint(&mut b);
    assert!(matches!(
        b.receive(future),
        Err(Error::UnsupportedVersion { .. })
    ));
    assert_eq!(fingerprint(&mut b), before);

    // A truncated binary message.
    let binary = valid.encode();
    assert_eq!(binary[0], concord::wire::BINARY_MESSAGE);
    assert_rejected(&mut b, &binary[..binary.len() / 2], |e| {
        matches!(e, Error::Decode { .. })
    });

    // Malformed JSON, a wrong shape, and a replica index out of range (the JSON form
    // of the same message: a version-4 engine reads it too).
    let bytes = concord::wire::encode_json(&valid);
    assert_rejected(&mut b, &bytes[..bytes.len() / 2], |e| {
        matches!(e, Error::Decode { .. })
    });
    assert_rejected(&mut b, b"{\"v\":1,\"from\":42}", |e| {
        matches!(e, Error::Decode { .. })
    });
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json["delta"]["c"][0][0] = 99.into();
    assert_rejected(&mut b, json.to_string().as_bytes(), |e| {
        matches!(e, Error::Decode { .. })
    });

    // A misaddressed message, and one claiming to come from the receiver itself.
    let mut misaddressed = valid.clone();
    misaddressed.to = node(3);
    assert_rejected(&mut b, &misaddressed.encode(), |e| {
        matches!(e, Error::InvalidMessage { .. })
    });
    let mut spoofed = valid.clone();
    spoofed.from = node(2);
    assert_rejected(&mut b, &spoofed.encode(), |e| {
        matches!(e, Error::InvalidMessage { .. })
    });

    // An element dot that its context does not name.
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let entry = &mut json["delta"]["e"]["x"][0];
    assert_eq!(entry[1], 2, "x's dot is A's second write: {entry}");
    entry[1] = 77.into();
    assert_rejected(
        &mut b,
        json.to_string().as_bytes(),
        |e| matches!(e, Error::InvalidDot { dot, .. } if *dot == Dot::new(incarnation(1, 1), 77)),
    );

    // None of it broke B: the valid message still applies, and nothing was lost.
    let _ = b.receive(valid).unwrap();
    assert_eq!(read(&b, "x"), [3]);
}

#[test]
fn an_oversized_message_is_refused_before_parsing() {
    let time = ManualClock::new(START_MS);
    let mut small = config(2, &[1]);
    small.max_message_bytes = 512;
    let (mut a, mut b) = synced_pair(&time, small);
    let fits = a.sync_with(node(2)).unwrap();
    assert!(fits.encode().len() <= 512, "{}", fits.encode().len());

    for i in 0..60 {
        put(&mut a, &format!("padding-{i}"), i);
    }
    let big = a.sync_with(node(2)).unwrap().encode();
    assert!(big.len() > 512, "{}", big.len());
    assert_rejected(&mut b, &big, |e| {
        *e == Error::MessageTooLarge {
            size: big.len(),
            limit: 512,
        }
    });
    // Garbage past the limit is refused for its size, not parsed.
    let garbage = vec![b'['; 10_000];
    assert_rejected(&mut b, &garbage, |e| {
        matches!(e, Error::MessageTooLarge { size: 10_000, .. })
    });
    let _ = b.receive_bytes(&fits.encode()).unwrap();
}

#[test]
fn too_many_clock_entries_are_refused() {
    let time = ManualClock::new(START_MS);
    let mut narrow = config(2, &[1]);
    narrow.max_clock_entries = 1;
    let (mut a, mut b) = synced_pair(&time, narrow);
    let msg = a.sync_with(node(2)).unwrap();
    assert_eq!(msg.seen.replicas().count(), 2);
    assert_rejected(&mut b, &msg.encode(), |e| {
        matches!(
            e,
            Error::TooManyEntries {
                count: 2,
                limit: 1,
                ..
            }
        )
    });
}

#[test]
fn too_many_siblings_are_refused() {
    let time = ManualClock::new(START_MS);
    let mut a = engine(1, &[2, 3], &time);
    let mut c = engine(3, &[1, 2], &time);
    let mut capped = config(2, &[1, 3]);
    capped.limits = Limits {
        max_siblings: 2,
        ..Limits::default()
    };
    let mut b = engine_with::<Map>(2, &time, capped);

    // A and C race on "k" and A learns both siblings; B races too.
    put(&mut a, "k", 1);
    put(&mut c, "k", 3);
    session(&mut a, &mut c);
    assert_eq!(read(&a, "k"), [1, 3]);
    put(&mut b, "k", 2);
    put(&mut b, "other", 0);

    let msg = a.sync_with(node(2)).unwrap();
    assert_rejected(&mut b, &msg.encode(), |e| {
        *e == Error::TooManySiblings { count: 3, cap: 2 }
    });
    assert_eq!(read(&b, "k"), [2]);

    // Two siblings are within the cap.
    let mut d = engine(1, &[2], &time);
    put(&mut d, "k", 1);
    let msg = d.sync_with(node(2)).unwrap();
    let _ = b.receive(msg).unwrap();
    assert_eq!(read(&b, "k"), [1, 2]);
}

#[test]
fn a_timestamp_past_the_max_offset_is_refused() {
    type Lww = OrMap<String, LwwRegister<u8>>;
    let time = ManualClock::new(START_MS);
    let fast = ManualClock::new(START_MS + 10_000);
    let mut b: Engine<Lww> = engine_with(2, &time, config(2, &[1]));
    b.update(|m, hlc| m.write("mine".to_string(), 1, hlc))
        .unwrap();
    let mut a: Engine<Lww> = engine_with(1, &fast, config(1, &[2]));
    a.update(|m, hlc| m.write("k".to_string(), 9, hlc)).unwrap();

    let msg = a.sync_with(node(2)).unwrap();
    let before = fingerprint(&mut b);
    let err = b.receive_bytes(&msg.encode()).unwrap_err();
    assert_eq!(
        err,
        Error::ClockDrift {
            ahead_ms: 10_000,
            max_offset_ms: 500
        }
    );
    assert_eq!(fingerprint(&mut b), before);
    // B's clock did not jump: its next write is stamped with its own time.
    let ts = {
        b.update(|m, hlc| m.write("mine".to_string(), 2, hlc))
            .unwrap();
        b.state()
            .get(&"mine".to_string())
            .unwrap()
            .timestamp()
            .unwrap()
    };
    assert_eq!(ts.wall_ms(), START_MS);

    // Once the clocks agree within the offset, the same write is accepted.
    time.set(START_MS + 9_600);
    let _ = b.receive(msg).unwrap();
    assert_eq!(b.state().value(&"k".to_string()), Some(&9));
}

#[test]
fn a_session_token_is_served_only_once_caught_up() {
    let time = ManualClock::new(START_MS);
    let mut a = engine(1, &[2], &time);
    let mut b = engine(2, &[1], &time);
    put(&mut b, "seen-by-both", 1);
    session(&mut a, &mut b);

    put(&mut a, "x", 1);
    put(&mut a, "y", 2);
    let token = a.token();
    assert!(a.can_serve(&token));
    assert!(a.read(&token).is_ok());
    assert!(!b.can_serve(&token));
    assert_eq!(
        b.read(&token).unwrap_err(),
        Error::NotCaughtUp { missing: 2 }
    );
    // B's own token is not served by A (monotonic reads across replicas).
    put(&mut b, "z", 3);
    let b_token = b.token();
    assert_eq!(
        a.read(&b_token).unwrap_err(),
        Error::NotCaughtUp { missing: 1 }
    );

    session(&mut b, &mut a);
    let state = b.read(&token).expect("caught up");
    assert_eq!(state.get(&"y".to_string()).map(values), Some(vec![2]));
    assert!(a.read(&b_token).is_ok());
    // A token survives the wire (it is a version vector).
    let json = serde_json::to_string(&token).unwrap();
    assert!(b.can_serve(&serde_json::from_str(&json).unwrap()));
}

#[test]
fn metrics_serialize_to_json() {
    let time = ManualClock::new(START_MS);
    let mut a = engine(1, &[2, 3], &time);
    let mut b = engine(2, &[1, 3], &time);
    put(&mut a, "x", 1);
    put(&mut b, "x", 2);
    session(&mut a, &mut b);
    put(&mut a, "y", 3);
    time.advance(40);

    let metrics = a.metrics();
    let json = serde_json::to_value(&metrics).unwrap();
    assert_eq!(json["node"], node(1).to_string());
    assert_eq!(json["incarnation"], incarnation(1, 1).to_string());
    assert_eq!(json["role"], "Master");
    assert_eq!(json["writes"], 2);
    assert_eq!(json["messages_sent"], 1);
    assert_eq!(json["messages_received"], 1);
    assert_eq!(json["messages_rejected"], 0);
    assert_eq!(json["conflicts_resolved"], 1);
    let peers = json["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0]["peer"], node(2).to_string());
    assert_eq!(peers[0]["lag"]["unacked_writes"], 1);
    assert_eq!(peers[0]["lag"]["oldest_unacked_ms"], 40);
    assert_eq!(peers[0]["lag"]["since_heard_ms"], 40);
    assert_eq!(peers[1]["lag"]["unacked_writes"], 2);
    assert_eq!(peers[1]["lag"]["since_heard_ms"], serde_json::Value::Null);
    let back: concord::sync::Metrics = serde_json::from_value(json).unwrap();
    assert_eq!(back, metrics);
}

/// A write that changes nothing (removing an absent key) issues no dot, and says so.
#[test]
fn a_write_that_changes_nothing_has_no_dot() {
    let time = ManualClock::new(1_000);
    let mut a: Engine = engine(1, &[2], &time);
    let receipt = a
        .update(|m, hlc| m.remove(&"absent".to_string(), hlc))
        .unwrap();
    assert_eq!(receipt.dot, None);
    let dot = put(&mut a, "x", 1);
    assert_eq!(dot, Dot::new(incarnation(1, 1), 1));
}

/// The write closure may fail with an error type of the application's own (the
/// engine's refusal converts into it); a write it completed before failing stays in
/// the state, and is counted, timed for lag and replicated like any other.
#[test]
fn an_application_error_after_a_write_keeps_the_write_and_its_bookkeeping() {
    #[derive(Debug, PartialEq)]
    enum AppError {
        Rejected,
        Concord(Error),
    }
    impl From<Error> for AppError {
        fn from(e: Error) -> Self {
            AppError::Concord(e)
        }
    }

    let time = ManualClock::new(START_MS);
    let mut a = engine(1, &[2], &time);
    let mut b = engine(2, &[1], &time);
    let err = a
        .update(|m, hlc| {
            m.write("x".to_string(), 1, hlc)?;
            Err::<(), _>(AppError::Rejected)
        })
        .unwrap_err();
    assert_eq!(err, AppError::Rejected);
    assert_eq!(read(&a, "x"), [1]);
    assert_eq!(a.metrics().writes, 1);
    time.advance(40);
    assert_eq!(
        a.lag(node(2)),
        Some(PeerLag {
            unacked_writes: 1,
            oldest_unacked_ms: 40,
            since_heard_ms: None
        })
    );
    session(&mut a, &mut b);
    assert_eq!(read(&b, "x"), [1]);

    a.demote();
    let refused = a.update(|m, hlc| m.write("y".to_string(), 2, hlc).map_err(AppError::from));
    assert_eq!(
        refused.unwrap_err(),
        AppError::Concord(Error::ReadOnly { replica: node(1) })
    );
}

/// Open membership admits new replicas up to `max_peers`; the next one is refused and
/// nothing changes.
#[test]
fn open_membership_is_capped() {
    let time = ManualClock::new(1_000);
    let config = Config {
        max_peers: 2,
        ..config(1, &[]).open()
    };
    let mut hub: Engine = engine_with(1, &time, config);
    for n in 2..=3 {
        let mut spoke: Engine = engine(n, &[1], &time);
        put(&mut spoke, "x", n as u8);
        let _ = hub.receive(spoke.sync_with(node(1)).unwrap()).unwrap();
    }
    assert_eq!(hub.peers().count(), 2);
    let mut extra: Engine = engine(4, &[1], &time);
    put(&mut extra, "y", 4);
    let before = (hub.state().clone(), hub.clock());
    let err = hub.receive(extra.sync_with(node(1)).unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::TooManyEntries { what: "peers", .. }),
        "{err:?}"
    );
    assert_eq!((hub.state().clone(), hub.clock()), before);
    assert_eq!(hub.peers().count(), 2);
}
