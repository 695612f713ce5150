//! Failover in master–follower mode, on separate node processes: `kill -9` of the
//! master under a client writing at `quorum`, a planned switchover under load via the
//! HTTP API, and two nodes promoted at once. Every write acknowledged at quorum must
//! be on every node at the end. Durations are measured and printed, never asserted.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use concord_node::client::{Client, LeaderClient};
use concord_node::harness::{Cluster, Options};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_concord-node"))
}

/// A lease of one second, failover after three failed checks 100 ms apart.
const LEASE_MS: u64 = 1_000;

fn start(tag: &str) -> Cluster {
    let mut opts = Options::master_follower(LEASE_MS, 3);
    opts.tag = tag.into();
    let mut c = Cluster::start(bin(), &opts).expect("start the cluster");
    for i in 0..3 {
        c.wait_ready(i, Duration::from_secs(30))
            .expect("node ready");
    }
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    c
}

/// Waits until `ok` holds of node `i`'s `/status`, and returns it.
fn wait_status(
    c: &Cluster,
    i: usize,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    c.wait_status(i, timeout, ok).unwrap_or_else(|| {
        panic!(
            "node-{} never {what} within {timeout:?}; its status: {}\n{}",
            i + 1,
            c.status(i),
            c.log_tail(i, 30)
        )
    })
}

/// One write a client saw acknowledged.
#[derive(Clone, Debug)]
struct Acked {
    key: String,
    at: Instant,
    /// The node that took it (its dot's replica name).
    by: String,
}

