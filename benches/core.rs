//! Criterion benchmarks of concord's own hot paths. Peer comparisons (crdts, Automerge,
//! a plain IndexMap) live in `bench-peers/`, run in the same process there.
//!
//! `cargo bench --bench core` runs everything; `cargo bench --bench core -- map/put`
//! one group. Sizes stay modest so the whole run takes a few minutes on 2 cores.

use std::hint::black_box;
use std::time::Duration;

use concord::{
    Crdt, Hlc, LwwRegister, ManualClock, MvRegister, OrMap, ReplicaId, Resolver, VectorClock,
};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};

type Map = OrMap<String, MvRegister<String>>;

fn hlc(n: u128) -> Hlc<ManualClock> {
    Hlc::new(ReplicaId::from_u128(n), ManualClock::new(1_700_000_000_000))
}

fn key(i: usize) -> String {
    format!("key-{i:07}")
}

fn value(i: usize) -> String {
    format!("value-{i:07}")
}

fn filled(n: usize, replica: u128) -> (Map, Hlc<ManualClock>) {
    let mut h = hlc(replica);
    let mut map = Map::new();
    for i in 0..n {
        map.apply(key(i), &mut h, |r, op| r.assign(op, value(i)))
            .unwrap();
    }
    (map, h)
}

fn clocks(c: &mut Criterion) {
    let mut group = c.benchmark_group("vector_clock");
    for n in [3usize, 16, 64] {
        let a: VectorClock = (0..n as u128)
            .map(|i| (ReplicaId::from_u128(i), i as u64 * 3))
            .collect();
        let b: VectorClock = (0..n as u128)
            .map(|i| (ReplicaId::from_u128(i), (n as u64 - i as u64) * 2))
            .collect();
        group.bench_with_input(BenchmarkId::new("compare", n), &n, |bench, _| {
            bench.iter(|| black_box(a.compare(&b)))
        });
        group.bench_with_input(BenchmarkId::new("merge", n), &n, |bench, _| {
            bench.iter_batched(
                || a.clone(),
                |mut x| black_box(x.merge_ref(&b)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn lww(c: &mut Criterion) {
    let mut group = c.benchmark_group("lww");
    group.bench_function("set", |bench| {
        let mut h = hlc(1);
        let mut reg = LwwRegister::new();
        let mut i = 0u64;
        bench.iter(|| {
            i += 1;
            black_box(reg.write(i, &mut h).unwrap());
        })
    });
    let mut a = LwwRegister::new();
    a.write(1u64, &mut hlc(1)).unwrap();
    let mut b = LwwRegister::new();
    b.write(2u64, &mut hlc(2)).unwrap();
    group.bench_function("merge_concurrent", |bench| {
        bench.iter_batched(
            || (a.clone(), b.clone()),
            |(mut x, y)| black_box(x.merge(y)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn map_put(c: &mut Criterion) {
    let mut group = c.benchmark_group("map/put");
    group.sample_size(10);
    for n in [10_000usize, 100_000, 1_000_000] {
        let keys: Vec<String> = (0..n).map(key).collect();
        let values: Vec<String> = (0..n).map(value).collect();
        group.bench_with_input(BenchmarkId::new("apply", n), &n, |bench, _| {
            bench.iter_batched(
                || (keys.clone(), values.clone(), hlc(1)),
                |(keys, values, mut h)| {
                    let mut map = Map::new();
                    for (k, v) in keys.into_iter().zip(values) {
                        map.apply(k, &mut h, |r, op| r.assign(op, v)).unwrap();
                    }
                    map
                },
                BatchSize::LargeInput,
            )
        });
        if n <= 100_000 {
            group.bench_with_input(BenchmarkId::new("write_with_delta", n), &n, |bench, _| {
                bench.iter_batched(
                    || (keys.clone(), values.clone(), hlc(1)),
                    |(keys, values, mut h)| {
                        let mut map = Map::new();
                        for (k, v) in keys.into_iter().zip(values) {
                            black_box(map.write(k, v, &mut h).unwrap());
                        }
                        map
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    group.finish();
}

/// Two replicas of a 100k-key map, each of which changed a different 10%.
fn diverged(n: usize) -> (Map, Map) {
    let (mut a, mut ha) = filled(n, 1);
    let mut b = a.clone();
    let mut hb = hlc(2);
    for i in (0..n).step_by(10) {
        a.apply(key(i), &mut ha, |r, op| r.assign(op, format!("a-{i}")))
            .unwrap();
        b.apply(key(i + 5), &mut hb, |r, op| r.assign(op, format!("b-{i}")))
            .unwrap();
    }
    (a, b)
}

fn map_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("map/merge");
    group.sample_size(10);
    let (a, b) = diverged(100_000);
    group.bench_function("full_state_100k_10pct_each", |bench| {
        bench.iter_batched(
            || (a.clone(), b.clone()),
            |(mut x, y)| black_box(x.merge(y)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn map_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("map/sync");
    group.sample_size(20);
    let (base, _) = filled(100_000, 1);
    let mut x = base.clone();
    let mut y = base;
    let (mut hx, mut hy) = (hlc(3), hlc(4));
    for i in 0..100 {
        x.apply(key(i * 7), &mut hx, |r, op| r.assign(op, format!("x-{i}")))
            .unwrap();
        y.apply(key(i * 11 + 3), &mut hy, |r, op| {
            r.assign(op, format!("y-{i}"))
        })
        .unwrap();
    }
    group.bench_function("delta_encode_decode_merge_100_each_way_100k", |bench| {
        bench.iter_batched(
            || (x.clone(), y.clone()),
            |(mut x, mut y)| {
                let to_y = serde_json::to_vec(&x.delta_since(&y.context().clock())).unwrap();
                let to_x = serde_json::to_vec(&y.delta_since(&x.context().clock())).unwrap();
                y.merge(serde_json::from_slice::<Map>(&to_y).unwrap());
                x.merge(serde_json::from_slice::<Map>(&to_x).unwrap());
                (x, y)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn map_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("map/codec");
    group.sample_size(10);
    let (map, _) = filled(100_000, 1);
    let json = serde_json::to_vec(&map).unwrap();
    group.bench_function("encode_full_100k", |bench| {
        bench.iter(|| black_box(serde_json::to_vec(&map).unwrap()))
    });
    group.bench_function("decode_full_100k", |bench| {
        bench.iter(|| black_box(serde_json::from_slice::<Map>(&json).unwrap()))
    });
    group.finish();
    println!(
        "map/codec: full state of 100k keys = {} JSON bytes ({:.1} per key)",
        json.len(),
        json.len() as f64 / 100_000.0
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = clocks, lww, map_put, map_merge, map_sync, map_codec
}
criterion_main!(benches);
