//! The replication guide's two application-level merges, done right.
//!
//! 1. **A user profile** edited at three regions at once. Each profile is an
//!    [`MvRegister`] in an `OrMap<String, MvRegister<Profile>>` (user id -> profile), so
//!    concurrent edits survive as siblings, and one application function resolves
//!    them: prefer the verified email, take the newest name, merge the notification
//!    settings. The siblings are listed in the same canonical order everywhere, so
//!    every replica shows the same resolved view; [`OrMap::collapse`] writes it back.
//! 2. **A shopping cart** as an `OrMap<String, PnCounter>` (product -> quantity). The
//!    guide merges two carts by summing their quantities, which counts whatever the
//!    carts shared before they diverged twice. Counters count each change once, with
//!    no merge function at all; and a line removed at one replica while another adds
//!    one more reads 1 afterwards, not the old quantity plus one.
//!
//! Deltas are shipped by hand here; `examples/multi_region.rs` does it with the sync
//! engine. Run it with `cargo run --release --example app_merge`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use concord::{Hlc, ManualClock, MvRegister, OrMap, PnCounter, ReplicaId, Resolver, Result};

/// A notification channel's setting, with when the user last changed it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Setting {
    on: bool,
    changed_ms: u64,
}

/// A user profile, as the application stores it. The application keeps its own
/// change times per field: the merge function needs them to tell a field that was
/// edited from one that was merely carried along.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    name_changed_ms: u64,
    email: String,
    email_verified: bool,
    email_changed_ms: u64,
    notifications: BTreeMap<String, Setting>,
}

/// The application's merge function over the siblings of one profile. Deterministic
/// (a pure function of the canonical sibling list), so every replica resolves the same
/// siblings to the same profile.
fn merge_profiles(siblings: &[&Profile]) -> Profile {
    // The newest name; a tie in time goes to the larger string, so it is still one
    // answer everywhere.
    let named = siblings
        .iter()
        .max_by(|a, b| (a.name_changed_ms, &a.name).cmp(&(b.name_changed_ms, &b.name)))
        .expect("never called with no siblings");
    // A verified email beats an unverified one, however new; then the newest.
    let mailed = siblings
        .iter()
        .max_by(|a, b| {
            (a.email_verified, a.email_changed_ms, &a.email).cmp(&(
                b.email_verified,
                b.email_changed_ms,
                &b.email,
            ))
        })
        .expect("never called with no siblings");
    // Every channel any sibling knows; per channel, the newest change wins (a tie
    // turns the channel off: never notify someone who may have opted out).
    let mut notifications: BTreeMap<String, Setting> = BTreeMap::new();
    for p in siblings {
        for (channel, s) in &p.notifications {
            let merged = notifications.entry(channel.clone()).or_insert(*s);
            if (s.changed_ms, !s.on) > (merged.changed_ms, !merged.on) {
                *merged = *s;
            }
        }
    }
    Profile {
        name: named.name.clone(),
        name_changed_ms: named.name_changed_ms,
        email: mailed.email.clone(),
        email_verified: mailed.email_verified,
        email_changed_ms: mailed.email_changed_ms,
        notifications,
    }
}

/// One line per profile: `name <email> (verified) email:on sms:off`.
fn show(p: &Profile) -> String {
    let channels: Vec<String> = p
        .notifications
        .iter()
        .map(|(c, s)| format!("{c}:{}", if s.on { "on" } else { "off" }))
        .collect();
    format!(
        "{:<14} {:<26} {:<11} {}",
        p.name,
        format!("<{}>", p.email),
        if p.email_verified {
            "verified"
        } else {
            "unverified"
        },
        channels.join(" ")
    )
}

type Profiles = OrMap<String, MvRegister<Profile>>;

/// One replica: its clock and its copy of the data.
struct Replica<T> {
    name: &'static str,
    hlc: Hlc<ManualClock>,
    data: T,
}

impl<T: Default> Replica<T> {
    fn new(n: u128, name: &'static str, time: &ManualClock) -> Self {
        Replica {
            name,
            hlc: Hlc::new(ReplicaId::from_u128(n), time.clone()),
            data: T::default(),
        }
    }
}

fn heading(title: &str) {
    println!("\n== {title}");
}

