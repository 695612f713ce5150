//! Peer comparison: the same cases through every [`Peer`], timed in one run.
//!
//! Groups (ids are `group/peer`):
//! - `put`: build a replica of `BENCH_KEYS` keys one put at a time (throughput in
//!   keys/s; divide the time by the key count for time per put);
//! - `merge`: full-state merge of two replicas that diverged from a common state
//!   (10% of keys changed on each side, 1% on both);
//! - `sync`: converge two replicas both ways after `BENCH_CHANGES` changes on each
//!   side, the way each peer does it over a wire (encode, decode, merge);
//! - `encode`: full-state encoding (JSON for crdts and the floor, `save()` for Automerge);
//! - `lww`: crdts `LWWReg` write and merge.
//!
//! Byte counts and round trips come from `cargo run --release --bin traffic`.
//!
//! `BENCH_KEYS=1000 cargo bench` for a quick smoke run.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};

use concord_bench_peers::automerge_peer::{self, Automerge, AutomergeBatched};
use concord_bench_peers::concord;
use concord_bench_peers::concord_peer::Concord;
use concord_bench_peers::crdts_peer::{self, Crdts};
use concord_bench_peers::floor::Floor;
use concord_bench_peers::{
    build, build_from, changes_from_env, diverged, keys_from_env, sync_pair, Dataset, Peer,
};

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    // Few samples, short windows, fewer bootstrap resamples (criterion's analysis runs
    // single-threaded without its rayon feature): the whole run takes minutes on 2 cores.
    g.sample_size(10)
        .nresamples(10_000)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

fn put<P: Peer>(g: &mut BenchmarkGroup<WallTime>, data: &Dataset) {
    g.bench_function(P::NAME, |b| {
        b.iter_with_large_drop(|| build_from::<P>(black_box(data)))
    });
}

fn merge<P: Peer>(g: &mut BenchmarkGroup<WallTime>, n: usize) {
    let (a, b) = diverged::<P>(n);
    g.bench_function(P::NAME, |bench| {
        bench.iter_batched(
            || (a.clone(), b.clone()),
            |(mut a, b)| {
                P::merge(&mut a, b);
                a
            },
            BatchSize::PerIteration,
        )
    });
}

fn sync_with<P: Peer>(
    g: &mut BenchmarkGroup<WallTime>,
    id: &str,
    pair: &(P::Replica, P::Replica),
    sync: fn(&mut P::Replica, &mut P::Replica) -> concord_bench_peers::SyncStats,
) {
    g.bench_function(id, |bench| {
        bench.iter_batched(
            || pair.clone(),
            |(mut a, mut b)| {
                let stats = sync(&mut a, &mut b);
                (a, b, stats)
            },
            BatchSize::PerIteration,
        )
    });
}

fn sync<P: Peer>(g: &mut BenchmarkGroup<WallTime>, n: usize, changes: usize) {
    let pair = sync_pair::<P>(n, changes);
    sync_with::<P>(g, P::NAME, &pair, P::sync);
}

fn encode<P: Peer>(g: &mut BenchmarkGroup<WallTime>, n: usize) {
    let mut r = build::<P>(n);
    g.bench_function(P::NAME, |b| b.iter(|| P::state_bytes(black_box(&mut r))));
}

