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
//! * [`sim`]: an `arbitrary` simulator program ([`SimProgram`]), run, healed, quiesced.
//! * [`fold`]: an `arbitrary` program of counter increments and removals with folding
//!   on ([`FoldProgram`]), across a rolling upgrade if it asks for one; the totals are
//!   checked against every write made.
//! * [`large`]: a description of a large message ([`Large`]), built and received.

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

// ---------------------------------------------------------------------------------
// sim
// ---------------------------------------------------------------------------------

use concord::testing::sim::arbitrary::{self, Arbitrary, Unstructured};

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0..=5u8)? {
            0..=2 => Op::Put {
                key: u.int_in_range(0..=3)?,
                value: u8::arbitrary(u)?,
            },
            3 | 4 => Op::Remove {
                key: u.int_in_range(0..=3)?,
            },
            _ => Op::Collapse,
        })
    }
}

/// The most actions a [`SimProgram`] holds (small programs keep the target fast).
pub const SIM_ACTIONS: usize = 48;

/// A simulator setup and program decoded by `arbitrary` (the `sim` target).
#[derive(Clone, Debug)]
pub struct SimProgram {
    /// Replicas (2–4).
    pub nodes: usize,
    /// The simulator's seed.
    pub seed: u64,
    /// Network faults.
    pub faults: Faults,
    /// Durable crashes (a crashed node restarts from its state at the crash).
    pub durable: bool,
    /// A message limit small enough that catch-ups go in chunks, or none.
    pub message_limit: Option<usize>,
    /// The actions, at most [`SIM_ACTIONS`].
    pub actions: Vec<Action<Op>>,
}

impl<'a> Arbitrary<'a> for SimProgram {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let nodes = u.int_in_range(2..=4)?;
        let seed = u64::from(u8::arbitrary(u)?);
        let faults = Faults::arbitrary(u)?;
        let durable = bool::arbitrary(u)?;
        let message_limit = if bool::arbitrary(u)? {
            Some(u.int_in_range(1_000..=4_000)?)
        } else {
            None
        };
        let mut actions = Vec::new();
        while !u.is_empty() && actions.len() < SIM_ACTIONS {
            actions.push(Action::arbitrary(u)?);
        }
        Ok(SimProgram {
            nodes,
            seed,
            faults,
            durable,
            message_limit,
            actions,
        })
    }
}

/// Runs the `arbitrary` program from `data` ([`SimProgram`]), heals, quiesces, and
/// makes the simulator's own checks ([`check_quiesced`](concord::testing::sim::check_quiesced)).
///
/// # Panics
///
/// On a panic inside concord; if the replicas do not converge; if a dot was issued
/// twice; if a context names more replicas than there are nodes; if an honest replica
/// rejected a message; if a write other replicas held when its writer crashed is lost.
pub fn sim(data: &[u8]) {
    let Ok(program) = SimProgram::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut sim: Sim<Map> =
        Sim::new(program.nodes, program.seed, program.faults).with_durable_crashes(program.durable);
    if let Some(bytes) = program.message_limit {
        sim = sim.with_message_limit(bytes);
    }
    sim.run(program.actions.clone());
    sim.quiesce();
    if let Err(e) = concord::testing::sim::check_quiesced(&sim) {
        panic!("{e}\nprogram: {program:?}");
    }
}

// ---------------------------------------------------------------------------------
// fold
// ---------------------------------------------------------------------------------

/// The counter map the `fold` target replicates.
pub type Tallies = OrMap<String, PnCounter>;

/// The keys of [`Tallies`] the `fold` target writes.
pub const TALLY_KEYS: [&str; 3] = ["likes", "views", "stars"];

/// The `fold` target's write: an increment of one of a few shared counters (by −3 to
/// 4), or a removal of one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tally {
    /// Adds `amount` to counter `key`.
    Add {
        /// Key number (an index into [`TALLY_KEYS`]).
        key: u8,
        /// The amount.
        amount: i64,
    },
    /// Removes counter `key`.
    Remove {
        /// Key number (an index into [`TALLY_KEYS`]).
        key: u8,
    },
}

