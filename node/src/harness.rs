//! Starts a cluster of node processes on loopback, with a [`Proxy`] on every link:
//! what the demo and the multi-process tests run. Dropping a [`Cluster`] kills every
//! process it started (also when a test fails) and removes its directory.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use concord::ReplicaId;

use crate::certs::Ca;
use crate::client::Client;
use crate::config::{
    AckConfig, AlertsConfig, FailoverConfig, Fsync, Mode, NodeConfig, PeerConfig,
    ReplicationConfig, StorageConfig, TlsConfig,
};
use crate::proxy::{Link, Proxy};

/// How to set a cluster up.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many nodes.
    pub nodes: usize,
    /// The fsync policy of every node.
    pub fsync: Fsync,
    /// Compact after this many log records.
    pub compact_after: u64,
    /// Compact the database file past this many times the live data.
    pub max_file_ratio: u64,
    /// The nodes' replication settings (with `mode = master-follower`, name the
    /// initial master in `master`, e.g. `node-1`).
    pub replication: ReplicationConfig,
    /// The nodes' failover settings.
    pub failover: FailoverConfig,
    /// The nodes' alert rules.
    pub alerts: AlertsConfig,
    /// The nodes' log level.
    pub log: String,
    /// A name for the temporary directory.
    pub tag: String,
    /// The nodes' ids, in order (random if empty): the node with the smaller id of
    /// a pair dials, so a test that needs a given direction fixes them.
    pub ids: Vec<ReplicaId>,
}

impl Options {
    /// Options for a master–follower cluster whose first master is `node-1`, with
    /// quick timers: a lease of `lease_ms`, health checks every 100 ms, failover
    /// after `failed_checks` failed ones.
    pub fn master_follower(lease_ms: u64, failed_checks: u32) -> Options {
        let mut opts = Options::default();
        opts.replication.mode = Mode::MasterFollower;
        opts.replication.lease_ms = lease_ms;
        opts.replication.master = Some("node-1".into());
        opts.failover = FailoverConfig {
            check_ms: 100,
            failed_checks,
            ..FailoverConfig::default()
        };
        opts
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            fsync: Fsync::Group,
            compact_after: 50_000,
            max_file_ratio: StorageConfig::default().max_file_ratio,
            // Quick timers: faults heal within the tests' patience.
            replication: ReplicationConfig {
                heartbeat_ms: 200,
                retransmit_ms: 200,
                idle_timeout_ms: 2_000,
                ..ReplicationConfig::default()
            },
            failover: FailoverConfig::default(),
            alerts: AlertsConfig::default(),
            log: "info".into(),
            tag: "cluster".into(),
            ids: Vec::new(),
        }
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Its temporary directory (certificates, configurations, data, logs).
    pub dir: PathBuf,
    bin: PathBuf,
    /// The nodes' configurations.
    pub configs: Vec<NodeConfig>,
    paths: Vec<PathBuf>,
    children: Vec<Option<Child>>,
    proxies: BTreeMap<(usize, usize), Proxy>,
    ca: Ca,
    /// Keep the directory when dropped (to read the logs); set when the
    /// `CONCORD_KEEP` environment variable is.
    pub keep: bool,
}

