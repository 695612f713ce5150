//! concord: an `OrMap<String, MvRegister<String>>` inside a [`SyncEngine`] per
//! replica. Puts go through the engine (`OrMap::apply`: the engine replicates with
//! `delta_since`, so a put builds no delta); sync is one engine session, every message
//! encoded and decoded with concord's wire format; merge is the full-state join.

use concord::sync::{Config, Snapshot, SyncEngine, PROTOCOL_VERSION};
use concord::{Crdt, Hlc, ManualClock, MvRegister, OrMap, ReplicaId, Resolver, Timestamp};

use crate::{Peer, SyncStats, ACTOR_A, ACTOR_B, ACTOR_BASE};

/// The replicated map.
pub type Map = OrMap<String, MvRegister<String>>;

/// One concord replica: its engine.
pub struct Replica {
    /// The engine holding the state.
    pub engine: SyncEngine<Map, ManualClock>,
}

impl Clone for Replica {
    /// A copy through a snapshot, restored as a new incarnation (as a real restart
    /// would be): the benches clone outside the timed part.
    fn clone(&self) -> Self {
        // `SyncEngine::snapshot` takes `&mut self` (it may extend a lease; these engines
        // have none), so the snapshot is assembled from what the engine shows.
        let e = &self.engine;
        let peers = e.metrics().peers;
        let snapshot = Snapshot {
            node: e.node(),
            role: e.role(),
            state: e.state().clone(),
            peers: peers.iter().map(|p| (p.peer, p.acked.clone())).collect(),
            hlc_last: e
                .state()
                .max_timestamp()
                .unwrap_or(Timestamp::new(0, 0, e.node())),
            peer_versions: peers.iter().map(|p| (p.peer, p.protocol_version)).collect(),
            epoch: e.epoch(),
            leader: e.leader(),
        };
        let engine =
            SyncEngine::restore(snapshot, time(), config(None)).expect("a snapshot restores");
        Replica { engine }
    }
}

/// The node id of an actor.
pub fn node(actor: u64) -> ReplicaId {
    ReplicaId::from_u128(actor as u128)
}

/// The protocol version concord's engines speak: the newest, or `BENCH_PROTOCOL`
/// (3 measures the JSON wire).
fn protocol() -> u32 {
    std::env::var("BENCH_PROTOCOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PROTOCOL_VERSION)
}

fn config(incarnation: Option<ReplicaId>) -> Config {
    Config {
        max_message_bytes: 1 << 30,
        incarnation,
        protocol_version: protocol(),
        ..Config::with_peers([ACTOR_BASE, ACTOR_A, ACTOR_B].map(node))
    }
}

fn time() -> ManualClock {
    ManualClock::new(1_700_000_000_000)
}

/// Marker type for the [`Peer`] impl.
pub struct Concord;

impl Peer for Concord {
    const NAME: &'static str = "concord";
    type Replica = Replica;

    fn new(actor: u64) -> Replica {
        Replica {
            engine: SyncEngine::new(node(actor), Map::new(), time(), config(Some(node(actor)))),
        }
    }

    fn fork(r: &mut Replica, actor: u64) -> Replica {
        // The fork knows it shares the state with everyone (as after a sync).
        let clock = r.engine.context().clone();
        let others = [ACTOR_BASE, ACTOR_A, ACTOR_B]
            .into_iter()
            .filter(|a| *a != actor);
        let snapshot = Snapshot {
            node: node(actor),
            peers: others.clone().map(|a| (node(a), clock.clone())).collect(),
            // ... and has heard that every peer speaks the newest version, as peers
            // in a steady state have (a first exchange speaks version 1).
            peer_versions: others.map(|a| (node(a), protocol())).collect(),
            ..r.engine.snapshot().unwrap()
        };
        let engine = SyncEngine::restore(snapshot, time(), config(None)).expect("fork restores");
        Replica { engine }
    }

    fn put(r: &mut Replica, key: &str, value: &str) {
        r.engine
            .update(|m, hlc: &mut Hlc<ManualClock>| {
                m.apply(key.to_owned(), hlc, |reg, op| {
                    reg.assign(op, value.to_owned())
                })
            })
            .expect("put");
    }

    fn get(r: &Replica, key: &str) -> Vec<String> {
        let mut values: Vec<String> = r
            .engine
            .state()
            .get(&key.to_owned())
            .map(|reg| reg.values().cloned().collect())
            .unwrap_or_default();
        values.sort();
        values
    }

    fn len(r: &Replica) -> usize {
        r.engine.state().len()
    }

    fn merge(a: &mut Replica, b: Replica) {
        // Through the engine: validated like any peer input, conflicts reported.
        let _ = a
            .engine
            .merge_state(b.engine.into_state())
            .expect("valid state");
    }

    fn sync(a: &mut Replica, b: &mut Replica) -> SyncStats {
        let b_id = b.engine.node();
        let hello = a.engine.sync_with(b_id).expect("peer");
        let to_b = hello.encode();
        let answer = b.engine.receive_bytes(&to_b).expect("b accepts");
        let reply = answer.reply.expect("b answers");
        let to_a = reply.encode();
        let _ = a.engine.receive_bytes(&to_a).expect("a accepts");
        SyncStats {
            messages: 2,
            messages_to_converge: 2,
            bytes_a_to_b: to_b.len(),
            bytes_b_to_a: to_a.len(),
        }
    }

    fn state_bytes(r: &mut Replica) -> usize {
        concord::wire::encode_snapshot(r.engine.state()).len()
    }
}

/// The trusted full-state join (`Resolver::merge`, no validation): `b`'s state into a
/// copy of `a`'s.
pub fn raw_join(a: &Map, b: Map) -> Map {
    let mut out = a.clone();
    out.merge(b);
    out
}

/// The size of the full state's JSON (what [`Peer::state_bytes`] gives is binary).
pub fn state_json_bytes(r: &Replica) -> usize {
    serde_json::to_vec(r.engine.state()).expect("encode").len()
}

/// The full state's JSON.
pub fn to_json(m: &Map) -> Vec<u8> {
    serde_json::to_vec(m).expect("encode")
}

/// `delta_since` of `from` for `to`'s clock, as JSON.
pub fn delta_json(from: &Map, to: &Map) -> Vec<u8> {
    serde_json::to_vec(&from.delta_since(&to.context().clock())).expect("encode")
}