/// Clients writing unique keys at `quorum` through [`LeaderClient`]s until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    /// Requests whose outcome the client cannot know (the node died mid-request).
    unknown: Arc<Mutex<u64>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Writers {
    fn start(addrs: &[SocketAddr], clients: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let unknown: Arc<Mutex<u64>> = Arc::default();
        let threads = (0..clients)
            .map(|t| {
                let (stop, acked, unknown) = (stop.clone(), acked.clone(), unknown.clone());
                let addrs = addrs.to_vec();
                thread::spawn(move || {
                    let mut client = LeaderClient::new(&addrs, Duration::from_secs(3));
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let key = format!("w{t}-{seq}");
                        let path = format!("/kv/{key}?ack=quorum&timeout_ms=2000");
                        let deadline = Instant::now() + Duration::from_secs(20);
                        match client.write("PUT", &path, &key, deadline) {
                            Ok(r) if r.status == 200 => {
                                let dot = r.json()["dot"].as_str().unwrap_or("").to_string();
                                let by = dot.split(':').next().unwrap_or("").to_string();
                                acked.lock().unwrap().push(Acked {
                                    key,
                                    at: Instant::now(),
                                    by,
                                });
                            }
                            Ok(_) | Err(_) => {
                                *unknown.lock().unwrap() += 1;
                                thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            unknown,
            threads,
        }
    }

    fn acked(&self) -> Vec<Acked> {
        self.acked.lock().unwrap().clone()
    }

    fn finish(self) -> (Vec<Acked>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a writer panicked");
        }
        let unknown = *self.unknown.lock().unwrap();
        (self.acked.lock().unwrap().clone(), unknown)
    }
}

/// Waits until some write acknowledged after `since` was taken by a node other than
/// `not`, and returns it.
fn first_write_after(w: &Writers, since: Instant, not: &str, timeout: Duration) -> Acked {
    let until = Instant::now() + timeout;
    loop {
        if let Some(a) = w
            .acked()
            .into_iter()
            .filter(|a| a.at > since && a.by != not)
            .min_by_key(|a| a.at)
        {
            return a;
        }
        assert!(
            Instant::now() < until,
            "no write was taken by another node within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Every acknowledged write is on every node, with its value.
fn check_everywhere(c: &mut Cluster, acked: &[Acked]) {
    let all = c
        .wait_converged(Duration::from_secs(30))
        .expect("the nodes converge");
    let keys: BTreeSet<String> = all
        .as_array()
        .expect("a list of keys")
        .iter()
        // A write the old master took but never acknowledged (it died first) comes
        // back with it; if the client's retry wrote the same key at the new master
        // without having received it, the two are siblings: the acknowledged value
        // is among them.
        .filter(|e| {
            e["values"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| *x == e["key"]))
        })
        .filter_map(|e| e["key"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<&str> = acked
        .iter()
        .filter(|a| !keys.contains(&a.key))
        .map(|a| a.key.as_str())
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} writes acknowledged at quorum are missing: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(c.panics().is_empty(), "panics: {:?}", c.panics());
}

#[test]
fn the_master_killed_under_load_is_replaced_and_returns_as_a_follower() {
    let mut c = start("failover");
    wait_status(&c, 0, Duration::from_secs(20), "took writes", |s| {
        s["writable"] == true
    });
    let addrs: Vec<SocketAddr> = (0..3).map(|i| c.http(i)).collect();
    let w = Writers::start(&addrs, 2);
    thread::sleep(Duration::from_millis(1_500));
    let before = w.acked().len();
    assert!(before > 0, "the clients wrote before the kill");
    c.kill(0);
    let killed = Instant::now();
    let first = first_write_after(&w, killed, "node-1", Duration::from_secs(30));
    let failover = first.at.duration_since(killed);
    println!(
        "FAILOVER TIME: {:.0} ms from kill -9 of the master to the first write acknowledged \
         at quorum by the new master ({}); lease {LEASE_MS} ms, 3 failed checks 100 ms apart",
        failover.as_secs_f64() * 1e3,
        first.by
    );
    let new = if first.by == "node-2" { 1 } else { 2 };
    let s = wait_status(&c, new, Duration::from_secs(5), "was the master", |s| {
        s["role"] == "master" && s["writable"] == true
    });
    let epoch = s["epoch"].as_u64().expect("an epoch");
    assert!(epoch >= 1, "the failover started a new epoch: {s}");
    // The followers chose from the same settled positions: one promotion, one epoch.
    let promotions = c.metric(1, "promotions_total") + c.metric(2, "promotions_total");
    assert_eq!(
        (promotions, epoch),
        (1.0, 1),
        "the followers disagreed: {s}"
    );
    let other = 3 - new;
    wait_status(
        &c,
        other,
        Duration::from_secs(5),
        "followed the new master",
        |s| s["role"] == "follower" && s["leader"] == first.by.as_str() && s["epoch"] == epoch,
    );
    // The clients keep writing at the new master.
    thread::sleep(Duration::from_millis(1_000));
    // The old master returns, from its file: it was the master of an older epoch, so
    // it refuses writes and, once it hears of the new epoch, follows.
    c.spawn(0).expect("restart node-1");
    c.wait_ready(0, Duration::from_secs(30))
        .expect("node-1 ready");
    let s = wait_status(
        &c,
        0,
        Duration::from_secs(20),
        "followed the new master",
        |s| s["role"] == "follower" && s["epoch"] == epoch && s["leader"] == first.by.as_str(),
    );
    assert_eq!(s["writable"], false, "{s}");
    let r = c.client(0).put("at-the-old-master", "x", "quorum").unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.header("x-concord-leader"),
        Some(c.http(new).to_string().as_str()),
        "the refusal names the new master: {}",
        r.body
    );
    thread::sleep(Duration::from_millis(500));
    let (acked, unknown) = w.finish();
    let after = acked.iter().filter(|a| a.at > killed).count();
    println!(
        "{} writes acknowledged at quorum ({before} before the kill, {after} after), {unknown} \
         with an unknown outcome",
        acked.len()
    );
    check_everywhere(&mut c, &acked);
    // It caught up: everything the new master took is on the old one too (checked
    // above, every node holds every acknowledged write), and the metrics say so.
    assert!(c.metric(0, "leader_changes_total") >= 1.0);
    assert_eq!(c.metric(0, "writable"), 0.0);
}

#[test]
fn a_planned_switchover_under_load_loses_no_acknowledged_write() {
    let mut c = start("switchover");
    wait_status(&c, 0, Duration::from_secs(20), "took writes", |s| {
        s["writable"] == true
    });
    let addrs: Vec<SocketAddr> = (0..3).map(|i| c.http(i)).collect();
    let w = Writers::start(&addrs, 2);
    thread::sleep(Duration::from_millis(1_000));
    // Asked at the third node: it drives the other two over their APIs.
    let asked = Instant::now();
    let r = c
        .client(2)
        .request("POST", "/admin/switchover?to=node-2", &[], "")
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    let report = r.json();
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    assert_eq!(
        steps,
        [
            "StopWrites",
            "WaitCaughtUp",
            "Promote",
            "Demote",
            "Done",
            "Writable"
        ],
        "{report}"
    );
    assert!(report["writable_after_ms"].is_number(), "{report}");
    println!(
        "SWITCHOVER: {:.0} ms in all, the new master took writes after {} ms; steps: {}",
        took.as_secs_f64() * 1e3,
        report["writable_after_ms"],
        report["steps"]
    );
    let epoch = report["epoch"].as_u64().unwrap();
    wait_status(&c, 1, Duration::from_secs(5), "was the master", |s| {
        s["role"] == "master" && s["epoch"] == epoch
    });
    wait_status(&c, 0, Duration::from_secs(5), "followed node-2", |s| {
        s["role"] == "follower" && s["epoch"] == epoch && s["leader"] == "node-2"
    });
    let first = first_write_after(&w, asked, "node-1", Duration::from_secs(10));
    assert_eq!(first.by, "node-2");
    thread::sleep(Duration::from_millis(500));
    let (acked, unknown) = w.finish();
    println!(
        "{} writes acknowledged at quorum, {unknown} with an unknown outcome",
        acked.len()
    );
    check_everywhere(&mut c, &acked);
    // A switchover to the master itself makes no sense.
    let r = c
        .client(0)
        .request("POST", "/admin/switchover?to=node-2", &[], "")
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    let r = c
        .client(0)
        .request("POST", "/admin/switchover?to=nobody", &[], "")
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn two_nodes_promoted_at_once_never_both_take_writes() {
    let c = start("double-promotion");
    wait_status(&c, 0, Duration::from_secs(20), "took writes", |s| {
        s["writable"] == true
    });
    // Hostile or mistaken admin requests get typed answers, and change nothing.
    let mut n2 = c.client(1);
    for (method, path, want) in [
        ("POST", "/admin/promote?epoch=abc", 400),
        ("POST", "/admin/promote?epoch=-1", 400),
        ("POST", "/admin/promote?epoch=18446744073709551615", 409),
        ("POST", "/admin/promote?epoch=0", 409),
        ("POST", "/admin/fence", 400),
        ("POST", "/admin/fence?epoch=99999999999999999999999", 400),
        ("POST", "/admin/fence?epoch=18446744073709551615", 409),
        ("GET", "/admin/promote", 405),
        ("POST", "/admin/switchover", 400),
        ("POST", "/admin/switchover?to=%ZZ", 400),
        ("POST", "/admin/switchover?to=node-1", 409),
    ] {
        let r = n2.request(method, path, &[], "").unwrap();
        assert_eq!(r.status, want, "{method} {path}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{method} {path}: {}", r.body);
    }
    let s = c.status(1);
    assert_eq!(
        (s["role"].as_str(), s["epoch"].as_u64()),
        (Some("follower"), Some(0))
    );
    // An operator's mistake, or two coordinators racing: both followers are
    // promoted in the same epoch.
    let promote = |i: usize| {
        let addr = c.http(i);
        thread::spawn(move || {
            Client::new(addr, Duration::from_secs(5))
                .request("POST", "/admin/promote?epoch=5", &[], "")
                .map(|r| r.status)
        })
    };
    let (a, b) = (promote(1), promote(2));
    assert_eq!(a.join().unwrap().unwrap(), 200);
    assert_eq!(b.join().unwrap().unwrap(), 200);
    // Write at every node, one request at a time (so the requests are in real-time
    // order), for three leases and more.
    let mut clients: Vec<Client> = (0..3).map(|i| c.client(i)).collect();
    let mut took: [Vec<u64>; 3] = Default::default();
    let until = Instant::now() + Duration::from_millis(3 * LEASE_MS + 1_000);
    let mut n = 0;
    while Instant::now() < until {
        for (i, client) in clients.iter_mut().enumerate() {
            n += 1;
            let r = client
                .request(
                    "PUT",
                    &format!("/kv/k{n}?ack=quorum&timeout_ms=500"),
                    &[],
                    "v",
                )
                .unwrap();
            match r.status {
                200 => took[i].push(n),
                503 => {}
                s => panic!("node-{} answered {s}: {}", i + 1, r.body),
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    let counts: Vec<usize> = took.iter().map(Vec::len).collect();
    println!("writes taken per node after the double promotion: {counts:?}");
    assert!(
        took[1].is_empty() || took[2].is_empty(),
        "both masters of epoch 5 took writes: {counts:?}"
    );
    let winner = if took[1].is_empty() { 2 } else { 1 };
    assert!(
        !took[winner].is_empty(),
        "one of them took over: {counts:?}"
    );
    // The old master may finish its lease (until it hears of epoch 5), but every
    // write it took came before the new master's first.
    let first_new = took[winner][0];
    assert!(
        took[0].iter().all(|&k| k < first_new),
        "the old master took a write after the new one's first: {took:?}"
    );
    // The loser, a master no majority supports, steps down after three leases.
    let loser = 3 - winner;
    let s = wait_status(&c, loser, Duration::from_secs(10), "stepped down", |s| {
        s["role"] == "follower"
    });
    assert_eq!(s["writable"], false, "{s}");
    assert!(c.panics().is_empty(), "panics: {:?}", c.panics());
}

#[test]
fn a_split_vote_after_the_master_dies_is_settled_in_a_newer_epoch() {
    let mut c = start("split-vote");
    wait_status(&c, 0, Duration::from_secs(20), "took writes", |s| {
        s["writable"] == true
    });
    // The master dies and both followers are promoted in epoch 1 (two operators,
    // or coordinators that disagreed): each supports itself, the third vote is
    // gone, and neither can gather a majority.
    thread::sleep(Duration::from_millis(500)); // the followers' checks see the master
    c.kill(0);
    let killed = Instant::now();
    for i in [1, 2] {
        let r = c
            .client(i)
            .request("POST", "/admin/promote?epoch=1", &[], "")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Both step down after three leases without a majority, go back to the dead
    // master, fail its checks and fail over in a newer epoch, where they agree.
    let mut clients: Vec<Client> = [1, 2].iter().map(|&i| c.client(i)).collect();
    let until = Instant::now() + Duration::from_secs(40);
    let (winner, epoch) = loop {
        assert!(
            Instant::now() < until,
            "no node took writes after the split vote:\n{}\n{}",
            c.log_tail(1, 20),
            c.log_tail(2, 20)
        );
        let mut took = None;
        for (k, client) in clients.iter_mut().enumerate() {
            let r = client.put("after-the-split", "v", "quorum").unwrap();
            if r.status == 200 {
                took = Some(k + 1);
            }
        }
        if let Some(i) = took {
            break (i, c.status(i)["epoch"].as_u64().unwrap());
        }
        thread::sleep(Duration::from_millis(50));
    };
    println!(
        "SPLIT VOTE settled: node-{} took writes at epoch {epoch}, {:.1} s after the kill",
        winner + 1,
        killed.elapsed().as_secs_f64()
    );
    assert!(epoch >= 2, "a newer epoch than the split one: {epoch}");
    let other = 3 - winner;
    wait_status(
        &c,
        other,
        Duration::from_secs(5),
        "followed the winner",
        |s| s["role"] == "follower" && s["epoch"] == epoch,
    );
    assert!(c.panics().is_empty(), "panics: {:?}", c.panics());
}

#[test]
fn a_master_cut_off_stops_taking_writes_and_follows_after_the_heal() {
    let mut c = start("partitioned-master");
    wait_status(&c, 0, Duration::from_secs(20), "took writes", |s| {
        s["writable"] == true
    });
    let addrs: Vec<SocketAddr> = (0..3).map(|i| c.http(i)).collect();
    let w = Writers::start(&addrs, 2);
    thread::sleep(Duration::from_millis(1_000));
    // The master is not dead, only cut off from the followers (its HTTP API still
    // answers): its messages are blackholed, connections left open.
    for j in [1, 2] {
        c.link(0, j).set(concord_node::proxy::Link::Drop);
    }
    let cut = Instant::now();
    let first = first_write_after(&w, cut, "node-1", Duration::from_secs(30));
    println!(
        "PARTITION: the majority side took a write {:.0} ms after the master was cut off",
        first.at.duration_since(cut).as_secs_f64() * 1e3
    );
    // The old master's lease has run out: it refuses writes, though it has not yet
    // heard of the new epoch.
    let s = wait_status(&c, 0, Duration::from_secs(5), "lost its lease", |s| {
        s["writable"] == false
    });
    let r = c.client(0).put("minority", "x", "quorum").unwrap();
    assert_eq!(r.status, 503, "{}: {s}", r.body);
    // The last write the old master acknowledged came before the new master's first.
    let acked = w.acked();
    let last_old = acked
        .iter()
        .filter(|a| a.by == "node-1")
        .map(|a| a.at)
        .max();
    assert!(
        last_old.is_some_and(|t| t < first.at),
        "the old master acknowledged a write after the new master's first"
    );
    c.heal();
    let new = if first.by == "node-2" { 1 } else { 2 };
    let epoch = c.status(new)["epoch"].as_u64().unwrap();
    wait_status(
        &c,
        0,
        Duration::from_secs(20),
        "followed the new master",
        |s| s["role"] == "follower" && s["epoch"] == epoch && s["leader"] == first.by.as_str(),
    );
    thread::sleep(Duration::from_millis(300));
    let (acked, unknown) = w.finish();
    println!(
        "{} writes acknowledged at quorum, {unknown} with an unknown outcome",
        acked.len()
    );
    check_everywhere(&mut c, &acked);
}

/// A master told to stop taking writes (`POST /admin/stop-writes`, a switchover's
/// first step) and killed right after the answer comes back as a follower of the
/// epoch it knew, under the `none` fsync policy too: the answer is sent once the
/// role is on disk. Automatic failover is off, so that nothing but the node's own
/// file decides its role after the restart.
#[test]
fn a_master_that_stopped_taking_writes_restarts_as_a_follower() {
    let mut opts = Options::master_follower(LEASE_MS, 3);
    opts.tag = "stop-writes-restart".into();
    opts.fsync = concord_node::config::Fsync::None;
    opts.failover.automatic = false;
    let mut c = Cluster::start(bin(), &opts).expect("start the cluster");
    for i in 0..3 {
        c.wait_ready(i, Duration::from_secs(30))
            .expect("node ready");
    }
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    for round in 0..3 {
        let s = wait_status(&c, 0, Duration::from_secs(20), "took writes", |s| {
            s["writable"] == true
        });
        let epoch = s["epoch"].as_u64().expect("an epoch");
        let r = c
            .client(0)
            .put(&format!("k{round}"), "v", "quorum")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let r = c
            .client(0)
            .request("POST", "/admin/stop-writes", &[], "")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        c.kill(0);
        c.spawn(0).expect("restart node-1");
        c.wait_ready(0, Duration::from_secs(30))
            .expect("node-1 ready");
        let s = c.status(0);
        assert_eq!(
            (s["role"].as_str(), s["epoch"].as_u64()),
            (Some("follower"), Some(epoch)),
            "round {round}: node-1 came back as it was before it stopped taking writes: {s}"
        );
        assert_eq!(s["writable"], false, "{s}");
        // It stays a follower (it does not take its mastership back once a majority
        // answers it), and refuses writes.
        thread::sleep(Duration::from_millis(2 * LEASE_MS));
        let r = c.client(0).put("after-restart", "x", "quorum").unwrap();
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(c.status(0)["role"], "follower");
        // The operator hands the mastership back, in a new epoch, for the next round.
        let r = c
            .client(0)
            .request("POST", "/admin/promote", &[], "")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert!(c.panics().is_empty(), "panics: {:?}", c.panics());
}

/// A follower whose link to the new master is slow hears of the new epoch from the
/// other followers first (their messages carry the epoch, not a master), so for a
/// while it supports no one in it. Its coordinator is fed what each peer says about
/// itself, not whom this node supports yet: the promotion it expects is confirmed by
/// the new master's own messages when they arrive, and nothing fails over again.
/// Five nodes with fixed ids: the followers hold the same, so node-2 (the smallest
/// id) is the candidate; node-3's link to it is slowed before the master is killed.
#[test]
fn a_follower_that_hears_of_the_new_epoch_second_hand_confirms_the_promotion() {
    let mut opts = Options::master_follower(2_000, 3);
    opts.nodes = 5;
    opts.tag = "second-hand-epoch".into();
    opts.replication.heartbeat_ms = 500;
    opts.ids = (1..=5u128).map(concord::ReplicaId::from_u128).collect();
    let mut c = Cluster::start(bin(), &opts).expect("start the cluster");
    for i in 0..5 {
        c.wait_ready(i, Duration::from_secs(30))
            .expect("node ready");
    }
    c.wait_connected(Duration::from_secs(30))
        .expect("connected");
    wait_status(&c, 0, Duration::from_secs(30), "took writes", |s| {
        s["writable"] == true
    });
    c.link(1, 2)
        .set(concord_node::proxy::Link::Delay(Duration::from_millis(400)));
    // Long enough for every node to hear everyone through the delay again.
    thread::sleep(Duration::from_secs(3));
    c.kill(0);
    wait_status(&c, 1, Duration::from_secs(30), "took over", |s| {
        s["role"] == "master" && s["writable"] == true
    });
    // Time for a checked promotion read as failed to start another epoch.
    thread::sleep(Duration::from_secs(3));
    let mut promotions = 0.0;
    for i in 1..5 {
        let s = c.status(i);
        let events = s["failover"]["events"].to_string();
        assert!(
            !events.contains("did not report itself master"),
            "node-{} read the promotion as failed: {events}",
            i + 1
        );
        assert_eq!(
            (s["epoch"].as_u64(), s["leader"].as_str()),
            (Some(1), Some("node-2")),
            "node-{}: {s}",
            i + 1
        );
        promotions += c.metric(i, "promotions_total");
    }
    assert_eq!(promotions, 1.0, "one promotion, one epoch");
    assert!(c.panics().is_empty(), "panics: {:?}", c.panics());
}

/// A master cut off from one follower only (the third node reaches both) loses that
/// follower to a new master at most once or twice: the epoch settles, and a master
/// keeps taking writes. The deposed master, which cannot hear the new one, must not
/// read its own follower role as a failed check of itself and fence itself into a
/// new epoch, nor read the promotion it expects of another node as refused before
/// that node could act on it; either would start a new epoch every few seconds, for
/// as long as the link is down. A client writes one key every two seconds (a steady
/// stream would keep the cut-off follower's positions from settling, and so from
/// ever failing over).
#[test]
fn a_master_cut_from_one_follower_leaves_the_epoch_settled_and_writable() {
    let mut opts = Options::master_follower(LEASE_MS, 3);
    opts.tag = "one-link".into();
    opts.failover.switchover_timeout_ms = 3_000;
    let mut c = Cluster::start(bin(), &opts).expect("start the cluster");
    for i in 0..3 {
        c.wait_ready(i, Duration::from_secs(30))
            .expect("node ready");
    }
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    let s = wait_status(&c, 0, Duration::from_secs(20), "took writes", |s| {
        s["writable"] == true
    });
    let before = s["epoch"].as_u64().expect("an epoch");
    let addrs: Vec<SocketAddr> = (0..3).map(|i| c.http(i)).collect();
    let mut client = LeaderClient::new(&addrs, Duration::from_secs(2));
    let r = client
        .write(
            "PUT",
            "/kv/before?ack=quorum&timeout_ms=1000",
            "before",
            Instant::now() + Duration::from_secs(5),
        )
        .expect("a write before the cut");
    assert_eq!(r.status, 200, "{}", r.body);
    c.link(0, 1).set(concord_node::proxy::Link::Drop);
    let cut = Instant::now();
    // Every epoch any node is in, polled for long enough to see several rounds of
    // the step timeout (3 s) and of the lease.
    let watch = Duration::from_secs(24);
    let mut epochs = BTreeSet::new();
    let mut acked = Vec::new();
    let mut last_write = cut;
    let mut seq = 0;
    while cut.elapsed() < watch {
        for i in 0..3 {
            if let Some(e) = c.status(i)["epoch"].as_u64() {
                epochs.insert(e);
            }
        }
        if last_write.elapsed() >= Duration::from_secs(2) {
            last_write = Instant::now();
            seq += 1;
            let key = format!("k{seq}");
            let path = format!("/kv/{key}?ack=quorum&timeout_ms=1000");
            let deadline = Instant::now() + Duration::from_millis(1_500);
            if let Ok(r) = client.write("PUT", &path, &key, deadline) {
                if r.status == 200 {
                    let dot = r.json()["dot"].as_str().unwrap_or("").to_string();
                    let by = dot.split(':').next().unwrap_or("").to_string();
                    acked.push(Acked {
                        key,
                        at: Instant::now(),
                        by,
                    });
                }
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    let half = cut + watch / 2;
    let late = acked.iter().filter(|a| a.at > half).count();
    let newer: Vec<u64> = epochs.iter().copied().filter(|e| *e > before).collect();
    println!(
        "ONE-LINK: epochs after the cut {newer:?}; {} of {seq} writes acknowledged, \
         {late} in the second half of the watch",
        acked.len()
    );
    assert!(
        newer.len() <= 2,
        "the epoch kept changing under a one-link partition: {newer:?}\n{}\n{}\n{}",
        c.log_tail(0, 20),
        c.log_tail(1, 20),
        c.log_tail(2, 20)
    );
    assert!(
        late > 0,
        "no write acknowledged in the second half of the watch (epochs {newer:?})"
    );
    c.heal();
    check_everywhere(&mut c, &acked);
}

/// A master an operator tells to stop taking writes, with automatic failover on,
/// stays stopped: its own node, which knows no master then, takes no part in an
/// election (with the smallest id it would elect itself and take writes back about
/// one step timeout later); the other nodes give it three step timeouts, then fail
/// over to one of them.
#[test]
fn a_master_stopped_by_an_operator_stays_stopped_until_another_takes_over() {
    let mut opts = Options::master_follower(LEASE_MS, 3);
    opts.tag = "stopped-stays".into();
    opts.failover.switchover_timeout_ms = 2_000;
    opts.ids = (1..=3u128).map(concord::ReplicaId::from_u128).collect();
    let mut c = Cluster::start(bin(), &opts).expect("start the cluster");
    for i in 0..3 {
        c.wait_ready(i, Duration::from_secs(30))
            .expect("node ready");
    }
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    let s = wait_status(&c, 0, Duration::from_secs(20), "took writes", |s| {
        s["writable"] == true
    });
    let epoch = s["epoch"].as_u64().expect("an epoch");
    let r = c.client(0).put("before", "v", "quorum").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c
        .client(0)
        .request("POST", "/admin/stop-writes", &[], "")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // Node-1 stays stopped (not writable, no newer epoch of its own) until another
    // node leads a newer epoch.
    let deadline = Instant::now() + Duration::from_secs(40);
    let new_master = loop {
        assert!(
            Instant::now() < deadline,
            "no node took over: {}",
            c.status(1)
        );
        let s0 = c.status(0);
        assert_eq!(
            s0["writable"], false,
            "node-1 took writes back after it was stopped: {s0}"
        );
        let taken = (1..3).find(|&i| {
            let s = c.status(i);
            s["writable"] == true && s["epoch"].as_u64() > Some(epoch)
        });
        if let Some(i) = taken {
            break i;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let r = c.client(new_master).put("after", "v", "quorum").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(c.panics().is_empty(), "panics: {:?}", c.panics());
}
