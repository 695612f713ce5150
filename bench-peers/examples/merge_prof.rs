//! The trusted full-state join of two diverged 100,000-key replicas
//! (`Resolver::merge`), measured apart from its set-up, for callgrind:
//!
//! ```text
//! CG=1 valgrind --tool=callgrind --instr-atstart=no target/release/examples/merge_prof
//! ```
//!
//! With `MERGE_PEER=floor` it measures the floor's merge (a plain `IndexMap`) instead,
//! for the instruction ratio. With `MERGE_SHUFFLE=1` the receiving replica lists its
//! keys in a scrambled order (as one that wrote them in another order would), not in
//! the order the sender lists them.
use concord_bench_peers::{
    concord_peer::{Concord, Map},
    diverged,
    floor::Floor,
    Peer,
};
fn ctl(on: bool) {
    if std::env::var("CG").is_ok() {
        std::process::Command::new("callgrind_control")
            .args([
                "-i",
                if on { "on" } else { "off" },
                &std::process::id().to_string(),
            ])
            .status()
            .unwrap();
    }
}
/// `a` with its entries in another order: its JSON form's entries permuted by a
/// fixed stride, read back (a map is read in the order its entries are written).
fn scrambled(a: &Map) -> Map {
    let json = serde_json::to_value(a).expect("encodes");
    let top = json.as_object().expect("an object");
    let entries: Vec<(&String, &serde_json::Value)> = top["e"]
        .as_object()
        .expect("an entry object")
        .iter()
        .collect();
    let n = entries.len();
    let stride = (n / 3..n).find(|s| gcd(*s, n) == 1).unwrap_or(1);
    let mut text = String::from("{");
    for (field, value) in top {
        if field != "e" {
            text += &format!("{}:{},", serde_json::Value::from(field.as_str()), value);
        }
    }
    text += "\"e\":{";
    for i in 0..n {
        let (key, value) = entries[(i * stride) % n];
        if i > 0 {
            text.push(',');
        }
        text += &format!("{}:{}", serde_json::Value::from(key.as_str()), value);
    }
    text += "}}";
    let b: Map = serde_json::from_str(&text).expect("decodes");
    assert_eq!(&b, a);
    b
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `MERGE_LOOP=n`: `n` timed merges of fresh clones, as criterion runs them.
fn looped<R: Clone>(a: &R, b: &R, merge: impl Fn(&mut R, R)) -> bool {
    let Some(n) = std::env::var("MERGE_LOOP")
        .ok()
        .and_then(|n| n.parse().ok())
    else {
        return false;
    };
    let mut times = Vec::new();
    for _ in 0..n {
        let (mut x, y) = (a.clone(), b.clone());
        let t = std::time::Instant::now();
        merge(&mut x, y);
        times.push(t.elapsed());
        drop(x);
    }
    times.sort();
    println!("median of {n}: {:?}", times[n / 2]);
    true
}

fn main() {
    if std::env::var("MERGE_PEER").as_deref() == Ok("floor") {
        let (mut a, b) = diverged::<Floor>(100_000);
        if std::env::var("MERGE_SHUFFLE").is_ok() {
            let n = a.map.len();
            let stride = (n / 3..n).find(|s| gcd(*s, n) == 1).unwrap_or(1);
            a.map = (0..n)
                .map(|i| {
                    let (k, v) = a.map.get_index((i * stride) % n).expect("in range");
                    (k.clone(), v.clone())
                })
                .collect();
        }
        if looped(&a, &b, Floor::merge) {
            return;
        }
        let t = std::time::Instant::now();
        ctl(true);
        Floor::merge(&mut a, b);
        ctl(false);
        println!("merge {:?}", t.elapsed());
        std::process::exit(0);
    }
    let (a, b) = diverged::<Concord>(100_000);
    let (mut a, b) = (a.engine.into_state(), b.engine.into_state());
    if std::env::var("MERGE_SHUFFLE").is_ok() {
        a = scrambled(&a);
    }
    if looped(&a, &b, |x, y| {
        concord::Resolver::merge(x, y);
    }) {
        return;
    }
    let t = std::time::Instant::now();
    ctl(true);
    concord::Resolver::merge(&mut a, b);
    ctl(false);
    println!("merge {:?}", t.elapsed());
    std::process::exit(0);
}