impl<'a> Arbitrary<'a> for Tally {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let key = u.int_in_range(0..=2u8)?;
        Ok(if u.int_in_range(0..=6u8)? == 0 {
            Tally::Remove { key }
        } else {
            Tally::Add {
                key,
                amount: u.int_in_range(-3..=4i64)?,
            }
        })
    }
}

/// A recorded write of the `fold` target: its dot, its key, and an increment's
/// amount or (a removal) what its master had seen.
type Tallied = (concord::Dot, usize, std::result::Result<i64, CausalContext>);

thread_local! {
    static TALLIED: std::cell::RefCell<Vec<Tallied>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Operation<Tallies> for Tally {
    fn apply(&self, map: &mut Tallies, hlc: &mut Hlc<ManualClock>) -> Result<Tallies> {
        match *self {
            Tally::Add { key, amount } => {
                let k = usize::from(key) % TALLY_KEYS.len();
                let dot = map.apply(TALLY_KEYS[k].into(), hlc, |c, op| c.add(op, amount))?;
                TALLIED.with(|t| t.borrow_mut().push((dot, k, Ok(amount))));
            }
            Tally::Remove { key } => {
                let k = usize::from(key) % TALLY_KEYS.len();
                let seen = map.context().clone();
                map.remove(TALLY_KEYS[k], hlc)?;
                if let Some(dot) = map.context().minus(&seen).dots().next() {
                    TALLIED.with(|t| t.borrow_mut().push((dot, k, Err(seen))));
                }
            }
        }
        // The engine ships `delta_since`, not this write's delta.
        Ok(Tallies::new())
    }
}

/// The most actions a [`FoldProgram`] holds.
pub const FOLD_ACTIONS: usize = 64;

/// A simulator setup and program of counter writes with folding on (the `fold`
/// target), decoded by `arbitrary`.
#[derive(Clone, Debug)]
pub struct FoldProgram {
    /// Replicas (2–4).
    pub nodes: usize,
    /// The simulator's seed.
    pub seed: u64,
    /// Network faults.
    pub faults: Faults,
    /// A message limit small enough that catch-ups go in chunks, or none.
    pub message_limit: Option<usize>,
    /// `Config::lease_block`: 1, 3 or 64.
    pub lease_block: u64,
    /// A rolling upgrade from these protocol versions (one per node), or none.
    pub versions: Option<Vec<u32>>,
    /// After this many actions, the cluster settles: nodes still below protocol
    /// version 3 restart (and so upgrade), every message is delivered and
    /// acknowledged, and the masters fold; the rest of the actions then race those
    /// folds. `None`: no settling before the end.
    pub settle_after: Option<usize>,
    /// The actions, at most [`FOLD_ACTIONS`].
    pub actions: Vec<Action<Tally>>,
}

impl<'a> Arbitrary<'a> for FoldProgram {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let nodes = u.int_in_range(2..=4)?;
        let seed = u64::from(u8::arbitrary(u)?);
        let faults = Faults::arbitrary(u)?;
        // From 2,000 bytes, as the simulator's own `message_limit`: below that, the
        // envelope alone of a version-3 (JSON) message between four replicas whose
        // contexts have lease gaps (two contexts, each replica named by its UUID)
        // can outgrow the limit, and no piece is small enough.
        let message_limit = if bool::arbitrary(u)? {
            Some(u.int_in_range(2_000..=4_000)?)
        } else {
            None
        };
        let lease_block = [1, 3, 64][usize::from(u.int_in_range(0..=2u8)?)];
        // Mostly versions that fold (3 and up): a node below 3 holds every master's
        // folding back until it restarts.
        let versions = if bool::arbitrary(u)? {
            let mut v = Vec::with_capacity(nodes);
            for _ in 0..nodes {
                v.push(if u.ratio(1, 4)? {
                    u.int_in_range(1..=2)?
                } else {
                    u.int_in_range(3..=concord::sync::PROTOCOL_VERSION)?
                });
            }
            Some(v)
        } else {
            None
        };
        let settle_after = if u.ratio(3, 4)? {
            Some(u.int_in_range(0..=24)?)
        } else {
            None
        };
        let mut actions = Vec::new();
        while !u.is_empty() && actions.len() < FOLD_ACTIONS {
            actions.push(Action::arbitrary(u)?);
        }
        Ok(FoldProgram {
            nodes,
            seed,
            faults,
            message_limit,
            lease_block,
            versions,
            settle_after,
            actions,
        })
    }
}

