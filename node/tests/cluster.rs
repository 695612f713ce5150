//! Multi-process tests on loopback: node processes of the real binary, a proxy on
//! every link that the tests cut, slow down and blackhole, `kill -9` and restarts,
//! and a checker over the history of acknowledged writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use concord_node::certs::Ca;
use concord_node::client::Client;
use concord_node::config::{Fsync, ReplicationConfig};
use concord_node::harness::{Cluster, Options};
use concord_node::proxy::Link;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_concord-node"))
}

fn start(tag: &str, nodes: usize, fsync: Fsync) -> Cluster {
    let opts = Options {
        nodes,
        fsync,
        tag: tag.into(),
        compact_after: 2_000,
        ..Options::default()
    };
    let mut c = Cluster::start(bin(), &opts).expect("start the cluster");
    for i in 0..nodes {
        c.wait_ready(i, Duration::from_secs(30))
            .expect("node ready");
    }
    c
}

/// One acknowledged write, as the client saw it.
#[derive(Clone, Debug)]
struct Acked {
    key: String,
    seq: u64,
    level: &'static str,
    status: u16,
}

/// The number in a value `c{client}-{seq}`.
fn seq_of(value: &str) -> Option<u64> {
    value.rsplit('-').next()?.parse().ok()
}

#[test]
fn faults_under_load_lose_no_acknowledged_write() {
    // Group commit: every acknowledged write is on disk before its answer, so even
    // async writes and 202s survive kill -9.
    faults_under_load(Fsync::Group, |_| true);
}

#[test]
fn faults_with_fsync_none_lose_no_replicated_write() {
    // No fsync: a killed node may lose its last second of writes, so only writes
    // that peers held when acknowledged (200 at semi-sync or sync) are promised.
    faults_under_load(Fsync::None, |a| a.status == 200 && a.level != "async");
}

