//! Three regions, each a master, write to the same values at the same time and converge.
//!
//! Deltas are shipped by hand here, to show what a sync engine automates: every write
//! returns a delta, and the other regions merge it. Wall clocks are simulated so the run
//! is deterministic: ap-south's clock runs 120 ms behind the others.
//!
//! Run it with `cargo run --release --example multi_region`.

use concord::{
    CausalOrder, Conflict, Crdt, Hlc, Limits, LwwRegister, ManualClock, MvRegister, PnCounter,
    ReplicaId, Resolver, Result, Timestamp, VectorClock,
};

/// Real time at the start of the demo (ms since the Unix epoch).
const T0: u64 = 1_700_000_000_000;

/// One master: its clock and its copy of each replicated value.
struct Region {
    name: &'static str,
    id: ReplicaId,
    time: ManualClock,
    hlc: Hlc<ManualClock>,
    theme: LwwRegister<String>,
    address: MvRegister<String>,
    views: PnCounter,
}

impl Region {
    fn new(n: u128, name: &'static str, skew_ms: i64) -> Self {
        let id = ReplicaId::from_u128(n);
        let time = ManualClock::new(T0.saturating_add_signed(skew_ms));
        Region {
            name,
            id,
            hlc: Hlc::new(id, time.clone()),
            time,
            theme: LwwRegister::new(),
            address: MvRegister::new(),
            views: PnCounter::new(),
        }
    }
}

/// Lets real time pass: every region's wall clock moves forward by `ms`.
fn advance(regions: &[Region], ms: u64) {
    for r in regions {
        r.time.advance(ms);
    }
}

fn name_of(regions: &[Region], id: ReplicaId) -> &'static str {
    regions
        .iter()
        .find(|r| r.id == id)
        .map_or("unknown", |r| r.name)
}

/// A vector clock as `[us-east, eu-west, ap-south]` counts.
fn vc(regions: &[Region], clock: &VectorClock) -> String {
    let counts: Vec<String> = regions
        .iter()
        .map(|r| clock.get(r.id).to_string())
        .collect();
    format!("[{}]", counts.join(","))
}

/// A timestamp as `<ms relative to T0>.<logical> @<region>`.
fn stamp(regions: &[Region], ts: Timestamp) -> String {
    let ms = ts.wall_ms() as i64 - T0 as i64;
    format!(
        "{ms:+}.{} @{}",
        ts.logical(),
        name_of(regions, ts.replica())
    )
}

fn theme_clock(region: &Region) -> VectorClock {
    region.theme.context().clock()
}

/// Ships an LWW delta from region `from` to every other region, which first lets its
/// hybrid logical clock observe the delta's timestamp, then merges it, printing every
/// race the merge resolves.
fn ship_theme(regions: &mut [Region], from: usize, delta: &LwwRegister<String>) -> Result<()> {
    let sender = regions[from].name;
    for (i, r) in regions.iter_mut().enumerate() {
        if i == from {
            continue;
        }
        if let Some(ts) = delta.max_timestamp() {
            r.hlc.observe(&ts)?;
        }
        let mut races: Vec<Conflict<(), LwwRegister<String>>> = Vec::new();
        r.theme
            .try_merge(delta.clone(), &Limits::default(), &mut races)?;
        if !races.is_empty() {
            println!(
                "  {:<9} <- {:<9} race resolved: ours {:?} vs theirs {:?} -> {:?}",
                r.name,
                sender,
                races[0].ours.value().map(String::as_str).unwrap_or("-"),
                races[0].theirs.value().map(String::as_str).unwrap_or("-"),
                races[0].resolved.value().map(String::as_str).unwrap_or("-"),
            );
        }
    }
    Ok(())
}

/// Ships a delta from region `from` to every other region.
fn ship<T: Resolver + Clone>(
    regions: &mut [Region],
    from: usize,
    delta: &T,
    field: impl Fn(&mut Region) -> &mut T,
) {
    for (i, r) in regions.iter_mut().enumerate() {
        if i != from {
            field(r).merge(delta.clone());
        }
    }
}

