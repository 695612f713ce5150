//! The fuzz harness: one function per target, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, which build this file as the `concord_fuzz` library) and
//! by `tests/fuzz_regressions.rs`, which replays every input in `tests/fuzz-crashers/`
//! through the same code. It lives under `tests/` so that the published crate ships it
//! and its packaged tests still compile and replay the crashers.
//!
//! Each function panics exactly when it finds a bug: a panic inside concord, or a
//! broken invariant (a rejected message that changed the state, replicas that do not
//! converge). Input that concord rightly rejects comes back as `Err`.
//!
//! * [`decode`]: bytes as a wire message, decoded and applied by a [`receiver`].
//! * [`apply`]: bytes as a state (raw JSON if they start with `{`, or with a kind
//!   letter and `{`; otherwise built by [`build_state`]), merged with `try_merge`
//!   into a reachable state.
//! * [`converge`]: bytes as a simulator program ([`program`]), run, healed, quiesced.

use concord::sync::{Config, Message, Snapshot, SyncEngine};
use concord::testing::sim::{Action, Faults, Sim};
use concord::testing::Operation;
use concord::{
    CausalContext, Conflict, Crdt, Error, Hlc, Limits, LwwRegister, ManualClock, MvRegister, OrMap,
    Outcome, PnCounter, ReplicaId, Result, VectorClock,
};
use serde_json::{json, Value};

/// The state type the engine-level targets replicate.
pub type Map = OrMap<String, MvRegister<u8>>;

/// The wall time every harness engine starts at.
pub const START_MS: u64 = 1_700_000_000_000;

/// The receiver's message size limit.
pub const MAX_BYTES: usize = 1 << 16;

/// Node A (a peer of the receiver); its incarnation is `0xa1`.
pub const A: ReplicaId = ReplicaId::from_u128(0xa0);
/// Node B, the receiver; its incarnation is `0xb1`.
pub const B: ReplicaId = ReplicaId::from_u128(0xb0);
/// Node C (a peer of the receiver); its incarnation is `0xc1`.
pub const C: ReplicaId = ReplicaId::from_u128(0xc0);

fn incarnation_of(node: ReplicaId) -> ReplicaId {
    ReplicaId::from_u128(node.as_uuid().as_u128() + 1)
}

fn engine(
    node: ReplicaId,
    peers: &[ReplicaId],
    time: &ManualClock,
) -> SyncEngine<Map, ManualClock> {
    let mut config = Config::with_peers(peers.iter().copied()).incarnation(incarnation_of(node));
    config.limits = Limits {
        max_siblings: 4,
        max_entries: 4_096,
        max_context_ranges: 4_096,
        max_claim_ahead: 64,
        max_relayed_gaps: 64,
    };
    config.max_message_bytes = MAX_BYTES;
    config.max_clock_entries = 16;
    SyncEngine::new(node, Map::default(), time.clone(), config)
}

fn write(e: &mut SyncEngine<Map, ManualClock>, key: &str, value: u8) {
    e.update(|m, hlc| m.write(key.to_string(), value, hlc))
        .expect("a master writes");
}

/// The engines the decode target starts from: A and C, which have written, synced
/// with B and raced with it, and B (the receiver), which holds siblings, a removal and
/// writes of its own the others have not seen. Also used to build seed inputs.
pub fn cluster() -> [SyncEngine<Map, ManualClock>; 3] {
    let time = ManualClock::new(START_MS);
    let mut a = engine(A, &[B, C], &time);
    let mut b = engine(B, &[A, C], &time);
    let mut c = engine(C, &[A, B], &time);
    write(&mut a, "k0", 1);
    write(&mut a, "k1", 2);
    write(&mut b, "k1", 3);
    write(&mut c, "k2", 4);
    for from in [0, 2] {
        let (sender, receiver) = if from == 0 {
            (&mut a, &mut b)
        } else {
            (&mut c, &mut b)
        };
        let hello = sender.sync_with(B).expect("peer");
        let reply = receiver
            .receive(hello)
            .expect("valid")
            .reply
            .expect("answer");
        let _ = sender.receive(reply).expect("valid");
    }
    a.update(|m, hlc| m.remove(&"k0".to_string(), hlc))
        .expect("a master writes");
    let push = a.push().into_iter().find(|m| m.to == B).expect("B lags");
    let _ = b.receive(push).expect("valid");
    write(&mut a, "k3", 5);
    write(&mut b, "k2", 6);
    write(&mut c, "k1", 7);
    [a, b, c]
}