fn faults_under_load(fsync: Fsync, promised: fn(&Acked) -> bool) {
    let mut c = start("faults", 3, fsync);
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    let history: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let addrs: Vec<_> = (0..3).map(|i| c.http(i)).collect();
    let levels = ["async", "semi", "sync"];
    let mut clients = Vec::new();
    for client in 0..4usize {
        let (history, stop, addrs) = (history.clone(), stop.clone(), addrs.clone());
        clients.push(thread::spawn(move || {
            let mut node = client % 3;
            let mut conns: Vec<Client> = addrs
                .iter()
                .map(|a| Client::new(*a, Duration::from_secs(3)))
                .collect();
            let mut seq = 0u64;
            let mut attempts = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                attempts += 1;
                // Each client owns its keys, so a later value of a key is a later
                // write of the same client.
                let key = format!("c{client}-k{}", seq % 40);
                let level = levels[(seq % 3) as usize];
                let path = format!("/kv/{key}?ack={level}&timeout_ms=1000");
                match conns[node].request("PUT", &path, &[], &format!("c{client}-{seq}")) {
                    Ok(r) if r.status == 200 || r.status == 202 => {
                        history.lock().unwrap().push(Acked {
                            key,
                            seq,
                            level,
                            status: r.status,
                        });
                    }
                    // Killed node, cut connection: try another node.
                    _ => {
                        node = (node + 1) % 3;
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            attempts
        }));
    }

    // The nemesis: a fixed schedule of faults, each held for a while.
    let hold = Duration::from_millis(1_500);
    let mut log = Vec::new();
    for round in 0..3 {
        c.link(0, 1).set(Link::Cut);
        log.push("cut node-1/node-2");
        thread::sleep(hold);
        c.link(1, 2).set(Link::Delay(Duration::from_millis(30)));
        log.push("delay node-2/node-3 by 30 ms per chunk");
        thread::sleep(hold);
        c.heal();
        c.link(0, 2).set(Link::Drop);
        log.push("blackhole node-1/node-3");
        thread::sleep(hold);
        c.heal();
        let victim = round % 3;
        c.kill(victim);
        log.push("kill -9");
        thread::sleep(hold);
        c.spawn(victim).expect("restart");
        c.wait_ready(victim, Duration::from_secs(30))
            .expect("restarted");
        c.partition(&[(round + 1) % 3]);
        log.push("partition one node");
        thread::sleep(hold);
        c.heal();
    }
    stop.store(true, Ordering::Relaxed);
    let attempts: u64 = clients.into_iter().map(|t| t.join().unwrap()).sum();
    c.heal();
    c.wait_connected(Duration::from_secs(30))
        .expect("reconnected");
    let state = c
        .wait_converged(Duration::from_secs(60))
        .expect("all nodes converge");

    // The checker.
    let mut latest: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in state.as_array().unwrap() {
        let seqs = e["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| seq_of(v.as_str().unwrap()).unwrap())
            .collect();
        latest.insert(e["key"].as_str().unwrap().to_string(), seqs);
    }
    let history = history.lock().unwrap().clone();
    let mut by_level: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    let mut lost = Vec::new();
    let mut unpromised_missing = 0;
    for a in &history {
        *by_level.entry((a.level, a.status)).or_default() += 1;
        // Every promised write is present, or superseded by a later write of the
        // same client to its key.
        let present = latest
            .get(&a.key)
            .is_some_and(|seqs| seqs.iter().any(|s| *s >= a.seq));
        match (present, promised(a)) {
            (false, true) => lost.push(a.clone()),
            (false, false) => unpromised_missing += 1,
            _ => {}
        }
    }
    eprintln!("faults ({fsync:?}): {log:?}");
    eprintln!(
        "{attempts} writes attempted, {} acknowledged: {by_level:?}; {} keys converged; \
         {unpromised_missing} acknowledged writes beyond the policy's promise missing",
        history.len(),
        latest.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        history
            .iter()
            .filter(|a| a.level != "async" && a.status == 200)
            .count()
            > 100,
        "too few semi-sync and sync writes succeeded to mean anything"
    );
    for i in 0..3 {
        assert!(
            c.is_running(i),
            "node-{} exited:\n{}",
            i + 1,
            c.log_tail(i, 20)
        );
    }
    assert!(c.panics().is_empty(), "panics: {:?}", c.panics());
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let mut c = start("foreign-ca", 2, Fsync::Group);
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    // node-2 comes back with a certificate for its own id, from another CA.
    c.kill(1);
    let foreign = Ca::generate("someone else's CA").unwrap();
    let cert = foreign.issue(c.configs[1].node_id).unwrap();
    std::fs::write(&c.configs[1].tls.cert, &cert.cert_pem).unwrap();
    std::fs::write(&c.configs[1].tls.key, &cert.key_pem).unwrap();
    c.spawn(1).unwrap();
    c.wait_ready(1, Duration::from_secs(30)).unwrap();
    let r = c
        .client(1)
        .request("PUT", "/kv/smuggled?ack=semi&timeout_ms=2000", &[], "x")
        .unwrap();
    assert_eq!(r.status, 202, "no peer may hold it: {}", r.body);
    assert_eq!(c.client(0).get("smuggled", None).unwrap().status, 404);
    let refused = c.metric(0, "tls_failures_total") + c.metric(1, "tls_failures_total");
    assert!(refused > 0.0, "no handshake was refused");
    let h = c.client(0).get_path("/health").unwrap().json();
    assert_eq!(h["peers"][0]["connected"], false);
    assert!(c.panics().is_empty());
}

#[test]
fn a_node_claiming_another_nodes_id_is_refused() {
    let mut c = start("wrong-id", 3, Fsync::Group);
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    // node-2's process comes back claiming node-2's id with node-3's (valid)
    // certificate and key.
    c.kill(1);
    std::fs::copy(&c.configs[2].tls.cert, &c.configs[1].tls.cert).unwrap();
    std::fs::copy(&c.configs[2].tls.key, &c.configs[1].tls.key).unwrap();
    c.spawn(1).unwrap();
    c.wait_ready(1, Duration::from_secs(30)).unwrap();
    let r = c
        .client(1)
        .request("PUT", "/kv/impostor?ack=semi&timeout_ms=2000", &[], "x")
        .unwrap();
    assert_eq!(r.status, 202, "no peer may hold it: {}", r.body);
    for i in [0, 2] {
        assert_eq!(c.client(i).get("impostor", None).unwrap().status, 404);
    }
    let refused: f64 = [0, 2]
        .iter()
        .map(|&i| c.metric(i, "tls_failures_total") + c.metric(i, "identity_rejections_total"))
        .sum();
    assert!(refused > 0.0, "nobody refused the impostor");
    // The honest nodes still replicate with each other.
    let r = c.client(0).put("honest", "y", "semi").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(c.client(2).get("honest", None).unwrap().values(), ["y"]);
    assert!(c.panics().is_empty());
}

#[test]
fn a_node_killed_mid_write_recovers_from_its_file_without_a_full_resend() {
    let mut c = start("recovery", 3, Fsync::Always);
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    let mut n0 = c.client(0);
    for k in 0..3_000 {
        let r = n0
            .put(&format!("base-{k:05}"), &"v".repeat(40), "async")
            .unwrap();
        assert_eq!(r.status, 200);
    }
    c.wait_converged(Duration::from_secs(60))
        .expect("converged");
    // A client writes to node-2 as fast as it can; node-2 is killed under it.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let writer = {
        let (stop, acked, addr) = (stop.clone(), acked.clone(), c.http(1));
        thread::spawn(move || {
            let mut cl = Client::new(addr, Duration::from_secs(2));
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                match cl.put(&format!("live-{k:05}"), "w", "async") {
                    Ok(r) if r.status == 200 => acked.lock().unwrap().push(k),
                    _ => break,
                }
            }
        })
    };
    thread::sleep(Duration::from_millis(700));
    c.kill(1);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "the writer got only {} writes in",
        acked.len()
    );
    let started = Instant::now();
    c.spawn(1).unwrap();
    c.wait_ready(1, Duration::from_secs(30)).unwrap();
    let h = c.client(1).get_path("/health").unwrap().json();
    assert_eq!(h["recovery"]["restarted"], true);
    assert!(
        h["recovery"]["keys"].as_u64().unwrap() >= 3_000 + acked.len() as u64,
        "recovered only {} keys",
        h["recovery"]["keys"]
    );
    c.wait_connected(Duration::from_secs(20)).unwrap();
    let state = c
        .wait_converged(Duration::from_secs(60))
        .expect("converged");
    let keys: Vec<&str> = state
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    for k in &acked {
        assert!(
            keys.contains(&format!("live-{k:05}").as_str()),
            "acknowledged live-{k:05} lost"
        );
    }
    // What node-2 received since its restart is what it missed, not the state, and
    // what it sent is not the state either: no full resend in either direction.
    // (A few heartbeats first, so both directions have spoken.)
    thread::sleep(Duration::from_secs(1));
    let received = c.metric(1, "received_bytes_total");
    let sent = c.metric(1, "sent_bytes_total");
    let state_bytes = state.to_string().len() as f64;
    eprintln!(
        "node-2 recovered {} keys in {} ms, rejoined in {:?}, received {received} bytes, sent {sent} (state: {state_bytes} bytes)",
        h["recovery"]["keys"],
        h["recovery"]["ms"],
        started.elapsed()
    );
    assert!(
        received < state_bytes / 4.0,
        "node-2 received {received} bytes after its restart; the state is {state_bytes} bytes"
    );
    assert!(
        sent > 0.0 && sent < state_bytes / 4.0,
        "node-2 sent {sent} bytes after its restart; the state is {state_bytes} bytes"
    );
    assert!(c.panics().is_empty());
}

