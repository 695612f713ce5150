//! The fencing rules of master–follower mode, one at a time: epochs, the master
//! lease, what is refused (typed, with the state unchanged), hostile epochs, and
//! multi-master mode left exactly as it was.

use concord::hlc::TimeSource;
use concord::sync::{
    AckLevel, Config, FenceRecord, LeaseStore, MemoryLease, Message, Role, SyncEngine, MAX_EPOCH,
};
use concord::{Error, LwwRegister, ManualClock, OrMap, ReplicaId};

type Settings = OrMap<String, LwwRegister<u32>>;
type Engine = SyncEngine<Settings, ManualClock>;

const LEASE: u64 = 2_000;

fn id(n: u128) -> ReplicaId {
    ReplicaId::from_u128(n)
}

/// Nodes 1..=n in master–follower mode; node 1 the master.
fn cluster(n: u128, time: &ManualClock) -> Vec<Engine> {
    (1..=n)
        .map(|i| {
            let mut config = Config::with_peers((1..=n).filter(|p| *p != i).map(id))
                .master_follower(LEASE)
                .incarnation(id(100 + i));
            if i > 1 {
                config = config.follower();
            }
            config.validate().unwrap();
            SyncEngine::new(id(i), Settings::new(), time.clone(), config)
        })
        .collect()
}

/// Delivers every message among the engines whose index `up` allows, until quiet.
fn exchange(engines: &mut [Engine], up: impl Fn(usize) -> bool) {
    for _ in 0..100 {
        let mut busy = false;
        for i in 0..engines.len() {
            if !up(i) {
                continue;
            }
            while let Some(t) = engines[i].poll_transmit() {
                let to = engines.iter().position(|e| e.node() == t.to).unwrap();
                if up(to) {
                    let _ = engines[to].handle_bytes(&t.bytes).unwrap();
                    busy = true;
                }
            }
        }
        if !busy {
            return;
        }
    }
    panic!("the engines did not settle");
}

fn set(e: &mut Engine, key: &str, v: u32) -> Result<(), Error> {
    e.update(|m, hlc| m.write(key.to_string(), v, hlc))
        .map(|_| ())
}

