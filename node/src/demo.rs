//! `concord-node demo`: three node processes on loopback (real TLS, real files in a
//! temporary directory) and the multi-region story, told in plain words: writes at
//! each acknowledgement level, a session token read, a partition with concurrent
//! writes, the heal with its conflict report, and a `kill -9` and restart from disk;
//! then three master–follower nodes: the master killed under a client writing at
//! quorum, a follower taking over, an alert firing while the old master is down and
//! resolving once it is back as a follower, and a planned switchover. Every check
//! fails the demo with an error if the cluster does not behave as told.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{LeaderClient, Response};
use crate::error::{Error, Result};
use crate::harness::{Cluster, Options};

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Demo {
            reason: what.to_string(),
        })
    }
}

fn io(e: std::io::Error) -> Error {
    Error::Demo {
        reason: format!("a node did not answer: {e}"),
    }
}

fn demo_err(e: String) -> Error {
    Error::Demo { reason: e }
}

const NAMES: [&str; 3] = ["node-1 (us-east)", "node-2 (eu-west)", "node-3 (ap-south)"];

fn held(r: &Response) -> String {
    let held: Vec<String> = r.json()["held_by"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if held.is_empty() {
        "no peer yet".to_string()
    } else {
        held.join(" and ")
    }
}

fn section(title: &str) {
    println!("\n== {title}");
}

/// Runs the demo (see the module documentation).
///
/// # Errors
///
/// [`Error::Demo`] naming the first thing that did not happen as told.
pub fn run() -> Result<()> {
    let started = Instant::now();
    let bin = std::env::current_exe()?;
    let opts = Options {
        tag: "demo".into(),
        log: "warn".into(),
        ..Options::default()
    };
    println!("Starting three concord nodes as separate processes on loopback:");
    println!("{}, {} and {}.", NAMES[0], NAMES[1], NAMES[2]);
    let mut c = Cluster::start(&bin, &opts)?;
    let result = story(&mut c);
    tails_on_error(&c, &result);
    result?;
    drop(c);
    let mut opts = Options::master_follower(1_000, 3);
    opts.tag = "demo-mf".into();
    opts.log = "warn".into();
    // A quicker peer_silent than the built-in one (15 s), so that the demo shows it
    // fire and resolve.
    opts.alerts.rules.push(concord::ops::alert::Rule {
        name: "peer_silent".into(),
        signal: concord::ops::alert::Signal::SilenceMs,
        comparison: concord::ops::alert::Comparison::Above,
        threshold: 2_000,
        clear: 1_000,
        for_ms: 0,
        clear_for_ms: 1_000,
        window_ms: 60_000,
    });
    opts.alerts.evaluate_ms = 200;
    section("6. Master-follower replication: the master fails");
    println!(
        "Three new nodes, in master-follower mode: node-1 is the master, under a lease of \
         1 s; each node checks its peers every 100 ms and fails over after 3 failed checks."
    );
    let mut c = Cluster::start(&bin, &opts)?;
    let result = failover_story(&mut c);
    tails_on_error(&c, &result);
    result?;
    println!(
        "\nDemo finished in {:.1} s; every node process is stopped and its files removed.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn tails_on_error(c: &Cluster, result: &Result<()>) {
    if result.is_err() {
        for i in 0..3 {
            eprintln!(
                "--- last lines of node-{}'s log:\n{}",
                i + 1,
                c.log_tail(i, 15)
            );
        }
    }
}

/// Waits (up to 30 s) until `ok` holds of node `i`'s `/status`, and returns it.
fn wait_status(
    c: &Cluster,
    i: usize,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let s = c.wait_status(i, Duration::from_secs(30), ok);
    check(s.is_some(), what)?;
    Ok(s.unwrap_or_default())
}

/// The state of alert `name` for `peer` at node `i`.
fn alert_state(c: &Cluster, i: usize, name: &str, peer: &str) -> String {
    let doc = c
        .client(i)
        .get_path("/alerts")
        .map(|r| r.json())
        .unwrap_or_default();
    doc["alerts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name && x["peer"] == peer))
        .and_then(|x| x["state"].as_str().map(str::to_string))
        .unwrap_or_else(|| "inactive".into())
}

fn wait_alert(c: &Cluster, i: usize, peer: &str, state: &str) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while alert_state(c, i, "peer_silent", peer) != state {
        check(
            Instant::now() < until,
            &format!("peer_silent for {peer} becomes {state}"),
        )?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A client writing unique keys at quorum through a [`LeaderClient`]: what it saw
/// acknowledged (key, node that took it, when).
type History = Arc<Mutex<Vec<(String, String, Instant)>>>;

fn failover_story(c: &mut Cluster) -> Result<()> {
    for i in 0..3 {
        c.wait_ready(i, Duration::from_secs(30)).map_err(demo_err)?;
    }
    wait_status(c, 0, "node-1 takes writes", |s| s["writable"] == true)?;
    let s = c.status(1);
    println!(
        "node-2's /status: role {}, epoch {}, leader {}, writable {}.",
        s["role"], s["epoch"], s["leader"], s["writable"]
    );
    let r = c.client(1).put("hello", "world", "quorum").map_err(io)?;
    check(r.status == 503, "a follower refuses a write")?;
    println!(
        "A write at node-2 gets {} naming the master ({} at {}): nothing was written, the \
         client retries there.",
        r.status,
        r.json()["leader"],
        r.header("x-concord-leader").unwrap_or("?")
    );
    let history: History = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let addrs: Vec<_> = (0..3).map(|i| c.http(i)).collect();
        let (history, stop) = (history.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut client = LeaderClient::new(&addrs, Duration::from_secs(3));
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = format!("payment:{seq:05}");
                let path = format!("/kv/{key}?ack=quorum&timeout_ms=2000");
                let deadline = Instant::now() + Duration::from_secs(20);
                if let Ok(r) = client.write("PUT", &path, "paid", deadline) {
                    if r.status == 200 {
                        let dot = r.json()["dot"].as_str().unwrap_or("").to_string();
                        let by = dot.split(':').next().unwrap_or("").to_string();
                        history.lock().unwrap().push((key, by, Instant::now()));
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1_000));
    let before = history.lock().unwrap().len();
    println!("A client writes payments at quorum, following the master: {before} in 1 s.");
    c.kill(0);
    let killed = Instant::now();
    println!("node-1, the master, is killed with SIGKILL.");
    let until = killed + Duration::from_secs(30);
    let (new, at) = loop {
        let first = history
            .lock()
            .unwrap()
            .iter()
            .find(|(_, by, at)| *at > killed && by != "node-1")
            .map(|(_, by, at)| (by.clone(), *at));
        if let Some(f) = first {
            break f;
        }
        check(Instant::now() < until, "a follower takes over")?;
        std::thread::sleep(Duration::from_millis(10));
    };
    let n = if new == "node-2" { 1 } else { 2 };
    let s = c.status(n);
    println!(
        "{new} took over at epoch {}: the client's writes resumed {:.1} s after the kill \
         (3 failed checks once the followers' positions had settled, then a majority in \
         the new epoch and a wait of 1.25 leases, so that node-1's lease had surely run \
         out). What {new} logged:",
        s["epoch"],
        at.duration_since(killed).as_secs_f64()
    );
    for e in s["failover"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        println!("  - {}", e["event"].as_str().unwrap_or(""));
    }
    let epoch = s["epoch"].as_u64().unwrap_or(0);
    let other = 3 - n;
    wait_alert(c, other, "node-1", "firing")?;
    println!(
        "node-{}'s alert peer_silent for node-1 fires (silent over 2 s); /alerts and \
         concord_alert_firing say so.",
        other + 1
    );
    c.spawn(0)?;
    c.wait_ready(0, Duration::from_secs(30)).map_err(demo_err)?;
    let s = wait_status(c, 0, "node-1 returns as a follower", |s| {
        s["role"] == "follower" && s["epoch"] == epoch && s["leader"] == new.as_str()
    })?;
    let r = c.client(0).put("late", "write", "quorum").map_err(io)?;
    check(r.status == 503, "the old master refuses writes")?;
    println!(
        "node-1 restarts from its file as the master of epoch 0, hears of epoch {epoch} and \
         steps down: role {}, leader {}; a write there gets {} naming {}.",
        s["role"],
        s["leader"],
        r.status,
        r.json()["leader"]
    );
    wait_alert(c, other, "node-1", "resolved")?;
    println!(
        "node-{}'s alert peer_silent for node-1 is resolved.",
        other + 1
    );

    section("7. A planned switchover back to node-1");
    let r = c
        .client(2)
        .request("POST", "/admin/switchover?to=node-1", &[], "")
        .map_err(io)?;
    check(r.status == 200, "the switchover succeeds")?;
    let report = r.json();
    let steps: Vec<String> = report["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            format!(
                "{} at {:.0} ms",
                s["step"].as_str().unwrap_or("?"),
                s["at_ms"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect();
    println!(
        "POST /admin/switchover?to=node-1 at node-3, under the same write load: {}.",
        steps.join(", ")
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let all = c
        .wait_converged(Duration::from_secs(30))
        .map_err(demo_err)?;
    let keys: std::collections::BTreeSet<&str> = all
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["key"].as_str()).collect())
        .unwrap_or_default();
    let history = history.lock().unwrap();
    let lost = history
        .iter()
        .filter(|(k, _, _)| !keys.contains(k.as_str()))
        .count();
    check(
        lost == 0,
        "every write acknowledged at quorum is on every node",
    )?;
    let by = |node: &str| history.iter().filter(|(_, b, _)| b == node).count();
    println!(
        "The client had {} payments acknowledged at quorum ({} taken by node-1, {} by node-2, \
         {} by node-3); all three nodes hold every one of them.",
        history.len(),
        by("node-1"),
        by("node-2"),
        by("node-3")
    );
    let panics = c.panics();
    check(panics.is_empty(), &format!("no node panicked: {panics:?}"))?;
    Ok(())
}

fn story(c: &mut Cluster) -> Result<()> {
    for i in 0..3 {
        c.wait_ready(i, Duration::from_secs(30)).map_err(demo_err)?;
    }
    c.wait_connected(Duration::from_secs(30))
        .map_err(demo_err)?;
    println!(
        "Each node has a certificate from one cluster CA (in {}), naming its node id; \
         they replicate over TLS 1.3 and each checks who is at the other end. Every \
         link goes through a proxy this demo controls, and each node keeps its data in \
         one database file.",
        c.dir.display()
    );
    let mut n: Vec<_> = (0..3).map(|i| c.client(i)).collect();

    section("1. Writes at each acknowledgement level");
    let r = n[0].put("greeting", "hello", "async").map_err(io)?;
    check(r.status == 200, "an async write is acknowledged")?;
    println!(
        "async: node-1 acknowledged `greeting` as soon as it was on its own disk \
         (held by {} at that moment).",
        held(&r)
    );
    let r = n[1].put("currency", "EUR", "semi").map_err(io)?;
    check(
        r.status == 200 && !r.json()["held_by"].as_array().is_none_or(Vec::is_empty),
        "a semi-sync write reaches a peer",
    )?;
    println!(
        "semi-sync: node-2 acknowledged `currency` once one peer held it too ({}).",
        held(&r)
    );
    let r = n[2].put("timezone", "Asia/Kolkata", "sync").map_err(io)?;
    check(
        r.status == 200 && r.json()["held_by"].as_array().is_some_and(|a| a.len() == 2),
        "a sync write reaches every peer",
    )?;
    println!(
        "sync: node-3 acknowledged `timezone` once every peer held it ({}).",
        held(&r)
    );

    section("2. Read-your-writes across nodes, with a session token");
    c.partition(&[2]);
    println!("The links to node-3 are cut (it is cut off from the others).");
    let r = n[0]
        .put("profile:alice", "alice@old.example", "async")
        .map_err(io)?;
    let token = r.token().unwrap_or_default().to_string();
    check(
        r.status == 200 && !token.is_empty(),
        "a write returns a session token",
    )?;
    println!("A client writes `profile:alice` at node-1 and keeps the session token it got back.");
    let r = n[2]
        .request(
            "GET",
            "/kv/profile:alice?wait_ms=500",
            &[("x-concord-token", &token)],
            "",
        )
        .map_err(io)?;
    check(r.status == 503, "a node behind the token answers 503")?;
    println!(
        "Its next read lands on node-3, which has not seen that write: after waiting \
         500 ms it answers {} with: {}",
        r.status,
        r.json()["error"].as_str().unwrap_or("")
    );
    c.heal();
    println!("The links come back.");
    let r = n[2]
        .request(
            "GET",
            "/kv/profile:alice?wait_ms=5000",
            &[("x-concord-token", &token)],
            "",
        )
        .map_err(io)?;
    check(
        r.status == 200 && r.values() == ["alice@old.example"],
        "node-3 serves the token once caught up",
    )?;
    println!(
        "The same read at node-3 now waits until it has caught up, then answers {:?}: \
         the client reads its own write on another node.",
        r.values()
    );

    section("3. A partition, and concurrent writes on both sides");
    c.wait_connected(Duration::from_secs(20))
        .map_err(demo_err)?;
    c.partition(&[0]);
    println!("node-1 is cut off from node-2 and node-3.");
    let r = n[0]
        .request("PUT", "/kv/cart?ack=sync&timeout_ms=500", &[], "apples")
        .map_err(io)?;
    check(
        r.status == 202,
        "a sync write in a minority partition times out with 202",
    )?;
    println!(
        "A client at node-1 puts apples in `cart` and asks for sync: after 500 ms node-1 \
         answers {}: {}",
        r.status,
        r.json()["error"].as_str().unwrap_or("")
    );
    let r = n[1].put("cart", "pears", "semi").map_err(io)?;
    check(
        r.status == 200,
        "a semi-sync write in the majority side succeeds",
    )?;
    println!(
        "Meanwhile a client at node-2 puts pears in `cart`; semi-sync succeeds, held by {}.",
        held(&r)
    );
    let at1 = n[0].get("cart", None).map_err(io)?.values();
    let at3 = n[2].get("cart", None).map_err(io)?.values();
    println!("Now node-1 says cart = {at1:?} and node-3 says cart = {at3:?}.");
    c.heal();
    println!("The partition heals.");
    c.wait_converged(Duration::from_secs(20))
        .map_err(demo_err)?;
    for (i, client) in n.iter_mut().enumerate() {
        let r = client.get("cart", None).map_err(io)?;
        check(
            r.values().len() == 2,
            "both concurrent writes survive as siblings",
        )?;
        println!(
            "{} shows cart = {:?} (conflict: {}): neither write was lost, and every node \
             shows the same siblings in the same order.",
            NAMES[i],
            r.values(),
            r.json()["conflict"]
        );
    }
    let conflicts = n[0].get_path("/conflicts").map_err(io)?.json();
    let recent = conflicts["recent"].as_array().cloned().unwrap_or_default();
    check(!recent.is_empty(), "the conflict is reported")?;
    for e in recent.iter().filter(|e| e["key"] == "cart") {
        println!(
            "node-1's conflict log: key {} had {} here and {} from {}; kept {}.",
            e["key"], e["ours"], e["theirs"], e["with"], e["resolved"]
        );
    }
    let r = n[2].put("cart", "apples and pears", "sync").map_err(io)?;
    check(r.status == 200, "the resolving write is acknowledged")?;
    c.wait_converged(Duration::from_secs(20))
        .map_err(demo_err)?;
    let r = n[0].get("cart", None).map_err(io)?;
    check(
        r.values() == ["apples and pears"],
        "a write that saw both siblings replaces them",
    )?;
    println!(
        "A client that read both siblings writes the merged cart at node-3 (sync); node-1 \
         now shows {:?}: a write replaces exactly the siblings it saw.",
        r.values()
    );

    section("4. kill -9 of a node, and its restart from disk");
    for k in 0..200 {
        n[1].put(
            &format!("order:{k:03}"),
            &format!("order {k} from eu-west"),
            "async",
        )
        .map_err(io)?;
    }
    println!("node-2 takes 200 orders (async writes: acknowledged once on its own disk).");
    c.kill(1);
    println!("node-2 is killed with SIGKILL: no shutdown, no flush.");
    for k in 200..250 {
        let r = n[0]
            .put(
                &format!("order:{k:03}"),
                &format!("order {k} from us-east"),
                "semi",
            )
            .map_err(io)?;
        check(r.status == 200, "semi-sync writes go on with one peer down")?;
    }
    println!("Meanwhile node-1 takes 50 more orders with semi-sync, held by node-3.");
    let r = n[0]
        .request(
            "PUT",
            "/kv/order:sync?ack=sync&timeout_ms=300",
            &[],
            "needs everyone",
        )
        .map_err(io)?;
    println!(
        "A sync write at node-1 cannot reach node-2: answer {} (held by {}).",
        r.status,
        held(&r)
    );
    check(
        r.status == 202,
        "a sync write with a peer down times out with 202",
    )?;
    c.spawn(1)?;
    c.wait_ready(1, Duration::from_secs(30)).map_err(demo_err)?;
    let h = n[1].get_path("/health").map_err(io)?.json();
    let rec = &h["recovery"];
    check(rec["restarted"] == true, "node-2 restarts from its file")?;
    println!(
        "node-2 restarts from its database file: {} keys recovered ({} log records \
         replayed) in {:.0} ms, under the same node id.",
        rec["keys"],
        rec["log_records_replayed"],
        rec["ms"].as_f64().unwrap_or(0.0)
    );
    c.wait_connected(Duration::from_secs(20))
        .map_err(demo_err)?;
    let all = c
        .wait_converged(Duration::from_secs(30))
        .map_err(demo_err)?;
    let keys = all.as_array().map_or(0, Vec::len);
    let state_bytes = all.to_string().len();
    let received = c.metric(1, "received_bytes_total");
    println!(
        "It rejoins and catches up: all three nodes hold the same {keys} keys. Since \
         its restart node-2 received {:.0} bytes of replication traffic, against \
         {state_bytes} bytes of data: only what it missed, not a full resend.",
        received
    );
    check(keys == 256, "every key is on every node")?;
    let r = n[1].get("order:sync", None).map_err(io)?;
    check(
        r.values() == ["needs everyone"],
        "the write node-2 missed reached it",
    )?;

    section("5. Health and metrics");
    let h = n[0].get_path("/health").map_err(io)?.json();
    for p in h["peers"].as_array().cloned().unwrap_or_default() {
        println!(
            "node-1 sees {}: connected {}, {} writes not yet acknowledged, last heard {} ms ago.",
            p["name"].as_str().unwrap_or("?"),
            p["connected"],
            p["unacked_writes"],
            p["last_heard_ms_ago"]
        );
    }
    println!(
        "Replication lag at node-1 (time until every peer held a write): p50 {:.1} ms, \
         p99 {:.1} ms over {} writes (the partitions above included). Prometheus \
         metrics are at /metrics.",
        h["replication_lag_ms"]["p50"].as_f64().unwrap_or(0.0),
        h["replication_lag_ms"]["p99"].as_f64().unwrap_or(0.0),
        h["replication_lag_ms"]["samples"]
    );
    let panics = c.panics();
    check(panics.is_empty(), &format!("no node panicked: {panics:?}"))?;
    Ok(())
}