/// The receiver of the decode target: node B of [`cluster`].
pub fn receiver() -> SyncEngine<Map, ManualClock> {
    let [_, b, _] = cluster();
    b
}

/// What a rejected message must leave untouched.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    snapshot: Snapshot<Map>,
    clock: VectorClock,
    received: u64,
    sent: u64,
    lag: Vec<concord::sync::PeerLag>,
}

fn fingerprint(e: &mut SyncEngine<Map, ManualClock>) -> Fingerprint {
    let metrics = e.metrics();
    Fingerprint {
        snapshot: e.snapshot().unwrap(),
        clock: e.clock(),
        received: metrics.messages_received,
        sent: metrics.messages_sent,
        lag: metrics.peers.iter().map(|p| p.lag).collect(),
    }
}

/// Decodes `data` as a wire message and has the [`receiver`] apply it.
///
/// # Panics
///
/// On a panic inside concord; if a rejected message changed the receiver; if an
/// accepted one left it unable to write, to replicate its writes to a peer, to answer
/// on the wire or to persist itself.
pub fn decode(data: &[u8]) -> Result<()> {
    // Both forms from every input: the bytes as given (JSON, or binary when they start
    // with its first byte), and the same bytes as the body of a binary message.
    if data.first() != Some(&concord::wire::BINARY_MESSAGE) {
        let mut binary = Vec::with_capacity(data.len() + 1);
        binary.push(concord::wire::BINARY_MESSAGE);
        binary.extend_from_slice(data);
        let _ = decode_one(&binary);
    }
    decode_one(data)
}

fn decode_one(data: &[u8]) -> Result<()> {
    // Decoding alone: a decoded message encodes to something that decodes to it again,
    // in its own form and rendered as JSON.
    if let Ok(msg) = Message::<Map>::decode(data, MAX_BYTES) {
        let again = msg.encode();
        let back = Message::<Map>::decode(&again, usize::MAX)
            .unwrap_or_else(|e| panic!("re-encoded message does not decode: {e}"));
        assert_eq!(back, msg, "wire round trip changed the message");
        let json = concord::wire::encode_json(&msg);
        let back = Message::<Map>::decode(&json, usize::MAX)
            .unwrap_or_else(|e| panic!("the JSON rendering does not decode: {e}"));
        assert_eq!(back, msg, "the JSON rendering changed the message");
    }

    let mut b = receiver();
    let before = fingerprint(&mut b);
    let received = match b.receive_bytes(data) {
        Ok(received) => received,
        Err(e) => {
            assert_eq!(
                fingerprint(&mut b),
                before,
                "rejected with {e:?} but changed"
            );
            return Err(e);
        }
    };
    check_alive(&mut b, received.reply.as_ref());
    Ok(())
}

/// After an accepted message: the state is consistent, the reply survives the wire,
/// a local write gets a fresh dot and reaches a peer in a session, and the engine
/// snapshots and restores.
fn check_alive(b: &mut SyncEngine<Map, ManualClock>, reply: Option<&Message<Map>>) {
    b.state()
        .validate(&Limits::default())
        .unwrap_or_else(|e| panic!("accepted state is inconsistent: {e}"));
    if let Some(reply) = reply {
        let bytes = reply.encode();
        let back = Message::<Map>::decode(&bytes, usize::MAX)
            .unwrap_or_else(|e| panic!("the reply does not decode: {e}"));
        // Version 1 names no gaps: its `seen` and `base` are the gap-free prefixes.
        let mut expected = reply.clone();
        if reply.v == 1 {
            expected.seen = CausalContext::from(&reply.seen.clock());
            expected.base = CausalContext::from(&reply.base.clock());
        }
        assert_eq!(back, expected);
    }
    let seen = b.state().context().clone();
    let receipt = b
        .update(|m, hlc| m.write("k0".to_string(), 9, hlc))
        .unwrap_or_else(|e| panic!("a peer's message disabled local writes: {e}"));
    let dot = receipt.dot.expect("a write issues a dot");
    assert!(!seen.contains(dot), "dot {dot} reused");

    // The receiver still replicates: a session with a peer carries its local write
    // across (the message may have claimed A holds more than A does: then A asks
    // again, hence the loop). A peer may refuse B for its own limits, never as
    // malformed.
    let [mut a, _, _] = cluster();
    let mut next = Some(b.sync_with(A).expect("A is a peer"));
    let mut refused = false;
    for hop in 0..6 {
        let Some(msg) = next.take() else { break };
        let at = if hop % 2 == 0 { &mut a } else { &mut *b };
        match at.receive(msg) {
            Ok(received) => next = received.reply,
            Err(Error::TooManyEntries { .. } | Error::TooManySiblings { .. }) => refused = true,
            // A message forged in A's name can plant dots of A's own writer at B (B
            // cannot tell them from A's real writes); A then rightly refuses B's
            // state, which names writes A never issued. (Bounding such claims is the
            // context-poisoning item of the codec issue.)
            Err(Error::InvalidDot {
                reason: "a write of this replica that it never issued",
                ..
            }) => refused = true,
            Err(e) => panic!("after the message, the receiver's session fails: {e}"),
        }
    }
    assert!(
        refused || a.state().context().contains(dot),
        "the receiver's write did not reach its peer in a session"
    );

    let snapshot = b.snapshot().unwrap();
    let json = serde_json::to_vec(&snapshot).expect("snapshots serialize");
    let back: Snapshot<Map> = serde_json::from_slice(&json)
        .unwrap_or_else(|e| panic!("snapshot does not deserialize: {e}"));
    assert_eq!(back, snapshot);
    // A fresh incarnation: the first id that no dot in the state names.
    let fresh = (0xb2..)
        .map(ReplicaId::from_u128)
        .find(|id| back.state.context().max_counter(*id) == 0)
        .expect("an unused id");
    let config = Config::with_peers([A, C]).incarnation(fresh);
    SyncEngine::restore(back, ManualClock::new(START_MS), config)
        .unwrap_or_else(|e| panic!("snapshot does not restore: {e}"));
}