/// The application's merge function for addresses: the most detailed one wins; among
/// equally long ones, the first in canonical order. Deterministic, so every region
/// computes the same answer.
fn most_detailed(siblings: &[&String]) -> String {
    let mut best = siblings[0];
    for &s in &siblings[1..] {
        if s.len() > best.len() {
            best = s;
        }
    }
    best.clone()
}

fn heading(title: &str) {
    println!("\n== {title}");
}

fn main() -> Result<()> {
    let mut regions = [
        Region::new(1, "us-east", 0),
        Region::new(2, "eu-west", 0),
        Region::new(3, "ap-south", -120),
    ];

    println!("concord multi-region demo: three masters, skewed clocks, deltas shipped by hand");
    heading("Regions");
    for r in &regions {
        let skew = r.time.now() as i64 - T0 as i64;
        let note = if skew < 0 { "  (runs behind)" } else { "" };
        // Ids made by `ReplicaId::from_u128` differ only in their last digits.
        let id = r.id.to_string();
        println!(
            "  {:<9} id ...{}  wall clock {skew:+4} ms{note}",
            r.name,
            &id[id.len() - 4..]
        );
    }

    // Step 1: everyone sets the theme at the same real instant.
    heading("Step 1: all three set `theme` at the same real instant (LwwRegister)");
    let mut deltas = Vec::new();
    for (r, value) in regions.iter_mut().zip(["blue", "green", "amber"]) {
        let delta = r.theme.set(value.to_string(), &mut r.hlc)?;
        deltas.push(delta);
    }
    for r in &regions {
        let ts = r.theme.timestamp().expect("just written");
        println!(
            "  {:<9} theme = {:<8} stamp {:<17} clock {}",
            r.name,
            format!("{:?}", r.theme.value().expect("just written")),
            stamp(&regions, ts),
            vc(&regions, &theme_clock(r)),
        );
    }

    // Step 2: the vector clocks show that nobody saw anybody else's write.
    heading("Step 2: vector clocks say the writes raced");
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let (a, b) = (&regions[i], &regions[j]);
        let (ca, cb) = (theme_clock(a), theme_clock(b));
        let order = ca.compare(&cb);
        assert_eq!(order, CausalOrder::Concurrent);
        println!(
            "  {:<9} {} vs {:<9} {} -> {order:?}",
            a.name,
            vc(&regions, &ca),
            b.name,
            vc(&regions, &cb),
        );
    }

    // Step 3: exchange the deltas by hand.
    heading("Step 3: exchange deltas; each merge reports the race it resolved");
    for (from, delta) in deltas.iter().enumerate() {
        ship_theme(&mut regions, from, delta)?;
    }

    // Step 4: the winner, and why.
    heading("Step 4: the LWW winner is the same everywhere");
    let (win_ts, winner) = regions[0].theme.winner().expect("written");
    println!(
        "  winner  {:?} from {}, stamp {}",
        winner,
        name_of(&regions, win_ts.replica()),
        stamp(&regions, win_ts)
    );
    println!("  rule    the larger (hlc timestamp, replica id) wins:");
    println!("          eu-west beats us-east: same ms and counter, larger replica id");
    println!("          ap-south loses: its clock stamped the write 120 ms earlier");
    println!(
        "  kept    {} writes (winner and losers) until a write that saw them replaces them",
        regions[0].theme.write_count()
    );
    for r in &regions {
        assert_eq!(r.theme.value(), regions[0].theme.value());
    }

    // Step 5: a write that saw the race wins, even from the region whose clock is behind.
    advance(&regions, 10);
    heading("Step 5: 10 ms later ap-south, which has seen the race, writes again");
    let delta = {
        let ap = &mut regions[2];
        ap.theme.set("red".to_string(), &mut ap.hlc)?
    };
    let ap = &regions[2];
    println!(
        "  ap-south  theme = \"red\"   stamp {}  (its wall clock reads {:+} ms)",
        stamp(&regions, ap.theme.timestamp().expect("written")),
        ap.time.now() as i64 - T0 as i64,
    );
    println!("            its HLC stamps past every timestamp it has observed, so the");
    println!("            write is never ordered before the writes it saw");
    let (c_ap, c_us) = (theme_clock(&regions[2]), theme_clock(&regions[0]));
    println!(
        "  ap-south  {} vs us-east   {} -> {:?}",
        vc(&regions, &c_ap),
        vc(&regions, &c_us),
        c_ap.compare(&c_us),
    );
    ship_theme(&mut regions, 2, &delta)?;
    for r in &regions {
        assert_eq!(r.theme.value().map(String::as_str), Some("red"));
        assert_eq!(r.theme.write_count(), 1);
    }
    println!("  after delivery every region reads \"red\" and holds 1 write");

    // Step 6: a multi-value register keeps both writes; the application picks.
    advance(&regions, 10);
    heading("Step 6: `address` races, the application resolves it (MvRegister)");
    let from_us = {
        let us = &mut regions[0];
        us.address.write("12 Main St".to_string(), &mut us.hlc)?
    };
    let from_eu = {
        let eu = &mut regions[1];
        eu.address
            .write("12 Main St, Apt 4".to_string(), &mut eu.hlc)?
    };
    println!("  us-east   address = \"12 Main St\"");
    println!("  eu-west   address = \"12 Main St, Apt 4\"");
    ship(&mut regions, 0, &from_us, |r| &mut r.address);
    ship(&mut regions, 1, &from_eu, |r| &mut r.address);
    println!("  siblings at every region, in canonical (dot) order:");
    for (dot, value) in regions[2].address.siblings() {
        println!(
            "    {:<22} written by {} (event {})",
            format!("{value:?}"),
            name_of(&regions, dot.replica()),
            dot.counter()
        );
    }
    let resolved: Vec<String> = regions
        .iter()
        .map(|r| r.address.resolve(most_detailed).expect("written"))
        .collect();
    assert!(resolved.iter().all(|v| *v == resolved[0]));
    println!(
        "  app rule \"most detailed wins\" -> {:?} at all three regions",
        resolved[0]
    );
    let collapse = {
        let us = &mut regions[0];
        us.address.write(resolved[0].clone(), &mut us.hlc)?
    };
    ship(&mut regions, 0, &collapse, |r| &mut r.address);
    for r in &regions {
        assert_eq!(r.address.values().len(), 1);
    }
    println!("  us-east writes it back -> 1 value left everywhere");

    // Step 7: counters add up.
    advance(&regions, 10);
    heading("Step 7: page views counted at every region (PnCounter)");
    for (i, amounts) in [vec![3], vec![2], vec![5, -1]].into_iter().enumerate() {
        let mut shown = Vec::new();
        for amount in amounts {
            let delta = {
                let r = &mut regions[i];
                r.views.increment(amount, &mut r.hlc)?
            };
            ship(&mut regions, i, &delta, |r| &mut r.views);
            shown.push(format!("{amount:+}"));
        }
        println!("  {:<9} {}", regions[i].name, shown.join(", "));
    }
    let contributions: Vec<String> = regions[0]
        .views
        .contributions()
        .into_iter()
        .map(|(id, n)| format!("{} {n}", name_of(&regions, id)))
        .collect();
    println!(
        "  {:<9} {} everywhere  ({})",
        "total",
        regions[0].views.value(),
        contributions.join(", ")
    );

    // The end state.
    heading("Converged state");
    println!("  {:<9} {:<8} {:<22} views", "region", "theme", "address");
    for r in &regions {
        println!(
            "  {:<9} {:<8} {:<22} {}",
            r.name,
            format!("{:?}", r.theme.value().expect("written")),
            format!("{:?}", r.address.get().expect("resolved")),
            r.views.value(),
        );
    }
    let same = regions.iter().all(|r| {
        r.theme == regions[0].theme
            && r.address == regions[0].address
            && r.views == regions[0].views
    });
    assert!(same, "regions diverged");
    println!("  all three regions hold identical state: yes");
    Ok(())
}