/// A promoted master waits for a majority in its epoch and then a lease and a
/// quarter; the old master, cut off, loses its lease; when it returns it hears of the
/// new epoch, steps down, and its writes still replicate.
#[test]
fn promotion_waits_out_the_old_lease_and_the_old_master_steps_down() {
    let time = ManualClock::new(1_000_000);
    let mut e = cluster(3, &time);
    exchange(&mut e, |_| true);
    set(&mut e[0], "a", 1).unwrap();
    exchange(&mut e, |_| true);
    // Node 1 is cut off.
    time.advance(LEASE);
    assert!(matches!(
        set(&mut e[0], "b", 2),
        Err(Error::NoQuorum {
            answered: 1,
            needed: 2,
            ..
        })
    ));
    assert_eq!(e[1].promote().unwrap(), 1);
    // No majority in epoch 1 yet.
    assert!(matches!(
        set(&mut e[1], "c", 3),
        Err(Error::NoQuorum { answered: 1, .. })
    ));
    assert!(matches!(e[1].writable(), Err(Error::NoQuorum { .. })));
    exchange(&mut e, |i| i != 0);
    let started = time.now();
    let until = match set(&mut e[1], "c", 3) {
        Err(Error::FencingWait {
            until_ms: Some(t), ..
        }) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(until, started + LEASE + LEASE / 4);
    time.set(until - 1);
    e[1].handle_timeout();
    exchange(&mut e, |i| i != 0);
    assert!(matches!(
        set(&mut e[1], "c", 3),
        Err(Error::FencingWait { .. })
    ));
    time.set(until);
    set(&mut e[1], "c", 3).unwrap();
    // Node 1 returns: everything converges, and it is a deposed follower of epoch 1.
    exchange(&mut e, |_| true);
    time.advance(1_000);
    for x in e.iter_mut() {
        x.handle_timeout();
    }
    exchange(&mut e, |_| true);
    assert_eq!(
        (e[0].role(), e[0].epoch(), e[0].leader()),
        (Role::Follower, 1, Some(id(2)))
    );
    assert!(matches!(
        set(&mut e[0], "d", 4),
        Err(Error::Deposed { epoch: 1, .. })
    ));
    assert_eq!(e[0].state(), e[1].state());
    assert_eq!(e[2].state().value("a"), Some(&1));
    assert_eq!(e[2].state().value("c"), Some(&3));
}

/// A delta sent in an older epoch is refused whole, typed, with nothing changed; an
/// acknowledgement of an older epoch is taken (it is true); once the sender takes the
/// new epoch its writes flow.
#[test]
fn a_delta_of_an_older_epoch_is_refused_and_flows_once_the_sender_catches_up() {
    let time = ManualClock::new(1_000_000);
    let mut e = cluster(2, &time);
    let hello = e[1].sync_with(id(1)).unwrap();
    let answer = e[0].receive(hello).unwrap().reply.unwrap();
    // The follower supports the master and echoes its send time: the lease.
    let echo = e[1].receive(answer).unwrap().reply.expect("an echo");
    assert_eq!(e[1].leader(), Some(id(1)));
    assert!(echo.echo.is_some());
    let _ = e[0].receive(echo).unwrap();
    set(&mut e[0], "a", 1).unwrap();
    let stale = e[0].sync_with(id(2)).unwrap(); // epoch 0, with the write
    assert_eq!(e[1].promote().unwrap(), 1);
    let before = (
        e[1].state().clone(),
        e[1].epoch(),
        e[1].metrics().messages_received,
    );
    assert_eq!(
        e[1].receive(stale),
        Err(Error::StaleEpoch {
            from: id(1),
            epoch: 0,
            current: 1
        })
    );
    assert_eq!(
        (
            e[1].state().clone(),
            e[1].epoch(),
            e[1].metrics().messages_received
        ),
        before
    );
    // Node 2's message (epoch 1) deposes node 1, whose next message carries the write.
    let news = e[1].sync_with(id(1)).unwrap();
    let reply = e[0].receive(news).unwrap().reply.unwrap();
    assert_eq!((e[0].role(), e[0].epoch()), (Role::Follower, 1));
    assert_eq!(reply.epoch, 1);
    let _ = e[1].receive(reply).unwrap();
    assert_eq!(e[1].state().value("a"), Some(&1));
}

/// A replica supports one master per epoch: of two masters promoted at the same
/// epoch (two operators, say), only the first one a majority hears gets a lease.
#[test]
fn one_master_per_epoch_even_when_two_are_promoted_at_the_same_one() {
    let time = ManualClock::new(1_000_000);
    let mut e = cluster(3, &time);
    e[0].demote();
    e[0].promote_at(5).unwrap();
    e[1].promote_at(5).unwrap();
    // Node 3 hears node 1 first, then node 2.
    for from in [0, 1] {
        let msg = e[from].sync_with(id(3)).unwrap();
        let reply = e[2].receive(msg).unwrap().reply.unwrap();
        let _ = e[from].receive(reply).unwrap();
    }
    assert_eq!(e[2].leader(), Some(id(1)));
    assert!(matches!(
        e[0].writable(),
        Err(Error::FencingWait {
            until_ms: Some(_),
            ..
        })
    ));
    assert!(matches!(
        e[1].writable(),
        Err(Error::NoQuorum {
            answered: 1,
            needed: 2,
            ..
        })
    ));
    // The two masters hear each other: neither supports the other.
    let msg = e[0].sync_with(id(2)).unwrap();
    let reply = e[1].receive(msg).unwrap().reply.unwrap();
    let _ = e[0].receive(reply).unwrap();
    assert!(matches!(e[1].writable(), Err(Error::NoQuorum { .. })));
    time.advance(LEASE + LEASE / 4);
    let msg = e[0].sync_with(id(3)).unwrap();
    let reply = e[2].receive(msg).unwrap().reply.unwrap();
    let _ = e[0].receive(reply).unwrap();
    set(&mut e[0], "x", 1).unwrap();
    assert!(set(&mut e[1], "x", 2).is_err());
}

/// Hostile epochs: too far ahead, or past `MAX_EPOCH` (`u64::MAX` included), are
/// refused with a typed error, nothing changed; a promotion to an epoch not above
/// the current one is refused too.
#[test]
fn hostile_epochs_are_refused_and_change_nothing() {
    let time = ManualClock::new(1_000_000);
    let mut e = cluster(2, &time);
    assert!(matches!(
        set(&mut e[0], "a", 1),
        Err(Error::NoQuorum { .. })
    ));
    let honest = e[0].sync_with(id(2)).unwrap();
    for epoch in [u64::MAX, MAX_EPOCH + 1, (1 << 20) + 1] {
        let msg = Message {
            epoch,
            ..honest.clone()
        };
        let before = (
            e[1].state().clone(),
            e[1].epoch(),
            e[1].role(),
            e[1].leader(),
        );
        assert!(
            matches!(e[1].receive(msg.clone()), Err(Error::InvalidEpoch { epoch: x, .. }) if x == epoch)
        );
        assert!(matches!(
            e[1].handle_bytes(&msg.encode()),
            Err(Error::InvalidEpoch { .. })
        ));
        assert_eq!(
            (
                e[1].state().clone(),
                e[1].epoch(),
                e[1].role(),
                e[1].leader()
            ),
            before
        );
    }
    // Within the bound it is taken: a node may have slept through many failovers.
    let msg = Message {
        epoch: 1 << 20,
        ..honest
    };
    let _ = e[1].receive(msg).unwrap();
    assert_eq!(e[1].epoch(), 1 << 20);
    assert!(matches!(
        e[1].promote_at(1 << 20),
        Err(Error::InvalidEpoch { .. })
    ));
    assert!(matches!(
        e[1].promote_at(u64::MAX),
        Err(Error::InvalidEpoch { .. })
    ));
    assert!(matches!(
        e[1].fence(u64::MAX),
        Err(Error::InvalidEpoch { .. })
    ));
    assert_eq!(e[1].promote().unwrap(), (1 << 20) + 1);
}

/// In master–follower mode messages of versions 1 and 2 (which carry no epoch) are
/// refused, and the engine speaks version 3 from its first message.
#[test]
fn master_follower_mode_speaks_version_3_only() {
    let time = ManualClock::new(1_000_000);
    let mut e = cluster(2, &time);
    let hello = e[0].sync_with(id(2)).unwrap();
    assert_eq!(hello.v, 3);
    let old = Message { v: 2, ..hello };
    assert!(matches!(
        e[1].receive(old),
        Err(Error::UnsupportedVersion { version: 2, .. })
    ));
    let bad = Config::default().master_follower(LEASE).protocol_version(2);
    assert!(matches!(bad.validate(), Err(Error::InvalidConfig { .. })));
    let bad = Config::default().master_follower(100); // below two heartbeats
    assert!(matches!(bad.validate(), Err(Error::InvalidConfig { .. })));
    let bad = Config::default().master_follower(LEASE).open();
    assert!(matches!(bad.validate(), Err(Error::InvalidConfig { .. })));
}

/// Multi-master mode (the default) ignores epochs: a message of a newer epoch changes
/// nothing of the receiver's epoch or role, one of an older epoch is not refused, and
/// no lease holds writes back.
#[test]
fn multi_master_mode_ignores_epochs() {
    let time = ManualClock::new(1_000_000);
    let config = |me: u128, peer: u128| Config::with_peers([id(peer)]).incarnation(id(100 + me));
    let mut a = SyncEngine::new(id(1), Settings::new(), time.clone(), config(1, 2));
    let mut b = SyncEngine::new(id(2), Settings::new(), time.clone(), config(2, 1));
    set(&mut a, "x", 1).unwrap(); // no lease, no quorum needed
    assert_eq!(b.promote().unwrap(), 1);
    set(&mut b, "y", 2).unwrap();
    let msg = b.sync_with(id(1)).unwrap();
    let far = Message {
        epoch: u64::MAX,
        ..msg
    };
    let reply = a.receive(far).unwrap().reply.unwrap();
    assert_eq!((a.epoch(), a.role(), a.leader()), (0, Role::Master, None));
    set(&mut a, "z", 3).unwrap();
    let _ = b.receive(reply).unwrap(); // epoch 0 < 1: not refused
    assert_eq!(a.state().value("y"), Some(&2));
    assert_eq!(b.state().value("x"), Some(&1));
    // Its messages carry no lease fields, and epoch 0 is left out of the encoding.
    let msg = a.sync_with(id(2)).unwrap();
    assert_eq!((msg.v, msg.epoch, msg.lead, msg.echo), (4, 0, None, None));
    let bytes = String::from_utf8(concord::wire::encode_json(&msg)).unwrap();
    assert!(bytes.starts_with(r#"{"v":4,"#), "{bytes}");
    for field in [r#""epoch""#, r#""lead""#, r#""echo""#] {
        assert!(!bytes.contains(field), "{bytes}");
    }
}

/// `AckLevel::Quorum`: a majority of the replicas, this one included.
#[test]
fn quorum_ack_level_counts_a_majority_including_self() {
    let time = ManualClock::new(1_000_000);
    let ids: Vec<ReplicaId> = (1..=5).map(id).collect();
    let mut engines: Vec<Engine> = ids
        .iter()
        .map(|me| {
            let peers = ids.iter().copied().filter(|p| p != me);
            SyncEngine::new(
                *me,
                Settings::new(),
                time.clone(),
                Config::with_peers(peers),
            )
        })
        .collect();
    let dot = engines[0]
        .update(|m, hlc| m.write("x".into(), 1, hlc))
        .unwrap()
        .dot
        .unwrap();
    assert_eq!(engines[0].quorum(), 3);
    for k in 1..=4 {
        let msg = engines[0].sync_with(ids[k]).unwrap();
        let reply = engines[k].receive(msg).unwrap().reply.unwrap();
        let _ = engines[0].receive(reply).unwrap();
        // k peers + the writer hold it: a quorum from two peers on.
        assert_eq!(
            engines[0].is_replicated(dot, AckLevel::Quorum),
            k >= 2,
            "{k} peers"
        );
    }
}

/// Epoch and supported master survive a snapshot; a master restored from one waits
/// out a lease again before writing (it may have been promoted just before a crash).
#[test]
fn epoch_and_leader_survive_restarts_and_a_restored_master_waits_again() {
    let time = ManualClock::new(1_000_000);
    let mut e = cluster(3, &time);
    e[1].promote_at(3).unwrap();
    exchange(&mut e, |_| true);
    let snapshot = e[1].snapshot().unwrap();
    assert_eq!((snapshot.epoch, snapshot.leader), (3, Some(id(2))));
    let follower = e[2].snapshot().unwrap();
    assert_eq!((follower.epoch, follower.leader), (3, Some(id(2))));
    let json = serde_json::to_string(&snapshot).unwrap();
    let config = e[1].config().clone().incarnation(id(900));
    let restored: Engine =
        SyncEngine::restore(serde_json::from_str(&json).unwrap(), time.clone(), config).unwrap();
    assert_eq!(
        (restored.epoch(), restored.leader(), restored.role()),
        (3, Some(id(2)), Role::Master)
    );
    e[1] = restored;
    exchange(&mut e, |_| true);
    assert!(matches!(
        e[1].writable(),
        Err(Error::FencingWait {
            until_ms: Some(_),
            ..
        })
    ));
}

/// Three nodes with counter leases (lease 1,000 ms): node 1 the master.
fn leased_cluster(time: &ManualClock) -> (Vec<Engine>, Vec<MemoryLease>) {
    let leases: Vec<MemoryLease> = (0..3).map(|_| MemoryLease::new()).collect();
    let engines = (1..=3u128)
        .map(|i| {
            let engine = SyncEngine::new(
                id(i),
                Settings::new(),
                time.clone(),
                short_lease_config(i, 0),
            );
            engine.with_lease(leases[i as usize - 1].clone()).unwrap()
        })
        .collect();
    (engines, leases)
}

const SHORT_LEASE: u64 = 1_000;

/// Node `i`'s configuration in a three-node cluster with a 1,000 ms lease, with a
/// fresh incarnation id per `boot`.
fn short_lease_config(i: u128, boot: u128) -> Config {
    let config = Config::with_peers((1..=3).filter(|p| *p != i).map(id))
        .heartbeat_ms(400)
        .master_follower(SHORT_LEASE)
        .incarnation(id(100 * (boot + 1) + i));
    config.validate().unwrap();
    if i > 1 {
        config.follower()
    } else {
        config
    }
}

/// One round trip: `from` sends to `to` (which answers), ignoring refusals.
fn round_trip(e: &mut [Engine], from: usize, to: usize) {
    let msg = e[from].sync_with(e[to].node()).unwrap();
    if let Ok(received) = e[to].receive(msg) {
        if let Some(reply) = received.reply {
            let _ = e[from].receive(reply);
        }
    }
}

/// The review's split brain: a follower that supported the new master crashes and
/// comes back from a snapshot taken before it did. Its lease store recorded the epoch
/// and the master it supports before it echoed that master, so it comes back in the
/// new epoch, refuses to support the old master, and deposes it.
#[test]
fn a_follower_restored_from_an_older_snapshot_never_supports_two_masters() {
    let time = ManualClock::new(1_000_000);
    let (mut e, leases) = leased_cluster(&time);
    exchange(&mut e, |_| true);
    set(&mut e[0], "a", 1).unwrap();
    exchange(&mut e, |_| true);
    let c_old = e[2].snapshot().unwrap();
    assert_eq!((c_old.epoch, c_old.leader), (0, Some(id(1))));
    // A is cut off; B is promoted, C supports it, B waits out the lease and writes.
    time.advance(SHORT_LEASE);
    assert_eq!(e[1].promote().unwrap(), 1);
    round_trip(&mut e, 1, 2);
    assert_eq!(e[2].leader(), Some(id(2)));
    time.advance(SHORT_LEASE + SHORT_LEASE / 4);
    round_trip(&mut e, 1, 2);
    set(&mut e[1], "b", 2).unwrap();
    // C crashes and restores the old snapshot, with its lease store.
    let restored = SyncEngine::restore(c_old, time.clone(), short_lease_config(3, 1))
        .unwrap()
        .with_lease(leases[2].clone())
        .unwrap();
    e[2] = restored;
    // A reaches C (not B), twice over: C does not echo it, and A steps down.
    round_trip(&mut e, 0, 2);
    round_trip(&mut e, 0, 2);
    e[1].writable().unwrap();
    assert!(
        e[0].writable().is_err(),
        "two masters take writes: A {:?}, B {:?}",
        e[0].writable(),
        e[1].writable()
    );
    assert!(set(&mut e[0], "x", 1).is_err());
    assert!(matches!(
        e[0].writable(),
        Err(Error::Deposed { epoch: 1, .. })
    ));
    set(&mut e[1], "x", 2).unwrap();
    assert_eq!((e[2].epoch(), e[2].leader()), (1, Some(id(2))));
}

/// Two promotions to the same epoch: a follower that supported the first and comes
/// back from an older snapshot does not support the second.
#[test]
fn a_restored_follower_does_not_support_a_second_master_of_its_epoch() {
    let time = ManualClock::new(1_000_000);
    let (mut e, leases) = leased_cluster(&time);
    let c_old = e[2].snapshot().unwrap();
    e[0].demote();
    e[0].promote_at(5).unwrap();
    e[1].promote_at(5).unwrap();
    round_trip(&mut e, 0, 2);
    assert_eq!(e[2].leader(), Some(id(1)));
    let restored = SyncEngine::restore(c_old, time.clone(), short_lease_config(3, 1))
        .unwrap()
        .with_lease(leases[2].clone())
        .unwrap();
    e[2] = restored;
    round_trip(&mut e, 1, 2);
    round_trip(&mut e, 1, 2);
    // Node 2 gets no majority in epoch 5 (before the fix: a fencing wait, with C).
    assert!(matches!(
        e[1].writable(),
        Err(Error::NoQuorum {
            answered: 1,
            needed: 2,
            ..
        })
    ));
    assert_eq!((e[2].epoch(), e[2].leader()), (5, Some(id(1))));
}

/// A deposed master restarted (from a snapshot taken before or after it stepped
/// down) still reports `Deposed`, not `ReadOnly` or a master: the lease store kept it.
#[test]
fn a_deposed_master_stays_deposed_across_a_restart() {
    let time = ManualClock::new(1_000_000);
    let (mut e, leases) = leased_cluster(&time);
    exchange(&mut e, |_| true);
    let before = e[0].snapshot().unwrap();
    assert_eq!(e[1].promote().unwrap(), 1);
    round_trip(&mut e, 1, 0);
    assert!(matches!(
        e[0].writable(),
        Err(Error::Deposed { epoch: 1, .. })
    ));
    let after = e[0].snapshot().unwrap();
    for (boot, snapshot) in [(1, before), (2, after)] {
        let restored: Engine =
            SyncEngine::restore(snapshot, time.clone(), short_lease_config(1, boot))
                .unwrap()
                .with_lease(leases[0].clone())
                .unwrap();
        assert_eq!(
            (restored.role(), restored.epoch(), restored.leader()),
            (Role::Follower, 1, Some(id(2)))
        );
        assert!(
            matches!(restored.writable(), Err(Error::Deposed { epoch: 1, .. })),
            "{:?}",
            restored.writable()
        );
    }
}

/// A time source whose wall clock is set by hand (it may step) and whose monotonic
/// clock only advances.
#[derive(Clone, Debug)]
struct SteppingClock {
    wall: ManualClock,
    mono: ManualClock,
}

impl SteppingClock {
    fn new() -> Self {
        SteppingClock {
            wall: ManualClock::new(1_000_000),
            mono: ManualClock::new(5_000),
        }
    }

    /// Real time passes: both clocks advance.
    fn advance(&self, ms: u64) {
        self.wall.advance(ms);
        self.mono.advance(ms);
    }
}

impl TimeSource for SteppingClock {
    fn now_ms(&self) -> u64 {
        self.wall.now()
    }

    fn monotonic_ms(&self) -> u64 {
        self.mono.now()
    }
}

type SteppingEngine = SyncEngine<Settings, SteppingClock>;

fn stepping_cluster(time: &SteppingClock) -> Vec<SteppingEngine> {
    (1..=3u128)
        .map(|i| {
            SyncEngine::new(
                id(i),
                Settings::new(),
                time.clone(),
                short_lease_config(i, 0),
            )
        })
        .collect()
}

/// `round_trip` for engines on any time source.
fn round_trip_on<S: TimeSource>(e: &mut [SyncEngine<Settings, S>], from: usize, to: usize) {
    let msg = e[from].sync_with(e[to].node()).unwrap();
    if let Ok(received) = e[to].receive(msg) {
        if let Some(reply) = received.reply {
            let _ = e[from].receive(reply);
        }
    }
}

/// The lease runs on monotonic time: a cut-off master whose wall clock steps back
/// loses its lease when a lease of real time has passed.
#[test]
fn a_wall_clock_stepping_back_does_not_extend_a_lease() {
    let time = SteppingClock::new();
    let mut e = stepping_cluster(&time);
    round_trip_on(&mut e, 0, 1);
    round_trip_on(&mut e, 0, 2);
    e[0].writable().unwrap();
    // Cut off; a lease of real time passes while the wall clock is set back 10 s.
    time.advance(SHORT_LEASE);
    time.wall.set(time.wall.now() - 10_000);
    assert!(matches!(
        e[0].writable(),
        Err(Error::NoQuorum { answered: 1, .. })
    ));
    assert!(e[0].update(|m, hlc| m.write("x".into(), 1, hlc)).is_err());
}

/// A promoted master waits out the old lease on monotonic time: its wall clock
/// stepping forward an hour does not end the wait.
#[test]
fn a_wall_clock_stepping_forward_does_not_end_the_fencing_wait() {
    let time = SteppingClock::new();
    let mut e = stepping_cluster(&time);
    assert_eq!(e[1].promote().unwrap(), 1);
    round_trip_on(&mut e, 1, 2);
    e[1].handle_timeout();
    let until = match e[1].writable() {
        Err(Error::FencingWait {
            until_ms: Some(t), ..
        }) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(until, time.mono.now() + SHORT_LEASE + SHORT_LEASE / 4);
    time.wall.advance(3_600_000);
    time.mono.advance(10);
    round_trip_on(&mut e, 1, 2);
    e[1].handle_timeout();
    assert!(
        matches!(e[1].writable(), Err(Error::FencingWait { .. })),
        "{:?}",
        e[1].writable()
    );
    // Once the wait has passed in real time, it writes.
    time.advance(SHORT_LEASE + SHORT_LEASE / 4);
    round_trip_on(&mut e, 1, 2);
    e[1].writable().unwrap();
}

/// An echo counts only up to the latest send time the master sent that peer: a
/// made-up echo (a time it never sent there) does not extend its lease.
#[test]
fn a_forged_echo_does_not_extend_the_lease() {
    let time = ManualClock::new(1_000_000);
    let (mut e, _) = leased_cluster(&time);
    round_trip(&mut e, 0, 1); // B echoes A's send time: A holds its lease
    e[0].writable().unwrap();
    time.advance(SHORT_LEASE - 100);
    // B (or anyone speaking as B) claims to have heard A just now.
    let mut forged = e[1].sync_with(id(1)).unwrap();
    forged.echo = Some(time.now());
    let _ = e[0].receive(forged).unwrap();
    time.advance(200); // past the lease of what B really answered
    assert!(matches!(
        e[0].writable(),
        Err(Error::NoQuorum { answered: 1, .. })
    ));
    // A real exchange renews it.
    round_trip(&mut e, 0, 1);
    e[0].writable().unwrap();
}

/// A replica promoted after its last snapshot comes back from it as the master of
/// its epoch (waiting out the lease again), not as a follower that could support
/// another master of that epoch.
#[test]
fn a_master_promoted_after_its_snapshot_comes_back_as_master() {
    let time = ManualClock::new(1_000_000);
    let (mut e, leases) = leased_cluster(&time);
    let old = e[1].snapshot().unwrap();
    assert_eq!(e[1].promote().unwrap(), 1);
    let restored: Engine = SyncEngine::restore(old, time.clone(), short_lease_config(2, 1))
        .unwrap()
        .with_lease(leases[1].clone())
        .unwrap();
    assert_eq!(
        (restored.role(), restored.epoch(), restored.leader()),
        (Role::Master, 1, Some(id(2)))
    );
    assert!(matches!(restored.writable(), Err(Error::NoQuorum { .. })));
    e[1] = restored;
    round_trip(&mut e, 1, 2);
    e[1].handle_timeout();
    assert!(matches!(
        e[1].writable(),
        Err(Error::FencingWait {
            until_ms: Some(_),
            ..
        })
    ));
    // Told to stop writes (a switchover's first step) and restarted from a snapshot
    // taken since: it stays a follower.
    e[1].demote();
    let stopped = e[1].snapshot().unwrap();
    let restored: Engine = SyncEngine::restore(stopped, time.clone(), short_lease_config(2, 2))
        .unwrap()
        .with_lease(leases[1].clone())
        .unwrap();
    assert_eq!((restored.role(), restored.epoch()), (Role::Follower, 1));
}

/// A lease store whose fence record cannot be written.
#[derive(Debug)]
struct BrokenFence;

impl LeaseStore for BrokenFence {
    fn load(&mut self) -> Result<u64, Error> {
        Ok(0)
    }

    fn store(&mut self, _upto: u64) -> Result<(), Error> {
        Ok(())
    }

    fn load_fence(&mut self) -> Result<Option<FenceRecord>, Error> {
        Ok(None)
    }

    fn store_fence(&mut self, _record: &FenceRecord) -> Result<(), Error> {
        Err(Error::Lease {
            reason: "disk full".into(),
        })
    }
}

/// A replica that cannot record a new epoch or master does not act on it: the
/// promotion, or the message that brought it, is refused whole, nothing changed.
#[test]
fn an_epoch_that_cannot_be_recorded_is_not_taken() {
    let time = ManualClock::new(1_000_000);
    let (mut e, _) = leased_cluster(&time);
    let broken = |i: u128| {
        SyncEngine::new(
            id(i),
            Settings::new(),
            time.clone(),
            short_lease_config(i, 1),
        )
        .with_lease(BrokenFence)
        .unwrap()
    };
    e[2] = broken(3);
    assert!(matches!(e[2].promote(), Err(Error::Lease { .. })));
    assert_eq!(
        (e[2].epoch(), e[2].role(), e[2].leader()),
        (0, Role::Follower, None)
    );
    // Node 2 is promoted to epoch 1; node 3 cannot record it, so it neither takes
    // the epoch nor echoes node 2.
    assert_eq!(e[1].promote().unwrap(), 1);
    let msg = e[1].sync_with(id(3)).unwrap();
    assert!(matches!(e[2].receive(msg), Err(Error::Lease { .. })));
    assert_eq!((e[2].epoch(), e[2].leader()), (0, None));
    // Nor can it take the first master of its own epoch.
    let msg = e[0].sync_with(id(3)).unwrap();
    assert!(matches!(e[2].receive(msg), Err(Error::Lease { .. })));
    assert_eq!(e[2].leader(), None);
    round_trip(&mut e, 1, 2);
    assert!(matches!(
        e[1].writable(),
        Err(Error::NoQuorum { answered: 1, .. })
    ));
    let mut master = broken(1);
    assert!(matches!(master.fence(3), Err(Error::Lease { .. })));
    assert_eq!((master.epoch(), master.role()), (0, Role::Master));
}

/// Runs two engines for `rounds` timer rounds, delivering everything (a refusal
/// fails the test); returns the first bytes of what was sent.
fn pump(engines: &mut [Engine], time: &ManualClock, rounds: usize) -> Vec<u8> {
    let mut first_bytes = Vec::new();
    for _ in 0..rounds {
        for i in 0..engines.len() {
            while let Some(t) = engines[i].poll_transmit() {
                first_bytes.push(t.bytes[0]);
                let to = engines.iter().position(|e| e.node() == t.to).unwrap();
                let _ = engines[to]
                    .handle_bytes(&t.bytes)
                    .unwrap_or_else(|e| panic!("node {} refused: {e}", to + 1));
            }
        }
        time.advance(100);
        for e in engines.iter_mut() {
            e.handle_timeout();
        }
    }
    first_bytes
}

/// A rolling upgrade from version 3 to 4 in master–follower mode: a version-4 master
/// speaks 3 (JSON) to a follower held at 3, which takes every message (before, it
/// spoke its own newest version, which the follower refused); once the follower is
/// upgraded too, the two move to binary.
#[test]
fn master_follower_mode_upgrades_from_version_3_to_4_without_refusals() {
    let time = ManualClock::new(1_000);
    let mut engines = cluster(2, &time);
    let held = Config::with_peers([id(1)])
        .master_follower(LEASE)
        .incarnation(id(102))
        .follower()
        .protocol_version(3);
    engines[1] = SyncEngine::new(id(2), Settings::new(), time.clone(), held);
    let mut sent = pump(&mut engines, &time, 30);
    set(&mut engines[0], "x", 1).unwrap();
    sent.extend(pump(&mut engines, &time, 10));
    assert_eq!(engines[1].state().value("x"), Some(&1));
    sent.sort_unstable();
    sent.dedup();
    assert_eq!(sent, [b'{']);

    // The follower restarts on the new build: binary from then on.
    let snapshot = engines[1].snapshot().unwrap();
    let upgraded = Config::with_peers([id(1)])
        .master_follower(LEASE)
        .incarnation(id(103))
        .follower();
    engines[1] = SyncEngine::restore(snapshot, time.clone(), upgraded).unwrap();
    pump(&mut engines, &time, 30);
    set(&mut engines[0], "y", 2).unwrap();
    let sent = pump(&mut engines, &time, 10);
    assert_eq!(engines[1].state().value("y"), Some(&2));
    assert_eq!(sent.last(), Some(&concord::wire::BINARY_MESSAGE));
}