// ---------------------------------------------------------------------------------
// apply
// ---------------------------------------------------------------------------------

/// Reads bytes as small numbers; past the end it reads zeros.
pub struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Bytes(data)
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.u8() as usize % n
    }

    /// True if bytes remain.
    pub fn more(&self) -> bool {
        !self.0.is_empty()
    }

    /// A counter: usually small, sometimes 0 or near the top of `u64`.
    pub fn counter(&mut self) -> u64 {
        match self.below(10) {
            0 => 0,
            1 => u64::MAX,
            2 => u64::MAX - u64::from(self.u8()),
            3 => 1 << self.below(64),
            _ => u64::from(self.u8() % 8) + 1,
        }
    }
}

/// The replicas a built state draws from: the three incarnations of [`cluster`], a
/// node id, the nil and the max UUID.
const POOL: [u128; 6] = [0xa1, 0xb1, 0xc1, 0xb0, 0, u128::MAX];

/// The value types [`apply`] merges into (selected by the first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `OrMap<String, MvRegister<u8>>`.
    Mv,
    /// `OrMap<String, PnCounter>`.
    Counter,
    /// `OrMap<String, LwwRegister<u8>>`.
    Lww,
    /// `OrMap<String, OrMap<String, MvRegister<u8>>>`.
    Nested,
}

const KINDS: [Kind; 4] = [Kind::Mv, Kind::Counter, Kind::Lww, Kind::Nested];
/// The letters that select a kind for raw JSON: `m{…}` is an `Mv` state only.
const KIND_TAGS: [u8; 4] = [b'm', b'c', b'l', b'n'];
const KEYS: [&str; 5] = ["k0", "k1", "k2", "k3", ""];

/// Builds a map state in the wire form (`{"r":[…],"c":[…],"e":{…}}`) from bytes: a
/// replica table, context spans (lone counters `n` and runs `[n, extra]`, each
/// counted from the end of the previous one; possibly zero, adjacent, overflowing,
/// past the counter cap or out of the table) and entries whose dots may or may not be
/// in the context.
pub fn build_state(u: &mut Bytes, kind: Kind) -> Value {
    let replicas = u.below(5);
    let r: Vec<String> = (0..replicas)
        .map(|_| concord::ReplicaId::from_u128(POOL[u.below(POOL.len())]).to_string())
        .collect();
    let index = |u: &mut Bytes| u.below(replicas + 1);
    let mut c = Vec::new();
    for _ in 0..u.below(4) {
        let i = index(u);
        let spans: Vec<Value> = (0..u.below(3))
            .map(|_| {
                let gap = u.counter();
                match u.below(3) {
                    0 => json!(gap),
                    1 => json!([gap, u.below(4)]),
                    _ => json!([gap, u.counter()]),
                }
            })
            .collect();
        c.push(json!([i, spans]));
    }
    let mut e = serde_json::Map::new();
    for _ in 0..u.below(4) {
        let key = KEYS[u.below(KEYS.len())].to_string();
        let value = match kind {
            Kind::Nested => {
                let mut inner = serde_json::Map::new();
                for _ in 0..u.below(3) {
                    inner.insert(
                        KEYS[u.below(KEYS.len())].to_string(),
                        elements(u, replicas, Kind::Mv),
                    );
                }
                Value::Object(inner)
            }
            _ => elements(u, replicas, kind),
        };
        e.insert(key, value);
    }
    json!({ "r": r, "c": c, "e": e })
}

