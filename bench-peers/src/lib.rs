//! Benchmarks of concord's peers, kept out of the main crate's build.
//!
//! Every peer implements [`Peer`]: a replica type with `put`, full-state `merge`,
//! a two-party `sync` that reports its traffic, and the size of its full state.
//! The scenarios ([`build`], [`diverged`], [`sync_pair`]) are written once over that
//! trait, so the criterion benches (`benches/peers.rs`) and the traffic table
//! (`src/bin/traffic.rs`) run the same data through every peer, and concord can be
//! added beside them by implementing [`Peer`] for it.
//!
//! Data: `n` string keys `key-000123` with short string values `value-000123`.
//! Sizes are parameters everywhere; [`keys_from_env`] reads `BENCH_KEYS` (default
//! 100 000) so a smoke run with 1 000 keys is `BENCH_KEYS=1000 cargo bench`.
//!
//! Peers: [`crdts_peer`] (`crdts` 7.3.2, `Map<String, MVReg<String, u64>, u64>`),
//! [`automerge_peer`] (a map document at ROOT; one change per put, and a batched
//! variant), [`floor`] (a plain `IndexMap<String, String>`).

use std::time::Duration;

/// The main crate, re-exported so that its side can be added to the same run.
pub use concord;

pub mod automerge_peer;
pub mod concord_peer;
pub mod crdts_peer;
pub mod floor;

/// Default number of keys in the shared state.
pub const DEFAULT_KEYS: usize = 100_000;
/// Default number of changes each side makes in the sync case.
pub const DEFAULT_CHANGES: usize = 100;

/// `BENCH_KEYS` from the environment, or [`DEFAULT_KEYS`].
pub fn keys_from_env() -> usize {
    env_usize("BENCH_KEYS", DEFAULT_KEYS)
}

/// `BENCH_CHANGES` from the environment, or [`DEFAULT_CHANGES`].
pub fn changes_from_env() -> usize {
    env_usize("BENCH_CHANGES", DEFAULT_CHANGES)
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(s) => s
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a number")),
        Err(_) => default,
    }
}

/// The key for index `i`: `key-000123`.
pub fn key(i: usize) -> String {
    format!("key-{i:06}")
}

/// True when `BENCH_VALUES=short`: values of about two bytes instead of 12–14.
pub fn short_values() -> bool {
    std::env::var("BENCH_VALUES").is_ok_and(|v| v == "short")
}

/// The initial value for index `i`: `value-000123` (with `BENCH_VALUES=short`: its
/// last digit, `3`).
pub fn value(i: usize) -> String {
    if short_values() {
        return format!("{}", i % 10);
    }
    format!("value-{i:06}")
}

/// The value side `side` (`'a'` or `'b'`) writes when it changes index `i`:
/// `value-000123-a` (with `BENCH_VALUES=short`: `3a`).
pub fn changed_value(i: usize, side: char) -> String {
    if short_values() {
        return format!("{}{side}", i % 10);
    }
    format!("value-{i:06}-{side}")
}

/// Actor of the replica that builds the common state.
pub const ACTOR_BASE: u64 = 1;
/// Actor of replica A after the fork.
pub const ACTOR_A: u64 = 2;
/// Actor of replica B after the fork.
pub const ACTOR_B: u64 = 3;

/// Which keys each side changes after the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Keys in the common state (indices `0..n`).
    pub n: usize,
    /// Indices side A rewrites, in order.
    pub a: Vec<usize>,
    /// Indices side B rewrites, in order.
    pub b: Vec<usize>,
}

impl Plan {
    /// The merge case: each side rewrites 10% of the keys. A takes every index
    /// `≡ 0 (mod 10)`; B takes the indices `≡ 1 (mod 10)` except one in ten of them,
    /// which it replaces with indices `≡ 0 (mod 100)` — keys A changed too. So each
    /// side changes `n/10` keys, and `n/100` keys are changed on both sides
    /// (concurrent writes: conflicts).
    pub fn diverge(n: usize) -> Plan {
        let a = (0..n).step_by(10).collect();
        let b = (0..n)
            .filter(|i| (i % 10 == 1 && i % 100 != 1) || i % 100 == 0)
            .collect();
        Plan { n, a, b }
    }

    /// The sync case: each side rewrites `changes` keys, spread over the map, and
    /// the two sets are disjoint (so `2 * changes` entries change in all).
    pub fn sync(n: usize, changes: usize) -> Plan {
        assert!(2 * changes <= n, "need n >= 2 * changes");
        let stride = n / (2 * changes).max(1);
        let a = (0..changes).map(|j| 2 * j * stride).collect();
        let b = (0..changes).map(|j| (2 * j + 1) * stride).collect();
        Plan { n, a, b }
    }

    /// Keys changed on both sides.
    pub fn overlap(&self) -> usize {
        let a: std::collections::HashSet<_> = self.a.iter().collect();
        self.b.iter().filter(|i| a.contains(i)).count()
    }

