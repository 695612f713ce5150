//! Automerge 0.12: a map document with the keys at `ROOT`.
//!
//! Two variants of writing: [`Automerge`] commits one change per put (each write
//! an independent request, as in a replicated service: comparable to a crdts op or
//! a concord delta); [`AutomergeBatched`] puts everything into one transaction and
//! commits once at [`Peer::flush`] (Automerge's best case for bulk loads).
//!
//! Sync uses Automerge's own protocol (`automerge::sync`): each replica keeps a
//! `sync::State` for the other, messages are encoded to bytes and decoded on the
//! receiving side, and the two sides ping-pong until neither has a message to send.
//! [`Peer::fork`] leaves each fork with the sync state of a completed sync at the
//! fork point, round-tripped through `State::encode`/`decode` as a persisted state
//! is on reconnect (only `shared_heads` survive). [`sync_fresh`] starts from empty
//! states instead (a peer that kept no sync state).

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ReadDoc, ROOT};

use crate::{Peer, SyncStats};

/// An Automerge replica: the document and its sync state with "the other" replica.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The document.
    pub doc: AutoCommit,
    /// Sync state for the peer this replica syncs with.
    pub peer: sync::State,
}

/// One change (commit) per put.
pub struct Automerge;
/// All puts of a batch in one transaction, committed at `flush`.
pub struct AutomergeBatched;

/// The Automerge actor id for a numeric actor (8 bytes, big-endian).
pub fn actor_id(actor: u64) -> ActorId {
    ActorId::from(actor.to_be_bytes().to_vec())
}

/// A new replica writing as `actor`.
pub fn new_replica(actor: u64) -> Replica {
    Replica {
        doc: AutoCommit::new().with_actor(actor_id(actor)),
        peer: sync::State::new(),
    }
}

/// Writes `value` under `key` in the open transaction (no commit).
pub fn put_uncommitted(doc: &mut AutoCommit, key: &str, value: &str) {
    doc.put(ROOT, key, value).expect("put on ROOT");
}

/// Runs the sync protocol between two documents with the given states until neither
/// side has anything to send. Every message is encoded and decoded, as on a wire.
pub fn sync_docs(
    a: &mut AutoCommit,
    sa: &mut sync::State,
    b: &mut AutoCommit,
    sb: &mut sync::State,
) -> SyncStats {
    let mut stats = SyncStats::default();
    for _round in 0..1000 {
        let mut sent = false;
        let out = a.sync().generate_sync_message(sa);
        if let Some(msg) = out {
            let bytes = msg.encode();
            stats.messages += 1;
            stats.bytes_a_to_b += bytes.len();
            let msg = sync::Message::decode(&bytes).expect("own message decodes");
            b.sync().receive_sync_message(sb, msg).expect("receive");
            note_convergence(a, b, &mut stats);
            sent = true;
        }
        let out = b.sync().generate_sync_message(sb);
        if let Some(msg) = out {
            let bytes = msg.encode();
            stats.messages += 1;
            stats.bytes_b_to_a += bytes.len();
            let msg = sync::Message::decode(&bytes).expect("own message decodes");
            a.sync().receive_sync_message(sa, msg).expect("receive");
            note_convergence(a, b, &mut stats);
            sent = true;
        }
        if !sent {
            return stats;
        }
    }
    panic!("automerge sync did not finish in 1000 rounds");
}

fn note_convergence(a: &mut AutoCommit, b: &mut AutoCommit, stats: &mut SyncStats) {
    if stats.messages_to_converge == 0 {
        let (mut ha, mut hb) = (a.get_heads(), b.get_heads());
        ha.sort();
        hb.sort();
        if ha == hb {
            stats.messages_to_converge = stats.messages;
        }
    }
}

/// Sync with both sides' stored states (see the module docs).
pub fn sync_replicas(a: &mut Replica, b: &mut Replica) -> SyncStats {
    sync_docs(&mut a.doc, &mut a.peer, &mut b.doc, &mut b.peer)
}

/// Sync from empty states on both sides (no persisted sync state).
pub fn sync_fresh(a: &mut Replica, b: &mut Replica) -> SyncStats {
    let mut sa = sync::State::new();
    let mut sb = sync::State::new();
    let stats = sync_docs(&mut a.doc, &mut sa, &mut b.doc, &mut sb);
    a.peer = sa;
    b.peer = sb;
    stats
}

/// A fork of `r` writing as `actor`, with the persisted sync state of a completed
/// sync at the fork point.
pub fn fork_replica(r: &mut Replica, actor: u64) -> Replica {
    let mut doc = r.doc.fork().with_actor(actor_id(actor));
    let mut s_parent = sync::State::new();
    let mut s_child = sync::State::new();
    sync_docs(&mut r.doc, &mut s_parent, &mut doc, &mut s_child);
    let peer = sync::State::decode(&s_child.encode()).expect("own state decodes");
    Replica { doc, peer }
}

/// The values under `key`, sorted (several after concurrent writes).
pub fn get(doc: &AutoCommit, key: &str) -> Vec<String> {
    let mut v: Vec<String> = doc
        .get_all(ROOT, key)
        .expect("get_all on ROOT")
        .into_iter()
        .map(|(val, _)| val.into_string().expect("string value"))
        .collect();
    v.sort();
    v
}

/// `save()` size in bytes (Automerge's compressed binary format).
pub fn saved_bytes(doc: &mut AutoCommit) -> usize {
    doc.save().len()
}

macro_rules! impl_peer {
    ($ty:ty, $name:expr, $commit_each:expr) => {
        impl Peer for $ty {
            const NAME: &'static str = $name;
            type Replica = Replica;

            fn new(actor: u64) -> Replica {
                new_replica(actor)
            }
            fn fork(r: &mut Replica, actor: u64) -> Replica {
                fork_replica(r, actor)
            }
            fn put(r: &mut Replica, key: &str, value: &str) {
                put_uncommitted(&mut r.doc, key, value);
                if $commit_each {
                    r.doc.commit();
                }
            }
            fn flush(r: &mut Replica) {
                r.doc.commit();
            }
            fn get(r: &Replica, key: &str) -> Vec<String> {
                get(&r.doc, key)
            }
            fn len(r: &Replica) -> usize {
                r.doc.length(ROOT)
            }
            fn merge(a: &mut Replica, mut b: Replica) {
                a.doc.merge(&mut b.doc).expect("merge");
            }
            fn sync(a: &mut Replica, b: &mut Replica) -> SyncStats {
                sync_replicas(a, b)
            }
            fn state_bytes(r: &mut Replica) -> usize {
                saved_bytes(&mut r.doc)
            }
        }
    };
}

impl_peer!(Automerge, "automerge", true);
impl_peer!(AutomergeBatched, "automerge-batched", false);