fn profiles() -> Result<()> {
    heading("1. A user profile edited at three regions at once");
    let time = ManualClock::new(0);
    let mut regions: Vec<Replica<Profiles>> = vec![
        Replica::new(1, "us-east", &time),
        Replica::new(2, "eu-west", &time),
        Replica::new(3, "ap-south", &time),
    ];
    let alice = "alice".to_string();

    // The starting point, written at us-east and replicated everywhere.
    let base = Profile {
        name: "Alice".into(),
        name_changed_ms: 0,
        email: "alice@old.example".into(),
        email_verified: true,
        email_changed_ms: 0,
        notifications: BTreeMap::from([
            (
                "email".into(),
                Setting {
                    on: true,
                    changed_ms: 0,
                },
            ),
            (
                "sms".into(),
                Setting {
                    on: false,
                    changed_ms: 0,
                },
            ),
        ]),
    };
    let bob = Profile {
        name: "Bob".into(),
        email: "bob@example.com".into(),
        notifications: BTreeMap::new(),
        ..base.clone()
    };
    let us = &mut regions[0];
    let mut shared = us.data.write(alice.clone(), base.clone(), &mut us.hlc)?;
    shared.merge(us.data.write("bob".into(), bob, &mut us.hlc)?);
    for r in &mut regions[1..] {
        r.data.merge(shared.clone());
    }
    println!("  every region starts from");
    println!("    alice  {}", show(&base));

    // Three edits, each made without seeing the others.
    println!("  then, concurrently (each region has seen only the starting profile):");
    let mut edits = Vec::new();
    for (i, (at_ms, what, edit)) in [
        (
            100,
            "renames her and turns sms on",
            Box::new(|p: &mut Profile, now| {
                p.name = "Alice Liddell".into();
                p.name_changed_ms = now;
                p.notifications.insert(
                    "sms".into(),
                    Setting {
                        on: true,
                        changed_ms: now,
                    },
                );
            }) as Box<dyn Fn(&mut Profile, u64)>,
        ),
        (
            300,
            "changes her email (not verified yet), turns push off",
            Box::new(|p: &mut Profile, now| {
                p.email = "alice@new.example".into();
                p.email_verified = false;
                p.email_changed_ms = now;
                p.notifications.insert(
                    "push".into(),
                    Setting {
                        on: false,
                        changed_ms: now,
                    },
                );
            }),
        ),
        (
            200,
            "changes her email and verifies it",
            Box::new(|p: &mut Profile, now| {
                p.email = "alice@wonderland.example".into();
                p.email_verified = true;
                p.email_changed_ms = now;
            }),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        time.set(at_ms);
        let r = &mut regions[i];
        let mut profile = base.clone();
        edit(&mut profile, at_ms);
        edits.push(r.data.write(alice.clone(), profile, &mut r.hlc)?);
        println!("    t={at_ms:<4} {:<9} {what}", r.name);
    }

    // Each region receives the other two edits, in its own order.
    for (r, order) in [[1, 2], [2, 0], [0, 1]].iter().enumerate() {
        for &from in order {
            regions[r].data.merge(edits[from].clone());
        }
    }
    assert!(regions.iter().all(|r| r.data == regions[0].data));
    println!("  after the deltas cross (each region in a different order), every region holds");
    println!("  the same siblings, in the same canonical order:");
    for (dot, p) in regions[0].data.get(&alice).expect("written").siblings() {
        let writer = regions[dot.replica().as_uuid().as_u128() as usize - 1].name;
        println!("    {writer:<9} {}", show(p));
    }
    let conflicted: Vec<&String> = regions[0].data.conflicted_keys().collect();
    println!("  conflicted keys: {conflicted:?}");

    println!("  the application's view, resolve_all(&merge_profiles), at each region:");
    let view = |r: &Replica<Profiles>| -> Vec<(String, Profile)> {
        r.data
            .resolve_all(&merge_profiles)
            .map(|(k, p)| (k.clone(), p))
            .collect()
    };
    let first = view(&regions[0]);
    for r in &regions {
        let v = view(r);
        assert_eq!(
            v, first,
            "every replica resolves the same state the same way"
        );
        let (_, a) = &v[0];
        println!("    {:<9} alice  {}", r.name, show(a));
    }
    println!("    (bob had no conflict: his single value is shown as it is)");
    println!("  newest name (us-east), the verified email (ap-south) over the newer unverified");
    println!("  one (eu-west), and every channel at its newest setting");

    // One region writes the resolved profile back; the siblings collapse everywhere.
    time.set(400);
    let eu = &mut regions[1];
    let collapse = eu.data.collapse(merge_profiles, &mut eu.hlc)?;
    for r in [0, 2] {
        regions[r].data.merge(collapse.clone());
    }
    assert!(regions.iter().all(|r| r.data == regions[0].data));
    assert_eq!(regions[0].data.conflicted_keys().count(), 0);
    let kept = regions[0].data.get(&alice).expect("written");
    assert_eq!(kept.get(), Some(&first[0].1));
    println!(
        "  eu-west collapses: it writes the resolved profile back (a delta for {} key);",
        collapse.len()
    );
    println!(
        "  once it arrives every region holds {} value for alice and no conflicted keys",
        kept.values().len()
    );
    Ok(())
}

type Cart = OrMap<String, PnCounter>;

/// The replication guide's cart merge: for each product, the sum of both carts'
/// quantities.
fn naive_sum(a: &Cart, b: &Cart) -> BTreeMap<String, i64> {
    let mut merged = BTreeMap::new();
    for cart in [a, b] {
        for (product, qty) in cart.iter() {
            *merged.entry(product.clone()).or_insert(0) += qty.value();
        }
    }
    merged
}

fn carts() -> Result<()> {
    heading("2. A shopping cart at two regions: OrMap<String, PnCounter>");
    let time = ManualClock::new(0);
    let mut us = Replica::<Cart>::new(1, "us-east", &time);
    let mut eu = Replica::<Cart>::new(2, "eu-west", &time);
    let (espresso, filters, mug) = (
        "espresso".to_string(),
        "filters".to_string(),
        "mug".to_string(),
    );

    // The common cart, then each region changes it without seeing the other.
    us.data.increment(espresso.clone(), 2, &mut us.hlc)?;
    us.data.increment(filters.clone(), 1, &mut us.hlc)?;
    eu.data.merge(us.data.clone());
    println!("  both start from: espresso 2, filters 1");
    let from_us = us.data.increment(espresso.clone(), 1, &mut us.hlc)?;
    let mut from_us_all = from_us;
    from_us_all.merge(us.data.increment(mug.clone(), 1, &mut us.hlc)?);
    let from_eu = eu.data.increment(filters.clone(), 2, &mut eu.hlc)?;
    println!("  then us-east adds 1 espresso and 1 mug; eu-west adds 2 filters");

    let naive = naive_sum(&us.data, &eu.data);
    let before = (us.data.clone(), eu.data.clone());
    us.data.merge(from_eu);
    eu.data.merge(from_us_all);
    assert_eq!(us.data, eu.data);

    println!();
    println!(
        "  {:<10} {:>8} {:>8}   {:>14}   {:>14}",
        "product", "us-east", "eu-west", "naive sum", "concord merge"
    );
    for product in [&espresso, &filters, &mug] {
        let merged = us.data.count(product);
        let summed = naive.get(product).copied().unwrap_or(0);
        let flag = if summed != merged {
            "  <- double count"
        } else {
            ""
        };
        println!(
            "  {:<10} {:>8} {:>8}   {:>14}   {:>14}{flag}",
            product,
            before.0.count(product),
            before.1.count(product),
            summed,
            merged
        );
    }
    assert_eq!(us.data.count(&espresso), 3);
    assert_eq!(us.data.count(&filters), 3);
    assert_eq!(naive[&espresso], 5);
    println!("  the naive sum counts the shared 2 espresso and 1 filters twice; the counters");
    println!("  add only what each region changed, and need no merge function");

    // A removal racing an increment.
    println!();
    println!("  concurrently: us-east removes the filters line, eu-west adds 1 more filter");
    let removal = us.data.remove(&filters, &mut us.hlc)?;
    let add_one = eu.data.increment(filters.clone(), 1, &mut eu.hlc)?;
    println!(
        "    us-east reads filters: {}   eu-west reads filters: {}",
        if us.data.contains_key(&filters) {
            us.data.count(&filters).to_string()
        } else {
            "(removed)".into()
        },
        eu.data.count(&filters)
    );
    us.data.merge(add_one);
    eu.data.merge(removal);
    assert_eq!(us.data, eu.data);
    assert_eq!(us.data.count(&filters), 1);
    println!(
        "    after merging, both read filters: {}: the add survives the removal (update wins),",
        us.data.count(&filters)
    );
    println!("    without resurrecting the 3 the remover had seen");
    Ok(())
}

fn main() -> Result<()> {
    println!("concord: the replication guide's application-level merges, done right");
    profiles()?;
    carts()?;
    Ok(())
}