fn elements(u: &mut Bytes, replicas: usize, kind: Kind) -> Value {
    let items: Vec<Value> = (0..u.below(4))
        .map(|_| {
            let (i, n) = (u.below(replicas + 1), u.counter());
            match kind {
                Kind::Counter => {
                    let amount = [0, 1, -1, i64::MAX, i64::MIN, 5][u.below(6)];
                    json!([i, n, amount])
                }
                Kind::Lww => {
                    let ms = [START_MS, START_MS + 1, START_MS + 10_000, 0, u64::MAX][u.below(5)];
                    let logical = [0, 1, u32::MAX][u.below(3)];
                    json!([i, n, ms, logical, u.u8()])
                }
                Kind::Mv | Kind::Nested => json!([i, n, u.u8()]),
            }
        })
        .collect();
    Value::Array(items)
}

/// A reachable state of each kind, with siblings, a removal, and writes by the
/// incarnations [`build_state`] names.
fn base<T: Crdt + Default>(kind: Kind) -> T {
    let time = ManualClock::new(START_MS);
    let mut ha = Hlc::new(ReplicaId::from_u128(0xa1), time.clone());
    let mut hb = Hlc::new(ReplicaId::from_u128(0xb1), time);
    // Build it through JSON so one function serves every kind.
    let json = match kind {
        Kind::Mv => {
            let mut a = Map::new();
            let mut b = Map::new();
            a.write("k0".into(), 1, &mut ha).unwrap();
            a.write("k1".into(), 2, &mut ha).unwrap();
            b.write("k1".into(), 3, &mut hb).unwrap();
            concord::Resolver::merge(&mut a, b);
            a.remove(&"k0".to_string(), &mut ha).unwrap();
            a.write("k2".into(), 4, &mut ha).unwrap();
            serde_json::to_value(&a)
        }
        Kind::Counter => {
            let mut a = OrMap::<String, PnCounter>::new();
            let mut b = OrMap::<String, PnCounter>::new();
            a.increment("k0".into(), 5, &mut ha).unwrap();
            b.increment("k0".into(), 1, &mut hb).unwrap();
            a.increment("k1".into(), -2, &mut ha).unwrap();
            concord::Resolver::merge(&mut a, b);
            a.remove(&"k1".to_string(), &mut ha).unwrap();
            serde_json::to_value(&a)
        }
        Kind::Lww => {
            let mut a = OrMap::<String, LwwRegister<u8>>::new();
            let mut b = OrMap::<String, LwwRegister<u8>>::new();
            a.write("k0".into(), 1, &mut ha).unwrap();
            b.write("k0".into(), 2, &mut hb).unwrap();
            a.write("k1".into(), 3, &mut ha).unwrap();
            concord::Resolver::merge(&mut a, b);
            a.remove(&"k1".to_string(), &mut ha).unwrap();
            serde_json::to_value(&a)
        }
        Kind::Nested => {
            let mut a = OrMap::<String, Map>::new();
            a.update("k0".into(), &mut ha, |m, op| {
                m.update_in(op, "k1".into(), |r, op| r.assign(op, 1));
                m.update_in(op, "k2".into(), |r, op| r.assign(op, 2));
            })
            .unwrap();
            let mut b = a.clone();
            b.update("k0".into(), &mut hb, |m, op| {
                m.update_in(op, "k3".into(), |r, op| r.assign(op, 3))
            })
            .unwrap();
            a.remove(&"k0".to_string(), &mut ha).unwrap();
            concord::Resolver::merge(&mut a, b);
            serde_json::to_value(&a)
        }
    };
    serde_json::from_value(json.expect("states serialize")).expect("states deserialize")
}

