//! Benchmarks of the reference node on loopback, with a Redis primary and replica
//! as the anchor: replicated writes per second with three nodes at each
//! acknowledgement level, write latency and replication lag under that load, and
//! the recovery time of a node holding many keys. Prints Markdown tables
//! (BENCHMARKS.md holds a run's figures).
//!
//! ```sh
//! cargo build --release -p concord-node --bin concord-node --example bench
//! target/release/examples/bench [--secs 10] [--clients 12] [--recovery-keys 1000000]
//! # --secs 0 skips the throughput rows, --recovery-keys 0 the recovery row;
//! # --only async|semi|sync runs that level's rows alone (no Redis);
//! # --diag prints each node's resends, dropped frames and lag histogram;
//! # --recovery-group loads the recovery node with fsync group rather than none;
//! # --max-file-ratio N compacts its file past N times the live data (default 8)
//! ```
//!
//! `redis-server` (Debian package `redis-server`) must be on the PATH for the Redis
//! rows; without it they are skipped.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use concord_node::client::Client;
use concord_node::config::Fsync;
use concord_node::harness::{Cluster, Options};

fn flag(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's path");
    // target/<profile>/examples/bench -> target/<profile>/concord-node
    exe.parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("concord-node"))
        .expect("a target directory")
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

struct Run {
    ops: u64,
    secs: f64,
    latencies_ms: Vec<f64>,
    failed: u64,
}