/// Restarts the nodes that started below protocol version 3 (a restart moves a node
/// to the newest version; a node that restarted since is restarted again, which a
/// durable crash allows), then delivers everything until the cluster is quiet.
fn settle(sim: &mut Sim<Tallies>, versions: Option<&[u32]>) {
    for (node, v) in versions.unwrap_or_default().iter().enumerate() {
        if *v < 3 {
            sim.step(Action::<Tally>::Crash { node });
        }
    }
    sim.quiesce();
}

/// Runs the `arbitrary` counter program from `data` ([`FoldProgram`]) with folding on
/// (`Config::fold_counters`) and durable crashes (folding's precondition), across a
/// rolling upgrade if the program asks for one; heals, quiesces, makes the
/// simulator's own checks, and checks every counter's total: each increment the
/// replicas hold counts once, unless a removal they hold had seen it.
///
/// # Panics
///
/// As [`sim`]; and if a total is wrong (a fold counted an increment twice, lost one,
/// or kept one a removal had taken).
pub fn fold(data: &[u8]) {
    let Ok(program) = FoldProgram::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    TALLIED.with(|t| t.borrow_mut().clear());
    let nodes = program.nodes;
    let mut sim: Sim<Tallies> = Sim::new(nodes, program.seed, program.faults)
        .with_lease_block(program.lease_block)
        .with_fold_counters(true)
        .with_durable_crashes(true);
    if let Some(bytes) = program.message_limit {
        sim = sim.with_message_limit(bytes);
    }
    if let Some(v) = &program.versions {
        sim = sim.with_rolling_upgrade(v);
    }
    // Crashes are durable (a node restarts from everything it had, and its lease
    // covers every dot it issued), so no recorded write is ever lost or reissued.
    for (i, action) in program.actions.iter().cloned().enumerate() {
        if program.settle_after == Some(i) {
            settle(&mut sim, program.versions.as_deref());
        }
        sim.step(action);
    }
    sim.quiesce();
    if let Err(e) = concord::testing::sim::check_quiesced(&sim) {
        panic!("{e}\nprogram: {program:?}");
    }
    let state = sim.engine(0).state();
    for (k, key) in TALLY_KEYS.iter().enumerate() {
        let expected: i64 = TALLIED.with(|t| {
            let t = t.borrow();
            let held = t
                .iter()
                .filter(|(dot, key, _)| *key == k && state.context().contains(*dot));
            let removals: Vec<&CausalContext> = held
                .clone()
                .filter_map(|(_, _, op)| op.as_ref().err())
                .collect();
            held.filter_map(|(dot, _, op)| op.as_ref().ok().map(|n| (dot, n)))
                .filter(|(dot, _)| !removals.iter().any(|seen| seen.contains(**dot)))
                .map(|(_, n)| n)
                .sum()
        });
        assert_eq!(
            state.count(*key),
            expected,
            "{key}: {state:?}\nprogram: {program:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// large
// ---------------------------------------------------------------------------------

/// The most dots (element and context-only) one [`Large`] description produces.
pub const LARGE_DOTS: u64 = 200_000;

/// The receiver's message size limit in the `large` target.
pub const LARGE_MAX_BYTES: usize = 16 << 20;

/// The receiver's limits in the `large` target: room for the 200,000-dot messages of
/// the hash-flooding case, tight caps on relayed gaps and claims.
pub const LARGE_LIMITS: Limits = Limits {
    max_siblings: 64,
    max_entries: 1 << 18,
    max_context_ranges: 1 << 18,
    max_claim_ahead: 1 << 16,
    max_relayed_gaps: 256,
};

/// A run of counters of one writer: `count` of them, `stride` apart from `start`; each
/// a lone dot (an element) or, in a context, a range of `len` counters.
#[derive(Clone, Debug)]
pub struct Run {
    /// The writer (an index into [`Large::writers`], modulo its length).
    pub writer: u8,
    /// The first counter.
    pub start: u64,
    /// The distance between counters (`k·2^32` among the choices).
    pub stride: u64,
    /// How many.
    pub count: u32,
    /// The length of each range (contexts only).
    pub len: u64,
}

impl<'a> Arbitrary<'a> for Run {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let start = match u.int_in_range(0..=5u8)? {
            0 => u64::arbitrary(u)?,
            1 => concord::causal::MAX_COUNTER - u64::from(u16::arbitrary(u)?),
            2 => u64::from(u8::arbitrary(u)?),
            _ => 1 + u64::from(u16::arbitrary(u)?),
        };
        let stride = match u.int_in_range(0..=7u8)? {
            0 | 1 => 1,
            2 => 2,
            3 => u64::from(u8::arbitrary(u)?) + 1,
            4 | 5 => u64::from(u.int_in_range(1..=8u8)?) << 32,
            6 => u64::from(u32::arbitrary(u)?) + 1,
            _ => u64::arbitrary(u)?,
        };
        let count = match u.int_in_range(0..=3u8)? {
            0 => u.int_in_range(0..=16)?,
            1 => u.int_in_range(0..=1_024)?,
            2 => u.int_in_range(0..=16_384)?,
            _ => u.int_in_range(0..=LARGE_DOTS as u32)?,
        };
        let len = match u.int_in_range(0..=3u8)? {
            0 | 1 => 1,
            2 => u64::from(u8::arbitrary(u)?),
            _ => u64::arbitrary(u)?,
        };
        Ok(Run {
            writer: u8::arbitrary(u)?,
            start,
            stride,
            count,
            len,
        })
    }
}

/// A compact description of a large message from A to B (the `large` target): the
/// replica table, the element dots, the context's extra ranges (removed writes, gaps,
/// claims far ahead), how the elements spread over keys, removal notes, and claims the
/// envelope's `seen` makes on top of the delta's context.
#[derive(Clone, Debug)]
pub struct Large {
    /// Nested counters (`OrMap<String, OrMap<String, PnCounter>>`) instead of
    /// registers ([`Map`]).
    pub nested: bool,
    /// The replica table: the incarnations of A, B and C, and ids none of them knows.
    pub writers: Vec<ReplicaId>,
    /// Element dots.
    pub elements: Vec<Run>,
    /// Context-only ranges.
    pub ranges: Vec<Run>,
    /// How many keys the elements spread over (1: every element a sibling of one key).
    pub keys: u32,
    /// Removal notes.
    pub notes: u16,
    /// Claims of `seen` only: (writer, counter).
    pub claims: Vec<(u8, u64)>,
    /// The `reply` flag.
    pub reply: bool,
}

impl<'a> Arbitrary<'a> for Large {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let nested = bool::arbitrary(u)?;
        let mut writers = Vec::new();
        for _ in 0..u.int_in_range(1..=6u8)? {
            writers.push(match u.int_in_range(0..=5u8)? {
                0 | 1 => incarnation_of(A),
                2 => incarnation_of(C),
                3 => incarnation_of(B),
                _ => ReplicaId::from_u128(u128::arbitrary(u)?),
            });
        }
        let elements = (0..u.int_in_range(0..=3u8)?)
            .map(|_| Run::arbitrary(u))
            .collect::<arbitrary::Result<_>>()?;
        let ranges = (0..u.int_in_range(0..=3u8)?)
            .map(|_| Run::arbitrary(u))
            .collect::<arbitrary::Result<_>>()?;
        let keys = match u.int_in_range(0..=2u8)? {
            0 => 1,
            1 => u.int_in_range(1..=128)?,
            _ => u.int_in_range(1..=LARGE_DOTS as u32)?,
        };
        let notes = u.int_in_range(0..=5_000)?;
        let claims = (0..u.int_in_range(0..=3u8)?)
            .map(|_| Ok((u8::arbitrary(u)?, u64::arbitrary(u)?)))
            .collect::<arbitrary::Result<_>>()?;
        Ok(Large {
            nested,
            writers,
            elements,
            ranges,
            keys,
            notes,
            claims,
            reply: bool::arbitrary(u)?,
        })
    }
}

/// Sorted, disjoint, non-adjacent ranges from any.
fn merged(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Ranges as the relative spans of the wire's context (`n`, `[n, extra]`).
fn spans(ranges: &[(u64, u64)]) -> Value {
    let mut previous = 0;
    Value::Array(
        ranges
            .iter()
            .map(|&(lo, hi)| {
                let gap = lo - previous;
                previous = hi;
                if lo == hi {
                    json!(gap)
                } else {
                    json!([gap, hi - lo])
                }
            })
            .collect(),
    )
}

/// A built message: its JSON (version 3) form, and what the checks need to know.
pub struct BuiltLarge {
    /// The message, JSON of version 3.
    pub json: Vec<u8>,
    /// Element dots of writers other than A's and B's incarnations, and removal notes'
    /// dots: writes and removals a peer may rightly relay, each possibly a range of
    /// its own in the receiver's context.
    pub relayed_dots: usize,
}

impl Large {
    /// Builds the message.
    pub fn build(&self) -> BuiltLarge {
        let writers = &self.writers;
        let index = |w: u8| usize::from(w) % writers.len();
        let mut context: Vec<Vec<(u64, u64)>> = vec![Vec::new(); writers.len()];
        let mut elements: Vec<(usize, u64)> = Vec::new();
        let mut budget = LARGE_DOTS;
        let counters = |run: &Run, budget: &mut u64| -> Vec<u64> {
            let count = u64::from(run.count).min(*budget);
            *budget -= count;
            (0..count)
                .map_while(|j| run.start.checked_add(j.checked_mul(run.stride)?))
                .collect()
        };
        for run in &self.elements {
            let w = index(run.writer);
            for n in counters(run, &mut budget) {
                elements.push((w, n));
                context[w].push((n, n));
            }
        }
        for run in &self.ranges {
            let w = index(run.writer);
            for lo in counters(run, &mut budget) {
                let hi = lo.saturating_add(run.len.max(1) - 1);
                context[w].push((lo, hi));
            }
        }
        let keys = self.keys.max(1) as usize;
        let key = |j: usize| format!("k{}", j % keys);
        // Removal notes: one per key and remover (the writers in turn, once every key
        // has one; past `keys × writers` notes a key has two by one remover), each
        // removal's dot past everything else its remover holds.
        let mut notes = Vec::new();
        let mut next: Vec<Option<u64>> = context
            .iter()
            .map(|r| r.iter().map(|r| r.1).max().unwrap_or(0).checked_add(2))
            .collect();
        for j in 0..usize::from(self.notes) {
            let w = j / keys % writers.len();
            let Some(n) = next[w] else { break };
            next[w] = n.checked_add(2);
            context[w].push((n, n));
            notes.push(json!([[w, n], key(j), [[w, [n]]]]));
        }
        let context: Vec<Vec<(u64, u64)>> = context.into_iter().map(merged).collect();

        let mut e = serde_json::Map::new();
        for (j, (w, n)) in elements.iter().enumerate() {
            let k = key(j);
            if self.nested {
                let inner = e.entry(k).or_insert_with(|| json!({}));
                let list = inner
                    .as_object_mut()
                    .expect("an object")
                    .entry(format!("c{}", j % 3))
                    .or_insert_with(|| json!([]));
                let amount = [1i64, -1, i64::MAX, i64::MIN, 7][j % 5];
                list.as_array_mut()
                    .expect("a list")
                    .push(json!([w, n, amount]));
            } else {
                let list = e.entry(k).or_insert_with(|| json!([]));
                list.as_array_mut()
                    .expect("a list")
                    .push(json!([w, n, j as u8]));
            }
        }
        let c: Vec<Value> = context
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(i, r)| json!([i, spans(r)]))
            .collect();
        let r: Vec<String> = writers.iter().map(|w| w.to_string()).collect();
        let mut delta = json!({ "r": r, "c": c, "e": e });
        if !notes.is_empty() {
            delta["x"] = Value::Array(notes);
        }

        let mut seen: std::collections::BTreeMap<String, Vec<(u64, u64)>> = Default::default();
        for (i, ranges) in context.iter().enumerate() {
            seen.entry(writers[i].to_string())
                .or_default()
                .extend(ranges.iter().copied());
        }
        for &(w, n) in &self.claims {
            seen.entry(writers[index(w)].to_string())
                .or_default()
                .push((1, n));
        }
        let seen: serde_json::Map<String, Value> = seen
            .into_iter()
            .map(|(w, r)| (w, json!(merged(r))))
            .filter(|(_, r)| r.as_array().is_some_and(|r| !r.is_empty()))
            .collect();
        let message = json!({
            "v": 3,
            "vmax": 4,
            "from": A.to_string(),
            "to": B.to_string(),
            "inc": incarnation_of(A).to_string(),
            "seen": seen,
            "delta": delta,
            "reply": self.reply,
        });
        let known = [incarnation_of(A), incarnation_of(B)];
        let relayed_dots = elements
            .iter()
            .filter(|(w, _)| !known.contains(&writers[*w]))
            .count()
            + usize::from(self.notes);
        BuiltLarge {
            json: serde_json::to_vec(&message).expect("JSON values serialize"),
            relayed_dots,
        }
    }
}

/// The `large` target's engines: limits [`LARGE_LIMITS`], size limit [`LARGE_MAX_BYTES`].
fn large_engine<T: Crdt + Default>(
    node: ReplicaId,
    state: T,
    peers: &[ReplicaId],
    time: &ManualClock,
) -> SyncEngine<T, ManualClock> {
    let mut config = Config::with_peers(peers.iter().copied()).incarnation(incarnation_of(node));
    config.limits = LARGE_LIMITS;
    config.max_message_bytes = LARGE_MAX_BYTES;
    SyncEngine::new(node, state, time.clone(), config)
}

/// The receiver B of the `large` target, which has written (`write`) and synced with
/// C, which has written too.
fn large_receiver<T: Crdt + Default>(
    write: fn(&mut SyncEngine<T, ManualClock>, &str),
) -> SyncEngine<T, ManualClock> {
    let time = ManualClock::new(START_MS);
    let mut b = large_engine(B, T::default(), &[A, C], &time);
    let mut c = large_engine(C, T::default(), &[A, B], &time);
    write(&mut b, "k0");
    write(&mut c, "k1");
    let hello = c.sync_with(B).expect("a peer");
    let reply = b.receive(hello).expect("valid").reply.expect("an answer");
    let _ = c.receive(reply).expect("valid");
    write(&mut b, "k2");
    b
}

/// Ranges of B's context that name writers other than A's and B's incarnations.
fn relayed_ranges<T: Crdt>(b: &SyncEngine<T, ManualClock>) -> usize {
    let known = [incarnation_of(A), incarnation_of(B)];
    b.state()
        .context()
        .ranges()
        .filter(|(w, _)| !known.contains(w))
        .map(|(_, r)| r.len())
        .sum()
}

/// Builds the message `data` describes ([`Large`]) and has a receiver apply it in
/// both forms: JSON (version 3) and, if it decodes, binary (version 4).
///
/// Returns `Ok` if some form was accepted, otherwise the JSON form's error.
///
/// # Panics
///
/// On a panic inside concord; if a refused message changed the receiver; if after an
/// accepted one the receiver's state is inconsistent, the receiver and a sender
/// holding the message's delta do not converge in a session, or the receiver's next
/// message to a third peer grew by more than a small multiple of the message, or its
/// context holds more relayed ranges than the relayed writes and
/// [`Limits::max_relayed_gaps`] allow.
pub fn large(data: &[u8]) -> Result<()> {
    match Large::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(description) => large_described(&description),
        Err(_) => Ok(()),
    }
}