    /// The changed entries of one side as a JSON object `{"key-…":"value-…-a",…}`.
    pub fn changed_json(&self, side: char) -> Vec<u8> {
        let idx = if side == 'a' { &self.a } else { &self.b };
        let m: indexmap::IndexMap<String, String> = idx
            .iter()
            .map(|&i| (key(i), changed_value(i, side)))
            .collect();
        serde_json::to_vec(&m).expect("plain map serializes")
    }

    /// Raw JSON bytes of all changed entries (both sides): the traffic baseline.
    pub fn raw_changed_json_bytes(&self) -> usize {
        self.changed_json('a').len() + self.changed_json('b').len()
    }
}

/// What a two-party sync cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Messages sent, both directions together, until neither side had anything
    /// more to send (a protocol's closing acknowledgement counts).
    pub messages: usize,
    /// Messages sent until both replicas held the same state (`<= messages`).
    pub messages_to_converge: usize,
    /// Bytes sent from A to B.
    pub bytes_a_to_b: usize,
    /// Bytes sent from B to A.
    pub bytes_b_to_a: usize,
}

impl SyncStats {
    /// Bytes on the wire, both directions.
    pub fn bytes(&self) -> usize {
        self.bytes_a_to_b + self.bytes_b_to_a
    }

    /// Round trips, counting a message and its answer as one (`ceil(messages / 2)`).
    pub fn round_trips(&self) -> usize {
        self.messages.div_ceil(2)
    }
}

/// A replicated map of strings to strings, as one peer library offers it.
///
/// Replicas are values; the scenarios below clone and fork them. Nothing here is
/// timed: the benches time calls of these methods.
pub trait Peer {
    /// Short name for tables and bench ids.
    const NAME: &'static str;
    /// One replica's state (plus whatever the peer keeps beside it, e.g. a sync state).
    type Replica: Clone;

    /// An empty replica writing as `actor`.
    fn new(actor: u64) -> Self::Replica;
    /// A copy of `r` that writes as `actor`, and that knows it shares `r`'s current
    /// state with `r` (what a completed sync would leave behind).
    fn fork(r: &mut Self::Replica, actor: u64) -> Self::Replica;
    /// Writes `value` under `key`, overwriting what this replica has seen there.
    fn put(r: &mut Self::Replica, key: &str, value: &str);
    /// Ends a batch of puts (Automerge's batched variant commits here); no-op by default.
    fn flush(_r: &mut Self::Replica) {}
    /// The values under `key` (several when concurrent writes are kept), sorted.
    fn get(r: &Self::Replica, key: &str) -> Vec<String>;
    /// Number of keys.
    fn len(r: &Self::Replica) -> usize;
    /// Full-state merge of `b` into `a`.
    fn merge(a: &mut Self::Replica, b: Self::Replica);
    /// Converges `a` and `b` both ways the way this peer does it over a wire
    /// (encode, send, decode, merge), and reports the traffic.
    fn sync(a: &mut Self::Replica, b: &mut Self::Replica) -> SyncStats;
    /// Size of the full state in this peer's persistent/wire format
    /// (JSON for crdts and the floor, `save()` for Automerge).
    fn state_bytes(r: &mut Self::Replica) -> usize;
}

/// The keys `0..n` and their initial values, formatted once (so that timed puts
/// do not pay for `format!`).
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `key(i)` for `i in 0..n`.
    pub keys: Vec<String>,
    /// `value(i)` for `i in 0..n`.
    pub values: Vec<String>,
}

impl Dataset {
    /// Keys and values `0..n`.
    pub fn new(n: usize) -> Dataset {
        Dataset {
            keys: (0..n).map(key).collect(),
            values: (0..n).map(value).collect(),
        }
    }
}

/// One replica (actor [`ACTOR_BASE`]) holding the dataset, written one put at a
/// time, then flushed. This is what the `put` bench times.
pub fn build_from<P: Peer>(data: &Dataset) -> P::Replica {
    let mut r = P::new(ACTOR_BASE);
    for (k, v) in data.keys.iter().zip(&data.values) {
        P::put(&mut r, k, v);
    }
    P::flush(&mut r);
    r
}

/// [`build_from`] with a fresh [`Dataset`] of `n` keys.
pub fn build<P: Peer>(n: usize) -> P::Replica {
    build_from::<P>(&Dataset::new(n))
}

/// Two replicas forked from a common state of `plan.n` keys, each having applied
/// its side of `plan`. Returned as (A, B).
pub fn apply_plan<P: Peer>(plan: &Plan) -> (P::Replica, P::Replica) {
    let mut base = build::<P>(plan.n);
    let mut a = P::fork(&mut base, ACTOR_A);
    let mut b = P::fork(&mut base, ACTOR_B);
    drop(base);
    for &i in &plan.a {
        P::put(&mut a, &key(i), &changed_value(i, 'a'));
    }
    P::flush(&mut a);
    for &i in &plan.b {
        P::put(&mut b, &key(i), &changed_value(i, 'b'));
    }
    P::flush(&mut b);
    (a, b)
}