/// Merges `data` as a state: raw JSON for every kind if it starts with `{`; raw JSON
/// for one kind if it starts with `m{`, `c{`, `l{` or `n{` (mv, counter, lww,
/// nested); otherwise a [`build_state`] of the kind the first byte selects.
///
/// Returns `Ok` if some kind accepted the state, otherwise the first kind's error.
///
/// # Panics
///
/// On a panic inside concord; if a rejected merge changed the state; if an accepted
/// one left an inconsistent state, broke idempotence or the JSON round trip.
pub fn apply(data: &[u8]) -> Result<()> {
    let (kinds, json) = match data {
        [b'{', ..] => (KINDS.to_vec(), data.to_vec()),
        [tag, b'{', ..] if KIND_TAGS.contains(tag) => {
            let kind = KINDS[KIND_TAGS.iter().position(|t| t == tag).expect("listed")];
            (vec![kind], data[1..].to_vec())
        }
        _ => {
            let mut u = Bytes::new(data);
            let kind = KINDS[u.below(KINDS.len())];
            (
                vec![kind],
                build_state(&mut u, kind).to_string().into_bytes(),
            )
        }
    };
    let mut first_error = None;
    let mut accepted = false;
    for kind in kinds {
        let result = match kind {
            Kind::Mv => apply_one::<Map>(kind, &json),
            Kind::Counter => apply_one::<OrMap<String, PnCounter>>(kind, &json),
            Kind::Lww => apply_one::<OrMap<String, LwwRegister<u8>>>(kind, &json),
            Kind::Nested => apply_one::<OrMap<String, Map>>(kind, &json),
        };
        match result {
            Ok(()) => accepted = true,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if !accepted => Err(e),
        _ => Ok(()),
    }
}

fn apply_one<T: Crdt + Default>(kind: Kind, json: &[u8]) -> Result<()> {
    let other: T = serde_json::from_slice(json)?;
    let limits = Limits {
        max_siblings: 4,
        max_entries: 4_096,
        max_context_ranges: 4_096,
        max_claim_ahead: 64,
        max_relayed_gaps: 64,
    };
    let mut state: T = base(kind);
    let before = state.clone();
    let mut conflicts: Vec<Conflict<T::Key, T::Value>> = Vec::new();
    if let Err(e) = state.try_merge(other.clone(), &limits, &mut conflicts) {
        assert_eq!(state, before, "rejected with {e:?} but changed");
        assert!(
            conflicts.is_empty(),
            "rejected with {e:?} but reported conflicts"
        );
        return Err(e);
    }
    state
        .validate(&Limits::default())
        .unwrap_or_else(|e| panic!("merged state is inconsistent: {e}"));
    let merged = state.clone();
    let again = state
        .try_merge(other, &limits, &mut Vec::new())
        .unwrap_or_else(|e| panic!("an accepted state is rejected the second time: {e}"));
    assert_eq!(again, Outcome::Unchanged, "merge is not idempotent");
    assert_eq!(state, merged, "merge is not idempotent");
    let json = serde_json::to_vec(&state).expect("states serialize");
    let back: T = serde_json::from_slice(&json)
        .unwrap_or_else(|e| panic!("merged state does not deserialize: {e}"));
    assert_eq!(back, state, "JSON round trip changed the state");
    let mut fresh = T::default();
    concord::Resolver::merge(&mut fresh, state.delta_since(&VectorClock::new()));
    assert_eq!(fresh, state, "delta_since(empty) is not the whole state");
    Ok(())
}

// ---------------------------------------------------------------------------------
// converge
// ---------------------------------------------------------------------------------

/// The simulator's write: put a value, remove a key, or collapse siblings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes `value` at key `k<key>`.
    Put {
        /// Key number (0–3).
        key: u8,
        /// The value.
        value: u8,
    },
    /// Removes key `k<key>`.
    Remove {
        /// Key number (0–3).
        key: u8,
    },
    /// Writes the smallest sibling back to every conflicted key.
    Collapse,
}

impl Operation<Map> for Op {
    fn apply(&self, state: &mut Map, hlc: &mut Hlc<ManualClock>) -> Result<Map> {
        match self {
            Op::Put { key, value } => state.write(format!("k{key}"), *value, hlc),
            Op::Remove { key } => state.remove(&format!("k{key}"), hlc),
            Op::Collapse => state.collapse(|s: &[&u8]| **s.iter().min().expect("non-empty"), hlc),
        }
    }
}

/// A simulator setup and program decoded from bytes.
#[derive(Clone, Debug)]
pub struct Program {
    /// Replicas (2–4).
    pub nodes: usize,
    /// The simulator's seed.
    pub seed: u64,
    /// Network faults.
    pub faults: Faults,
    /// The actions, at most 256.
    pub actions: Vec<Action<Op>>,
}

