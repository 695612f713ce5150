//! Three regions, each a master, replicate through the sync engine's driver over an
//! in-process network: acknowledgement levels, a message lost on the way and resent,
//! a partition with concurrent writes on both sides, the heal and its conflict
//! reports, a restart from an older snapshot, a read-your-writes token and a
//! read-only follower.
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
//! Every engine has a counter lease ([`MemoryLease`] here, [`FileLease`] on a disk in
//! production), so it stamps its writes with its region's node id for its whole life,
//! restarts included.
//!
//! The engines are sans-IO and run on the driver: the host loop in [`World::run`]
//! hands every arriving message to [`SyncEngine::handle_bytes`], sends whatever
//! [`SyncEngine::poll_transmit`] returns, and calls [`SyncEngine::handle_timeout`]
//! when [`SyncEngine::poll_timeout`]'s deadline has passed. It never calls
//! `sync_with`, `push` or `receive`: resends, heartbeats, acknowledgements and
//! anti-entropy are the driver's. The network is a queue of messages in flight, each
//! due after its link's one-way latency; it can make a region deaf for a moment
//! (every message arriving there is lost) and cut a region off. Time is a [`ManualClock`] that the loop moves from one event to the
//! next, so every run prints the same output, in a few milliseconds.
//!
//! Run it with `cargo run --release --example multi_region`.
//!
//! [`FileLease`]: concord::sync::FileLease

use concord::sync::{
    AckLevel, Config, MemoryLease, Message, Metrics, PeerLag, Snapshot, SyncEngine, Transmit,
};
use concord::{
    CausalContext, Conflict, Dot, DotStore, Error, LwwRegister, ManualClock, MvRegister, OrMap,
    PnCounter, ReplicaId, Result, VectorClock,
};

/// Wall time at the start of the demo (ms since the Unix epoch); printed as `t+0.000s`.
const T0: u64 = 1_700_000_000_000;

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const US: usize = 0;
const EU: usize = 1;
const AP: usize = 2;

/// How long an engine waits for an acknowledgement before it resends: above the
/// slowest round trip (us-east~ap-south, 220 ms), so that only lost messages are resent.
const RETRANSMIT_MS: u64 = 400;

/// One-way latency of the link between two regions, in ms.
fn latency(a: usize, b: usize) -> u64 {
    match (a.min(b), a.max(b)) {
        (US, EU) => 40,
        (US, AP) => 110,
        (EU, AP) => 60,
        _ => 0,
    }
}

/// Region `r`'s node id: its identity for life, and the id its writes are stamped with.
fn node(r: usize) -> ReplicaId {
    ReplicaId::from_u128(r as u128 + 1)
}

fn region_index(id: ReplicaId) -> usize {
    (0..REGIONS.len())
        .find(|&r| node(r) == id)
        .expect("a known node")
}

/// The region behind a node id.
fn region_of(id: ReplicaId) -> &'static str {
    REGIONS[region_index(id)]
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