#[test]
fn hostile_http_input_gets_an_error_not_a_crash() {
    let mut c = start("hostile", 1, Fsync::None);
    let mut cl = c.client(0);
    // (method, path, headers, body, expected status)
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, String, u16);
    let cases: Vec<Case> = vec![
        ("PUT", "/kv/a?ack=semi:9".into(), vec![], "x".into(), 400),
        ("PUT", "/kv/a?ack=bogus".into(), vec![], "x".into(), 400),
        (
            "PUT",
            "/kv/a?timeout_ms=soon".into(),
            vec![],
            "x".into(),
            400,
        ),
        (
            "PUT",
            format!("/kv/{}", "k".repeat(2_000)),
            vec![],
            "x".into(),
            400,
        ),
        (
            "PUT",
            "/kv/big".into(),
            vec![],
            "x".repeat((1 << 20) + 10),
            413,
        ),
        (
            "GET",
            "/kv/a".into(),
            vec![("x-concord-token", "not a token")],
            String::new(),
            400,
        ),
        ("GET", "/kv/missing".into(), vec![], String::new(), 404),
        ("DELETE", "/kv/missing".into(), vec![], String::new(), 404),
        ("POST", "/kv/a".into(), vec![], String::new(), 405),
        ("GET", "/nowhere".into(), vec![], String::new(), 404),
    ];
    for (method, path, headers, body, want) in cases {
        let r = cl.request(method, &path, &headers, &body).unwrap();
        assert_eq!(
            r.status,
            want,
            "{method} {}: {}",
            &path[..path.len().min(40)],
            r.body
        );
    }
    // Garbage on the replication port: a failed handshake, nothing more.
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(c.configs[0].listen).unwrap();
    s.write_all(&[0xff; 4096]).unwrap();
    drop(s);
    thread::sleep(Duration::from_millis(200));
    let r = cl.put("still", "alive", "async").unwrap();
    assert_eq!(r.status, 200);
    assert!(c.is_running(0));
    assert!(c.metric(0, "tls_failures_total") >= 1.0);
    assert!(c.panics().is_empty());
}

