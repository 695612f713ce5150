//! Three regions, each a master, replicate through the sync engine over a simulated
//! network: acknowledgement levels, a partition, concurrent writes on both sides, the
//! heal and the conflict reports, a read-your-writes token and a read-only follower.
//!
//! Each region runs one [`SyncEngine`] per table (a replicated map keeps one value
//! type, so each conflict policy gets its own table):
//!
//! | table      | state                                | a race resolves by          |
//! |------------|--------------------------------------|-----------------------------|
//! | `settings` | `OrMap<String, LwwRegister<String>>` | last writer wins (hlc)      |
//! | `profiles` | `OrMap<String, MvRegister<String>>`  | siblings kept for the app   |
//! | `carts`    | `OrMap<String, PnCounter>`           | quantities add up           |
//!
//! The engines are sans-IO. The network here is a few lines of code: every message is
//! encoded with [`SyncEngine::encode`], travels as bytes with a fixed one-way latency
//! per link, and is applied with [`SyncEngine::receive_bytes`], so the wire format is
//! exercised. Time is a [`ManualClock`] that the network moves forward as messages
//! arrive, and the incarnation ids are fixed, so every run prints the same output.
//!
//! Run it with `cargo run --release --example multi_region`.

use concord::sync::{AckLevel, Config, PeerLag, SyncEngine};
use concord::{
    Conflict, Dot, DotStore, Error, LwwRegister, ManualClock, MvRegister, OrMap, PnCounter,
    ReplicaId, Result, VectorClock,
};

/// Wall time at the start of the demo (ms since the Unix epoch); printed as `t+0.000s`.
const T0: u64 = 1_700_000_000_000;

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const US: usize = 0;
const EU: usize = 1;
const AP: usize = 2;

/// One-way latency of the link between two regions, in ms.
fn latency(a: usize, b: usize) -> u64 {
    match (a.min(b), a.max(b)) {
        (US, EU) => 40,
        (US, AP) => 110,
        (EU, AP) => 60,
        _ => 0,
    }
}

/// Region `r`'s node id (what peers and membership use).
fn node(r: usize) -> ReplicaId {
    ReplicaId::from_u128(r as u128 + 1)
}

/// The incarnation id region `r` stamps its writes to `table` with. Fixed so that the
/// run is deterministic; in production leave it unset and a random one is drawn.
fn incarnation(table: Tab, r: usize) -> ReplicaId {
    ReplicaId::from_u128(0x100 * (table as u128 + 1) + r as u128 + 1)
}

/// The region behind a node or incarnation id (the low byte is the region number).
fn region_of(id: ReplicaId) -> &'static str {
    let n = (id.as_uuid().as_u128() & 0xff) as usize;
    REGIONS.get(n.wrapping_sub(1)).copied().unwrap_or("?")
}

fn region_index(id: ReplicaId) -> usize {
    (0..REGIONS.len())
        .find(|&r| node(r) == id)
        .expect("a known node")
}