/// [`large`] for a description.
///
/// # Panics
///
/// As [`large`].
pub fn large_described(description: &Large) -> Result<()> {
    let built = description.build();
    if description.nested {
        large_as::<OrMap<String, OrMap<String, PnCounter>>>(&built, |e, key| {
            e.update(|m, hlc| {
                m.update(key.to_string(), hlc, |inner, op| {
                    inner.update_in(op, "c0".to_string(), |n, op| n.add(op, 3))
                })
            })
            .expect("a master writes");
        })
    } else {
        large_as::<Map>(&built, |e, key| write(e, key, 1))
    }
}

fn large_as<T: Crdt + Default>(
    built: &BuiltLarge,
    write: fn(&mut SyncEngine<T, ManualClock>, &str),
) -> Result<()> {
    let mut forms = vec![built.json.clone()];
    if let Ok(mut msg) = Message::<T>::decode(&built.json, usize::MAX) {
        msg.v = concord::wire::BINARY_VERSION;
        forms.push(concord::wire::encode(&msg));
    }
    let mut refused = None;
    let mut accepted = false;
    let mut outcomes = Vec::new();
    for bytes in &forms {
        match large_one(
            &bytes[..],
            built,
            write,
            forms.last().expect("a form").len(),
        ) {
            Ok(()) => {
                accepted = true;
                outcomes.push(Ok(()));
            }
            Err(e) => {
                outcomes.push(Err(e.to_string()));
                refused.get_or_insert(e);
            }
        }
    }
    // The binary form is the JSON form decoded and written again: the same message.
    // Within the size limit, the receiver takes or refuses both alike.
    if forms.len() == 2 && forms.iter().all(|f| f.len() <= LARGE_MAX_BYTES) {
        assert_eq!(
            outcomes[0].is_ok(),
            outcomes[1].is_ok(),
            "the JSON and binary forms of one message fared differently: {outcomes:?}"
        );
    }
    match refused {
        Some(e) if !accepted => Err(e),
        _ => Ok(()),
    }
}