fn peers(c: &mut Criterion) {
    let n = keys_from_env();
    let changes = changes_from_env();
    eprintln!("peer benches: {n} keys, {changes} changes per side (BENCH_KEYS, BENCH_CHANGES)");

    let mut g = group(c, "put");
    g.throughput(Throughput::Elements(n as u64));
    let data = Dataset::new(n);
    put::<Floor>(&mut g, &data);
    put::<Concord>(&mut g, &data);
    put::<Crdts>(&mut g, &data);
    put::<Automerge>(&mut g, &data);
    put::<AutomergeBatched>(&mut g, &data);
    drop(data);
    g.finish();

    let mut g = group(c, "merge");
    merge::<Floor>(&mut g, n);
    merge::<Concord>(&mut g, n);
    {
        // The trusted join (`Resolver::merge`), without the engine's validation.
        let (a, b) = diverged::<Concord>(n);
        let (a, b) = (a.engine.into_state(), b.engine.into_state());
        g.bench_function("concord-raw-join", |bench| {
            bench.iter_batched(
                || (a.clone(), b.clone()),
                |(mut a, b)| {
                    concord::Resolver::merge(&mut a, b);
                    a
                },
                BatchSize::PerIteration,
            )
        });
    }
    merge::<Crdts>(&mut g, n);
    merge::<Automerge>(&mut g, n);
    merge::<AutomergeBatched>(&mut g, n);
    g.finish();

    let mut g = group(c, "sync");
    sync::<Floor>(&mut g, n, changes);
    sync::<Concord>(&mut g, n, changes);
    sync::<Crdts>(&mut g, n, changes);
    {
        let plan = concord_bench_peers::Plan::sync(n, changes);
        let pair = crdts_peer::apply_plan_logged(&plan);
        sync_with::<Crdts>(&mut g, "crdts-ops", &pair, crdts_peer::sync_ops);
    }
    {
        let pair = sync_pair::<Automerge>(n, changes);
        sync_with::<Automerge>(&mut g, "automerge", &pair, Automerge::sync);
        sync_with::<Automerge>(&mut g, "automerge-fresh", &pair, automerge_peer::sync_fresh);
    }
    sync::<AutomergeBatched>(&mut g, n, changes);
    g.finish();

    let mut g = group(c, "encode");
    g.throughput(Throughput::Elements(n as u64));
    encode::<Floor>(&mut g, n);
    encode::<Concord>(&mut g, n);
    encode::<Crdts>(&mut g, n);
    encode::<Automerge>(&mut g, n);
    g.finish();

    let mut g = group(c, "lww");
    g.bench_function("concord-set", |b| {
        let mut hlc = concord::Hlc::new(
            concord::ReplicaId::from_u128(1),
            concord::ManualClock::new(1_700_000_000_000),
        );
        let mut reg = concord::LwwRegister::new();
        b.iter(|| {
            black_box(
                reg.write(black_box("value-000123").to_owned(), &mut hlc)
                    .unwrap(),
            )
        })
    });
    g.bench_function("concord-merge", |b| {
        let time = concord::ManualClock::new(1_700_000_000_000);
        let mut x = concord::LwwRegister::new();
        x.write(
            "value-000123-a".to_owned(),
            &mut concord::Hlc::new(concord::ReplicaId::from_u128(1), time.clone()),
        )
        .unwrap();
        let mut y = concord::LwwRegister::new();
        y.write(
            "value-000123-b".to_owned(),
            &mut concord::Hlc::new(concord::ReplicaId::from_u128(2), time),
        )
        .unwrap();
        b.iter_batched(
            || (x.clone(), y.clone()),
            |(mut x, y)| {
                concord::Resolver::merge(&mut x, y);
                x
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("crdts-write", |b| {
        let mut reg = crdts_peer::Lww {
            val: String::new(),
            marker: 0,
        };
        let mut marker = 0u64;
        b.iter(|| {
            marker += 1;
            crdts_peer::lww_write(&mut reg, black_box("value-000123").to_owned(), marker);
        })
    });
    g.bench_function("crdts-merge", |b| {
        let a = crdts_peer::Lww {
            val: "value-000123-a".to_owned(),
            marker: 7,
        };
        let other = crdts_peer::Lww {
            val: "value-000123-b".to_owned(),
            marker: 8,
        };
        b.iter_batched(
            || (a.clone(), other.clone()),
            |(mut a, other)| {
                crdts_peer::lww_merge(&mut a, other);
                a
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, peers);
criterion_main!(benches);