/// Milliseconds as seconds, `1.250s`.
fn secs(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// A vector clock with region names: `{us-east:2, ap-south:1}`.
fn clock(c: &VectorClock) -> String {
    let parts: Vec<String> = c
        .iter()
        .map(|(id, n)| format!("{}:{n}", region_of(id)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn names(ids: &[ReplicaId]) -> String {
    if ids.is_empty() {
        return "none".to_string();
    }
    ids.iter()
        .map(|id| region_of(*id))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The three tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tab {
    Settings,
    Profiles,
    Carts,
}

impl Tab {
    const ALL: [Tab; 3] = [Tab::Settings, Tab::Profiles, Tab::Carts];

    fn name(self) -> &'static str {
        match self {
            Tab::Settings => "settings",
            Tab::Profiles => "profiles",
            Tab::Carts => "carts",
        }
    }
}

/// How the demo prints a value type, and why a race on it resolved as it did.
trait Show: DotStore {
    /// The value as the application reads it.
    fn show(&self) -> String;
    /// The rule that resolved a race.
    const WHY: &'static str;
}

impl Show for LwwRegister<String> {
    fn show(&self) -> String {
        match self.winner() {
            Some((ts, v)) => format!(
                "{v:?} (t+{}, {})",
                secs(ts.wall_ms() - T0),
                region_of(ts.replica())
            ),
            None => "-".into(),
        }
    }
    const WHY: &'static str = "the larger (hlc, replica) wins";
}

impl Show for MvRegister<String> {
    fn show(&self) -> String {
        let values: Vec<String> = self.values().map(|v| format!("{v:?}")).collect();
        values.join(" | ")
    }
    const WHY: &'static str = "siblings kept for the app to resolve";
}

impl Show for PnCounter {
    fn show(&self) -> String {
        self.value().to_string()
    }
    const WHY: &'static str = "every side's increments added, each once";
}

/// One conflict report, rendered.
struct Report {
    tab: Tab,
    key: String,
    at: usize,
    from: usize,
    ours: String,
    ours_clock: String,
    theirs: String,
    theirs_clock: String,
    resolved: String,
    why: &'static str,
}

impl Report {
    fn new<V: Show>(tab: Tab, at: usize, from: usize, c: Conflict<String, V>) -> Self {
        Report {
            tab,
            key: c.key,
            at,
            from,
            ours: c.ours.show(),
            ours_clock: clock(&c.ours_clock),
            theirs: c.theirs.show(),
            theirs_clock: clock(&c.theirs_clock),
            resolved: c.resolved.show(),
            why: V::WHY,
        }
    }
}

/// Encoded messages produced by an engine, with the index of the region each goes to.
type Outbox = Vec<(usize, Vec<u8>)>;

/// One table: an engine per region.
struct Table<V: DotStore> {
    tab: Tab,
    at: Vec<SyncEngine<OrMap<String, V>, ManualClock>>,
}

impl<V: Show> Table<V> {
    fn new(tab: Tab, time: &ManualClock) -> Self {
        let at = (0..REGIONS.len())
            .map(|r| {
                let peers = (0..REGIONS.len()).filter(|p| *p != r).map(node);
                let config = Config::with_peers(peers).incarnation(incarnation(tab, r));
                SyncEngine::new(node(r), OrMap::new(), time.clone(), config)
            })
            .collect();
        Table { tab, at }
    }

    fn state(&self, r: usize) -> &OrMap<String, V> {
        self.at[r].state()
    }
}

/// What the network needs from a table, whatever its value type.
trait Replicated {
    fn push(&mut self, r: usize) -> Outbox;
    fn sync_all(&mut self, r: usize) -> Outbox;
    fn receive(&mut self, from: usize, to: usize, bytes: &[u8]) -> Result<(Outbox, Vec<Report>)>;
    fn lag(&mut self, r: usize, peer: usize) -> PeerLag;
    fn converged(&self) -> bool;
    fn digest(&self, r: usize) -> String;
}

fn encode_all<V: Show>(
    engine: &SyncEngine<OrMap<String, V>, ManualClock>,
    msgs: Vec<concord::sync::Message<OrMap<String, V>>>,
) -> Outbox {
    msgs.into_iter()
        .map(|m| (region_index(m.to), engine.encode(&m)))
        .collect()
}

impl<V: Show> Replicated for Table<V> {
    fn push(&mut self, r: usize) -> Outbox {
        let msgs = self.at[r].push();
        encode_all(&self.at[r], msgs)
    }

    fn sync_all(&mut self, r: usize) -> Outbox {
        let msgs = self.at[r].sync_all();
        encode_all(&self.at[r], msgs)
    }

    fn receive(&mut self, from: usize, to: usize, bytes: &[u8]) -> Result<(Outbox, Vec<Report>)> {
        let received = self.at[to].receive_bytes(bytes)?;
        let reply = encode_all(&self.at[to], received.reply.into_iter().collect());
        let reports = received
            .conflicts
            .into_iter()
            .map(|c| Report::new(self.tab, to, from, c))
            .collect();
        Ok((reply, reports))
    }

    fn lag(&mut self, r: usize, peer: usize) -> PeerLag {
        self.at[r].lag(node(peer)).expect("a configured peer")
    }

    fn converged(&self) -> bool {
        self.at.windows(2).all(|w| w[0].state() == w[1].state())
    }

    /// A short fingerprint of the serialized state (FNV-1a).
    fn digest(&self, r: usize) -> String {
        let bytes = serde_json::to_vec(self.at[r].state()).expect("states serialize");
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{:08x}", hash >> 32)
    }
}

/// A message on its way.
struct Packet {
    due: u64,
    seq: u64,
    tab: Tab,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

#[derive(Clone, Copy, Default)]
struct Wire {
    sent: u64,
    bytes: u64,
    delivered: u64,
    dropped: u64,
}

/// The three regions, their tables, and the network between them.
struct World {
    time: ManualClock,
    settings: Table<LwwRegister<String>>,
    profiles: Table<MvRegister<String>>,
    carts: Table<PnCounter>,
    in_flight: Vec<Packet>,
    seq: u64,
    /// The region cut off from the others, if any.
    isolated: Option<usize>,
    wire: Wire,
    reports: Vec<Report>,
}

impl World {
    fn new() -> Self {
        let time = ManualClock::new(T0);
        World {
            settings: Table::new(Tab::Settings, &time),
            profiles: Table::new(Tab::Profiles, &time),
            carts: Table::new(Tab::Carts, &time),
            time,
            in_flight: Vec::new(),
            seq: 0,
            isolated: None,
            wire: Wire::default(),
            reports: Vec::new(),
        }
    }

    fn table(&mut self, tab: Tab) -> &mut dyn Replicated {
        match tab {
            Tab::Settings => &mut self.settings,
            Tab::Profiles => &mut self.profiles,
            Tab::Carts => &mut self.carts,
        }
    }

    fn now(&self) -> String {
        format!("t+{}", secs(self.time.now() - T0))
    }

    fn send(&mut self, tab: Tab, from: usize, outbox: Outbox) {
        for (to, bytes) in outbox {
            self.wire.sent += 1;
            self.wire.bytes += bytes.len() as u64;
            self.seq += 1;
            self.in_flight.push(Packet {
                due: self.time.now() + latency(from, to),
                seq: self.seq,
                tab,
                from,
                to,
                bytes,
            });
        }
    }

    /// `r` offers its news in `tab` to every peer.
    fn push(&mut self, tab: Tab, r: usize) {
        let outbox = self.table(tab).push(r);
        self.send(tab, r, outbox);
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        self.isolated.is_some_and(|i| (a == i) != (b == i))
    }

    /// Delivers the next message to arrive (moving time forward to its arrival), or
    /// drops it if the link is cut. False when nothing is in flight.
    fn deliver_next(&mut self) -> Result<bool> {
        let Some(i) = (0..self.in_flight.len()).min_by_key(|&i| {
            let p = &self.in_flight[i];
            (p.due, p.seq)
        }) else {
            return Ok(false);
        };
        let p = self.in_flight.swap_remove(i);
        if p.due > self.time.now() {
            self.time.set(p.due);
        }
        if self.cut(p.from, p.to) {
            self.wire.dropped += 1;
            return Ok(true);
        }
        let (reply, reports) = self.table(p.tab).receive(p.from, p.to, &p.bytes)?;
        self.wire.delivered += 1;
        self.reports.extend(reports);
        self.send(p.tab, p.to, reply);
        Ok(true)
    }

    /// Delivers messages until `done` holds; returns how many were delivered.
    fn deliver_until(&mut self, done: impl Fn(&World) -> bool) -> Result<u64> {
        let mut n = 0;
        while !done(self) {
            if !self.deliver_next()? {
                panic!("the network went quiet before the condition held");
            }
            n += 1;
        }
        Ok(n)
    }

    fn deliver_all(&mut self) -> Result<()> {
        while self.deliver_next()? {}
        Ok(())
    }

    fn write_setting(&mut self, r: usize, key: &str, value: &str) -> Result<Dot> {
        let receipt =
            self.settings.at[r].update(|m, hlc| m.set(key.to_string(), value.to_string(), hlc))?;
        Ok(receipt.dot.expect("a write issues a dot"))
    }

    fn write_profile(&mut self, r: usize, key: &str, value: &str) -> Result<Dot> {
        let receipt = self.profiles.at[r]
            .update(|m, hlc| m.write(key.to_string(), value.to_string(), hlc))?;
        Ok(receipt.dot.expect("a write issues a dot"))
    }

    fn add_to_cart(&mut self, r: usize, key: &str, amount: i64) -> Result<Dot> {
        let receipt =
            self.carts.at[r].update(|m, hlc| m.increment(key.to_string(), amount, hlc))?;
        Ok(receipt.dot.expect("a write issues a dot"))
    }

    /// Lag from `r` towards `peer`, over the three tables: unacknowledged writes
    /// summed, the oldest one's age, and the most recent time the peer was heard from.
    fn lag(&mut self, r: usize, peer: usize) -> (u64, u64, Option<u64>) {
        let lags: Vec<PeerLag> = Tab::ALL
            .iter()
            .map(|t| self.table(*t).lag(r, peer))
            .collect();
        (
            lags.iter().map(|l| l.unacked_writes).sum(),
            lags.iter().map(|l| l.oldest_unacked_ms).max().unwrap_or(0),
            lags.iter().filter_map(|l| l.since_heard_ms).min(),
        )
    }

    fn converged(&mut self) -> bool {
        Tab::ALL.iter().all(|t| self.table(*t).converged())
    }
}

/// Prints the wire traffic since `before`.
fn traffic(world: &World, before: Wire) {
    let w = world.wire;
    let dropped = w.dropped - before.dropped;
    println!(
        "  wire: {} messages, {} bytes{}",
        w.sent - before.sent,
        w.bytes - before.bytes,
        if dropped > 0 {
            format!(", {dropped} lost at the partition")
        } else {
            String::new()
        }
    );
}

fn heading(title: &str) {
    println!("\n== {title}");
}

fn main() -> Result<()> {
    let mut world = World::new();
    println!("concord multi-region demo: three masters, one sync engine per table and region");
    println!("  table     state                                 a race resolves by");
    println!("  settings  OrMap<String, LwwRegister<String>>    last writer wins");
    println!("  profiles  OrMap<String, MvRegister<String>>     siblings kept for the app");
    println!("  carts     OrMap<String, PnCounter>              quantities add up");
    println!(
        "  links (one way): us-east~eu-west {} ms, us-east~ap-south {} ms, eu-west~ap-south {} ms",
        latency(US, EU),
        latency(US, AP),
        latency(EU, AP)
    );

    // ------------------------------------------------------------------------------
    heading("1. Normal operation: every write is pushed to the other regions");
    let before = world.wire;

    println!("  async     us-east   settings alice/theme = \"light\"");
    let dot = world.write_setting(US, "alice/theme", "light")?;
    let engine = &world.settings.at[US];
    assert!(engine.is_replicated(dot, AckLevel::None));
    println!(
        "            AckLevel::None: returns at once, at {}; held by peers: {}",
        world.now(),
        names(&engine.holders(dot))
    );
    world.push(Tab::Settings, US);
    world.deliver_all()?;
    println!(
        "            in the background, by {}: held by {}",
        world.now(),
        names(&world.settings.at[US].holders(dot))
    );

    println!("  semi-sync eu-west   profiles alice/email = \"alice@example.com\"");
    let start = world.time.now();
    let dot = world.write_profile(EU, "alice/email", "alice@example.com")?;
    world.push(Tab::Profiles, EU);
    let n = world.deliver_until(|w| w.profiles.at[EU].is_replicated(dot, AckLevel::Peers(1)))?;
    println!(
        "            waits for AckLevel::Peers(1): {n} deliveries, returns at {} ({} ms); held by {}",
        world.now(),
        world.time.now() - start,
        names(&world.profiles.at[EU].holders(dot))
    );
    world.deliver_all()?;
    println!(
        "            in the background, by {}: held by {}",
        world.now(),
        names(&world.profiles.at[EU].holders(dot))
    );

    println!("  sync      ap-south  carts    alice/espresso += 2");
    let start = world.time.now();
    let dot = world.add_to_cart(AP, "alice/espresso", 2)?;
    world.push(Tab::Carts, AP);
    let n = world.deliver_until(|w| w.carts.at[AP].is_replicated(dot, AckLevel::All))?;
    println!(
        "            waits for AckLevel::All: {n} deliveries, returns at {} ({} ms); held by {}",
        world.now(),
        world.time.now() - start,
        names(&world.carts.at[AP].holders(dot))
    );
    world.deliver_all()?;
    assert!(world.converged());
    println!("  all three regions hold the same three tables");
    traffic(&world, before);

    // ------------------------------------------------------------------------------
    world.time.set(T0 + 1_000);
    heading("2. A partition cuts ap-south off; both sides keep writing");
    let before = world.wire;
    world.isolated = Some(AP);
    println!("  {}  the links to ap-south go down", world.now());

    let majority: [(usize, Tab, &str, &str); 4] = [
        (US, Tab::Settings, "alice/theme", "dark"),
        (EU, Tab::Profiles, "alice/email", "alice@work.example"),
        (US, Tab::Carts, "alice/espresso", "+1"),
        (EU, Tab::Settings, "bob/theme", "light"),
    ];
    let minority: [(usize, Tab, &str, &str); 4] = [
        (AP, Tab::Settings, "alice/theme", "high-contrast"),
        (AP, Tab::Profiles, "alice/email", "alice@home.example"),
        (AP, Tab::Carts, "alice/espresso", "+3"),
        (AP, Tab::Carts, "alice/filters", "+1"),
    ];
    for (side, writes) in [(0, majority), (1, minority)] {
        if side == 1 {
            world.time.set(T0 + 2_500);
        }
        for (r, tab, key, value) in writes {
            match tab {
                Tab::Settings => world.write_setting(r, key, value)?,
                Tab::Profiles => world.write_profile(r, key, value)?,
                Tab::Carts => world.add_to_cart(r, key, value.parse().expect("an amount"))?,
            };
            let shown = match tab {
                Tab::Carts => format!("{key} {}= {}", &value[..1], &value[1..]),
                _ => format!("{key} = {value:?}"),
            };
            println!(
                "  {}  {:<9} {:<9}{shown}",
                world.now(),
                REGIONS[r],
                tab.name()
            );
            world.push(tab, r);
        }
        world.deliver_all()?;
    }
    println!("  pushes within each side are delivered; those across the cut are lost");
    let espresso = "alice/espresso".to_string();
    let (cart_us, cart_ap) = (
        world.carts.state(US).count(&espresso),
        world.carts.state(AP).count(&espresso),
    );
    println!("  alice/espresso now reads {cart_us} at us-east and {cart_ap} at ap-south (2 before the cut)");

    println!("  replication lag as time passes (over the three tables):");
    println!("    time       from     -> to        unacked  oldest    last heard");
    for at in [3_000, 10_000, 30_000] {
        world.time.set(T0 + at);
        for (i, (r, peer)) in [(US, AP), (AP, US), (US, EU)].into_iter().enumerate() {
            let (unacked, oldest, heard) = world.lag(r, peer);
            println!(
                "    {:<10} {:<8} -> {:<9} {:>7}  {:>8}  {}",
                if i == 0 { world.now() } else { String::new() },
                REGIONS[r],
                REGIONS[peer],
                unacked,
                secs(oldest),
                heard.map_or("never".to_string(), |ms| format!("{} ago", secs(ms))),
            );
        }
    }
    let metrics = serde_json::to_value(world.carts.at[US].metrics()).expect("metrics serialize");
    let towards_ap = metrics["peers"]
        .as_array()
        .and_then(|peers| {
            peers
                .iter()
                .find(|p| p["peer"] == serde_json::json!(node(AP)))
        })
        .expect("ap-south is a peer");
    println!("  us-east's metrics for the carts table (a few fields of its JSON snapshot):");
    for field in [
        "writes",
        "messages_sent",
        "messages_received",
        "conflicts_resolved",
    ] {
        println!("    {:<20} {}", format!("\"{field}\":"), metrics[field]);
    }
    println!("    \"peers\"[ap-south].\"lag\": {}", towards_ap["lag"]);
    traffic(&world, before);

    // ------------------------------------------------------------------------------
    heading("3. The partition heals; ap-south opens one sync session per table");
    let before = world.wire;
    world.isolated = None;
    for tab in Tab::ALL {
        let outbox = world.table(tab).sync_all(AP);
        world.send(tab, AP, outbox);
    }
    world.deliver_all()?;
    println!(
        "  {}  every session has had its round trip (hello + answer per peer)",
        world.now()
    );
    traffic(&world, before);

    println!("  conflict reports (each race is reported by every region that merged it):");
    let mut keys: Vec<(Tab, String)> = Vec::new();
    for r in &world.reports {
        if !keys.contains(&(r.tab, r.key.clone())) {
            keys.push((r.tab, r.key.clone()));
        }
    }
    for (tab, key) in &keys {
        let same: Vec<&Report> = world
            .reports
            .iter()
            .filter(|r| r.tab == *tab && r.key == *key)
            .collect();
        let first = same[0];
        assert!(same.iter().all(|r| r.resolved == first.resolved));
        let at: Vec<&str> = same.iter().map(|r| REGIONS[r.at]).collect();
        println!(
            "\n    {} {:?}  reported at {}",
            tab.name(),
            key,
            at.join(", ")
        );
        println!(
            "      ours      {:<44} clock {:<30} (as {} held it)",
            first.ours, first.ours_clock, REGIONS[first.at]
        );
        println!(
            "      theirs    {:<44} clock {:<30} (from {})",
            first.theirs, first.theirs_clock, REGIONS[first.from]
        );
        println!("      resolved  {:<44} {}", first.resolved, first.why);
    }
    let merged = world.carts.state(US).count(&espresso);
    assert_eq!(merged, 2 + 1 + 3);
    println!(
        "\n    The cart's report shows what each side added: ours {cart_us} = 2 shared + 1, theirs = the +3 from"
    );
    println!(
        "    ap-south. Merged: 2 + 1 + 3 = {merged}. A naive \"sum both carts\" merge would read"
    );
    println!(
        "    {cart_us} + {cart_ap} = {}, counting the 2 both sides held before the cut twice.",
        cart_us + cart_ap
    );

    assert!(world.converged(), "the regions diverged");
    println!("\n  converged state, identical at all three regions (asserted):");
    println!("    table     key              value");
    for (key, reg) in world.settings.state(US).iter() {
        println!("    settings  {key:<16} {}", reg.show());
    }
    for (key, reg) in world.profiles.state(US).iter() {
        let note = if reg.is_conflicted() {
            format!("   ({} siblings)", reg.values().len())
        } else {
            String::new()
        };
        println!("    profiles  {key:<16} {}{note}", reg.show());
    }
    for (key, counter) in world.carts.state(US).iter() {
        println!("    carts     {key:<16} {}", counter.show());
    }
    println!("    region     settings  profiles  carts     (digest of each serialized state)");
    for (r, region) in REGIONS.iter().enumerate() {
        let digests: Vec<String> = Tab::ALL.iter().map(|t| world.table(*t).digest(r)).collect();
        println!(
            "    {region:<10} {}  {}  {}",
            digests[0], digests[1], digests[2]
        );
    }

    // ------------------------------------------------------------------------------
    heading("4. Read-your-writes: a client carries a session token between regions");
    let before = world.wire;
    world.write_profile(US, "alice/name", "Alice Liddell")?;
    let token = world.profiles.at[US].token();
    println!(
        "  {}  the client writes profiles alice/name at us-east; token {}",
        world.now(),
        clock(&token)
    );
    match world.profiles.at[AP].read(&token) {
        Err(e @ Error::NotCaughtUp { .. }) => {
            println!("  {}  read at ap-south refused: {e}", world.now())
        }
        other => panic!("expected NotCaughtUp, got {other:?}"),
    }
    world.push(Tab::Profiles, US);
    world.deliver_until(|w| w.profiles.at[AP].can_serve(&token))?;
    let profile = world.profiles.at[AP].read(&token)?;
    let name = profile
        .resolved(&"alice/name".to_string(), |s: &[&String]| s[0].clone())
        .expect("written");
    println!(
        "  {}  after the push arrives, ap-south serves the read: alice/name = {name:?}",
        world.now()
    );
    world.deliver_all()?;
    traffic(&world, before);

    // ------------------------------------------------------------------------------
    heading("5. Followers: ap-south's settings become read-only, then it is promoted");
    let before = world.wire;
    world.settings.at[AP].demote();
    match world.write_setting(AP, "alice/theme", "sepia") {
        Err(e @ Error::ReadOnly { .. }) => println!("  write at the follower refused: {e}"),
        other => panic!("expected ReadOnly, got {other:?}"),
    }
    world.write_setting(US, "alice/theme", "dark")?;
    world.push(Tab::Settings, US);
    world.deliver_all()?;
    println!(
        "  it still replicates: us-east sets alice/theme = \"dark\", the follower reads {}",
        world
            .settings
            .state(AP)
            .get("alice/theme")
            .expect("set")
            .show()
    );
    world.settings.at[AP].promote();
    world.write_setting(AP, "alice/theme", "sepia")?;
    world.push(Tab::Settings, AP);
    world.deliver_all()?;
    println!(
        "  promoted (role {:?}), its write is accepted and replicated: us-east reads {}",
        world.settings.at[AP].role(),
        world
            .settings
            .state(US)
            .get("alice/theme")
            .expect("set")
            .show()
    );
    assert!(world.converged());
    traffic(&world, before);

    heading("Done");
    println!(
        "  {} messages, {} bytes on the wire, {} lost at the partition, {} conflict reports",
        world.wire.sent,
        world.wire.bytes,
        world.wire.dropped,
        world.reports.len()
    );
    println!("  all regions converged: yes");
    Ok(())
}