/// A causal context with region names and counter ranges: `{eu-west:1-3,1025}`.
fn context(c: &CausalContext) -> String {
    let parts: Vec<String> = c
        .ranges()
        .map(|(id, ranges)| {
            let ranges: Vec<String> = ranges
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            format!("{}:{}", region_of(id), ranges.join(","))
        })
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

fn show_dot(d: Dot) -> String {
    format!("({}, {})", region_of(d.replica()), d.counter())
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
    /// When it was reported (ms since the start).
    at_ms: u64,
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
            at_ms: 0,
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

type Engine<V> = SyncEngine<OrMap<String, V>, ManualClock>;

/// How every engine is configured: its peers are the other two regions.
fn config(r: usize) -> Config {
    let peers = (0..REGIONS.len()).filter(|p| *p != r).map(node);
    Config::with_peers(peers).retransmit_ms(RETRANSMIT_MS)
}

/// One table: an engine per region, each with its counter lease, and the snapshot
/// each region last saved.
struct Table<V: Show> {
    tab: Tab,
    at: Vec<Engine<V>>,
    leases: Vec<MemoryLease>,
    saved: Vec<Option<Snapshot<OrMap<String, V>>>>,
}

impl<V: Show> Table<V> {
    fn new(tab: Tab, time: &ManualClock) -> Result<Self> {
        let leases: Vec<MemoryLease> = REGIONS.iter().map(|_| MemoryLease::new()).collect();
        let at = (0..REGIONS.len())
            .map(|r| {
                SyncEngine::new(node(r), OrMap::new(), time.clone(), config(r))
                    .with_lease(leases[r].clone())
            })
            .collect::<Result<_>>()?;
        Ok(Table {
            tab,
            at,
            leases,
            saved: REGIONS.iter().map(|_| None).collect(),
        })
    }

    fn state(&self, r: usize) -> &OrMap<String, V> {
        self.at[r].state()
    }
}

/// What the host loop needs from a table, whatever its value type.
trait Replicated {
    /// The next message region `r`'s engine wants sent: its destination, its bytes,
    /// and whether it carries writes (else it is an acknowledgement, a heartbeat or a
    /// session opener).
    fn poll_transmit(&mut self, r: usize) -> Option<(usize, Vec<u8>, bool)>;
    /// Hands a message that arrived at `to` to its engine; returns the conflicts it
    /// resolved.
    fn handle_bytes(&mut self, from: usize, to: usize, bytes: &[u8]) -> Result<Vec<Report>>;
    fn poll_timeout(&self, r: usize) -> Option<u64>;
    fn handle_timeout(&mut self, r: usize);
    fn lag(&mut self, r: usize, peer: usize) -> PeerLag;
    fn metrics(&mut self, r: usize) -> Metrics;
    fn context(&self, r: usize) -> &CausalContext;
    fn converged(&self) -> bool;
    fn digest(&self, r: usize) -> String;
    /// Region `r` saves a snapshot (to its disk, in a real service).
    fn save(&mut self, r: usize);
    /// Region `r` crashes and restarts from its saved snapshot, with its lease.
    fn restart(&mut self, r: usize, time: &ManualClock) -> Result<()>;
}

impl<V: Show> Replicated for Table<V> {
    fn poll_transmit(&mut self, r: usize) -> Option<(usize, Vec<u8>, bool)> {
        let Transmit { to, bytes } = self.at[r].poll_transmit()?;
        // Only to print the traffic by kind: the host needs nothing but `to` and `bytes`.
        let msg = Message::<OrMap<String, V>>::decode(&bytes, usize::MAX)
            .expect("the engine encodes what it decodes");
        Some((region_index(to), bytes, !msg.is_ack_only()))
    }

    fn handle_bytes(&mut self, from: usize, to: usize, bytes: &[u8]) -> Result<Vec<Report>> {
        let received = self.at[to].handle_bytes(bytes)?;
        debug_assert!(received.reply.is_none(), "the driver queues answers itself");
        Ok(received
            .conflicts
            .into_iter()
            .map(|c| Report::new(self.tab, to, from, c))
            .collect())
    }

    fn poll_timeout(&self, r: usize) -> Option<u64> {
        self.at[r].poll_timeout()
    }

    fn handle_timeout(&mut self, r: usize) {
        self.at[r].handle_timeout();
    }

    fn lag(&mut self, r: usize, peer: usize) -> PeerLag {
        self.at[r].lag(node(peer)).expect("a configured peer")
    }

    fn metrics(&mut self, r: usize) -> Metrics {
        self.at[r].metrics()
    }

    fn context(&self, r: usize) -> &CausalContext {
        self.at[r].context()
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

    fn save(&mut self, r: usize) {
        self.saved[r] = Some(self.at[r].snapshot().unwrap());
    }

    fn restart(&mut self, r: usize, time: &ManualClock) -> Result<()> {
        let snapshot = self.saved[r].clone().expect("a saved snapshot");
        // The old engine is gone (the process died); the new one starts from the
        // snapshot and continues above the lease the old one left behind.
        self.at[r] = SyncEngine::restore(snapshot, time.clone(), config(r))?
            .with_lease(self.leases[r].clone())?;
        Ok(())
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
    /// It carries writes.
    data: bool,
}

/// Traffic counters.
#[derive(Clone, Copy, Default)]
struct Wire {
    sent: u64,
    bytes: u64,
    /// Messages that carried writes (the rest are acknowledgements, heartbeats and
    /// session openers).
    data: u64,
    /// Lost because the link was cut.
    cut: u64,
    /// Lost on purpose (section 2).
    lost: u64,
    /// Of those, the ones that carried writes.
    lost_data: u64,
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
    /// The network loses every message arriving at this region before this time.
    deaf: Option<(usize, u64)>,
    /// Resends counted by engines that have since restarted (metrics start at zero).
    retired_retransmits: u64,
    wire: Wire,
    reports: Vec<Report>,
}

impl World {
    fn new() -> Result<Self> {
        let time = ManualClock::new(T0);
        Ok(World {
            settings: Table::new(Tab::Settings, &time)?,
            profiles: Table::new(Tab::Profiles, &time)?,
            carts: Table::new(Tab::Carts, &time)?,
            time,
            in_flight: Vec::new(),
            seq: 0,
            isolated: None,
            deaf: None,
            retired_retransmits: 0,
            wire: Wire::default(),
            reports: Vec::new(),
        })
    }

    fn table(&mut self, tab: Tab) -> &mut dyn Replicated {
        match tab {
            Tab::Settings => &mut self.settings,
            Tab::Profiles => &mut self.profiles,
            Tab::Carts => &mut self.carts,
        }
    }

    fn now_ms(&self) -> u64 {
        self.time.now() - T0
    }

    fn now(&self) -> String {
        format!("t+{}", secs(self.now_ms()))
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        self.isolated.is_some_and(|i| (a == i) != (b == i))
    }

    // ----- the host loop ----------------------------------------------------------

    /// Puts on the network everything every engine has to send.
    fn flush(&mut self) {
        for tab in Tab::ALL {
            for from in 0..REGIONS.len() {
                while let Some((to, bytes, data)) = self.table(tab).poll_transmit(from) {
                    self.wire.sent += 1;
                    self.wire.bytes += bytes.len() as u64;
                    self.wire.data += u64::from(data);
                    self.seq += 1;
                    self.in_flight.push(Packet {
                        due: self.time.now() + latency(from, to),
                        seq: self.seq,
                        tab,
                        from,
                        to,
                        bytes,
                        data,
                    });
                }
            }
        }
    }

    /// The next moment something happens: a message arrives or an engine's timer is due.
    fn next_event(&mut self) -> u64 {
        let arrival = self.in_flight.iter().map(|p| p.due).min();
        let timer = Tab::ALL
            .iter()
            .flat_map(|t| (0..REGIONS.len()).map(move |r| (*t, r)))
            .filter_map(|(t, r)| self.table(t).poll_timeout(r))
            .min();
        arrival
            .into_iter()
            .chain(timer)
            .min()
            .expect("engines with peers always have a timer")
    }

    /// Hands every message that has arrived to its engine, in arrival order (a message
    /// to or from the isolated region is lost, and so is one to a deaf region).
    fn deliver(&mut self) -> Result<()> {
        let now = self.time.now();
        let mut arrived: Vec<Packet> = Vec::new();
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].due <= now {
                arrived.push(self.in_flight.swap_remove(i));
            } else {
                i += 1;
            }
        }
        arrived.sort_by_key(|p| (p.due, p.seq));
        for p in arrived {
            if self.cut(p.from, p.to) {
                self.wire.cut += 1;
                continue;
            }
            if self
                .deaf
                .is_some_and(|(r, until)| r == p.to && p.due < until)
            {
                self.wire.lost += 1;
                if p.data {
                    self.wire.lost_data += 1;
                    println!(
                        "  {}  lost: the {} message from {} to {}, carrying the write",
                        self.now(),
                        p.tab.name(),
                        REGIONS[p.from],
                        REGIONS[p.to]
                    );
                }
                continue;
            }
            let reports = self.table(p.tab).handle_bytes(p.from, p.to, &p.bytes)?;
            let at_ms = self.now_ms();
            self.reports
                .extend(reports.into_iter().map(|r| Report { at_ms, ..r }));
        }
        Ok(())
    }

    /// Tells every engine whose deadline has passed that time has passed.
    fn fire_timers(&mut self) {
        let now = self.time.now();
        for tab in Tab::ALL {
            for r in 0..REGIONS.len() {
                let table = self.table(tab);
                if table.poll_timeout(r).is_some_and(|t| t <= now) {
                    table.handle_timeout(r);
                }
            }
        }
    }

    /// The host loop: send what the engines have to send; stop once `done` holds or
    /// the next event is after `until` (ms since the start); else move time to the
    /// next event, deliver what arrived and fire the timers that are due. Returns
    /// whether `done` held.
    fn run(&mut self, until: u64, mut done: impl FnMut(&mut World) -> bool) -> Result<bool> {
        for _ in 0..1_000_000 {
            self.flush();
            if done(self) {
                return Ok(true);
            }
            let next = self.next_event();
            if next > T0 + until {
                self.time.set(T0 + until);
                return Ok(false);
            }
            self.time.set(next.max(self.time.now()));
            self.deliver()?;
            self.fire_timers();
        }
        panic!("the host loop made no progress");
    }

    /// Runs the loop until `done` holds (within a minute of simulated time).
    fn run_until(&mut self, what: &str, done: impl FnMut(&mut World) -> bool) -> Result<()> {
        let limit = self.now_ms() + 60_000;
        assert!(self.run(limit, done)?, "{what}: not within a minute");
        Ok(())
    }

    /// Runs the loop (heartbeats, resends, anti-entropy) until `ms` since the start.
    fn run_to(&mut self, ms: u64) -> Result<()> {
        self.run(ms, |_| false)?;
        Ok(())
    }

    // ----- the application ----------------------------------------------------------

    fn write_setting(&mut self, r: usize, key: &str, value: &str) -> Result<Dot> {
        let receipt = self.settings.at[r]
            .update(|m, hlc| m.write(key.to_string(), value.to_string(), hlc))?;
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

    /// True once every engine has heard from both its peers.
    fn connected(&mut self) -> bool {
        Tab::ALL.iter().all(|t| {
            (0..REGIONS.len()).all(|r| {
                (0..REGIONS.len())
                    .filter(|p| *p != r)
                    .all(|p| self.table(*t).lag(r, p).since_heard_ms.is_some())
            })
        })
    }

    fn converged(&mut self) -> bool {
        Tab::ALL.iter().all(|t| self.table(*t).converged())
    }

    /// Every engine's `retransmits` metric.
    fn resends(&mut self) -> Vec<(Tab, usize, u64)> {
        Tab::ALL
            .iter()
            .flat_map(|t| (0..REGIONS.len()).map(move |r| (*t, r)))
            .map(|(t, r)| (t, r, self.table(t).metrics(r).retransmits))
            .collect()
    }

    /// The engines that resent since `before`, and how many times.
    fn resends_since(&mut self, before: &[(Tab, usize, u64)]) -> Vec<(Tab, usize, u64)> {
        self.resends()
            .into_iter()
            .zip(before)
            .filter(|(now, then)| now.2 > then.2)
            .map(|(now, then)| (now.0, now.1, now.2 - then.2))
            .collect()
    }

    /// Resends after a retransmission timeout, summed over every engine.
    fn retransmits(&mut self) -> u64 {
        self.retired_retransmits
            + Tab::ALL
                .iter()
                .flat_map(|t| (0..REGIONS.len()).map(move |r| (*t, r)))
                .map(|(t, r)| self.table(t).metrics(r).retransmits)
                .sum::<u64>()
    }
}

/// Prints the wire traffic since `before`.
fn traffic(world: &World, before: Wire) {
    let w = world.wire;
    let sent = w.sent - before.sent;
    let data = w.data - before.data;
    let mut lost = Vec::new();
    if w.lost > before.lost {
        lost.push(format!(
            "{} lost on purpose ({} with writes)",
            w.lost - before.lost,
            w.lost_data - before.lost_data
        ));
    }
    if w.cut > before.cut {
        lost.push(format!("{} lost at the partition", w.cut - before.cut));
    }
    println!(
        "  wire: {sent} messages ({data} carrying writes, {} acknowledgements, heartbeats and openers), {} bytes{}",
        sent - data,
        w.bytes - before.bytes,
        if lost.is_empty() {
            String::new()
        } else {
            format!("; {}", lost.join(", "))
        }
    );
}

/// Prints conflict reports in words, grouped by table and key; identical reports from
/// several regions are printed once.
fn print_reports(reports: &[Report]) {
    let mut keys: Vec<(Tab, &str)> = Vec::new();
    for r in reports {
        if !keys.contains(&(r.tab, r.key.as_str())) {
            keys.push((r.tab, r.key.as_str()));
        }
    }
    for (tab, key) in keys {
        let same = reports.iter().filter(|r| r.tab == tab && r.key == key);
        let mut shown: Vec<(&Report, Vec<String>)> = Vec::new();
        for r in same {
            let place = format!(
                "t+{} at {} from {}",
                secs(r.at_ms),
                REGIONS[r.at],
                REGIONS[r.from]
            );
            match shown.iter_mut().find(|(f, _)| {
                (
                    &f.ours,
                    &f.ours_clock,
                    &f.theirs,
                    &f.theirs_clock,
                    &f.resolved,
                ) == (
                    &r.ours,
                    &r.ours_clock,
                    &r.theirs,
                    &r.theirs_clock,
                    &r.resolved,
                )
            }) {
                Some((_, places)) => places.push(place),
                None => shown.push((r, vec![place])),
            }
        }
        println!("\n    {} {key:?}: {}", tab.name(), shown[0].0.why);
        for (r, places) in shown {
            println!("      {}:", places.join(", "));
            println!("        held      {:<44} clock {}", r.ours, r.ours_clock);
            println!(
                "        received  {:<44} clock {}",
                r.theirs, r.theirs_clock
            );
            println!("        resolved  {}", r.resolved);
        }
    }
}

fn heading(title: &str) {
    println!("\n== {title}");
}

fn main() -> Result<()> {
    let mut world = World::new()?;
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
    let defaults = config(US);
    println!(
        "  every engine runs on the driver: resend after {} ms without an acknowledgement (doubling",
        defaults.retransmit_ms
    );
    println!(
        "  up to {} ms), a heartbeat to a quiet peer every {} ms, anti-entropy every {} ms",
        defaults.max_retransmit_ms, defaults.heartbeat_ms, defaults.anti_entropy_ms
    );

    // ------------------------------------------------------------------------------
    heading("0. The regions connect");
    let before = world.wire;
    world.run_until("hello", |w| w.connected())?;
    let mut versions: Vec<u32> = Vec::new();
    for tab in Tab::ALL {
        for r in 0..REGIONS.len() {
            let metrics = world.table(tab).metrics(r);
            versions.extend(metrics.peers.iter().map(|p| p.protocol_version));
        }
    }
    println!(
        "  {}  every engine has heard from its two peers (9 engines, 18 links)",
        world.now()
    );
    println!(
        "            each speaks protocol version 1 until it hears that its peer speaks more; now all speak {}",
        versions.iter().max().expect("peers")
    );
    assert!(versions
        .iter()
        .all(|v| *v == concord::sync::PROTOCOL_VERSION));
    traffic(&world, before);

    // ------------------------------------------------------------------------------
    heading("1. Normal operation: the driver sends every write to the other regions");
    let before = world.wire;

    println!("  async     us-east   settings alice/theme = \"light\"");
    let dot = world.write_setting(US, "alice/theme", "light")?;
    let engine = &world.settings.at[US];
    assert!(engine.is_replicated(dot, AckLevel::None));
    println!(
        "            AckLevel::None: returns at once, at {}; write {} held by peers: {}",
        world.now(),
        show_dot(dot),
        names(&engine.holders(dot))
    );
    world.run_until("async", |w| {
        w.settings.at[US].is_replicated(dot, AckLevel::All)
    })?;
    println!(
        "            in the background, by {}: held by {}",
        world.now(),
        names(&world.settings.at[US].holders(dot))
    );

    println!("  semi-sync eu-west   profiles alice/email = \"alice@example.com\"");
    let start = world.now_ms();
    let dot = world.write_profile(EU, "alice/email", "alice@example.com")?;
    world.run_until("semi-sync", |w| {
        w.profiles.at[EU].is_replicated(dot, AckLevel::Peers(1))
    })?;
    println!(
        "            waits for AckLevel::Peers(1): returns at {} ({} ms, one round trip); held by {}",
        world.now(),
        world.now_ms() - start,
        names(&world.profiles.at[EU].holders(dot))
    );
    world.run_until("semi-sync, background", |w| {
        w.profiles.at[EU].is_replicated(dot, AckLevel::All)
    })?;
    println!(
        "            in the background, by {}: held by {}",
        world.now(),
        names(&world.profiles.at[EU].holders(dot))
    );

    println!("  sync      ap-south  carts    alice/espresso += 2");
    let start = world.now_ms();
    let dot = world.add_to_cart(AP, "alice/espresso", 2)?;
    world.run_until("sync", |w| w.carts.at[AP].is_replicated(dot, AckLevel::All))?;
    println!(
        "            waits for AckLevel::All: returns at {} ({} ms); held by {}",
        world.now(),
        world.now_ms() - start,
        names(&world.carts.at[AP].holders(dot))
    );
    world.run_until("converged", |w| w.converged())?;
    println!("  all three regions hold the same three tables");
    for tab in Tab::ALL {
        world.table(tab).save(EU);
    }
    println!(
        "  {}  eu-west saves a snapshot of its three tables (its backup; section 5 restores it)",
        world.now()
    );
    traffic(&world, before);

    // ------------------------------------------------------------------------------
    world.run_to(1_000)?;
    heading("2. Messages are lost on the way; the driver resends them by itself");
    let before = world.wire;
    let resends_before = world.resends();
    world.deaf = Some((EU, world.time.now() + 300));
    println!(
        "  {}  eu-west's network fails for 300 ms: every message that arrives there is lost",
        world.now()
    );
    println!(
        "  {}  us-east   settings bob/language = \"en\"",
        world.now()
    );
    let dot = world.write_setting(US, "bob/language", "en")?;
    let written = world.now_ms();
    world.run_until("ap-south holds it", |w| {
        w.settings.at[US].holders(dot).contains(&node(AP))
    })?;
    println!(
        "  {}  ap-south has acknowledged it. (It forwarded it to eu-west: the driver offers every",
        world.now()
    );
    println!("            peer what that peer has not acknowledged, whoever wrote it.)");
    world.run_until("resent", |w| {
        w.settings.at[US].is_replicated(dot, AckLevel::All)
    })?;
    let resent = world.resends_since(&resends_before);
    assert!(!resent.is_empty(), "a lost message is resent");
    println!(
        "  {}  eu-west holds it, {} ms after the write, with no new write and no manual call:",
        world.now(),
        world.now_ms() - written
    );
    for (tab, r, n) in &resent {
        println!(
            "            {}'s {} engine got no acknowledgement within {RETRANSMIT_MS} ms and resent (\"retransmits\": +{n})",
            REGIONS[*r],
            tab.name()
        );
    }
    traffic(&world, before);

    // ------------------------------------------------------------------------------
    world.run_to(2_000)?;
    heading("3. A partition cuts ap-south off; both sides keep writing");
    let before = world.wire;
    let retransmits_before = world.retransmits();
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
            world.run_to(3_500)?;
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
        }
    }
    world.run_to(4_000)?;
    println!(
        "  writes reach the regions on the same side; those across the cut are lost, and resent"
    );
    let espresso = "alice/espresso".to_string();
    let (cart_us, cart_ap) = (
        world.carts.state(US).count(&espresso),
        world.carts.state(AP).count(&espresso),
    );
    println!("  alice/espresso now reads {cart_us} at us-east and {cart_ap} at ap-south (2 before the cut)");

    println!("  replication lag as time passes (over the three tables):");
    println!("    time       from     -> to        unacked  oldest    last heard");
    for at in [4_000, 10_000, 25_000] {
        world.run_to(at)?;
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
    println!("    (us-east hears eu-west's heartbeats every second; ap-south has been silent since the cut)");
    let metrics = world.carts.metrics(US);
    let towards_ap = metrics
        .peers
        .iter()
        .find(|p| p.peer == node(AP))
        .expect("ap-south is a peer");
    println!("  us-east's metrics for the carts table (a few fields of its snapshot):");
    println!(
        "    writes {}, messages_sent {}, messages_received {}, retransmits {}",
        metrics.writes, metrics.messages_sent, metrics.messages_received, metrics.retransmits
    );
    println!(
        "    towards ap-south: {}",
        serde_json::to_string(&towards_ap.lag).expect("lag serializes")
    );
    println!(
        "    (resends to ap-south back off: {} ms, then double each time, up to {} ms)",
        RETRANSMIT_MS, defaults.max_retransmit_ms
    );
    println!(
        "  resends during the partition, all engines: {}",
        world.retransmits() - retransmits_before
    );
    traffic(&world, before);

    // ------------------------------------------------------------------------------
    heading("4. The partition heals; the driver reconciles with no manual call");
    let before = world.wire;
    let retransmits_before = world.retransmits();
    world.isolated = None;
    let healed = world.now_ms();
    println!("  {}  the links to ap-south come back", world.now());
    world.run_until("heal", |w| w.converged())?;
    println!(
        "  {}  all three regions converged, {} ms later, by the driver alone: during the partition",
        world.now(),
        world.now_ms() - healed
    );
    println!(
        "            resends backed off to one every {} ms at most, and anti-entropy asks every peer for",
        defaults.max_retransmit_ms
    );
    println!(
        "            what is missing every {} ms; {} resends in this phase",
        defaults.anti_entropy_ms,
        world.retransmits() - retransmits_before
    );
    traffic(&world, before);

    println!(
        "  conflict reports, from the partition to now (a race is reported by every region that"
    );
    println!("  merges it; identical reports are shown once):");
    print_reports(&world.reports);
    let reported = world.reports.len();
    let merged = world.carts.state(US).count(&espresso);
    assert_eq!(merged, 2 + 1 + 3);
    println!(
        "\n    The last cart report shows what each side added: held {cart_us} = 2 shared + 1, received the"
    );
    println!(
        "    +3 from ap-south. Merged: 2 + 1 + 3 = {merged}. A naive \"sum both carts\" merge would read"
    );
    println!(
        "    {cart_us} + {cart_ap} = {}, counting the 2 both sides held before the cut twice.",
        cart_us + cart_ap
    );
    println!(
        "    The clocks name node ids, shown here as regions: each region writes under its own id."
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
    world.run_to(world.now_ms() + 1_000)?;
    heading("5. eu-west crashes and restarts from its older snapshot, with its lease");
    let before = world.wire;
    let context_before = context(world.settings.context(EU));
    let entries_before = world.settings.context(EU).replicas().count();
    println!(
        "  {}  eu-west crashes. Its settings had seen {context_before}",
        world.now()
    );
    world.retired_retransmits += Tab::ALL
        .iter()
        .map(|t| world.table(*t).metrics(EU).retransmits)
        .sum::<u64>();
    let time = world.time.clone();
    for tab in Tab::ALL {
        world.table(tab).restart(EU, &time)?;
    }
    let lease = world.settings.leases[EU].get();
    let bob = "bob/theme".to_string();
    println!(
        "  {}  eu-west restarts from the snapshot saved at section 1: bob/theme {}, alice/email {}",
        world.now(),
        world
            .settings
            .state(EU)
            .get(&bob)
            .map_or("absent".to_string(), |r| r.show()),
        world
            .profiles
            .state(EU)
            .get(&"alice/email".to_string())
            .expect("written in section 1")
            .show()
    );
    println!("            (eu-west wrote both after the snapshot, during the partition; its peers hold them)");
    println!(
        "            its lease says counters up to {} may have been issued before the crash",
        lease
    );
    world.run_until("restored", |w| w.converged())?;
    println!(
        "  {}  eu-west has caught up: its peers sent back what the snapshot lacked, its own",
        world.now()
    );
    println!(
        "            lost writes included: bob/theme {}",
        world
            .settings
            .state(EU)
            .get(&bob)
            .expect("caught up")
            .show()
    );
    if world.reports.len() > reported {
        println!("  conflict reports while eu-west caught up:");
        print_reports(&world.reports[reported..]);
        println!();
    }
    let reported = world.reports.len();
    let dot = world.write_setting(EU, "bob/theme", "solarized")?;
    println!(
        "  {}  eu-west   settings bob/theme = \"solarized\": write {}",
        world.now(),
        show_dot(dot)
    );
    assert_eq!(dot.replica(), node(EU));
    assert!(dot.counter() > lease);
    world.run_until("replicated", |w| {
        w.settings.at[EU].is_replicated(dot, AckLevel::All)
    })?;
    let metrics = world.settings.metrics(EU);
    assert_eq!(metrics.incarnation, node(EU));
    let entries_after = world.settings.context(US).replicas().count();
    assert_eq!(entries_before, entries_after);
    println!(
        "            still stamped with eu-west's node id ({}), above the lease: no dot is reused",
        node(EU).short()
    );
    println!(
        "  {}  held by {}; us-east's settings have seen {}",
        world.now(),
        names(&world.settings.at[EU].holders(dot)),
        context(world.settings.context(US))
    );
    println!(
        "            {entries_after} version-vector entries, as before the crash: no entry was added. The counters"
    );
    println!(
        "            between the snapshot and the lease are a gap that costs a few bytes; without a lease,"
    );
    println!(
        "            the restart would write under a fresh random id, a new entry in every vector for good."
    );
    traffic(&world, before);

    // ------------------------------------------------------------------------------
    heading("6. Read-your-writes: a client carries a session token between regions");
    let before = world.wire;
    world.write_profile(US, "alice/name", "Alice Liddell")?;
    let token = world.profiles.at[US].token().to_token();
    println!(
        "  {}  the client writes profiles alice/name at us-east and gets a token to carry",
        world.now()
    );
    println!(
        "            (an HTTP header, say): {token:?} ({} bytes: node.counter pairs)",
        token.len()
    );
    let carried = CausalContext::from_token(&token)?;
    println!("            it reads {}", context(&carried));
    match world.profiles.at[AP].read(&carried) {
        Err(e @ Error::NotCaughtUp { .. }) => {
            println!("  {}  read at ap-south refused: {e}", world.now())
        }
        other => panic!("expected NotCaughtUp, got {other:?}"),
    }
    world.run_until("caught up", |w| w.profiles.at[AP].can_serve(&carried))?;
    let profile = world.profiles.at[AP].read(&carried)?;
    let name = profile
        .resolved(&"alice/name".to_string(), |s: &[&String]| s[0].clone())
        .expect("written");
    println!(
        "  {}  once the write arrives, ap-south serves the read: alice/name = {name:?}",
        world.now()
    );
    world.run_until("converged", |w| w.converged())?;
    traffic(&world, before);

    // ------------------------------------------------------------------------------
    heading("7. Followers: ap-south's settings become read-only, then it is promoted");
    let before = world.wire;
    world.settings.at[AP].demote();
    match world.write_setting(AP, "alice/theme", "sepia") {
        Err(e @ Error::ReadOnly { .. }) => println!("  write at the follower refused: {e}"),
        other => panic!("expected ReadOnly, got {other:?}"),
    }
    world.write_setting(US, "alice/theme", "dark")?;
    world.run_until("follower", |w| w.converged())?;
    println!(
        "  it still replicates: us-east sets alice/theme = \"dark\", the follower reads {}",
        world
            .settings
            .state(AP)
            .get("alice/theme")
            .expect("set")
            .show()
    );
    world.settings.at[AP].promote()?;
    world.write_setting(AP, "alice/theme", "sepia")?;
    world.run_until("promoted", |w| w.converged())?;
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
    traffic(&world, before);

    if world.reports.len() > reported {
        println!("  conflict reports since section 5:");
        print_reports(&world.reports[reported..]);
    }

    heading("Done");
    let w = world.wire;
    println!(
        "  {} of simulated time: {} messages ({} carrying writes), {} bytes on the wire",
        secs(world.now_ms()),
        w.sent,
        w.data,
        w.bytes
    );
    println!(
        "  {} lost on purpose, {} lost at the partition, {} resends, {} conflict reports",
        w.lost,
        w.cut,
        world.retransmits(),
        world.reports.len()
    );
    assert!(world.converged());
    println!("  all regions converged: yes");
    Ok(())
}