/// `clients` threads, each calling `op(client, i)` until `secs` pass.
fn load<F>(clients: usize, secs: u64, make: impl Fn(usize) -> F) -> Run
where
    F: FnMut(u64) -> bool + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let mut op = make(c);
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut lat, mut failed, mut i) = (Vec::new(), 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let t = Instant::now();
                    if op(i) {
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        failed += 1;
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut latencies_ms = Vec::new();
    let mut failed = 0;
    for t in threads {
        let (l, f) = t.join().expect("a load thread");
        latencies_ms.extend(l);
        failed += f;
    }
    let secs = started.elapsed().as_secs_f64();
    latencies_ms.sort_by(f64::total_cmp);
    Run {
        ops: latencies_ms.len() as u64,
        secs,
        latencies_ms,
        failed,
    }
}

fn concord_row(level: &str, fsync: Fsync, clients: usize, secs: u64) -> String {
    let opts = Options {
        fsync,
        log: "warn".into(),
        tag: "bench".into(),
        ..Options::default()
    };
    let mut c = Cluster::start(&node_binary(), &opts).expect("start a cluster");
    for i in 0..3 {
        c.wait_ready(i, Duration::from_secs(30)).expect("ready");
    }
    c.wait_connected(Duration::from_secs(30))
        .expect("connected");
    let addrs: Vec<SocketAddr> = (0..3).map(|i| c.http(i)).collect();
    let value = "v".repeat(64);
    let level_s = level.to_string();
    let run = load(clients, secs, |client| {
        let mut cl = Client::new(addrs[client % 3], Duration::from_secs(10));
        let (value, level) = (value.clone(), level_s.clone());
        move |i| {
            let key = format!("key-{client}-{}", i % 10_000);
            cl.put(&key, &value, &level).is_ok_and(|r| r.status == 200)
        }
    });
    c.wait_converged(Duration::from_secs(120))
        .expect("converged");
    if std::env::args().any(|a| a == "--diag") {
        // What the nodes saw: resends, frames the connection queue refused, and the
        // lag histogram.
        for i in 0..3 {
            let text = c.client(i).get_path("/metrics").expect("metrics").body;
            let wanted = [
                "concord_retransmits_total",
                "concord_frames_dropped_total",
                "concord_frames_sent_total",
                "concord_store_commits_total",
                "concord_writes_total",
                "concord_replication_lag_seconds_bucket",
            ];
            for l in text
                .lines()
                .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
            {
                eprintln!("node-{}: {l}", i + 1);
            }
        }
    }
    let mut lag50 = Vec::new();
    let mut lag99 = Vec::new();
    for i in 0..3 {
        let h = c.client(i).get_path("/health").expect("health").json();
        lag50.push(h["replication_lag_ms"]["p50"].as_f64().unwrap_or(f64::NAN));
        lag99.push(h["replication_lag_ms"]["p99"].as_f64().unwrap_or(f64::NAN));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    format!(
        "| concord-node, 3 masters, `ack={level}`, fsync {fsync:?} | {clients} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
        run.ops as f64 / run.secs,
        pct(&run.latencies_ms, 0.5),
        pct(&run.latencies_ms, 0.99),
        mean(&lag50),
        mean(&lag99),
        run.failed
    )
}

/// A RESP client: enough for SET and WAIT.
struct Redis {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Redis {
    fn connect(port: u16) -> std::io::Result<Redis> {
        let w = TcpStream::connect(("127.0.0.1", port))?;
        w.set_nodelay(true)?;
        let r = BufReader::new(w.try_clone()?);
        Ok(Redis { w, r })
    }

    fn call(&mut self, args: &[&str]) -> std::io::Result<String> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.w.write_all(req.as_bytes())?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    }
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn redis_rows(clients: usize, secs: u64) -> Vec<String> {
    let dir = concord_node::harness::temp_dir("bench-redis").expect("a directory");
    let (p, r) = (16_379u16, 16_380u16);
    let spawn = |port: u16, extra: &[String]| {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", dir.to_str().unwrap_or("/tmp")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let Ok(primary) = spawn(p, &[]) else {
        return vec!["| Redis: `redis-server` not found, rows skipped | | | | | | | |".into()];
    };
    let mut guard = Kill(vec![primary]);
    guard.0.push(
        spawn(
            r,
            &["--replicaof".into(), "127.0.0.1".into(), p.to_string()],
        )
        .expect("the replica"),
    );
    thread::sleep(Duration::from_millis(500));
    // Wait for the replica to sync.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = Redis::connect(p) {
            if c.call(&["SET", "warmup", "1"]).is_ok()
                && c.call(&["WAIT", "1", "1000"]).is_ok_and(|s| s == ":1")
            {
                break;
            }
        }
        assert!(Instant::now() < until, "the Redis replica never synced");
        thread::sleep(Duration::from_millis(100));
    }
    let value = "v".repeat(64);
    let mut rows = Vec::new();
    for (name, wait) in [
        ("`SET` (async replication)", false),
        ("`SET` + `WAIT 1 0` (semi-sync)", true),
    ] {
        let run = load(clients, secs, |client| {
            let mut c = Redis::connect(p).expect("connect to Redis");
            let value = value.clone();
            move |i| {
                let key = format!("key-{client}-{}", i % 10_000);
                let ok = c.call(&["SET", &key, &value]).is_ok_and(|s| s == "+OK");
                ok && (!wait || c.call(&["WAIT", "1", "0"]).is_ok_and(|s| s == ":1"))
            }
        });
        rows.push(format!(
            "| Redis primary + replica, {name}, no fsync | {clients} | {:.0} | {:.2} | {:.2} | n/a | n/a | {} |",
            run.ops as f64 / run.secs,
            pct(&run.latencies_ms, 0.5),
            pct(&run.latencies_ms, 0.99),
            run.failed
        ));
    }
    drop(guard);
    let _ = std::fs::remove_dir_all(dir);
    rows
}

fn recovery(keys: u64, clients: usize) -> String {
    let fsync = match std::env::args().any(|a| a == "--recovery-group") {
        true => Fsync::Group,
        false => Fsync::None,
    };
    let opts = Options {
        nodes: 1,
        fsync,
        max_file_ratio: flag("--max-file-ratio", Options::default().max_file_ratio),
        log: "warn".into(),
        tag: "bench-recovery".into(),
        ..Options::default()
    };
    let mut c = Cluster::start(&node_binary(), &opts).expect("start a node");
    c.wait_ready(0, Duration::from_secs(30)).expect("ready");
    let addr = c.http(0);
    let per = keys / clients as u64;
    // The file's size, sampled while the load runs: its high-water mark.
    let db_path = c.configs[0].db_path();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        thread::spawn(move || {
            let mut max = 0u64;
            while sampling.load(Ordering::Relaxed) {
                max = max.max(std::fs::metadata(&db_path).map_or(0, |m| m.len()));
                thread::sleep(Duration::from_millis(20));
            }
            max
        })
    };
    let loaded = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            thread::spawn(move || {
                let mut cl = Client::new(addr, Duration::from_secs(30));
                let mut lat = Vec::with_capacity(per as usize);
                for k in 0..per {
                    let key = format!("key-{t:02}-{k:07}");
                    let started = Instant::now();
                    let r = cl.put(&key, "a 32-byte value for every key...", "async");
                    assert!(r.is_ok_and(|r| r.status == 200), "load failed");
                    lat.push(started.elapsed().as_secs_f64() * 1e3);
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in threads {
        lat.extend(t.join().expect("a loader"));
    }
    lat.sort_by(f64::total_cmp);
    let load_secs = loaded.elapsed().as_secs_f64();
    // Let the last compaction finish, as a node that has run for a while would have.
    thread::sleep(Duration::from_secs(2));
    sampling.store(false, Ordering::Relaxed);
    let max_file = sampler.join().expect("the sampler");
    let db_bytes = c.metric(0, "db_bytes");
    let live = c.metric(0, "live_bytes");
    let log_records = c.metric(0, "log_records");
    let mib = |b: f64| b / (1u64 << 20) as f64;
    eprintln!(
        "load: {} writes at {:.0}/s, latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms; \
         file at most {:.0} MiB during the load, {:.0} MiB at the end for {:.0} MiB live; \
         {} compactions, longest compaction transaction {:.1} ms; {} file compactions, the last {:.0} ms",
        lat.len(),
        lat.len() as f64 / load_secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        lat.last().copied().unwrap_or(f64::NAN),
        mib(max_file as f64),
        mib(db_bytes),
        mib(live),
        c.metric(0, "compactions"),
        c.metric(0, "compaction_tx_max_ms"),
        c.metric(0, "file_compactions"),
        c.metric(0, "file_compaction_ms"),
    );
    c.kill(0);
    let restarted = Instant::now();
    c.spawn(0).expect("restart");
    c.wait_ready(0, Duration::from_secs(600))
        .expect("recovered");
    let ready = restarted.elapsed().as_secs_f64();
    let h = c.client(0).get_path("/health").expect("health").json();
    let after = std::fs::metadata(c.configs[0].db_path()).map_or(0, |m| m.len());
    format!(
        "| {} keys, fsync {fsync:?} ({} log records past the base; file at most {:.0} MiB during the load, {:.0} MiB before the kill ({:.0} MiB live), {:.0} MiB after the restart; loaded at {:.0} writes/s) | {:.2} s | {:.2} s |",
        h["recovery"]["keys"],
        log_records,
        mib(max_file as f64),
        mib(db_bytes),
        mib(live),
        mib(after as f64),
        (per * clients as u64) as f64 / load_secs,
        h["recovery"]["ms"].as_f64().unwrap_or(f64::NAN) / 1e3,
        ready
    )
}

fn main() {
    let secs = flag("--secs", 10);
    let clients = flag("--clients", 12) as usize;
    let recovery_keys = flag("--recovery-keys", 1_000_000);
    if secs > 0 {
        throughput(secs, clients);
    }
    if recovery_keys > 0 {
        println!();
        println!(
            "| recovery after kill -9 | recovery (read + replay) | process start to serving |"
        );
        println!("|---|---|---|");
        println!("{}", recovery(recovery_keys, clients));
    }
}

fn throughput(secs: u64, clients: usize) {
    println!("| setup | clients | writes/s | latency p50 ms | latency p99 ms | lag p50 ms | lag p99 ms | failed |");
    println!("|---|---|---|---|---|---|---|---|");
    // `--only async` runs the concord rows of that level alone, without Redis.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    for (level, fsync) in [
        ("async", Fsync::Group),
        ("semi", Fsync::Group),
        ("sync", Fsync::Group),
        ("async", Fsync::None),
        ("sync", Fsync::Always),
    ] {
        if only.is_none_or(|o| o == level) {
            println!("{}", concord_row(level, fsync, clients, secs));
        }
    }
    if only.is_none() {
        for row in redis_rows(clients, secs) {
            println!("{row}");
        }
    }
}