/// Decodes a program: three header bytes (nodes, seed, faults), then one action per
/// one to three bytes.
pub fn program(data: &[u8]) -> Program {
    let mut u = Bytes::new(data);
    let nodes = 2 + u.below(3);
    let seed = u64::from(u.u8());
    let f = u.u8();
    let faults = Faults {
        loss: [0, 10, 30, 60][usize::from(f & 3)],
        duplicate: [0, 10, 30, 60][usize::from(f >> 2 & 3)],
        reorder: f & 16 != 0,
    };
    let mut actions = Vec::new();
    while u.more() && actions.len() < 256 {
        let action = match u.below(16) {
            0..=3 => Action::Write {
                node: u.below(nodes),
                op: Op::Put {
                    key: u.u8() % 4,
                    value: u.u8(),
                },
            },
            4 | 5 => Action::Write {
                node: u.below(nodes),
                op: Op::Remove { key: u.u8() % 4 },
            },
            6 => Action::Write {
                node: u.below(nodes),
                op: Op::Collapse,
            },
            7 => Action::Sync {
                from: u.below(nodes),
                to: u.below(nodes),
            },
            8 | 9 => Action::Push {
                node: u.below(nodes),
            },
            10 | 11 => Action::Deliver { count: u.below(16) },
            12 => Action::Partition {
                side_a: u64::from(u.u8()),
            },
            13 => Action::Heal,
            14 => {
                if u.u8() & 1 == 0 {
                    Action::Snapshot {
                        node: u.below(nodes),
                    }
                } else {
                    Action::Crash {
                        node: u.below(nodes),
                    }
                }
            }
            _ => Action::Advance {
                ms: u64::from(u.u8()) * 10,
            },
        };
        actions.push(action);
    }
    Program {
        nodes,
        seed,
        faults,
        actions,
    }
}

/// Runs the program from `data`, heals, quiesces.
///
/// # Panics
///
/// On a panic inside concord; if the replicas do not converge; if an honest replica
/// rejected a message; if a write other replicas held when its writer crashed is lost.
pub fn converge(data: &[u8]) {
    let program = program(data);
    let mut sim: Sim<Map> = Sim::new(program.nodes, program.seed, program.faults);
    sim.run(program.actions.clone());
    sim.quiesce();
    assert!(
        sim.converged(),
        "replicas diverged after quiescing:\n{}\nprogram: {program:?}",
        (0..sim.len())
            .map(|i| format!("  node {i}: {:?}", sim.engine(i).state()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        sim.last_error().is_none(),
        "an honest replica rejected a message: {:?}",
        sim.last_error()
    );
    for (dot, holders) in sim.acknowledged_before_crash() {
        for i in 0..sim.len() {
            assert!(
                sim.engine(i).state().context().contains(*dot),
                "write {dot} (held by {holders} peers before its writer crashed) lost at node {i}"
            );
        }
    }
}

/// Seed inputs for each target (valid messages, states and programs), for
/// `cargo run --example seed_corpus`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let [mut a, mut b, mut c] = cluster();
    for msg in [a.sync_with(B).unwrap(), c.sync_with(B).unwrap()] {
        out.push(("decode", msg.encode()));
    }
    out.extend(
        a.push()
            .iter()
            .filter(|m| m.to == B)
            .map(|m| ("decode", m.encode())),
    );
    let hello = b.sync_with(A).unwrap();
    let answer = a.receive(hello).unwrap().reply.unwrap();
    out.push(("decode", answer.encode()));
    for kind in KINDS {
        let json = match kind {
            Kind::Mv => serde_json::to_vec(&base::<Map>(kind)),
            Kind::Counter => serde_json::to_vec(&base::<OrMap<String, PnCounter>>(kind)),
            Kind::Lww => serde_json::to_vec(&base::<OrMap<String, LwwRegister<u8>>>(kind)),
            Kind::Nested => serde_json::to_vec(&base::<OrMap<String, Map>>(kind)),
        };
        out.push(("apply", json.unwrap()));
    }
    // A built Mv state: one replica (0xa1), context [3, 6], k0 tagged (0xa1, 4).
    out.push((
        "apply",
        vec![0, 1, 0, 1, 0, 1, 5, 2, 1, 3, 1, 0, 1, 0, 5, 3, 7],
    ));
    out.push(("converge", vec![1, 7, 0, 0, 0, 0, 5, 1, 1, 1, 9, 0, 10, 9]));
    out.push(("converge", (0u8..128).map(|i| i.wrapping_mul(37)).collect()));
    out
}