/// A loopback address for a node to listen on. Its port is below the kernel's range
/// of ephemeral ports (`/proc/sys/net/ipv4/ip_local_port_range`), from which the
/// outgoing connections of everything running take theirs: a port asked of the
/// kernel (port 0) comes from that range and, released until the node binds it, was
/// sometimes taken by a connection first (`Address already in use`). It is chosen at
/// random, checked free, and never handed out twice by this process.
fn free_port() -> std::io::Result<SocketAddr> {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    const LOW: u16 = 10_000;
    if ephemeral_low > LOW + 1_000 {
        let span = u64::from(ephemeral_low - LOW);
        for _ in 0..1_000 {
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            let port = LOW + u16::try_from(random % span).unwrap_or(0);
            let mut given = GIVEN
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if given.contains(&port) {
                continue;
            }
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                given.insert(port);
                return listener.local_addr();
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> std::io::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("concord-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl Cluster {
    /// Writes certificates and configurations for `opts.nodes` nodes, puts a proxy
    /// on every link and starts every node from `bin` (the `concord-node` binary).
    ///
    /// # Errors
    ///
    /// If a file, a port or a process cannot be had.
    pub fn start(bin: &Path, opts: &Options) -> crate::Result<Cluster> {
        let dir = temp_dir(&opts.tag)?;
        let ca = Ca::generate("concord test cluster CA")?;
        std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
        let n = opts.nodes;
        let ids: Vec<ReplicaId> = if opts.ids.is_empty() {
            (0..n).map(|_| ReplicaId::random()).collect()
        } else if opts.ids.len() == n {
            opts.ids.clone()
        } else {
            return Err(crate::Error::Config {
                reason: format!("{} ids for {n} nodes", opts.ids.len()),
            });
        };
        let listen: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let http: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let mut proxies = BTreeMap::new();
        for i in 0..n {
            for j in i + 1..n {
                // The node with the larger id accepts: the proxy forwards to it.
                let target = if ids[i] < ids[j] {
                    listen[j]
                } else {
                    listen[i]
                };
                proxies.insert((i, j), Proxy::start(target)?);
            }
        }
        let mut configs = Vec::new();
        let mut paths = Vec::new();
        for i in 0..n {
            let name = format!("node-{}", i + 1);
            let cert = ca.issue(ids[i])?;
            std::fs::write(dir.join(format!("{name}.pem")), &cert.cert_pem)?;
            crate::certs::write_secret(&dir.join(format!("{name}.key")), &cert.key_pem)?;
            let peers = (0..n)
                .filter(|j| *j != i)
                .map(|j| PeerConfig {
                    id: ids[j],
                    name: format!("node-{}", j + 1),
                    addr: proxies[&(i.min(j), i.max(j))].addr(),
                    http: Some(http[j]),
                })
                .collect();
            let config = NodeConfig {
                node_id: ids[i],
                name: name.clone(),
                listen: listen[i],
                http: http[i],
                data_dir: dir.join(format!("data-{name}")),
                tls: TlsConfig {
                    ca: dir.join("ca.pem"),
                    cert: dir.join(format!("{name}.pem")),
                    key: dir.join(format!("{name}.key")),
                },
                peers,
                ack: AckConfig::default(),
                storage: StorageConfig {
                    fsync: opts.fsync,
                    compact_after: opts.compact_after,
                    max_file_ratio: opts.max_file_ratio,
                },
                replication: opts.replication.clone(),
                failover: opts.failover.clone(),
                alerts: opts.alerts.clone(),
                log: opts.log.clone(),
            };
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, config.to_toml())?;
            configs.push(config);
            paths.push(path);
        }
        let mut cluster = Cluster {
            dir,
            bin: bin.to_path_buf(),
            configs,
            paths,
            children: (0..n).map(|_| None).collect(),
            proxies,
            ca,
            keep: std::env::var_os("CONCORD_KEEP").is_some(),
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// The CA that signed the nodes' certificates.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The log file of node `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{}.log", i + 1))
    }

    /// Starts node `i` (again), its output appended to its log file.
    ///
    /// # Errors
    ///
    /// If the process cannot be started.
    pub fn spawn(&mut self, i: usize) -> crate::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.paths[i])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Kills node `i` with SIGKILL (`kill -9`) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// True if node `i`'s process is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.children[i]
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The HTTP address of node `i`.
    pub fn http(&self, i: usize) -> SocketAddr {
        self.configs[i].http
    }

    /// A client of node `i`.
    pub fn client(&self, i: usize) -> Client {
        Client::new(self.http(i), Duration::from_secs(10))
    }

    /// The proxy on the link between nodes `i` and `j`.
    pub fn link(&self, i: usize, j: usize) -> &Proxy {
        &self.proxies[&(i.min(j), i.max(j))]
    }

    /// Cuts every link between `group` and the other nodes.
    pub fn partition(&self, group: &[usize]) {
        for (&(i, j), p) in &self.proxies {
            if group.contains(&i) != group.contains(&j) {
                p.set(Link::Cut);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for p in self.proxies.values() {
            p.set(Link::Up);
        }
    }

    /// Waits until node `i` answers `/health`.
    ///
    /// # Errors
    ///
    /// A message if it does not within `timeout` (or its process exited).
    pub fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let until = Instant::now() + timeout;
        let mut c = Client::new(self.http(i), Duration::from_secs(2));
        while Instant::now() < until {
            if !self.is_running(i) {
                return Err(format!("node-{} exited:\n{}", i + 1, self.log_tail(i, 20)));
            }
            // A fenced node answers 503, with its health document.
            if c.get_path("/health")
                .is_ok_and(|r| r.status == 200 || r.json()["status"] == "fenced")
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("node-{} did not start in {timeout:?}", i + 1))
    }

    /// Waits until every running node is connected to every other running node.
    ///
    /// # Errors
    ///
    /// A message if they are not within `timeout`.
    pub fn wait_connected(&mut self, timeout: Duration) -> Result<(), String> {
        let until = Instant::now() + timeout;
        let n = self.configs.len();
        loop {
            let running: Vec<usize> = (0..n).filter(|i| self.is_running(*i)).collect();
            let all = running.iter().all(|&i| {
                let h = self.client(i).get_path("/health").map(|r| r.json());
                h.is_ok_and(|h| {
                    h["peers"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .filter(|p| {
                                let name = p["name"].as_str().unwrap_or("");
                                running.iter().any(|&j| format!("node-{}", j + 1) == name)
                            })
                            .all(|p| p["connected"] == true)
                    })
                })
            });
            if all {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("nodes not connected after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every key with its siblings, as node `i` holds them.
    ///
    /// # Errors
    ///
    /// If the node does not answer.
    pub fn dump(&self, i: usize) -> std::io::Result<serde_json::Value> {
        Ok(self.client(i).get_path("/kv")?.json()["keys"].clone())
    }

    /// Waits until every running node holds the same keys and siblings and returns
    /// that content.
    ///
    /// # Errors
    ///
    /// A message naming the first difference if they do not within `timeout`.
    pub fn wait_converged(&mut self, timeout: Duration) -> Result<serde_json::Value, String> {
        let until = Instant::now() + timeout;
        let n = self.configs.len();
        loop {
            let running: Vec<usize> = (0..n).filter(|i| self.is_running(*i)).collect();
            let dumps: Vec<_> = running.iter().map(|&i| self.dump(i).ok()).collect();
            if let Some(Some(first)) = dumps.first() {
                if dumps.iter().all(|d| d.as_ref() == Some(first)) {
                    return Ok(first.clone());
                }
            }
            if Instant::now() > until {
                let sizes: Vec<String> = running
                    .iter()
                    .zip(&dumps)
                    .map(|(i, d)| {
                        let len = d.as_ref().and_then(|d| d.as_array().map(Vec::len));
                        format!("node-{}: {len:?} keys", i + 1)
                    })
                    .collect();
                return Err(format!(
                    "not converged after {timeout:?}: {}",
                    sizes.join(", ")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Node `i`'s `/status` document (`Null` if it does not answer).
    pub fn status(&self, i: usize) -> serde_json::Value {
        self.client(i)
            .get_path("/status")
            .map(|r| r.json())
            .unwrap_or_default()
    }

    /// Polls node `i`'s `/status` every 50 ms until `ok` holds of it, and returns it;
    /// `None` once `timeout` has passed without.
    pub fn wait_status(
        &self,
        i: usize,
        timeout: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let until = Instant::now() + timeout;
        loop {
            let s = self.status(i);
            if ok(&s) {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Lines of any node's log that report a panic.
    pub fn panics(&self) -> Vec<String> {
        (0..self.configs.len())
            .flat_map(|i| {
                std::fs::read_to_string(self.log_path(i))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("panicked"))
                    .map(|l| format!("node-{}: {l}", i + 1))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A counter or gauge of node `i`'s `/metrics`, summed over its label sets
    /// (`name` without the `concord_` prefix, e.g. `received_bytes_total`): 0 if
    /// the node has no such series yet, NaN if it does not answer (so no comparison
    /// with it holds).
    pub fn metric(&self, i: usize, name: &str) -> f64 {
        let Ok(text) = self.client(i).get_path("/metrics").map(|r| r.body) else {
            return f64::NAN;
        };
        let full = format!("concord_{name}");
        text.lines()
            .filter(|l| {
                l.strip_prefix(&full)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |a, b| a + b)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
