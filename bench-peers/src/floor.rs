//! The floor: a plain `IndexMap<String, String>`, no causality, no conflict
//! handling. Put is an insert; merge is "for each entry of the other,
//! insert/overwrite"; sync ships the raw JSON of the entries each side changed
//! since the fork (the traffic baseline) and inserts them.

use indexmap::IndexMap;

use crate::{Peer, SyncStats};

/// A floor replica: the map, plus — after a fork only — the entries written since.
#[derive(Debug, Clone, Default)]
pub struct Replica {
    /// The state.
    pub map: IndexMap<String, String>,
    /// Entries written since the fork (`None` before any fork, so plain puts pay
    /// for one untaken branch only).
    pub changed: Option<IndexMap<String, String>>,
}

/// Marker type for the [`Peer`] impl.
pub struct Floor;

/// Inserts/overwrites every entry of `other` into `map`.
pub fn merge_maps(map: &mut IndexMap<String, String>, other: IndexMap<String, String>) {
    for (k, v) in other {
        map.insert(k, v);
    }
}

/// JSON of a plain map.
pub fn to_json(map: &IndexMap<String, String>) -> Vec<u8> {
    serde_json::to_vec(map).expect("plain map serializes")
}

impl Peer for Floor {
    const NAME: &'static str = "indexmap";
    type Replica = Replica;

    fn new(_actor: u64) -> Replica {
        Replica::default()
    }

    fn fork(r: &mut Replica, _actor: u64) -> Replica {
        Replica {
            map: r.map.clone(),
            changed: Some(IndexMap::new()),
        }
    }

    fn put(r: &mut Replica, key: &str, value: &str) {
        r.map.insert(key.to_owned(), value.to_owned());
        if let Some(changed) = &mut r.changed {
            changed.insert(key.to_owned(), value.to_owned());
        }
    }

    fn get(r: &Replica, key: &str) -> Vec<String> {
        r.map.get(key).cloned().into_iter().collect()
    }

    fn len(r: &Replica) -> usize {
        r.map.len()
    }

    fn merge(a: &mut Replica, b: Replica) {
        merge_maps(&mut a.map, b.map);
    }

    fn sync(a: &mut Replica, b: &mut Replica) -> SyncStats {
        let to_b = to_json(&a.changed.take().unwrap_or_default());
        let to_a = to_json(&b.changed.take().unwrap_or_default());
        a.changed = Some(IndexMap::new());
        b.changed = Some(IndexMap::new());
        let for_b: IndexMap<String, String> = serde_json::from_slice(&to_b).expect("decode");
        let for_a: IndexMap<String, String> = serde_json::from_slice(&to_a).expect("decode");
        merge_maps(&mut b.map, for_b);
        merge_maps(&mut a.map, for_a);
        SyncStats {
            messages: 2,
            messages_to_converge: 2,
            bytes_a_to_b: to_b.len(),
            bytes_b_to_a: to_a.len(),
        }
    }

    fn state_bytes(r: &mut Replica) -> usize {
        to_json(&r.map).len()
    }
}