/// The merge case: `n` keys, 10% rewritten on each side, 1% on both ([`Plan::diverge`]).
pub fn diverged<P: Peer>(n: usize) -> (P::Replica, P::Replica) {
    apply_plan::<P>(&Plan::diverge(n))
}

/// The sync case: `n` keys, `changes` disjoint rewrites on each side ([`Plan::sync`]).
pub fn sync_pair<P: Peer>(n: usize, changes: usize) -> (P::Replica, P::Replica) {
    apply_plan::<P>(&Plan::sync(n, changes))
}

/// Checks that `a` and `b` agree on every key of `plan` and hold what the plan
/// wrote (a key changed on both sides holds both values, or one of them for a
/// peer that keeps a single value). Panics otherwise.
pub fn check_converged<P: Peer>(a: &P::Replica, b: &P::Replica, plan: &Plan) {
    assert_eq!(P::len(a), plan.n, "{}: key count of A", P::NAME);
    assert_eq!(P::len(b), plan.n, "{}: key count of B", P::NAME);
    let sa: std::collections::HashSet<_> = plan.a.iter().collect();
    let sb: std::collections::HashSet<_> = plan.b.iter().collect();
    for i in 0..plan.n {
        let k = key(i);
        let va = P::get(a, &k);
        let vb = P::get(b, &k);
        assert_eq!(va, vb, "{}: replicas differ at {k}", P::NAME);
        let want = match (sa.contains(&i), sb.contains(&i)) {
            (false, false) => vec![value(i)],
            (true, false) => vec![changed_value(i, 'a')],
            (false, true) => vec![changed_value(i, 'b')],
            (true, true) => vec![changed_value(i, 'a'), changed_value(i, 'b')],
        };
        if want.len() == 2 && va.len() == 1 {
            assert!(want.contains(&va[0]), "{}: {k} = {va:?}", P::NAME);
        } else {
            assert_eq!(va, want, "{}: value at {k}", P::NAME);
        }
    }
}

/// Runs `f` once and returns its result and how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = std::time::Instant::now();
    let out = f();
    (out, t.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `causal`: whether full-state merge is causal (false for the floor, whose
    /// merge overwrites changed entries with the other side's stale ones: it is a
    /// cost floor, not a correct merge).
    fn converge<P: Peer>(n: usize, causal: bool) {
        let plan = Plan::diverge(n);
        let (mut a, b) = apply_plan::<P>(&plan);
        let b2 = b.clone();
        P::merge(&mut a, b);
        let mut b = b2;
        let a2 = a.clone();
        P::merge(&mut b, a2);
        if causal {
            check_converged::<P>(&a, &b, &plan);
        } else {
            assert_eq!(P::len(&a), n);
        }

        let plan = Plan::sync(n, 10);
        let (mut a, mut b) = apply_plan::<P>(&plan);
        let stats = P::sync(&mut a, &mut b);
        assert!(stats.messages >= 2 && stats.bytes_a_to_b > 0 && stats.bytes_b_to_a > 0);
        check_converged::<P>(&a, &b, &plan);
        assert!(P::state_bytes(&mut a) > 0);
    }

    #[test]
    fn crdts_op_sync_converges() {
        let plan = Plan::sync(1000, 10);
        let (mut a, mut b) = crdts_peer::apply_plan_logged(&plan);
        let stats = crdts_peer::sync_ops(&mut a, &mut b);
        assert_eq!(stats.messages, 2);
        check_converged::<crdts_peer::Crdts>(&a, &b, &plan);
    }

    #[test]
    fn automerge_fresh_sync_converges() {
        use automerge_peer::Automerge;
        let plan = Plan::sync(1000, 10);
        let (mut a, mut b) = apply_plan::<Automerge>(&plan);
        automerge_peer::sync_fresh(&mut a, &mut b);
        check_converged::<Automerge>(&a, &b, &plan);
    }

    #[test]
    fn plans() {
        let p = Plan::diverge(1000);
        assert_eq!((p.a.len(), p.b.len(), p.overlap()), (100, 100, 10));
        let p = Plan::sync(1000, 100);
        assert_eq!((p.a.len(), p.b.len(), p.overlap()), (100, 100, 0));
        assert!(p.b.iter().all(|&i| i < 1000));
    }

    #[test]
    fn crdts_converges() {
        converge::<crdts_peer::Crdts>(1000, true);
    }

    #[test]
    fn automerge_converges() {
        converge::<automerge_peer::Automerge>(1000, true);
        converge::<automerge_peer::AutomergeBatched>(1000, true);
    }

    #[test]
    fn concord_converges() {
        converge::<concord_peer::Concord>(1000, true);
    }

    #[test]
    fn floor_converges() {
        converge::<floor::Floor>(1000, false);
    }
}