fn large_one<T: Crdt + Default>(
    bytes: &[u8],
    built: &BuiltLarge,
    write: fn(&mut SyncEngine<T, ManualClock>, &str),
    compact_len: usize,
) -> Result<()> {
    // What B would send C without the message.
    let mut before_c = large_receiver(write);
    let to_c_before = before_c.sync_with(C).expect("a peer").encode().len();
    let ranges_before = relayed_ranges(&before_c);

    let mut b = large_receiver(write);
    let before = b.snapshot().expect("a snapshot");
    let held = b.state().context().clone();
    let received = match b.receive_bytes(bytes) {
        Ok(received) => received,
        Err(e) => {
            assert_eq!(
                concord::wire::encode_snapshot(&b.snapshot().expect("a snapshot")),
                concord::wire::encode_snapshot(&before),
                "refused with {e:?} but changed"
            );
            return Err(e);
        }
    };
    b.state()
        .validate(&Limits::default())
        .unwrap_or_else(|e| panic!("accepted state is inconsistent: {e}"));

    // No poisoning: B's next message to C grows by the message at most (its delta
    // and context, once as the delta and once as `seen`), and its context holds no
    // more relayed ranges than the relayed writes and the cap on relayed gaps allow.
    let ranges_after = relayed_ranges(&b);
    let allowed = ranges_before + built.relayed_dots + LARGE_LIMITS.max_relayed_gaps + 8;
    assert!(
        ranges_after <= allowed,
        "the receiver's context holds {ranges_after} relayed ranges, more than {allowed}"
    );
    let to_c = b.sync_with(C).expect("a peer").encode().len();
    assert!(
        to_c <= to_c_before + 3 * compact_len + 4_096,
        "a message of {compact_len} bytes made the next message to a third peer \
         {to_c} bytes (was {to_c_before})"
    );

    // The receiver and a sender holding the message's delta converge in a session,
    // if the receiver took the delta whole (a delta that claims too far ahead is
    // skipped; one with too many siblings on a key is contained) and the delta names
    // no dot the receiver held before: a relayed dot that B holds already may be a
    // forgery of another write (the same dot on another key), which B cannot tell and
    // rightly ignores, while the sender keeps it.
    let msg = Message::<T>::decode(bytes, usize::MAX).expect("an accepted message decodes");
    let Some(delta) = msg.delta else {
        return Ok(());
    };
    if !received.hot_keys.is_empty()
        || !b.state().context().includes(delta.context())
        || !delta.context().intersection(&held).is_empty()
    {
        return Ok(());
    }
    let time = ManualClock::new(START_MS);
    let mut a = large_engine(A, delta, &[B, C], &time);
    let mut next = Some(a.sync_with(B).expect("a peer"));
    for hop in 0..8 {
        let Some(msg) = next.take() else { break };
        let at = if hop % 2 == 0 { &mut b } else { &mut a };
        match at.receive(msg) {
            Ok(received) => next = received.reply,
            Err(Error::TooManyEntries { .. } | Error::TooManySiblings { .. }) => return Ok(()),
            Err(e) => panic!("the receiver's session with the sender fails: {e}"),
        }
    }
    if b.hot_keys().is_empty() && a.hot_keys().is_empty() {
        assert!(
            a.state() == b.state(),
            "the receiver and the sender did not converge:\n  sender: {:?}\n  receiver: {:?}",
            a.state(),
            b.state()
        );
    }
    Ok(())
}