/// A node greets its peers as soon as a connection is up. Its first greeting is
/// produced before any connection exists; it used to be dropped, and peers then did
/// not hear the node until its next heartbeat, while the engine sends writes only to
/// peers it has heard from: the first writes after a start waited a heartbeat period
/// (they set the asynchronous rows' lag p99 in BENCHMARKS.md). With heartbeats,
/// resends and anti-entropy a minute apart, a semi-sync write made right after the
/// start reaches its peer only if the greeting got through.
#[test]
fn the_first_writes_after_a_start_do_not_wait_for_a_heartbeat() {
    let opts = Options {
        nodes: 2,
        tag: "greeting".into(),
        replication: ReplicationConfig {
            heartbeat_ms: 60_000,
            retransmit_ms: 60_000,
            anti_entropy_ms: 600_000,
            idle_timeout_ms: 600_000,
            ..ReplicationConfig::default()
        },
        ..Options::default()
    };
    let mut c = Cluster::start(bin(), &opts).expect("start the cluster");
    for i in 0..2 {
        c.wait_ready(i, Duration::from_secs(30)).expect("ready");
    }
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    let r = c
        .client(0)
        .request("PUT", "/kv/first?ack=semi&timeout_ms=5000", &[], "x")
        .unwrap();
    assert_eq!(r.status, 200, "node-2 never got the write: {}", r.body);
    assert_eq!(c.client(1).get("first", None).unwrap().values(), ["x"]);
    assert!(c.panics().is_empty());
}

/// What persisting the peers' acknowledgements buys. After a restart, the first
/// message from each peer replaces what the node had recorded for it (the peer's
/// own context is exact, the saved one only a lower bound), and nothing is sent to a
/// peer before it is heard: so the saved acknowledgements change neither what is
/// resent nor how much. What they do give is the window before a peer is heard:
/// a node restarted while a link is down still knows which of its writes that peer
/// holds, so `/health` (and `concord_peer_unacked_writes`) show the real backlog
/// rather than every write the node ever made.
#[test]
fn a_node_restarted_behind_a_cut_link_knows_what_its_peer_holds() {
    let mut c = start("acks", 2, Fsync::Group);
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    let mut n0 = c.client(0);
    for k in 0..200 {
        let r = n0.put(&format!("held-{k:03}"), "v", "sync").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let unacked = |c: &Cluster| {
        let h = c.client(0).get_path("/health").unwrap().json();
        (
            h["peers"][0]["unacked_writes"].as_u64().unwrap(),
            h["peers"][0]["connected"].as_bool().unwrap(),
        )
    };
    assert_eq!(unacked(&c), (0, true));
    // The node saves the acknowledgements on its next tick (every 100 ms).
    thread::sleep(Duration::from_millis(600));
    c.link(0, 1).set(Link::Cut);
    c.kill(0);
    c.spawn(0).unwrap();
    c.wait_ready(0, Duration::from_secs(30)).unwrap();
    let h = c.client(0).get_path("/health").unwrap().json();
    assert_eq!(h["recovery"]["restarted"], true);
    assert!(h["peers"][0]["last_heard_ms_ago"].is_null(), "{h}");
    assert_eq!(
        unacked(&c),
        (0, false),
        "the restarted node forgot that node-2 holds its 200 writes"
    );
    let r = c.client(0).put("alone", "w", "async").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(unacked(&c), (1, false));
    c.heal();
    c.wait_connected(Duration::from_secs(20)).unwrap();
    c.wait_converged(Duration::from_secs(30))
        .expect("converged");
    assert!(c.panics().is_empty());
}
