//! `crdts` 7.3.2: `Map<String, MVReg<String, u64>, u64>` (and `LWWReg` for the
//! register micro-cases).
//!
//! Writes follow the crate's documented pattern: derive an add context from the
//! map's read context, build the op with `Map::update` + `MVReg::write`, apply it
//! with `CmRDT::apply`. `Map::validate_op` is never called: it rejects valid ops.
//! No key is ever removed: serde_json fails on a map with deferred removes (their
//! map is keyed by `VClock`).
//!
//! crdts has no delta-state path: to converge two replicas over a wire without an
//! op log per peer it ships full state both ways ([`Crdts::sync`]). Its op-based
//! path ([`sync_ops`]) is measured too, but it needs the application to keep every
//! op and deliver it exactly in causal order, which anti-entropy does not assume.

use crdts::{mvreg::MVReg, CmRDT, CvRDT, LWWReg};

use crate::{Peer, SyncStats};

/// The comparable map type.
pub type Map = crdts::Map<String, MVReg<String, u64>, u64>;
/// One map op (what `Map::update` returns).
pub type Op = crdts::map::Op<String, MVReg<String, u64>, u64>;

/// A crdts replica: the map and the actor it writes as.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The state.
    pub map: Map,
    /// This replica's actor.
    pub actor: u64,
    /// Ops made since the last fork, kept only when `log_ops` is set (for [`sync_ops`]).
    pub ops: Vec<Op>,
    /// Whether `put` keeps its ops in `ops`.
    pub log_ops: bool,
}

/// Marker type for the [`Peer`] impl.
pub struct Crdts;

/// Builds the op that writes `value` under `key` as `actor`.
pub fn put_op(map: &Map, actor: u64, key: &str, value: &str) -> Op {
    let ctx = map.read_ctx().derive_add_ctx(actor);
    map.update(key, ctx, |reg, ctx| reg.write(value.to_owned(), ctx))
}

/// Writes `value` under `key` as `actor` (op built and applied locally).
pub fn put(map: &mut Map, actor: u64, key: &str, value: &str) {
    let op = put_op(map, actor, key, value);
    map.apply(op);
}

/// Full-state JSON of a map.
pub fn to_json(map: &Map) -> Vec<u8> {
    serde_json::to_vec(map).expect("a crdts Map without deferred removes serializes")
}

/// Decodes a full-state JSON map.
pub fn from_json(bytes: &[u8]) -> Map {
    serde_json::from_slice(bytes).expect("valid crdts Map JSON")
}

/// Full-state anti-entropy: each side encodes its whole map as JSON, the other
/// decodes and merges it. Two messages, one each way.
pub fn sync_full_state(a: &mut Map, b: &mut Map) -> SyncStats {
    let to_b = to_json(a);
    let to_a = to_json(b);
    b.merge(from_json(&to_b));
    a.merge(from_json(&to_a));
    SyncStats {
        messages: 2,
        messages_to_converge: 2,
        bytes_a_to_b: to_b.len(),
        bytes_b_to_a: to_a.len(),
    }
}

/// Op-based exchange: each side ships the ops it logged since the fork as one JSON
/// array, the other applies them in order. Needs `log_ops` set on both before their
/// puts. Both op logs are drained.
pub fn sync_ops(a: &mut Replica, b: &mut Replica) -> SyncStats {
    let to_b = serde_json::to_vec(&a.ops).expect("ops serialize");
    let to_a = serde_json::to_vec(&b.ops).expect("ops serialize");
    a.ops.clear();
    b.ops.clear();
    let ops_for_b: Vec<Op> = serde_json::from_slice(&to_b).expect("ops decode");
    let ops_for_a: Vec<Op> = serde_json::from_slice(&to_a).expect("ops decode");
    for op in ops_for_b {
        b.map.apply(op);
    }
    for op in ops_for_a {
        a.map.apply(op);
    }
    SyncStats {
        messages: 2,
        messages_to_converge: 2,
        bytes_a_to_b: to_b.len(),
        bytes_b_to_a: to_a.len(),
    }
}

/// Like [`crate::apply_plan`], but with both replicas logging their ops, for [`sync_ops`].
pub fn apply_plan_logged(plan: &crate::Plan) -> (Replica, Replica) {
    let mut base = crate::build::<Crdts>(plan.n);
    let mut a = Crdts::fork(&mut base, crate::ACTOR_A);
    let mut b = Crdts::fork(&mut base, crate::ACTOR_B);
    a.log_ops = true;
    b.log_ops = true;
    for &i in &plan.a {
        Crdts::put(&mut a, &crate::key(i), &crate::changed_value(i, 'a'));
    }
    for &i in &plan.b {
        Crdts::put(&mut b, &crate::key(i), &crate::changed_value(i, 'b'));
    }
    (a, b)
}

impl Peer for Crdts {
    const NAME: &'static str = "crdts";
    type Replica = Replica;

    fn new(actor: u64) -> Replica {
        Replica {
            map: Map::new(),
            actor,
            ops: Vec::new(),
            log_ops: false,
        }
    }

    fn fork(r: &mut Replica, actor: u64) -> Replica {
        Replica {
            map: r.map.clone(),
            actor,
            ops: Vec::new(),
            log_ops: false,
        }
    }

    fn put(r: &mut Replica, key: &str, value: &str) {
        let op = put_op(&r.map, r.actor, key, value);
        if r.log_ops {
            r.ops.push(op.clone());
        }
        r.map.apply(op);
    }

    fn get(r: &Replica, key: &str) -> Vec<String> {
        let mut v = r
            .map
            .get(&key.to_owned())
            .val
            .map(|reg| reg.read().val)
            .unwrap_or_default();
        v.sort();
        v
    }

    fn len(r: &Replica) -> usize {
        r.map.len().val
    }

    fn merge(a: &mut Replica, b: Replica) {
        a.map.merge(b.map);
    }

    fn sync(a: &mut Replica, b: &mut Replica) -> SyncStats {
        sync_full_state(&mut a.map, &mut b.map)
    }

    fn state_bytes(r: &mut Replica) -> usize {
        to_json(&r.map).len()
    }
}

/// The LWW register type used for the register micro-cases.
pub type Lww = LWWReg<String, u64>;

/// A register write: `LWWReg::update` with a marker (a larger marker wins).
pub fn lww_write(reg: &mut Lww, value: String, marker: u64) {
    reg.update(value, marker);
}

/// A register merge (`CvRDT::merge`).
pub fn lww_merge(a: &mut Lww, b: Lww) {
    a.merge(b);
}
